"""The ``hlsp`` command.

Exit codes: 0 success, 1 the work failed, 2 bad input (a manifest, a path, a version).
Errors we raise on purpose are printed as messages, never as tracebacks.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from processing.errors import BadInput, HlspError, WorkFailed
from processing.logs import attach_log_file

app = typer.Typer(
    name="hlsp",
    help="Cut JWST imaging data releases as MAST High-Level Science Products.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console(stderr: bool) -> Console:
    """A console that wraps to the terminal, or, writing to a pipe or file (CI, a log), to a
    width that keeps a path or a table row on one line."""
    import os

    stream = sys.stderr if stderr else sys.stdout
    wide = None if (stream.isatty() or "COLUMNS" in os.environ) else 240
    return Console(stderr=stderr, highlight=False, width=wide)


out = _console(stderr=False)
err = _console(stderr=True)
log = logging.getLogger(__name__)


@app.callback()
def _main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show every library's log messages on the console too."
    ),
) -> None:
    from processing.logs import setup_console

    setup_console(err, verbose)


def _load(manifest: Path):
    """A manifest, validated, and the names of its release's files checked against MAST's
    rules (before any processing: release/products/)."""
    from processing.errors import ManifestError
    from release.manifest import load_manifest
    from release.naming import file_version
    from release.products.registry import name_problems

    lm = load_manifest(manifest)
    if len(file_version(lm.manifest.release.version)) <= 9:  # else the manifest already refused it
        problems = name_problems(lm.manifest)
        if problems:
            raise ManifestError(str(lm.path), problems)
    return lm


def _call(command, *args, **kwargs):
    """Call a command's function from Python (as `hlsp demo` does) with the defaults its
    options declare for every parameter not given: a typer default is an option object, not
    the value, so a direct call that leaves one out would get the object (and an option added
    to a command later would break every such call)."""
    import inspect

    from typer.models import ParameterInfo

    bound = inspect.signature(command).bind_partial(*args, **kwargs)
    for name, param in inspect.signature(command).parameters.items():
        if name not in bound.arguments and isinstance(param.default, ParameterInfo):
            bound.arguments[name] = param.default.default
    return command(*bound.args, **bound.kwargs)


def _split(values: str | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for v in values.split(",") if v.strip()]


# --------------------------------------------------------------------------------------------


@app.command()
def check(
    manifests: list[Path] = typer.Argument(..., help="Release manifest(s) (TOML)."),
) -> None:
    """Validate release manifests and summarise each (several: as a pre-commit hook passes
    them; every one is checked, and the command fails if any is invalid)."""
    if len(manifests) == 1:
        _check_one(manifests[0])
        return
    codes = []
    for manifest in manifests:
        try:
            _check_one(manifest)
        except HlspError as exc:
            codes.append(exc.exit_code)
            err.print("[bold red]error:[/] " + escape(str(exc)), soft_wrap=True)
    if codes:
        err.print(f"[bold red]{len(codes)} of {len(manifests)} manifests are invalid[/]")
        raise typer.Exit(max(codes))


def _check_one(manifest: Path) -> None:
    from processing.instruments import instrument_of
    from release.manifest import file_version

    lm = _load(manifest)
    m = lm.manifest
    r = m.release
    out.print(f"[bold green]OK[/] {lm.path}")
    out.print(
        f"{r.project} {r.version} ({file_version(r.version)}), {r.kind}"
        + (f", replaces {r.previous}" if r.previous else "")
        + f"; manifest sha256 {m.content_hash()[:16]}"
    )
    out.print(f"pins: jwst {m.pins.jwst}, CRDS {m.pins.crds_context} ({m.pins.crds_mode})")
    out.print(
        f"program {', '.join(map(str, m.program.proposal_ids))}: {len(m.targets)} targets, "
        f"{len(m.program.bands)} bands ({', '.join(m.program.bands)}), data from {m.program.data.source}"
    )
    if m.patch is not None:
        out.print(
            f"patch of {lm.parent.path.name if lm.parent else m.patch.parent}: regenerates "
            f"{', '.join(m.patch.targets)}"
            + (f" ({', '.join(m.patch.instruments)})" if m.patch.instruments else "")
            + (f" [{', '.join(m.patch.bands)}]" if m.patch.bands else "")
        )
    table = Table("target", "bands", "exceptions", title="targets")
    for name, t in m.targets.items():
        notes = []
        bg = t.miri_background
        if any(instrument_of(b) == "miri" for b in m.target_bands(name)) and bg.source != "own":
            notes.append(f"MIRI background: {bg.source}" + (f" from {bg.borrow_from}" if bg.borrow_from else ""))
        if t.observations.skip:
            notes.append(f"skips {len(t.observations.skip)} pattern(s)")
        if t.observations.include:
            notes.append(f"only {len(t.observations.include)} pattern(s)")
        layers = t.parameters
        if layers.default or layers.instrument or layers.band:
            notes.append("own step parameters")
        table.add_row(name, " ".join(m.target_bands(name)), "; ".join(notes))
    out.print(table)


@app.command()
def plan(
    manifest: Path = typer.Argument(..., help="Release manifest (TOML)."),
    targets: str | None = typer.Option(None, help="Comma-separated targets (default: all)."),
    bands: str | None = typer.Option(None, help="Comma-separated bands (default: all)."),
    workdir: Path | None = typer.Option(
        None, help="Work folder whose cache to look in (default: hlsp-work/<project>)."
    ),
    against: Path | None = typer.Option(
        None,
        help="An earlier version of the manifest (or the previous release's): list the tasks the change reruns "
        "and the release files it changes, and why.",
    ),
    against_previous: bool = typer.Option(
        False,
        "--against-previous",
        help="--against the manifest beside this one whose release.version is this one's release.previous.",
    ),
    fmt: str = typer.Option(
        "text", "--format", help="With --against: 'text', 'json' (docs/plan-diff.schema.json) or 'markdown'."
    ),
    output: Path | None = typer.Option(None, help="With --against: write the json or markdown here, not to stdout."),
) -> None:
    """Show what a run of this manifest would do, product by product, and what is cached;
    with --against OLD, what changed against OLD's plan."""
    from processing.instruments import instrument_of
    from processing.parameters import resolve_parameters
    from release.manifest import file_version
    from release.naming import make_name

    if fmt not in ("text", "json", "markdown"):
        raise BadInput(f"--format: '{fmt}' is not one of text, json, markdown")
    if against_previous:
        if against is not None:
            raise BadInput("give --against OLD_MANIFEST or --against-previous, not both")
        against = _previous_manifest(manifest)
    if (fmt != "text" or output is not None) and against is None:
        raise BadInput("--format json/markdown and --output describe a plan diff: give --against OLD_MANIFEST")
    lm = _load(manifest)
    m = lm.manifest
    want_t, want_b = _split(targets), _split(bands)
    for name in want_t or []:
        if name not in m.targets:
            raise BadInput(f"--targets: '{name}' is not a target of {lm.path.name}")
    for band in want_b or []:
        if band.upper() not in m.program.bands:
            raise BadInput(f"--bands: '{band}' is not a band of {lm.path.name}")
    if against is not None:
        _plan_against(lm, manifest, against, want_t, want_b, fmt, output)
        return
    regenerate = set(m.patch.targets) if m.patch else None

    table = Table("target", "band", "action", "MIRI background", "parameters set")
    table.add_column("mosaic", overflow="fold")
    for name in m.targets:
        if want_t and name not in want_t:
            continue
        t = m.targets[name]
        for band in m.target_bands(name):
            if want_b and band not in [b.upper() for b in want_b]:
                continue
            inst = instrument_of(band)
            action = "process"
            if regenerate is not None:
                action = "regenerate" if m.regenerates(name, band) else "carry over"
            bg = ""
            if inst == "miri":
                s = t.miri_background
                bg = s.source + (f" ({s.borrow_from})" if s.borrow_from else "")
            params = resolve_parameters(m, name, band).values
            nset = _count_leaves(params)
            mosaic = make_name(m.release.project, inst, name, band, file_version(m.release.version), "img", "fits")
            table.add_row(name, band, action, bg, str(nset) if nset else "", mosaic)
    out.print(table)
    if m.program.data.source == "mast" and not m.program.data.path:
        out.print(
            "Data source 'mast' and no program.data.path: no task graph until the exposures are here "
            f"(`hlsp fetch {lm.path.name} --dest DIR --dry-run` lists them; then set program.data.path = DIR)."
        )
    else:
        from processing.executor import Engine
        from processing.pipeline import build_graph

        graph = build_graph(lm, want_t, want_b)
        engine = Engine(lm, graph, workdir or _default_workdir(lm), allow_version_mismatch=True, read_only=True)
        status = engine.plan()
        tasks = Table("stage", "unit", "tasks", "cached", "will run", "what it does")
        for stage in graph.registry.ordered():
            ids = [tid for tid, t in graph.tasks.items() if t.stage == stage.name]
            tasks.add_row(
                stage.name,
                stage.unit,
                str(len(ids)),
                str(sum(status[t] == "cached" for t in ids)),
                str(sum(status[t] == "run" for t in ids)),
                stage.description,
            )
        out.print(tasks)
        if engine.jwst_version != m.pins.jwst:
            out.print(
                f"[yellow]Installed jwst {engine.jwst_version} differs from pins.jwst {m.pins.jwst}: `hlsp run` will "
                "refuse.[/]"
            )


