"""PSF matching of the mosaics (the paper's section 3.10, Table 2, Figure 10): the file adapter
and the stage declaration.

Per target and band, after anchoring (the convolved products share the anchored level), for
each resolution of the manifest's ``products.convolved_fwhm_arcsec`` (a variant of the stage:
``gauss0p85as`` for 0.85"):

1. the band's PSF (``products.psfs`` / ``products.psf_path``; a synthetic program's own) is
   brought to the mosaic's pixel grid and a kernel made to the Gaussian
   (processing/psf_matching/kernels.py); its W- and D are recorded, and the point-source FWHM it
   gives is measured. A resolution the band cannot reach (no wider than its PSF, or a kernel
   with W- above ``max_negative_power``) is refused, naming the band, the resolution and the
   finest one it allows;
2. SCI and ERR are convolved tile by tile (processing/psf_matching/convolve.py: normalised
   convolution, ERR = sqrt(K^2 * ERR^2) / coverage), written as
   ``<product>_gauss0p85as.fits`` with the mosaic's primary header, SCI and ERR only (DQ,
   the variances, CON and WHT describe the unconvolved pixels), the beam (BMAJ, BMIN, BPA) and
   the kernel's record (HLSPDPF PSF file, HLSPDPW W-, HLSPDPD D, HLSPDPB beam FWHM);
3. the kernel itself as ``<product>_gauss0p85as_kernel.fits`` (cached like every output), and
   ``<product>_psf_matching.ecsv`` / ``.png``: per resolution W-, D, the point-source FWHM, and
   the noise of the smoothed mosaic against resolution (the paper's Figure 10).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from processing.errors import BadInput, WorkFailed
from processing.psf_matching import convolve as C
from processing.psf_matching import kernels as K
from processing.psf_matching.parameters import PsfMatchingParameters
from processing.stages import Input, ModelParameters, Product, Stage

log = logging.getLogger(__name__)


# -- what the manifest asks for ---------------------------------------------------------------
def variant_name(fwhm_arcsec: float) -> str:
    """0.85 -> ``gauss0p85as`` (two decimals of arcsec; the product type is ``img-`` and this)."""
    return f"gauss{fwhm_arcsec:.2f}".replace(".", "p") + "as"


def variants(manifest) -> dict[str, float]:
    """``{"gauss0p85as": 0.85, ...}``: one variant per resolution of
    ``products.convolved_fwhm_arcsec``."""
    return {variant_name(f): float(f) for f in manifest.products.convolved_fwhm_arcsec}


def psf_files(lm, unit: dict) -> list[Path]:
    """The band's PSF file: ``products.psfs[band]``, else ``products.psf_path/psf_<BAND>.fits``,
    else (a synthetic program) the program's ``psf/psf_<BAND>.fits``. None found: refused,
    naming the keys to set."""
    m = lm.manifest
    band = unit["band"]
    if band in m.products.psfs:
        path, key = lm.resolve_path(m.products.psfs[band]), f"products.psfs.{band}"
    elif m.products.psf_path:
        path, key = lm.resolve_path(m.products.psf_path) / f"psf_{band}.fits", "products.psf_path"
    elif m.program.data.source == "synthetic" and m.program.data.path:
        path, key = (
            lm.resolve_path(m.program.data.path) / "psf" / f"psf_{band}.fits",
            "program.data.path (the synthetic program's psf/)",
        )
    else:
        raise BadInput(
            f"{lm.path.name}: products.convolved_fwhm_arcsec asks for PSF-matched products, but no PSF is named "
            f"for {band}: set products.psf_path (a folder with psf_{band}.fits) or products.psfs.{band}"
        )
    if not path.is_file():
        raise BadInput(f"{lm.path.name}: {key}: the PSF of {band}, {path}, is not a file")
    if m.program.data.source == "synthetic" and path.parent.parent == lm.resolve_path(m.program.data.path):
        from astropy.io import fits

        if fits.getheader(path).get("MODEL") != "gaussian":  # older programs wrote the poppy PSF there
            raise BadInput(
                f"{lm.path.name}: {path} is not the synthetic sky's PSF (MODEL != 'gaussian'): the program "
                f"was written by an older `hlsp simulate`; write it again"
            )
    return [path]


# -- reading -----------------------------------------------------------------------------------
def read_psf(path: Path) -> tuple[np.ndarray, float]:
    """The PSF image (first image HDU with data) and its pixel scale (PIXELSCL, arcsec), as
    stpsf writes them; a file that is not one is refused, naming it."""
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            hdu = next((h for h in hdul if getattr(h, "data", None) is not None and np.ndim(h.data) == 2), None)
            if hdu is None:
                raise WorkFailed(f"PSF {path}: no 2-D image in the file")
            data = np.asarray(hdu.data, np.float64)
            scale = hdu.header.get("PIXELSCL", hdul[0].header.get("PIXELSCL"))
    except WorkFailed:
        raise
    except Exception as exc:
        raise WorkFailed(f"PSF {path} could not be read: {type(exc).__name__}: {exc}") from exc
    if scale is None or not float(scale) > 0:
        raise WorkFailed(f"PSF {path}: no PIXELSCL keyword (arcsec per pixel) in its header")
    if data.shape[0] != data.shape[1] or not np.isfinite(data).all() or data.sum() <= 0:
        raise WorkFailed(f"PSF {path}: the image must be square, finite and of positive sum (shape {data.shape})")
    return data / data.sum(), float(scale)


def mosaic_pixel_arcsec(header) -> float:
    """The mosaic's pixel side (arcsec) from its SCI header's celestial WCS (square pixels)."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    sx, sy = proj_plane_pixel_scales(WCS(header).celestial) * 3600.0
    if abs(sx / sy - 1.0) > 1e-3:
        raise WorkFailed(
            f'the mosaic\'s pixels are not square ({sx:.5f}" x {sy:.5f}"): a circular kernel does not apply'
        )
    return float(0.5 * (sx + sy))


