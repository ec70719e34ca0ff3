"""Image extensions of a release FITS image (the mosaic and its PSF-matched variants): their
units, the celestial WCS every one carries, the keywords MAST wants on images, and the checks
of all of these (one grid for every extension, the target on the image, a sound ERR)."""

from __future__ import annotations

import numpy as np

#: Units of the image extensions (none for DQ flags, CON bit masks and WHT relative weights).
UNITS = {
    "SCI": "MJy/sr",
    "ERR": "MJy/sr",
    "VAR_POISSON": "(MJy/sr)**2",
    "VAR_RNOISE": "(MJy/sr)**2",
    "VAR_FLAT": "(MJy/sr)**2",
    "DQ": None,
    "CON": None,
    "WHT": None,
}
DTYPES = {
    "SCI": "float32",
    "ERR": "float32",
    "DQ": "uint32",
    "VAR_POISSON": "float32",
    "VAR_RNOISE": "float32",
    "VAR_FLAT": "float32",
    "CON": "int32",
    "WHT": "float32",
}
#: How far an extension's WCS may put a pixel from where SCI's puts it (mas).
WCS_AGREEMENT_MAS = 1.0
#: How far outside the image the target centre may lie, as a fraction of the image's size (a
#: galaxy centre is on its mosaic; a file of another target is degrees away).
FOOTPRINT_MARGIN = 0.5
#: WCS keywords of the jwst mosaic that describe times, not the sky (kept in the primary only).
TIME_KEYWORDS = ("MJDREF", "MJD-OBS", "DATE-OBS", "DATEREF", "MJD-AVG", "DATE-AVG", "MJD-BEG", "MJD-END")
TIME_KEYWORDS += ("DATE-BEG", "DATE-END")


def celestial_header(src_sci_header):
    """The celestial WCS of a mosaic's SCI header as a release writes it: ICRS, no EQUINOX, no
    time keywords."""
    from astropy.wcs import WCS

    h = WCS(src_sci_header).to_header()
    h["RADESYS"] = "ICRS"
    h.remove("EQUINOX", ignore_missing=True)
    for k in TIME_KEYWORDS:
        h.remove(k, ignore_missing=True, remove_all=True)
    return h


def add_image_keywords(hdu_header, primary) -> None:
    """FILTER, RA_TARG, DEC_TARG on an image extension, as the primary header has them."""
    from release.products.headers import image_keywords

    for key, value, comment in image_keywords(primary):
        hdu_header[key] = (value, comment)


def check_layout(report, rel: str, names: list[str], layout: tuple[str, ...]) -> None:
    report.add(
        rel, "extension layout", None if tuple(names) == layout else f"extensions are {names}, expected {list(layout)}"
    )


def check_images(report, rel: str, hdul, names: list[str], h0, primary_ok: bool) -> None:
    """Every image extension: dtype, a celestial ICRS WCS without EQUINOX that puts every pixel
    within :data:`WCS_AGREEMENT_MAS` of where SCI's does, its unit, FILTER/RA_TARG/DEC_TARG as
    in the primary; SCI with data and the target on it; ERR finite somewhere and never
    negative."""
    from astropy.wcs import WCS

    images = [e for e in names if e in UNITS]
    for ext in images:
        h = hdul[ext]
        got = str(np.dtype(h.data.dtype).newbyteorder("=").name) if h.data is not None else "none"
        report.add(rel, f"{ext} dtype", None if got == DTYPES[ext] else f"{ext} is {got}, expected {DTYPES[ext]}")
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
        unit, want = h.header.get("BUNIT"), UNITS[ext]
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
            f"{k} {h.header.get(k)!r} (primary: {h0.get(k)!r})"
            for k in ("FILTER", "RA_TARG", "DEC_TARG")
            if k in h0 and h.header.get(k) != h0.get(k)
        ]
        report.add(rel, f"{ext} image keywords", f"{ext}: {', '.join(wrong)}" if wrong else None)
    _check_one_grid(report, rel, hdul, images)
    if "SCI" in names and hdul["SCI"].data is not None:
        report.add(rel, "SCI has data", None if np.isfinite(hdul["SCI"].data).any() else "SCI is all NaN")
        if primary_ok:
            report.add(rel, "target on the image", footprint_problem(hdul["SCI"], h0))
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


def _check_one_grid(report, rel: str, hdul, images: list[str]) -> None:
    from astropy.wcs import WCS

    if "SCI" not in images:
        return
    try:
        ref = WCS(hdul["SCI"].header, naxis=2).celestial
        ny, nx = hdul["SCI"].shape[-2:]
        xs = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2.0])
        ys = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2.0])
        ra0, dec0 = ref.pixel_to_world_values(xs, ys)
    except Exception:  # noqa: BLE001 - SCI's own WCS problem is reported by its WCS check
        return
    for ext in images:
        if ext == "SCI":
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


def footprint_problem(sci, h0) -> str | None:
    """RA_TARG/DEC_TARG must fall on the image (within a margin): a file of another target does not."""
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
