"""Packaging to MAST conventions, and `hlsp validate` catching a broken release."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tests.conftest import hlsp, linked_copy


def imgs(release: Path) -> list[Path]:
    return sorted(release.rglob("*_img.fits"))


def test_demo_release_validates_clean(demo_release, tmp_path):
    # under CI (CI=true) validation is strict: fitsverify must have run on every FITS file
    # (the Makefile installs it); elsewhere, without it, the check is reported as not run
    proc = hlsp("validate", str(demo_release), "--junit", str(tmp_path / "v.xml"), check_code=0)
    assert "valid" in proc.stdout
    if shutil.which("fitsverify") is None:
        assert "not run: fitsverify" in proc.stdout
    xml = (tmp_path / "v.xml").read_text()
    assert 'failures="0"' in xml and xml.count("<testcase") > 100
    # against itself: nothing is compared, and it says so (strict, as under CI: a failure)
    proc = hlsp(
        "validate", str(demo_release), "--no-fitsverify", "--no-strict", "--against", str(demo_release), check_code=0
    )
    assert "is this release itself (1.0.0): nothing was compared" in " ".join(proc.stdout.split())
    proc = hlsp("validate", str(demo_release), "--strict", "--against", str(demo_release), check_code=4)
    assert "is this release itself" in proc.stdout
    names = sorted(p.name for p in demo_release.rglob("*") if p.is_file())
    assert "hlsp_synth-jwst_jwst_nircam_synth1_f200w_v1p0_img.fits" in names
    assert "hlsp_synth-jwst_jwst_miri-nircam_all_multi_v1p0_readme.txt" in names
    assert "hlsp_synth-jwst_jwst_miri-nircam_all_multi_v1p0_manifest.toml" in names
    assert len([n for n in names if n.endswith("_img.fits")]) == 4
    assert len([n for n in names if n.endswith("_img-preview.png")]) == 4
    for res in ("0p85", "0p90", "1p00"):  # PSF-matched, every band
        assert len([n for n in names if n.endswith(f"_img-gauss{res}as.fits")]) == 4
    assert len([n for n in names if n.endswith("_psf-matching.ecsv")]) == 2


def test_convolved_products_carry_their_beam_and_the_anchored_level(demo_release):
    p = next(demo_release.rglob("*miri_synth1_f770w_*_img-gauss0p85as.fits"))
    img = next(demo_release.rglob("*miri_synth1_f770w_*_img.fits"))
    with fits.open(p) as h, fits.open(img) as ref:
        assert [x.name for x in h] == ["PRIMARY", "SCI", "ERR"]
        for x in h:
            assert x.header["BMAJ"] == x.header["BMIN"] == pytest.approx(0.85 / 3600) and x.header["BPA"] == 0
        assert h[0].header["HLSPDPB"] == 0.85 and 0 <= h[0].header["HLSPDPW"] < 0.3
        # the same level as the released mosaic (anchored), the same grid, less noise
        assert h[0].header["HLSPDBO"] == ref[0].header["HLSPDBO"]
        assert h["SCI"].data.shape == ref["SCI"].data.shape
        both = np.isfinite(h["SCI"].data) & np.isfinite(ref["SCI"].data)
        assert np.nanmedian(h["SCI"].data[both]) == pytest.approx(
            np.nanmedian(ref["SCI"].data[both]), rel=0.05, abs=0.05
        )
        assert np.nanmedian(h["ERR"].data[both]) < 0.5 * np.nanmedian(ref["ERR"].data[both])


def test_img_opens_with_wcs_and_units_on_every_extension(demo_release):
    from astropy.wcs import WCS

    p = next(p for p in imgs(demo_release) if "miri_synth2_f770w" in p.name)
    with fits.open(p) as hdul:
        assert [h.name for h in hdul] == [
            "PRIMARY",
            "SCI",
            "ERR",
            "DQ",
            "VAR_POISSON",
            "VAR_RNOISE",
            "VAR_FLAT",
            "CON",
            "WHT",
            "INPUTS",
        ]
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


def test_published_release_is_never_overwritten(engine_run, demo_release, tmp_path):
    releases = linked_copy(demo_release.parent.parent, tmp_path / "releases")
    published = releases / demo_release.relative_to(demo_release.parent.parent)
    before = {p: p.stat().st_mtime_ns for p in published.rglob("*")}
    proc = hlsp(
        "package",
        str(engine_run["manifest"]),
        "--workdir",
        str(linked_copy(engine_run["workdir"], tmp_path / "work")),
        "--releases",
        str(releases),
        check_code=2,
    )
    assert "already published" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in published.rglob("*")} == before
    assert not [p for p in published.parent.iterdir() if p.name.startswith(".staging")]


def test_failed_packaging_publishes_nothing(engine_run, tmp_path):
    """A mosaic that cannot be read stops the packaging: exit 1, no release, no staging left.

    The mosaic is a cache entry whose record was made to match a truncated file (only the
    primary header left), so it passes the lookup and fails while being written out."""
    import json

    cache = tmp_path / "cache"
    shutil.copytree(engine_run["cache"] / "objects", cache / "objects", copy_function=os.link)
    key = fits.getval(engine_run["workdir"] / "products" / "synth2" / "f770w" / "synth2_f770w_i2d.fits", "HLSPTASK")
    entry = cache / "objects" / key[:2] / key
    victim = entry / "synth2_f770w_i2d.fits"
    with fits.open(victim) as hdul:
        cut = hdul.fileinfo(1)["datLoc"] + 100
    data = victim.read_bytes()[:cut]
    victim.unlink()  # a hard link: the original stays whole
    victim.write_bytes(data)
    record = json.loads((entry / "task.json").read_text())
    from processing.fileio import file_sha256

    record["outputs"][victim.name] = file_sha256(victim)
    (entry / "task.json").unlink()
    (entry / "task.json").write_text(json.dumps(record))
    proc = hlsp(
        "package",
        str(engine_run["manifest"]),
        "--workdir",
        str(tmp_path / "work"),
        "--cache",
        str(cache),
        "--releases",
        str(tmp_path / "rel"),
        check_code=1,
    )
    assert "nothing was published" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "rel" / "synth-jwst" / "v1p0").exists()
    assert not list((tmp_path / "rel" / "synth-jwst").glob(".staging*"))


# -- breaking a good release ----------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    """Remove a test's release copy, whatever modes or links a break left in it."""
    for dirpath, _dirs, _files in os.walk(path):
        if not os.path.islink(dirpath):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)


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


