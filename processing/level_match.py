"""Tile background level matching (paper §3.5).

jwst's skymatch compares one sigma-clipped "sky" per image inside each overlap; where a
galaxy fills the overlaps there is no sky to clip to, and steps between tiles remain (the
paper found no parameters that worked). Here, as in the paper (and Montage's background
modelling), the offset between two overlapping images is the sigma-clipped median of their
pixel-by-pixel difference on a common grid, emission included: the emission cancels, the
offset does not.

For the calibrated exposures of one target and band (MIRI exposures as their imager and
coronagraph parts, processing/lyot.py):

1. every image is reprojected once onto a common north-up grid at its native pixel scale,
   onto the cutout its footprint covers, and kept on disk (memory: one image at a time);
2. pass 1, per visit (the dithers and detectors of one mosaic tile): for every overlapping
   pair, the clipped median and RMS of the difference; pairs are dropped when their overlap
   is below ``min_overlap_fraction`` of the mean overlap, when it spans less than
   ``min_axis_overlap`` of the smaller image along both axes, or when their RMS is above the
   mean + ``rms_clip`` sigma of the other pairs' RMS; additive offsets solve the weighted
   least squares (weights n/RMS^2 by default, the paper's 1/RMS^2 as an option) with one
   image fixed per connected group: the one
   closest in time to the background exposures (MIRI), else the earliest;
3. the corrected images of each connected group of a visit are stacked (mean) into a tile;
   NIRCam short-wave detectors of a visit are combined here;
4. pass 2: the same between tiles, each pair aligned first by phase correlation on its
   overlap (relative astrometry, which runs before this stage, has put the visits on one frame;
   the alignment removes what it left); tiles that no kept pair connects form separate groups,
   solved and reported separately, never merged;
5. one constant per group, the lowest sigma-clipped level (mode) of its tiles, is subtracted from
   every image of the group (what the paper does in level 3 with skymatch off: blank sky
   would end at zero; where emission fills the field, anchoring sets the absolute level).

Each exposure is written back as one cal file (the two MIRI parts merged), its offsets in
the primary header (HLSPDLV imager or whole exposure, HLSPDLC coronagraph part, HLSPDLK the
group constant, all MJy/sr, subtracted; HLSPLMGR its group), and two tables per target and
band: ``<product>_levels.ecsv`` (every image's offsets) and ``<product>_level_pairs.ecsv``
(every pair measured, its statistics and why it was kept or dropped).

Cost: one reprojection per image plus, per overlapping pair, the pixels of its overlap; never
the square of the mosaic.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from processing.stages import Input, ModelParameters, Stage

log = logging.getLogger(__name__)


class LevelMatchParameters(BaseModel):
    """Tile background level matching (paper §3.5)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sigma: float = Field(3.0, gt=0, description="clip of the pixel-by-pixel differences of a pair, sigma")
    iterations: int = Field(10, ge=1, description="sigma-clipping iterations per pair")
    min_overlap_fraction: float = Field(
        0.002,
        ge=0,
        le=1,
        description="a pair overlapping by fewer pixels than this fraction of the mean overlap of all pairs is dropped",
    )
    min_axis_overlap: float = Field(
        0.25,
        ge=0,
        le=1,
        description="a pair whose overlap spans less than this fraction of the smaller image along both axes of the "
        "grid is dropped",
    )
    rms_clip: float = Field(
        2.0,
        gt=0,
        description="a pair whose difference RMS exceeds the mean RMS of the other pairs by more than this many of "
        "their standard deviations is dropped",
    )
    rms_min_excess: float = Field(
        0.1,
        ge=0,
        description="... and by more than this fraction of that mean: where every pair has nearly the same RMS their "
        "standard deviation is tiny, and the sigma cut alone would drop good pairs (measured: a "
        "930,000-pixel dither pair at RMS 0.526 against 0.514)",
    )
    weighting: Literal["error", "rms"] = Field(
        "error",
        description="weight of a pair in the least squares: 'error', n/RMS^2 (the inverse variance of its clipped "
        "median: a 500-pixel corner counts less than a full overlap), or 'rms', 1/RMS^2 (the paper's)",
    )
    min_pixels: int = Field(100, ge=1, description="fewest overlapping pixels for a pair to be measured")
    align_tiles: bool = Field(
        True,
        description="align each pair of tiles of different visits on their overlap before differencing (masked "
        "cross-correlation, then Gauss-Newton): what relative astrometry, which runs first, left of the visits' "
        "guide-star errors",
    )
    max_shift_pixels: float = Field(
        32.0,
        gt=0,
        description="a tile registration shift larger than this (pixels) is not trusted: that pair is dropped",
    )
    subtract_lowest: bool = Field(
        True,
        description="subtract from each group of tiles its lowest sigma-clipped level (the sigma-clipped mode of "
        "each tile, as jwst skymatch's 'global' method; the paper's level-3 constant); off: the "
        "reference image keeps its level-2 background",
    )


