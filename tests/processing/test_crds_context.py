"""The synthetic CRDS context: CRDS resolves it offline, and jwst 3.0.0 calibrates with it.

The session fixture writes the context once into a temporary ``CRDS_PATH`` and points crds at
it (``CRDS_MODE=local``, serverless URL, no step-parameter references). Tiny synthetic ramps
built from :mod:`processing.simulate.detectors` then go through ``calwebb_detector1`` and
``calwebb_image2``; the cal products must give back the injected 10 DN/s times ``photmjsr``,
which only happens if every reference is consistent with the truth module.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from processing.simulate import detectors as D
from processing.simulate.crds_context import (
    PROVIDED_TYPES,
    _linearity_model,
    _mask_model,
    context_serial,
    cut_to_subarray,
    write_crds_context,
)
from tests.conftest import pipeline_fixture

CONTEXT = "jwst_9001.pmap"
BANDS = ["F200W", "F300M", "F770W"]
CASES = [("NRCA1", "F200W"), ("NRCALONG", "F300M"), ("MIRIMAGE", "F770W")]
SIGNAL = 10.0  # DN/s injected on every science pixel (before the flat)
NGROUPS = 5
DARK_NFRAMES = 3

DETECTOR1_TYPES = ["mask", "saturation", "superbias", "linearity", "dark", "gain", "readnoise"]
IMAGE2_TYPES = ["distortion", "filteroffset", "flat", "photom", "area"]
NA_TYPES = [
    "ipc",
    "refpix",
    "sirskernel",
    "reset",
    "rscd",
    "persat",
    "trapdensity",
    "trappars",
    "pictureframe",
    "emicorr",
    "specwcs",
    "regions",
    "wavelengthrange",
    "camera",
    "fflat",
    "sflat",
    "dflat",
    "apcorr",
    "abvegaoffset",
    "pars-detector1pipeline",
    "pars-image2pipeline",
]


@pipeline_fixture(scope="session")
def crds_cache(tmp_path_factory):
    """Write the context once and configure crds (in this process) to use it."""
    root = tmp_path_factory.mktemp("crds_cache")
    # short darks: the 5-group ramps then also exercise jwst's linear dark extrapolation
    pmap = write_crds_context(root, CONTEXT, bands=BANDS, dark_nframes=DARK_NFRAMES)
    assert pmap == root / "mappings" / "jwst" / CONTEXT

    from crds.core import utils

    mp = pytest.MonkeyPatch()
    mp.setenv("CRDS_PATH", str(root))
    mp.setenv("CRDS_MODE", "local")
    mp.setenv("CRDS_CONTEXT", CONTEXT)
    mp.setenv("CRDS_SERVER_URL", "https://jwst-serverless-mode.stsci.edu")
    mp.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "True")
    utils.clear_function_caches()  # crds caches the configuration and loaded mappings
    yield root
    mp.undo()
    utils.clear_function_caches()
    shutil.rmtree(root, ignore_errors=True)  # ~0.6 GB of full-frame references


def _header(detector: str, band: str) -> dict:
    det = D.DETECTORS[detector]
    header = {
        "META.INSTRUMENT.NAME": det.instrument,
        "META.INSTRUMENT.DETECTOR": detector,
        "META.INSTRUMENT.FILTER": band,
        "META.EXPOSURE.TYPE": "NRC_IMAGE" if det.instrument == "NIRCAM" else "MIR_IMAGE",
        "META.EXPOSURE.READPATT": "RAPID" if det.instrument == "NIRCAM" else "FASTR1",
        "META.SUBARRAY.NAME": D.subarray(detector, "demo")["name"],
        "META.OBSERVATION.DATE": "2023-01-01",
        "META.OBSERVATION.TIME": "00:00:00",
    }
    if det.instrument == "NIRCAM":
        header["META.INSTRUMENT.PUPIL"] = D.FILTERS[band]["pupil"]
        header["META.INSTRUMENT.CHANNEL"] = det.channel
    return header


def make_uncal(detector: str, band: str, ngroups: int = NGROUPS):
    """A minimal uncal ramp of the 'demo' subarray with a flat ``SIGNAL`` DN/s sky.

    Built the way the pipeline undoes it: rate = SIGNAL * flat on science pixels (nothing on
    reference pixels) plus dark_rate on every pixel; one frame per group read at
    ``(k + 1) * frame_time``; NIRCam raw = superbias + nonlinear(signal), MIRI (no superbias
    step) raw = nonlinear(superbias + signal); rounded to uint16 values. Returns the
    ``RampModel`` (jwst refuses an in-memory ``Level1bModel``) and the science-pixel mask.
    """
    from stdatamodels.jwst import datamodels

    det = D.DETECTORS[detector]
    sub = D.subarray(detector, "demo")
    ny, nx = sub["shape"]
    y0, x0 = sub["ystart"] - 1, sub["xstart"] - 1
    cut = (slice(y0, y0 + ny), slice(x0, x0 + nx))
    frame_time = det.frame_time[sub["name"]]
    times = frame_time * np.arange(1, ngroups + 1)

    science = D.science_mask(detector)[cut]
    rate = SIGNAL * D.flat(detector, band)[cut].astype(float) * science + D.dark_rate(detector)[cut]
    accumulated = rate[None] * times[:, None, None]
    bias = D.superbias(detector)[cut].astype(float)
    if det.instrument == "NIRCAM":
        raw = bias + D.apply_nonlinearity(accumulated, detector)
    else:
        raw = D.apply_nonlinearity(bias + accumulated, detector)
    data = np.round(raw).clip(0, 65535).astype(np.uint16)[None].astype(np.float32)

    model = datamodels.RampModel(data=data)
    meta = model.meta
    meta.filename = f"jw01234001001_01101_00001_{detector.lower()}_uncal.fits"
    meta.telescope = "JWST"
    meta.instrument.name = det.instrument
    meta.instrument.detector = detector
    meta.instrument.filter = band
    if det.instrument == "NIRCAM":
        meta.instrument.channel = det.channel
        meta.instrument.module = "A"
        meta.instrument.pupil = D.FILTERS[band]["pupil"]

    exp = meta.exposure
    exp.type = "NRC_IMAGE" if det.instrument == "NIRCAM" else "MIR_IMAGE"
    exp.readpatt = "RAPID" if det.instrument == "NIRCAM" else "FASTR1"
    exp.nframes, exp.ngroups, exp.nints, exp.groupgap = 1, ngroups, 1, 0
    exp.frame_time = exp.group_time = frame_time
    exp.integration_time = exp.exposure_time = exp.duration = frame_time * ngroups
    exp.effective_exposure_time = frame_time * (ngroups - 1)
    exp.noutputs = 1 if (det.instrument == "NIRCAM" and sub["name"] != "FULL") else 4
    exp.nresets_at_start = exp.nresets_between_ints = 1
    exp.sample_time = 10
    exp.start_time = 59945.0
    exp.end_time = exp.start_time + frame_time * ngroups / 86400.0
    exp.mid_time = 0.5 * (exp.start_time + exp.end_time)

    s = meta.subarray
    s.name, s.xstart, s.ystart, s.xsize, s.ysize = sub["name"], sub["xstart"], sub["ystart"], nx, ny
    # DMS orientation of the detector readout: NRCA1 and NRCA5 have DetSciParity -1
    s.fastaxis, s.slowaxis = (-1, 2) if det.instrument == "NIRCAM" else (1, 2)

    obs = meta.observation
    obs.date, obs.time = "2023-01-01", "00:00:00.000"
    obs.program_number, obs.observation_number, obs.visit_number = "01234", "001", "001"
    obs.visit_group, obs.sequence_id, obs.activity_id, obs.exposure_number = "01", "1", "01", "00001"

    ap = D.siaf_aperture(sub["aperture"])
    w = meta.wcsinfo
    w.v2_ref, w.v3_ref, w.vparity, w.v3yangle = ap.V2Ref, ap.V3Ref, int(ap.VIdlParity), ap.V3IdlYAngle
    w.ra_ref, w.dec_ref, w.roll_ref = 10.0, -20.0, 30.0
    w.siaf_xref_sci, w.siaf_yref_sci = ap.XSciRef, ap.YSciRef
    meta.pointing.ra_v1, meta.pointing.dec_v1, meta.pointing.pa_v3 = 10.0, -20.0, 30.0
    meta.velocity_aberration.scale_factor = 1.0
    meta.target.ra, meta.target.dec = 10.0, -20.0
    meta.target.proposer_name = meta.target.catalog_name = "SYNTHETIC"
    return model, science


@pipeline_fixture(scope="session")
def calibrated(crds_cache):
    """rate and cal models of each case, from calwebb_detector1 + calwebb_image2 (no resample)."""
    from jwst.pipeline import Detector1Pipeline, Image2Pipeline

    results = {}
    for detector, band in CASES:
        uncal, science = make_uncal(detector, band)
        try:
            rate = Detector1Pipeline.call(uncal, save_results=False)
            cal = Image2Pipeline.call(rate, save_results=False, steps={"resample": {"skip": True}})
        except SystemExit as exc:  # CRDS fatal errors exit the process
            pytest.fail(f"CRDS/jwst exited ({exc.code}) on {detector} {band}")
        if not hasattr(cal, "data"):
            cal = cal[0]
        results[detector] = (rate, cal, science)
    return results


# ------------------------------------------------------------------------------------------


def test_context_serial_and_argument_checks(tmp_path):
    assert context_serial("jwst_9001.pmap") == "9001"
    assert context_serial("jwst_1234.pmap") == "1234"
    with pytest.raises(ValueError):
        context_serial("jwst_9001")
    with pytest.raises(ValueError):
        write_crds_context(tmp_path, "hst_0001.pmap")
    with pytest.raises(ValueError):
        write_crds_context(tmp_path, CONTEXT, bands=["F999W"])
    assert not any(tmp_path.iterdir())  # arguments are checked before anything is written


@pytest.mark.parametrize("detector", ["NRCA1", "NRCALONG"])
def test_a_reference_cut_to_the_one_subarray_used_is_the_full_frame_window(detector):
    """A detector the program uses in one subarray gets references cut to it: the same pixels
    as the full frame at that place, with SUBSTRT/SUBSIZE of the subarray (what jwst matches
    to use a reference as it is; the demo's rate and cal files are identical either way)."""
    det = D.DETECTORS[detector]
    sub = D.subarray(detector, "demo")
    (ny, nx), y0, x0 = sub["shape"], sub["ystart"] - 1, sub["xstart"] - 1
    for make in (_mask_model, _linearity_model):
        full = make(det)
        cut = cut_to_subarray(make(det), det, sub["name"])
        for name in ("dq", "coeffs") if make is _linearity_model else ("dq",):
            a, b = getattr(full, name), getattr(cut, name)
            assert b.shape == a.shape[:-2] + (ny, nx)
            np.testing.assert_array_equal(b, a[..., y0 : y0 + ny, x0 : x0 + nx])
        s = cut.meta.subarray
        assert (s.name, s.xstart, s.ystart, s.xsize, s.ysize) == (sub["name"], x0 + 1, y0 + 1, nx, ny)
        assert full.meta.subarray.name == "FULL"


def test_mappings_load_with_checksums(crds_cache):
    from crds.core import heavy_client, rmap

    assert heavy_client.get_context_name("jwst") == CONTEXT
    pmap = rmap.load_mapping(CONTEXT)  # raises on a wrong sha1sum
    assert {k.upper() for k in pmap.selections} == {"NIRCAM", "MIRI"}
    assert pmap.get_imap("NIRCAM").name == "jwst_nircam_9001.imap"
    for name in pmap.mapping_names():
        assert "_9001" in name and (crds_cache / "mappings" / "jwst" / name).is_file()
    refs = pmap.reference_names()
    assert refs and all("_9001" in r for r in refs)
    for ref in refs:
        inst = ref.split("_")[1]
        assert (crds_cache / "references" / "jwst" / inst / ref).is_file(), ref
    # flats and photom rows only for the requested bands
    flats = sorted(r for r in refs if "_flat_" in r)
    assert flats == [
        "jwst_miri_flat_9001_mirimage_f770w.fits",
        "jwst_nircam_flat_9001_nrca1_f200w.fits",
        "jwst_nircam_flat_9001_nrcalong_f300m.fits",
    ]
    assert (crds_cache / "config" / "jwst" / "ref_cache_subdir_mode").read_text().strip() == "instrument"


@pytest.mark.parametrize("detector,band", CASES)
def test_getreferences_resolves_offline(crds_cache, detector, band):
    import crds

    inst = D.DETECTORS[detector].instrument
    wanted = DETECTOR1_TYPES + IMAGE2_TYPES + NA_TYPES
    try:
        refs = crds.getreferences(_header(detector, band), reftypes=wanted, observatory="jwst")
    except SystemExit as exc:
        pytest.fail(f"crds exited ({exc.code})")
    for reftype in DETECTOR1_TYPES + IMAGE2_TYPES:
        if reftype not in PROVIDED_TYPES[inst]:
            assert "n/a" in refs[reftype].lower(), (reftype, refs[reftype])
            continue
        path = refs[reftype]
        assert path.startswith(str(crds_cache / "references" / "jwst" / inst.lower())), (reftype, path)
        name = path.rsplit("/", 1)[1]
        assert name.startswith(f"jwst_{inst.lower()}_{reftype}_9001_{detector.lower()}"), name
    assert refs["flat"].endswith(f"_{detector.lower()}_{band.lower()}.fits")
    assert refs["dark"].endswith(f"_{D.subarray(detector, 'demo')['name'].lower()}.fits")
    assert refs["distortion"].endswith(".asdf")
    for reftype in NA_TYPES:
        assert "n/a" in refs[reftype].lower(), (reftype, refs[reftype])


@pytest.mark.parametrize("detector,band", CASES)
def test_pipeline_recovers_injected_signal(calibrated, detector, band):
    rate, cal, science = calibrated[detector]
    expected = SIGNAL * D.FILTERS[band]["photmjsr"]  # MJy/sr
    good = science & np.isfinite(cal.data)
    assert good.sum() > 0.99 * science.sum()  # only dead pixels are lost
    ratio = cal.data / expected
    assert abs(np.median(ratio[good]) - 1) < 0.01
    # the flat is divided out pixel by pixel: 16x16-block medians are flat to 0.2 %
    # (without the flat they scatter by ~0.4-2 %)
    r = np.where(good, ratio, np.nan)
    ny, nx = (s // 16 * 16 for s in r.shape)
    blocks = r[:ny, :nx].reshape(ny // 16, 16, nx // 16, 16).transpose(0, 2, 1, 3).reshape(ny // 16, nx // 16, -1)
    assert np.nanstd(np.nanmedian(blocks, axis=2)) < 0.002
    # reference pixels and dead pixels end DO_NOT_USE and NaN
    sub = D.subarray(detector, "demo")
    cut = (
        slice(sub["ystart"] - 1, sub["ystart"] - 1 + sub["shape"][0]),
        slice(sub["xstart"] - 1, sub["xstart"] - 1 + sub["shape"][1]),
    )
    dead = D.bad_pixels(detector)[cut]
    assert dead.any() and not np.isfinite(cal.data[dead]).any()
    assert not np.isfinite(cal.data[~science]).any()
    assert np.all(cal.dq[~science] & 1)
    # photometry metadata from the references
    assert cal.meta.photometry.conversion_megajanskys == pytest.approx(D.FILTERS[band]["photmjsr"], rel=1e-6)
    assert cal.meta.photometry.pixelarea_steradians == pytest.approx(D.pixel_area_sr(detector), rel=1e-9)


@pytest.mark.parametrize("detector,band", CASES)
def test_wcs_is_the_linear_siaf_geometry(calibrated, detector, band):
    _rate, cal, _science = calibrated[detector]
    sub = D.subarray(detector, "demo")
    x = np.array([0.0, 17.0, sub["shape"][1] - 1.0])
    y = np.array([0.0, 211.0, sub["shape"][0] - 1.0])
    v2, v3 = cal.meta.wcs.get_transform("detector", "v2v3")(x, y)
    t2, t3 = D.geometry(detector).det_to_v2v3(x + sub["xstart"] - 1, y + sub["ystart"] - 1)
    np.testing.assert_allclose(v2, t2, atol=1e-9)
    np.testing.assert_allclose(v3, t3, atol=1e-9)


@pytest.mark.parametrize("detector,band", CASES)
def test_products_record_crds_references(calibrated, detector, band):
    rate, cal, _science = calibrated[detector]
    inst = D.DETECTORS[detector].instrument
    for model in (rate, cal):
        assert model.meta.ref_file.crds.context_used == CONTEXT
    detector1 = [t for t in DETECTOR1_TYPES if t in PROVIDED_TYPES[inst]]
    for reftype in detector1:
        name = getattr(rate.meta.ref_file, reftype).name
        assert name.startswith(f"crds://jwst_{inst.lower()}_{reftype}_9001_{detector.lower()}"), name
    for reftype in IMAGE2_TYPES:
        name = getattr(cal.meta.ref_file, reftype).name
        assert name.startswith(f"crds://jwst_{inst.lower()}_{reftype}_9001_{detector.lower()}"), name
    assert rate.meta.ref_file.ipc.name == "N/A"
    steps = cal.meta.cal_step
    for step in (
        "dq_init",
        "saturation",
        "linearity",
        "dark_sub",
        "refpix",
        "jump",
        "ramp_fit",
        "assign_wcs",
        "flat_field",
        "photom",
    ):
        assert getattr(steps, step) == "COMPLETE", step
    if inst == "NIRCAM":
        assert steps.superbias == "COMPLETE"
    else:
        assert steps.lastframe == "COMPLETE"