def stale_manifest_entry(rel):
    m = next(rel.glob("*_manifest.csv"))
    rows = list(csv.reader(m.read_text().splitlines()))
    rows.append(
        [
            "synth1/hlsp_synth-jwst_jwst_miri_synth1_f560w_v1p0_img.fits",
            "10",
            "0" * 64,
            "img",
            "synth1",
            "miri",
            "f560w",
            "v1p0",
        ]
    )
    m.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return "f560w", "not in the release"


def _edit_data(path: Path, ext: str, edit) -> None:
    with fits.open(path, mode="update") as hdul:
        edit(hdul[ext].data)
        for h in hdul:
            h.add_checksum()


def sci_all_nan(rel):
    p = _img(rel)
    _edit_data(p, "SCI", lambda d: d.fill(np.nan))
    return p.name, "SCI is all NaN"


def wrong_dtype(rel):
    p = _img(rel)
    with fits.open(p) as hdul:
        hdus = [
            fits.ImageHDU(h.data.astype(np.float32), header=h.header, name="DQ") if h.name == "DQ" else h for h in hdul
        ]
        fits.HDUList(hdus).writeto(p.with_suffix(".tmp"), checksum=True)
    p.with_suffix(".tmp").replace(p)
    return p.name, "DQ is float32, expected uint32"


def missing_readme(rel):
    readme = next(rel.glob("*_readme.txt"))
    readme.unlink()
    return readme.name, "the release's readme file (.txt) is missing"


def symlink_file(rel):
    (rel / "synth1" / "hlsp_synth-jwst_jwst_nircam_synth1_f444w_v1p0_img.fits").symlink_to("/etc/passwd")
    return "f444w_v1p0_img.fits", "is a symbolic link (to /etc/passwd)"


def symlink_folder(rel):
    (rel / "synth2" / "more").symlink_to("/")
    return "synth2/more", "is a symbolic link (to /)"


def not_world_readable(rel):
    p = _img(rel)
    p.chmod(0o600)
    return p.name, "others cannot read it"


def err_all_nan(rel):
    p = _img(rel)
    _edit_data(p, "ERR", lambda d: d.fill(np.nan))
    return p.name, "ERR is all NaN"


def err_negative(rel):
    p = _img(rel)
    _edit_data(p, "ERR", lambda d: d.__setitem__((slice(10, 12), slice(10, 12)), -1.0))
    return p.name, "negative value(s)"


