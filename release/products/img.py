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


def level_problem(header, band: str, products) -> str | None:
    """Why a mosaic's level may not be released under the manifest's ``products`` settings, or
    None: its recorded level uncertainty (HLSPDBE, MJy/sr, from background anchoring) is unknown
    or above the band's limit (:meth:`release.manifest.Products.level_limit`). A mosaic no
    anchoring stage touched (no HLSPDBE) makes no claim and is not judged."""
    if "HLSPDBE" not in header:
        return None
    unc, basis, status = header["HLSPDBE"], header.get("HLSPDBL", "?"), header.get("HLSPDBST", "?")
    limit = products.level_limit(band)
    if not isinstance(unc, (int, float)) or unc < 0:
        return f"{band}: level uncertainty unknown (HLSPDBE {unc}, {status})"
    if unc > limit:
        key = "products.max_level_uncertainty_" + (
            f"by_band.{band.upper()}" if band.upper() in products.max_level_uncertainty_by_band else "mjysr"
        )
        return (
            f"{band}: level uncertainty {unc:.4g} MJy/sr ({basis}: {status}) exceeds {key} = {limit:g}: anchor the "
            f"band, or accept it knowingly in products.max_level_uncertainty_by_band.{band.upper()}"
        )
    return None


def write(ctx, unit) -> None:
    from astropy.io import fits

    from processing.errors import WorkFailed

    (entry,) = ctx.entries_for(unit)
    problem = level_problem(fits.getheader(entry.path, 0), unit.band, ctx.m.products)
    if problem:
        raise WorkFailed(f"{unit.target} {problem}")
    write_img(entry.path, ctx.dest(unit), ctx.lm, unit.target, unit.band, ctx.simulated)


def levels(m, files: list[dict]) -> dict:
    """The README's table of each mosaic's level (what background anchoring did, MJy/sr)."""
    from astropy.io import fits

    rows = []
    for f in sorted(files, key=lambda f: (f["target"], f["filter"])):
        h = fits.getheader(f["path"], 0)
        if "HLSPDBE" not in h:
            continue
        band = f["filter"].upper()
        line = (
            f"{f['target']:<10s}  {band:<7s}  {h.get('HLSPDBL', '?'):<11s}  {h.get('HLSPDBO', float('nan')):+10.4f}  "
            f"{h['HLSPDBE']:11.4f}  {m.products.level_limit(band):<8g}  {h.get('HLSPDBST', '')}"
        )
        rows.append({"target": f["target"], "band": band, "uncertainty": h["HLSPDBE"], "line": line})
    return {"levels": rows}


def check(ctx, rel: str, path: Path, hdul) -> None:
    """The layout, every image extension (release/products/fitsimage.py), and INPUTS: not
    empty, and CON drawing on no more inputs than it lists."""
    names = [h.name for h in hdul]
    check_layout(ctx.report, rel, names, LAYOUT)
    check_images(ctx.report, rel, hdul, names, hdul[0].header, ctx.primary_ok.get(rel, False))
    if ctx.manifest is not None and "FILTER" in hdul[0].header:
        ctx.report.add(
            rel, "level uncertainty", level_problem(hdul[0].header, hdul[0].header["FILTER"], ctx.manifest.products)
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
{% if levels %}

The level of each mosaic (MJy/sr). "anchored": the offset to a wide-field image (directly, or
through the instrument's reference band) was subtracted and the uncertainty is the fit's.
"calibrated": the band could not be anchored; it is released at its calibrated level (level
matching's relative offsets only: its group constant, which where the galaxy fills the frames
is galaxy emission, was added back, offset < 0) and the uncertainty is a bound: the sky left
in it is between 0 and that value. "internal": fitted to a reference band that is itself at
its calibrated level. A band is released only within the manifest's limit
(products.max_level_uncertainty_mjysr, or the band's own in max_level_uncertainty_by_band);
the primary header of each mosaic carries the same (HLSPDBO, HLSPDBE, HLSPDBL, HLSPDBST).

  target      band     level basis  offset      uncertainty  limit     status
{% for r in levels %}
  {{ r.line }}
{% endfor %}
{% endif %}

"""

IMG = ProductType("img", "fits", "band", write, checks=(check,), readme=README, source="img", readme_context=levels)
