"""Comparing a release's mosaics with their counterparts: the previous release, MAST's level-3
mosaics (the synthetic program's jwst-defaults mosaics stand in for them), or any two files.

For one pair (A = this release's mosaic, B = the counterpart), B is reprojected onto A's grid
(reproject's bilinear interpolation); the shift is measured first, B moved onto A by it (so a
shift does not also show as a flux or level change), and over the pixels both cover:

- ``median`` and ``mad`` (1.4826 x median absolute deviation) of A - B, MJy/sr;
- ``background``: the level difference where the galaxy is faintest (median of A - B over the
  pixels of B below its 20th percentile), MJy/sr;
- ``flux_ratio``: the galaxy's flux in A over B, each above its own faint level, over the
  brighter half of B's pixels;
- ``shift_east_mas``, ``shift_north_mas``, ``shift_mas``: where A's image lies relative to B's
  on the sky, by phase cross-correlation with 1/20-pixel refinement (scikit-image), turned into
  sky offsets through A's WCS (a 0 shift: the same sources at the same coordinates).

:func:`check` turns the numbers into pass/fail against limits (the manifest's
``[comparisons.thresholds]`` and its overrides): `hlsp validate RELEASE --against PREVIOUS`
fails naming target, band, quantity and value. :func:`plot` draws A, B and A - B with colour
bars in MJy/sr (the paper's Figures 14 and 15).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: percentiles of B's pixels that define the faint part (background) and the galaxy (flux)
FAINT_PERCENTILE = 20.0
BRIGHT_PERCENTILE = 50.0
#: fewest pixels both images must cover
MIN_OVERLAP = 400


@dataclass
class Pair:
    """A mosaic and its counterpart: ``target`` and ``band`` (upper case) name them."""

    target: str
    band: str
    product: str
    a: Path
    b: Path


@dataclass
class Numbers:
    target: str
    band: str
    product: str
    a: str
    b: str
    pixels: int
    median: float
    mad: float
    background: float
    flux_ratio: float
    shift_east_mas: float
    shift_north_mas: float
    shift_mas: float

    def as_dict(self) -> dict:
        return asdict(self)


def compare_arrays(a: np.ndarray, b: np.ndarray) -> dict:
    """The numbers of the module docstring for two images on the same grid (NaN: no data).

    Parameters
    ----------
    a, b : numpy.ndarray, shape (ny, nx)
        Surface brightness, same unit (MJy/sr).

    Returns
    -------
    dict
        ``pixels``, ``median``, ``mad``, ``background``, ``flux_ratio`` and ``shift_px``
        ((dy, dx): A's image relative to B's, pixels).
    """
    from scipy.ndimage import shift as move
    from skimage.registration import phase_cross_correlation

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    if n < MIN_OVERLAP:
        raise ValueError(f"the images overlap on {n} pixels (fewer than {MIN_OVERLAP})")
    # 1. the shift: cross-correlation on the common bounding box, each image less its median, no data = 0
    ys, xs = np.nonzero(both)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    a, b, both = a[box], b[box], both[box]
    ca = np.where(both, a - np.median(a[both]), 0.0)
    cb = np.where(both, b - np.median(b[both]), 0.0)
    shift, _, _ = phase_cross_correlation(ca, cb, upsample_factor=20, normalization=None)
    # 2. the photometry with B moved onto A (so that a shift does not count twice)
    if np.any(np.abs(shift) > 0):
        valid_b = move(np.isfinite(b).astype(float), shift, order=1, mode="constant", cval=0.0) > 0.999
        b = np.where(valid_b, move(np.where(np.isfinite(b), b, 0.0), shift, order=1, mode="constant", cval=0.0), np.nan)
        both = np.isfinite(a) & np.isfinite(b)
        if both.sum() < MIN_OVERLAP:
            raise ValueError(f"the images overlap on {int(both.sum())} pixels once aligned (fewer than {MIN_OVERLAP})")
    d = a[both] - b[both]
    med = float(np.median(d))
    mad = float(1.4826 * np.median(np.abs(d - med)))
    faint = b[both] <= np.percentile(b[both], FAINT_PERCENTILE)
    bright = b[both] >= np.percentile(b[both], BRIGHT_PERCENTILE)
    bg_a, bg_b = float(np.median(a[both][faint])), float(np.median(b[both][faint]))
    fb = float(np.sum(b[both][bright] - bg_b))
    ratio = float(np.sum(a[both][bright] - bg_a) / fb) if fb > 0 else float("nan")
    return {
        "pixels": n,
        "median": med,
        "mad": mad,
        "background": bg_a - bg_b,
        "flux_ratio": ratio,
        "shift_px": (float(shift[0]), float(shift[1])),
    }


def read_sci(path: Path):
    """``(SCI as float64 with NaN off the data, its celestial WCS)`` of a mosaic (a release
    img.fits or a jwst i2d; WHT = 0 is no data where there is a WHT)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path, memmap=True) as hdul:
        sci = np.array(hdul["SCI"].data, dtype=np.float64)
        wcs = WCS(hdul["SCI"].header).celestial
        if "WHT" in hdul:
            sci[~(np.asarray(hdul["WHT"].data) > 0)] = np.nan
    return sci, wcs


