"""A complete, local CRDS cache for the synthetic instruments of :mod:`detectors`.

:func:`write_crds_context` writes, under ``CRDS_PATH``, a pipeline mapping (``jwst_NNNN.pmap``),
one instrument mapping per instrument, one reference mapping per reference type, and the
reference files themselves, all built from :mod:`processing.simulate.detectors` so that ramps
generated with that module calibrate back to the injected truth. With::

    CRDS_PATH=<crds_path> CRDS_MODE=local CRDS_CONTEXT=jwst_NNNN.pmap
    CRDS_SERVER_URL=https://jwst-serverless-mode.stsci.edu STPIPE_DISABLE_CRDS_STEPPARS=True

the official ``calwebb_detector1`` and ``calwebb_image2`` pipelines (jwst 3.0.0) run with no
override parameters and record ``crds://`` reference names and ``context_used``.

Layout (``ref_cache_subdir_mode`` = ``instrument``)::

    config/jwst/server_config
    config/jwst/ref_cache_subdir_mode
    mappings/jwst/jwst_NNNN.pmap
    mappings/jwst/jwst_<inst>_NNNN.imap
    mappings/jwst/jwst_<inst>_<type>_NNNN.rmap
    references/jwst/<inst>/jwst_<inst>_<type>_NNNN[_<detector>[_<filter or subarray>]].fits|asdf

Every reference type CRDS knows for JWST appears in each instrument mapping; the types this
module does not provide resolve to ``'N/A'`` (the steps asking for them then skip, see
:data:`PROVIDED_TYPES`).

Conventions of the synthetic references (the exposure simulator must follow them):

* All arrays are 0-based, DMS (science) orientation. They are full frame, except the darks of
  NIRCam subarrays, which are written at the subarray size and position (``meta.subarray``),
  and the references of a detector that the program uses in one subarray only (the demo's
  SUB640 and SUB320 NIRCam detectors): those are the full-frame arrays cut to that subarray
  (:func:`cut_to_subarray`), which jwst uses as they are (it matches SUBSTRT/SUBSIZE), except
  the pixel area map (:data:`_FULL_FRAME_ONLY`). The demo's NIRCam references are then 80 MB
  instead of 540 MB, and its rate and cal files are identical to those made with full frames.
* Reference pixels (``detectors.science_mask`` False) carry ``REFERENCE_PIXEL`` in the mask
  (not ``DO_NOT_USE``: the refpix step ignores ``DO_NOT_USE`` pixels) and
  ``REFERENCE_PIXEL | NO_FLAT_FIELD`` in the flat, so they end as ``DO_NOT_USE``/NaN in the
  cal products. Dead pixels (``detectors.bad_pixels``) are ``DO_NOT_USE | DEAD`` in the mask.
* Darks hold the accumulated dark signal in DN of frame ``k`` (0-based) as
  ``dark_rate * frame_time[subarray] * (k + 1)``, one frame per group (``nframes`` 1,
  ``groupgap`` 0); jwst averages them for other read patterns and extrapolates linearly past
  the last frame. NIRCam darks exist per (detector, subarray) in ``Detector.frame_time``.
* Linearity: ``corrected = raw + c2 raw**2 + c3 raw**3``. NIRCam applies it after superbias
  subtraction; MIRI has no superbias step, so for MIRI ``raw`` includes the bias level
  (raw = nonlinear(superbias + accumulated); otherwise the MIRI rate comes out ~4 % high).
* Ramps: sky/source signal on science pixels only, dark current on every pixel. MIRI
  subtracts the dark *before* its reference-pixel correction, so MIRI reference columns
  without dark current would bias every rate by +mean(dark_rate) (+5 % at 10 DN/s).
"""

from __future__ import annotations

import logging
import pprint
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processing.fileio import atomic_write_text, save_model_atomic
from processing.simulate import detectors

log = logging.getLogger(__name__)

__all__ = [
    "AUTHOR",
    "DARK_NFRAMES",
    "PROVIDED_TYPES",
    "USEAFTER",
    "context_serial",
    "cut_to_subarray",
    "write_crds_context",
]

#: ``meta.useafter`` of every reference file (ISO, UTC).
USEAFTER = "2022-01-01T00:00:00"
_RMAP_USEAFTER = USEAFTER.replace("T", " ")

#: ``meta.author`` of every reference file.
AUTHOR = "hlsp-release synthetic CRDS context (processing.simulate.crds_context)"

