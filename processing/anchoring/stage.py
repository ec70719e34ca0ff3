"""Background anchoring of the mosaics to wide-field images (the paper's section 3.9, Figure 8):
the file adapter and the stage declaration.

Per target and band, after absolute astrometry:

1. **External.** The instrument's reference band (NIRCam F300M, MIRI F770W) is brought to the
   beam of a wide-field image (block averages, then the remaining Gaussian), reprojected onto
   it, and fitted against it (processing/anchoring/fit.py): bins of the JWST intensity over a
   faint range, the median of the wide-field image per bin, a clipped line; where the line
   crosses zero is the JWST band's offset. The wide-field image's own zero is first measured
   from its sky far from the galaxy. Images are tried in the manifest's order
   (``targets.<t>.anchoring.nircam``: IRAC1 then WISE1; ``.miri``: IRAC4 then WISE3); one that
   does not overlap, has too few pixels in range or no linear relation is skipped, with the
   reason recorded.
   An image that names bands (``bands = ["F2100W"]``) anchors those bands directly, tried
   first; ``reference_band`` may rank several reference bands, tried in turn.
2. **Internal.** Every other band is fitted the same way against the anchored reference band,
   both at a common resolution (``internal_fwhm_arcsec``), through a quadratic where the
   relation curves significantly (``internal_model``). Each band's task recomputes the
   reference band's external fit (deterministic, a few seconds): no extra stage, the same
   numbers in every table.
3. **Applied** to the mosaic and to every exposure of the tweakback tarball (the same constant:
   the released files agree), recorded in their headers (HLSPDBO offset subtracted, HLSPDBE its
   uncertainty, HLSPDBR what it was anchored to, HLSPDBS the slope, HLSPDBST status), in
   ``<product>_anchoring.ecsv`` (one row: band, reference, slope, intercept, offset, uncertainty
   and every image tried) and in ``<product>_anchoring.png`` (the fit, as the paper's Figure 8).

Nothing could be solved (no wide-field image in the manifest, none usable, no internal
relation): the band is released at its level as calibrated, never at one known to be wrong.
Level matching's group constant (HLSPDLK, the lowest sigma-clipped level of the tiles: where
the galaxy fills every frame, galaxy emission) is added back to the mosaic and to each
tweakback exposure (its own constant), so only level matching's relative offsets remain; the
sky left in it is at least 0 and at most that constant (the constant is the sky plus the
faintest emission), which is recorded as the level's uncertainty (HLSPDBE: a bound, with
HLSPDBL ``calibrated``). A band fitted against a reference band that is not anchored is fitted
against the reference's calibrated level, and inherits its bound times the band ratio
(``internal only``). ``require_anchor = true`` makes a band that is not anchored a failure
naming target, band and the reasons; the release's ``products.max_level_uncertainty_mjysr``
decides whether such a band may be released (release/products/img.py). A wide-field image the manifest names that is
missing is refused when the graph is built; one that does not open fails the task, naming it.
"""

from __future__ import annotations

import logging
import math
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from processing.anchoring.fit import (
    AnchorFailed,
    Fit,
    SkyLevel,
    binned_fit,
    block_factor,
    block_mean,
    fit_range,
    sky_level,
    smooth_to,
)
from processing.anchoring.parameters import INSTRUMENT_DEFAULTS, AnchoringParameters
from processing.errors import BadInput, WorkFailed
from processing.stages import Input, ModelParameters, Product, Stage

log = logging.getLogger(__name__)