def _previous_manifest(manifest: Path) -> Path:
    """The manifest in ``manifest``'s folder of the same project whose version is its
    ``release.previous`` (how a team keeps one manifest per release; a patch's is its parent)."""
    from release.manifest import load_manifest

    lm = _load(manifest)
    r = lm.manifest.release
    if not r.previous:
        raise BadInput(f"--against-previous: {manifest} has no release.previous (a first release: nothing to compare)")
    if lm.parent is not None and lm.parent.manifest.release.version == r.previous:
        return lm.parent.path
    found = []
    for p in sorted(manifest.parent.glob("*.toml")):
        if p.resolve() == lm.path.resolve():
            continue
        try:
            other = load_manifest(p).manifest.release
        except HlspError:
            continue  # not a manifest, or an invalid one: not the previous release's
        if other.project == r.project and other.version == r.previous:
            found.append(p)
    if len(found) != 1:
        names = ": " + ", ".join(p.name for p in found) if found else ""
        raise BadInput(
            f"--against-previous: {manifest.parent} holds {len(found)} valid manifests of {r.project} "
            f"{r.previous} (release.previous of {manifest.name}){names}; give --against OLD_MANIFEST"
        )
    return found[0]


def _plan_against(lm, manifest: Path, against: Path, targets, bands, fmt: str, output: Path | None) -> None:
    """``hlsp plan MANIFEST --against OLD``: release/plan_diff.py."""
    from processing.fileio import atomic_write_text
    from release.plan_diff import plan_diff, render_markdown

    old = _load(against)
    for side in (lm, old):
        if side.manifest.program.data.source == "mast" and not side.manifest.program.data.path:
            raise BadInput(
                f"{side.path.name}: data source 'mast' and no program.data.path: its task graph needs the exposures "
                f"(`hlsp fetch {side.path.name} --dest DIR` downloads them; then set program.data.path = DIR)"
            )
    if old.manifest.release.project != lm.manifest.release.project:
        raise BadInput(
            f"--against {against}: a manifest of {old.manifest.release.project}, not of {lm.manifest.release.project}"
        )
    diff = plan_diff(lm, old, manifest, against, targets, bands)
    if fmt == "json":
        text = diff.model_dump_json(indent=1) + "\n"
    elif fmt == "markdown":
        text = render_markdown(diff)
    else:
        s = diff.summary
        table = Table("task", "status", "why", title=f"{s.changed + s.new} of {s.tasks} tasks rerun against {against}")
        for t in diff.tasks:
            table.add_row(t.task, t.status, escape("; ".join(t.reasons)))
        out.print(table)
        files = Table(
            "release file", "status", "made by", title=f"{s.files_changed + s.files_new} release files change"
        )
        for f in diff.files:
            files.add_row(f.file, f.status, ", ".join(f.tasks))
        out.print(files)
        for c in diff.manifest_changes:
            out.print(f"manifest: {c.key}: {c.old} -> {c.new}")
        return
    if output is not None:
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)