#: Number of frames in each dark reference (jwst extrapolates linearly beyond it).
DARK_NFRAMES = 10

#: ``meta.exposure.type`` of the imaging mode each instrument is calibrated for.
EXP_TYPES = {"NIRCAM": "NRC_IMAGE", "MIRI": "MIR_IMAGE"}

#: Reference types with real files, per instrument (every other type maps to 'N/A').
PROVIDED_TYPES = {
    "NIRCAM": (
        "mask",
        "saturation",
        "superbias",
        "linearity",
        "dark",
        "gain",
        "readnoise",
        "distortion",
        "filteroffset",
        "flat",
        "photom",
        "area",
    ),
    "MIRI": (
        "mask",
        "saturation",
        "linearity",
        "dark",
        "gain",
        "readnoise",
        "distortion",
        "filteroffset",
        "flat",
        "photom",
        "area",
    ),
}

_DETECTOR = "META.INSTRUMENT.DETECTOR"
_EXP_TYPE = "META.EXPOSURE.TYPE"
_FILTER = "META.INSTRUMENT.FILTER"
_PUPIL = "META.INSTRUMENT.PUPIL"
_SUBARRAY = "META.SUBARRAY.NAME"
_USEAFTER_KEYS = ("META.OBSERVATION.DATE", "META.OBSERVATION.TIME")

#: Match parameters of each reference mapping (UseAfter on date/time follows).
MATCH_KEYS = {
    "mask": (_DETECTOR,),
    "saturation": (_DETECTOR,),
    "superbias": (_DETECTOR,),
    "linearity": (_DETECTOR,),
    "dark": (_DETECTOR, _SUBARRAY),
    "gain": (_DETECTOR,),
    "readnoise": (_DETECTOR,),
    "distortion": (_DETECTOR, _EXP_TYPE),
    "filteroffset": (_DETECTOR, _EXP_TYPE),
    "photom": (_DETECTOR, _EXP_TYPE),
    "area": (_DETECTOR, _EXP_TYPE),
    ("flat", "NIRCAM"): (_DETECTOR, _EXP_TYPE, _FILTER, _PUPIL),
    ("flat", "MIRI"): (_DETECTOR, _EXP_TYPE, _FILTER),
}

_TEXT_DESCR = {
    "mask": "Bad Pixel Mask",
    "saturation": "Saturation",
    "superbias": "Super Bias",
    "linearity": "Linearity",
    "dark": "Dark Frame",
    "gain": "Gain",
    "readnoise": "Read Noise",
    "distortion": "Distortion",
    "filteroffset": "Filter Offset",
    "flat": "Flat Field",
    "photom": "Photometric Calibration",
    "area": "Pixel-Area Map",
}

_CONTEXT_RE = re.compile(r"^jwst_(\d+)\.pmap$")
_ARCSEC_PER_RAD = 206264.80624709636


@dataclass(frozen=True)
class _Entry:
    """One reference file and the rmap match values that select it."""

    instrument: str  # 'NIRCAM' / 'MIRI'
    filekind: str  # e.g. 'flat'
    match: tuple[str, ...]  # values of MATCH_KEYS, in order
    filename: str  # basename in references/jwst/<inst>/


def context_serial(context: str) -> str:
    """Return the serial number part of a pipeline-mapping name.

    Parameters
    ----------
    context : str
        Pipeline mapping name, ``jwst_<digits>.pmap``.

    Returns
    -------
    str
        The digits, e.g. ``'9001'`` for ``'jwst_9001.pmap'``.

    Raises
    ------
    ValueError
        If ``context`` is not of that form.
    """
    match = _CONTEXT_RE.match(context)
    if match is None:
        raise ValueError(f"context must look like 'jwst_9001.pmap', got {context!r}")
    return match.group(1)