def external_files(lm, unit: dict) -> list:
    """The wide-field images the manifest names for the unit's target and instrument, in order,
    with what the manifest says about each (survey, beam, the bands it anchors directly) and the
    target centre: the reference band's images (no ``bands``) and those listing the unit's band."""
    t = lm.manifest.targets.get(unit["target"])
    if t is None:
        return []
    out = []
    for i, image in enumerate(getattr(t.anchoring, unit["instrument"], []) or []):
        bands = [str(b).upper() for b in image.bands]
        if bands and unit["band"] not in bands:
            continue  # another band's direct reference: not an input of this task
        path = lm.resolve_path(image.file)
        if not path.is_file():
            raise BadInput(
                f"{lm.path.name}: targets.{unit['target']}.anchoring.{unit['instrument']}[{i}].file: {path} is not a "
                "file"
            )
        out.append(
            (
                path,
                {
                    "survey": image.survey,
                    "fwhm_arcsec": float(image.fwhm_arcsec),
                    "target_ra": float(t.ra),
                    "target_dec": float(t.dec),
                    **({"bands": bands} if bands else {}),
                },
            )
        )
    return out


# -- reading ---------------------------------------------------------------------------------
@dataclass
class Mosaic:
    """A level-3 mosaic brought to a coarse resolution: ``image`` (MJy/sr, NaN off the data) on
    ``wcs`` (block grid), ``pixel_arcsec`` its pixel, ``fwhm_arcsec`` its resolution."""

    image: np.ndarray
    wcs: object
    pixel_arcsec: float
    fwhm_arcsec: float


def psf_fwhm(band: str) -> float:
    """The band's PSF FWHM, arcsec (the astrometry stages' table: 1.03 lambda / D)."""
    from processing.common.psf import psf_fwhm_arcsec

    return float(psf_fwhm_arcsec(band))


def read_mosaic(path: Path, band: str, fwhm_out: float) -> Mosaic:
    """A mosaic's SCI (good pixels only: WHT > 0, DQ not DO_NOT_USE), block-averaged for
    ``fwhm_out`` and smoothed to it; read through a memory map in row strips."""
    from astropy.io import fits
    from astropy.wcs import WCS

    # unscaled: DQ is stored as int32 with BZERO = 2**31 (a memory map needs raw values; the
    # DO_NOT_USE bit, 1, is the same in both)
    with fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
        sci = hdul["SCI"]
        w = WCS(sci.header)
        pixel = float(np.sqrt(abs(np.linalg.det(w.celestial.pixel_scale_matrix)))) * 3600.0
        f = block_factor(pixel, fwhm_out)

        class _Good:  # rows of SCI with the bad pixels blanked, read strip by strip
            shape = sci.shape

            def __getitem__(self, key):
                data = np.array(sci.data[key], dtype=np.float64)
                if "WHT" in hdul:
                    data[~(np.asarray(hdul["WHT"].data[key]) > 0)] = np.nan
                if "DQ" in hdul:
                    data[(np.asarray(hdul["DQ"].data[key]) & 1) > 0] = np.nan
                return data

        blocks = block_mean(_Good(), f)
    wb = w.celestial.slice((slice(None, None, f), slice(None, None, f)))
    return Mosaic(smooth_to(blocks, pixel * f, psf_fwhm(band), fwhm_out), wb, pixel * f, fwhm_out)


def read_external(path: Path, target: str, band: str):
    """A wide-field image (2-D, MJy/sr) and its celestial WCS; a file that does not open is a
    failure naming it."""
    from astropy.io import fits
    from astropy.wcs import WCS

    try:
        with fits.open(path) as hdul:
            hdu = next((h for h in hdul if h.data is not None and h.data.ndim >= 2), None)
            if hdu is None:
                raise ValueError("no image in the file")
            data = np.asarray(hdu.data, dtype=np.float64)
            while data.ndim > 2:
                data = data[0]
            w = WCS(hdu.header).celestial
            if not w.has_celestial:
                raise ValueError("no celestial WCS")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise WorkFailed(
            f"anchoring {target} {band}: the wide-field image {path} does not open ({type(exc).__name__}: {exc})"
        ) from None
    return data, w


