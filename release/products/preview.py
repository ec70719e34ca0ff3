"""``img-preview``: a PNG of each released mosaic (asinh stretch, RA/Dec axes, a colour bar in
MJy/sr), drawn from the ``img`` file this release wrote; when ``products.previews`` asks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from release.products import ProductType


def write_preview(img: Path, dest: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
    from astropy.wcs import WCS

    from processing.fileio import atomic_path

    with fits.open(img, memmap=True) as hdul:
        sci = hdul["SCI"]
        step = max(1, int(np.ceil(max(sci.shape) / 1000)))  # at most ~1000 pixels a side
        small = np.asarray(sci.data[::step, ::step], float)
        wcs = WCS(sci.header).celestial[::step, ::step]
    finite = small[np.isfinite(small)]
    norm = ImageNormalize(
        finite if finite.size else np.zeros(1), interval=PercentileInterval(99.5), stretch=AsinhStretch(0.05)
    )
    fig = plt.figure(figsize=(7.5, 6.5 * small.shape[0] / small.shape[1] + 0.8), dpi=110)
    ax = fig.add_subplot(projection=wcs)
    im = ax.imshow(small, origin="lower", cmap="inferno", norm=norm, interpolation="nearest")
    ax.set_xlabel("RA (ICRS)")
    ax.set_ylabel("Dec (ICRS)")
    ax.coords.grid(color="white", alpha=0.25, linestyle=":")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="surface brightness (MJy/sr, asinh stretch)")
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.getvalue())


def write(ctx, unit) -> None:
    img = ctx.written("img", unit.target, unit.band)
    write_preview(img, ctx.dest(unit), f"{ctx.m.targets[unit.target].designation or unit.target} {unit.band}")


def check(ctx, rel: str, path: Path, hdul=None) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
            ok = im.format == "PNG" and im.size[0] > 0 and im.size[1] > 0
        ctx.report.add(
            rel, "preview readable", None if ok else f"is a {im.format} image of {im.size}, not a PNG preview"
        )
    except Exception as exc:
        ctx.report.add(
            rel,
            "preview readable",
            f"is not a readable image ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
        )


README = "*_img-preview.png: a preview of each mosaic (asinh stretch).\n"

PREVIEW = ProductType(
    "img-preview",
    "png",
    "band",
    write,
    checks=(check,),
    readme=README,
    source="img",
    wanted=lambda m: m.products.previews,
)