def write_crds_context(
    crds_path: Path,
    context: str = "jwst_9001.pmap",
    bands: list[str] | None = None,
    *,
    dark_nframes: int = DARK_NFRAMES,
    subarrays: dict[str, list[str]] | None = None,
) -> Path:
    """Write a complete local CRDS cache for the synthetic NIRCam and MIRI detectors.

    Parameters
    ----------
    crds_path : pathlib.Path
        Root of the cache (the value of ``CRDS_PATH``); created if missing. Files of the same
        names are replaced (each file is written to a temporary name in its directory and
        moved into place).
    context : str, optional
        Name of the pipeline mapping, ``jwst_<serial>.pmap``; the serial also names the
        instrument and reference mappings and the reference files.
    bands : list of str, optional
        Filters (keys of ``detectors.FILTERS``) that get flats and photom rows; default all.
        A detector with none of them gets no flat or photom reference.
    dark_nframes : int, optional
        Frames in each dark reference (>= 2). Science exposures with more frames still
        calibrate: jwst extrapolates the (linear) dark.
    subarrays : dict of str to list of str, optional
        Per detector name, the subarrays (names in ``Detector.frame_time``) the program uses:
        they get darks, and a detector used in exactly one subarray other than FULL gets every
        reference cut to it (a subarray-only program needs none of the full-frame arrays: the
        demo's NIRCam references are 80 MB instead of 540 MB). Default: every subarray, full
        frames.

    Returns
    -------
    pathlib.Path
        Path of the written pipeline mapping, ``crds_path/mappings/jwst/<context>``.

    Raises
    ------
    ValueError
        If ``context`` is malformed, a band is unknown, or ``dark_nframes`` < 2.
    """
    serial = context_serial(context)
    if bands is None:
        bands = list(detectors.FILTERS)
    unknown = sorted(set(bands) - set(detectors.FILTERS))
    if unknown:
        raise ValueError(f"unknown bands {unknown}; known: {sorted(detectors.FILTERS)}")
    if dark_nframes < 2:
        raise ValueError("dark_nframes must be at least 2")

    crds_path = Path(crds_path)
    cfg_dir = crds_path / "config" / "jwst"
    map_dir = crds_path / "mappings" / "jwst"
    for directory in (cfg_dir, map_dir):
        directory.mkdir(parents=True, exist_ok=True)

    # crds creates these lazily without exist_ok: two pipeline processes starting together
    # race on them (FileExistsError), so they exist from the start
    for inst in ("fgs", "miri", "nircam", "niriss", "nirspec", "system"):
        (crds_path / "references" / "jwst" / inst).mkdir(parents=True, exist_ok=True)

    entries: list[_Entry] = []
    for det_name, det in detectors.DETECTORS.items():
        det_bands = [b for b in detectors.FILTERS if b in bands and detectors.FILTERS[b]["detector"] == det_name]
        ref_dir = crds_path / "references" / "jwst" / det.instrument.lower()
        ref_dir.mkdir(parents=True, exist_ok=True)
        det_subs = [n for n in det.frame_time if subarrays is None or n in subarrays.get(det_name, [])]
        only = det_subs[0] if len(det_subs) == 1 and det_subs[0] != "FULL" else None
        entries += _write_detector_references(ref_dir, serial, det, det_bands, dark_nframes, det_subs, only)

    mapping_names = _write_mappings(map_dir, serial, context, entries)
    _write_text(cfg_dir / "ref_cache_subdir_mode", "instrument")
    _write_text(cfg_dir / "server_config", pprint.pformat(_server_info(context, mapping_names)) + "\n")
    log.info("wrote CRDS context %s with %d reference files under %s", context, len(entries), crds_path)
    return map_dir / context


# ------------------------------------------------------------------------------------------
# Reference files
# ------------------------------------------------------------------------------------------


def _ref_name(instrument: str, filekind: str, serial: str, *parts: str, ext: str = "fits") -> str:
    """``jwst_<inst>_<type>_<serial>[_<part>...].<ext>``, lower case."""
    tail = "".join(f"_{p.lower()}" for p in parts)
    return f"jwst_{instrument.lower()}_{filekind}_{serial}{tail}.{ext}"


