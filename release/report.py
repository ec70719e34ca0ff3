"""The release report: one static HTML page per release (no server: open ``index.html``), a
self-contained folder (every image copied beside it, relative links).

What it shows (templates/report.html.j2): the release (version, manifest hash, pins, counts,
the changelog when there is one); per target and band the mosaic's preview and the QA figures
the stages of this manifest wrote (absolute astrometry residuals, anchoring fits, PSF-matching
kernels and noise curves, whatever PNG a task of the manifest's graph left in the cache: found
by the task keys, so only this manifest's); the per-target tables of the release (anchoring,
PSF matching) as HTML tables; with a previous release, the comparison figures and numbers
(release/compare.py). Every figure has axes, a colour bar where it shows an image, and units.

A script on the page counts the images that did not load (``data-broken-images`` on
``<body>``): the test opens the page in headless Chromium and reads it.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def qa_figures(lm, workdir: Path, cache: Path | None = None) -> dict[tuple[str, str], list[tuple[str, Path]]]:
    """``{(target, band or instrument): [(stage, png)]}``: the figures the tasks of this
    manifest's graph wrote, found in the cache by their keys (nothing from other manifests)."""
    from processing.executor import Engine
    from processing.pipeline import build_graph

    engine = Engine(lm, build_graph(lm), Path(workdir), cache_dir=cache, read_only=True)
    out: dict[tuple[str, str], list[tuple[str, Path]]] = {}
    for tid, key in engine.task_keys().items():
        rec = engine.cache.lookup(key)
        if rec is None:
            continue
        task = engine.graph.tasks[tid]
        for name in sorted(rec.get("outputs", {})):
            if name.endswith(".png"):
                unit = (task.target, task.band or task.instrument or "all")
                out.setdefault(unit, []).append((task.stage, engine.cache.entry(key) / name))
    return out


def _table_html(path: Path) -> str:
    """An ECSV table as an HTML table (numbers to 4 significant digits)."""
    import io

    import numpy as np
    from astropy.table import Table

    t = Table.read(path, format="ascii.ecsv")
    for name in t.colnames:
        if t[name].dtype.kind == "f":
            t[name].info.format = ".4g"
        elif t[name].dtype.kind == "O" or (len(t) and isinstance(t[name][0], np.ndarray)):
            t[name] = [str(v) for v in t[name]]
    buf = io.StringIO()
    t.write(buf, format="ascii.html", htmldict={"table_class": "qa"})
    text = buf.getvalue()
    return text[text.index("<table") : text.index("</table>") + len("</table>")]


def write_report(
    lm, release: Path, workdir: Path, outdir: Path, cache: Path | None = None, previous: Path | None = None
) -> Path:
    """Write ``outdir/index.html`` (and its images) for ``release``, made from manifest ``lm``
    in ``workdir``; ``previous``: a release to compare with. Returns the page."""
    from processing.fileio import owned_output

    release, final = Path(release), Path(outdir)
    # written into a new folder that replaces only this command's own earlier report (never a
    # folder holding anything else, never through a link): processing/fileio.py owned_output
    with owned_output(final, "report") as outdir:
        _write_report(lm, release, workdir, outdir, cache, previous)
    log.info("report of %s: %s", release, final / "index.html")
    return final / "index.html"


