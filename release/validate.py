"""`hlsp validate RELEASE_DIR`: the CI gate for a release.

Checks, each reported per file with the problem named:

- the folder holds regular files and folders only: a symbolic link anywhere is a failure
  (and is never followed); every file is world-readable and every folder world-listable;
- every file name follows MAST's rules, and per-target files sit in their target's folder;
- the manifest CSV lists every file of the folder (and only those), once each, with matching
  size and sha256;
- the release manifest (``*_manifest.toml``) is there and parses; every target and band it
  names has its mosaic (and preview), no other target or band is there, and every FITS file
  says it was made from it (HLSPMANI = its content hash; HLSPID, HLSPTARG, RA_TARG/DEC_TARG
  as the manifest says);
- a README is there, not empty, naming the version; every preview is a readable image;
- every FITS file is FITS by its first bytes (gzip bytes named .fits are refused), opens, its
  CHECKSUM/DATASUM match on every HDU, and ``fitsverify`` reports no error and no warning
  (where it is not installed the check is reported as not run, and ``--strict``, the default
  under CI, fails it);
- img-gauss*.fits (PSF-matched): PRIMARY, SCI, ERR; the beam (BMAJ = BMIN = the FWHM the
  product name says, in degrees; BPA) in the primary header and both extensions; the other
  checks of img.fits that apply (keywords, WCS, units, ERR);
- a patch release: what it does not remake carries a parent's version (and was made from the
  parent manifest it ships, HLSPMANI); with ``--against PARENT`` every such file must be
  byte-identical to the parent's file of that name;
- with ``--against PREVIOUS``: PREVIOUS is an earlier release of the same project (or a folder
  of MAST level-3 mosaics) sharing at least one target and band, else a failure naming why;
  this release itself is reported as not compared; each mosaic against the same product of
  PREVIOUS: shift, flux ratio and background change within the release manifest's
  ``[comparisons.thresholds]`` and overrides (release/compare.py);
- a patch, or a release with ``comparisons.previous_release``: its changes file is there;
- per-target tables: rows and metadata for exactly the target's bands, and the rows of every
  band another band refers to (the reference band an anchored band was fitted against);
- img.fits: the extensions of Table 3 in order, their dtypes, the unit of every extension
  (SCI/ERR MJy/sr, VAR_* (MJy/sr)**2, none for DQ/CON/WHT), FILTER/RA_TARG/DEC_TARG on every
  image extension as in the primary, a celestial WCS that parses in every image extension
  (RADESYS ICRS, no EQUINOX) and puts every pixel within 1 mas of where SCI's does, INPUTS
  listing the exposures (CON drawing on no more of them), SCI not all NaN, ERR not all NaN and
  never negative, every MAST-required primary keyword present and well formed (EQUINOX 2000.0
  for RA_TARG/DEC_TARG) and consistent with the file name and folder (FILTER, INSTRUME,
  HLSPTARG, HLSPVER), the recommended ones (HLSPNAME, HLSPLEAD, TELAPSE, PROPOSID, PSFSIZE, the
  beam of a PSF-matched product, REFERENC), RA_TARG/DEC_TARG on the image, dates consistent
  (DATE-* with MJD-*, order, TELAPSE, not in the future), SIMULATD = T in a simulated release.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import shutil
import stat
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from processing.fileio import file_sha256
from release.naming import check_name, parse_name

REQUIRED_PRIMARY = {
    "TELESCOP": str,
    "OBSERVAT": str,
    "INSTRUME": str,
    "FILTER": str,
    "RA_TARG": float,
    "DEC_TARG": float,
    "DATE-BEG": str,
    "DATE-END": str,
    "MJD-BEG": float,
    "MJD-END": float,
    "MJD-MID": float,
    "TIMESYS": str,
    "XPOSURE": float,
    "HLSPID": str,
    "HLSPTARG": str,
    "HLSPVER": str,
    "DOI": str,
    "LICENSE": str,
    "LICENURL": str,
    "EQUINOX": float,
}
RECOMMENDED_PRIMARY = ("HLSPNAME", "HLSPLEAD", "TELAPSE", "PROPOSID", "PSFSIZE", "REFERENC")
#: Units of the image extensions (none for DQ flags, CON bit masks and WHT relative weights).
EXT_UNITS = {
    "SCI": "MJy/sr",
    "ERR": "MJy/sr",
    "VAR_POISSON": "(MJy/sr)**2",
    "VAR_RNOISE": "(MJy/sr)**2",
    "VAR_FLAT": "(MJy/sr)**2",
    "DQ": None,
    "CON": None,
    "WHT": None,
}
#: How far an extension's WCS may put a pixel from where SCI's puts it (mas).
WCS_AGREEMENT_MAS = 1.0
IMG_LAYOUT = ("PRIMARY", "SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "CON", "WHT", "INPUTS")
#: A PSF-matched mosaic (img-gauss0p85as): the convolved image and its propagated error only.
CONVOLVED_LAYOUT = ("PRIMARY", "SCI", "ERR")
#: Relative tolerance of the beam keywords against the FWHM in the product name.
BEAM_TOLERANCE = 1e-6
IMG_DTYPES = {
    "SCI": "float32",
    "ERR": "float32",
    "DQ": "uint32",
    "VAR_POISSON": "float32",
    "VAR_RNOISE": "float32",
    "VAR_FLAT": "float32",
    "CON": "int32",
    "WHT": "float32",
}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$")
_BAND = re.compile(r"^F\d{3,4}[WMNC]\d?$")
#: Tolerance of the date consistency checks (DATE-* against MJD-*, TELAPSE), seconds.
DATE_TOLERANCE_S = 1.0
#: How far outside the mosaic the target centre may lie, as a fraction of the mosaic's size
#: (a galaxy centre is on its mosaic; a file of another target is degrees away).
FOOTPRINT_MARGIN = 0.5


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def strict_by_default() -> bool:
    """``--strict`` is the default where the environment says CI (``CI=true``, as CI systems set)."""
    return _truthy(os.environ.get("CI"))


def fitsverify_executable() -> str | None:
    return shutil.which("fitsverify")


@dataclass
class Finding:
    file: str
    check: str
    ok: bool
    message: str = ""
    skipped: bool = False


@dataclass
class Report:
    root: Path
    strict: bool = False
    findings: list[Finding] = field(default_factory=list)
    #: a patch release's parents' manifests, by file version (their carried files were made from them)
    carried_manifests: dict = field(default_factory=dict)
    #: with --against: what the previous side is (release/compare.py Side)
    against: object | None = None

    def add(self, file: str, check: str, problem: str | None = None) -> None:
        self.findings.append(Finding(file, check, problem is None, problem or ""))

    def skip(self, file: str, check: str, why: str) -> None:
        """A check that could not run. Under ``strict`` that is a failure."""
        if self.strict:
            self.add(file, check, f"not run: {why}; --strict (the default under CI) requires every check")
        else:
            self.findings.append(Finding(file, check, True, why, skipped=True))

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def skipped(self) -> list[Finding]:
        return [f for f in self.findings if f.skipped]

    @property
    def ok(self) -> bool:
        return not self.failures

    def junit(self) -> str:
        from xml.sax.saxutils import escape, quoteattr

        by_file: dict[str, list[Finding]] = {}
        for f in self.findings:
            by_file.setdefault(f.file, []).append(f)
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<testsuites name={quoteattr("hlsp validate " + str(self.root))} tests="{len(self.findings)}" '
            f'failures="{len(self.failures)}" skipped="{len(self.skipped)}">',
        ]
        for file, fs in sorted(by_file.items()):
            fails = sum(not f.ok for f in fs)
            skips = sum(f.skipped for f in fs)
            out.append(f'  <testsuite name={quoteattr(file)} tests="{len(fs)}" failures="{fails}" skipped="{skips}">')
            for f in fs:
                out.append(f"    <testcase classname={quoteattr(file)} name={quoteattr(f.check)}>")
                if not f.ok:
                    out.append(f"      <failure message={quoteattr(f.message)}>{escape(f.message)}</failure>")
                elif f.skipped:
                    out.append(f"      <skipped message={quoteattr(f.message)}/>")
                out.append("    </testcase>")
            out.append("  </testsuite>")
        out.append("</testsuites>")
        return "\n".join(out) + "\n"


def _walk(report: Report, root: Path) -> dict[str, Path]:
    """Regular files of the release by relative path; links and special files are reported,
    never followed; modes are checked (a release is for others to read)."""
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        mode = os.lstat(here).st_mode
        if mode & 0o005 != 0o005:
            report.add(rel_dir, "world-readable", f"folder mode {stat.filemode(mode)}: others cannot list it")
        for name in sorted(dirnames + filenames):
            p = here / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                report.add(
                    rel,
                    "no symbolic links",
                    f"is a symbolic link (to {os.readlink(p)}): a release holds files, "
                    "never links, and validation does not follow it",
                )
            elif stat.S_ISDIR(st.st_mode):
                continue
            elif not stat.S_ISREG(st.st_mode):
                report.add(rel, "regular file", f"is not a regular file ({stat.filemode(st.st_mode)})")
            else:
                files[rel] = p
                report.add(
                    rel,
                    "world-readable",
                    None
                    if st.st_mode & 0o004
                    else f"mode {stat.filemode(st.st_mode)}: others cannot read it (a release is for others)",
                )
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return dict(sorted(files.items()))


def _load_release_manifest(report: Report, rels: dict[str, Path]):
    """The release manifest shipped in the release, or None (reported). A patch also carries
    its parent's manifest (and theirs): the release's own is the newest; the others must be
    its parents'. They are kept in ``report.carried_manifests`` by file version."""
    import tomllib

    from pydantic import ValidationError

    from release.manifest import Manifest, file_version

    tomls = [r for r in rels if r.endswith("_manifest.toml") and "/" not in r]
    if not tomls:
        report.add(
            ".",
            "release manifest present",
            "expected one *_manifest.toml (the release manifest) at the top, found none",
        )
        return None, None

    def name_version(rel: str) -> tuple:
        parsed = parse_name(rel)
        return tuple(int(x) for x in re.findall(r"\d+", parsed.version)) if parsed else ()

    # the release's own manifest: the newest by file name; a parent's that does not parse is
    # reported on its own and does not hide the release's
    own_name = max(tomls, key=name_version)
    loaded = {}
    for rel in sorted(tomls, key=lambda r: r != own_name):
        try:
            loaded[rel] = Manifest.model_validate(tomllib.loads(rels[rel].read_text()))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError) as exc:
            report.add(
                rel, "release manifest readable", f"is not a valid release manifest: {' '.join(str(exc).split())[:300]}"
            )
            if rel == own_name:
                return None, None
    own = own_name
    m = loaded[own]
    report.add(own, "release manifest readable")
    chain, cur = set(), m
    while cur is not None and cur.release.kind == "patch" and cur.release.previous:
        parent = next((x for x in loaded.values() if x.release.version == cur.release.previous), None)
        if parent is not None:
            chain.add(file_version(parent.release.version))
        cur = parent
    for rel, x in loaded.items():
        if rel == own:
            continue
        fv = file_version(x.release.version)
        report.add(
            rel,
            "parent manifest",
            None
            if fv in chain
            else f"a second release manifest ({x.release.version}) that is not a parent of this patch release "
            f"{m.release.version}",
        )
        report.carried_manifests[fv] = x
    return m, own