# --------------------------------------------------------------------------------------------
# The algorithm (arrays only)
# --------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """One overlapping pair: offset of ``i`` above ``j`` (MJy/sr) and how it was judged."""

    i: int
    j: int
    n: int = 0  # overlapping pixels
    median: float = float("nan")  # sigma-clipped median of (image i - image j)
    rms: float = float("nan")  # RMS of the clipped difference
    axis_fraction: float = 0.0  # largest overlap extent along a grid axis / the smaller image's
    shift: tuple[float, float] | None = None  # (dy, dx) applied to j before differencing
    kept: bool = True
    reason: str = ""

    def drop(self, reason: str) -> None:
        if self.kept:
            self.kept, self.reason = False, reason


def pair_difference(a: np.ndarray, b: np.ndarray, sigma: float = 3.0, iterations: int = 10) -> tuple[int, float, float]:
    """Offset of ``a`` above ``b`` from their pixel-by-pixel difference.

    Parameters
    ----------
    a, b : ndarray (ny, nx)
        Two images on the same pixel grid (MJy/sr), NaN where absent.
    sigma, iterations : float, int
        Clipping of the differences about their median.

    Returns
    -------
    (n, median, rms)
        Pixels both cover; the sigma-clipped median of ``a - b`` and the standard deviation
        of the clipped differences (MJy/sr).
    """
    from astropy.stats import sigma_clipped_stats

    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if d.size == 0:
        return 0, float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, med, std = sigma_clipped_stats(d, sigma=sigma, maxiters=iterations)
    return int(d.size), float(med), float(std)


def axis_overlap_fraction(both: np.ndarray, span_a: tuple[int, int], span_b: tuple[int, int]) -> float:
    """Largest extent of an overlap along either grid axis, as a fraction of the smaller of
    the two images' extents along that axis.

    Parameters
    ----------
    both : ndarray of bool (ny, nx)
        Pixels both images cover.
    span_a, span_b : (ny, nx)
        Extent in pixels of each image's data along the grid's y and x axes.
    """
    rows = np.flatnonzero(both.any(axis=1))
    cols = np.flatnonzero(both.any(axis=0))
    if rows.size == 0:
        return 0.0
    fy = (rows[-1] - rows[0] + 1) / max(min(span_a[0], span_b[0]), 1)
    fx = (cols[-1] - cols[0] + 1) / max(min(span_a[1], span_b[1]), 1)
    return float(max(fy, fx))


def select_pairs(
    pairs: list[Pair],
    min_overlap_fraction: float,
    min_axis_overlap: float,
    rms_clip: float,
    rms_min_excess: float = 0.0,
) -> None:
    """Mark the pairs to drop (in place), the paper's three cuts in order: too few pixels for
    the mean overlap, too thin along both axes, an RMS far above the other pairs' (by more
    than ``rms_clip`` of their standard deviations and ``rms_min_excess`` of their mean)."""
    measured = [p for p in pairs if p.kept]
    if not measured:
        return
    mean_n = float(np.mean([p.n for p in measured]))
    for p in measured:
        if p.n < min_overlap_fraction * mean_n:
            p.drop(f"overlap {p.n} px < {min_overlap_fraction:g} of the mean {mean_n:.0f}")
        elif p.axis_fraction < min_axis_overlap:
            p.drop(f"overlap spans {p.axis_fraction:.2f} < {min_axis_overlap:g} of the image along both axes")
    measured = [p for p in pairs if p.kept]
    rms = np.array([p.rms for p in measured])
    for k, p in enumerate(measured):
        others = np.delete(rms, k)
        if others.size < 2:
            continue
        limit = max(others.mean() + rms_clip * others.std(), others.mean() * (1.0 + rms_min_excess))
        if p.rms > limit:
            p.drop(
                f"RMS {p.rms:.4g} > {limit:.4g} (the other pairs' mean + max({rms_clip:g} sigma, {rms_min_excess:.0%}))"
            )