def _default_workdir(lm) -> Path:
    """Default work folder: ``hlsp-work/<project>`` beside the current directory."""
    return Path("hlsp-work") / lm.manifest.release.project


@app.command()
def run(
    manifest: Path = typer.Argument(..., help="Release manifest (TOML)."),
    targets: str | None = typer.Option(None, help="Comma-separated targets (default: all)."),
    bands: str | None = typer.Option(None, help="Comma-separated bands (default: all)."),
    workdir: Path | None = typer.Option(
        None, help="Work folder: cache, logs, products (default: hlsp-work/<project>)."
    ),
    workers: int | None = typer.Option(None, min=1, help="Parallel tasks (default: by cores and free memory)."),
    cache: Path | None = typer.Option(
        None, help="Task cache folder, shareable between work folders (default: WORKDIR/cache)."
    ),
    allow_version_mismatch: bool = typer.Option(
        False, "--allow-version-mismatch", help="Run with a jwst other than pins.jwst (recorded in every product)."
    ),
    executor: str = typer.Option(
        "local", help="'local' (a process pool) or 'dask' (a dask.distributed LocalCluster of --workers processes)."
    ),
    scheduler: str | None = typer.Option(
        None, help="Run on an existing dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --executor dask)."
    ),
    keep: str | None = typer.Option(
        None,
        help="Cache retention: 'default' thins intermediates once every task reading them has its result "
        "(recomputed when needed again); 'all' keeps everything. Default: $HLSP_KEEP, else 'default'.",
    ),
) -> None:
    """Process a release: raw exposures to mosaics, through the task graph, reusing the cache."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from processing.executor import Engine
    from processing.pipeline import build_graph

    lm = _load(manifest)
    graph = build_graph(lm, _split(targets), _split(bands))
    wd = (workdir or _default_workdir(lm)).resolve()
    engine = Engine(
        lm,
        graph,
        wd,
        cache_dir=cache,
        allow_version_mismatch=allow_version_mismatch,
        workers=workers,
        executor=executor,
        scheduler=scheduler,
        keep=keep,
    )
    log_file = attach_log_file(wd / "logs", "run")
    log.info(
        "run of %s (%d tasks, %s executor%s); log %s",
        lm.path.name,
        len(graph.tasks),
        engine.executor_kind,
        f" at {scheduler}" if scheduler else f", {engine.workers} workers",
        log_file,
    )
    counts = graph.stage_counts()
    with Progress(
        TextColumn("{task.description:>5}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    ) as progress:
        bars = {s: progress.add_task(s, total=n, info="") for s, n in counts.items() if n}
        tally: dict = {}

        def tick(stage, status):
            tally.setdefault(stage, {}).setdefault(status, 0)
            tally[stage][status] += 1
            progress.update(bars[stage], advance=1, info=" ".join(f"{k} {v}" for k, v in sorted(tally[stage].items())))

        t0 = time.time()
        summary = engine.run(progress=tick)
    _print_summary(summary, time.time() - t0, graph.registry.order)
    out.print(
        f"cache: {_human(summary.bytes_written)} written, {_human(summary.bytes_released)} released "
        f"(retention '{engine.keep}')"
    )
    log.debug("products: %s", ", ".join(str(p) for p in summary.products))
    if not summary.ok:
        raise typer.Exit(1)


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _print_summary(summary, elapsed: float, stages: list[str]) -> None:
    table = Table(
        "stage",
        "cached",
        "ran",
        "failed",
        "skipped",
        "not needed",
        "slowest task",
        "peak memory (task)",
        title=f"run summary ({elapsed:.1f} s, {summary.executor} executor)",
    )
    for stage in stages:
        rs = [r for r in summary.results.values() if r.task.stage == stage]
        if rs:
            ran = [r.record for r in rs if r.status == "ran" and r.record]
            slow = f"{max(x['elapsed_s'] for x in ran):.1f} s" if ran else ""
            peak = f"{max(x.get('peak_rss_mb', 0) for x in ran):.0f} MB" if ran else ""
            table.add_row(
                stage,
                *(str(sum(r.status == s for r in rs)) for s in ("cached", "ran", "failed", "skipped", "not needed")),
                slow,
                peak,
            )
    out.print(table)
    failures = [r for r in summary.results.values() if r.status in ("failed", "skipped")]
    if failures:
        ft = Table(title="what did not complete")
        ft.add_column("task", overflow="fold")
        ft.add_column("status")
        ft.add_column("reason", overflow="fold")
        for r in sorted(failures, key=lambda r: r.task.id):
            ft.add_row(r.task.id, r.status, escape(r.error or ""))
        out.print(ft)
    for p in summary.products:
        out.print(f"product: {p}")


def _count_leaves(d: dict) -> int:
    return sum(_count_leaves(v) if isinstance(v, dict) else 1 for v in d.values())


@app.command()
def schema(
    outdir: Path = typer.Option(
        Path("docs"), help="Where to write manifest.schema.json, manifest-reference.md and plan-diff.schema.json."
    ),
) -> None:
    """Write the manifest JSON Schema, the generated field reference and the plan diff's JSON Schema."""
    from processing.fileio import atomic_write_text
    from release.schema_doc import (
        PLAN_DIFF_SCHEMA_FILE,
        REFERENCE_FILE,
        SCHEMA_FILE,
        plan_diff_schema_text,
        reference_text,
        schema_text,
    )

    atomic_write_text(outdir / SCHEMA_FILE, schema_text())
    atomic_write_text(outdir / REFERENCE_FILE, reference_text())
    atomic_write_text(outdir / PLAN_DIFF_SCHEMA_FILE, plan_diff_schema_text())
    out.print(f"wrote {outdir / SCHEMA_FILE}, {outdir / REFERENCE_FILE} and {outdir / PLAN_DIFF_SCHEMA_FILE}")