def validate_release(
    root: str | Path,
    use_fitsverify: bool = True,
    strict: bool = False,
    against: str | Path | None = None,
    figures: str | Path | None = None,
) -> Report:
    """Every check of the module docstring; with ``against`` (the previous release, or a
    folder of MAST-like level-3 mosaics) also each mosaic against its counterpart, within the
    limits of the release manifest's ``[comparisons]`` (release/compare.py); ``figures``: a
    folder for the comparison figures and table."""
    root = Path(root)
    report = Report(root, strict=strict)
    if not root.is_dir():
        report.add(str(root), "release folder", "is not a folder")
        return report
    root = root.resolve()  # the path given may be a link; nothing inside it may
    rels = _walk(report, root)
    for rel, p in rels.items():
        problems = check_name(p.name)
        report.add(rel, "MAST file name", "; ".join(problems) if problems else None)
        parsed = parse_name(p.name)
        if parsed and parsed.target != "all":
            folder = Path(rel).parent.as_posix()
            report.add(
                rel,
                "target folder",
                None
                if folder == parsed.target
                else f"is a product of target '{parsed.target}' but sits in folder '{folder}'",
            )

    manifests = [r for r in rels if r.endswith("_manifest.csv") and "/" not in r]
    readmes = [r for r in rels if r.endswith("_readme.txt") and "/" not in r]
    report.add(".", "README present", None if readmes else "no *_readme.txt at the top of the release")
    if len(manifests) != 1:
        report.add(".", "manifest present", f"expected one *_manifest.csv at the top, found {len(manifests)}")
    else:
        report.add(manifests[0], "manifest present")
        _check_manifest(report, root, manifests[0], rels)
    release_manifest, toml_rel = _load_release_manifest(report, rels)
    if release_manifest is not None:
        _check_coverage(report, release_manifest, toml_rel, rels)
        if release_manifest.release.kind == "patch" or release_manifest.comparisons.previous_release:
            changes = [r for r in rels if r.endswith("_changes.txt") and "/" not in r]
            why = "a patch" if release_manifest.release.kind == "patch" else "comparisons.previous_release is set"
            report.add(
                changes[0] if changes else ".",
                "changes file present",
                None if changes else f"no *_changes.txt at the top: {why}, so the release says what changed",
            )
    for rel in readmes:
        _check_readme(report, rel, rels[rel], release_manifest)
    for rel, p in rels.items():
        if p.name.endswith(".png"):
            _check_png(report, rel, p)
        elif p.name.endswith("_tweakback.tar.gz"):
            _check_tweakback(report, rel, p)

    flags: dict[str, bool | None] = {}
    for rel, p in rels.items():
        if not p.name.endswith((".fits", ".fits.gz")):
            continue
        flags[rel] = _check_fits(report, rel, p, use_fitsverify, release_manifest)
    if against is not None and release_manifest is not None:
        _check_against(report, root, Path(against), release_manifest, figures)
    readme_sim = bool(readmes) and "SIMULATED DATA" in rels[readmes[0]].read_text(errors="replace")
    any_sim = any(v is True for v in flags.values())
    if any_sim and readmes:
        report.add(
            readmes[0],
            "README says simulated",
            None if readme_sim else "the products are SIMULATD = T but the README does not say so",
        )
    if readme_sim or any_sim:
        for rel, v in flags.items():
            if rel.endswith("_img.fits") and v != "unreadable":
                report.add(
                    rel,
                    "SIMULATD",
                    None if v is True else "SIMULATD missing or F in a release made from simulated data",
                )
    return report