def radius_map(w, shape, ra: float, dec: float) -> np.ndarray:
    """Distance (arcsec) of every pixel of an image from (ra, dec)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky = w.pixel_to_world(xx.ravel(), yy.ravel())
    centre = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    return sky.separation(centre).arcsec.reshape(shape)


def _reproject(img: np.ndarray, w_in, w_out, shape_out) -> np.ndarray:
    from reproject import reproject_interp

    out, foot = reproject_interp((img, w_in), w_out, shape_out=shape_out, order="bilinear")
    out[foot <= 0] = np.nan
    return out


def _overlap_cutout(m: Mosaic, w_ext, shape_ext, pad_px: int):
    """The part of a wide-field grid the mosaic covers (padded): (slices, sub-WCS, shape)."""
    ny, nx = m.image.shape
    corners = m.wcs.pixel_to_world(np.array([0, nx - 1, nx - 1, 0.0]), np.array([0, 0, ny - 1, ny - 1.0]))
    x, y = w_ext.world_to_pixel(corners)
    x0, x1 = max(int(np.floor(np.min(x))) - pad_px, 0), min(int(np.ceil(np.max(x))) + pad_px + 1, shape_ext[1])
    y0, y1 = max(int(np.floor(np.min(y))) - pad_px, 0), min(int(np.ceil(np.max(y))) + pad_px + 1, shape_ext[0])
    if x0 >= x1 or y0 >= y1:
        return None
    sl = (slice(y0, y1), slice(x0, x1))
    return sl, w_ext.slice(sl), (y1 - y0, x1 - x0)


def _blocks(shape, pixel_arcsec: float, fwhm_arcsec: float, beams: float) -> np.ndarray:
    b = max(1, int(round(beams * fwhm_arcsec / pixel_arcsec)))
    yy, xx = np.indices(shape)
    return (yy // b) * (shape[1] // b + 1) + xx // b


# -- the fits --------------------------------------------------------------------------------
@dataclass
class Attempt:
    """One image tried for a band: what it was, and the fit or why not."""

    against: str
    file: str = ""
    fit: Fit | None = None
    sky: SkyLevel | None = None
    reason: str = ""
    internal: bool = False  # against the anchored reference band (x), this band (y)
    band: str = ""  # the JWST band fitted (x of an external fit, y of an internal one)
    x: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    y: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def ok(self) -> bool:
        return self.fit is not None and not self.reason


def _fit(x, y, blocks, p: AnchoringParameters, anchored: str) -> Fit:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < p.min_pixels_per_bin * p.min_bins:
        raise AnchorFailed(f"{int(ok.sum())} overlapping pixels (need {p.min_pixels_per_bin * p.min_bins})")
    lo, hi = fit_range(x[ok], p.range_min_mjysr, p.range_max_mjysr, tuple(p.range_percentiles))
    fit = binned_fit(
        x[ok],
        y[ok],
        lo,
        hi,
        p.n_bins,
        p.min_pixels_per_bin,
        p.min_bins,
        p.clip_sigma,
        p.clip_rounds,
        blocks=blocks[ok],
        n_bootstrap=p.n_bootstrap,
        anchored=anchored,
        extrapolation_fraction=p.extrapolation_fraction,
        model=p.internal_model if anchored == "y" else "line",
    )
    if not np.isfinite(fit.curvature_shift):
        raise AnchorFailed(f"not linear in [{lo:.3g}, {hi:.3g}] MJy/sr: the binned relation curves away from zero")
    if not fit.uncertainty <= p.max_uncertainty_mjysr:
        why = (
            f"not linear enough in [{lo:.3g}, {hi:.3g}] MJy/sr (a quadratic moves the offset by "
            f"{fit.curvature_shift:+.3f})"
            if abs(fit.curvature_shift) > 0.5 * fit.uncertainty
            else f"too uncertain in [{lo:.3g}, {hi:.3g}] MJy/sr"
        )
        raise AnchorFailed(
            f"{why}: offset {fit.offset:+.3f} ± {fit.uncertainty:.3f} MJy/sr, more than "
            f"max_uncertainty_mjysr = {p.max_uncertainty_mjysr}"
        )
    return fit


def external_fit(
    mosaic_path: Path, band: str, files: list, facts: list, p: AnchoringParameters, target: str
) -> list[Attempt]:
    """The reference band against each wide-field image in turn, until one gives an offset."""
    attempts = []
    for path, fact in zip(files, facts):
        survey = fact.get("survey", Path(path).stem)
        a = Attempt(against=survey, file=Path(path).name, band=band)
        attempts.append(a)
        data, w = read_external(Path(path), target, band)
        beam = float(fact["fwhm_arcsec"])
        fwhm = max(beam, p.external_fwhm_arcsec)
        try:
            m = read_mosaic(mosaic_path, band, fwhm)
            ext_pixel = float(np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix)))) * 3600.0
            cut = _overlap_cutout(m, w, data.shape, int(math.ceil(2 * fwhm / ext_pixel)))
            if cut is None:
                raise AnchorFailed(f"does not overlap the {band} mosaic")
            sl, wsub, shape = cut
            if p.reference_sky:
                a.sky = sky_level(
                    data,
                    radius_map(w, data.shape, fact["target_ra"], fact["target_dec"]),
                    p.sky_radius_arcsec,
                    beam,
                    ext_pixel,
                )
                data = data - a.sky.level
            ext = data[sl]
            if fwhm > beam:
                ext = smooth_to(ext, ext_pixel, beam, fwhm)
            jw = _reproject(m.image, m.wcs, wsub, shape)
            if not np.isfinite(jw).any():
                raise AnchorFailed(f"does not overlap the {band} mosaic")
            a.x, a.y = jw.ravel(), ext.ravel()
            a.fit = _fit(a.x, a.y, _blocks(shape, ext_pixel, fwhm, p.bootstrap_block_beams).ravel(), p, "x")
            if a.sky is not None:  # the sky level's error moves y's zero: offset error / slope
                a.fit.uncertainty = math.hypot(a.fit.uncertainty, a.sky.uncertainty / a.fit.slope)
            return attempts
        except AnchorFailed as exc:
            a.reason = str(exc)
            log.warning("anchoring %s %s against %s (%s): %s", target, band, survey, Path(path).name, exc)
    return attempts


def internal_fit(
    mosaic_path: Path, band: str, ref_path: Path, ref_band: str, ref_offset: float, p: AnchoringParameters
) -> Attempt:
    """A band against its (anchored) reference band at the common resolution."""
    a = Attempt(against=ref_band, file=Path(ref_path).name, internal=True, band=band)
    try:
        fwhm = max(p.internal_fwhm_arcsec, 1.5 * psf_fwhm(band), 1.5 * psf_fwhm(ref_band))
        ref = read_mosaic(ref_path, ref_band, fwhm)
        mine = read_mosaic(mosaic_path, band, fwhm)
        # binned by the anchored reference band (the less noisy), the band's medians: its
        # offset is the line's value where the reference is zero
        x = ref.image - ref_offset
        y = _reproject(mine.image, mine.wcs, ref.wcs, ref.image.shape)
        a.x, a.y = x.ravel(), y.ravel()
        a.fit = _fit(a.x, a.y, _blocks(x.shape, ref.pixel_arcsec, fwhm, p.bootstrap_block_beams).ravel(), p, "y")
    except AnchorFailed as exc:
        a.reason = str(exc)
        log.warning("anchoring %s against %s: %s", band, ref_band, exc)
    return a


# -- writing ---------------------------------------------------------------------------------
#: HLSPDBL: what the released level stands on
LEVEL_BASES = {
    "anchored": "anchored to a wide-field image (directly or through the reference band)",
    "internal": "fitted to the reference band at its calibrated level (reference not anchored)",
    "calibrated": "as calibrated: level matching's constant added back, the sky left in is a bound",
}


def header_record(offset: float, unc: float, anchored_to: str, slope: float, status: str, basis: str) -> dict:
    """The anchoring as primary-header keywords (HLSPD*: carried into the released img.fits)."""
    return {
        "HLSPDBO": (round(float(offset), 6), "anchoring: offset subtracted, MJy/sr"),
        "HLSPDBE": (round(float(unc), 6) if np.isfinite(unc) else -1.0, "anchoring: level uncertainty, MJy/sr"),
        "HLSPDBL": (basis, "anchoring: level basis (README)"),
        "HLSPDBR": (anchored_to[:40], "anchoring: anchored to"),
        "HLSPDBS": (round(float(slope), 6) if np.isfinite(slope) else -1.0, "anchoring: slope of the fit (band ratio)"),
        "HLSPDBST": (status[:45], "anchoring status"),
    }


def level_matching_constant(path: Path, header=None) -> float:
    """Level matching's group constant in a mosaic or exposure (HLSPDLK, MJy/sr; 0 where level
    matching subtracted none)."""
    from astropy.io import fits

    h = header if header is not None else fits.getheader(path, 0)
    value = h.get("HLSPDLK", 0.0)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def subtract(src: Path, out: Path, offset: float, record: dict) -> None:
    """``src`` with ``offset`` subtracted from its SCI (finite pixels), the record in its
    primary header, written to ``out`` (ERR, DQ and the rest unchanged)."""
    from astropy.io import fits

    from processing.fileio import atomic_path

    with fits.open(src) as hdul, atomic_path(out) as tmp:
        sci = hdul["SCI"]
        data = np.asarray(sci.data)
        sci.data = np.where(np.isfinite(data), data - np.asarray(offset, data.dtype), data).astype(data.dtype)
        for k, v in record.items():
            hdul[0].header[k] = v
        hdul.writeto(tmp, overwrite=True)


def rewrite_tweakback(
    src: Path, out: Path, offset: float, record: dict, scratch: Path, restore: bool = False
) -> list[str]:
    """The tweakback tarball with ``offset`` subtracted from every member (same names, same
    order, owner and times zeroed: the same input gives the same bytes); ``restore``: instead,
    each member's own level-matching constant is added back (HLSPDBO/HLSPDBE its own)."""
    from processing.fileio import remove_scratch, reproducible_tarball

    work = scratch / "tweakback-anchored"
    work.mkdir(parents=True, exist_ok=True)
    names = []
    with tarfile.open(src, "r:gz") as tin, reproducible_tarball(out) as add:
        for member in tin:  # one member at a time: the disk holds one exposure, not the tarball
            if not member.isfile():
                raise WorkFailed(f"{src}: member {member.name} is not a regular file")
            local = work / Path(member.name).name
            with tin.extractfile(member) as fh, open(local, "wb") as dst:
                while chunk := fh.read(1 << 22):
                    dst.write(chunk)
            anchored = work / ("a_" + local.name)
            mine, rec = offset, record
            if restore:
                constant = level_matching_constant(local)
                mine = -constant
                rec = {**record, "HLSPDBO": (round(mine, 6), record["HLSPDBO"][1])}
                rec["HLSPDBE"] = (round(abs(constant), 6), record["HLSPDBE"][1])
            subtract(local, anchored, mine, rec)
            add(member.name, anchored)
            local.unlink()
            anchored.unlink()
            names.append(member.name)
    remove_scratch(work)
    return names