@app.command()
def simulate(
    outdir: Path = typer.Argument(..., help="Folder for the synthetic program (must be empty or absent)."),
    size: str = typer.Option("demo", help="'demo' (small subarrays, 2 dithers) or 'full' (full detectors, 4 dithers)."),
    seed: int = typer.Option(1, help="Seed of every random draw: the same seed writes the same program."),
    bands: str | None = typer.Option(None, help="Comma-separated bands (default: F200W,F300M,F770W,F1000W,F2100W)."),
    mast_mosaics: bool = typer.Option(
        False, "--mast-mosaics", help="Also run the jwst defaults to make the 'MAST' level-3 mosaics (minutes)."
    ),
    headers_only: bool = typer.Option(
        False,
        "--headers-only",
        help="With --size cosmos: a survey-size program of header-only uncal files and its manifest, for planning "
        "at scale (nothing in it can be processed).",
    ),
    exposures: int = typer.Option(12880, min=1, help="With --headers-only: how many detector exposures."),
) -> None:
    """Write the synthetic observing program: raw exposures, a local CRDS context and the truth."""
    from rich.progress import Progress

    from processing.simulate.detectors import FILTERS
    from processing.simulate.generate import simulate_program
    from processing.simulate.program import SIZES

    if headers_only or size == "cosmos":
        if not (headers_only and size == "cosmos"):
            raise BadInput("--size cosmos and --headers-only go together (a survey-size program has headers only)")
        if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
            raise BadInput(f"{outdir} exists and is not an empty folder: the program is written to a new folder only")
        from processing.simulate.survey import write_survey_headers

        made = write_survey_headers(outdir, exposures)
        out.print(
            f"wrote {made['exposures']} header-only NIRCam exposures ({made['pointings']} pointings, "
            f"{', '.join(made['bands'])}) and the manifest {made['manifest']}"
        )
        return
    if size not in SIZES:
        raise BadInput(f"--size: '{size}' is not one of {', '.join(SIZES)}, cosmos (with --headers-only)")
    band_list = [b.upper() for b in _split(bands)] if bands else None
    for b in band_list or []:
        if b not in FILTERS:
            raise BadInput(f"--bands: '{b}' is not a band the synthetic instruments have ({', '.join(FILTERS)})")
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise BadInput(
            f"{outdir} exists and is not an empty folder: the synthetic program is written to a new folder only"
        )
    staging = outdir.with_name(f".{outdir.name}.partial")
    if staging.exists():
        raise BadInput(f"{staging} is left from an interrupted run: remove it, then run again")
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("simulating", total=None)

        def tick(done, total, name):
            progress.update(task, total=total, completed=done, description=name)

        truth = simulate_program(staging, size=size, seed=seed, bands=band_list, progress=tick)
        if mast_mosaics:
            from processing.simulate.default_pipeline import write_mast_mosaics

            progress.update(task, description="MAST mosaics (jwst defaults)", total=None)
            mast = write_mast_mosaics(staging)
            out.print(f"MAST mosaics (jwst defaults): {sum(len(b) for b in mast['mosaics'].values())} written")
    if outdir.exists():
        outdir.rmdir()  # empty, checked above
    staging.rename(outdir)  # the program appears whole or not at all
    out.print(
        f"wrote {len(truth['exposures'])} exposures, CRDS context {truth['crds_context']} and the truth to "
        f"{outdir} in {truth['elapsed_s']} s"
    )