def _check_against(report: Report, root: Path, previous: Path, m, figures) -> None:
    """Each mosaic of the release against its counterpart in ``previous`` (release/compare.py),
    within the manifest's limits; a mosaic without one is reported as not compared.

    ``previous`` must be comparable: an earlier release of the same project, or a folder of
    level-3 mosaics, sharing at least one target and band; this release itself (the same
    folder, or the same project and version) is reported as not compared."""
    from release.compare import check, compare, limits_for, side_of
    from release.manifest import version_tuple

    label = previous.name or str(previous)
    check_name = f"against {label}"
    try:
        side = side_of(previous)
    except ValueError as exc:
        report.add(".", check_name, str(exc))
        return
    report.against = side
    if side.kind == "unknown":
        report.add(
            ".", check_name, f"{previous} is neither a release nor a folder of level-3 mosaics: nothing to compare"
        )
        return
    if side.kind == "release":
        if side.project != m.release.project:
            report.add(
                ".",
                check_name,
                f"{previous} is a release of {side.project}, not of {m.release.project}: not comparable",
            )
            return
        if root.resolve() == previous.resolve():
            report.skip(".", check_name, f"{previous} is this release itself ({side.version}): nothing was compared")
            return
        if version_tuple(side.version) > version_tuple(m.release.version):
            report.add(
                ".",
                check_name,
                f"{previous} is version {side.version}, later than this release's {m.release.version}: "
                "--against takes the previous release",
            )
            return
    if report.carried_manifests:  # a patch: what it carries over must be its parent's very bytes
        from release.manifest import file_version

        fv = file_version(m.release.version)
        for p in sorted(root.rglob("*")):
            parsed = parse_name(p.name)
            if not p.is_file() or parsed is None or parsed.version == fv:
                continue
            rel = p.relative_to(root).as_posix()
            theirs = previous / rel
            report.add(
                rel,
                f"carried over from {label}",
                None
                if theirs.is_file() and file_sha256(theirs) == file_sha256(p)
                else (
                    f"is not in {previous}"
                    if not theirs.is_file()
                    else f"differs from {label}'s file of that name (sha256)"
                ),
            )
    numbers, skipped = compare(
        root,
        previous,
        Path(figures) if figures else None,
        label_a=f"{root.name} (this release)",
        label_b=f"{label} (previous)",
    )
    by_name = {p.name: p for p in root.rglob("*.fits")}
    if not numbers:
        report.add(".", check_name, f"nothing in common with {side.describe()}: no target and band compared")
        return
    for why in skipped:
        report.skip(".", f"against {label}", why)
    for n in numbers:
        rel = by_name[n.a].relative_to(root).as_posix()
        problems = check(n, limits_for(m.comparisons, n.target, n.band))
        report.add(rel, f"against {label}", "; ".join(problems) if problems else None)


