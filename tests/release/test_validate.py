"""Packaging to MAST conventions, and `hlsp validate` catching a broken release."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tests.conftest import hlsp

pytestmark = pytest.mark.slow


def imgs(release: Path) -> list[Path]:
    return sorted(release.rglob("*_img.fits"))


def test_demo_release_validates_clean(demo_release, tmp_path):
    assert shutil.which("fitsverify"), "fitsverify must be installed (.ci/run installs the Debian package)"
    proc = hlsp("validate", str(demo_release), "--junit", str(tmp_path / "v.xml"), check_code=0)
    assert "valid" in proc.stdout
    xml = (tmp_path / "v.xml").read_text()
    assert 'failures="0"' in xml and xml.count("<testcase") > 100
    names = sorted(p.name for p in demo_release.rglob("*") if p.is_file())
    assert "hlsp_synth-jwst_jwst_nircam_synth1_f200w_v1p0_img.fits" in names
    assert "hlsp_synth-jwst_jwst_miri-nircam_all_multi_v1p0_readme.txt" in names
    assert len([n for n in names if n.endswith("_img.fits")]) == 4
    assert len([n for n in names if n.endswith("_img-preview.png")]) == 4


def test_img_opens_with_wcs_and_units_on_every_extension(demo_release):
    from astropy.wcs import WCS

    p = next(p for p in imgs(demo_release) if "miri_synth2_f770w" in p.name)
    with fits.open(p) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "CON", "WHT", "INPUTS"]
        h0 = hdul[0].header
        assert h0["SIMULATD"] is True and h0["TELESCOP"] == h0["OBSERVAT"] == "JWST" and h0["TIMESYS"] == "UTC"
        assert h0["HLSPVER"] == "v1p0" and h0["HLSPTARG"] == "synth2" and h0["FILTER"] == "F770W"
        assert h0["MJD-BEG"] < h0["MJD-MID"] < h0["MJD-END"] and h0["XPOSURE"] > 0
        assert h0["HLSPMANI"] and h0["HLSPJWST"] == "3.0.0"
        ref = WCS(hdul["SCI"].header)
        for ext in ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "WHT", "CON"):
            w = WCS(hdul[ext].header, naxis=2).celestial
            assert w.has_celestial and hdul[ext].header["RADESYS"] == "ICRS"
            assert np.allclose(w.pixel_to_world_values(10, 20), ref.pixel_to_world_values(10, 20))
        assert hdul["SCI"].header["BUNIT"] == hdul["ERR"].header["BUNIT"] == "MJy/sr"
        assert hdul["DQ"].data.dtype == np.uint32
        assert len(hdul["INPUTS"].data) == 2  # synth2 F770W: two dithers
        assert hdul[0].header.get("CHECKSUM") and all("DATASUM" in h.header for h in hdul)


def test_published_release_is_never_overwritten(engine_run, demo_release):
    before = {p: p.stat().st_mtime_ns for p in demo_release.rglob("*")}
    proc = hlsp("package", str(engine_run["manifest"]), "--workdir", str(engine_run["workdir"]), "--releases", str(demo_release.parent.parent), check_code=2)
    assert "already published" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in demo_release.rglob("*")} == before
    assert not [p for p in demo_release.parent.iterdir() if p.name.startswith(".staging")]


def test_failed_packaging_publishes_nothing(engine_run, tmp_path):
    """A mosaic that cannot be read stops the packaging: exit 1, no release, no staging left."""
    work = tmp_path / "work"
    shutil.copytree(engine_run["workdir"] / "products", work / "products")
    victim = work / "products" / "synth2" / "f770w" / "synth2_f770w_i2d.fits"
    victim.write_bytes(victim.read_bytes()[:5000])
    proc = hlsp("package", str(engine_run["manifest"]), "--workdir", str(work), "--releases", str(tmp_path / "rel"), check_code=1)
    assert "nothing was published" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "rel" / "synth-jwst" / "v1p0").exists()
    assert not list((tmp_path / "rel" / "synth-jwst").glob(".staging*"))


# -- breaking a good release ----------------------------------------------------------------


def _img(rel: Path, key: str = "nircam_synth1_f200w") -> Path:
    return next(p for p in imgs(rel) if key in p.name)


def _edit_header(path: Path, ext, key, value=None, delete=False):
    with fits.open(path, mode="update") as hdul:
        if delete:
            del hdul[ext].header[key]
        else:
            hdul[ext].header[key] = value
        for h in hdul:
            h.add_checksum()


def flip_byte(rel):
    p = _img(rel)
    with fits.open(p) as hdul:
        at = hdul.fileinfo(1)["datLoc"] + 4 * 1234  # inside the SCI pixels
    data = bytearray(p.read_bytes())
    data[at] ^= 0x01
    p.write_bytes(bytes(data))
    return p.name, "Checksum verification failed for HDU"


def flip_header_byte(rel):
    p = _img(rel)
    data = bytearray(p.read_bytes())
    with fits.open(p) as hdul:
        at = hdul.fileinfo(2)["hdrLoc"] + 80 * 8 + 2  # a keyword name in the ERR header
    data[at] = ord("?")
    p.write_bytes(bytes(data))
    return p.name, "Illegal keyword name"


def missing_keyword(rel):
    p = _img(rel)
    _edit_header(p, 0, "DOI", delete=True)
    return p.name, "DOI missing"


def wrong_name(rel):
    p = _img(rel)
    p.rename(p.with_name(p.name.replace("_img.fits", "_IMG.fits")))
    return "_IMG.fits", "upper-case"


def extra_file(rel):
    (rel / "synth1" / "notes.txt").write_text("scratch")
    return "notes.txt", "not listed in"


def missing_extension(rel):
    p = _img(rel)
    with fits.open(p) as hdul:
        keep = fits.HDUList([h for h in hdul if h.name != "VAR_FLAT"])
        keep.writeto(p.with_suffix(".tmp"), checksum=True)
    p.with_suffix(".tmp").replace(p)
    return p.name, "extensions are"


def truncated_file(rel):
    p = _img(rel)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p.name, "size"


def wrong_bunit(rel):
    p = _img(rel)
    _edit_header(p, "SCI", "BUNIT", "DN/s")
    return p.name, "SCI BUNIT is 'DN/s'"


def stale_manifest_entry(rel):
    m = next(rel.glob("*_manifest.csv"))
    rows = list(csv.reader(m.read_text().splitlines()))
    rows.append(["synth1/hlsp_synth-jwst_jwst_miri_synth1_f560w_v1p0_img.fits", "10", "0" * 64, "img", "synth1", "miri", "f560w", "v1p0"])
    m.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return "f560w", "not in the release"


def sci_all_nan(rel):
    p = _img(rel)
    with fits.open(p, mode="update") as hdul:
        hdul["SCI"].data[:] = np.nan
        for h in hdul:
            h.add_checksum()
    return p.name, "SCI is all NaN"


def broken_wcs(rel):
    p = _img(rel)
    _edit_header(p, "ERR", "CTYPE1", "PIXEL")
    return p.name, "ERR: WCS does not parse"


def equinox_with_icrs(rel):
    p = _img(rel)
    _edit_header(p, "SCI", "EQUINOX", 2000.0)
    return p.name, "EQUINOX set"


def wrong_dtype(rel):
    p = _img(rel)
    with fits.open(p) as hdul:
        hdus = [fits.ImageHDU(h.data.astype(np.float32), header=h.header, name="DQ") if h.name == "DQ" else h for h in hdul]
        fits.HDUList(hdus).writeto(p.with_suffix(".tmp"), checksum=True)
    p.with_suffix(".tmp").replace(p)
    return p.name, "DQ is float32, expected uint32"


def missing_readme(rel):
    next(rel.glob("*_readme.txt")).unlink()
    return ".", "no *_readme.txt"


def version_mismatch_in_header(rel):
    p = _img(rel)
    _edit_header(p, 0, "HLSPVER", "v2p0")
    return p.name, "HLSPVER 'v2p0' differs"


def bad_date(rel):
    p = _img(rel)
    _edit_header(p, 0, "DATE-BEG", "25/02/2023")
    return p.name, "DATE-BEG '25/02/2023' is not ISO-8601"


def simulated_flag_removed(rel):
    p = _img(rel)
    _edit_header(p, 0, "SIMULATD", delete=True)
    return p.name, "SIMULATD missing or F in a release made from simulated data"


BREAKS = [flip_byte, flip_header_byte, missing_keyword, wrong_name, extra_file, missing_extension, truncated_file, wrong_bunit,
          stale_manifest_entry, sci_all_nan, broken_wcs, equinox_with_icrs, wrong_dtype, missing_readme,
          version_mismatch_in_header, bad_date, simulated_flag_removed]


@pytest.mark.parametrize("brk", BREAKS, ids=[b.__name__ for b in BREAKS])
def test_validate_catches_a_broken_release(demo_release, tmp_path, brk):
    rel = tmp_path / "v1p0"
    shutil.copytree(demo_release, rel)
    fname, problem = brk(rel)
    proc = hlsp("validate", str(rel), "--junit", str(tmp_path / "j.xml"), check_code=1)
    text = " ".join(proc.stdout.split())
    junit = (tmp_path / "j.xml").read_text()
    assert 'failures="0"' not in junit.split("\n")[1]
    # the file and the problem are named (in the JUnit report, which does not wrap)
    assert any(fname in line and problem in line for line in junit.split("<testcase")), (fname, problem, text[:2000])