def _write_report(lm, release: Path, workdir: Path, outdir: Path, cache: Path | None, previous: Path | None) -> None:
    import jinja2

    from release.compare import compare
    from release.manifest import file_version
    from release.naming import parse_name

    m = lm.manifest
    img_dir = outdir / "img"
    img_dir.mkdir(parents=True)

    def copy(src: Path, name: str) -> str:
        shutil.copyfile(src, img_dir / name)
        return f"img/{name}"

    figures = qa_figures(lm, workdir, cache)
    files = sorted(p for p in release.rglob("*") if p.is_file())
    previews = {}
    tables = {}
    for p in files:
        parsed = parse_name(p.name)
        if parsed is None:
            continue
        if parsed.product == "img-preview":
            previews[(parsed.target, parsed.filter.upper())] = copy(p, p.name)
        elif parsed.ext == "ecsv" and parsed.filter == "multi":
            tables.setdefault(parsed.target, []).append(
                {"product": parsed.product, "name": p.name, "html": _table_html(p)}
            )
    targets = []
    for target in m.targets:
        bands = []
        for band in m.target_bands(target):
            qa = [
                {"stage": stage, "src": copy(png, f"{target}_{band.lower()}_{stage}_{png.name}")}
                for stage, png in figures.get((target, band), [])
            ]
            bands.append(
                {
                    "band": band,
                    "preview": previews.get((target, band)),
                    "qa": qa,
                    "regenerated": m.regenerates(target, band),
                }
            )
        inst_figs = [
            {"stage": stage, "src": copy(png, f"{target}_{unit}_{stage}_{png.name}")}
            for (t, unit), figs in figures.items()
            if t == target and unit in ("nircam", "miri", "all")
            for stage, png in figs
        ]
        targets.append(
            {
                "name": target,
                "designation": m.targets[target].designation or target,
                "bands": bands,
                "instrument_figures": inst_figs,
                "tables": tables.get(target, []),
            }
        )
    comparisons = []
    against = [("previous", Path(previous), f"{Path(previous).name} (previous)")] if previous is not None else []
    if m.comparisons.mast_mosaics:  # MAST's level-3 mosaics (the synthetic program: jwst defaults)
        against.append(("mast", lm.resolve_path(m.comparisons.mast_mosaics), "MAST level 3"))
    for kind, folder, label in against:
        if not folder.is_dir():
            comparisons.append({"kind": kind, "label": label, "rows": [], "skipped": [f"{folder} is not a folder"]})
            continue
        numbers, skipped = compare(
            release, folder, outdir / kind, label_a=f"{release.name} (this release)", label_b=label
        )
        comparisons.append(
            {
                "kind": kind,
                "label": label,
                "skipped": skipped,
                "rows": [
                    {**n.as_dict(), "figure": f"{kind}/{n.target}_{n.band.lower()}_{n.product}_comparison.png"}
                    for n in numbers
                ],
            }
        )
    changes = next(release.glob("*_changes.txt"), None)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(["html"]),
    )
    page = env.get_template("report.html.j2").render(
        m=m,
        version=m.release.version,
        file_version=file_version(m.release.version),
        release=release.name,
        date=datetime.date.today().isoformat(),
        manifest_hash=m.content_hash(),
        n_files=len(files),
        targets=targets,
        comparisons=comparisons,
        changes=changes.read_text() if changes else None,
    )
    (outdir / "index.html").write_text(page)


def chromium_executable() -> str | None:
    """Chromium (Debian package ``chromium``; `make sysdeps` installs it as root), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render_in_chromium(page: Path, screenshot: Path | None = None, timeout: float = 120.0) -> dict:
    """Open ``page`` in headless Chromium: ``{"images": n, "broken": n, "dom": text}`` read
    from the page's own count after loading (and a screenshot of it, where asked)."""
    import re
    import subprocess
    import tempfile

    exe = chromium_executable()
    if exe is None:
        raise FileNotFoundError(
            "chromium is not installed (Debian package 'chromium'; `make sysdeps` installs it as root)"
        )
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--allow-file-access-from-files",
            "--virtual-time-budget=20000",
        ]
        url = Path(page).resolve().as_uri()
        dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout).stdout
        if screenshot is not None:
            subprocess.run(
                flags + [f"--screenshot={screenshot}", "--window-size=1400,2400", url],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken-images="(\d+)"', dom)
    return {
        "images": int(images.group(1)) if images else None,
        "broken": int(broken.group(1)) if broken else None,
        "dom": dom,
    }
