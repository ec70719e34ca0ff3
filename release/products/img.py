"""``img``: the mosaic of one target in one band, with the extensions of the paper's Table 3
(SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE, VAR_FLAT, CON, WHT) and INPUTS (the exposures it was
made from), from the level-3 mosaic the run provides (its ``img`` product)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from release.products import ProductType
from release.products.fitsimage import UNITS, add_image_keywords, celestial_header, check_images, check_layout

EXTENSIONS = ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "CON", "WHT")
LAYOUT = ("PRIMARY", *EXTENSIONS, "INPUTS")
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
PSFSIZE_COMMENT = "[arcsec] PSF FWHM, diffraction limit"


def psf_size_arcsec(band: str) -> float:
    """PSFSIZE of a mosaic: the band's diffraction-limited FWHM, 1.03 lambda / D (within 6% of
    the paper's Table 2 from F200W to F2100W; processing/common/psf.py)."""
    from processing.common.psf import psf_fwhm_arcsec

    return psf_fwhm_arcsec(band)


def write_img(i2d: Path, dest: Path, lm, target: str, band: str, simulated: bool) -> None:
    """The released mosaic from a jwst i2d (written atomically, with checksums)."""
    from astropy.io import fits

    from processing.fileio import atomic_path
    from release.products.headers import primary_header

    # memmap=False: astropy cannot memory-map the scaled (BZERO) DQ extension
    with fits.open(i2d, memmap=False) as src:
        h0 = primary_header(src[0].header, lm, target, band, simulated, psf_size_arcsec(band), PSFSIZE_COMMENT)
        prim = fits.PrimaryHDU(header=h0)
        wcs_header = celestial_header(src["SCI"].header)
        hdus = [prim]
        for ext in EXTENSIONS:
            data = src[ext].data
            if ext == "DQ":
                data = data.astype(np.uint32)
            hdu = fits.ImageHDU(data, name=ext)
            hdu.header.extend(wcs_header if ext != "CON" else _con_wcs(wcs_header), update=True)
            if UNITS[ext]:
                hdu.header["BUNIT"] = (UNITS[ext], EXT_COMMENT[ext])
            else:
                hdu.header["COMMENT"] = EXT_COMMENT[ext]
            add_image_keywords(hdu.header, prim.header)
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


def write(ctx, unit) -> None:
    (entry,) = ctx.entries_for(unit)
    write_img(entry.path, ctx.dest(unit), ctx.lm, unit.target, unit.band, ctx.simulated)


def check(ctx, rel: str, path: Path, hdul) -> None:
    """The layout, every image extension (release/products/fitsimage.py), and INPUTS: not
    empty, and CON drawing on no more inputs than it lists."""
    names = [h.name for h in hdul]
    check_layout(ctx.report, rel, names, LAYOUT)
    check_images(ctx.report, rel, hdul, names, hdul[0].header, ctx.primary_ok.get(rel, False))
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
        ctx.report.add(rel, "INPUTS", problem)


README = """\
*_img.fits: the mosaic of one target in one band, a multi-extension FITS file:

  EXTNAME      content
  SCI          surface brightness, MJy/sr
  ERR          1-sigma uncertainty from VAR_POISSON and VAR_RNOISE, MJy/sr
  DQ           data quality flags (uint32, jwst bit definitions, table below)
  VAR_POISSON  variance from Poisson noise, (MJy/sr)**2
  VAR_RNOISE   variance from read noise, (MJy/sr)**2
  VAR_FLAT     variance from the flat-field uncertainty, (MJy/sr)**2
  CON          context image: bit masks of the inputs contributing to each pixel
  WHT          relative weight
  INPUTS       the archive exposures the mosaic was made from

Every image extension carries the celestial WCS (ICRS). Every HDU carries CHECKSUM and
DATASUM. Provenance keywords: HLSPMANI (the identity of the release manifest), HLSPTASK,
HLSPCODE, HLSPJWST, HLSPCRDS, HLSPVMIS.

"""

IMG = ProductType("img", "fits", "band", write, checks=(check,), readme=README, source="img")
