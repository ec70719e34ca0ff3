"""Comparisons of mosaics with their counterparts (release/compare.py): the numbers on arrays
with a known shift, scale and offset; `hlsp validate --against` failing a shifted and a
rescaled mosaic, naming band and quantity; `hlsp compare` on two files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from release import compare as C
from tests.conftest import hlsp


def _sky(n=300, seed=2):
    """Blobs of several sizes on a smooth galaxy, some noise."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = np.zeros((n, n))
    img[rng.integers(10, n - 10, 80), rng.integers(10, n - 10, 80)] = rng.uniform(50, 500, 80)
    img = gaussian_filter(img, 2.0)
    yy, xx = np.indices((n, n)) - n / 2
    return img + 5 * np.exp(-np.hypot(xx, yy) / 60) + rng.normal(0, 0.01, (n, n))


def test_the_numbers_recover_a_known_shift_scale_and_offset():
    from scipy.ndimage import shift

    b = _sky()
    a = shift(b, (1.5, -2.25), order=3, mode="nearest") * 1.05 + 0.3
    a[:20] = np.nan  # no data in part of A
    r = C.compare_arrays(a, b)
    assert r["shift_px"] == pytest.approx((1.5, -2.25), abs=0.1)
    assert r["flux_ratio"] == pytest.approx(1.05, abs=0.01)
    assert r["background"] == pytest.approx(0.3 + 0.05 * np.median(b[b <= np.percentile(b, 20)]), abs=0.05)
    same = C.compare_arrays(b, b)
    assert same["shift_px"] == (0.0, 0.0) and same["flux_ratio"] == 1.0 and same["median"] == 0.0 and same["mad"] == 0.0
    with pytest.raises(ValueError, match="overlap on 0 pixels"):
        C.compare_arrays(np.full((50, 50), np.nan), b[:50, :50])


def test_limits_name_target_band_quantity_and_value():
    from release.manifest import Comparisons

    comp = Comparisons.model_validate(
        {
            "thresholds": {"max_shift_mas": 20},
            "overrides": {"F2100W": {"max_background_change_mjysr": 0.5}, "ngc3627/F200W": {"max_shift_mas": 500}},
        }
    )
    assert C.limits_for(comp, "ngc0628", "F2100W") == {
        "max_shift_mas": 20,
        "max_flux_ratio_change": 0.02,
        "max_background_change_mjysr": 0.5,
    }
    assert C.limits_for(comp, "ngc3627", "F200W")["max_shift_mas"] == 500
    assert C.limits_for(comp, "ngc0628", "F200W")["max_shift_mas"] == 20
    n = C.Numbers("ngc0628", "F200W", "img", "a", "b", 1000, 0.0, 0.01, 0.2, 1.1, 30.0, 40.0, 50.0)
    problems = C.check(n, C.limits_for(comp, "ngc0628", "F200W"))
    assert problems == [
        "ngc0628 F200W: shifted by 50.0 mas (east +30.0, north +40.0) > max_shift_mas 20",
        "ngc0628 F200W: flux ratio 1.1000 differs from 1 by more than max_flux_ratio_change 0.02",
        "ngc0628 F200W: background changed by +0.2000 MJy/sr > max_background_change_mjysr 0.1",
    ]
    # the shift is allowed where the release means to change the astrometry
    assert C.check(n, C.limits_for(comp, "ngc3627", "F200W"))[0].startswith("ngc0628 F200W: flux ratio")


def _edit_sci(path: Path, fn) -> None:
    with fits.open(path, mode="update") as h:
        h["SCI"].data = fn(h["SCI"].data)
        for x in h:
            x.add_checksum()


def test_validate_against_fails_a_shifted_and_a_rescaled_mosaic(demo_release, tmp_path):
    new = tmp_path / "v1p0"
    shutil.copytree(demo_release, new, ignore=shutil.ignore_patterns("*_tweakback.tar.gz", "*_img-gauss*"))
    shifted = next(new.rglob("*miri_synth1_f770w_*_img.fits"))
    rescaled = next(new.rglob("*nircam_synth2_f200w_*_img.fits"))
    _edit_sci(shifted, lambda d: np.roll(d, 3, axis=1))  # 3 pixels of 0.11": 330 mas
    _edit_sci(rescaled, lambda d: d * 1.1)
    hlsp(
        "validate",
        str(new),
        "--against",
        str(demo_release),
        "--no-fitsverify",
        "--junit",
        str(tmp_path / "j.xml"),
        "--figures",
        str(tmp_path / "fig"),
        check_code=1,
    )
    junit = (tmp_path / "j.xml").read_text()
    lines = [line for line in junit.split("<testcase") if "against v1p0" in line]
    bad = [line for line in lines if "<failure" in line]
    assert len(bad) == 2, bad  # the test program: 2 targets x 2 bands
    assert any(
        shifted.name in line and "synth1 F770W: shifted by 3" in line and "max_shift_mas 30" in line for line in bad
    )
    assert any(rescaled.name in line and "synth2 F200W: flux ratio 1.10" in line for line in bad)
    assert len(lines) == 4  # every mosaic compared, 2 within the limits
    assert (
        len(list((tmp_path / "fig").glob("*_comparison.png"))) == 4 and (tmp_path / "fig" / "comparison.ecsv").exists()
    )
    # a limit that allows the move (what this release is meant to change) passes that band
    assert "shifted" not in C.check(
        C.compare_files(C.Pair("synth1", "F770W", "img", shifted, next(demo_release.rglob(shifted.name))))[0],
        {"max_shift_mas": 400.0},
    )


