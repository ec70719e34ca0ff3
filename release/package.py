"""From mosaics to a release that MAST accepts.

What a release holds is declared once per product type (release/products/): the registry's
units for the manifest are the files of the release; each is written by its type's writer
into a staging folder beside the release's final place, which is moved there by one rename.
A published version is never overwritten; an interrupted packaging leaves only the staging
folder (named ``.staging-*``), never a partial release. A patch carries its parent's files
over, each proved to be the file the parent published.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from processing.errors import BadInput, HlspError, WorkFailed
from processing.fileio import remove_scratch
from release.manifest import LoadedManifest, file_version
from release.products import PackagedFile, PackContext, ProductTypes
from release.products.registry import default_product_types

log = logging.getLogger(__name__)

__all__ = ["PackagedFile", "package_release", "parent_release", "release_dir", "check_packageable"]


def release_dir(root: Path, lm: LoadedManifest) -> Path:
    m = lm.manifest
    return Path(root) / m.release.project / file_version(m.release.version)


def check_packageable(lm: LoadedManifest) -> None:
    """Refuse, before any work, a manifest this version cannot package."""
    prev = lm.manifest.comparisons.previous_release
    if prev:
        from release.manifest import load_release_manifest

        path = lm.resolve_path(prev)
        try:
            load_release_manifest(path)
        except Exception as exc:  # noqa: BLE001 - any unusable previous release is the user's to fix
            raise BadInput(
                f"{lm.path.name}: comparisons.previous_release: {path} is not a release folder of this system "
                f"({type(exc).__name__}: {exc})"
            ) from exc


def parent_release(lm: LoadedManifest, releases_root: Path) -> Path | None:
    """A patch's parent release, published beside it (``<root>/<project>/<parent version>``);
    None for a full release. Not published: refused, naming it."""
    m = lm.manifest
    if m.release.kind != "patch":
        return None
    path = Path(releases_root) / m.release.project / file_version(m.release.previous)
    if not (path / next((p.name for p in path.glob("*_manifest.csv")), "-")).is_file():
        raise BadInput(
            f"{lm.path.name}: a patch carries its parent's files over, but the parent release {m.release.previous} "
            f"is not published at {path}: package the parent first"
        )
    return path


def package_release(
    lm: LoadedManifest,
    products: list,
    releases_root: Path,
    simulated: bool,
    registry: ProductTypes | None = None,
    stages=None,
) -> Path:
    """Write the release of ``products`` (the engine's product index: entries with
    ``product``, ``target``, ``band`` and ``path``); return its folder.

    The release holds the units ``registry.units(manifest)`` (release/products/), each
    written by its type's writer from the run's products it is made from: every one must be
    there, and the run may provide nothing no declaration makes a file of. One packaging at a
    time per project folder (a lock); staging folders left by a killed packaging are removed
    first; the release is world-readable. ``registry``/``stages``: the product types and the
    stage registry (default: this system's).
    """
    from processing.fileio import folder_lock, make_world_readable

    m = lm.manifest
    registry = registry or default_product_types()
    if stages is None:
        from processing.registry import default_registry

        stages = default_registry()
    check_packageable(lm)
    dest = release_dir(releases_root, lm)
    sources = {pt.source for pt in registry if pt.source}
    unknown = sorted({e.product for e in products if e.kind not in sources})
    if unknown:
        raise WorkFailed(f"the run provides product type(s) {', '.join(unknown)} that no release product is made of")
    parent = parent_release(lm, releases_root)
    ctx = PackContext(lm, Path("."), simulated, list(products), registry, stages, parent=parent)
    units = [u for u in registry.units(m, stages) if u.regenerated(m)]
    missing = sorted(
        f"{u.target}/{u.band or ''} {u.product}".replace("/ ", " ")
        for u in units
        if u.ptype.source and not ctx.entries_for(u)
    )
    if missing:
        raise BadInput(f"no run product for {', '.join(missing[:6])}: run `hlsp run` first (or it failed)")
    wanted = {(u.target, u.band) for u in units if u.band is not None}
    extra = sorted(
        {f"{e.target}/{e.band}" for e in products if e.band is not None and (e.target, e.band) not in wanted}
    )
    if extra:
        raise BadInput(f"products for {', '.join(extra)} are not products of {lm.path.name}")
    with folder_lock(dest.parent, "the release folder", "package"):
        if dest.exists() or dest.is_symlink():
            raise BadInput(
                f"{dest} is already published: a released version is never overwritten (raise release.version)"
            )
        for stale in sorted(dest.parent.glob(".staging-*")):
            # under the lock no other packaging runs: any staging folder is a killed one's
            log.info("removing %s, left by an interrupted packaging", stale)
            remove_scratch(stale)
        staging = dest.parent / f".staging-{dest.name}-{os.getpid()}"
        staging.mkdir(parents=True)
        try:
            ctx.staging = staging
            files = _write_files(ctx, units)
            make_world_readable(staging)  # a release is for others to read
        except BaseException as exc:
            remove_scratch(staging)  # our own staging: a failed packaging leaves nothing behind
            if isinstance(exc, Exception) and not isinstance(exc, HlspError):
                raise WorkFailed(
                    f"packaging {dest.name} failed: {type(exc).__name__}: {exc}; nothing was published"
                ) from exc
            raise
        os.rename(staging, dest)  # the release appears whole or not at all
    log.info("published %s (%d files)", dest, len(files))
    return dest


def _copy_published(src: Path, dest: Path | io.BytesIO, row: dict, csv_name: str) -> str:
    """Carry a parent release's file to ``dest`` (a path, or a buffer), proving it is the file
    the parent published: a regular file (a link is refused, never followed), of the size and
    sha256 its manifest CSV records, read once. A path ``dest`` becomes a hard link to the very
    file that was proved (the link's inode is checked to be the one read) where both are on one
    file system, else a copy of what was read. Anything else stops the
    packaging (exit 1) naming it. Returns ``'link'`` or ``'copy'``."""
    import contextlib
    import hashlib
    import shutil
    import stat

    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        why = "is a symbolic link" if os.path.islink(src) else f"cannot be read ({exc.strerror})"
        raise WorkFailed(f"the parent release's {src} {why}: a patch carries only the files the parent published")
    how = "copy"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise WorkFailed(f"the parent release's {src} is not a regular file: refusing to carry it")
        if isinstance(dest, Path):
            dest.parent.mkdir(parents=True, exist_ok=True)
        link = isinstance(dest, Path) and os.stat(dest.parent).st_dev == st.st_dev
        out = None if link else (open(dest, "wb") if isinstance(dest, Path) else contextlib.nullcontext(dest))
        h, size = hashlib.sha256(), 0
        with out if out is not None else contextlib.nullcontext() as sink:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
                size += len(chunk)
                if sink is not None:
                    sink.write(chunk)
        ok = str(size) == str(row.get("size")) and h.hexdigest() == row.get("sha256")
        if ok and link:
            try:  # a link to the path, kept only if it is the very file proved (its inode)
                os.link(src, dest, follow_symlinks=False)
                if (os.lstat(dest).st_dev, os.lstat(dest).st_ino) == (st.st_dev, st.st_ino):
                    how = "link"
                else:
                    dest.unlink()  # swapped in between: copy what was proved instead
            except OSError:
                pass
            if how != "link":
                fh.seek(0)
                with open(dest, "wb") as copy:
                    shutil.copyfileobj(fh, copy)
    if not ok:
        if isinstance(dest, Path) and dest.exists():
            dest.unlink()
        raise WorkFailed(
            f"the parent release's {src} is not the file it published ({csv_name} records "
            f"{row.get('size')} bytes, sha256 {str(row.get('sha256'))[:16]}...; it has {size} bytes, sha256 "
            f"{h.hexdigest()[:16]}...): it was changed after publication; restore it (or re-cut the parent) before "
            "packaging a patch of it"
        )
    return how


def _carry_over(ctx: PackContext) -> None:
    """A patch's copy of every parent file it does not remake (byte-identical, the parent's
    name and version, each proved to be the file the parent published: :func:`_copy_published`),
    as each file's type says (``on_patch``); the parent's parts of the per-target tables it
    partly remakes (``merge``) go to ``ctx.parent_parts`` after the same proof."""
    from release.naming import parse_name

    m, parent = ctx.m, ctx.parent
    manifest_csv = next(parent.glob("*_manifest.csv"))
    if manifest_csv.is_symlink():
        raise WorkFailed(f"the parent release's {manifest_csv} is a symbolic link: refusing to read it")
    with open(manifest_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    listed = {row["filename"] for row in rows}
    unlisted = sorted(
        p.relative_to(parent).as_posix()
        for p in parent.rglob("*")
        if (p.is_file() or p.is_symlink()) and p != manifest_csv and p.relative_to(parent).as_posix() not in listed
    )
    if unlisted:
        raise WorkFailed(
            f"the parent release {parent} holds file(s) its {manifest_csv.name} does not list "
            f"({', '.join(unlisted[:3])}{' ...' if len(unlisted) > 3 else ''}): it was changed after publication"
        )
    for row in rows:
        rel = row["filename"]
        parsed = parse_name(Path(rel).name)
        pt = ctx.registry.match(parsed.product, parsed.ext) if parsed else None
        if pt is None or pt.on_patch == "replace":
            continue  # what this release makes its own of (README, file list, changes)
        regenerated = pt.per != "release" and (
            m.regenerates(parsed.target, parsed.filter.upper())
            if pt.per == "band"
            else any(m.regenerates(parsed.target, b.upper()) for b in m.target_bands(parsed.target))
        )
        if regenerated and pt.on_patch == "merge":
            proved = io.BytesIO()
            _copy_published(parent / rel, proved, row, manifest_csv.name)
            ctx.parent_parts[(parsed.product, parsed.target)] = proved.getvalue()
            continue
        if regenerated:
            continue
        dest = ctx.staging / rel
        _copy_published(parent / rel, dest, row, manifest_csv.name)
        ctx.files.append(PackagedFile(dest, parsed.product, parsed.target, parsed.instrument, parsed.filter))


def _write_files(ctx: PackContext, units: list) -> list[PackagedFile]:
    """Every unit this release makes, by its type's writer, in the registry's order; a patch's
    carried files first (the tables it merges need the parent's parts; its changes, README and
    file list see them)."""
    if ctx.parent is not None:
        _carry_over(ctx)
    for unit in units:
        dest = ctx.dest(unit)
        dest.parent.mkdir(parents=True, exist_ok=True)
        unit.ptype.write(ctx, unit)
        ctx.files.append(PackagedFile(dest, unit.product, unit.target, unit.instrument, unit.filter))
    return ctx.files