def _check_coverage(report: Report, m, toml_rel: str, rels: dict[str, Path]) -> None:
    """Every target and band of the release manifest has its products; nothing else is there.
    A patch release's files of what it does not remake carry their parent's version (one of
    the parent manifests it ships); what it remakes carries its own."""
    from processing.instruments import instrument_of
    from release.manifest import file_version
    from release.naming import HlspName

    fv = file_version(m.release.version)
    carried = set(report.carried_manifests)

    def versions(target: str, bands) -> list[str]:
        return [fv] if any(m.regenerates(target, b.upper()) for b in bands) or not carried else sorted(carried)

    wanted = {(t, b.lower()) for t in m.targets for b in m.target_bands(t)}
    from release.naming import convolved_product

    products = (
        ["img"]
        + (["img-preview"] if m.products.previews else [])
        + (["tweakback"] if m.products.tweakback else [])
        + [convolved_product(f) for f in m.products.convolved_fwhm_arcsec]
    )
    ext = {"img-preview": "png", "tweakback": "tar.gz"}
    allowed: dict[tuple[str, str], list[str]] = {}
    for target, band in sorted(wanted):
        allowed[(target, band)] = versions(target, [band])
        for product in products:
            rel = next(
                (
                    f"{target}/{n}"
                    for v in allowed[(target, band)]
                    for n in [
                        HlspName(
                            m.release.project,
                            instrument_of(band.upper()),
                            target,
                            band,
                            v,
                            product,
                            ext.get(product, "fits"),
                        )
                    ]
                    if f"{target}/{n}" in rels
                ),
                None,
            )
            name = HlspName(
                m.release.project,
                instrument_of(band.upper()),
                target,
                band,
                allowed[(target, band)][0],
                product,
                ext.get(product, "fits"),
            )
            shown = f"{target}/{name}"
            report.add(
                rel or shown,
                "release manifest coverage",
                None
                if rel
                else f"{target} {band.upper()} is in the release manifest {toml_rel} but its {product} file is missing",
            )
    # per-target tables (e.g. anchoring): one per target, filter 'multi', every band in it
    from processing.registry import default_registry
    from release.naming import collection_instrument

    tables = default_registry().target_tables()
    for target in sorted(m.targets):
        inst = collection_instrument(instrument_of(b) for b in m.target_bands(target))
        allowed[(target, "multi")] = versions(target, m.target_bands(target))
        for ptype in sorted(tables):
            rel = next(
                (
                    f"{target}/{n}"
                    for v in allowed[(target, "multi")]
                    for n in [HlspName(m.release.project, inst, target, "multi", v, ptype, "ecsv")]
                    if f"{target}/{n}" in rels
                ),
                None,
            )
            if rel is None:
                report.add(
                    f"{target}/{HlspName(m.release.project, inst, target, 'multi', fv, ptype, 'ecsv')}",
                    "release manifest coverage",
                    f"{target}: the {ptype} table is missing",
                )
            else:
                _check_target_table(report, rel, rels[rel], {b.upper() for b in m.target_bands(target)}, ptype)
    for rel in rels:
        parsed = parse_name(Path(rel).name)
        if parsed is None or parsed.target == "all":
            continue
        if parsed.filter == "multi" and parsed.product in tables and parsed.target in m.targets:
            ok_versions = allowed.get((parsed.target, "multi"), [fv])
        elif (parsed.target, parsed.filter) not in wanted:
            report.add(
                rel,
                "release manifest coverage",
                f"target '{parsed.target}' band '{parsed.filter.upper()}' is not in the release manifest {toml_rel}",
            )
            continue
        else:
            ok_versions = allowed[(parsed.target, parsed.filter)]
        if parsed.project != m.release.project or parsed.version not in ok_versions:
            report.add(
                rel,
                "release manifest coverage",
                f"project/version '{parsed.project}' {parsed.version} differ from the release manifest's "
                f"{m.release.project} "
                f"{' or '.join(ok_versions)}",
            )