# -- the kernels ---------------------------------------------------------------------------------
def band_kernel(
    source: np.ndarray, pixel_arcsec: float, fwhm_arcsec: float, psf_fwhm: float, p: PsfMatchingParameters, label: str
) -> tuple[np.ndarray, float, float, float]:
    """Kernel (mosaic pixels) from ``source`` (odd, centred, at ``pixel_arcsec``) to a Gaussian
    of ``fwhm_arcsec``, its W- and D, and the FWHM a point source gets with it (measured).
    Refused (:class:`WorkFailed` naming ``label``) when the band cannot reach the resolution."""
    from scipy.signal import fftconvolve

    from processing.common.psf import measure_fwhm

    if fwhm_arcsec <= psf_fwhm:
        raise WorkFailed(
            f'{label}: {fwhm_arcsec:.2f}" is not wider than the band\'s PSF ({psf_fwhm:.3f}" FWHM): '
            "remove it from products.convolved_fwhm_arcsec"
        )
    kernel, w_minus, d = K.kernel_to_gaussian(source, pixel_arcsec, fwhm_arcsec, circular=p.circularise)
    if w_minus > p.max_negative_power:
        limit = K.safe_fwhm(source, pixel_arcsec, p.max_negative_power)
        raise WorkFailed(
            f'{label}: the kernel to {fwhm_arcsec:.2f}" has W- {w_minus:.2f} > max_negative_power '
            f'{p.max_negative_power}: the finest resolution this band allows is {limit:.3f}" '
            "(remove the resolution or raise max_negative_power)"
        )
    src = K.pad_to(K.circularise(source) if p.circularise else source, kernel.shape[0])
    point = fftconvolve(src, kernel, mode="same")
    return kernel, w_minus, d, measure_fwhm(point, pixel_arcsec)


# -- writing ---------------------------------------------------------------------------------------
def _image_header(sci_header):
    from astropy.wcs import WCS

    h = WCS(sci_header).celestial.to_header()
    for k in (
        "MJDREF",
        "MJD-OBS",
        "DATE-OBS",
        "DATEREF",
        "MJD-AVG",
        "DATE-AVG",
        "MJD-BEG",
        "MJD-END",
        "DATE-BEG",
        "DATE-END",
    ):
        h.remove(k, ignore_missing=True, remove_all=True)
    return h