def compare_files(pair: Pair) -> tuple[Numbers, np.ndarray, np.ndarray]:
    """Numbers for a pair, and A and B on A's grid (for :func:`plot`)."""
    from astropy.coordinates import SkyCoord
    from reproject import reproject_interp

    a, wa = read_sci(pair.a)
    b, wb = read_sci(pair.b)
    b_on_a, _ = reproject_interp((b, wb), wa, shape_out=a.shape)
    r = compare_arrays(a, b_on_a)
    dy, dx = r["shift_px"]
    cy, cx = (a.shape[0] - 1) / 2.0, (a.shape[1] - 1) / 2.0
    here = SkyCoord(*wa.pixel_to_world_values(cx, cy), unit="deg")
    moved = SkyCoord(*wa.pixel_to_world_values(cx + dx, cy + dy), unit="deg")
    east, north = here.spherical_offsets_to(moved)
    numbers = Numbers(
        pair.target,
        pair.band,
        pair.product,
        pair.a.name,
        pair.b.name,
        r["pixels"],
        r["median"],
        r["mad"],
        r["background"],
        r["flux_ratio"],
        float(east.to_value("mas")),
        float(north.to_value("mas")),
        float(np.hypot(east.to_value("mas"), north.to_value("mas"))),
    )
    return numbers, a, b_on_a


# -- what each side is ----------------------------------------------------------------------------
#: the first bytes of every FITS file (the standard's SIMPLE card), and of a gzip stream
FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"