def _check_target_table(report: Report, rel: str, path: Path, bands: set[str], ptype: str) -> None:
    """A per-target table opens, has rows and metadata for exactly the target's bands, and the
    rows of every band another band's rows or metadata refer to (e.g. the reference band an
    anchored band was fitted against: without it that band's anchoring is unexplained)."""
    from astropy.table import Table

    try:
        t = Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # noqa: BLE001 - any unreadable table is a finding
        report.add(rel, f"{ptype} table", f"does not open as an ECSV table ({type(exc).__name__}: {exc})")
        return
    have = {str(b).upper() for b in t["band"]} if "band" in t.colnames else set()
    meta = {str(b).upper(): v for b, v in (t.meta.get("bands") or {}).items()}
    problems = []
    if have != bands:
        problems.append(
            f"rows for {', '.join(sorted(have)) or 'no band'}, but the release manifest's bands are "
            f"{', '.join(sorted(bands))}"
        )
    if set(meta) != bands:
        problems.append(f"metadata for {', '.join(sorted(meta)) or 'no band'}, expected {', '.join(sorted(bands))}")
    referred = {
        str(v.get(k)).upper(): b
        for b, v in meta.items()
        if isinstance(v, dict)
        for k in ("anchored_to",)
        if v.get(k) and _BAND.match(str(v.get(k)).upper())
    }
    if "against" in t.colnames:
        referred.update(
            {str(a).upper(): str(b).upper() for a, b in zip(t["against"], t["band"]) if _BAND.match(str(a).upper())}
        )
    unexplained = sorted(f"{b} (refers to {ref})" for ref, b in referred.items() if ref not in have)
    if unexplained:
        problems.append(f"rows of the band(s) others refer to are missing: {', '.join(unexplained)}")
    report.add(rel, f"{ptype} table", "; ".join(problems) if problems else None)


def _check_readme(report: Report, rel: str, path: Path, m) -> None:
    text = path.read_text(errors="replace")
    if not text.strip():
        report.add(rel, "README content", "the README is empty")
        return
    if m is not None:
        from release.manifest import file_version

        fv = file_version(m.release.version)
        report.add(rel, "README content", None if fv in text else f"the README does not name the version {fv}")
    else:
        report.add(rel, "README content")


def _check_tweakback(report: Report, rel: str, path: Path) -> None:
    """A tweakback tarball opens; its members are regular files in one folder (no absolute
    path, no '..', no link: nothing can land outside the folder it is unpacked in); each is a
    readable FITS exposure with a celestial WCS and the astrometry record (HLSPDAST).

    Read as a stream, one member at a time (each is decompressed once: opening members of a
    seekable gzip archive in turn decompresses it again from the start for every seek back)."""
    import io
    import tarfile

    from astropy.io import fits
    from astropy.wcs import WCS

    try:
        tar = tarfile.open(path, mode="r|gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.add(rel, "tweakback tarball", f"does not open as a gzipped tar archive ({type(exc).__name__}: {exc})")
        return
    problems: list[str] = []
    folders: set[str] = set()
    n = 0
    with tar:
        try:
            for member in tar:
                name = member.name
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or len(parts) != 2:
                    problems.append(
                        f"member {name!r} is not a file in the archive's one folder (absolute path, '..' or nesting)"
                    )
                    continue
                if not member.isfile():
                    problems.append(f"member {name!r} is not a regular file (link or special file)")
                    continue
                folders.add(parts[0])
                n += 1
                try:
                    with fits.open(io.BytesIO(tar.extractfile(member).read()), memmap=False) as hdul:
                        h0 = hdul[0].header
                        if "HLSPDAST" not in h0:
                            problems.append(f"{name}: no HLSPDAST (astrometry record)")
                        if "SCI" not in hdul or not WCS(hdul["SCI"].header).has_celestial:
                            problems.append(f"{name}: no SCI extension with a celestial WCS")
                except Exception as exc:  # noqa: BLE001 - any reader error is the member's problem
                    problems.append(
                        f"{name}: not a readable FITS file ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
                    )
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"the archive is damaged ({type(exc).__name__}: {exc})")
    if n == 0 and not problems:
        problems.append("holds no exposure")
    if len(folders) > 1:
        problems.append(f"members are spread over {len(folders)} folders ({', '.join(sorted(folders)[:3])})")
    report.add(
        rel,
        "tweakback tarball",
        "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "") if problems else None,
    )