def connected_groups(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """Connected groups of ``n`` nodes joined by ``edges``, each sorted, ordered by first node."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for k in range(n):
        groups.setdefault(find(k), []).append(k)
    return sorted(groups.values(), key=lambda g: g[0])


def solve_offsets(
    n: int, pairs: list[Pair], priority: np.ndarray | None = None, weighting: str = "error"
) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """Additive offsets of ``n`` images from the kept pairs, by weighted least squares.

    Minimises sum over kept pairs of ``w_ij ((o_i - o_j) - median_ij)^2`` with one image of
    each connected group fixed at 0 (its reference: the lowest ``priority``); ``w_ij`` is
    ``n_ij / rms_ij^2`` (``weighting='error'``) or ``1 / rms_ij^2`` (``'rms'``).

    Parameters
    ----------
    n : int
        Number of images.
    pairs : list of Pair
        Measured pairs; only ``kept`` ones are used.
    priority : ndarray (n,), optional
        Reference choice (lowest wins); default: image order.

    Returns
    -------
    offsets : ndarray (n,)
        To subtract from each image (MJy/sr).
    groups : list of list of int
        The connected groups.
    references : list of int
        The fixed image of each group.
    """
    offsets, groups, references, _ = solve_offsets_with_errors(n, pairs, priority, weighting)
    return offsets, groups, references


def solve_offsets_with_errors(
    n: int, pairs: list[Pair], priority: np.ndarray | None = None, weighting: str = "error"
) -> tuple[np.ndarray, list[list[int]], list[int], np.ndarray]:
    """:func:`solve_offsets` and the statistical error of each offset (MJy/sr, 1 sigma, about
    its group's reference): each pair's median has the error 1.2533 RMS / sqrt(n) of a median
    of Gaussian differences, propagated through the weighted least squares."""
    kept = [p for p in pairs if p.kept and np.isfinite(p.median) and np.isfinite(p.rms)]
    groups = connected_groups(n, [(p.i, p.j) for p in kept])
    priority = np.arange(n, dtype=float) if priority is None else np.asarray(priority, dtype=float)
    offsets = np.zeros(n)
    errors = np.zeros(n)
    references = []
    for g in groups:
        ref = min(g, key=lambda k: (priority[k], k))
        references.append(ref)
        free = [k for k in g if k != ref]
        if not free:
            continue
        col = {k: c for c, k in enumerate(free)}
        design, weights, variances, values = [], [], [], []
        members = set(g)
        for p in kept:
            if p.i not in members:
                continue
            row = np.zeros(len(free))
            if p.i in col:
                row[col[p.i]] += 1.0
            if p.j in col:
                row[col[p.j]] -= 1.0
            design.append(row)
            values.append(p.median)
            weights.append((p.n if weighting == "error" else 1.0) / max(p.rms, 1e-12) ** 2)
            variances.append((1.2533 * p.rms) ** 2 / max(p.n, 1))
        A, w, v, y = np.array(design), np.array(weights), np.array(variances), np.array(values)
        sw = np.sqrt(w)
        sol, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
        normal = np.linalg.pinv((A * w[:, None]).T @ A)
        cov = normal @ ((A * (w * w * v)[:, None]).T @ A) @ normal
        for k, c in col.items():
            offsets[k] = sol[c]
            errors[k] = float(np.sqrt(max(cov[c, c], 0.0)))
    return offsets, groups, references, errors


# --------------------------------------------------------------------------------------------
# The common grid: each image reprojected once, kept on disk
# --------------------------------------------------------------------------------------------


@dataclass
class Image:
    """One image to match (an exposure, or one part of a Lyot-separated one), or a tile."""

    name: str
    part: str = "full"  # full | imager | coron | tile
    visit: str = ""
    mjd: float = 0.0
    path: Path | None = None  # the cal file
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # y0, y1, x0, x1 on the grid
    span: tuple[int, int] = (0, 0)  # extent of its data along the grid's y and x
    store: Path | None = None  # the reprojected cutout (.npy)
    members: list[int] = field(default_factory=list)  # a tile's images

    def load(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The cutout (or its part inside ``box``, grid coordinates), float64, NaN outside."""
        arr = np.load(self.store, mmap_mode="r")
        if box is None:
            return np.array(arr, dtype=np.float64)
        y0, y1, x0, x1 = box
        return np.array(arr[y0 - self.box[0] : y1 - self.box[0], x0 - self.box[2] : x1 - self.box[2]], dtype=np.float64)


def intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    y0, y1, x0, x1 = max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None


def common_grid(corners: list[np.ndarray], scale_arcsec: float):
    """A north-up TAN grid (astropy WCS, shape) covering every footprint.

    Parameters
    ----------
    corners : list of ndarray (k, 2)
        (ra, dec) in degrees of points on each image's footprint.
    scale_arcsec : float
        Pixel scale of the grid.
    """
    from astropy.wcs import WCS

    pts = np.vstack(corners)
    ra0 = float(
        np.degrees(np.arctan2(np.mean(np.sin(np.radians(pts[:, 0]))), np.mean(np.cos(np.radians(pts[:, 0]))))) % 360.0
    )
    dec0 = float(np.mean(pts[:, 1]))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.cdelt = [-scale_arcsec / 3600.0, scale_arcsec / 3600.0]
    w.wcs.crpix = [1.0, 1.0]
    x, y = w.all_world2pix(pts[:, 0], pts[:, 1], 0)
    pad = 2
    w.wcs.crpix = [1.0 - np.floor(x.min()) + pad, 1.0 - np.floor(y.min()) + pad]
    shape = (
        int(np.ceil(y.max() - np.floor(y.min()))) + 2 * pad + 1,
        int(np.ceil(x.max() - np.floor(x.min()))) + 2 * pad + 1,
    )
    return w, shape


def _reproject_onto(data: np.ndarray, wcs_in, grid, box: tuple[int, int, int, int]) -> np.ndarray:
    from reproject import reproject_interp

    y0, y1, x0, x1 = box
    out, footprint = reproject_interp(
        (data, wcs_in), grid[y0:y1, x0:x1], shape_out=(y1 - y0, x1 - x0), order="bilinear"
    )
    return np.where(footprint > 0, out, np.nan).astype(np.float32)


def _valid_footprint(wcs, valid: np.ndarray) -> np.ndarray:
    """(ra, dec) of the corners and edge midpoints of the bounding box of ``valid``."""
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    y0, y1, x0, x1 = rows[0] - 0.5, rows[-1] + 0.5, cols[0] - 0.5, cols[-1] + 0.5
    x = np.array([x0, x1, x1, x0, (x0 + x1) / 2, x1, (x0 + x1) / 2, x0])
    y = np.array([y0, y0, y1, y1, y0, (y0 + y1) / 2, y1, (y0 + y1) / 2])
    ra, dec = wcs(x, y)
    return np.column_stack([ra, dec])


def _span(cutout: np.ndarray) -> tuple[int, int]:
    finite = np.isfinite(cutout)
    rows, cols = np.flatnonzero(finite.any(axis=1)), np.flatnonzero(finite.any(axis=0))
    return (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)) if rows.size else (0, 0)


# --------------------------------------------------------------------------------------------
# Aligning two tiles
# --------------------------------------------------------------------------------------------


def _filled(img: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware Gaussian smoothing (``sigma`` pixels; 0: none): (values filled with 0 where
    absent, usable mask)."""
    from scipy import ndimage

    ok = np.isfinite(img)
    if sigma <= 0:
        return np.where(ok, img, 0.0), ok
    v = ndimage.gaussian_filter(np.where(ok, img, 0.0), sigma)
    w = ndimage.gaussian_filter(ok.astype(float), sigma)
    return np.where(w > 0.5, v / np.maximum(w, 1e-9), 0.0), w > 0.5


def refine_shift(
    a: np.ndarray,
    b: np.ndarray,
    start: tuple[float, float] = (0.0, 0.0),
    scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.0),
    steps: int = 6,
) -> np.ndarray:
    """Shift (dy, dx) in pixels such that ``b`` moved by it matches ``a`` up to a constant:
    Gauss-Newton on ``a - b(x - s) = c`` with outliers clipped (5 MAD), coarse to fine over
    Gaussian smoothing ``scales`` (pixels), so that smooth emission, which phase correlation
    cannot lock on, still aligns.

    Parameters
    ----------
    a, b : ndarray (ny, nx)
        Two images on the same grid (MJy/sr), NaN where absent.
    start : (dy, dx)
        First guess.
    """
    from scipy import ndimage

    s = np.array(start, dtype=float)
    for sigma in scales:
        A, ok_a = _filled(a, sigma)
        B, ok_b = _filled(b, sigma)
        for _ in range(steps):
            Bs = ndimage.shift(B, s, order=3 if sigma == 0 else 1, mode="nearest")
            ok = ok_a & (ndimage.shift(ok_b.astype(float), s, order=1, mode="constant", cval=0.0) > 0.999)
            if ok.sum() < 50:
                return s
            gy, gx = np.gradient(Bs)
            d = (A - Bs)[ok]
            M = np.column_stack([np.ones(d.size), -gy[ok], -gx[ok]])
            keep = np.ones(d.size, dtype=bool)
            for _clip in range(2):
                sol, *_ = np.linalg.lstsq(M[keep], d[keep], rcond=None)
                r = d - M @ sol
                mad = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
                keep = np.abs(r) < 5.0 * max(mad, 1e-12)
            step = np.clip(sol[1:], -2.0, 2.0)
            s += step
            if np.hypot(*step) < 1e-3:
                break
    return s


def align_shift(a: np.ndarray, b: np.ndarray, max_window: int = 768) -> tuple[float, float] | None:
    """Shift (dy, dx) that aligns ``b`` to ``a`` (both on one grid, NaN where absent): the
    best, by the clipped RMS of the difference, of masked normalised cross-correlation (whole
    pixels, any overlap shape), :func:`refine_shift` started from it, and :func:`refine_shift`
    from zero (also on smooth emission), measured on the overlap (at most ``max_window``
    pixels a side, about its centre). None: fewer than 256 pixels overlap.
    """
    from skimage.registration import phase_cross_correlation

    from processing.common.images import shifted as _shifted

    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 256:
        return None
    ys, xs = np.nonzero(both)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    h = max_window // 2
    box = (
        slice(max(ys.min(), cy - h), min(ys.max() + 1, cy + h)),
        slice(max(xs.min(), cx - h), min(xs.max() + 1, cx + h)),
    )
    wa, wb = a[box], b[box]
    ok_a, ok_b = np.isfinite(wa), np.isfinite(wb)
    candidates = []
    try:  # masked normalised cross-correlation (whole pixels): any overlap shape, e.g. a diagonal strip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fa = np.where(ok_a, wa - np.nanmedian(wa), 0.0)
            fb = np.where(ok_b, wb - np.nanmedian(wb), 0.0)
            s0 = phase_cross_correlation(fa, fb, reference_mask=ok_a, moving_mask=ok_b, overlap_ratio=0.5)
        s0 = np.asarray(s0[0] if isinstance(s0, tuple) else s0, dtype=float)
        if np.all(np.isfinite(s0)):
            candidates.append(tuple(s0))
            candidates.append(tuple(refine_shift(wa, wb, tuple(s0))))
    except ValueError:
        pass
    candidates.append(tuple(refine_shift(wa, wb)))

    def rms(s):
        return pair_difference(wa, _shifted(wb, *s))[2]

    scores = [rms(s) for s in candidates]
    best = candidates[int(np.nanargmin(scores))] if np.isfinite(scores).any() else None
    return None if best is None else (float(best[0]), float(best[1]))


# --------------------------------------------------------------------------------------------
# Measuring and solving
# --------------------------------------------------------------------------------------------


def measure_pairs(images: list[Image], indices: list[int], p: LevelMatchParameters, align: bool) -> list[Pair]:
    """Every overlapping pair among ``images[indices]`` (indices into ``images``)."""
    from processing.common.images import shifted as _shifted

    pairs = []
    for a_pos, i in enumerate(indices):
        for j in indices[a_pos + 1 :]:
            box = intersection(images[i].box, images[j].box)
            if box is None:
                continue
            a, b = images[i].load(box), images[j].load(box)
            pair = Pair(i, j)
            if align and images[i].visit != images[j].visit:  # one visit, one pointing: nothing to align
                s = align_shift(a, b)
                if s is not None and np.hypot(*s) > p.max_shift_pixels:
                    pair.shift = s
                    pair.n = int(np.sum(np.isfinite(a) & np.isfinite(b)))
                    pair.drop(f"registration shift {np.hypot(*s):.1f} px > {p.max_shift_pixels:g}")
                    pairs.append(pair)
                    continue
                if s is not None:
                    pair.shift = s
                    b = _shifted(b, *s)
            both = np.isfinite(a) & np.isfinite(b)
            if both.sum() < p.min_pixels:
                continue  # not an overlap worth a line
            pair.n, pair.median, pair.rms = pair_difference(a, b, p.sigma, p.iterations)
            pair.axis_fraction = axis_overlap_fraction(both, images[i].span, images[j].span)
            pairs.append(pair)
    return pairs


def _solve_subset(
    images: list[Image], indices: list[int], pairs: list[Pair], priority: np.ndarray, p: LevelMatchParameters
):
    """Offsets (dict index -> value), groups and references of a subset, from its pairs."""
    select_pairs(pairs, p.min_overlap_fraction, p.min_axis_overlap, p.rms_clip, p.rms_min_excess)
    local = {k: n for n, k in enumerate(indices)}
    local_pairs = [
        Pair(local[q.i], local[q.j], q.n, q.median, q.rms, q.axis_fraction, q.shift, q.kept, q.reason) for q in pairs
    ]
    off, groups, refs, err = solve_offsets_with_errors(len(indices), local_pairs, priority[indices], p.weighting)
    return (
        {indices[k]: float(off[k]) for k in range(len(indices))},
        [[indices[k] for k in g] for g in groups],
        [indices[r] for r in refs],
        {indices[k]: float(err[k]) for k in range(len(indices))},
    )


def _stack(images: list[Image], members: list[int], offsets: dict[int, float], store: Path) -> Image:
    """Mean of the corrected images ``members`` on the union of their cutouts: a tile."""
    boxes = [images[k].box for k in members]
    box = (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))
    total = np.zeros((box[1] - box[0], box[3] - box[2]))
    count = np.zeros(total.shape, dtype=np.int32)
    for k in members:
        b = images[k].box
        cut = images[k].load() - offsets[k]
        ok = np.isfinite(cut)
        sl = (slice(b[0] - box[0], b[1] - box[0]), slice(b[2] - box[2], b[3] - box[2]))
        total[sl][ok] += cut[ok]
        count[sl][ok] += 1
    with np.errstate(invalid="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
    np.save(store, mean)
    first = images[members[0]]
    return Image(
        name="+".join(images[k].name for k in members),
        part="tile",
        visit=first.visit,
        mjd=min(images[k].mjd for k in members),
        box=box,
        span=_span(mean),
        store=store,
        members=list(members),
    )


def clipped_mode(data: np.ndarray, sigma: float = 3.0, iterations: int = 10) -> float:
    """Sigma-clipped mode (3 median - 2 mean, the estimator of jwst skymatch's default
    ``skystat``) of the finite values of ``data``: where emission fills an image its mode
    sits nearer the emission floor than its median."""
    from astropy.stats import sigma_clipped_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean, med, _ = sigma_clipped_stats(data[np.isfinite(data)], sigma=sigma, maxiters=iterations)
    return float(3.0 * med - 2.0 * mean)


@dataclass
class Solution:
    """Everything level matching found for one target and band."""

    images: list[Image]
    tiles: list[Image]
    pass1: dict[int, float]  # image -> offset within its visit
    pass2: dict[int, float]  # tile -> offset between tiles
    tile_of: dict[int, int]  # image -> tile
    groups: list[list[int]]  # tiles per connected group
    constants: list[float]  # per group, subtracted from every image of it
    references: list[int]  # per group, its reference image
    pairs1: list[Pair]
    pairs2: list[Pair]
    error1: dict[int, float] = field(default_factory=dict)  # image -> statistical error of pass1
    error2: dict[int, float] = field(default_factory=dict)  # tile -> of pass2

    def error(self, k: int) -> float:
        """Statistical error (1 sigma, MJy/sr) of image ``k``'s offset about its group's reference."""
        return float(np.hypot(self.error1.get(k, 0.0), self.error2.get(self.tile_of[k], 0.0)))

    def group_of_tile(self, t: int) -> int:
        return next(g for g, members in enumerate(self.groups) if t in members)

    def total(self, k: int) -> float:
        """Everything subtracted from image ``k`` (MJy/sr)."""
        t = self.tile_of[k]
        return self.pass1[k] + self.pass2[t] + self.constants[self.group_of_tile(t)]


def match_levels(images: list[Image], priority: np.ndarray, p: LevelMatchParameters, workdir: Path) -> Solution:
    """The two passes and the group constants over reprojected ``images`` (their ``store``
    written); ``priority`` chooses references (lowest first)."""
    # pass 1 within a visit; a coronagraph part is matched to the imager only between tiles
    # (its overlaps with the imager of its own visit are thin strips, a dither offset wide)
    visits: dict[tuple[str, bool], list[int]] = {}
    for k, im in enumerate(images):
        visits.setdefault((im.visit, im.part == "coron"), []).append(k)
    pass1: dict[int, float] = {}
    error1: dict[int, float] = {}
    pairs1: list[Pair] = []
    tiles: list[Image] = []
    tile_of: dict[int, int] = {}
    tile_priority = []
    for visit in sorted(visits):
        idx = visits[visit]
        pairs = measure_pairs(images, idx, p, align=False)
        off, groups, _, err = _solve_subset(images, idx, pairs, priority, p)
        pass1.update(off)
        error1.update(err)
        pairs1 += pairs
        for g in groups:
            t = len(tiles)
            tiles.append(_stack(images, g, off, workdir / f"tile{t:03d}.npy"))
            tile_priority.append(min(priority[k] for k in g))
            for k in g:
                tile_of[k] = t
    tp = np.array(tile_priority)
    pairs2 = measure_pairs(tiles, list(range(len(tiles))), p, align=p.align_tiles)
    pass2, groups, _, error2 = _solve_subset(tiles, list(range(len(tiles))), pairs2, tp, p)
    constants = []
    references = []
    for g in groups:
        references.append(min((k for t in g for k in tiles[t].members), key=lambda k: (priority[k], k)))
        if p.subtract_lowest:
            constants.append(min(clipped_mode(tiles[t].load(), p.sigma, p.iterations) - pass2[t] for t in g))
        else:
            constants.append(0.0)
    return Solution(images, tiles, pass1, pass2, tile_of, groups, constants, references, pairs1, pairs2, error1, error2)


# --------------------------------------------------------------------------------------------
# The adapter: cal files (and MIRI parts) in, level-matched cal files out
# --------------------------------------------------------------------------------------------


def _pixel_scale_arcsec(wcs, shape) -> float:
    ny, nx = shape
    ra, dec = wcs([nx / 2, nx / 2 + 1, nx / 2], [ny / 2, ny / 2, ny / 2 + 1])
    from astropy.coordinates import SkyCoord

    c = SkyCoord(ra, dec, unit="deg")
    return float(0.5 * (c[0].separation(c[1]).arcsec + c[0].separation(c[2]).arcsec))


def _priorities(images: list[Image], background_mjd: list[float]) -> np.ndarray:
    """Reference choice: an imager (or whole) image closest in time to the background
    exposures; without backgrounds, the earliest. Coronagraph parts only when a group has
    nothing else."""
    out = []
    for im in images:
        t = abs(im.mjd - float(np.mean(background_mjd))) if background_mjd else im.mjd
        out.append(t + (1e6 if im.part == "coron" else 0.0))
    return np.array(out)


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Level-match the cal files of a target and band; writes each exposure's
    ``<exposure>_cal.fits`` and the tables ``<product>_levels.ecsv`` and
    ``<product>_level_pairs.ecsv``."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.common import coronagraph as lyot

    p = LevelMatchParameters(**params)
    outdir = Path(outdir)
    t0 = time.time()
    work = outdir / "reprojected"
    work.mkdir(exist_ok=True)
    images: list[Image] = []
    footprints = []
    scale = None
    for f in sorted(Path(x) for x in inputs["cal"]):
        with datamodels.open(f) as m:
            o = m.meta.observation
            valid = np.isfinite(m.data) & ((np.asarray(m.dq) & lyot.DO_NOT_USE) == 0)
            if not valid.any():
                continue
            part = lyot.part_of(f)
            images.append(
                Image(
                    name=lyot.exposure_of(f),
                    part=part,
                    path=f,
                    mjd=float(m.meta.exposure.start_time or 0.0),
                    visit=f"{o.program_number}{o.observation_number}{o.visit_number}",
                )
            )
            footprints.append(_valid_footprint(m.meta.wcs, valid))
            scale = scale or _pixel_scale_arcsec(m.meta.wcs, m.data.shape)
    if not images:
        raise ValueError(f"{context.get('product')}: no calibrated pixels to level-match")
    grid, gshape = common_grid(footprints, scale)
    for k, im in enumerate(images):
        x, y = grid.all_world2pix(footprints[k][:, 0], footprints[k][:, 1], 0)
        im.box = (
            max(int(np.floor(y.min())) - 1, 0),
            min(int(np.ceil(y.max())) + 2, gshape[0]),
            max(int(np.floor(x.min())) - 1, 0),
            min(int(np.ceil(x.max())) + 2, gshape[1]),
        )
        with datamodels.open(im.path) as m:
            data = np.where((np.asarray(m.dq) & lyot.DO_NOT_USE) == 0, np.asarray(m.data, dtype=np.float64), np.nan)
            cut = _reproject_onto(data, m.meta.wcs, grid, im.box)
        im.store = work / f"image{k:03d}.npy"
        np.save(im.store, cut)
        im.span = _span(cut)
    t_reproject = time.time() - t0
    background_mjd = []
    for b in inputs.get("background", []):
        h = fits.getheader(b, 0)
        if "EXPSTART" in h:
            background_mjd.append(float(h["EXPSTART"]))
    sol = match_levels(images, _priorities(images, background_mjd), p, work)
    written = _write_exposures(sol, outdir)
    written += _write_tables(sol, outdir, context.get("product") or "levels")
    _log_summary(sol, context, time.time() - t0, t_reproject)
    return written


def _write_exposures(sol: Solution, outdir: Path) -> list[Path]:
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.common import coronagraph as lyot
    from processing.fileio import save_model_atomic

    by_exposure: dict[str, dict[str, int]] = {}
    for k, im in enumerate(sol.images):
        by_exposure.setdefault(im.name, {})[im.part] = k
    written = []
    for name, parts in sorted(by_exposure.items()):
        out = outdir / f"{name}_cal.fits"
        main = parts.get("imager", parts.get("full"))
        coron = parts.get("coron")
        if main is None:  # only a coronagraph part has data: it is the exposure
            main, coron = coron, None
        with datamodels.open(sol.images[main].path) as m:
            m.data = (np.asarray(m.data, dtype=np.float64) - sol.total(main)).astype(np.float32)
            if coron is not None:
                with datamodels.open(sol.images[coron].path) as c:
                    aperture = fits.getheader(sol.images[coron].path, 0).get("HLSPLYAP", "MIRIM_MASKLYOT")
                    region = lyot.region_of(m, aperture)
                    cdata = (np.asarray(c.data, dtype=np.float64) - sol.total(coron)).astype(np.float32)
                    arrays = {k: getattr(m, k) for k in lyot.ARRAYS if m.hasattr(k) and c.hasattr(k)}
                    arrays["data"] = m.data
                    merged = lyot.merge(arrays, {**{k: getattr(c, k) for k in arrays}, "data": cdata}, region)
                    for k, v in merged.items():
                        setattr(m, k, v)
            m.meta.filename = out.name
            save_model_atomic(m, out)
        t = sol.tile_of[main]
        g = sol.group_of_tile(t)
        with fits.open(out, mode="update") as hdul:
            h = hdul[0].header
            h.remove(lyot.PART_KEYWORD, ignore_missing=True)
            h["HLSPDLV"] = (round(sol.total(main), 6), "level matching: subtracted, MJy/sr")
            if coron is not None:
                h["HLSPDLC"] = (round(sol.total(coron), 6), "level matching, Lyot part: subtracted, MJy/sr")
            h["HLSPDLK"] = (round(sol.constants[g], 6), "level matching: group constant in it, MJy/sr")
            h["HLSPLMGR"] = (g + 1, f"level matching: group of tiles (of {len(sol.groups)})")
        written.append(out)
    return written


def _write_tables(sol: Solution, outdir: Path, product: str) -> list[Path]:
    from astropy.table import Table

    rows = []
    for k, im in enumerate(sol.images):
        t = sol.tile_of[k]
        g = sol.group_of_tile(t)
        rows.append(
            {
                "image": k,
                "exposure": im.name,
                "part": im.part,
                "visit": im.visit,
                "mjd_start": im.mjd,
                "tile": t,
                "group": g + 1,
                "reference": k == sol.references[g],
                "pass1_mjysr": sol.pass1[k],
                "pass2_mjysr": sol.pass2[t],
                "constant_mjysr": sol.constants[g],
                "subtracted_mjysr": sol.total(k),
                "error_mjysr": sol.error(k),
            }
        )
    levels = Table(rows=rows)
    levels.meta["comments"] = [
        "Level matching (paper 3.5): MJy/sr subtracted from each image = pass1 + pass2 + constant",
        "error: statistical 1-sigma error of pass1 + pass2 about the group's reference",
        f"{len(sol.groups)} group(s) of tiles",
    ]
    prow = []
    for stage_pass, pairs, items in ((1, sol.pairs1, sol.images), (2, sol.pairs2, sol.tiles)):
        for q in pairs:
            prow.append(
                {
                    "pass": stage_pass,
                    "i": q.i,
                    "j": q.j,
                    "name_i": items[q.i].name + ("" if items[q.i].part in ("full", "tile") else f":{items[q.i].part}"),
                    "name_j": items[q.j].name + ("" if items[q.j].part in ("full", "tile") else f":{items[q.j].part}"),
                    "n_pixels": q.n,
                    "median_mjysr": q.median,
                    "rms_mjysr": q.rms,
                    "axis_fraction": q.axis_fraction,
                    "shift_y_px": q.shift[0] if q.shift else 0.0,
                    "shift_x_px": q.shift[1] if q.shift else 0.0,
                    "kept": q.kept,
                    "reason": q.reason,
                }
            )
    pairs = (
        Table(rows=prow)
        if prow
        else Table(names=("pass", "i", "j", "n_pixels", "kept", "reason"), dtype=(int, int, int, int, bool, str))
    )
    out1, out2 = outdir / f"{product}_levels.ecsv", outdir / f"{product}_level_pairs.ecsv"
    levels.write(out1, format="ascii.ecsv", overwrite=True)
    pairs.write(out2, format="ascii.ecsv", overwrite=True)
    return [out1, out2]


def _log_summary(sol: Solution, context: dict, elapsed: float, t_reproject: float) -> None:
    kept1 = sum(q.kept for q in sol.pairs1)
    kept2 = sum(q.kept for q in sol.pairs2)
    log.info(
        "%s: %d image(s) in %d tile(s); pairs kept %d/%d within visits, %d/%d between tiles; %d group(s)%s; "
        "constants %s MJy/sr; %.1f s (reprojection %.1f s)",
        context.get("product"),
        len(sol.images),
        len(sol.tiles),
        kept1,
        len(sol.pairs1),
        kept2,
        len(sol.pairs2),
        len(sol.groups),
        "" if len(sol.groups) == 1 else " (DISCONNECTED: solved separately)",
        ", ".join(f"{c:.4f}" for c in sol.constants),
        elapsed,
        t_reproject,
    )
    if len(sol.groups) > 1:
        log.warning(
            "%s: the tiles form %d groups that no kept overlap connects; each has its own reference and constant: %s",
            context.get("product"),
            len(sol.groups),
            "; ".join("+".join(sol.tiles[t].name for t in g) for g in sol.groups),
        )
    for k, im in enumerate(sol.images):
        log.info(
            "  %s %s: pass1 %+.4f pass2 %+.4f constant %+.4f -> %+.4f +- %.4f MJy/sr",
            im.name,
            im.part,
            sol.pass1[k],
            sol.pass2[sol.tile_of[k]],
            sol.constants[sol.group_of_tile(sol.tile_of[k])],
            sol.total(k),
            sol.error(k),
        )


STAGE = Stage(
    name="level_match",
    unit="target_band",
    inputs=(
        Input("cal", "members", "lv2", "_cal.fits"),
        Input("background", "background", "lv1", "_rate.fits", optional=True),
    ),
    outputs=("_cal.fits", "_levels.ecsv", "_level_pairs.ecsv"),
    run="processing.level_match:run",
    parameters=ModelParameters(LevelMatchParameters),
    refines=("lv2", "_cal.fits"),
    memory_gb=2.5,
    description="tile background level matching: pixel-by-pixel pair differences, least squares within visits then "
    "between tiles, one constant per group of tiles (replaces skymatch)",
)
