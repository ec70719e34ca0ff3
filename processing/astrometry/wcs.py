"""Applying an astrometric solution to the WCS of JWST files.

A solution is ``T(v) = R(theta) v + shift`` in the tangent plane (arcsec; x east, y north)
about a point ``(ra0, dec0)`` (processing/astrometry/match.py). Two kinds of files:

- per-exposure cal files (distorted gwcs): the correction goes into the gwcs as tweakreg
  itself puts it (tweakwcs' JWSTWCSCorrector, a tangent-plane correction in V2V3), with the
  reference tangent plane given as a north-up TAN WCS at ``(ra0, dec0)``; the FITS SIP
  approximation in the header and S_REGION are refreshed as tweakreg does;
- level-3 mosaics (a TAN gwcs): exact, as an affine map of the pixel grid prepended to the
  gwcs, and the FITS WCS keywords (CRPIX, PC) rewritten to the same transformation.
"""

from __future__ import annotations

import numpy as np

from processing.astrometry.match import from_tangent, rotation, to_tangent, transfer


def tangent_wcs(ra0: float, dec0: float):
    """A north-up TAN WCS at ``(ra0, dec0)`` whose pixel axes are (east, north) in arcsec,
    offset so that pixel (0, 0) is the tangent point: the reference tangent plane of a
    solution, for tweakwcs."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.cdelt = [1.0 / 3600.0, 1.0 / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.pixel_shape = (2, 2)
    return w


def correct_exposure(model, theta: float, shift, ra0: float, dec0: float) -> None:
    """Apply a solution to a cal ImageModel in place (its gwcs, SIP header, S_REGION).

    Parameters
    ----------
    model : jwst.datamodels.ImageModel
        A level-2 exposure with an assigned WCS.
    theta : float
        Rotation, radians (east towards north).
    shift : sequence of float, shape (2,)
        Shift (east, north), arcsec, about ``(ra0, dec0)``.
    ra0, dec0 : float
        Tangent point of the solution, degrees.
    """
    from jwst.assign_wcs.util import update_fits_wcsinfo, update_s_region_imaging
    from tweakwcs.correctors import FITSWCSCorrector, JWSTWCSCorrector

    info = model.meta.wcsinfo
    corr = JWSTWCSCorrector(model.meta.wcs, {"v2_ref": info.v2_ref, "v3_ref": info.v3_ref, "roll_ref": info.roll_ref})
    ref = FITSWCSCorrector(tangent_wcs(ra0, dec0))
    corr.set_correction(matrix=rotation(theta), shift=np.asarray(shift, float), ref_tpwcs=ref)
    model.meta.wcs = corr.wcs
    update_s_region_imaging(model)
    try:
        update_fits_wcsinfo(model, degree=6, max_pix_error=0.01, npoints=16)
    except (ValueError, RuntimeError, np.linalg.LinAlgError):  # jwst's own fallback: no SIP, the gwcs stands
        pass


def correct_mosaic(model, theta: float, shift, ra0: float, dec0: float) -> None:
    """Apply a solution to a level-3 mosaic (TAN projection) in place, exactly.

    With ``CD`` the mosaic's linear matrix (deg/pixel) about its CRVAL and the solution moved
    to that tangent point (:func:`processing.astrometry.match.transfer`), the corrected WCS is
    the same projection with ``CD' = R CD`` and ``CRPIX' = CRPIX - CD'^-1 shift``; the gwcs gets
    the equivalent pixel-space affine map before its own transform.
    """
    from astropy.modeling.models import AffineTransformation2D, Shift

    info = model.meta.wcsinfo
    crval = (float(info.crval1), float(info.crval2))
    crpix = np.array([float(info.crpix1), float(info.crpix2)])  # 1-based
    pc = np.array([[info.pc1_1, info.pc1_2], [info.pc2_1, info.pc2_2]], float)
    cdelt = np.array([float(info.cdelt1), float(info.cdelt2)])
    cd = pc * cdelt[:, None]
    # the solution about the mosaic's tangent point (to second order in small angles)
    here = np.array(to_tangent(crval[0], crval[1], ra0, dec0), float)
    d_deg = transfer(theta, shift, (0.0, 0.0), here) / 3600.0
    r = rotation(theta)
    new_cd = r @ cd
    new_crpix = crpix - np.linalg.solve(new_cd, d_deg)
    # gwcs: pixel p (0-based) -> the old pixel with the same corrected sky position
    c0 = crpix - 1.0
    m = np.linalg.solve(cd, new_cd)  # CD^-1 R CD
    t = np.linalg.solve(cd, d_deg)  # CD^-1 d
    affine = (
        (Shift(-c0[0]) & Shift(-c0[1]))
        | AffineTransformation2D(matrix=m, translation=t)
        | (Shift(c0[0]) & Shift(c0[1]))
    )
    affine.name = "astrometry_correction"
    wcs = model.meta.wcs
    wcs.insert_transform(wcs.input_frame, affine, after=True)
    model.meta.wcs = wcs
    new_pc = new_cd / cdelt[:, None]
    info.crpix1, info.crpix2 = float(new_crpix[0]), float(new_crpix[1])
    info.pc1_1, info.pc1_2, info.pc2_1, info.pc2_2 = (float(v) for v in new_pc.ravel())
    _update_s_region(model)


def _update_s_region(model) -> None:
    ny, nx = model.data.shape
    xs, ys = np.array([0, nx - 1, nx - 1, 0], float), np.array([0, 0, ny - 1, ny - 1], float)
    ra, dec = model.meta.wcs(xs, ys)
    model.meta.wcsinfo.s_region = "POLYGON ICRS " + " ".join(f"{a:.9f} {d:.9f}" for a, d in zip(ra, dec))


def apply_to_sky(ra, dec, theta: float, shift, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Where a solution moves sky positions ``(ra, dec)`` (deg): the reference to check the
    corrected WCS against."""
    x, y = to_tangent(ra, dec, ra0, dec0)
    v = np.column_stack([np.ravel(x), np.ravel(y)]) @ rotation(theta).T + np.asarray(shift, float)
    r, d = from_tangent(v[:, 0], v[:, 1], ra0, dec0)
    return r.reshape(np.shape(ra)), d.reshape(np.shape(dec))
