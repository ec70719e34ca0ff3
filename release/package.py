"""From mosaics to a release that MAST accepts (reference/hlsp.md).

Per target and band: ``hlsp_<proj>_jwst_<inst>_<target>_<filter>_<ver>_img.fits`` with the
extensions of the paper's Table 3 (SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE, VAR_FLAT, CON, WHT)
plus INPUTS (the exposures it was made from), the celestial WCS in every image extension,
MAST's required and recommended keywords, our provenance, and CHECKSUM/DATASUM on every HDU;
and a PNG preview. Per release: a README rendered from templates/ and a manifest CSV (file,
size, sha256, product type, target, instrument, filter, version).

The release is written to a staging folder beside its final place and moved there by one
rename; a published version is never overwritten; an interrupted packaging leaves only the
staging folder (named ``.staging-*``), never a partial release.

Per target and band also the tweakback tarball (the exposures with the absolute astrometry
back-propagated) when the manifest's ``products.tweakback`` asks for it, and the mosaic at each
PSF-matched resolution of ``products.convolved_fwhm_arcsec`` (``img-gauss0p85as``: SCI and ERR
with the beam keywords).
"""

from __future__ import annotations

import csv
import datetime
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processing.errors import BadInput, HlspError, WorkFailed
from processing.fileio import file_sha256, remove_scratch
from release.manifest import LoadedManifest, file_version
from release.naming import collection_instrument, convolved_fwhm, convolved_product, make_name

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "CON", "WHT")
UNITS = {
    "SCI": "MJy/sr",
    "ERR": "MJy/sr",
    "VAR_POISSON": "(MJy/sr)**2",
    "VAR_RNOISE": "(MJy/sr)**2",
    "VAR_FLAT": "(MJy/sr)**2",
}
EXT_COMMENT = {
    "SCI": "surface brightness",
    "ERR": "1-sigma uncertainty (Poisson and read noise)",
    "DQ": "data quality flags (jwst dqflags bits)",
    "VAR_POISSON": "variance from Poisson noise",
    "VAR_RNOISE": "variance from read noise",
    "VAR_FLAT": "variance from flat-field uncertainty",
    "CON": "context: bit mask of contributing inputs",
    "WHT": "relative weight",
}
#: Keywords carried over from the jwst mosaic's primary header.
CARRY = (
    "TELESCOP",
    "INSTRUME",
    "DETECTOR",
    "FILTER",
    "PUPIL",
    "CAL_VER",
    "CRDS_VER",
    "CRDS_CTX",
    "HLSPMANI",
    "HLSPTASK",
    "HLSPCODE",
    "HLSPJWST",
    "HLSPCRDS",
    "HLSPVMIS",
)
#: Products a manifest can ask for that this version does not write (the README and the
#: command say so).
NOT_IN_THIS_VERSION: dict[str, str] = {}
#: Keywords of a PSF-matched mosaic's extensions: the beam.
BEAM_KEYWORDS = ("BMAJ", "BMIN", "BPA")


@dataclass
class PackagedFile:
    path: Path
    product: str
    target: str
    instrument: str
    filter: str


def release_dir(root: Path, lm: LoadedManifest) -> Path:
    m = lm.manifest
    return Path(root) / m.release.project / file_version(m.release.version)


def check_packageable(lm: LoadedManifest) -> None:
    """Refuse, before any work, a manifest this version cannot package."""
    prev = lm.manifest.comparisons.previous_release
    if prev:
        from release.changelog import load_release_manifest

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


