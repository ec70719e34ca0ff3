"""``img-gauss0p85as`` (one per resolution of ``products.convolved_fwhm_arcsec``): the mosaic
PSF-matched to a circular Gaussian, SCI and ERR with the beam in BMAJ/BMIN/BPA, from the
PSF-matching stage's variants of the mosaic (its ``img-{variant}`` products)."""

from __future__ import annotations

import re
from pathlib import Path

from release.products import ProductType
from release.products.fitsimage import UNITS, add_image_keywords, check_images, check_layout

LAYOUT = ("PRIMARY", "SCI", "ERR")
BEAM_KEYWORDS = ("BMAJ", "BMIN", "BPA")
#: Relative tolerance of the beam keywords against the FWHM in the product name.
BEAM_TOLERANCE = 1e-6
PSFSIZE_COMMENT = "[arcsec] Gaussian beam FWHM"


def convolved_product(fwhm_arcsec: float) -> str:
    """Product type of a PSF-matched mosaic: 0.85 -> ``img-gauss0p85as`` (the PSF-matching
    stage's variant of the mosaic)."""
    from processing.psf_matching.stage import variant_name

    return "img-" + variant_name(fwhm_arcsec)


def convolved_fwhm(product: str) -> float | None:
    """The Gaussian FWHM (arcsec) a PSF-matched product type names: ``img-gauss0p85as`` ->
    0.85; None for any other product type."""
    m = re.fullmatch(r"img-gauss(\d+)p(\d+)as", product)
    return float(f"{m.group(1)}.{m.group(2)}") if m else None


def write_variant_img(src_path: Path, dest: Path, lm, target: str, band: str, simulated: bool, product: str) -> None:
    """A released PSF-matched mosaic: the release's primary header plus the beam; SCI and ERR
    with their WCS, units, beam and image keywords (read through a memory map: written as it
    is read)."""
    from astropy.io import fits

    from processing.fileio import atomic_path
    from release.products.headers import primary_header, set_card

    with fits.open(src_path, memmap=True) as src:
        h = primary_header(src[0].header, lm, target, band, simulated, convolved_fwhm(product), PSFSIZE_COMMENT)
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
            add_image_keywords(hdu.header, h)
            hdus.append(hdu)
        with atomic_path(dest) as tmp:
            fits.HDUList(hdus).writeto(tmp, overwrite=True, checksum=True)


def write(ctx, unit) -> None:
    (entry,) = ctx.entries_for(unit)
    write_variant_img(entry.path, ctx.dest(unit), ctx.lm, unit.target, unit.band, ctx.simulated, unit.product)


def beam_problem(hdul, names: list[str], fwhm_arcsec: float) -> str | None:
    """BMAJ = BMIN = ``fwhm_arcsec`` (degrees) and BPA in the primary header, SCI and ERR."""
    problems = []
    want = fwhm_arcsec / 3600.0
    for ext in ("PRIMARY", "SCI", "ERR"):
        if ext not in names:
            continue
        h = hdul[ext].header
        missing = [k for k in BEAM_KEYWORDS if k not in h]
        if missing:
            problems.append(f"{ext}: {', '.join(missing)} missing")
            continue
        for k in ("BMAJ", "BMIN"):
            if not isinstance(h[k], (int, float)) or abs(h[k] / want - 1.0) > BEAM_TOLERANCE:
                problems.append(
                    f'{ext}: {k} {h[k]!r} deg is not the {fwhm_arcsec:g}" ({want:.8g} deg) the file name says'
                )
    return "; ".join(problems) or None


def check(ctx, rel: str, path: Path, hdul) -> None:
    """The layout, the beam and PSFSIZE against the resolution the name says, every image
    extension (release/products/fitsimage.py)."""
    from release.naming import parse_name

    names = [h.name for h in hdul]
    fwhm = convolved_fwhm(parse_name(path.name).product)
    check_layout(ctx.report, rel, names, LAYOUT)
    ctx.report.add(rel, "beam keywords", beam_problem(hdul, names, fwhm))
    size = hdul[0].header.get("PSFSIZE")
    ctx.report.add(
        rel,
        "PSFSIZE is the beam",
        None
        if isinstance(size, (int, float)) and abs(size - fwhm) <= 1e-4
        else f"PSFSIZE {size} is not the beam the name says ({fwhm})",
    )
    check_images(ctx.report, rel, hdul, names, hdul[0].header, ctx.primary_ok.get(rel, False))


README = """\
*_img-gauss*as.fits: per target and band, the mosaic convolved to a circular Gaussian PSF
  ({% for f in m.products.convolved_fwhm_arcsec %}{{ "%.2f" | format(f) }}"{{ ", " if not loop.last else "" }}\
{% endfor %} FWHM: {{ files | map(attribute="product") | unique | join(", ") }}), so that every
  band has the same resolution. Kernels from each band's PSF by the method of Aniano et al.
  (2011): circularised PSFs, the ratio of their Fourier transforms under a low-pass filter,
  normalised to sum 1. Extensions: SCI (MJy/sr) and ERR (MJy/sr, propagated as
  sqrt(K^2 * ERR^2): exact for independent pixels; the drizzled mosaics' noise is correlated,
  so the real noise of a smoothed image is larger). DQ, the variances, CON and WHT describe
  the unconvolved pixels and are not included. A pixel is kept where at least half of the
  kernel's weight fell on valid data (holes smaller than the kernel are filled, the edge of
  the map does not move). Keywords: BMAJ, BMIN (beam FWHM, degrees), BPA (0), PSFSIZE (beam
  FWHM, arcsec); HLSPDPB (beam FWHM, arcsec), HLSPDPW and HLSPDPD (the kernel's negative
  weight W- and residual D, Aniano et al. 2011 eqs. 21 and 20), HLSPDPF (the PSF file the
  kernel was made from).
"""

CONVOLVED = ProductType("img-{variant}", "fits", "band", write, checks=(check,), readme=README, source="img-{variant}")
