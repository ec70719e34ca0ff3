"""The ``hlsp`` command.

Exit codes: 0 success, 1 the work failed, 2 bad input (a manifest, a path, a version).
Errors we raise on purpose are printed as messages, never as tracebacks.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from release.errors import BadInput, HlspError

app = typer.Typer(
    name="hlsp",
    help="Cut JWST imaging data releases as MAST High-Level Science Products.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
log = logging.getLogger(__name__)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=err, show_path=False, rich_tracebacks=False))
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    _setup_logging(verbose)


def _load(manifest: Path):
    from release.manifest import load_manifest

    return load_manifest(manifest)


def _split(values: Optional[str]) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for v in values.split(",") if v.strip()]


# --------------------------------------------------------------------------------------------


@app.command()
def check(manifest: Path = typer.Argument(..., help="Release manifest (TOML).")) -> None:
    """Validate a release manifest and summarise it."""
    from release.manifest import file_version
    from release.instruments import instrument_of

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
    targets: Optional[str] = typer.Option(None, help="Comma-separated targets (default: all)."),
    bands: Optional[str] = typer.Option(None, help="Comma-separated bands (default: all)."),
) -> None:
    """Show what a run of this manifest would do, product by product."""
    from processing.parameters import resolve_parameters
    from processing.stages import BESPOKE_STAGES, PLANNED_STAGES
    from release.instruments import instrument_of
    from release.manifest import file_version
    from release.naming import make_name

    lm = _load(manifest)
    m = lm.manifest
    want_t, want_b = _split(targets), _split(bands)
    for name in want_t or []:
        if name not in m.targets:
            raise BadInput(f"--targets: '{name}' is not a target of {lm.path.name}")
    for band in want_b or []:
        if band.upper() not in m.program.bands:
            raise BadInput(f"--bands: '{band}' is not a band of {lm.path.name}")
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
                in_patch = name in regenerate and (not m.patch.instruments or inst in m.patch.instruments) and (
                    not m.patch.bands or band in m.patch.bands
                )
                action = "regenerate" if in_patch else "carry over"
            bg = ""
            if inst == "miri":
                s = t.miri_background
                bg = s.source + (f" ({s.borrow_from})" if s.borrow_from else "")
            params = resolve_parameters(m, name, band).values
            nset = _count_leaves(params)
            mosaic = make_name(m.release.project, inst, name, band, file_version(m.release.version), "img", "fits")
            table.add_row(name, band, action, bg, str(nset) if nset else "", mosaic)
    out.print(table)
    available = ["lv1", "lv2", "lv3"] if _engine_available() else []
    available += list(BESPOKE_STAGES)
    if not _engine_available():
        out.print(
            "[yellow]The processing engine is not in this version:[/] `hlsp run` does not exist yet, "
            "so nothing above would run and nothing is cached."
        )
    missing = [s for s in PLANNED_STAGES if s not in BESPOKE_STAGES]
    if missing:
        out.print(f"Stages not available in this version (left out of any run): {', '.join(missing)}")


def _engine_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("processing.pipeline") is not None


def _count_leaves(d: dict) -> int:
    return sum(_count_leaves(v) if isinstance(v, dict) else 1 for v in d.values())


@app.command()
def schema(
    outdir: Path = typer.Option(Path("docs"), help="Where to write manifest.schema.json and manifest-reference.md."),
) -> None:
    """Write the manifest JSON Schema and the generated field reference."""
    from release.fileio import atomic_write_text
    from release.schema_doc import REFERENCE_FILE, SCHEMA_FILE, reference_text, schema_text

    atomic_write_text(outdir / SCHEMA_FILE, schema_text())
    atomic_write_text(outdir / REFERENCE_FILE, reference_text())
    out.print(f"wrote {outdir / SCHEMA_FILE} and {outdir / REFERENCE_FILE}")


@app.command()
def simulate(
    outdir: Path = typer.Argument(..., help="Folder for the synthetic program (must be empty or absent)."),
    size: str = typer.Option("demo", help="'demo' (small subarrays, 2 dithers) or 'full' (full detectors, 4 dithers)."),
    seed: int = typer.Option(1, help="Seed of every random draw: the same seed writes the same program."),
    bands: Optional[str] = typer.Option(None, help="Comma-separated bands (default: F200W,F300M,F770W,F1000W,F2100W)."),
    mast_mosaics: bool = typer.Option(False, "--mast-mosaics", help="Also run the jwst defaults to make the 'MAST' level-3 mosaics (minutes)."),
) -> None:
    """Write the synthetic observing program: raw exposures, a local CRDS context and the truth."""
    from rich.progress import Progress

    from processing.simulate.detectors import FILTERS
    from processing.simulate.generate import simulate_program
    from processing.simulate.program import SIZES

    if size not in SIZES:
        raise BadInput(f"--size: '{size}' is not one of {', '.join(SIZES)}")
    band_list = [b.upper() for b in _split(bands)] if bands else None
    for b in band_list or []:
        if b not in FILTERS:
            raise BadInput(f"--bands: '{b}' is not a band the synthetic instruments have ({', '.join(FILTERS)})")
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise BadInput(f"{outdir} exists and is not an empty folder: the synthetic program is written to a new folder only")
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
def demo(
    outdir: Path = typer.Option(Path("demo-output"), help="Where the synthetic program and the demo release go."),
) -> None:
    """Cut the demo release from the synthetic program, end to end, as far as this version can."""
    manifest = Path(__file__).resolve().parent.parent / "manifests" / "demo" / "demo.toml"
    out.print(f"[bold]1. manifest[/] {manifest}")
    check(manifest)
    program = outdir / "program"
    if (program / "truth" / "truth.json").exists():
        out.print(f"[bold]2. synthetic program[/] {program} (already there, reused)")
    else:
        out.print(f"[bold]2. synthetic program[/] -> {program}")
        simulate(program, size="demo", seed=1, bands=None, mast_mosaics=False)
    missing = ["the processing engine (`hlsp run`)", "packaging and validation (`hlsp validate`)"]
    out.print(
        "[bold red]The demo release was not made.[/] This version writes the manifest and the synthetic "
        "program; still missing: " + "; ".join(missing) + "."
    )
    raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: turns our errors into messages and exit codes."""
    try:
        # standalone mode: click reports usage errors itself (exit 2) and raises SystemExit.
        app(args=argv, standalone_mode=True)
    except HlspError as exc:
        err.print("[bold red]error:[/] " + escape(str(exc)), soft_wrap=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