def package_release(lm: LoadedManifest, products: list, releases_root: Path, simulated: bool) -> Path:
    """Write the release of ``products`` (the engine's product index: entries with
    ``product``, ``target``, ``band`` and ``path``); return its folder.

    Each product type is written by its writer (:data:`PRODUCT_WRITERS`); a type this version
    cannot write is refused. The mosaics (``img``) must be exactly the manifest's targets and
    bands (the engine finds them by their task keys). One packaging at a time per project
    folder (a lock); staging folders left by a killed packaging are removed first; the
    release is world-readable.
    """
    from processing.fileio import folder_lock, make_world_readable

    m = lm.manifest
    check_packageable(lm)
    dest = release_dir(releases_root, lm)
    unknown = sorted({e.product for e in products if e.kind not in PRODUCT_WRITERS} - set(_target_tables()))
    if unknown:
        raise WorkFailed(f"the run provides product type(s) {', '.join(unknown)} that this version cannot package")
    parent = parent_release(lm, releases_root)
    mosaics = {(e.target, e.band): e.path for e in products if e.product == "img"}
    expected = {(t, b) for t in m.targets for b in m.target_bands(t) if m.regenerates(t, b)}
    missing = sorted(f"{t}/{b}" for t, b in expected - set(mosaics))
    if missing:
        raise BadInput(f"no mosaic for {', '.join(missing)}: run `hlsp run` first (or it failed)")
    extra = sorted(f"{t}/{b}" for t, b in set(mosaics) - expected)
    if extra:
        raise BadInput(f"mosaics for {', '.join(extra)} are not products of {lm.path.name}")
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
            files = _write_files(lm, products, staging, simulated, parent)
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


# --------------------------------------------------------------------------------------------


def _write_img_product(lm: LoadedManifest, entry, staging: Path, simulated: bool) -> list[PackagedFile]:
    """The released mosaic and its preview, from a level-3 mosaic."""
    from processing.instruments import instrument_of

    m = lm.manifest
    fv = file_version(m.release.version)
    target, band = entry.target, entry.band
    inst = instrument_of(band)
    out = staging / target / make_name(m.release.project, inst, target, band, fv, "img", "fits")
    write_img(entry.path, out, lm, target, band, simulated)
    files = [PackagedFile(out, "img", target, inst, band.lower())]
    if m.products.previews:
        png = staging / target / make_name(m.release.project, inst, target, band, fv, "img-preview", "png")
        write_preview(out, png, f"{m.targets[target].designation or target} {band}")
        files.append(PackagedFile(png, "img-preview", target, inst, band.lower()))
    return files


