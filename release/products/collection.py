"""The release's own files (target ``all``, filter ``multi``): the changelog against the
previous release (a patch's against its parent), the README, the release manifest TOML the
products were made from, and the manifest CSV listing every file. Written last, in this
order: the README lists what came before it, the CSV everything."""

from __future__ import annotations

import csv
import datetime
import io
from pathlib import Path

import numpy as np

from release.products import ProductType

MANIFEST_COLUMNS = ("filename", "size", "sha256", "product_type", "target", "instrument", "filter", "version")


# -- the changelog ---------------------------------------------------------------------------------
def write_changes(ctx, unit) -> None:
    from processing.fileio import atomic_write_text
    from release import changelog
    from release.manifest import load_release_manifest

    m = ctx.m
    # a patch against its parent; a full release against the one its manifest names
    previous = ctx.parent if ctx.parent is not None else ctx.lm.resolve_path(m.comparisons.previous_release)
    old = load_release_manifest(previous)
    mchanges = changelog.manifest_changes(old, m)
    fchanges = changelog.product_changes(previous, ctx.staging)
    atomic_write_text(ctx.dest(unit), changelog.render(m, old, mchanges, fchanges))
    ctx.changes = {
        "previous": old.release.version,
        "manifest": mchanges,
        "file": ctx.dest(unit).name,
        "counts": {s: sum(1 for f in fchanges if f.status == s) for s in ("unchanged", "changed", "added", "removed")},
    }


CHANGES = ProductType(
    "changes",
    "txt",
    "release",
    write_changes,
    readme="""\
*_changes.txt: what changed from version {{ changelog.previous }}: every difference of the release
  manifest (pins, program, targets, parameters, products) and every product that changed,
  appeared or is gone (a FITS product is unchanged when it was made by the same recipe, HLSPTASK;
  a changed mosaic with its median difference, flux ratio and shift against the previous one).
""",
    wanted=lambda m: m.release.kind == "patch" or bool(m.comparisons.previous_release),
    on_patch="replace",
)


# -- the README ------------------------------------------------------------------------------------
def render_readme(ctx) -> str:
    """The README (templates/README.txt.j2): the release's facts, the stages that made it, the
    changes, a paragraph per product type it holds (its declaration's ``readme``), the files."""
    import jinja2
    from stdatamodels.jwst.datamodels import dqflags

    from release.naming import file_version

    m = ctx.m
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent.parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    flags = sorted(((int(np.log2(v)), k, v) for k, v in dqflags.pixel.items() if v), key=lambda x: x[2])
    wanted = {i.lower() for i in m.program.instruments}
    stages = [
        {
            "name": s.name,
            "description": s.description,
            "instruments": "" if set(s.instruments) >= wanted else ", ".join(i for i in s.instruments if i in wanted),
        }
        for s in ctx.stages.ordered()
        if wanted & set(s.instruments)
    ]
    from release.naming import parse_name

    files = [
        {"name": f.path.name, "path": f.path, "product": f.product, "target": f.target, "filter": f.filter}
        for f in ctx.files
    ]
    sections = []
    present = {u.ptype for u in ctx.registry.units(m, ctx.stages)}
    for pt in ctx.registry:
        if pt.readme and pt in present:
            own = [
                f
                for f in files
                if (n := parse_name(f["name"])) is not None and ctx.registry.match(n.product, n.ext) is pt
            ]
            more = pt.readme_context(m, own) if pt.readme_context else {}
            sections.append(env.from_string(pt.readme).render(m=m, files=own, changelog=ctx.changes, **more))
    return env.get_template("README.txt.j2").render(
        fetched=fetched_inputs(ctx.lm),
        stages=stages,
        m=m,
        file_version=file_version(m.release.version),
        date=datetime.date.today().isoformat(),
        files=files,
        targets=m.targets,
        flags=flags,
        simulated=ctx.simulated,
        product_sections=sections,
        changelog=ctx.changes,
    )


def fetched_inputs(lm) -> dict | None:
    """What the README says of exposures fetched from MAST: from the fetch record `hlsp fetch`
    wrote in ``program.data.path`` (processing/archive/download.py), the number of files, the
    server, the dates and, per target, the observations (``jw<program><observation><visit>``)
    they come from. None without a record."""
    import json

    from processing.archive.download import RECORD

    data = lm.manifest.program.data
    if not data.path:
        return None
    try:
        record = json.loads((lm.resolve_path(data.path) / RECORD).read_text())
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    visits: dict[str, set[str]] = {}
    for f in files:
        name = Path(f["file"]).name
        visits.setdefault(f.get("target") or Path(f["file"]).parent.name, set()).add(name.split("_")[0])
    dates = sorted(f["fetched"][:10] for f in files if f.get("fetched"))
    return {
        "n": len(files),
        "level": record.get("level", ""),
        "server": record.get("server", ""),
        "first": dates[0] if dates else "",
        "last": dates[-1] if dates else "",
        "visits": {t: sorted(v) for t, v in sorted(visits.items())},
    }


def write_readme(ctx, unit) -> None:
    from processing.fileio import atomic_write_text

    atomic_write_text(ctx.dest(unit), render_readme(ctx))