def _check_png(report: Report, rel: str, path: Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
            ok = im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
        report.add(rel, "preview readable", None if ok else f"is a {im.format} image of {im.size}, not a PNG preview")
    except Exception as exc:
        report.add(
            rel,
            "preview readable",
            f"is not a readable image ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
        )


def _check_manifest(report: Report, root: Path, manifest_rel: str, rels: dict[str, Path]) -> dict:
    listed: dict[str, dict] = {}
    try:
        with open(rels[manifest_rel], newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        report.add(manifest_rel, "manifest readable", f"cannot be read as CSV: {exc}")
        return listed
    from release.package import MANIFEST_COLUMNS

    header = tuple(rows[0].keys()) if rows else ()
    if rows and header != MANIFEST_COLUMNS:
        report.add(manifest_rel, "manifest columns", f"columns are {header}, expected {MANIFEST_COLUMNS}")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("filename", "")] = counts.get(row.get("filename", ""), 0) + 1
    for name, n in counts.items():
        if n > 1:
            report.add(name, "listed once", f"listed {n} times in {manifest_rel}")
    for row in rows:
        name = row.get("filename", "")
        if name in listed:
            continue
        listed[name] = row
        p = rels.get(name)
        if p is None:
            report.add(name, "listed file exists", f"listed in {manifest_rel} but not in the release")
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
    for rel in rels:
        if rel != manifest_rel and rel not in listed:
            report.add(rel, "file is in manifest", f"not listed in {manifest_rel}")
    return listed


def _check_fits(report: Report, rel: str, path: Path, use_fitsverify: bool, m=None) -> bool | str | None:
    """Check one FITS file; return its SIMULATD flag (None if absent, 'unreadable')."""
    from astropy.io import fits

    from release.compare import fits_problem

    simulated = None
    magic = fits_problem(path)  # astropy would open gzip bytes named .fits without a word
    report.add(rel, "FITS file", f"{path.name} {magic}" if magic else None)
    if magic:
        return "unreadable"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, checksum=True, memmap=False) as hdul:
                names = [h.name for h in hdul]
                _ = [h.data for h in hdul]  # read everything: a truncated file fails here
                bad_sums = [
                    str(w.message)
                    for w in caught
                    if "checksum" in str(w.message).lower() or "datasum" in str(w.message).lower()
                ]
                missing_sums = [h.name for h in hdul if "CHECKSUM" not in h.header or "DATASUM" not in h.header]
                truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
                report.add(rel, "FITS readable", "; ".join(truncated) if truncated else None)
                report.add(
                    rel,
                    "CHECKSUM/DATASUM",
                    "; ".join(bad_sums)
                    if bad_sums
                    else (f"missing on {', '.join(missing_sums)}" if missing_sums else None),
                )
                try:
                    hdul.verify("exception")
                    report.add(rel, "FITS standard (astropy)")
                except Exception as exc:
                    report.add(rel, "FITS standard (astropy)", " ".join(str(exc).split()))
                parsed = parse_name(path.name)
                if parsed and parsed.product.startswith("img") and path.name.endswith(".fits"):
                    simulated = _check_img(
                        report, rel, hdul, names, parsed, designated=m is not None and parsed.target in m.targets
                    )
                if m is not None:
                    made_from = report.carried_manifests.get(parsed.version, m) if parsed is not None else m
                    _check_against_manifest(report, rel, hdul[0].header, parsed, made_from)
    except Exception as exc:
        report.add(rel, "FITS readable", f"cannot be read as FITS ({type(exc).__name__}: {' '.join(str(exc).split())})")
        return "unreadable"
    if not use_fitsverify:
        report.skip(rel, "fitsverify", "fitsverify was turned off (--no-fitsverify)")
    else:
        exe = fitsverify_executable()
        if exe is None:
            report.skip(
                rel,
                "fitsverify",
                "fitsverify is not installed (Debian package 'fitsverify'; `make sysdeps` installs it as root)",
            )
        else:
            proc = subprocess.run([exe, "-q", str(path)], capture_output=True, text=True)
            text = (proc.stdout + proc.stderr).strip()
            m = re.search(r"(\d+) warnings? and (\d+) errors?", text)
            if text.startswith("verification OK"):
                report.add(rel, "fitsverify")
            elif m is None:
                report.add(rel, "fitsverify", f"unexpected fitsverify output: {text[:200]}")
            else:
                w, e = int(m.group(1)), int(m.group(2))  # "verification FAILED: F, N warnings and M errors"
                report.add(
                    rel,
                    "fitsverify",
                    None if (w, e) == (0, 0) else f"fitsverify: {w} warning(s) and {e} error(s): {text[:300]}",
                )
    return simulated


def _check_img(report: Report, rel: str, hdul, names: list[str], parsed, designated: bool = False) -> bool | None:
    """``designated``: the release manifest names the target, so HLSPTARG is checked against
    its designation there (a designation like 'M 74' for ngc0628 is the user's choice),
    otherwise against the file name's target."""
    from astropy.wcs import WCS

    from release.naming import convolved_fwhm

    fwhm = convolved_fwhm(parsed.product)
    layout = CONVOLVED_LAYOUT if fwhm is not None else IMG_LAYOUT
    report.add(
        rel, "extension layout", None if tuple(names) == layout else f"extensions are {names}, expected {list(layout)}"
    )
    h0 = hdul[0].header
    if fwhm is not None:
        report.add(rel, "beam keywords", _beam_problem(hdul, names, fwhm))
    problems = []
    for key, typ in REQUIRED_PRIMARY.items():
        if key not in h0:
            problems.append(f"{key} missing")
        elif typ is float and not isinstance(h0[key], (int, float)):
            problems.append(f"{key} is not a number")
        elif typ is str and not isinstance(h0[key], str):
            problems.append(f"{key} is not a string")
    if not problems:
        if h0["TELESCOP"] != "JWST" or h0["OBSERVAT"] != "JWST":
            problems.append("TELESCOP/OBSERVAT must be JWST")
        if h0["EQUINOX"] != 2000.0:
            problems.append(f"EQUINOX is {h0['EQUINOX']!r}, expected 2000.0 (RA_TARG/DEC_TARG in ICRS, J2000)")
        if h0["TIMESYS"] != "UTC":
            problems.append(f"TIMESYS is {h0['TIMESYS']!r}, expected 'UTC'")
        for k in ("DATE-BEG", "DATE-END"):
            if not _ISO.match(h0[k]):
                problems.append(f"{k} {h0[k]!r} is not ISO-8601")
        if not (0 <= h0["RA_TARG"] < 360 and -90 <= h0["DEC_TARG"] <= 90):
            problems.append("RA_TARG/DEC_TARG out of range")
        problems += _date_problems(h0)
        if h0["HLSPVER"] != parsed.version:
            problems.append(f"HLSPVER {h0['HLSPVER']!r} differs from the file name's version {parsed.version!r}")
        if h0["FILTER"].lower() != parsed.filter:
            problems.append(f"FILTER {h0['FILTER']!r} differs from the file name's {parsed.filter!r}")
        if h0["INSTRUME"].lower() != parsed.instrument:
            problems.append(f"INSTRUME {h0['INSTRUME']!r} differs from the file name's {parsed.instrument!r}")
        if not designated and _same_target(h0["HLSPTARG"]) != _same_target(parsed.target):
            problems.append(f"HLSPTARG {h0['HLSPTARG']!r} is not the file name's target {parsed.target!r}")
    report.add(rel, "required primary keywords", "; ".join(problems) if problems else None)
    rec_problems = [f"{k} missing" for k in RECOMMENDED_PRIMARY if k not in h0]
    if "PSFSIZE" in h0:
        want = fwhm
        if not isinstance(h0["PSFSIZE"], (int, float)) or not h0["PSFSIZE"] > 0:
            rec_problems.append(f"PSFSIZE {h0['PSFSIZE']!r} is not a positive FWHM in arcsec")
        elif want is not None and abs(h0["PSFSIZE"] - want) > 1e-4:
            rec_problems.append(f"PSFSIZE {h0['PSFSIZE']} is not the beam the name says ({want})")
    report.add(rel, "recommended primary keywords", "; ".join(rec_problems) if rec_problems else None)
    _check_extensions(report, rel, hdul, names, h0)
    for ext, dtype in IMG_DTYPES.items():
        if ext not in names:
            continue
        h = hdul[ext]
        got = str(np.dtype(h.data.dtype).newbyteorder("=").name) if h.data is not None else "none"
        report.add(rel, f"{ext} dtype", None if got == dtype else f"{ext} is {got}, expected {dtype}")
        try:
            w = WCS(h.header, naxis=2)
            cel_ok = w.has_celestial and h.header.get("RADESYS") == "ICRS" and "EQUINOX" not in h.header
            report.add(
                rel,
                f"{ext} WCS",
                None
                if cel_ok
                else f"{ext}: no celestial ICRS WCS (CTYPE {h.header.get('CTYPE1')!r}, RADESYS "
                f"{h.header.get('RADESYS')!r}{', EQUINOX set' if 'EQUINOX' in h.header else ''})",
            )
        except Exception as exc:
            report.add(rel, f"{ext} WCS", f"{ext}: WCS does not parse ({exc})")
    if "SCI" in names and hdul["SCI"].data is not None:
        report.add(rel, "SCI has data", None if np.isfinite(hdul["SCI"].data).any() else "SCI is all NaN")
        if not problems:
            report.add(rel, "target on the image", _footprint_problem(hdul["SCI"], h0))
    if "ERR" in names and hdul["ERR"].data is not None:
        err = hdul["ERR"].data
        finite = err[np.isfinite(err)]
        if finite.size == 0:
            report.add(rel, "ERR valid", "ERR is all NaN")
        elif (finite < 0).any():
            report.add(
                rel,
                "ERR valid",
                f"ERR has {(finite < 0).sum()} negative value(s) (min {finite.min():.3g}): an uncertainty is never "
                "negative",
            )
        else:
            report.add(rel, "ERR valid")
    sim = h0.get("SIMULATD")
    return bool(sim) if sim is not None else None


