"""Facts about the JWST imagers that validation and processing need.

The filter lists are the imaging filters of each instrument's wheel (JDox, NIRCam and MIRI
filter pages); coronagraphic-only elements are left out because this system cuts imaging
releases.
"""

from __future__ import annotations

import difflib

INSTRUMENTS = ("nircam", "miri")

FILTERS: dict[str, tuple[str, ...]] = {
    "nircam": (
        # short wavelength channel (0.6-2.3 um)
        "F070W",
        "F090W",
        "F115W",
        "F140M",
        "F150W",
        "F150W2",
        "F162M",
        "F164N",
        "F182M",
        "F187N",
        "F200W",
        "F210M",
        "F212N",
        # long wavelength channel (2.4-5.0 um)
        "F250M",
        "F277W",
        "F300M",
        "F322W2",
        "F323N",
        "F335M",
        "F356W",
        "F360M",
        "F405N",
        "F410M",
        "F430M",
        "F444W",
        "F460M",
        "F466N",
        "F470N",
        "F480M",
    ),
    "miri": (
        "F560W",
        "F770W",
        "F1000W",
        "F1130W",
        "F1280W",
        "F1500W",
        "F1800W",
        "F2100W",
        "F2550W",
    ),
}

#: NIRCam short-wavelength filters; the rest of NIRCam's list is long-wavelength.
NIRCAM_SHORT = frozenset(FILTERS["nircam"][:13])

#: Native mosaic pixel scales in arcsec (paper section 3.7).
PIXEL_SCALE_ARCSEC = {"nircam_short": 0.031, "nircam_long": 0.063, "miri": 0.11}


def instrument_of(band: str) -> str:
    """Instrument (``nircam`` or ``miri``) that carries ``band`` (e.g. ``F335M``)."""
    band = band.upper()
    for inst, names in FILTERS.items():
        if band in names:
            return inst
    raise KeyError(band)


def channel_of(band: str) -> str:
    """``nircam_short``, ``nircam_long`` or ``miri``: which pixel scale a band's mosaic has."""
    inst = instrument_of(band)
    if inst == "nircam":
        return "nircam_short" if band.upper() in NIRCAM_SHORT else "nircam_long"
    return inst


def all_filters() -> list[str]:
    return [b for names in FILTERS.values() for b in names]


def did_you_mean(word: str, choices, n: int = 1) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
