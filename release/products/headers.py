"""The primary header of every FITS file of a release: MAST's HLSP keywords (required,
recommended and suggested), the target, the times, our
provenance; written by :func:`primary_header`, checked by :func:`check_primary`.
"""

from __future__ import annotations

import datetime
import re

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
#: Keywords every image extension carries besides its WCS and unit (MAST: on images too).
IMAGE_KEYWORDS = ("FILTER", "RA_TARG", "DEC_TARG")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$")
#: Tolerance of the date consistency checks (DATE-* against MJD-*, TELAPSE), seconds.
DATE_TOLERANCE_S = 1.0


def set_card(header, key: str, value, comment: str = "") -> None:
    """``header[key] = value`` with ``comment`` only where both fit on one 80-character card
    (astropy would otherwise truncate the comment, with a warning)."""
    from astropy.io import fits

    header[key] = value
    image = fits.Card(key, value).image.rstrip()
    if comment and len(image) + 3 + len(comment) <= 80:
        header.comments[key] = comment


def _mjd_to_iso(mjd: float) -> str:
    from astropy.time import Time

    return Time(mjd, format="mjd", scale="utc").isot


def primary_header(src_primary, lm, target: str, band: str, simulated: bool, psfsize: float, psfsize_comment: str):
    """The primary header of a release FITS file made from a level-3 mosaic (its primary
    header ``src_primary``: instrument, times, provenance), for ``target`` and ``band`` of
    manifest ``lm``; ``psfsize``: the PSF FWHM of the product (arcsec)."""
    from astropy.io import fits

    from release.naming import file_version

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
    set_card(h, "PSFSIZE", round(float(psfsize), 4), psfsize_comment)
    h["SIMULATD"] = (bool(simulated), "made from simulated observations")
    return h


def image_keywords(primary) -> list[tuple[str, object, str]]:
    """``(keyword, value, comment)`` of :data:`IMAGE_KEYWORDS`, from the primary header."""
    return [(k, primary[k], primary.comments[k]) for k in IMAGE_KEYWORDS]


# -- checks ----------------------------------------------------------------------------------------


def same_target(name: str) -> str:
    """A target designation reduced for comparison: 'NGC 628', 'ngc0628', 'NGC0628' agree."""
    s = "".join(ch for ch in str(name).lower() if ch.isalnum() or ch in "+-.")
    return re.sub(r"(?<![0-9])0+(?=[0-9])", "", s)


def _mjd(iso: str) -> float:
    from astropy.time import Time

    return float(Time(iso, format="isot", scale="utc").mjd)


def date_problems(h0) -> list[str]:
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


def check_primary(report, rel: str, h0, parsed, designated: bool = False) -> bool:
    """MAST's keywords in a release FITS file's primary header: the required ones present, well
    formed and consistent with each other and with the file name (FILTER, INSTRUME, HLSPTARG,
    HLSPVER); the recommended ones present. ``designated``: the release manifest names the
    target, so HLSPTARG is checked against its designation there (by the caller) rather than
    the file name's target. Returns whether the required keywords are all sound."""
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
        problems += date_problems(h0)
        if h0["HLSPVER"] != parsed.version:
            problems.append(f"HLSPVER {h0['HLSPVER']!r} differs from the file name's version {parsed.version!r}")
        if parsed.filter != "multi" and h0["FILTER"].lower() != parsed.filter:
            problems.append(f"FILTER {h0['FILTER']!r} differs from the file name's {parsed.filter!r}")
        if h0["INSTRUME"].lower() not in parsed.instrument.split("-"):
            problems.append(f"INSTRUME {h0['INSTRUME']!r} differs from the file name's {parsed.instrument!r}")
        if not designated and same_target(h0["HLSPTARG"]) != same_target(parsed.target):
            problems.append(f"HLSPTARG {h0['HLSPTARG']!r} is not the file name's target {parsed.target!r}")
    report.add(rel, "required primary keywords", "; ".join(problems) if problems else None)
    missing = [f"{k} missing" for k in RECOMMENDED_PRIMARY if k not in h0]
    if "PSFSIZE" in h0 and (not isinstance(h0["PSFSIZE"], (int, float)) or not h0["PSFSIZE"] > 0):
        missing.append(f"PSFSIZE {h0['PSFSIZE']!r} is not a positive FWHM in arcsec")
    report.add(rel, "recommended primary keywords", "; ".join(missing) if missing else None)
    return not problems