def plot_fit(path: Path, attempts: list[Attempt], title: str) -> None:
    """The paper's Figure 8 for each fit used: pixels, binned medians (the kept ones filled),
    the line and its parameters; images not used are listed with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [a for a in attempts if a.fit is not None]
    n = max(1, len(shown))
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.6), constrained_layout=True, squeeze=False)
    for ax, a in zip(axes[0], shown or [None]):
        if a is None:
            ax.text(0.5, 0.5, "no fit", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        f = a.fit
        lo, hi = f.range
        span = hi - lo
        ok = np.isfinite(a.x) & np.isfinite(a.y) & (a.x > lo - span) & (a.x < hi + span)
        ax.plot(a.x[ok], a.y[ok], ".", color="0.6", ms=1.5, alpha=0.5, rasterized=True)
        b = f.bins
        ax.plot(b[f.used, 0], b[f.used, 1], "o", color="red", ms=5, label="binned medians (fitted)")
        ax.plot(b[~f.used, 0], b[~f.used, 1], "o", mfc="none", color="red", ms=5, label="clipped / too few pixels")
        xx = np.linspace(min(lo - span, 0.0) if a.internal else min(lo - span, f.offset), hi + span, 50)
        ax.plot(xx, f.slope * xx + f.intercept, "--", color="0.2", lw=1)
        if getattr(f, "curve", None):  # the curve that gave the offset (internal_model = "curve")
            ax.plot(xx, np.polyval(f.curve, xx), "-", color="tab:blue", lw=1, label="quadratic (offset)")
        ax.axhline(0, color="0.8", lw=0.6)
        ax.axvspan(lo, hi, color="gold", alpha=0.12, lw=0)
        if a.internal:
            ax.set_xlabel(f"{a.against} (anchored), MJy/sr")
            ax.set_ylabel(f"{a.band}, MJy/sr")
        else:
            ax.set_xlabel(f"{a.band} (before anchoring), MJy/sr")
            ax.set_ylabel(f"{a.against}{' (sky subtracted)' if a.sky else ''}, MJy/sr")
        ax.axvline(0, color="0.8", lw=0.6)
        ax.set_title(f"{a.band} against {a.against}{'' if a.ok else ' (not used)'}", fontsize=9)
        ax.text(
            0.03,
            0.97,
            f"slope {f.slope:.3f}\nintercept {f.intercept:+.4f}\noffset {f.offset:+.4f} ± {f.uncertainty:.4f} MJy/sr",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            family="monospace",
        )
        ax.legend(loc="lower right", fontsize=7)
    failed = [f"{a.against}: {a.reason}" for a in attempts if a.reason]
    fig.suptitle(title + ("\n" + "; ".join(failed) if failed else ""), fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _row(a: Attempt, role: str) -> dict:
    f = a.fit
    return {
        "role": role,
        "against": a.against,
        "file": a.file,
        "used": a.ok,
        "reason": a.reason,
        "slope": f.slope if f else np.nan,
        "intercept": f.intercept if f else np.nan,
        "offset": f.offset if f else np.nan,
        "uncertainty": f.uncertainty if f else np.nan,
        "range_lo": f.range[0] if f else np.nan,
        "range_hi": f.range[1] if f else np.nan,
        "n_pixels": f.n_pixels if f else 0,
        "n_bins_used": int(f.used.sum()) if f else 0,
        "curvature_shift": f.curvature_shift if f else np.nan,
        "split_shift": getattr(f, "split_shift", np.nan) if f else np.nan,
        "extrapolation": getattr(f, "extrapolation", np.nan) if f else np.nan,
        "sky_level": a.sky.level if a.sky else np.nan,
        "sky_uncertainty": a.sky.uncertainty if a.sky else np.nan,
    }


def reference_chain(band: str, ranked: list[str], mosaic: Path, inputs: dict, context: dict) -> list[tuple]:
    """The reference bands a band's level is taken from, in rank: ``[(band, mosaic path)]``.

    ``ranked`` is the stage's ``reference_band`` as a list. Where the band itself is in it, its
    own mosaic stands at its rank (fitted to the wide-field images directly); the others are the
    ``reference_mosaic`` inputs the graph selected (the observed ones; with a ranked list each
    comes with its band in ``context["facts"]``). With no reference band observed the band is
    its own reference.
    """
    paths = [Path(x) for x in inputs.get("reference_mosaic", [])]
    facts = (context.get("facts") or {}).get("reference_mosaic")
    if facts:
        refs = {str(f["band"]).upper(): x for f, x in zip(facts, paths)}
    else:
        refs = {ranked[0]: paths[0]} if ranked and paths else {}
    chain = [(r, mosaic if r == band else refs[r]) for r in ranked if r == band or r in refs]
    return chain or [(band, mosaic)]


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Solve the band's offset (external for the reference band, internal for the others),
    subtract it from the mosaic and the tweakback exposures, write the table and the figure."""
    from astropy.table import Table

    t0 = time.time()
    outdir = Path(outdir)
    p = AnchoringParameters(**params)
    band, product, target, inst = context["band"], context["product"], context["target"], context["instrument"]
    mosaic = Path(inputs["mosaic"][0])
    files = [Path(f) for f in inputs.get("external", [])]
    facts = (context.get("facts") or {}).get("external", [{} for _ in files])
    chain = reference_chain(band, p.reference_bands(), mosaic, inputs, context)
    # the steps, in order: this band against the images listing it (direct), then each
    # reference band in its rank against the images listing no band (this band itself directly
    # where it is in the rank), this band against the first reference anchored
    direct = [(f, x) for f, x in zip(files, facts) if band in x.get("bands", ())]
    general = [(f, x) for f, x in zip(files, facts) if not x.get("bands")]
    steps = [(band, mosaic, direct, "external (direct)")] if direct else []
    steps += [(r, m, general, "external" if r == band else f"external ({r})") for r, m in chain]
    single = len(steps) == 1  # the paper's case: its messages as they always were

    rows, attempts, internal_rows, whys = [], [], [], []
    result = None  # (offset, unc, slope, anchored_to, status)
    level_from = None  # the band whose level this band's stands on
    first_ref = None  # the first reference band other than this one: (band, mosaic, its fit, why)
    for ref_band, ref_mosaic, images, role in steps:
        if not images and files:
            continue  # only other steps' images: nothing to try here
        if images:
            ext = external_fit(ref_mosaic, ref_band, [f for f, _ in images], [x for _, x in images], p, target)
            ext_ok = next((a for a in ext if a.ok), None)
            ext_why = "; ".join(f"{a.against}: {a.reason}" for a in ext if a.reason)
        else:
            ext, ext_ok = [], None
            ext_why = f"no wide-field image for {inst} (targets.{target}.anchoring.{inst})"
        rows += [_row(a, role) for a in ext]
        attempts += [e for e in ext if e.fit is not None]
        if ref_band == band:
            if ext_ok:
                f = ext_ok.fit
                result = (f.offset, f.uncertainty, f.slope, ext_ok.against, "anchored")
                attempts, level_from = ext, band
                break
            whys.append(ext_why if single else f"{band}{' (direct)' if images is direct else ''}: {ext_why}")
            continue
        if first_ref is None:
            first_ref = (ref_band, ref_mosaic, ext_ok, ext_why)
        if not ext_ok:
            whys.append(f"{ref_band} not anchored: {ext_why}")
            continue
        # this band against the anchored reference band
        a = internal_fit(mosaic, band, ref_mosaic, ref_band, ext_ok.fit.offset, p)
        internal_rows.append(_row(a, "internal"))
        attempts = [a] + attempts
        if a.ok:
            # the reference's own error moves x's zero: the band's offset by slope times it
            unc = math.hypot(a.fit.uncertainty, ext_ok.fit.uncertainty * a.fit.slope)
            result = (a.fit.offset, unc, a.fit.slope, f"{ref_band} via {ext_ok.against}", "anchored")
            level_from = ref_band
            break
        whys.append(f"{ref_band}: {a.reason}")
    if result is None and first_ref is not None and first_ref[2] is None:
        # no reference band anchored: against the first one at its calibrated level (its level
        # matching constant back), inheriting its bound times the band ratio
        ref_band, ref_mosaic, _, ext_why = first_ref
        ref_constant = level_matching_constant(ref_mosaic)
        a = internal_fit(mosaic, band, ref_mosaic, ref_band, -ref_constant, p)
        internal_rows.append(_row(a, "internal"))
        attempts = [a] + attempts
        if a.ok:
            unc = math.hypot(a.fit.uncertainty, abs(ref_constant) * a.fit.slope)
            why = ext_why if single else "; ".join(whys)
            result = (a.fit.offset, unc, a.fit.slope, ref_band, f"internal only ({ref_band} not anchored: {why})")
        else:
            whys = [f"{ref_band}: {a.reason}"] if single else [*whys, f"{ref_band}: {a.reason}"]
    rows = internal_rows + rows
    ref_band = level_from or (first_ref[0] if first_ref else chain[0][0])
    restore = result is None  # not anchored: level matching's constant added back (each file its own)
    if result is not None:
        offset, unc, slope, anchored_to, status = result
    else:
        slope, anchored_to, status = float("nan"), "", f"not anchored: {'; '.join(whys)}"
    basis = "anchored" if status == "anchored" else ("internal" if not restore else "calibrated")
    if restore:
        constant = level_matching_constant(mosaic)
        offset, unc = -constant, abs(constant)
    if status != "anchored":
        if p.require_anchor:
            raise WorkFailed(f"anchoring {target} {band}: {status} (require_anchor = true)")
        log.warning("anchoring %s %s: %s", target, band, status)

    record = header_record(offset, unc, anchored_to, slope, status, basis)
    out_mosaic = outdir / f"{product}_i2d.fits"
    subtract(mosaic, out_mosaic, offset, record)
    tarball = outdir / f"{product}_tweakback.tar.gz"
    members = rewrite_tweakback(Path(inputs["tweakback"][0]), tarball, offset, record, outdir, restore=restore)
    figure = outdir / f"{product}_anchoring.png"
    plot_fit(figure, attempts, f"{target} {band}: offset {offset:+.4f} ± {unc:.4f} MJy/sr ({status})")
    table = Table(rows=rows) if rows else Table(names=["role", "against"], dtype=[str, str])
    table.meta.update(
        {
            "target": target,
            "band": band,
            "reference_band": ref_band,
            "offset_mjysr": float(offset),
            "uncertainty_mjysr": float(unc),
            "slope": float(slope),
            "anchored_to": anchored_to,
            "status": status,
            "level_basis": basis,
            "tweakback_members": len(members),
            "seconds": round(time.time() - t0, 2),
            "parameters": p.model_dump(),
        }
    )
    table_path = outdir / f"{product}_anchoring.ecsv"
    table.write(table_path, format="ascii.ecsv", overwrite=True)
    log.info(
        "anchoring %s %s: offset %+.4f ± %.4f MJy/sr against %s (%s), %.1f s",
        target,
        band,
        offset,
        unc,
        anchored_to or "-",
        status,
        time.time() - t0,
    )
    return [out_mosaic, tarball, table_path, figure]


STAGE = Stage(
    name="anchoring",
    unit="target_band",
    inputs=(
        Input("mosaic", "same", "lv3", "_i2d.fits"),
        Input("reference_mosaic", "reference_band", "lv3", "_i2d.fits", optional=True),
        Input("tweakback", "same", "astrometry", "_tweakback.tar.gz"),
        Input("external", "manifest_file", files="processing.anchoring.stage:external_files", optional=True),
    ),
    outputs=("_i2d.fits", "_tweakback.tar.gz", "_anchoring.ecsv", "_anchoring.png"),
    run="processing.anchoring.stage:run",
    parameters=ModelParameters(AnchoringParameters, INSTRUMENT_DEFAULTS),
    products=(
        Product("img", "_i2d.fits"),
        Product("tweakback", "_tweakback.tar.gz"),
        Product("anchoring", "_anchoring.ecsv"),
    ),
    refines=("lv3", "_i2d.fits"),
    memory_gb=2.5,
    description="background anchoring: the reference band (NIRCam F300M, MIRI F770W) fitted against wide-field "
    "images (binned medians, clipped line, offset where it crosses zero), every other band against the "
    "anchored reference band; subtracted from the mosaic and the tweakback exposures",
)