def write_convolved(
    dest: Path,
    primary,
    sci_header,
    sci: np.ndarray,
    err: np.ndarray,
    kernel: np.ndarray,
    fwhm_arcsec: float,
    record: dict,
    min_coverage: float,
    tile: int,
    scratch: Path,
) -> float:
    """Convolve ``sci``/``err`` (arrays or memory maps) into ``dest`` (FITS: primary, SCI, ERR),
    through memory-mapped scratch arrays: memory is bounded by the tile. Returns the finite
    fraction of the output."""
    from astropy.io import fits

    from processing.fileio import atomic_path

    shape = sci.shape
    sci_out = np.lib.format.open_memmap(scratch / f"{dest.stem}.sci.npy", mode="w+", dtype=">f4", shape=shape)
    err_out = np.lib.format.open_memmap(scratch / f"{dest.stem}.err.npy", mode="w+", dtype=">f4", shape=shape)
    finite = C.convolve_tiled(sci, err, kernel, sci_out, err_out, min_coverage=min_coverage, tile=tile)
    sci_out.flush()
    err_out.flush()
    prim = fits.PrimaryHDU(header=primary)
    beam = C.beam_keywords(fwhm_arcsec)
    for k, v in {**beam, **record}.items():
        prim.header[k] = v
    image = _image_header(sci_header)
    hdus = [prim]
    for name, data, comment in (
        ("SCI", sci_out, "PSF-matched surface brightness"),
        ("ERR", err_out, "uncertainty: sqrt(K^2 * ERR^2)"),
    ):
        hdu = fits.ImageHDU(data, name=name)
        hdu.header.extend(image, update=True)
        hdu.header["BUNIT"] = (sci_header.get("BUNIT", "MJy/sr"), comment)
        for k, v in beam.items():
            hdu.header[k] = v
        hdus.append(hdu)
    with atomic_path(dest) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    del sci_out, err_out
    for p in scratch.glob(f"{dest.stem}.*.npy"):
        p.unlink()
    return finite


def write_kernel(
    dest: Path,
    kernel: np.ndarray,
    pixel_arcsec: float,
    fwhm_arcsec: float,
    w_minus: float,
    d: float,
    psf: Path,
    band: str,
) -> None:
    from astropy.io import fits

    from processing.fileio import atomic_path

    h = fits.Header()
    h["FILTER"] = (band, "source band")
    h["PSFFILE"] = (psf.name[:60], "source PSF")
    h["PIXELSCL"] = (pixel_arcsec, "[arcsec] per pixel (the mosaic's)")
    h["TARGFWHM"] = (fwhm_arcsec, "[arcsec] target Gaussian FWHM")
    h["WMINUS"] = (round(w_minus, 6), "negative weight W- (Aniano+2011 eq. 21)")
    h["DRESID"] = (round(d, 6), "residual D (Aniano+2011 eq. 20)")
    with atomic_path(dest) as tmp:
        fits.PrimaryHDU(kernel.astype(np.float64), header=h).writeto(tmp, overwrite=True)


# -- the noise against resolution (Figure 10) -------------------------------------------------------
def noise_curve(
    sci: np.ndarray,
    err: np.ndarray,
    source: np.ndarray,
    pixel_arcsec: float,
    psf_fwhm: float,
    fwhms: list[float],
    p: PsfMatchingParameters,
) -> list[dict]:
    """Noise of a central cutout of the mosaic, native and convolved to each of ``fwhms``
    (:func:`processing.psf_matching.convolve.robust_noise`, high-pass at 3 beams), with the
    median propagated ERR over the same pixels."""
    ny, nx = sci.shape
    n = min(p.noise_cutout_pixels, ny, nx)
    y0, x0 = (ny - n) // 2, (nx - n) // 2
    s = np.asarray(sci[y0 : y0 + n, x0 : x0 + n], np.float64)
    e = np.asarray(err[y0 : y0 + n, x0 : x0 + n], np.float64)
    rows = [
        {
            "fwhm_arcsec": psf_fwhm,
            "noise_mjysr": C.robust_noise(s, 3 * psf_fwhm / pixel_arcsec * K.FWHM_TO_SIGMA),
            "err_median_mjysr": float(np.nanmedian(np.where(np.isfinite(s), e, np.nan))),
        }
    ]
    for f in fwhms:
        try:
            kernel, *_ = band_kernel(
                source, pixel_arcsec, f, psf_fwhm, p.model_copy(update={"max_negative_power": 1e9}), ""
            )
        except WorkFailed:
            continue
        o, eo, _ = C.convolve_block(s, e, kernel, p.min_coverage)
        rows.append(
            {
                "fwhm_arcsec": f,
                "noise_mjysr": C.robust_noise(o, 3 * f / pixel_arcsec * K.FWHM_TO_SIGMA),
                "err_median_mjysr": float(np.nanmedian(eo)),
            }
        )
    return rows