def _write_detector_references(
    ref_dir: Path,
    serial: str,
    det: detectors.Detector,
    bands: list[str],
    dark_nframes: int,
    subarrays: list[str],
    only: str | None = None,
) -> list[_Entry]:
    """Write all reference files of one detector; return their mapping entries. ``only``: the
    one subarray the program uses, to which every full-frame reference is cut."""
    inst, name = det.instrument, det.name
    exp_type = EXP_TYPES[inst]
    entries: list[_Entry] = []
    geo = _subarray_geometry(det, only) if only else None

    def add(filekind: str, model, match: tuple[str, ...], *parts: str, ext: str = "fits") -> None:
        filename = _ref_name(inst, filekind, serial, *parts, ext=ext)
        if geo is not None and ext == "fits" and filekind not in _FULL_FRAME_ONLY:
            cut_to_subarray(model, det, only, geo)
        _save_model(model, ref_dir / filename)
        model.close()
        entries.append(_Entry(inst, filekind, match, filename))

    add("mask", _mask_model(det), (name,), name)
    add("saturation", _saturation_model(det), (name,), name)
    if inst == "NIRCAM":
        add("superbias", _superbias_model(det), (name,), name)
    add("linearity", _linearity_model(det), (name,), name)
    for sub_name in subarrays:
        add("dark", _dark_model(det, sub_name, dark_nframes), (name, sub_name), name, sub_name)
    add("gain", _gain_model(det), (name,), name)
    add("readnoise", _readnoise_model(det), (name,), name)
    add("distortion", _distortion_model(det), (name, exp_type), name, ext="asdf")
    add("filteroffset", _filteroffset_model(det), (name, exp_type), name, ext="asdf")
    for band in bands:
        if inst == "NIRCAM":
            match = (name, exp_type, band, detectors.FILTERS[band]["pupil"])
        else:
            match = (name, exp_type, band)
        add("flat", _flat_model(det, band), match, name, band)
    if bands:
        add("photom", _photom_model(det, bands), (name, exp_type), name)
    add("area", _area_model(det), (name, exp_type), name)
    return entries


def _set_meta(model, det: detectors.Detector, reftype: str, description: str, *, full_frame: bool = True) -> None:
    """Fill the CRDS/jwst reference-file metadata common to every reference."""
    m = model.meta
    m.reftype = reftype.upper()
    m.telescope = "JWST"
    m.author = AUTHOR
    m.pedigree = "DUMMY"
    m.useafter = USEAFTER
    m.description = description
    m.instrument.name = det.instrument
    m.instrument.detector = det.name
    if det.instrument == "NIRCAM":
        m.instrument.channel = det.channel
        m.instrument.module = "A"
    m.exposure.type = EXP_TYPES[det.instrument]
    if full_frame and "subarray" in _schema_properties(model):
        ny, nx = det.shape
        m.subarray.name = "FULL"
        m.subarray.xstart = 1
        m.subarray.ystart = 1
        m.subarray.xsize = nx
        m.subarray.ysize = ny