def check_readme(ctx, rel: str, path: Path, hdul=None) -> None:
    from release.naming import file_version

    text = path.read_text(errors="replace")
    if not text.strip():
        ctx.report.add(rel, "README content", "the README is empty")
        return
    if ctx.manifest is not None:
        fv = file_version(ctx.manifest.release.version)
        ctx.report.add(rel, "README content", None if fv in text else f"the README does not name the version {fv}")
    else:
        ctx.report.add(rel, "README content")


README = ProductType("readme", "txt", "release", write_readme, checks=(check_readme,), on_patch="replace")


# -- the release manifest --------------------------------------------------------------------------
def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def release_manifest_text(lm) -> str:
    """The release manifest as TOML: what every product was made from.

    The settings as the release team wrote them (a patch's inherited from its parent),
    validated: their hash, with the schema version, is the HLSPMANI keyword of every FITS file
    of the release, which validation recomputes from this file (``Manifest.model_validate`` of
    it, then ``content_hash``). Then, as comments (which no parser reads, so they never change
    the identity), every setting with the value it had, defaults included: what a reader needs
    to know exactly what was applied.
    """
    import tomli_w

    from release.manifest import SCHEMA_VERSION

    m = lm.manifest
    body = tomli_w.dumps(_drop_none(m.written()))
    resolved = tomli_w.dumps(_drop_none(m.model_dump(mode="json")))
    return (
        f"# The release manifest of {m.release.project} {m.release.version} as written (a patch's with what it\n"
        f"# inherits from its parent), validated: every product of this release was made from it.\n"
        f"# Identity (HLSPMANI: sha256 of schema version {SCHEMA_VERSION} + these settings): {m.content_hash()}\n"
        f"{body}\n"
        f"# ---- Every setting as applied, defaults included (schema version {SCHEMA_VERSION}; comments only) ----\n"
        + "".join(f"# {line}\n" if line else "#\n" for line in resolved.splitlines())
    )


def write_manifest_toml(ctx, unit) -> None:
    from processing.fileio import atomic_write_text

    atomic_write_text(ctx.dest(unit), release_manifest_text(ctx.lm))


MANIFEST_TOML = ProductType(
    "manifest",
    "toml",
    "release",
    write_manifest_toml,
    readme="*_manifest.toml: the release manifest every product was made from (its identity is HLSPMANI).\n",
    on_patch="keep",
)


# -- the file list ---------------------------------------------------------------------------------
def write_manifest_csv(dest: Path, files: list, root: Path, version: str) -> None:
    from processing.fileio import atomic_write_text, file_sha256
    from release.naming import parse_name

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_COLUMNS)
    for f in sorted(files, key=lambda f: str(f.path)):
        rel = f.path.relative_to(root).as_posix()
        parsed = parse_name(f.path.name)  # a patch carries the parent's files with their version
        w.writerow(
            [
                rel,
                f.path.stat().st_size,
                file_sha256(f.path),
                f.product,
                f.target,
                f.instrument,
                f.filter,
                parsed.version if parsed else version,
            ]
        )
    atomic_write_text(dest, buf.getvalue())


def write_csv(ctx, unit) -> None:
    write_manifest_csv(ctx.dest(unit), ctx.files, ctx.staging, ctx.version)


def check_csv(ctx, rel: str, path: Path, hdul=None) -> None:
    """The file list lists every file of the release but itself, once, with its size, sha256
    and the fields its name gives."""
    from processing.fileio import file_sha256
    from release.naming import parse_name

    report, rels = ctx.report, ctx.rels
    listed: dict[str, dict] = {}
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        report.add(rel, "manifest readable", f"cannot be read as CSV: {exc}")
        return
    header = tuple(rows[0].keys()) if rows else ()
    if rows and header != MANIFEST_COLUMNS:
        report.add(rel, "manifest columns", f"columns are {header}, expected {MANIFEST_COLUMNS}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("filename", "")] = counts.get(row.get("filename", ""), 0) + 1
    for name, n in counts.items():
        if n > 1:
            report.add(name, "listed once", f"listed {n} times in {rel}")
    for row in rows:
        name = row.get("filename", "")
        if name in listed:
            continue
        listed[name] = row
        p = rels.get(name)
        if p is None:
            report.add(name, "listed file exists", f"listed in {rel} but not in the release")
            continue
        if str(p.stat().st_size) != row.get("size"):
            report.add(
                name, "size matches manifest", f"size {p.stat().st_size} but the manifest says {row.get('size')}"
            )
        else:
            report.add(name, "size matches manifest")
        digest = file_sha256(p)
        report.add(
            name,
            "sha256 matches manifest",
            None
            if digest == row.get("sha256")
            else f"sha256 {digest[:16]}... but the manifest says {str(row.get('sha256'))[:16]}...",
        )
        parsed = parse_name(Path(name).name)
        if parsed and (
            parsed.target != row.get("target")
            or parsed.version != row.get("version")
            or parsed.product != row.get("product_type")
        ):
            report.add(
                name,
                "manifest fields match name",
                "target/version/product type in the manifest differ from the file name",
            )
    for other in rels:
        if other != rel and other not in listed:
            report.add(other, "file is in manifest", f"not listed in {rel}")


MANIFEST_CSV = ProductType(
    "manifest",
    "csv",
    "release",
    write_csv,
    checks=(check_csv,),
    readme="*_manifest.csv: every file of this delivery with its size and sha256.\n",
    on_patch="replace",
)