def fits_problem(path: Path) -> str | None:
    """Why ``path`` is not a FITS file (by its first bytes, whatever its name), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(FITS_MAGIC))
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if head == FITS_MAGIC:
        return None
    if head.startswith(GZIP_MAGIC):
        return "is gzip-compressed data, not a FITS file (the standard's first card SIMPLE is missing)"
    return "is not a FITS file (it does not start with the standard's SIMPLE card)"


@dataclass
class Side:
    """What one side of a comparison is: ``kind`` ``release`` (``project``, ``version``),
    ``mosaics`` (a folder of level-3 mosaics), ``file`` (``band``, ``target`` from its header),
    or ``unknown``."""

    path: Path
    kind: str
    project: str | None = None
    version: str | None = None
    band: str | None = None
    target: str | None = None

    def describe(self) -> str:
        if self.kind == "release":
            return f"release {self.project} {self.version} ({self.path})"
        if self.kind == "file":
            return f"{self.band or 'band unknown'} of {self.target or 'target unknown'} ({self.path.name})"
        if self.kind == "mosaics":
            return f"level-3 mosaics in {self.path}"
        return f"{self.path} (neither a release nor a folder of level-3 mosaics)"


def side_of(path: Path) -> Side:
    """What ``path`` is (see :class:`Side`); a file that is not FITS raises ValueError."""
    path = Path(path)
    if path.is_file():
        problem = fits_problem(path)
        if problem:
            raise ValueError(f"{path} {problem}")
        from astropy.io import fits

        try:
            h = fits.getheader(path, 0)
        except Exception as exc:  # noqa: BLE001 - an unreadable FITS file is the user's input
            raise ValueError(f"{path} does not open as FITS ({type(exc).__name__}: {exc})") from None
        from release.naming import parse_name

        parsed, i2d = parse_name(path.name), _I2D.match(path.name)
        named_target = parsed.target if parsed else (i2d.group("target") if i2d else None)
        named_band = parsed.filter if parsed and parsed.filter != "multi" else (i2d.group("band") if i2d else None)
        band = str(h.get("FILTER") or named_band or "").strip().upper() or None
        # the target only as file names give it (release and MAST names are normalised ids;
        # header designations are free text: 'NGC 628' and 'NGC0628' are one galaxy)
        return Side(path, "file", band=band, target=named_target.lower() if named_target else None)
    if not path.is_dir():
        raise ValueError(f"{path} does not exist")
    if any(path.glob("*_manifest.toml")):
        from release.manifest import load_release_manifest

        try:
            m = load_release_manifest(path)
        except Exception as exc:  # noqa: BLE001 - a release whose manifest does not load cannot be compared
            raise ValueError(f"{path}: its release manifest does not load ({type(exc).__name__})") from None
        return Side(path, "release", project=m.release.project, version=m.release.version)
    if any(_I2D.match(p.name) for p in path.rglob("*_i2d.fits*")):
        return Side(path, "mosaics")
    return Side(path, "unknown")


def comparable(a: Side, b: Side) -> str | None:
    """Why A and B cannot be compared, or None: two files of different bands (or targets)."""
    if a.kind == "file" and b.kind == "file":
        if a.band and b.band and a.band != b.band:
            return f"{a.path.name} is {a.band} and {b.path.name} is {b.band}: a comparison needs the same band"
        if a.target and b.target and a.target != b.target:
            return f"{a.path.name} is of {a.target} and {b.path.name} of {b.target}: not the same target"
    elif (a.kind == "file") != (b.kind == "file"):
        return f"compare two folders or two files, not {a.path} and {b.path}"
    return None


# -- pairing -------------------------------------------------------------------------------------
_I2D = re.compile(r"^(?P<target>[a-z0-9+.\-]+)_(?P<band>f\d+[a-z]+)(?:_.*)?_i2d\.fits(?:\.gz)?$", re.IGNORECASE)


def _key(path: Path, products: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(target, band, product) of a release file or of a ``<target>_<band>[_...]_i2d.fits``."""
    from release.naming import parse_name

    parsed = parse_name(path.name)
    if parsed is not None:
        if parsed.product in products and parsed.ext == "fits" and parsed.filter != "multi":
            return parsed.target, parsed.filter.upper(), parsed.product
        return None
    m = _I2D.match(path.name)
    return (m.group("target").lower(), m.group("band").upper(), "img") if m and "img" in products else None


def pair_products(a: Path, b: Path, products: tuple[str, ...] = ("img",)) -> tuple[list[Pair], list[str]]:
    """The mosaics of folder ``a`` with their counterparts in folder ``b`` (a release or a
    folder of level-3 mosaics), matched by target, band and product type (not version); or the
    two files themselves. Returns the pairs and what of ``a`` has no counterpart."""
    a, b = Path(a), Path(b)
    if a.is_file() and b.is_file():
        key = _key(a, products) or ("", "", "img")
        return [Pair(key[0], key[1], key[2], a, b)], []
    if not a.is_dir() or not b.is_dir():
        raise ValueError(f"compare two folders or two files: {a} and {b}")
    theirs = {}
    for p in sorted(b.rglob("*.fits")):
        k = _key(p, products)
        if k is not None:
            theirs.setdefault(k, p)
    pairs, alone = [], []
    for p in sorted(a.rglob("*.fits")):
        k = _key(p, products)
        if k is None:
            continue
        if k in theirs:
            pairs.append(Pair(k[0], k[1], k[2], p, theirs[k]))
        else:
            alone.append(f"{k[0]} {k[1]} {k[2]}")
    return pairs, alone


# -- limits --------------------------------------------------------------------------------------
def limits_for(comparisons, target: str, band: str) -> dict[str, float | None]:
    """The limits that apply to a target and band: ``[comparisons.thresholds]`` overridden by
    ``overrides[band]``, then ``overrides[target]``, then ``overrides["target/BAND"]``."""
    out = comparisons.thresholds.model_dump()
    for key in (band.upper(), target, f"{target}/{band.upper()}"):
        o = comparisons.overrides.get(key)
        if o is not None:
            out.update({k: v for k, v in o.model_dump().items() if v is not None})
    return out