def wrong_folder(rel):
    p = _img(rel)
    p.rename(rel / "synth2" / p.name)
    return p.name, "is a product of target 'synth1' but sits in folder 'synth2'"


def _drop_csv_rows(rel, needle):
    m = next(rel.glob("*_manifest.csv"))
    m.write_text("".join(row for row in m.read_text().splitlines(keepends=True) if needle not in row))


def missing_band(rel):
    p = _img(rel, "miri_synth2_f770w")
    p.unlink()
    _drop_csv_rows(rel, p.name)
    return p.name, "synth2 F770W is in the release manifest"


def band_not_in_manifest(rel):
    p = _img(rel, "miri_synth2_f770w")
    extra = p.with_name(p.name.replace("f770w", "f1000w"))
    shutil.copy(p, extra)
    return extra.name, "band 'F1000W' is not in the release manifest"


def release_manifest_missing(rel):
    next(rel.glob("*_manifest.toml")).unlink()
    return ".", "expected one *_manifest.toml"


def date_in_future(rel):
    p = _img(rel)
    with fits.open(p, mode="update") as hdul:
        h = hdul[0].header
        h["MJD-END"] = h["MJD-END"] + 36500
        for hh in hdul:
            hh.add_checksum()
    return p.name, "is in the future"


def empty_readme(rel):
    r = next(rel.glob("*_readme.txt"))
    r.write_text("")
    return r.name, "the README is empty"


def preview_not_an_image(rel):
    p = next(rel.rglob("*_img-preview.png"))
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    return p.name, "is not a readable image"


def duplicate_manifest_row(rel):
    m = next(rel.glob("*_manifest.csv"))
    lines = m.read_text().splitlines(keepends=True)
    m.write_text("".join(lines + [lines[1]]))
    return lines[1].split(",")[0], "listed 2 times"


def _rewrite_tweakback(rel, edit):
    """Rewrite the smallest tweakback tarball of the release with ``edit(members) -> members``
    (``members``: list of (TarInfo, bytes)), as a new file (the original may be hard-linked)."""
    import io
    import tarfile

    p = min(rel.rglob("*_tweakback.tar.gz"), key=lambda q: q.stat().st_size)
    with tarfile.open(p) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]
    tmp = p.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        for info, data in edit(members):
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    tmp.replace(p)
    return p


def tweakback_member_escapes(rel):
    import tarfile

    def edit(members):
        info, data = members[0]
        evil = tarfile.TarInfo("../../evil_cal.fits")
        evil.size = len(data)
        return members + [(evil, data)]

    return _rewrite_tweakback(rel, edit).name, "is not a file in the archive's one folder"


def tweakback_member_not_fits(rel):
    def edit(members):
        info, _ = members[0]
        info.size = 12
        return [(info, b"not a FITS!\n")] + members[1:]

    return _rewrite_tweakback(rel, edit).name, "not a readable FITS file"


def tweakback_member_is_a_link(rel):
    import tarfile

    def edit(members):
        link = tarfile.TarInfo(members[0][0].name.rsplit("/", 1)[0] + "/passwd_cal.fits")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return members + [(link, b"")]

    return _rewrite_tweakback(rel, edit).name, "is not a regular file"


def tweakback_member_without_astrometry(rel):
    def edit(members):
        info, data = members[0]
        hdul = fits.HDUList.fromstring(data)
        del hdul[0].header["HLSPDAST"]
        import io

        buf = io.BytesIO()
        hdul.writeto(buf)
        info.size = len(buf.getvalue())
        return [(info, buf.getvalue())] + members[1:]

    return _rewrite_tweakback(rel, edit).name, "no HLSPDAST"