@app.command()
def fetch(
    manifest: Path = typer.Argument(..., help="Release manifest (TOML) whose program.data.source is 'mast'."),
    dest: Path | None = typer.Option(
        None, help="Where the exposures go, one folder per target (default: the manifest's program.data.path)."
    ),
    level: str = typer.Option(
        "uncal", help="Product level: 'uncal' (raw ramps, what `hlsp run` starts from) or 'rate'."
    ),
    targets: str | None = typer.Option(None, help="Comma-separated targets (default: all the run needs)."),
    bands: str | None = typer.Option(None, help="Comma-separated bands (default: all)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be downloaded (per target and band)."),
    workers: int = typer.Option(4, min=1, max=16, help="Parallel downloads."),
    server: str | None = typer.Option(
        None, help="MAST portal address (default: $HLSP_MAST_SERVER, else https://mast.stsci.edu)."
    ),
    crds: bool = typer.Option(
        False,
        "--crds",
        help="Also sync pins.crds_context and the references these exposures need into the run's CRDS_PATH "
        "(pins.crds_path, else $CRDS_PATH), from pins.crds_server_url.",
    ),
) -> None:
    """Download a manifest's exposures from MAST: exactly what its run reads (science exposures,
    MIRI off-fields, borrowed ones), resumable and verified, with a fetch record; with --crds,
    the pinned CRDS context and its references for them."""
    import os

    from processing.archive import download, mast

    lm = _load(manifest)
    m = lm.manifest
    if level not in mast.LEVELS:
        raise BadInput(f"--level: '{level}' is not one of {', '.join(mast.LEVELS)}")
    if m.program.data.source != "mast":
        raise BadInput(
            f"{lm.path.name}: program.data.source is '{m.program.data.source}': its exposures are local, "
            "there is nothing to fetch"
        )
    folder = dest or (lm.resolve_path(m.program.data.path) if m.program.data.path else None)
    if folder is None:
        raise BadInput(f"{lm.path.name}: give --dest, or set program.data.path (where `hlsp run` reads the exposures)")
    token = os.environ.get("MAST_API_TOKEN") or None
    archive = mast.Mast(server or os.environ.get("HLSP_MAST_SERVER") or mast.MAST_SERVER, token=token)
    try:
        files, lacking = mast.find(lm, archive, level, _split(targets), _split(bands))
    except mast.ArchiveUnreachable as exc:
        raise WorkFailed(f"{lm.path.name}: {exc}") from None
    except HlspError:
        raise
    except Exception as exc:  # an answer MAST's API does not give (a changed service, a proxy page)
        raise WorkFailed(
            f"{lm.path.name}: MAST at {archive.server} answered unexpectedly ({type(exc).__name__})"
        ) from None
    table = Table("target", "band", "science", "off-field", "bytes", "for", title=f"{len(files)} file(s) from MAST")
    groups: dict = {}
    for f in files:
        g = groups.setdefault((f.target, f.band), {"science": 0, "off-field": 0, "bytes": 0, "for": set()})
        g[f.role] += 1
        g["bytes"] += f.size or 0
        g["for"].update(f.used_by)
    for (t, b), g in sorted(groups.items()):
        table.add_row(t, b, str(g["science"]), str(g["off-field"]), _human(g["bytes"]), ", ".join(sorted(g["for"])))
    out.print(table)
    total = sum(f.size or 0 for f in files)
    for n in lacking:
        whose = f" (for {n.used_by})" if n.used_by != n.target else ""
        err.print(f"[bold yellow]not in MAST:[/] {n.role} exposures of {n.target} in {n.band}{whose}", soft_wrap=True)
    if lacking and not dry_run:
        raise WorkFailed(
            f"{lm.path.name}: MAST lists no exposure for {len(lacking)} of what the run needs (above); nothing was "
            "downloaded (narrow the run with --targets/--bands, or fix the manifest's targets and observations)"
        )
    if dry_run:
        out.print(f"dry run: {len(files)} file(s), {_human(total)}, would go under {folder}")
        return
    if not files:
        raise WorkFailed(
            f"{lm.path.name}: MAST lists none of the exposures the run needs (program {m.program.proposal_ids})"
        )
    before = download.recorded_sha256(folder)
    items = [
        download.Item(
            archive.url(f.uri),
            folder / f.relpath,
            f.size,
            f.uri,
            (("target", f.target), ("band", f.band), ("role", f.role), ("obs_id", f.obs_id)),
            before.get(f.relpath),
        )
        for f in files
    ]
    log_file = attach_log_file(folder / "logs", "fetch")
    log.info("fetch of %s: %d file(s), %s, into %s; log %s", lm.path.name, len(items), _human(total), folder, log_file)
    results, errors = download.fetch_files(items, workers=workers, token=token)
    record = download.write_record(
        folder,
        results,
        {
            "manifest": lm.path.name,
            "manifest_sha256": m.content_hash(),
            "program": m.program.proposal_ids,
            "server": archive.server,
            "level": level,
        },
    )
    done = {s: sum(1 for r in results if r.status == s) for s in ("present", "downloaded", "resumed")}
    out.print(
        f"{done['downloaded']} downloaded, {done['resumed']} resumed, {done['present']} already present and verified; "
        f"record {record}"
    )
    if errors:
        for e in errors:
            err.print("[bold red]failed:[/] " + escape(e), soft_wrap=True)
        raise WorkFailed(f"{len(errors)} of {len(items)} file(s) did not download; run the same command to resume")
    if crds:
        _sync_crds(lm, [r.item.dest for r in results])


def _sync_crds(lm, exposures: list[Path]) -> None:
    """``hlsp fetch --crds``: processing/archive/crds_sync.py."""
    import os

    from processing.archive import crds_sync
    from processing.archive.mast import ArchiveUnreachable

    pins = lm.manifest.pins
    path = lm.resolve_path(pins.crds_path) if pins.crds_path else os.environ.get("CRDS_PATH")
    if not path:
        raise BadInput(f"{lm.path.name}: --crds needs pins.crds_path or $CRDS_PATH (where the run reads CRDS)")
    try:
        done = crds_sync.sync(pins.crds_context, Path(path), pins.crds_server_url, exposures)
    except ArchiveUnreachable as exc:
        raise WorkFailed(f"{lm.path.name}: {exc}") from None
    out.print(
        f"CRDS {pins.crds_context}: {done['mappings']} mappings and {len(done['references'])} references in {path} "
        f"({_human(done['bytes'])} downloaded)"
    )


@app.command()
def package(
    manifest: Path = typer.Argument(..., help="Release manifest (TOML)."),
    workdir: Path | None = typer.Option(None, help="Work folder of `hlsp run` (default: hlsp-work/<project>)."),
    releases: Path = typer.Option(
        Path("releases"), help="Where releases are published: RELEASES/<project>/<version>/."
    ),
    cache: Path | None = typer.Option(
        None, help="Task cache folder, if `hlsp run` was given one (default: WORKDIR/cache)."
    ),
    allow_version_mismatch: bool = typer.Option(
        False,
        "--allow-version-mismatch",
        help="Package products made with a jwst other than pins.jwst (as `hlsp run` was told).",
    ),
) -> None:
    """Package the mosaics of a run as a MAST HLSP release (never overwrites a published version).

    Only products made from this manifest are packaged: they are found by the task keys this
    manifest gives (inputs, parameters, versions), never by what a work folder happens to hold.
    """
    from processing.executor import Engine
    from processing.pipeline import build_graph
    from release.package import check_packageable, package_release

    lm = _load(manifest)
    check_packageable(lm)
    wd = (workdir or _default_workdir(lm)).resolve()
    engine = Engine(
        lm, build_graph(lm), wd, cache_dir=cache, allow_version_mismatch=allow_version_mismatch, read_only=True
    )
    entries, missing = engine.product_index()
    if missing:
        raise BadInput(
            f"the products of {len(missing)} task(s) made from {lm.path.name} are not in the cache of {wd}: "
            f"{', '.join(missing)}; run `hlsp run {manifest}` first (or it failed). "
            "Products of another manifest (other parameters, inputs or versions) are never packaged under this one."
        )
    try:
        attach_log_file(wd / "logs", "package")
    except OSError:  # a read-only work folder can still be packaged from: no log file then
        log.debug("no log file: %s/logs is not writable", wd)
    dest = package_release(lm, entries, releases.resolve(), simulated=lm.manifest.program.data.source == "synthetic")
    out.print(f"[bold green]published[/] {dest}")