def test_compare_two_files(demo_release, tmp_path):
    img = next(demo_release.rglob("*miri_synth2_f770w_*_img.fits"))
    proc = hlsp("compare", str(img), str(img), "--outdir", str(tmp_path), check_code=0)
    assert "synth2" in proc.stdout and "F770W" in proc.stdout and "1.0000" in proc.stdout
    assert (tmp_path / "synth2_f770w_img_comparison.png").exists()
    proc = hlsp("compare", str(img), str(tmp_path), check_code=2)
    assert "compare two folders or two files" in proc.stderr


def test_a_release_pairs_with_level_3_mosaics_named_as_mast_names_them(demo_release, effects_default, tmp_path):
    """MAST's level-3 mosaics (here the jwst defaults on the same program, as `hlsp simulate
    --mast-mosaics` writes them: <target>_<band>_i2d.fits) pair with the release's mosaics."""
    import os

    mast = tmp_path / "mast"
    mast.mkdir()
    for band, path in effects_default["mosaics"]["synth1"].items():
        os.symlink(path, mast / f"synth1_{str(band).lower()}_i2d.fits")
    pairs, alone = C.pair_products(demo_release, mast)
    assert sorted((p.target, p.band) for p in pairs) == [("synth1", "F200W"), ("synth1", "F770W")]
    assert sorted(alone) == ["synth2 F200W img", "synth2 F770W img"]
    for p in pairs:
        n, a, b = C.compare_files(p)
        assert n.pixels > 10_000 and np.isfinite([n.median, n.mad, n.background, n.flux_ratio, n.shift_mas]).all()


def test_what_is_not_comparable_is_refused_naming_why(demo_release, tmp_path):
    """--against takes an earlier release of the same project (or level-3 mosaics sharing a
    band); `hlsp compare` takes two FITS files of one band, or two folders; a figure folder is
    never inside a release. Each refusal names the reason."""
    import gzip
    import tomllib

    import tomli_w

    from tests.conftest import linked_copy

    def release_with(**release) -> Path:
        rel = linked_copy(demo_release, tmp_path / f"rel-{len(list(tmp_path.iterdir()))}" / "v1p0")
        toml = next(rel.glob("*_manifest.toml"))
        data = tomllib.loads(toml.read_text())
        data["release"].update(release)
        toml.unlink()  # a hard link: the shared release stays as it is
        toml.write_text(tomli_w.dumps(data))
        return rel

    def validate_against(previous) -> str:
        proc = hlsp(
            "validate", str(demo_release), "--no-fitsverify", "--no-strict", "--against", str(previous), check_code=3
        )
        return " ".join(proc.stdout.split())

    assert "is a release of other-survey, not of synth-jwst" in validate_against(release_with(project="other-survey"))
    assert "version 2.0.0, later than this release's 1.0.0" in validate_against(release_with(version="2.0.0"))
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("nothing here")
    assert "neither a release nor a folder of level-3 mosaics" in validate_against(unrelated)

    readme = next(demo_release.glob("*_readme.txt"))
    png = next(demo_release.rglob("*_img-preview.png"))
    f200w = next(demo_release.rglob("*synth1_f200w_*_img.fits"))
    f770w = next(demo_release.rglob("*synth1_f770w_*_img.fits"))
    zipped = tmp_path / f200w.name
    zipped.write_bytes(gzip.compress(f200w.read_bytes()))
    for a, b, why in (
        (readme, readme, "is not a FITS file"),
        (png, f200w, "is not a FITS file"),
        (zipped, f200w, "is gzip-compressed data, not a FITS file"),
        (f200w, f770w, "is F200W and"),
    ):
        proc = hlsp("compare", str(a), str(b), check_code=2)
        text = " ".join(proc.stderr.split())
        assert why in text and "Traceback" not in text, text
    proc = hlsp("compare", str(f200w), str(f200w), "--outdir", str(demo_release / "figures"), check_code=2)
    assert "is a release folder" in " ".join(proc.stderr.split())
    assert not (demo_release / "figures").exists()