def _check_extensions(report: Report, rel: str, hdul, names: list[str], h0) -> None:
    """What every image extension must agree on: its unit (:data:`EXT_UNITS`), FILTER and the
    target's coordinates as the primary header gives them, and its celestial WCS with SCI's
    (within :data:`WCS_AGREEMENT_MAS`); INPUTS lists the exposures and CON draws on no more
    than it lists."""
    from astropy.wcs import WCS

    images = [e for e in names if e in EXT_UNITS]
    for ext in images:
        h = hdul[ext].header
        unit, want = h.get("BUNIT"), EXT_UNITS[ext]
        report.add(
            rel,
            f"{ext} BUNIT",
            None
            if unit == want
            else (
                f"{ext} BUNIT is {unit!r}, expected {want!r}" if want else f"{ext} has BUNIT {unit!r}: it has no unit"
            ),
        )
        wrong = [
            f"{k} {h.get(k)!r} (primary: {h0.get(k)!r})"
            for k in ("FILTER", "RA_TARG", "DEC_TARG")
            if k in h0 and h.get(k) != h0.get(k)
        ]
        report.add(rel, f"{ext} image keywords", f"{ext}: {', '.join(wrong)}" if wrong else None)
    if "SCI" in images:
        try:
            ref = WCS(hdul["SCI"].header, naxis=2).celestial
            ny, nx = hdul["SCI"].shape[-2:]
            xs = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2.0])
            ys = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2.0])
            ra0, dec0 = ref.pixel_to_world_values(xs, ys)
        except Exception:  # noqa: BLE001 - SCI's own WCS problem is reported by its WCS check
            ref = None
        for ext in images:
            if ext == "SCI" or ref is None:
                continue
            try:
                w = WCS(hdul[ext].header, naxis=2).celestial
                ra, dec = w.pixel_to_world_values(xs, ys)
                off = 3.6e6 * np.hypot((ra - ra0) * np.cos(np.deg2rad(dec0)), dec - dec0)
                worst = float(np.nanmax(off)) if np.isfinite(off).any() else np.inf
            except Exception as exc:  # noqa: BLE001
                report.add(rel, f"{ext} WCS agrees with SCI", f"{ext}: WCS cannot be evaluated ({exc})")
                continue
            report.add(
                rel,
                f"{ext} WCS agrees with SCI",
                None
                if worst <= WCS_AGREEMENT_MAS
                else f"{ext}: its WCS puts pixels {worst / 1000:.3g}\" from where SCI's does (tolerance "
                f"{WCS_AGREEMENT_MAS:g} mas): the extensions are not on one grid",
            )
    if "INPUTS" in names:
        rows = hdul["INPUTS"].data
        n = 0 if rows is None else len(rows)
        problem = None if n else "INPUTS lists no exposure: what the mosaic was made from is unknown"
        if n and "CON" in names and hdul["CON"].data is not None:
            con = np.asarray(hdul["CON"].data)
            planes = (con.reshape(1, -1) if con.ndim < 3 else con.reshape(con.shape[0], -1)).astype(np.int64)
            union = np.bitwise_or.reduce(planes & 0xFFFFFFFF, axis=1)  # the inputs each plane's bits name
            bits = sum(bin(int(u)).count("1") for u in union)
            if bits > n:
                problem = f"CON draws on {bits} inputs but INPUTS lists {n}: they disagree"
        report.add(rel, "INPUTS", problem)