@app.command()
def validate(
    release_dir: Path = typer.Argument(..., help="A release folder (RELEASES/<project>/<version>)."),
    junit: Path | None = typer.Option(None, help="Also write the findings as JUnit XML for CI systems."),
    fitsverify: bool = typer.Option(
        True, "--fitsverify/--no-fitsverify", help="Run fitsverify on every FITS file (where installed)."
    ),
    strict: bool | None = typer.Option(
        None,
        "--strict/--no-strict",
        help="Fail when a check cannot run (fitsverify missing). Default: on where CI=true, else off.",
    ),
    against: Path | None = typer.Option(
        None,
        help="The previous release (or a folder of MAST level-3 mosaics): fail when a band moved more than the "
        "release manifest's [comparisons.thresholds] allow (shift, flux ratio, background).",
    ),
    figures: Path | None = typer.Option(None, help="With --against: write the comparison figures and table here."),
    json_file: Path | None = typer.Option(
        None, "--json", help="Also write a JSON summary (counts, one entry per failed check) for CI systems."
    ),
    fmt: str = typer.Option(
        "text",
        "--format",
        help="What to print: 'text' (tables), 'json' (the JSON summary) or 'github' (GitHub Actions annotations "
        "and a one-line verdict).",
    ),
) -> None:
    """Check a release against MAST's rules and our own.

    Exit 0 valid; 1 the release breaks a rule; 2 bad input; 3 it moved more than allowed
    against --against (or is not comparable with it); 4 only checks that could not run failed
    (--strict). The most serious class wins (docs/ci.md)."""
    import json

    from processing.fileio import atomic_write_text
    from release.validate import strict_by_default, validate_release

    if fmt not in ("text", "json", "github"):
        raise BadInput(f"--format: '{fmt}' is not one of text, json, github")
    if not release_dir.is_dir():
        raise BadInput(f"{release_dir} is not a folder")
    if against is not None and not against.is_dir():
        raise BadInput(f"--against {against}: not a folder (the previous release, or a folder of level-3 mosaics)")
    with _output_folder(figures, "validate", "--figures") as figures_dir:
        report = validate_release(
            release_dir,
            use_fitsverify=fitsverify,
            strict=strict_by_default() if strict is None else strict,
            against=against,
            figures=figures_dir,
        )
    if junit:
        atomic_write_text(junit, report.junit())
    if json_file:
        atomic_write_text(json_file, json.dumps(report.summary(), indent=1) + "\n")
    if fmt == "json":
        sys.stdout.write(json.dumps(report.summary(), indent=1) + "\n")
        raise typer.Exit(report.exit_code)
    if fmt == "github":
        sys.stdout.write(report.github(str(release_dir)))
        s = report.summary()
        verdict = "valid" if report.ok else f"{s['failed']} failed check(s), exit {report.exit_code}"
        sys.stdout.write(
            f"hlsp validate {release_dir}: {verdict}; {s['passed']} passed, {s['not_run']} not run, "
            f"{s['files']} files\n"
        )
        raise typer.Exit(report.exit_code)
    files = {f.file for f in report.findings if f.file != "."}
    skipped: dict[tuple[str, str], int] = {}
    for f in report.skipped:
        skipped[(f.check, f.message)] = skipped.get((f.check, f.message), 0) + 1
    for (check, why), n in sorted(skipped.items()):
        out.print(f"[yellow]not run:[/] {check} on {n} file(s): {escape(why)}")
    if against is not None and report.against is not None:
        compared = sorted({f.file for f in report.findings if f.check == f"against {against.name}" and f.file != "."})
        out.print(
            f"compared with {escape(report.against.describe())}: {len(compared)} mosaic(s)"
            + (
                f" ({escape(', '.join(Path(c).name for c in compared[:4]))}{' ...' if len(compared) > 4 else ''})"
                if compared
                else ""
            )
        )
    if report.ok:
        ran = len(report.findings) - len(report.skipped)
        out.print(
            f"[bold green]valid[/] {release_dir}: {len(files)} files, {ran} checks passed"
            + (f", {len(report.skipped)} not run (see above; --strict fails them)" if report.skipped else "")
        )
        return
    table = Table(title=f"{len(report.failures)} problem(s) in {release_dir}")
    table.add_column("file", overflow="fold")
    table.add_column("check")
    table.add_column("problem", overflow="fold")
    for f in report.failures:
        table.add_row(f.file, f.check + ("" if f.kind == "rule" else f" ({f.kind})"), escape(f.message))
    out.print(table)
    raise typer.Exit(report.exit_code)


@app.command()
def compare(
    a: Path = typer.Argument(..., help="A release folder, a folder of mosaics, or one mosaic (FITS)."),
    b: Path = typer.Argument(..., help="What to compare it with: the same kind as A."),
    outdir: Path | None = typer.Option(None, help="Write a figure per band (A, B, A - B) and comparison.ecsv here."),
) -> None:
    """Compare two releases, two folders of mosaics or two files: per band the median and MAD
    of A - B, the background change, the galaxy's flux ratio and the shift (B is reprojected
    onto A's grid)."""
    from release.compare import comparable, side_of
    from release.compare import compare as run_compare

    for p in (a, b):
        if not p.exists():
            raise BadInput(f"{p} does not exist")
    try:
        side_a, side_b = side_of(a), side_of(b)
    except ValueError as exc:  # a README, a PNG, gzip bytes named .fits: not comparable at all
        raise BadInput(str(exc)) from exc
    why = comparable(side_a, side_b)
    if why:
        raise BadInput(why)
    same = a.resolve() == b.resolve() or (
        side_a.kind == side_b.kind == "release" and (side_a.project, side_a.version) == (side_b.project, side_b.version)
    )
    out.print(f"A: {escape(side_a.describe())}\nB: {escape(side_b.describe())}")
    if same:
        out.print("[yellow]A and B are the same release (or file): every difference is zero by construction[/]")
    try:
        with _output_folder(outdir, "compare", "--outdir") as outdir_tmp:
            numbers, skipped = run_compare(a, b, outdir_tmp, label_a=a.name, label_b=b.name)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    table = Table(title=f"{a} against {b}")
    for col in (
        "target",
        "band",
        "product",
        "pixels",
        "median",
        "MAD",
        "background",
        "flux ratio",
        "shift (mas)",
        "E, N (mas)",
    ):
        table.add_column(col)
    for n in numbers:
        table.add_row(
            n.target,
            n.band,
            n.product,
            str(n.pixels),
            f"{n.median:+.4f}",
            f"{n.mad:.4f}",
            f"{n.background:+.4f}",
            f"{n.flux_ratio:.4f}",
            f"{n.shift_mas:.1f}",
            f"{n.shift_east_mas:+.1f}, {n.shift_north_mas:+.1f}",
        )
    out.print(table)
    out.print(
        "MJy/sr; background: the change where the galaxy is faintest; flux ratio: A/B of the galaxy's brighter half "
        "(B moved onto A by the shift first)"
    )
    for why in skipped:
        out.print(f"[yellow]not compared:[/] {escape(why)}")
    if outdir is not None and numbers:
        out.print(f"figures and comparison.ecsv in {outdir}")
    if not numbers:
        raise BadInput(f"nothing to compare between {a} and {b}")


