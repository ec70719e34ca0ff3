"""`hlsp validate RELEASE_DIR`: the CI gate for a release.

Checks, each reported per file with the problem named:

- every file name follows MAST's rules, and files sit where the manifest says;
- the manifest CSV lists every file of the folder (and only those), with matching size and sha256;
- a README is there;
- every FITS file opens, its CHECKSUM/DATASUM match on every HDU, and ``fitsverify`` (where
  installed) reports no error and no warning;
- img.fits: the extensions of Table 3 in order, their dtypes, BUNIT of SCI/ERR (MJy/sr), a
  celestial WCS that parses in every image extension (RADESYS ICRS, no EQUINOX), SCI not all
  NaN, every MAST-required primary keyword present and well formed, SIMULATD = T in a
  simulated release.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from release.fileio import file_sha256
from release.naming import check_name, parse_name

REQUIRED_PRIMARY = {
    "TELESCOP": str, "OBSERVAT": str, "INSTRUME": str, "FILTER": str, "RA_TARG": float, "DEC_TARG": float,
    "DATE-BEG": str, "DATE-END": str, "MJD-BEG": float, "MJD-END": float, "MJD-MID": float, "TIMESYS": str,
    "XPOSURE": float, "HLSPID": str, "HLSPTARG": str, "HLSPVER": str, "DOI": str, "LICENSE": str, "LICENURL": str,
}
RECOMMENDED_PRIMARY = ("HLSPNAME", "HLSPLEAD", "TELAPSE", "PROPOSID")
IMG_LAYOUT = ("PRIMARY", "SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "CON", "WHT", "INPUTS")
IMG_DTYPES = {"SCI": "float32", "ERR": "float32", "DQ": "uint32", "VAR_POISSON": "float32", "VAR_RNOISE": "float32",
              "VAR_FLAT": "float32", "CON": "int32", "WHT": "float32"}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$")


@dataclass
class Finding:
    file: str
    check: str
    ok: bool
    message: str = ""


@dataclass
class Report:
    root: Path
    findings: list[Finding] = field(default_factory=list)

    def add(self, file: str, check: str, problem: str | None = None) -> None:
        self.findings.append(Finding(file, check, problem is None, problem or ""))

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def junit(self) -> str:
        from xml.sax.saxutils import escape, quoteattr

        by_file: dict[str, list[Finding]] = {}
        for f in self.findings:
            by_file.setdefault(f.file, []).append(f)
        out = ['<?xml version="1.0" encoding="UTF-8"?>',
               f'<testsuites name={quoteattr("hlsp validate " + str(self.root))} tests="{len(self.findings)}" failures="{len(self.failures)}">']
        for file, fs in sorted(by_file.items()):
            fails = sum(not f.ok for f in fs)
            out.append(f'  <testsuite name={quoteattr(file)} tests="{len(fs)}" failures="{fails}">')
            for f in fs:
                out.append(f'    <testcase classname={quoteattr(file)} name={quoteattr(f.check)}>')
                if not f.ok:
                    out.append(f'      <failure message={quoteattr(f.message)}>{escape(f.message)}</failure>')
                out.append("    </testcase>")
            out.append("  </testsuite>")
        out.append("</testsuites>")
        return "\n".join(out) + "\n"


def validate_release(root: str | Path, use_fitsverify: bool = True) -> Report:
    root = Path(root)
    report = Report(root)
    if not root.is_dir():
        report.add(str(root), "release folder", "is not a folder")
        return report
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rels = {p.relative_to(root).as_posix(): p for p in files}
    for rel, p in rels.items():
        problems = check_name(p.name)
        report.add(rel, "MAST file name", "; ".join(problems) if problems else None)

    manifests = [r for r in rels if r.endswith("_manifest.csv") and "/" not in r]
    readmes = [r for r in rels if r.endswith("_readme.txt") and "/" not in r]
    report.add(".", "README present", None if readmes else "no *_readme.txt at the top of the release")
    if len(manifests) != 1:
        report.add(".", "manifest present", f"expected one *_manifest.csv at the top, found {len(manifests)}")
        listed = {}
    else:
        report.add(manifests[0], "manifest present")
        listed = _check_manifest(report, root, manifests[0], rels)

    flags: dict[str, bool | None] = {}
    for rel, p in rels.items():
        if not p.name.endswith((".fits", ".fits.gz")):
            continue
        flags[rel] = _check_fits(report, rel, p, use_fitsverify)
    readme_sim = bool(readmes) and "SIMULATED DATA" in rels[readmes[0]].read_text(errors="replace")
    any_sim = any(v is True for v in flags.values())
    if any_sim and readmes:
        report.add(readmes[0], "README says simulated", None if readme_sim else "the products are SIMULATD = T but the README does not say so")
    if readme_sim or any_sim:
        for rel, v in flags.items():
            if rel.endswith("_img.fits") and v != "unreadable":
                report.add(rel, "SIMULATD", None if v is True else "SIMULATD missing or F in a release made from simulated data")
    return report


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
    for row in rows:
        name = row.get("filename", "")
        listed[name] = row
        p = rels.get(name)
        if p is None:
            report.add(name, "listed file exists", f"listed in {manifest_rel} but not in the release")
            continue
        if str(p.stat().st_size) != row.get("size"):
            report.add(name, "size matches manifest", f"size {p.stat().st_size} but the manifest says {row.get('size')}")
        else:
            report.add(name, "size matches manifest")
        digest = file_sha256(p)
        report.add(name, "sha256 matches manifest", None if digest == row.get("sha256") else f"sha256 {digest[:16]}... but the manifest says {str(row.get('sha256'))[:16]}...")
        parsed = parse_name(Path(name).name)
        if parsed and (parsed.target != row.get("target") or parsed.version != row.get("version") or parsed.product != row.get("product_type")):
            report.add(name, "manifest fields match name", "target/version/product type in the manifest differ from the file name")
    for rel in rels:
        if rel != manifest_rel and rel not in listed:
            report.add(rel, "file is in manifest", f"not listed in {manifest_rel}")
    return listed


def _check_fits(report: Report, rel: str, path: Path, use_fitsverify: bool) -> bool | str | None:
    """Check one FITS file; return its SIMULATD flag (None if absent, 'unreadable')."""
    from astropy.io import fits

    simulated = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, checksum=True, memmap=False) as hdul:
                names = [h.name for h in hdul]
                _ = [h.data for h in hdul]  # read everything: a truncated file fails here
                bad_sums = [str(w.message) for w in caught if "checksum" in str(w.message).lower() or "datasum" in str(w.message).lower()]
                missing_sums = [h.name for h in hdul if "CHECKSUM" not in h.header or "DATASUM" not in h.header]
                truncated = [str(w.message) for w in caught if "truncat" in str(w.message).lower()]
                report.add(rel, "FITS readable", "; ".join(truncated) if truncated else None)
                report.add(rel, "CHECKSUM/DATASUM", "; ".join(bad_sums) if bad_sums else (f"missing on {', '.join(missing_sums)}" if missing_sums else None))
                try:
                    hdul.verify("exception")
                    report.add(rel, "FITS standard (astropy)")
                except Exception as exc:
                    report.add(rel, "FITS standard (astropy)", " ".join(str(exc).split()))
                parsed = parse_name(path.name)
                if parsed and parsed.product.startswith("img") and path.name.endswith(".fits"):
                    simulated = _check_img(report, rel, hdul, names, parsed)
    except Exception as exc:
        report.add(rel, "FITS readable", f"cannot be read as FITS ({type(exc).__name__}: {' '.join(str(exc).split())})")
        return "unreadable"
    if use_fitsverify:
        exe = shutil.which("fitsverify")
        if exe is None:
            report.add(rel, "fitsverify", "fitsverify is not installed (Debian package 'fitsverify')")
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
                report.add(rel, "fitsverify", None if (w, e) == (0, 0) else f"fitsverify: {w} warning(s) and {e} error(s): {text[:300]}")
    return simulated


def _check_img(report: Report, rel: str, hdul, names: list[str], parsed) -> bool | None:
    from astropy.wcs import WCS

    report.add(rel, "extension layout", None if tuple(names) == IMG_LAYOUT else f"extensions are {names}, expected {list(IMG_LAYOUT)}")
    h0 = hdul[0].header
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
        if h0["TIMESYS"] != "UTC":
            problems.append(f"TIMESYS is {h0['TIMESYS']!r}, expected 'UTC'")
        for k in ("DATE-BEG", "DATE-END"):
            if not _ISO.match(h0[k]):
                problems.append(f"{k} {h0[k]!r} is not ISO-8601")
        if not (0 <= h0["RA_TARG"] < 360 and -90 <= h0["DEC_TARG"] <= 90):
            problems.append("RA_TARG/DEC_TARG out of range")
        if not h0["MJD-BEG"] <= h0["MJD-MID"] <= h0["MJD-END"]:
            problems.append("MJD-BEG <= MJD-MID <= MJD-END does not hold")
        if h0["HLSPVER"] != parsed.version:
            problems.append(f"HLSPVER {h0['HLSPVER']!r} differs from the file name's version {parsed.version!r}")
        if h0["FILTER"].lower() != parsed.filter:
            problems.append(f"FILTER {h0['FILTER']!r} differs from the file name's {parsed.filter!r}")
        if h0["INSTRUME"].lower() != parsed.instrument:
            problems.append(f"INSTRUME {h0['INSTRUME']!r} differs from the file name's {parsed.instrument!r}")
    report.add(rel, "required primary keywords", "; ".join(problems) if problems else None)
    missing_rec = [k for k in RECOMMENDED_PRIMARY if k not in h0]
    report.add(rel, "recommended primary keywords", f"{', '.join(missing_rec)} missing" if missing_rec else None)
    for ext, dtype in IMG_DTYPES.items():
        if ext not in names:
            continue
        h = hdul[ext]
        got = str(np.dtype(h.data.dtype).newbyteorder("=").name) if h.data is not None else "none"
        report.add(rel, f"{ext} dtype", None if got == dtype else f"{ext} is {got}, expected {dtype}")
        try:
            w = WCS(h.header, naxis=2)
            cel_ok = w.has_celestial and h.header.get("RADESYS") == "ICRS" and "EQUINOX" not in h.header
            report.add(rel, f"{ext} WCS", None if cel_ok else f"{ext}: no celestial ICRS WCS (CTYPE {h.header.get('CTYPE1')!r}, RADESYS {h.header.get('RADESYS')!r}{', EQUINOX set' if 'EQUINOX' in h.header else ''})")
        except Exception as exc:
            report.add(rel, f"{ext} WCS", f"{ext}: WCS does not parse ({exc})")
    for ext in ("SCI", "ERR"):
        if ext in names:
            unit = hdul[ext].header.get("BUNIT")
            report.add(rel, f"{ext} BUNIT", None if unit == "MJy/sr" else f"{ext} BUNIT is {unit!r}, expected 'MJy/sr'")
    if "SCI" in names and hdul["SCI"].data is not None:
        report.add(rel, "SCI has data", None if np.isfinite(hdul["SCI"].data).any() else "SCI is all NaN")
    sim = h0.get("SIMULATD")
    return bool(sim) if sim is not None else None