def _write_tweakback_product(lm: LoadedManifest, entry, staging: Path, simulated: bool) -> list[PackagedFile]:
    """The tweakback tarball of a target and band, as the astrometry stage wrote it (every
    exposure with the absolute astrometry back-propagated, under one folder); absent when the
    manifest's ``products.tweakback`` is false."""
    import shutil

    from processing.instruments import instrument_of

    m = lm.manifest
    if not m.products.tweakback:
        return []
    inst = instrument_of(entry.band)
    out = (
        staging
        / entry.target
        / make_name(
            m.release.project, inst, entry.target, entry.band, file_version(m.release.version), "tweakback", "tar.gz"
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(entry.path, out)
    return [PackagedFile(out, "tweakback", entry.target, inst, entry.band.lower())]


def _write_variant_img_product(lm: LoadedManifest, entry, staging: Path, simulated: bool) -> list[PackagedFile]:
    """A variant of the mosaic (``img-gauss0p85as``: the PSF-matched mosaic), SCI and ERR as
    its stage wrote them, with the release's primary header and the beam keywords."""
    from processing.instruments import instrument_of

    m = lm.manifest
    inst = instrument_of(entry.band)
    out = (
        staging
        / entry.target
        / make_name(
            m.release.project, inst, entry.target, entry.band, file_version(m.release.version), entry.product, "fits"
        )
    )
    write_variant_img(entry.path, out, lm, entry.target, entry.band, simulated, entry.product)
    return [PackagedFile(out, entry.product, entry.target, inst, entry.band.lower())]


#: Release product type, as stages declare them (``img-{variant}`` for every variant) -> the
#: function that writes it into a release.
PRODUCT_WRITERS = {
    "img": _write_img_product,
    "tweakback": _write_tweakback_product,
    "img-{variant}": _write_variant_img_product,
}


def _target_tables() -> dict:
    from processing.registry import default_registry

    return default_registry().target_tables()


def _write_target_table(
    lm: LoadedManifest, ptype: str, target: str, entries: list, staging: Path, parent_table: bytes | None = None
) -> list[PackagedFile]:
    """One table per target of a per-target product (e.g. the anchoring offsets): the bands'
    tables stacked in band order, each row with its band, the metadata of each band kept
    under its name. ``parent_table`` (its ECSV text, as published): a patch that remakes some
    of the target's bands keeps the parent's rows and metadata of the others."""
    from astropy.table import Table, vstack

    from processing.instruments import instrument_of

    m = lm.manifest
    parts, meta = [], {}
    for entry in sorted(entries, key=lambda e: e.band or ""):
        t = Table.read(entry.path, format="ascii.ecsv")
        t.add_column([entry.band] * len(t), name="band", index=0)
        parts.append(t)
        meta[entry.band] = dict(t.meta)
    if parent_table is not None:
        old = Table.read(parent_table.decode(), format="ascii.ecsv")
        keep = [b for b in (old.meta.get("bands") or {}) if b not in meta]
        if keep:
            parts.append(old[[str(b) in keep for b in old["band"]]])
            meta.update({b: old.meta["bands"][b] for b in keep})
    table = vstack(parts, metadata_conflicts="silent") if parts else Table()
    if len(table):
        table = table[np.argsort(np.asarray(table["band"], str), kind="stable")]
    table.meta.clear()
    table.meta.update(
        {"release": m.release.project, "version": m.release.version, "target": target, "product": ptype, "bands": meta}
    )
    inst = collection_instrument(instrument_of(b) for b in meta)
    out = (
        staging
        / target
        / make_name(m.release.project, inst, target, "multi", file_version(m.release.version), ptype, "ecsv")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    table.write(out, format="ascii.ecsv", overwrite=True)
    return [PackagedFile(out, ptype, target, inst, "multi")]


def _copy_published(src: Path, dest: Path | io.BytesIO, row: dict, csv_name: str) -> None:
    """Copy a parent release's file to ``dest`` (a path, or a buffer), proving it is the file
    the parent published: a regular file (a link is refused, never followed), of the size and
    sha256 its manifest CSV records (read once, hashed while copied). Anything else stops the
    packaging (exit 1) naming it."""
    import contextlib
    import hashlib
    import stat

    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        why = "is a symbolic link" if os.path.islink(src) else f"cannot be read ({exc.strerror})"
        raise WorkFailed(f"the parent release's {src} {why}: a patch carries only the files the parent published")
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise WorkFailed(f"the parent release's {src} is not a regular file: refusing to carry it")
        h = hashlib.sha256()
        size = 0
        if isinstance(dest, Path):
            dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") if isinstance(dest, Path) else contextlib.nullcontext(dest) as out:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
    if str(size) != str(row.get("size")) or h.hexdigest() != row.get("sha256"):
        raise WorkFailed(
            f"the parent release's {src} is not the file it published ({csv_name} records "
            f"{row.get('size')} bytes, sha256 {str(row.get('sha256'))[:16]}...; it has {size} bytes, sha256 "
            f"{h.hexdigest()[:16]}...): it was changed after publication; restore it (or re-cut the parent) before "
            "packaging a patch of it"
        )


def _carry_over(
    lm: LoadedManifest, parent: Path, staging: Path, patched_tables: set
) -> tuple[list[PackagedFile], dict]:
    """A patch's copy of every parent file it does not remake (byte-identical, the parent's
    name and version, each proved to be the file the parent published: :func:`_copy_published`),
    and the parent's per-target tables of the targets it patches (``{(type, target): path}``,
    merged by :func:`_write_target_table`, after the same proof)."""
    from release.naming import parse_name

    m = lm.manifest
    files, tables = [], {}
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
        if parsed is None or (parsed.target == "all" and not (parsed.product == "manifest" and parsed.ext == "toml")):
            continue  # the parent's README, manifest CSV and changes: this release has its own
        if parsed.target == "all":  # the parent's manifest (and its parents'): the carried files were made from it
            _copy_published(parent / rel, staging / rel, row, manifest_csv.name)
            files.append(PackagedFile(staging / rel, parsed.product, parsed.target, parsed.instrument, parsed.filter))
            continue
        if parsed.filter == "multi":
            if (parsed.product, parsed.target) in patched_tables:
                proved = io.BytesIO()
                _copy_published(parent / rel, proved, row, manifest_csv.name)
                tables[(parsed.product, parsed.target)] = proved.getvalue()
                continue
        elif m.regenerates(parsed.target, parsed.filter.upper()):
            continue
        dest = staging / rel
        _copy_published(parent / rel, dest, row, manifest_csv.name)
        files.append(PackagedFile(dest, parsed.product, parsed.target, parsed.instrument, parsed.filter))
    return files, tables


def _write_files(
    lm: LoadedManifest, products: list, staging: Path, simulated: bool, parent: Path | None = None
) -> list[PackagedFile]:
    m = lm.manifest
    fv = file_version(m.release.version)
    files: list[PackagedFile] = []
    tables = _target_tables()
    grouped: dict[tuple[str, str], list] = {}
    for entry in sorted(products, key=lambda e: (e.product, e.target, e.band or "", e.path.name)):
        if entry.product in tables:
            grouped.setdefault((entry.product, entry.target), []).append(entry)
        else:
            files += PRODUCT_WRITERS[entry.kind](lm, entry, staging, simulated)
    parent_tables: dict = {}
    if parent is not None:  # a patch: the parent's files it does not remake, as they are
        carried, parent_tables = _carry_over(lm, parent, staging, set(grouped))
        files += carried
    for (ptype, target), entries in sorted(grouped.items()):
        files += _write_target_table(lm, ptype, target, entries, staging, parent_tables.get((ptype, target)))
    insts = collection_instrument(f.instrument for f in files)
    from processing.fileio import atomic_write_text

    changes = None
    if m.comparisons.previous_release or parent is not None:  # the changelog against the previous release
        from release import changelog

        # a patch against its parent; a full release against the one its manifest names
        previous = parent if parent is not None else lm.resolve_path(m.comparisons.previous_release)
        old = changelog.load_release_manifest(previous)
        mchanges = changelog.manifest_changes(old, m)
        fchanges = changelog.product_changes(previous, staging)
        text = changelog.render(m, old, mchanges, fchanges)
        path = staging / make_name(m.release.project, insts, "all", "multi", fv, "changes", "txt")
        atomic_write_text(path, text)
        files.append(PackagedFile(path, "changes", "all", insts, "multi"))
        changes = {
            "previous": old.release.version,
            "manifest": mchanges,
            "file": path.name,
            "counts": {
                s: sum(1 for f in fchanges if f.status == s) for s in ("unchanged", "changed", "added", "removed")
            },
        }
    readme = staging / make_name(m.release.project, insts, "all", "multi", fv, "readme", "txt")
    atomic_write_text(readme, render_readme(lm, files, simulated, changes))
    files.append(PackagedFile(readme, "readme", "all", insts, "multi"))
    release_toml = staging / make_name(m.release.project, insts, "all", "multi", fv, "manifest", "toml")
    atomic_write_text(release_toml, release_manifest_text(lm))
    files.append(PackagedFile(release_toml, "manifest", "all", insts, "multi"))
    manifest_csv = staging / make_name(m.release.project, insts, "all", "multi", fv, "manifest", "csv")
    write_manifest_csv(manifest_csv, files, staging, fv)
    return files + [PackagedFile(manifest_csv, "manifest", "all", insts, "multi")]


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def release_manifest_text(lm: LoadedManifest) -> str:
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


def _mjd_to_iso(mjd: float) -> str:
    from astropy.time import Time

    return Time(mjd, format="mjd", scale="utc").isot


def set_card(header, key: str, value, comment: str = "") -> None:
    """``header[key] = value`` with ``comment`` only where both fit on one 80-character card
    (astropy would otherwise truncate the comment, with a warning)."""
    from astropy.io import fits

    header[key] = value
    image = fits.Card(key, value).image.rstrip()
    if comment and len(image) + 3 + len(comment) <= 80:
        header.comments[key] = comment


def primary_header(src_primary, lm: LoadedManifest, target: str, band: str, simulated: bool, product: str = "img"):
    from astropy.io import fits

    m = lm.manifest
    t = m.targets[target]
    h = fits.Header()
    for key in CARRY:
        if key in src_primary:
            h[key] = (src_primary[key], src_primary.comments[key])
    for key in src_primary:  # what the PHANGS stages did to the exposures (processing/jwst_stages.py)
        if key.startswith("HLSPD"):
            h[key] = (src_primary[key], src_primary.comments[key])
    # the manifest of this release (the product was made by the recipe HLSPTASK names, which
    # the packaging matched against this manifest's task keys)
    h["HLSPMANI"] = m.content_hash()
    h["OBSERVAT"] = ("JWST", "observatory")
    h["TELESCOP"] = ("JWST", "telescope")
    h["FILTER"] = band
    h["RA_TARG"] = (float(t.ra), "[deg] target right ascension (ICRS)")
    h["DEC_TARG"] = (float(t.dec), "[deg] target declination (ICRS)")
    h["EQUINOX"] = (2000.0, "[yr] equinox of RA_TARG/DEC_TARG (ICRS, J2000)")
    beg, end = float(src_primary["EXPSTART"]), float(src_primary["EXPEND"])
    h["TIMESYS"] = ("UTC", "time scale of the time keywords")
    h["DATE-BEG"] = (_mjd_to_iso(beg), "start of the first exposure")
    h["DATE-END"] = (_mjd_to_iso(end), "end of the last exposure")
    h["MJD-BEG"] = (beg, "[d] start of the first exposure")
    h["MJD-END"] = (end, "[d] end of the last exposure")
    h["MJD-MID"] = ((beg + end) / 2, "[d] mid-point")
    h["XPOSURE"] = (float(src_primary.get("EFFEXPTM", src_primary.get("DURATION", 0.0))), "[s] effective exposure time")
    h["TELAPSE"] = ((end - beg) * 86400.0, "[s] elapsed time")
    program = str(src_primary.get("PROGRAM", m.program.proposal_ids[0]))
    h["PROPOSID"] = (program, "JWST proposal id")
    # the manifest guarantees these fit on one card as printable ASCII (HeaderText)
    set_card(h, "HLSPID", m.release.project.upper(), "HLSP collection")
    set_card(h, "HLSPNAME", m.release.title, "HLSP collection title")
    set_card(h, "HLSPLEAD", m.release.lead, "HLSP project lead")
    set_card(h, "HLSPTARG", t.designation or target, "target designation")
    set_card(h, "HLSPVER", file_version(m.release.version), "version of this product")
    set_card(h, "DOI", m.release.doi, "DOI of the HLSP collection")
    set_card(h, "LICENSE", m.release.license, "license of the data")
    set_card(h, "LICENURL", m.release.license_url, "URL of the license")
    # the paper that describes the data, else the collection's own DOI
    set_card(
        h, "REFERENC", m.release.references[0] if m.release.references else m.release.doi, "bibliographic reference"
    )
    set_card(
        h, "PSFSIZE", round(psf_size_arcsec(band, product), 4), PSFSIZE_COMMENT[convolved_fwhm(product) is not None]
    )
    h["SIMULATD"] = (bool(simulated), "made from simulated observations")
    return h


PSFSIZE_COMMENT = {False: "[arcsec] PSF FWHM, diffraction limit", True: "[arcsec] Gaussian beam FWHM"}


def psf_size_arcsec(band: str, product: str = "img") -> float:
    """PSFSIZE of a product: the Gaussian beam of a PSF-matched one (``img-gauss0p85as``: 0.85),
    else the band's diffraction-limited FWHM, 1.03 lambda / D (within 6% of the paper's Table 2
    from F200W to F2100W; processing/common/psf.py)."""
    from processing.common.psf import psf_fwhm_arcsec

    fwhm = convolved_fwhm(product)
    return float(fwhm) if fwhm is not None else psf_fwhm_arcsec(band)


#: Keywords every image extension carries besides its WCS and unit (MAST: on images too).
IMAGE_KEYWORDS = ("FILTER", "RA_TARG", "DEC_TARG")


def image_keywords(primary) -> list[tuple[str, object, str]]:
    """``(keyword, value, comment)`` of :data:`IMAGE_KEYWORDS`, from the primary header."""
    return [(k, primary[k], primary.comments[k]) for k in IMAGE_KEYWORDS]


def write_img(i2d: Path, dest: Path, lm: LoadedManifest, target: str, band: str, simulated: bool) -> None:
    """The released mosaic from a jwst i2d (written atomically, with checksums)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from processing.fileio import atomic_path

    # memmap=False: astropy cannot memory-map the scaled (BZERO) DQ extension
    with fits.open(i2d, memmap=False) as src:
        prim = fits.PrimaryHDU(header=primary_header(src[0].header, lm, target, band, simulated))
        wcs_header = WCS(src["SCI"].header).to_header()
        wcs_header["RADESYS"] = "ICRS"
        wcs_header.remove("EQUINOX", ignore_missing=True)
        for k in (
            "MJDREF",
            "MJD-OBS",
            "DATE-OBS",
            "DATEREF",
            "MJD-AVG",
            "DATE-AVG",
            "MJD-BEG",
            "MJD-END",
            "DATE-BEG",
            "DATE-END",
        ):
            wcs_header.remove(k, ignore_missing=True, remove_all=True)
        hdus = [prim]
        for ext in IMAGE_EXTENSIONS:
            data = src[ext].data
            if ext == "DQ":
                data = data.astype(np.uint32)
            hdu = fits.ImageHDU(data, name=ext)
            if ext != "CON":
                hdu.header.extend(wcs_header, update=True)
            else:
                hdu.header.extend(_con_wcs(wcs_header), update=True)
            if ext in UNITS:
                hdu.header["BUNIT"] = (UNITS[ext], EXT_COMMENT[ext])
            else:
                hdu.header["COMMENT"] = EXT_COMMENT[ext]
            for key, value, comment in image_keywords(prim.header):
                hdu.header[key] = (value, comment)
            hdus.append(hdu)
        inputs = _input_exposures(src)
        cols = [
            fits.Column(
                name="EXPOSURE", format=f"{max(len(x) for x in inputs) if inputs else 1}A", array=np.array(inputs)
            )
        ]
        tab = fits.BinTableHDU.from_columns(cols, name="INPUTS")
        tab.header["COMMENT"] = "archive exposures (uncal file stems) this mosaic was made from"
        hdus.append(tab)
        with atomic_path(dest) as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True, checksum=True)


def write_variant_img(
    src_path: Path, dest: Path, lm: LoadedManifest, target: str, band: str, simulated: bool, product: str
) -> None:
    """A released PSF-matched mosaic: primary header as :func:`write_img`'s plus the beam; SCI
    and ERR with their WCS, units and beam (read through a memory map: written as it is read)."""
    from astropy.io import fits

    from processing.fileio import atomic_path

    with fits.open(src_path, memmap=True) as src:
        h = primary_header(src[0].header, lm, target, band, simulated, product)
        for k in BEAM_KEYWORDS:
            h[k] = (src[0].header[k], src[0].header.comments[k])
        hdus = [fits.PrimaryHDU(header=h)]
        for ext in ("SCI", "ERR"):
            hdu = fits.ImageHDU(src[ext].data, header=src[ext].header.copy(), name=ext)
            hdu.header["RADESYS"] = "ICRS"
            hdu.header.remove("EQUINOX", ignore_missing=True)
            set_card(
                hdu.header,
                "BUNIT",
                UNITS[ext],
                "PSF-matched surface brightness" if ext == "SCI" else "uncertainty, propagated through the kernel",
            )
            for key, value, comment in image_keywords(h):
                hdu.header[key] = (value, comment)
            hdus.append(hdu)
        with atomic_path(dest) as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True, checksum=True)


def _con_wcs(wcs_header):
    """CON is (planes, y, x): its celestial axes are 1 and 2, the plane axis 3 is linear."""
    h = wcs_header.copy()
    h["WCSAXES"] = 3
    h["CTYPE3"] = ""
    h["CRPIX3"] = 1.0
    h["CRVAL3"] = 0.0
    h["CDELT3"] = 1.0
    return h


def _input_exposures(src) -> list[str]:
    try:
        names = src["HDRTAB"].data["FILENAME"]
    except (KeyError, IndexError):
        return []
    out = []
    for n in names:
        n = str(n).strip()
        for suffix in ("_cal.fits", "_crf.fits", "_rate.fits"):
            if n.endswith(suffix):
                n = n[: -len(suffix)]
        out.append(n)
    return sorted(set(out))


def write_preview(img: Path, dest: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
    from astropy.wcs import WCS

    from processing.fileio import atomic_path

    with fits.open(img, memmap=True) as hdul:
        sci = hdul["SCI"]
        step = max(1, int(np.ceil(max(sci.shape) / 1000)))  # at most ~1000 pixels a side
        small = np.asarray(sci.data[::step, ::step], float)
        wcs = WCS(sci.header).celestial[::step, ::step]
    finite = small[np.isfinite(small)]
    norm = ImageNormalize(
        finite if finite.size else np.zeros(1), interval=PercentileInterval(99.5), stretch=AsinhStretch(0.05)
    )
    fig = plt.figure(figsize=(7.5, 6.5 * small.shape[0] / small.shape[1] + 0.8), dpi=110)
    ax = fig.add_subplot(projection=wcs)
    im = ax.imshow(small, origin="lower", cmap="inferno", norm=norm, interpolation="nearest")
    ax.set_xlabel("RA (ICRS)")
    ax.set_ylabel("Dec (ICRS)")
    ax.coords.grid(color="white", alpha=0.25, linestyle=":")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="surface brightness (MJy/sr, asinh stretch)")
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.getvalue())


def render_readme(lm: LoadedManifest, files: list[PackagedFile], simulated: bool, changes: dict | None = None) -> str:
    import jinja2
    from stdatamodels.jwst.datamodels import dqflags

    m = lm.manifest
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    flags = sorted(((int(np.log2(v)), k, v) for k, v in dqflags.pixel.items() if v), key=lambda x: x[2])
    from processing.registry import default_registry

    wanted = {i.lower() for i in m.program.instruments}
    stages = [
        {
            "name": s.name,
            "description": s.description,
            "instruments": "" if set(s.instruments) >= wanted else ", ".join(i for i in s.instruments if i in wanted),
        }
        for s in default_registry().ordered()
        if wanted & set(s.instruments)
    ]
    return env.get_template("README.txt.j2").render(
        stages=stages,
        m=m,
        file_version=file_version(m.release.version),
        date=datetime.date.today().isoformat(),
        files=[{"name": f.path.name, "product": f.product, "target": f.target, "filter": f.filter} for f in files],
        targets=m.targets,
        flags=flags,
        simulated=simulated,
        not_in_version=NOT_IN_THIS_VERSION,
        want_tweakback=m.products.tweakback,
        convolved=[{"fwhm": f, "product": convolved_product(f)} for f in m.products.convolved_fwhm_arcsec],
        want_anchoring=any(f.product == "anchoring" for f in files),
        want_psf_table=any(f.product == "psf-matching" for f in files),
        changelog=changes,
    )


MANIFEST_COLUMNS = ("filename", "size", "sha256", "product_type", "target", "instrument", "filter", "version")


def write_manifest_csv(dest: Path, files: list[PackagedFile], root: Path, version: str) -> None:
    from processing.fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_COLUMNS)
    from release.naming import parse_name

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
