"""NIRCam readout geometry: which way a detector is read (the fast axis) and which pixels each
amplifier reads, from a file's header; and the DQ bits that make a pixel unusable. Shared by
the two destriping stages (processing/destripe.py, processing/destripe_multi.py).
"""

from __future__ import annotations

#: Full-frame size and amplifier count of a NIRCam detector along the fast axis.
FULL_FAST = 2048
FULL_AMPLIFIERS = 4
#: jwst DQ bits that make a pixel unusable for a measurement.
DO_NOT_USE = 1
REFERENCE_PIXEL = 2**31


def amplifier_slices(n_fast: int, start: int = 1, noutputs: int | None = None) -> list[slice]:
    """The amplifiers along the fast axis of an array.

    Parameters
    ----------
    n_fast : int
        Pixels along the fast axis.
    start : int
        1-based position of the array's first pixel in the full frame along the fast axis
        (SUBSTRT1 for NIRCam).
    noutputs : int or None
        Amplifiers read out (NOUTPUTS); None: four for a full-width array, else one.

    Returns
    -------
    list of slice
        Index ranges along the fast axis, one per amplifier the array touches.
    """
    if noutputs is None:
        noutputs = FULL_AMPLIFIERS if n_fast == FULL_FAST else 1
    if noutputs == 1:
        return [slice(0, n_fast)]
    width = FULL_FAST // noutputs
    out = []
    for a in range(noutputs):
        lo, hi = a * width - (start - 1), (a + 1) * width - (start - 1)
        lo, hi = max(lo, 0), min(hi, n_fast)
        if hi > lo:
            out.append(slice(lo, hi))
    return out


def fast_axis_is_x(fastaxis: int | None) -> bool:
    """Whether the fast-read direction runs along x (stripes along rows), from FASTAXIS.

    NIRCam in science orientation reads along x (FASTAXIS = +-1) on every detector."""
    return fastaxis is None or abs(int(fastaxis)) == 1


def readout_geometry(model) -> tuple[bool, list[slice]]:
    """(fast axis along x, amplifier slices along the fast axis) of a NIRCam rate or cal model."""
    along_x = fast_axis_is_x(model.meta.subarray.fastaxis)
    ny, nx = model.data.shape[-2:]
    n_fast = nx if along_x else ny
    start = (model.meta.subarray.xstart if along_x else model.meta.subarray.ystart) or 1
    noutputs = getattr(model.meta.exposure, "noutputs", None)
    return along_x, amplifier_slices(n_fast, int(start), noutputs)