def _beam_problem(hdul, names: list[str], fwhm_arcsec: float) -> str | None:
    """BMAJ = BMIN = ``fwhm_arcsec`` (degrees) and BPA in the primary header, SCI and ERR."""
    problems = []
    want = fwhm_arcsec / 3600.0
    for ext in ("PRIMARY", "SCI", "ERR"):
        if ext not in names:
            continue
        h = hdul[ext].header
        missing = [k for k in ("BMAJ", "BMIN", "BPA") if k not in h]
        if missing:
            problems.append(f"{ext}: {', '.join(missing)} missing")
            continue
        for k in ("BMAJ", "BMIN"):
            if not isinstance(h[k], (int, float)) or abs(h[k] / want - 1.0) > BEAM_TOLERANCE:
                problems.append(
                    f'{ext}: {k} {h[k]!r} deg is not the {fwhm_arcsec:g}" ({want:.8g} deg) the file name says'
                )
    return "; ".join(problems) or None


def _same_target(name: str) -> str:
    """A target designation reduced for comparison: 'NGC 628', 'ngc0628', 'NGC0628' agree."""
    s = "".join(ch for ch in str(name).lower() if ch.isalnum() or ch in "+-.")
    return re.sub(r"(?<![0-9])0+(?=[0-9])", "", s)


def _mjd(iso: str) -> float:
    from astropy.time import Time

    return Time(iso, format="isot", scale="utc").mjd


def _date_problems(h0) -> list[str]:
    """Time keywords that contradict each other (all in days unless said)."""
    problems = []
    tol = DATE_TOLERANCE_S / 86400.0
    beg, end, mid = h0["MJD-BEG"], h0["MJD-END"], h0["MJD-MID"]
    if not beg <= mid <= end:
        problems.append("MJD-BEG <= MJD-MID <= MJD-END does not hold")
    elif abs(mid - (beg + end) / 2) > tol:
        problems.append(f"MJD-MID {mid} is not the mid-point of MJD-BEG and MJD-END")
    for key, mjd in (("DATE-BEG", beg), ("DATE-END", end)):
        if _ISO.match(h0[key]):
            try:
                if abs(_mjd(h0[key]) - mjd) > tol:
                    problems.append(f"{key} {h0[key]} disagrees with MJD-{key[5:]} {mjd}")
            except ValueError:
                problems.append(f"{key} {h0[key]!r} is not a date")
    now = _mjd(datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    if end > now + 1:
        problems.append(f"MJD-END {end} is in the future")
    if (
        "TELAPSE" in h0
        and isinstance(h0["TELAPSE"], (int, float))
        and abs(h0["TELAPSE"] - (end - beg) * 86400) > DATE_TOLERANCE_S
    ):
        problems.append(f"TELAPSE {h0['TELAPSE']} s is not MJD-END - MJD-BEG ({(end - beg) * 86400:.1f} s)")
    if h0["XPOSURE"] < 0:
        problems.append(f"XPOSURE {h0['XPOSURE']} is negative")
    return problems


def _footprint_problem(sci, h0) -> str | None:
    """RA_TARG/DEC_TARG must fall on the mosaic (within a margin): a file of another target does not."""
    from astropy.wcs import WCS

    try:
        w = WCS(sci.header, naxis=2).celestial
        x, y = w.all_world2pix([[h0["RA_TARG"], h0["DEC_TARG"]]], 0)[0]
    except Exception as exc:
        return f"RA_TARG/DEC_TARG cannot be placed on the SCI WCS ({type(exc).__name__})"
    ny, nx = sci.data.shape[-2:]
    mx, my = FOOTPRINT_MARGIN * nx, FOOTPRINT_MARGIN * ny
    if np.isfinite(x) and np.isfinite(y) and -mx <= x <= nx - 1 + mx and -my <= y <= ny - 1 + my:
        return None
    return (
        f"RA_TARG/DEC_TARG ({h0['RA_TARG']:.5f}, {h0['DEC_TARG']:.5f}) fall at pixel ({x:.0f}, {y:.0f}), "
        f"off the {nx}x{ny} image: the header and the image are of different targets"
    )


def _check_against_manifest(report: Report, rel: str, h0, parsed, m) -> None:
    """A FITS file says it was made from the release manifest, for its target, as it says."""
    problems = []
    want = m.content_hash()
    if h0.get("HLSPMANI") != want:
        problems.append(
            f"HLSPMANI {str(h0.get('HLSPMANI'))[:16]}... is not the release manifest's content hash {want[:16]}..."
        )
    if h0.get("HLSPID") not in (None, m.release.project.upper()):
        problems.append(f"HLSPID {h0.get('HLSPID')!r} is not the release's {m.release.project.upper()!r}")
    if parsed is not None and parsed.target in m.targets:
        t = m.targets[parsed.target]
        if "HLSPTARG" in h0 and h0["HLSPTARG"] != (t.designation or parsed.target):
            problems.append(
                f"HLSPTARG {h0['HLSPTARG']!r} is not the manifest's designation {(t.designation or parsed.target)!r}"
            )
        for key, value in (("RA_TARG", t.ra), ("DEC_TARG", t.dec)):
            got = h0.get(key)
            if isinstance(got, (int, float)) and abs(got - value) > 1e-6:
                problems.append(f"{key} {got} is not the manifest's {value} for {parsed.target}")
    report.add(rel, "made from the release manifest", "; ".join(problems) if problems else None)