def tweakback_truncated(rel):
    p = min(rel.rglob("*_tweakback.tar.gz"), key=lambda q: q.stat().st_size)
    data = p.read_bytes()
    p.unlink()  # a new file: the original may be hard-linked
    p.write_bytes(data[: len(data) // 2])
    return p.name, "tweakback tarball"


def tweakback_missing(rel):
    p = min(rel.rglob("*_tweakback.tar.gz"), key=lambda q: q.stat().st_size)
    p.unlink()
    _drop_csv_rows(rel, p.name)
    return p.name, "its tweakback file is missing"


def _header_break(name, ext, key, value=None, problem="", delete=False):
    """A break that edits one header card of a mosaic (checksums updated), and what must be reported."""

    def brk(rel):
        p = _img(rel)
        _edit_header(p, ext, key, value, delete=delete)
        return p.name, problem

    brk.__name__ = name
    return brk


HEADER_BREAKS = [
    _header_break("missing_keyword", 0, "DOI", delete=True, problem="DOI missing"),
    _header_break("wrong_bunit", "SCI", "BUNIT", "DN/s", "SCI BUNIT is 'DN/s'"),
    _header_break("broken_wcs", "ERR", "CTYPE1", "PIXEL", "ERR: WCS does not parse"),
    _header_break("equinox_with_icrs", "SCI", "EQUINOX", 2000.0, "EQUINOX set"),
    _header_break("version_mismatch_in_header", 0, "HLSPVER", "v2p0", "HLSPVER 'v2p0' differs"),
    _header_break("bad_date", 0, "DATE-BEG", "25/02/2023", "DATE-BEG '25/02/2023' is not ISO-8601"),
    _header_break(
        "simulated_flag_removed",
        0,
        "SIMULATD",
        delete=True,
        problem="SIMULATD missing or F in a release made from simulated data",
    ),
    _header_break(
        "header_of_another_target",
        0,
        "HLSPTARG",
        "SYNTH 2",
        "HLSPTARG 'SYNTH 2' is not the manifest's designation 'synth1'",
    ),
    _header_break("coordinates_of_another_target", 0, "RA_TARG", 150.60, "off the"),
    _header_break("filter_disagrees", 0, "FILTER", "F300M", "FILTER 'F300M' differs"),
    # MAST's HLSP keywords (issue 23): every unit, the equinox of RA_TARG/DEC_TARG, the PSF size
    _header_break("var_poisson_in_dn_per_s", "VAR_POISSON", "BUNIT", "DN/s", "VAR_POISSON BUNIT is 'DN/s'"),
    _header_break("dq_with_a_unit", "DQ", "BUNIT", "MJy/sr", "DQ has BUNIT 'MJy/sr': it has no unit"),
    _header_break("equinox_missing", 0, "EQUINOX", delete=True, problem="EQUINOX missing"),
    _header_break("psfsize_missing", 0, "PSFSIZE", delete=True, problem="PSFSIZE missing"),
    _header_break("sci_filter_disagrees", "SCI", "FILTER", "F300M", "SCI: FILTER 'F300M' (primary: 'F200W')"),
    _header_break("err_wcs_one_degree_off", "ERR", "CRVAL2", 3.2, "ERR: its WCS puts pixels"),
    _header_break("instrument_disagrees", 0, "INSTRUME", "MIRI", "INSTRUME 'MIRI' differs"),
    # a level less certain than the release accepts (issue 26): synth1 F200W is accepted to 30
    _header_break("level_uncertainty_over_the_limit", 0, "HLSPDBE", 45.0, "F200W: level uncertainty 45 MJy/sr"),
    _header_break("level_uncertainty_unknown", 0, "HLSPDBE", -1.0, "F200W: level uncertainty unknown"),
    _header_break("made_from_another_manifest", 0, "HLSPMANI", "0" * 64, "is not the release manifest's content hash"),
    _header_break(
        "dates_disagree",
        0,
        "DATE-END",
        "2023-02-24T00:00:00.000",
        "DATE-END 2023-02-24T00:00:00.000 disagrees with MJD-END",
    ),
]


def _convolved(rel: Path, fwhm: str = "0p90") -> Path:
    return next(rel.rglob(f"*nircam_synth1_f200w_*_img-gauss{fwhm}as.fits"))


def convolved_beam_disagrees_with_name(rel):
    p = _convolved(rel)
    _edit_header(p, "SCI", "BMAJ", 1.0 / 3600)
    return p.name, "SCI: BMAJ 0.000277777"


def convolved_beam_missing(rel):
    p = _convolved(rel, "0p85")
    _edit_header(p, 0, "BMIN", delete=True)
    return p.name, "PRIMARY: BMIN missing"


def convolved_missing(rel):
    p = _convolved(rel, "1p00")
    p.unlink()
    _drop_csv_rows(rel, p.name)
    return p.name, "its img-gauss1p00as file is missing"


def psf_matching_table_missing(rel):
    p = next(rel.rglob("*synth2_multi_*_psf-matching.ecsv"))
    p.unlink()
    _drop_csv_rows(rel, p.name)
    return p.name, "the psf-matching table is missing"


def inputs_empty(rel):
    p = _img(rel)
    with fits.open(p, mode="update") as hdul:
        empty = fits.Column(name="EXPOSURE", format="37A", array=np.array([], dtype="S37"))
        hdul["INPUTS"] = fits.BinTableHDU.from_columns([empty], name="INPUTS")
        for h in hdul:
            h.add_checksum()
    return p.name, "INPUTS lists no exposure"


def gzip_bytes_named_fits(rel):
    import gzip

    p = _img(rel)
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(gzip.compress(data))
    return p.name, "is gzip-compressed data, not a FITS file"


def target_table_lost_a_band(rel):
    from astropy.table import Table

    p = next(rel.rglob("*synth1_multi_*_anchoring.ecsv"))
    t = Table.read(p, format="ascii.ecsv")
    t = t[[str(b) != "F770W" for b in t["band"]]]  # the rows gone, the metadata kept
    p.unlink()
    t.write(p, format="ascii.ecsv")
    return p.name, "rows for F200W, but the release manifest's bands are F200W, F770W"


def convolved_psfsize_wrong(rel):
    p = _convolved(rel, "0p85")
    _edit_header(p, 0, "PSFSIZE", 0.9)
    return p.name, "PSFSIZE 0.9 is not the beam the name says (0.85)"


BREAKS = HEADER_BREAKS + [
    inputs_empty,
    gzip_bytes_named_fits,
    target_table_lost_a_band,
    convolved_psfsize_wrong,
    convolved_beam_disagrees_with_name,
    convolved_beam_missing,
    convolved_missing,
    psf_matching_table_missing,
    symlink_file,
    symlink_folder,
    not_world_readable,
    err_all_nan,
    err_negative,
    wrong_folder,
    missing_band,
    band_not_in_manifest,
    release_manifest_missing,
    date_in_future,
    empty_readme,
    preview_not_an_image,
    duplicate_manifest_row,
    flip_byte,
    flip_header_byte,
    wrong_name,
    extra_file,
    missing_extension,
    truncated_file,
    stale_manifest_entry,
    sci_all_nan,
    wrong_dtype,
    missing_readme,
    tweakback_member_escapes,
    tweakback_member_not_fits,
    tweakback_member_is_a_link,
    tweakback_member_without_astrometry,
    tweakback_truncated,
    tweakback_missing,
]


def _copy_release(src: Path, dest: Path) -> None:
    """A copy to break; the tweakback tarballs are hard-linked (large, and a break replaces
    them rather than editing them in place)."""

    def copy(a, b):
        if str(a).endswith("_tweakback.tar.gz"):
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dest, copy_function=copy, symlinks=True)


@pytest.mark.parametrize("brk", BREAKS, ids=[b.__name__ for b in BREAKS])
def test_validate_catches_a_broken_release(demo_release, tmp_path, brk):
    rel = tmp_path / "v1p0"
    _copy_release(demo_release, rel)
    try:
        fname, problem = brk(rel)
        proc = hlsp("validate", str(rel), "--junit", str(tmp_path / "j.xml"), check_code=1)
    finally:
        # ~200 MB per copy and ~50 cases: keep the disk footprint of `make test` small
        _remove_tree(rel)
    text = " ".join(proc.stdout.split())
    junit = (tmp_path / "j.xml").read_text()
    assert 'failures="0"' not in junit.split("\n")[1]
    # the file and the problem are named (in the JUnit report, which does not wrap)
    assert any(fname in line and problem in line for line in junit.split("<testcase")), (fname, problem, text[:2000])


def test_a_target_table_must_explain_the_bands_it_refers_to():
    """A band anchored against another band needs that band's rows: a table that lost them
    (the metadata kept) leaves the first band's anchoring unexplained."""
    from astropy.table import Table

    from release.products.tables import check_table
    from release.validate import Report

    def findings(rows):
        t = Table(rows=rows, names=("band", "role", "against"))
        t.meta["bands"] = {"F770W": {"anchored_to": ""}, "F1000W": {"anchored_to": "F770W"}}
        path = Path(tempfile.mkdtemp()) / "t.ecsv"
        t.write(path, format="ascii.ecsv")
        report = Report(path.parent)
        check_table(report, "t.ecsv", path, {"F770W", "F1000W"}, "anchoring")
        return [f.message for f in report.failures]

    assert findings([("F770W", "external", "irac4"), ("F1000W", "internal", "F770W")]) == []
    (problem,) = findings([("F1000W", "internal", "F770W")])
    assert "rows for F1000W, but the release manifest's bands are F1000W, F770W" in problem
    assert "rows of the band(s) others refer to are missing: F1000W (refers to F770W)" in problem
