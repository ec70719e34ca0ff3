"""The external astrometric reference catalogue: which file, reading it, the cuts, and the
measured sources of JWST images in the same tangent plane.

The reference is a local file the manifest names per target (``targets.<name>.astrometry_catalog``):
any table astropy reads (ECSV, FITS, CSV) with RA and DEC columns in degrees; DOLPHOT-like
quality columns, where present, take the paper's cuts (processing/astrometry/match.py
PAPER_CUTS; the stage parameters set them per target and band). Catalogue services (Gaia by
name) need the network and are refused by the manifest check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from processing.astrometry.match import detect_sources, select_catalog, to_tangent
from processing.common.psf import psf_fwhm_arcsec
from processing.errors import BadInput


def catalog_files(lm, unit: dict) -> list[Path]:
    """The reference catalogue the manifest names for the unit's target (none: [])."""
    t = lm.manifest.targets.get(unit["target"])
    if t is None or not t.astrometry_catalog:
        return []
    path = lm.resolve_path(t.astrometry_catalog)
    if not path.is_file():
        raise BadInput(f"{lm.path.name}: targets.{unit['target']}.astrometry_catalog: {path} is not a file")
    return [path]


def cuts_from(params: dict) -> dict[str, tuple]:
    """The catalogue cuts of a stage's parameters: column -> (low, high), None for open ends."""
    return {
        "SNR_F814W": (params.get("snr_min"), None),
        "CROWD_F814W": (None, params.get("crowd_max")),
        "FLAG_F814W": (None, params.get("flag_max")),
        "OBJTYPE": (params.get("objtype"), params.get("objtype")),
        "SHARP_F814W": (params.get("sharp_min"), params.get("sharp_max")),
        "ROUND_F814W": (params.get("round_min"), params.get("round_max")),
        "COLOR_F555W_F814W": (params.get("color_min"), params.get("color_max")),
        "MAG_F814W": (params.get("mag_min"), params.get("mag_max")),
    }


def read_catalog(path: Path, cuts: dict[str, tuple]) -> dict:
    """Read a reference catalogue and apply the cuts.

    Returns
    -------
    dict
        ``ra``, ``dec`` (deg, the sources passing the cuts), ``n_all``, ``applied``, ``missing``
        (cuts applied / skipped for want of a column), ``file`` (name).

    Raises
    ------
    BadInput
        Unreadable file or no RA/DEC columns, naming the file.
    """
    from astropy.table import Table

    path = Path(path)
    try:
        t = Table.read(path)
    except Exception as exc:  # noqa: BLE001 - any reader error is the file's problem, named
        raise BadInput(f"{path}: the astrometric reference catalogue cannot be read ({exc})") from exc
    names = {c.upper(): c for c in t.colnames}
    if "RA" not in names or "DEC" not in names:
        raise BadInput(
            f"{path}: the astrometric reference catalogue has no RA and DEC columns (has {', '.join(t.colnames[:8])})"
        )
    ra, dec = np.asarray(t[names["RA"]], float), np.asarray(t[names["DEC"]], float)
    active = {k: v for k, v in cuts.items() if v[0] is not None or v[1] is not None}
    keep, applied, missing = select_catalog(
        {c: np.asarray(t[c]) for c in t.colnames if t[c].ndim == 1 and np.asarray(t[c]).dtype.kind in "biuf"}, active
    )
    keep &= np.isfinite(ra) & np.isfinite(dec)
    return {
        "ra": ra[keep],
        "dec": dec[keep],
        "n_all": len(t),
        "applied": applied,
        "missing": missing,
        "file": path.name,
    }


def reference_in(cat: dict, ra0: float, dec0: float, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Catalogue positions within ``radius_arcsec`` of ``(ra0, dec0)`` in its tangent plane:
    ``(xy (n, 2) arcsec, index into the catalogue)``."""
    x, y = to_tangent(cat["ra"], cat["dec"], ra0, dec0)
    sel = np.nonzero(np.hypot(x, y) <= radius_arcsec)[0]
    return np.column_stack([x[sel], y[sel]]), sel


def image_sources(
    sci: np.ndarray, err: np.ndarray, bad: np.ndarray, pixel_to_sky, band: str, pixel_scale: float, params: dict
) -> dict:
    """Point sources of one image with their sky positions.

    Parameters
    ----------
    sci, err : ndarray, shape (ny, nx)
        Image and error (MJy/sr).
    bad : ndarray of bool, shape (ny, nx)
    pixel_to_sky : callable
        ``(x, y) -> (ra, dec)`` (0-based pixels, degrees), e.g. a gwcs.
    band : str
        For the PSF FWHM (unless ``params['fwhm_arcsec']`` > 0).
    pixel_scale : float
        Arcsec per pixel.
    params : dict
        ``nsigma``, ``fwhm_arcsec``, ``max_sources``.

    Returns
    -------
    dict
        ``x``, ``y``, ``ra``, ``dec``, ``snr`` arrays.
    """
    fwhm = params.get("fwhm_arcsec") or psf_fwhm_arcsec(band)
    found = detect_sources(
        sci,
        err,
        bad,
        fwhm / pixel_scale,
        nsigma=params.get("nsigma", 5.0),
        max_sources=params.get("max_sources") or None,
    )
    if len(found["x"]):
        ra, dec = pixel_to_sky(found["x"], found["y"])
        found["ra"], found["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    else:
        found["ra"], found["dec"] = np.zeros(0), np.zeros(0)
    return found