def check(n: Numbers, limits: dict[str, float | None]) -> list[str]:
    """What of ``n`` exceeds ``limits``, each naming target, band, quantity and value."""
    problems = []
    who = f"{n.target} {n.band}"
    if limits.get("max_shift_mas") is not None and not n.shift_mas <= limits["max_shift_mas"]:
        problems.append(
            f"{who}: shifted by {n.shift_mas:.1f} mas (east {n.shift_east_mas:+.1f}, north {n.shift_north_mas:+.1f}) "
            f"> max_shift_mas {limits['max_shift_mas']:g}"
        )
    if (
        limits.get("max_flux_ratio_change") is not None
        and not abs(n.flux_ratio - 1.0) <= limits["max_flux_ratio_change"]
    ):
        problems.append(
            f"{who}: flux ratio {n.flux_ratio:.4f} differs from 1 by more than max_flux_ratio_change "
            f"{limits['max_flux_ratio_change']:g}"
        )
    if (
        limits.get("max_background_change_mjysr") is not None
        and not abs(n.background) <= limits["max_background_change_mjysr"]
    ):
        problems.append(
            f"{who}: background changed by {n.background:+.4f} MJy/sr > max_background_change_mjysr "
            f"{limits['max_background_change_mjysr']:g}"
        )
    return problems


# -- figures -------------------------------------------------------------------------------------
def plot(dest: Path, n: Numbers, a: np.ndarray, b: np.ndarray, label_a: str = "A", label_b: str = "B") -> None:
    """A, B (on A's grid) and A - B, each with a colour bar in MJy/sr, and the numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval

    from processing.fileio import atomic_path

    step = max(1, int(np.ceil(max(a.shape) / 800)))
    a, b = a[::step, ::step], b[::step, ::step]
    d = a - b
    finite = a[np.isfinite(a)]
    norm = ImageNormalize(
        finite if finite.size else np.zeros(1), interval=PercentileInterval(99.5), stretch=AsinhStretch(0.05)
    )
    lim = np.nanpercentile(np.abs(d), 98) if np.isfinite(d).any() else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), dpi=90)
    for ax, img, title, kw in (
        (axes[0], a, label_a, {"norm": norm, "cmap": "inferno"}),
        (axes[1], b, label_b, {"norm": norm, "cmap": "inferno"}),
        (
            axes[2],
            d,
            f"{label_a} - {label_b} (as they are: not aligned)",
            {"vmin": -lim, "vmax": lim, "cmap": "RdBu_r"},
        ),
    ):
        im = ax.imshow(img, origin="lower", interpolation="nearest", **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"x (pixels / {step})")
        ax.set_ylabel(f"y (pixels / {step})")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="MJy/sr")
    fig.suptitle(
        f"{n.target} {n.band} (aligned by the shift): median {n.median:+.4f}, MAD {n.mad:.4f}, background "
        f"{n.background:+.4f} MJy/sr; "
        f"flux ratio {n.flux_ratio:.4f}; shift {n.shift_mas:.1f} mas (E {n.shift_east_mas:+.1f}, N "
        f"{n.shift_north_mas:+.1f})",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def compare(
    a: Path,
    b: Path,
    outdir: Path | None = None,
    products: tuple[str, ...] = ("img",),
    label_a: str = "A",
    label_b: str = "B",
) -> tuple[list[Numbers], list[str]]:
    """Compare every pair (:func:`pair_products`); with ``outdir``: a figure per pair and
    ``comparison.ecsv`` there. Returns the numbers and what could not be compared (and why)."""
    pairs, alone = pair_products(a, b, products)
    out, skipped = [], [f"{x}: no counterpart" for x in alone]
    for p in pairs:
        try:
            n, ia, ib = compare_files(p)
        except ValueError as exc:
            skipped.append(f"{p.target} {p.band} {p.product}: {exc}")
            continue
        out.append(n)
        if outdir is not None:
            Path(outdir).mkdir(parents=True, exist_ok=True)
            plot(Path(outdir) / f"{p.target}_{p.band.lower()}_{p.product}_comparison.png", n, ia, ib, label_a, label_b)
    if outdir is not None and out:
        from astropy.table import Table

        Table(rows=[n.as_dict() for n in out]).write(
            Path(outdir) / "comparison.ecsv", format="ascii.ecsv", overwrite=True
        )
    return out, skipped
