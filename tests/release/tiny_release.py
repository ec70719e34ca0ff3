"""A tiny release (one target, one band, 24x24-pixel arrays) packaged by this version's own
packaging, for the compatibility test in tests/release/test_identity.py.

The release in tests/data/tiny-release/ was written by :func:`write` and is kept in git: a
later version must still validate it (a release is published once and validated for years; a
setting added to the manifest schema with a default must not change the identity of the
manifest it was made from). Regenerate it only when the release format changes on purpose
(a new required keyword, a new product), and say so in the commit:

    python -m tests.release.tiny_release tests/data/tiny-release
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

TARGET, RA, DEC, BAND = "tiny1", 150.1, 2.2, "F770W"
#: the tiny release's manifest (what the release team wrote)
MANIFEST = f"""schema_version = 1
[release]
project = "synth-tiny"
title = "A tiny synthetic release (compatibility test)"
version = "1.0.0"
doi = "10.17909/synthetic-tiny"
lead = "T. Est"
pi = "T. Est"
[release.contact]
name = "T. Est"
email = "test@example.org"
[pins]
jwst = "3.0.0"
crds_context = "jwst_9001.pmap"
[program]
proposal_ids = [9001]
instruments = ["miri"]
bands = ["{BAND}"]
[program.data]
source = "local"
path = "raw"
[targets.{TARGET}]
ra = {RA}
dec = {DEC}
[products]
convolved_fwhm_arcsec = [1.0]
tweakback = false
"""
N = 24
PIXEL_DEG = 0.11 / 3600


def _wcs_header():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA, DEC]
    w.wcs.crpix = [(N + 1) / 2, (N + 1) / 2]
    w.wcs.cdelt = [-PIXEL_DEG, PIXEL_DEG]
    w.wcs.radesys = "ICRS"
    return w.to_header()


def _mosaic(path: Path) -> Path:
    """A level-3 mosaic as jwst's image3 lays it out (the extensions packaging reads)."""
    from astropy.io import fits

    yy, xx = np.indices((N, N)) - (N - 1) / 2
    sci = (1.0 + 5.0 * np.exp(-(xx**2 + yy**2) / 40.0)).astype(np.float32)
    h0 = fits.Header()
    h0.update(
        TELESCOP="JWST",
        INSTRUME="MIRI",
        DETECTOR="MIRIMAGE",
        FILTER=BAND,
        EXPSTART=60000.0,
        EXPEND=60000.01,
        EFFEXPTM=888.0,
        PROGRAM="09001",
        HLSPTASK="0" * 64,
        HLSPCODE="tiny",
        HLSPJWST="3.0.0",
        HLSPCRDS="jwst_9001.pmap",
        HLSPVMIS=False,
    )
    wcs = _wcs_header()
    hdus = [fits.PrimaryHDU(header=h0)]
    arrays = {
        "SCI": sci,
        "ERR": np.full((N, N), 0.05, np.float32),
        "DQ": np.zeros((N, N), np.uint32),
        "VAR_POISSON": np.full((N, N), 0.002, np.float32),
        "VAR_RNOISE": np.full((N, N), 0.0005, np.float32),
        "VAR_FLAT": np.zeros((N, N), np.float32),
        "CON": np.full((1, N, N), 0b11, np.int32),
        "WHT": np.ones((N, N), np.float32),
    }
    for name, data in arrays.items():
        hdus.append(fits.ImageHDU(data, header=wcs.copy(), name=name))
    files = np.array(["jw09001001001_02101_00001_mirimage_cal.fits", "jw09001001001_02101_00002_mirimage_cal.fits"])
    hdus.append(fits.BinTableHDU.from_columns([fits.Column(name="FILENAME", format="60A", array=files)], name="HDRTAB"))
    fits.HDUList(hdus).writeto(path)
    return path


def _convolved(path: Path, fwhm: float) -> Path:
    """A PSF-matched mosaic as the psf_matching stage writes it (PRIMARY with the beam, SCI, ERR)."""
    from astropy.io import fits

    with fits.open(_mosaic(path.with_name("src_i2d.fits"))) as src:
        h0 = src[0].header.copy()
        for k in ("BMAJ", "BMIN"):
            h0[k] = (fwhm / 3600, "[deg] beam FWHM")
        h0["BPA"] = (0.0, "[deg] beam position angle")
        hdus = [fits.PrimaryHDU(header=h0)]
        for ext in ("SCI", "ERR"):
            h = src[ext].header.copy()
            for k in ("BMAJ", "BMIN", "BPA"):
                h[k] = h0[k]
            hdus.append(fits.ImageHDU(src[ext].data, header=h, name=ext))
        fits.HDUList(hdus).writeto(path)
    return path


def _table(path: Path, rows: list[dict], meta: dict) -> Path:
    from astropy.table import Table

    t = Table(rows=rows)
    t.meta.update(meta)
    t.write(path, format="ascii.ecsv")
    return path


def write(root: Path, registry=None, stages=None, extra=None) -> Path:
    """Package the tiny release under ``root`` (``root/manifest.toml`` and
    ``root/releases/synth-tiny/v1p0``); return the release folder. ``registry``/``stages``:
    product types and stage registry to package with (default: this system's); ``extra``:
    ``{product type: function(folder) -> file}`` more run products of the target and band."""
    from processing.executor import ProductEntry
    from release.manifest import load_manifest
    from release.package import package_release

    root = Path(root)
    work = root / "inputs"
    work.mkdir(parents=True)
    (root / "manifest.toml").write_text(MANIFEST)
    lm = load_manifest(root / "manifest.toml")

    def entry(product, path, kind=""):
        return ProductEntry(product, TARGET, BAND, "miri", f"x/{TARGET}/{BAND}", "0" * 64, path, kind)

    products = [
        entry("img", _mosaic(work / f"{TARGET}_{BAND.lower()}_i2d.fits")),
        entry("img-gauss1p00as", _convolved(work / f"{TARGET}_{BAND.lower()}_gauss1p00as.fits", 1.0), "img-{variant}"),
        entry(
            "anchoring",
            _table(
                work / "anchoring.ecsv",
                [{"role": "external", "against": "irac4", "used": True, "offset": -0.1}],
                {"target": TARGET, "band": BAND, "anchored_to": "", "offset_mjysr": -0.1},
            ),
        ),
        entry(
            "psf-matching",
            _table(
                work / "psf_matching.ecsv",
                [{"product": "gauss1p00as", "fwhm_arcsec": 1.0, "w_minus": 0.0}],
                {"target": TARGET, "band": BAND},
            ),
        ),
    ]
    for product, make in (extra or {}).items():
        products.append(entry(product, make(work)))
    return package_release(lm, products, root / "releases", simulated=True, registry=registry, stages=stages)


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