@app.command()
def report(
    manifest: Path = typer.Argument(..., help="Release manifest (TOML) of the release."),
    workdir: Path | None = typer.Option(None, help="Work folder of `hlsp run` (default: hlsp-work/<project>)."),
    releases: Path = typer.Option(
        Path("releases"), help="Where the release is published: RELEASES/<project>/<version>/."
    ),
    cache: Path | None = typer.Option(
        None, help="Task cache folder, if `hlsp run` was given one (default: WORKDIR/cache)."
    ),
    against: Path | None = typer.Option(
        None, help="A previous release to compare with (figures and numbers in the report)."
    ),
    outdir: Path | None = typer.Option(None, help="Report folder (default: WORKDIR/reports/<version>)."),
) -> None:
    """Write the release report: a static HTML page (previews, the stages' QA figures and
    tables, the changelog, the comparison with a previous release)."""
    from release.package import release_dir
    from release.report import write_report

    lm = _load(manifest)
    wd = (workdir or _default_workdir(lm)).resolve()
    dest = release_dir(releases.resolve(), lm)
    if not dest.is_dir():
        raise BadInput(f"{dest} is not published: run `hlsp package {manifest}` first")
    if against is not None and not against.is_dir():
        raise BadInput(f"--against {against}: not a folder")
    if outdir is not None and (inside := release_folder_of(outdir)) is not None:
        raise BadInput(f"--outdir {outdir}: {inside} is a release folder; write the report elsewhere")
    from release.manifest import file_version

    page = write_report(
        lm,
        dest,
        wd,
        outdir or wd / "reports" / file_version(lm.manifest.release.version),
        cache=cache,
        previous=against,
    )
    out.print(f"[bold green]report[/] {page}")