def _schema_properties(model) -> set[str]:
    """Names of the ``meta`` properties the model's schema defines."""
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            meta = node.get("properties", {}).get("meta", {})
            names.update(meta.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(model.schema)
    return names


def _dq_flag(*names: str) -> int:
    """OR of the jwst pixel DQ flags ``names``."""
    from stdatamodels.jwst.datamodels import dqflags

    value = 0
    for n in names:
        value |= dqflags.pixel[n]
    return value


def _dq_def(names: list[str]):
    """``dq_def`` table (BIT, VALUE, NAME, DESCRIPTION) describing the flags ``names``."""
    from stdatamodels.jwst.datamodels import dqflags

    rows = []
    for n in names:
        value = dqflags.pixel[n]
        rows.append((int(value).bit_length() - 1, value, n, n.replace("_", " ").capitalize()))
    return np.array(rows, dtype=[("BIT", "<i4"), ("VALUE", "<u4"), ("NAME", "S40"), ("DESCRIPTION", "S80")])


def _mask_model(det: detectors.Detector):
    """Bad-pixel mask: DO_NOT_USE|DEAD on dead pixels, REFERENCE_PIXEL (only) on the border."""
    from stdatamodels.jwst.datamodels import MaskModel

    dq = np.zeros(det.shape, np.uint32)
    dq[~detectors.science_mask(det.name)] = _dq_flag("REFERENCE_PIXEL")
    dq[detectors.bad_pixels(det.name)] = _dq_flag("DO_NOT_USE", "DEAD")
    model = MaskModel(dq=dq, dq_def=_dq_def(["DO_NOT_USE", "DEAD", "REFERENCE_PIXEL"]))
    _set_meta(model, det, "mask", "Synthetic bad pixel mask: dead pixels and reference pixels")
    return model


def _saturation_model(det: detectors.Detector):
    """Uniform saturation level in raw DN (bias included)."""
    from stdatamodels.jwst.datamodels import SaturationModel

    data = np.full(det.shape, det.saturation, np.float32)
    model = SaturationModel(data=data, dq=np.zeros(det.shape, np.uint32))
    _set_meta(model, det, "saturation", f"Synthetic saturation level, {det.saturation:g} DN (raw)")
    return model


def _superbias_model(det: detectors.Detector):
    """``detectors.superbias`` in DN (NIRCam only: MIRI detector1 has no superbias step)."""
    from stdatamodels.jwst.datamodels import SuperBiasModel

    data = np.asarray(detectors.superbias(det.name), np.float32)
    model = SuperBiasModel(data=data, err=np.zeros(det.shape, np.float32), dq=np.zeros(det.shape, np.uint32))
    _set_meta(model, det, "superbias", "Synthetic superbias, DN")
    return model


def _linearity_model(det: detectors.Detector):
    """Polynomial coefficients (4, ny, nx) of ``detectors.linearity_coeffs``, DN -> DN."""
    from stdatamodels.jwst.datamodels import LinearityModel

    coeffs = np.asarray(detectors.linearity_coeffs(det.name), np.float32)
    model = LinearityModel(coeffs=coeffs, dq=np.zeros(det.shape, np.uint32))
    c2, c3 = det.linearity
    _set_meta(model, det, "linearity", f"Synthetic linearity, corrected = raw + {c2:g} raw^2 + {c3:g} raw^3 (DN)")
    return model


def _subarray_geometry(det: detectors.Detector, sub_name: str) -> dict:
    """1-based xstart/ystart and shape of a named subarray of ``det`` (from detectors.SUBARRAYS)."""
    if sub_name == "FULL":
        return {"xstart": 1, "ystart": 1, "shape": det.shape}
    for (det_name, size), (name, _aperture) in detectors.SUBARRAYS.items():
        if det_name == det.name and name == sub_name:
            return detectors.subarray(det.name, size)
    raise ValueError(f"subarray {sub_name!r} of {det.name} is not in detectors.SUBARRAYS")


#: references jwst needs full frame whatever the science subarray: photom cuts the pixel area
#: map at the science SUBSTRT without looking at the reference's own (jwst 1.x-3.0
#: ``photom.save_area_info``: a subarray area map gives an empty AREA extension); the darks are
#: written per subarray already
_FULL_FRAME_ONLY = ("area", "dark")


def cut_to_subarray(model, det: detectors.Detector, sub_name: str, geo: dict | None = None):
    """Cut a full-frame reference model to one subarray, in place.

    Parameters
    ----------
    model : stdatamodels.DataModel
        A reference whose image arrays end in the detector's full-frame shape ``(ny, nx)``
        (``(..., ny, nx)``: data, dq, err, linearity coefficients); tables and scalars stay.
    det : Detector
        Its detector.
    sub_name : str
        The subarray (a key of ``det.frame_time``).
    geo : dict, optional
        ``{"xstart", "ystart", "shape"}`` (1-based start, pixels); default from ``sub_name``.

    Returns
    -------
    model : stdatamodels.DataModel
        The same model, each full-frame array replaced by ``array[..., y0:y0 + ny, x0:x0 + nx]``
        and ``meta.subarray`` naming the subarray, so that jwst's ``ref_matches_sci`` uses it
        as is.
    """
    geo = geo or _subarray_geometry(det, sub_name)
    ny, nx = geo["shape"]
    y0, x0 = geo["ystart"] - 1, geo["xstart"] - 1
    for name in ("data", "dq", "err", "coeffs"):
        arr = model.instance.get(name)
        if isinstance(arr, np.ndarray) and arr.ndim >= 2 and arr.shape[-2:] == tuple(det.shape):
            setattr(model, name, np.ascontiguousarray(arr[..., y0 : y0 + ny, x0 : x0 + nx]))
    if "subarray" in _schema_properties(model):
        m = model.meta.subarray
        m.name, m.xstart, m.ystart, m.xsize, m.ysize = sub_name, geo["xstart"], geo["ystart"], nx, ny
    return model


def _dark_model(det: detectors.Detector, sub_name: str, nframes: int):
    """Dark reference of one (detector, subarray): accumulated dark DN per frame."""
    from stdatamodels.jwst.datamodels import DarkMIRIModel, DarkModel

    geo = _subarray_geometry(det, sub_name)
    ny, nx = geo["shape"]
    y0, x0 = geo["ystart"] - 1, geo["xstart"] - 1
    rate = np.asarray(detectors.dark_rate(det.name), np.float64)[y0 : y0 + ny, x0 : x0 + nx]
    frame_time = det.frame_time[sub_name]
    k = np.arange(1, nframes + 1, dtype=np.float64)[:, None, None]
    cube = (rate[None] * frame_time * k).astype(np.float32)
    if det.instrument == "MIRI":
        model = DarkMIRIModel(data=cube[None], dq=np.zeros((1, 1, ny, nx), np.uint32))
        readpatt = "FAST"
    else:
        model = DarkModel(data=cube, dq=np.zeros((ny, nx), np.uint32))
        readpatt = "RAPID"
    _set_meta(
        model,
        det,
        "dark",
        f"Synthetic dark, {sub_name}: dark_rate (DN/s) x {frame_time:g} s x frame number",
        full_frame=False,
    )
    m = model.meta
    m.subarray.name = sub_name
    m.subarray.xstart = geo["xstart"]
    m.subarray.ystart = geo["ystart"]
    m.subarray.xsize = nx
    m.subarray.ysize = ny
    m.exposure.readpatt = readpatt
    m.exposure.nframes = 1
    m.exposure.groupgap = 0
    m.exposure.ngroups = nframes
    m.exposure.nints = 1
    # Scalar mean dark current in e-/s (the Poisson term of the ramp fit). A 2-D
    # ``average_dark_current`` array is ignored by jwst 3.0.0 with a shape warning, because an
    # uncal RampModel has no such array allocated.
    m.exposure.average_dark_current = float(np.mean(rate) * det.gain)
    return model


def _gain_model(det: detectors.Detector):
    """Uniform gain in e-/DN."""
    from stdatamodels.jwst.datamodels import GainModel

    model = GainModel(data=np.full(det.shape, det.gain, np.float32))
    _set_meta(model, det, "gain", f"Synthetic gain, {det.gain:g} e-/DN")
    return model


def _readnoise_model(det: detectors.Detector):
    """Uniform read noise in DN per read (CDS noise / sqrt 2)."""
    from stdatamodels.jwst.datamodels import ReadnoiseModel

    model = ReadnoiseModel(data=np.full(det.shape, det.readnoise, np.float32))
    _set_meta(model, det, "readnoise", f"Synthetic read noise, {det.readnoise:g} DN per read")
    return model


def _distortion_model(det: detectors.Detector):
    """Linear full-frame detector (0-based pixels) -> V2/V3 (arcsec) transform."""
    from astropy import units as u
    from astropy.modeling.models import AffineTransformation2D, Shift
    from stdatamodels.jwst.datamodels import DistortionModel

    geo = detectors.geometry(det.name)
    transform = (
        (Shift(-geo.xref) & Shift(-geo.yref))
        | AffineTransformation2D(matrix=geo.matrix(), translation=[0.0, 0.0])
        | (Shift(geo.v2ref) & Shift(geo.v3ref))
    )
    transform.name = f"{det.name}_det_to_v2v3"
    transform.inputs = ("x", "y")
    transform.outputs = ("v2", "v3")
    model = DistortionModel(model=transform)
    model.meta.input_units = u.pix
    model.meta.output_units = u.arcsec
    _set_meta(
        model,
        det,
        "distortion",
        f"Synthetic linear distortion from SIAF {det.full_aperture}: 0-based full-frame pixels to V2/V3 arcsec",
    )
    if det.instrument == "NIRCAM":
        model.meta.instrument.pupil = "CLEAR"
        model.meta.instrument.p_pupil = "CLEAR|"
    return model


def _filteroffset_model(det: detectors.Detector):
    """Zero filter offsets for every filter of ``det`` (DN pixels)."""
    from astropy import units as u
    from stdatamodels.jwst.datamodels import FilteroffsetModel

    rows = []
    for band, spec in detectors.FILTERS.items():
        if spec["detector"] != det.name:
            continue
        row = {"filter": band, "column_offset": 0.0, "row_offset": 0.0}
        if spec["pupil"] is not None:
            row["pupil"] = spec["pupil"]
        rows.append(row)
    model = FilteroffsetModel(filters=rows, instrument=det.instrument)
    model.meta.input_units = u.pix
    _set_meta(model, det, "filteroffset", "Synthetic filter offsets: zero for every filter")
    return model


def _flat_model(det: detectors.Detector, band: str):
    """``detectors.flat`` (unitless, mean 1); reference pixels flagged NO_FLAT_FIELD."""
    from stdatamodels.jwst.datamodels import FlatModel

    data = np.asarray(detectors.flat(det.name, band), np.float32)
    dq = np.zeros(det.shape, np.uint32)
    dq[~detectors.science_mask(det.name)] = _dq_flag("REFERENCE_PIXEL", "NO_FLAT_FIELD")
    model = FlatModel(
        data=data,
        dq=dq,
        err=np.zeros(det.shape, np.float32),
        dq_def=_dq_def(["DO_NOT_USE", "NO_FLAT_FIELD", "REFERENCE_PIXEL"]),
    )
    _set_meta(model, det, "flat", f"Synthetic flat field for {band}, mean 1")
    model.meta.instrument.filter = band
    if detectors.FILTERS[band]["pupil"] is not None:
        model.meta.instrument.pupil = detectors.FILTERS[band]["pupil"]
    return model


def _pixel_area(det: detectors.Detector) -> tuple[float, float]:
    """Nominal pixel area as (steradian, arcsec**2)."""
    sr = detectors.pixel_area_sr(det.name)
    return sr, sr * _ARCSEC_PER_RAD**2


def _photom_model(det: detectors.Detector, bands: list[str]):
    """Photom table: photmjsr (MJy/sr per DN/s) for each band of ``det``."""
    from stdatamodels.jwst.datamodels import MirImgPhotomModel, NrcImgPhotomModel

    sr, a2 = _pixel_area(det)
    if det.instrument == "NIRCAM":
        dtype = [("filter", "S12"), ("pupil", "S12"), ("photmjsr", "<f4"), ("uncertainty", "<f4")]
        rows = [
            (
                b,
                detectors.FILTERS[b]["pupil"],
                detectors.FILTERS[b]["photmjsr"],
                1e-3 * detectors.FILTERS[b]["photmjsr"],
            )
            for b in bands
        ]
        model = NrcImgPhotomModel(phot_table=np.array(rows, dtype=dtype))
    else:
        dtype = [("filter", "S12"), ("subarray", "S17"), ("photmjsr", "<f4"), ("uncertainty", "<f4")]
        # one row per known subarray (jwst matches FILTER and SUBARRAY first, quietly) and a
        # 'GENERIC' row that jwst falls back to for any other subarray
        subarrays = [*det.frame_time, "GENERIC"]
        rows = [
            (b, sub, detectors.FILTERS[b]["photmjsr"], 1e-3 * detectors.FILTERS[b]["photmjsr"])
            for b in bands
            for sub in subarrays
        ]
        model = MirImgPhotomModel(phot_table=np.array(rows, dtype=dtype))
    _set_meta(model, det, "photom", "Synthetic photometric conversion, MJy/sr per DN/s")
    model.meta.photometry.pixelarea_steradians = sr
    model.meta.photometry.pixelarea_arcsecsq = a2
    return model


def _area_model(det: detectors.Detector):
    """Pixel area map relative to the nominal area (all ones: the distortion is linear)."""
    from stdatamodels.jwst.datamodels import PixelAreaModel

    sr, a2 = _pixel_area(det)
    model = PixelAreaModel(data=np.ones(det.shape, np.float32))
    _set_meta(model, det, "area", "Synthetic pixel area map, relative to the nominal pixel area")
    model.meta.photometry.pixelarea_steradians = sr
    model.meta.photometry.pixelarea_arcsecsq = a2
    return model


def _save_model(model, path: Path) -> None:
    """Save a datamodel atomically, keeping ``meta.filename`` equal to the final name."""
    save_model_atomic(model, path)
    log.debug("wrote %s", path)


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


# ------------------------------------------------------------------------------------------
# Mappings
# ------------------------------------------------------------------------------------------


def _all_filekinds() -> list[str]:
    """Every JWST reference type CRDS knows (including step-parameter types)."""
    from crds.jwst import TYPES

    return sorted(k for k in TYPES.filekinds if k != "all")


def _format_header(header: dict) -> str:
    """Mapping header as crds writes it: sorted keys, one ``'key' : repr(value),`` a line."""
    lines = ["header = {"]
    for key in sorted(header):
        lines.append(f"    {key!r} : {header[key]!r},")
    lines.append("}")
    return "\n".join(lines)


def _with_checksum(text: str) -> str:
    """Fill the ``sha1sum`` header line the way crds computes it (sha1 of all other lines)."""
    from crds.core import utils

    body = "".join(line for line in text.splitlines(True) if "sha1sum" not in line)
    return text.replace("'sha1sum' : 'TBD'", f"'sha1sum' : {utils.str_checksum(body)!r}")


def _rmap_text(name: str, instrument: str, filekind: str, entries: list[_Entry]) -> str:
    """Reference mapping: Match on :data:`MATCH_KEYS`, then UseAfter :data:`USEAFTER`."""
    keys = MATCH_KEYS.get((filekind, instrument), MATCH_KEYS.get(filekind))
    ext = {e.filename.rsplit(".", 1)[1] for e in entries} or {"fits"}
    header = {
        "classes": ("Match", "UseAfter"),
        "derived_from": "generated by processing.simulate.crds_context",
        "file_ext": "." + sorted(ext)[0],
        "filekind": filekind.upper(),
        "filetype": filekind.upper(),
        "instrument": instrument,
        "mapping": "REFERENCE",
        "name": name,
        "observatory": "JWST",
        "parkey": (keys, _USEAFTER_KEYS),
        "sha1sum": "TBD",
        "suffix": filekind,
        "text_descr": _TEXT_DESCR[filekind],
    }
    lines = [_format_header(header), "", "selector = Match({"]
    for e in sorted(entries, key=lambda e: e.match):
        key = repr(e.match[0]) if len(e.match) == 1 else repr(tuple(e.match))
        lines.append(f"    {key} : UseAfter({{")
        lines.append(f"        {_RMAP_USEAFTER!r} : {e.filename!r},")
        lines.append("    }),")
    lines.append("})")
    return _with_checksum("\n".join(lines) + "\n")


def _imap_text(name: str, instrument: str, rmaps: dict[str, str]) -> str:
    """Instrument mapping: every JWST reference type, 'N/A' unless in ``rmaps``."""
    header = {
        "derived_from": "generated by processing.simulate.crds_context",
        "instrument": instrument,
        "mapping": "INSTRUMENT",
        "name": name,
        "observatory": "JWST",
        "parkey": ("REFTYPE",),
        "sha1sum": "TBD",
    }
    lines = [_format_header(header), "", "selector = {"]
    for filekind in sorted(set(_all_filekinds()) | set(rmaps)):
        lines.append(f"    {filekind!r} : {rmaps.get(filekind, 'N/A')!r},")
    lines.append("}")
    return _with_checksum("\n".join(lines) + "\n")


def _pmap_text(name: str, imaps: dict[str, str]) -> str:
    """Pipeline mapping: META.INSTRUMENT.NAME -> instrument mapping."""
    header = {
        "derived_from": "generated by processing.simulate.crds_context",
        "mapping": "PIPELINE",
        "name": name,
        "observatory": "JWST",
        "parkey": ("META.INSTRUMENT.NAME",),
        "sha1sum": "TBD",
    }
    lines = [_format_header(header), "", "selector = {"]
    for instrument in sorted(imaps):
        lines.append(f"    {instrument!r} : {imaps[instrument]!r},")
    lines.append("}")
    return _with_checksum("\n".join(lines) + "\n")


def _write_mappings(map_dir: Path, serial: str, context: str, entries: list[_Entry]) -> list[str]:
    """Write rmaps, imaps and the pmap; return all mapping names."""
    written: list[str] = []
    imaps: dict[str, str] = {}
    for instrument in sorted({e.instrument for e in entries}):
        rmaps: dict[str, str] = {}
        for filekind in PROVIDED_TYPES[instrument]:
            kind_entries = [e for e in entries if e.instrument == instrument and e.filekind == filekind]
            if not kind_entries:
                continue
            name = f"jwst_{instrument.lower()}_{filekind}_{serial}.rmap"
            _write_text(map_dir / name, _rmap_text(name, instrument, filekind, kind_entries))
            rmaps[filekind] = name
            written.append(name)
        name = f"jwst_{instrument.lower()}_{serial}.imap"
        _write_text(map_dir / name, _imap_text(name, instrument, rmaps))
        imaps[instrument] = name
        written.append(name)
    _write_text(map_dir / context, _pmap_text(context, imaps))
    written.append(context)
    return sorted(written)


def _server_info(context: str, mappings: list[str]) -> dict:
    """The cached 'server info' crds reads in local, unconnected mode."""
    import crds

    return {
        "observatory": "jwst",
        "operational_context": context,
        "edit_context": context,
        "versions_context": context,
        "last_synced": _RMAP_USEAFTER,
        "connected": False,
        "status": "cache",
        "force_remote_mode": False,
        "crds_version": {"str": crds.__version__},
        "mappings": mappings,
        "bad_files": "",
        "bad_files_list": [],
        "reference_url": "none",
        "mapping_url": "none",
    }