def plot(dest: Path, title: str, kernels: dict[float, np.ndarray], pixel_arcsec: float, curve: list[dict]) -> None:
    """Kernel profiles (|K| against radius, negative parts marked) and noise against resolution
    (the paper's Figure 10), both with axes and units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from processing.fileio import atomic_path

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for f, k in sorted(kernels.items()):
        c = k.shape[0] // 2
        prof = k[c, c:]
        r = np.arange(prof.size) * pixel_arcsec
        (line,) = a.semilogy(r, np.abs(prof) / np.abs(prof).max(), label=f'to {f:.2f}"')
        neg = prof < 0
        a.semilogy(r[neg], np.abs(prof[neg]) / np.abs(prof).max(), "x", color=line.get_color(), ms=3)
    a.set_xlabel("radius (arcsec)")
    a.set_ylabel("|kernel| / peak (x: negative)")
    a.set_ylim(1e-6, 2)
    a.legend(fontsize=8)
    a.set_title("kernels (central row)", fontsize=9)
    f = np.array([r["fwhm_arcsec"] for r in curve])
    nz = np.array([r["noise_mjysr"] for r in curve])
    ez = np.array([r["err_median_mjysr"] for r in curve])
    if f.size and np.isfinite(nz[0]) and nz[0] > 0:
        b.plot(f, nz / nz[0], "o-", label="measured noise (high-pass MAD)")
        b.plot(f, ez / ez[0], "s--", label="propagated ERR (median)")
        b.legend(fontsize=8)
    b.set_xlabel("Gaussian FWHM (arcsec)")
    b.set_ylabel("noise / native noise")
    b.set_yscale("log")
    b.set_title("noise against resolution (Figure 10)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# -- the task ----------------------------------------------------------------------------------
def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    from astropy.io import fits
    from astropy.table import Table

    from processing.common.psf import measure_fwhm

    t0 = time.time()
    p = PsfMatchingParameters(**params)
    outdir = Path(outdir)
    target, band, product = context["target"], context["band"], context["product"]
    wanted = dict(sorted(context["variants"].items(), key=lambda kv: kv[1]))
    mosaic, psf_path = Path(inputs["mosaic"][0]), Path(inputs["psf"][0])
    psf, psf_scale = read_psf(psf_path)
    psf_fwhm = measure_fwhm(K.circularise(K.centred_odd(psf)), psf_scale)
    written: list[Path] = []
    rows, kernels = [], {}
    with fits.open(mosaic, memmap=True, do_not_scale_image_data=True) as hdul:
        primary, sci_header = hdul[0].header.copy(), hdul["SCI"].header.copy()
        sci, err = hdul["SCI"].data, hdul["ERR"].data
        pixel = mosaic_pixel_arcsec(sci_header)
        source = K.to_pixel_scale(psf, psf_scale, pixel)
        refused = []
        plan = {}
        for variant, fwhm in wanted.items():
            try:
                plan[variant] = band_kernel(
                    source, pixel, fwhm, psf_fwhm, p, f'psf_matching {target} {band} to {fwhm:.2f}"'
                )
            except WorkFailed as exc:
                refused.append(str(exc))
        if refused:  # before any convolution: a refusal costs nothing
            raise WorkFailed("; ".join(refused))
        for variant, fwhm in wanted.items():
            t1 = time.time()
            kernel, w_minus, d, point = plan[variant]
            kernels[fwhm] = kernel
            record = {
                "HLSPDPF": (psf_path.name[:40], "PSF the kernel was made from"),
                "HLSPDPW": (round(w_minus, 5), "kernel negative weight W- (Aniano+2011)"),
                "HLSPDPD": (round(d, 5), "kernel residual D (Aniano+2011)"),
                "HLSPDPB": (fwhm, "[arcsec] Gaussian FWHM of this image"),
            }
            out = outdir / f"{product}_{variant}.fits"
            finite = write_convolved(
                out, primary, sci_header, sci, err, kernel, fwhm, record, p.min_coverage, p.tile_pixels, outdir
            )
            kfile = outdir / f"{product}_{variant}_kernel.fits"
            write_kernel(kfile, kernel, pixel, fwhm, w_minus, d, psf_path, band)
            written += [out, kfile]
            rows.append(
                {
                    "product": variant,
                    "fwhm_arcsec": fwhm,
                    "w_minus": w_minus,
                    "d": d,
                    "point_fwhm_arcsec": point,
                    "kernel_pixels": kernel.shape[0],
                    "finite_fraction": finite,
                    "seconds": round(time.time() - t1, 2),
                }
            )
            log.info(
                'psf_matching %s %s to %.2f": W- %.3f, D %.3f, point source %.4f", %.1f s',
                target,
                band,
                fwhm,
                w_minus,
                d,
                point,
                time.time() - t1,
            )
        curve = []
        if p.noise_curve_points:
            top = max(wanted.values())
            grid = np.geomspace(psf_fwhm * 1.25, top, p.noise_curve_points) if top > psf_fwhm * 1.25 else []
            fwhms = sorted({round(float(f), 3) for f in grid} | set(wanted.values()))
            curve = noise_curve(sci, err, source, pixel, psf_fwhm, fwhms, p)
    native = curve[0]["noise_mjysr"] if curve else float("nan")
    for r in rows:
        c = next((c for c in curve if c["fwhm_arcsec"] == r["fwhm_arcsec"]), None)
        r["noise_mjysr"] = c["noise_mjysr"] if c else float("nan")
        r["err_median_mjysr"] = c["err_median_mjysr"] if c else float("nan")
    rows += [
        {
            "product": "-",
            "fwhm_arcsec": c["fwhm_arcsec"],
            "w_minus": float("nan"),
            "d": float("nan"),
            "point_fwhm_arcsec": float("nan"),
            "kernel_pixels": 0,
            "finite_fraction": float("nan"),
            "seconds": 0.0,
            "noise_mjysr": c["noise_mjysr"],
            "err_median_mjysr": c["err_median_mjysr"],
        }
        for c in curve
        if c["fwhm_arcsec"] not in wanted.values()
    ]
    table = Table(rows=sorted(rows, key=lambda r: r["fwhm_arcsec"]))
    table.meta.update(
        {
            "target": target,
            "band": band,
            "psf": psf_path.name,
            "psf_fwhm_arcsec": round(psf_fwhm, 5),
            "pixel_arcsec": pixel,
            "native_noise_mjysr": native,
            "seconds": round(time.time() - t0, 2),
            "parameters": p.model_dump(),
            "noise": "1.4826 x MAD of the image minus its smoothing at 3 beams, over the faintest 30% of a "
            f"central {p.noise_cutout_pixels}-pixel cutout",
        }
    )
    tpath = outdir / f"{product}_psf_matching.ecsv"
    table.write(tpath, format="ascii.ecsv", overwrite=True)
    fig = outdir / f"{product}_psf_matching.png"
    plot(fig, f'{target} {band}: PSF {psf_fwhm:.3f}" ({psf_path.name}), {pixel:.3f}" pixels', kernels, pixel, curve)
    log.info("psf_matching %s %s: %d resolutions in %.1f s", target, band, len(wanted), time.time() - t0)
    return written + [tpath, fig]


STAGE = Stage(
    name="psf_matching",
    unit="target_band",
    inputs=(
        Input("mosaic", "same", "lv3", "_i2d.fits"),
        Input("psf", "manifest_file", files="processing.psf_matching.stage:psf_files"),
    ),
    outputs=("_{variant}.fits", "_{variant}_kernel.fits", "_psf_matching.ecsv", "_psf_matching.png"),
    run="processing.psf_matching.stage:run",
    parameters=ModelParameters(PsfMatchingParameters),
    products=(Product("img-{variant}", "_{variant}.fits"), Product("psf-matching", "_psf_matching.ecsv")),
    variants="processing.psf_matching.stage:variants",
    memory_gb=2.0,
    description="PSF matching: each mosaic convolved to the release's Gaussian resolutions with kernels from the "
    "band's PSF by the method of Aniano et al. (2011) (circularised PSFs, Fourier ratio under a low-pass "
    "filter); SCI and ERR (propagated) with the beam in BMAJ/BMIN/BPA",
)