@app.command()
def demo(
    outdir: Path = typer.Option(
        Path("demo-output"), help="Where the synthetic program, the work folder and the demo release go."
    ),
) -> None:
    """Cut the demo releases from the synthetic program, end to end: 1.0.0, 1.1.0 (some bands
    changed) and the patch 1.1.1, each validated against the one before."""
    import tomllib

    import tomli_w

    from processing.fileio import atomic_write_text

    shipped = Path(__file__).resolve().parent.parent / "manifests" / "demo"
    outdir = outdir.resolve()
    program = outdir / "program"
    from processing.fileio import writable_dir

    demo_log = attach_log_file(writable_dir(outdir, "the demo folder") / "logs", "demo")
    out.print(f"log of every library's messages: {demo_log}")

    def pointed(value):
        """The shipped manifests' paths assume demo-output/ beside the repository: here, OUTDIR."""
        if isinstance(value, dict):
            return {k: pointed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [pointed(v) for v in value]
        if isinstance(value, str) and value.startswith("../../demo-output/"):
            return str(outdir / value[len("../../demo-output/") :])
        return value

    # three releases in sequence: 1.0.0, a second full release 1.1.0 (some bands' parameters
    # changed: the cache reuses the rest), and a patch 1.1.1 of one target's NIRCam
    names = ["demo.toml", "demo-1.1.0.toml", "demo-1.1.1.toml"]
    manifests = []
    for name in names:
        data = pointed(tomllib.loads((shipped / name).read_text()))
        manifest = outdir / name
        atomic_write_text(manifest, f"# generated by `hlsp demo` from {shipped / name}\n" + tomli_w.dumps(data))
        manifests.append(manifest)
    out.print(f"[bold]1. manifests[/] {', '.join(str(m) for m in manifests)}")
    for manifest in manifests:
        _call(check, [manifest])
    if (program / "truth" / "truth.json").exists():
        out.print(f"[bold]2. synthetic program[/] {program} (already there, reused)")
    else:
        out.print(f"[bold]2. synthetic program[/] -> {program}")
        _call(simulate, program, size="demo", seed=1)
    releases = outdir / "releases"
    from release.package import release_dir

    previous = None
    for k, manifest in enumerate(manifests, start=1):
        lm = _load(manifest)
        version = lm.manifest.release.version
        out.print(f"[bold]3.{k} processing {version}[/] -> {outdir / 'work'}")
        _call(run, manifest, workdir=outdir / "work", executor="local")
        dest = release_dir(releases, lm)
        if dest.exists():
            out.print(f"[bold]4.{k} packaging {version}[/] {dest} is already published (kept as it is)")
        else:
            out.print(f"[bold]4.{k} packaging {version}[/] -> {releases}")
            _call(package, manifest, workdir=outdir / "work", releases=releases)
        out.print(f"[bold]5.{k} validation {version}[/] {dest}" + (f" against {previous}" if previous else ""))
        _call(
            validate,
            dest,
            junit=outdir / f"validation-{version}.xml",
            against=previous,
            figures=(outdir / "comparisons" / version) if previous else None,
        )
        _call(
            report,
            manifest,
            workdir=outdir / "work",
            releases=releases,
            against=previous,
            outdir=outdir / "reports" / version,
        )
        previous = dest
    out.print(
        f"[bold green]The demo releases are in {releases}[/] (validated, each against the one before; JUnit reports "
        f"{outdir}/validation-*.xml; reports {outdir}/reports/<version>/index.html)"
    )


cache_app = typer.Typer(
    help="Look after a task cache: where the space goes (du), what no manifest needs (prune), damage (verify).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")


def _cache_root(workdir: Path | None, cache: Path | None) -> Path:
    if cache is None and workdir is None:
        raise BadInput("give --workdir (its cache is WORKDIR/cache) or --cache")
    root = (cache or workdir / "cache").resolve()
    if not (root / "objects").is_dir():
        raise BadInput(f"{root} is not a task cache (no objects/ folder)")
    return root


def _intermediate():
    """Whether a task record is an intermediate under the default retention (not of a stage
    that is retained or provides release products)."""
    from processing.registry import default_registry

    kept = default_registry().kept_whole()
    return lambda rec: rec.get("stage") not in kept


@cache_app.command("du")
def cache_du(
    workdir: Path | None = typer.Option(None, help="Work folder (its cache is WORKDIR/cache)."),
    cache: Path | None = typer.Option(None, help="Task cache folder (instead of --workdir)."),
) -> None:
    """Bytes of a cache by stage and by unit, and what the default retention would release."""
    from processing.cache import usage

    root = _cache_root(workdir, cache)
    u = usage(root, _intermediate())
    out.print(f"{root}: {_human(u['total'])} in {u['entries']} entries ({u['thinned']} thinned)", soft_wrap=True)
    table = Table("stage", "bytes", title="by stage")
    for stage, n in sorted(u["by_stage"].items(), key=lambda kv: -kv[1]):
        table.add_row(stage, _human(n))
    out.print(table)
    units = Table("unit (stage/target/band or exposure)", "bytes", title="largest units")
    for unit, n in sorted(u["by_unit"].items(), key=lambda kv: -kv[1])[:15]:
        units.add_row(unit, _human(n))
    out.print(units)
    out.print(f"the default retention would release {_human(u['would_release'])} (thinning the intermediates)")


@cache_app.command("prune")
def cache_prune(
    keep: list[Path] = typer.Option(..., help="A manifest whose tasks' results stay (repeat for several)."),
    workdir: Path | None = typer.Option(None, help="Work folder (its cache is WORKDIR/cache)."),
    cache: Path | None = typer.Option(None, help="Task cache folder (instead of --workdir)."),
) -> None:
    """Remove every cache entry that no listed manifest's task graph reaches (refused while a
    run uses the cache)."""
    from processing.cache import prune
    from processing.executor import Engine, unpublish
    from processing.fileio import folder_lock
    from processing.pipeline import build_graph

    root = _cache_root(workdir, cache)
    with folder_lock(root, "the task cache", "cache prune"):  # refused while a run uses the cache
        keys: set[str] = set()
        for manifest in keep:
            lm = _load(manifest)
            graph = build_graph(lm)
            engine = Engine(
                lm, graph, workdir or root.parent, cache_dir=root, allow_version_mismatch=True, read_only=True
            )
            keys |= set(engine.task_keys().values())
        links = unpublish(workdir, keys) if workdir is not None else (0, 0)
        n, freed = prune(root, keys)
    unlinked = f" and {links[0]} product links of {workdir / 'products'}" if links[0] else ""
    out.print(
        f"removed {n} entries{unlinked}, {_human(freed + links[1])}; kept what {', '.join(str(k) for k in keep)} reach"
    )


@cache_app.command("verify")
def cache_verify(
    workdir: Path | None = typer.Option(None, help="Work folder (its cache is WORKDIR/cache)."),
    cache: Path | None = typer.Option(None, help="Task cache folder (instead of --workdir)."),
) -> None:
    """Re-hash every entry against its record; a damaged one is moved to quarantine/ (the next
    run recomputes it). Exit 1 when something was damaged."""
    from processing.cache import verify
    from processing.fileio import folder_lock

    root = _cache_root(workdir, cache)
    with folder_lock(root, "the task cache", "cache verify"):
        damaged = verify(root)
    for task, why in damaged:
        out.print(f"[red]damaged[/] {escape(task)}: {escape(why)} (moved to {root / 'quarantine'})")
    if damaged:
        raise typer.Exit(1)
    out.print(f"[bold green]verified[/] {root}: every entry matches its record")


def release_folder_of(path: Path) -> Path | None:
    """The release folder ``path`` is (or is inside), or None: a folder holding a release's
    manifest CSV (``hlsp_<project>_..._all_multi_<version>_manifest.csv``)."""
    from release.naming import parse_name

    p = Path(path).expanduser().absolute()
    for q in [p, *p.parents]:
        if q.is_dir() and any(
            (n := parse_name(x.name)) is not None and n.product == "manifest" and n.ext == "csv"
            for x in q.glob("*_manifest.csv")
        ):
            return q
    return None


@contextlib.contextmanager
def _output_folder(path: Path | None, command: str, option: str):
    """A folder a command writes its figures or report into (None: no folder): never inside a
    release (a release holds exactly its manifest's products), and only through
    processing.fileio.owned_output (what the user keeps there is never touched)."""
    from processing.fileio import owned_output

    if path is None:
        yield None
        return
    inside = release_folder_of(path)
    if inside is not None:
        raise BadInput(f"{option} {path}: {inside} is a release folder; write {command} output elsewhere")
    with owned_output(path, command, option) as tmp:
        yield tmp


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: turns our errors into messages and exit codes."""
    try:
        # standalone mode: click reports usage errors itself (exit 2) and raises SystemExit.
        app(args=argv, standalone_mode=True)
    except HlspError as exc:
        err.print("[bold red]error:[/] " + escape(str(exc)), soft_wrap=True)
        return exc.exit_code
    except OSError as exc:
        # a folder the user pointed us at that cannot be written (read-only, not ours):
        # the user's to fix, so exit 2 with the path, never a traceback
        import errno

        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        from processing.fileio import not_writable

        where = Path(exc.filename) if exc.filename else Path(".")
        err.print("[bold red]error:[/] " + escape(str(not_writable(where, exc, "the path"))), soft_wrap=True)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
