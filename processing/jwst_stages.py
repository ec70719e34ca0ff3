"""The official pipelines as stages: calwebb_detector1 (lv1), calwebb_image2 (lv2), calwebb_image3 (lv3).

The three stage declarations are at the end of this module. Each wrapper takes declared
inputs (file paths), an output folder and the resolved step
parameters ``{step: {param: value}}``, runs the jwst Pipeline object (``Pipeline(...).run()``
does not look up CRDS parameter references, which would need the server) and returns the
paths it wrote. CRDS fatal errors call ``sys.exit`` inside jwst: every call is wrapped so
that they, and any other exception, become :class:`StageFailed` naming the stage and input.

The CRDS environment must be set before crds is imported in the process that runs these:
:func:`crds_environment` returns the variables and :func:`apply_crds_environment` sets them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from processing.errors import WorkFailed
from processing.jwst_parameters import JwstParameters
from processing.stages import Input, Product, Stage

log = logging.getLogger(__name__)

#: Defaults of this system where they differ from jwst's (the paper, sections 3.1, 3.2, 3.7).
STAGE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # pixels saturated after the first group still get a flux
    "lv1": {"ramp_fit": {"suppress_one_group": False}},
    # no per-exposure i2d
    "lv2": {"resample": {"skip": True}},
    # skymatch off: the level-matching stage (processing/level_match.py) matches the exposures
    # and subtracts one constant per group of tiles, the paper's section 3.7; DQ in the mosaic;
    # the catalogue is not a product
    "lv3": {
        "skymatch": {"skip": True},
        "source_catalog": {"skip": True},
        # north up (paper section 3.7), DQ in the mosaic
        "resample": {"propagate_dq": True, "rotation": 0.0},
    },
}
#: Instrument-specific defaults.
INSTRUMENT_DEFAULTS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    # MIRI: off-field master background with a strict 1.5-sigma clip; no tweakreg in image3
    "miri": {"lv2": {"bkg_subtract": {"sigma": 1.5}}, "lv3": {"tweakreg": {"skip": True}}},
    # NIRCam: tweakreg with a strict tolerance, shifts only (rotations made it worse, 3.3)
    "nircam": {"lv3": {"tweakreg": {"fitgeometry": "shift", "tolerance": 0.3}}},
}


class StageFailed(WorkFailed):
    def __init__(self, stage: str, target: str, reason: str):
        self.stage, self.target, self.reason = stage, target, reason
        super().__init__(f"{stage} failed on {target}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.stage, self.target, self.reason))


def crds_environment(
    crds_path: str | Path | None, context: str, mode: str = "local", server_url: str | None = None
) -> dict[str, str]:
    """Environment variables that make crds use ``context`` (and, for 'local', never the network)."""
    env = {"CRDS_CONTEXT": context, "STPIPE_DISABLE_CRDS_STEPPARS": "True"}
    if crds_path is not None:
        env["CRDS_PATH"] = str(Path(crds_path).resolve())
    if mode == "local":
        env["CRDS_MODE"] = "local"
        env["CRDS_SERVER_URL"] = "https://jwst-serverless-mode.stsci.edu"
    elif server_url:
        env["CRDS_SERVER_URL"] = server_url
        env["CRDS_MODE"] = "remote" if mode == "remote" else "auto"
    return env


def apply_crds_environment(env: dict[str, str]) -> None:
    os.environ.update(env)


def worker_init(env: dict[str, str]) -> None:
    """Initializer of a worker process that runs jwst: the CRDS environment, and no console
    output (records and warnings go to the log file the task attaches)."""
    from processing.logs import setup_worker

    apply_crds_environment(env)
    setup_worker()


def _configure(pipeline, params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    applied: dict[str, dict[str, Any]] = {}
    for step, values in params.items():
        obj = getattr(pipeline, step)
        for name, value in values.items():
            setattr(obj, name, value)
            applied.setdefault(step, {})[name] = value
    return applied


def _guarded(stage: str, target: str, fn):
    try:
        return fn()
    except SystemExit as exc:  # CRDS fatal errors
        raise StageFailed(
            stage, target, f"CRDS or jwst exited ({exc.code}); see the log for the CRDS message"
        ) from None
    except StageFailed:
        raise
    except Exception as exc:
        raise StageFailed(stage, target, f"{type(exc).__name__}: {exc}") from exc


def check_fits(path: Path, stage: str) -> None:
    """Refuse a missing, truncated or unreadable FITS file with a message naming it."""
    import warnings

    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        raise StageFailed(stage, str(path), "the file does not exist")
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                needed = max(info["datLoc"] + info["datSpan"] for info in (hdul.fileinfo(i) for i in range(len(hdul))))
    except Exception as exc:
        raise StageFailed(stage, str(path), f"not a readable FITS file ({type(exc).__name__}: {exc})") from None
    if size < needed:
        raise StageFailed(stage, str(path), f"truncated FITS file: {size} of {needed} bytes")


def _run_pipeline(
    pipeline_cls, stage: str, label: str, source: str, outdir: Path, params: dict | None, expected: Path
) -> Path:
    """Configure and run one jwst pipeline on ``source``, saving into ``outdir``; return ``expected``."""

    def go():
        pipe = pipeline_cls()
        _configure(pipe, params or {})
        pipe.output_dir = str(outdir)
        pipe.save_results = True
        pipe.run(source)
        if not expected.exists():
            raise StageFailed(stage, label, f"no output written at {expected}")
        return expected

    return _guarded(stage, label, go)


def run_detector1(uncal: Path, outdir: Path, params: dict | None = None) -> Path:
    """calwebb_detector1 on one uncal file; returns the rate file."""
    from jwst.pipeline import Detector1Pipeline

    check_fits(uncal, "lv1")
    outdir.mkdir(parents=True, exist_ok=True)
    expected = outdir / Path(uncal).name.replace("_uncal.fits", "_rate.fits")
    return _run_pipeline(Detector1Pipeline, "lv1", str(uncal), str(uncal), outdir, params, expected)


def run_image2(rate: Path, outdir: Path, params: dict | None = None, background: list[Path] | None = None) -> Path:
    """calwebb_image2 on one rate file; returns the cal file.

    ``background``: off-field rate files. They go into an image2 association as background
    members; jwst's background step combines them per pixel (sigma-clipped mean, ``sigma``
    of the bkg_subtract step) into a master background and subtracts it.
    """
    from jwst.pipeline import Image2Pipeline

    outdir.mkdir(parents=True, exist_ok=True)
    target = str(rate)
    if background:
        # absolute member paths: jwst resolves relative ones against the working directory
        members = [Path(rate).resolve()] + [Path(b).resolve() for b in background]
        asn = {
            "asn_type": "image2",
            "asn_rule": "candidate_Asn_Lv2Image",
            "asn_id": "a2001",
            "asn_pool": "none",
            "program": "",
            "target": "none",
            "version_id": None,
            "code_version": "hlsp",
            "constraints": "",
            "degraded_status": "No known degraded exposures in association.",
            "products": [
                {
                    "name": Path(rate).name.replace("_rate.fits", ""),
                    "members": [{"expname": str(members[0]), "exptype": "science"}]
                    + [{"expname": str(m), "exptype": "background"} for m in members[1:]],
                }
            ],
        }
        from processing.fileio import atomic_write_text

        target = str(outdir / (Path(rate).name.replace("_rate.fits", "") + "_image2_asn.json"))
        atomic_write_text(Path(target), json.dumps(asn, indent=1))

    expected = outdir / Path(rate).name.replace("_rate.fits", "_cal.fits")
    return _run_pipeline(Image2Pipeline, "lv2", str(rate), target, outdir, params, expected)


def _local_copy(path: Path, outdir: Path) -> Path:
    """``path`` made visible in ``outdir`` (hard link when possible: no data copied)."""
    local = outdir / Path(path).name
    if not local.exists():
        if _same_fs(path, outdir):
            os.link(path, local)
        else:
            local.write_bytes(Path(path).read_bytes())
    return local


def write_association(cal_files: list[Path], product_name: str, path: Path) -> Path:
    """A level-3 image association listing ``cal_files`` as science members."""
    asn = {
        "asn_type": "image3",
        "asn_rule": "candidate_Asn_Lv3Image",
        "version_id": None,
        "code_version": "hlsp",
        "degraded_status": "No known degraded exposures in association.",
        "program": "",
        "constraints": "",
        "asn_id": "a3001",
        "target": "none",
        "asn_pool": "none",
        "products": [
            {"name": product_name, "members": [{"expname": Path(f).name, "exptype": "science"} for f in cal_files]}
        ],
    }
    from processing.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(asn, indent=1))
    return path


def run_image3(cal_files: list[Path], outdir: Path, product_name: str, params: dict | None = None) -> Path:
    """calwebb_image3 on a list of cal files (copied or linked into ``outdir``); returns the i2d."""
    from jwst.pipeline import Image3Pipeline

    outdir.mkdir(parents=True, exist_ok=True)
    local = [_local_copy(Path(f), outdir) for f in cal_files]
    asn = write_association(local, product_name, outdir / f"{product_name}_asn.json")

    expected = outdir / f"{product_name}_i2d.fits"
    return _run_pipeline(Image3Pipeline, "lv3", product_name, str(asn), outdir, params, expected)


def _same_fs(a, b) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The stages: run functions with the engine's signature, and their declarations
# --------------------------------------------------------------------------------------------


def run_lv1(inputs: dict[str, list[str]], outdir: Path, params: dict, context: dict) -> list[Path]:
    return [run_detector1(Path(inputs["uncal"][0]), outdir, params)]


def run_lv2(inputs: dict[str, list[str]], outdir: Path, params: dict, context: dict) -> list[Path]:
    background = [Path(p) for p in inputs.get("background", [])]
    return [run_image2(Path(inputs["rate"][0]), outdir, params, background=background or None)]


def run_lv3(inputs: dict[str, list[str]], outdir: Path, params: dict, context: dict) -> list[Path]:
    cals = [Path(p) for p in inputs["cal"]]
    i2d = run_image3(cals, outdir, context["product"], params)
    carry_exposure_records(cals, i2d)
    return [i2d] + sorted(outdir.glob("*_crf.fits"))


#: Prefix of the primary-header keywords in which the PHANGS stages record what they did to
#: one exposure (e.g. HLSPDS1, the 1/f stripes removed by single-tile destriping).
EXPOSURE_RECORD_PREFIX = "HLSPD"


def carry_exposure_records(cals: list[Path], mosaic: Path) -> None:
    """Summarise the per-exposure records (keywords ``HLSPD*``) of the exposures of a mosaic
    in its primary header: the mean over the exposures that carry each keyword, so the mosaic
    (and the released img.fits) says what was done to its inputs."""
    from astropy.io import fits

    values: dict[str, list[float]] = {}
    comments: dict[str, str] = {}
    for cal in cals:
        h = fits.getheader(cal, 0)
        for key in h:
            if (
                key.startswith(EXPOSURE_RECORD_PREFIX)
                and isinstance(h[key], (int, float))
                and not isinstance(h[key], bool)
            ):
                values.setdefault(key, []).append(float(h[key]))
                comments[key] = h.comments[key]
    if not values:
        return
    with fits.open(mosaic, mode="update") as hdul:
        for key, v in sorted(values.items()):
            hdul[0].header[key] = (round(sum(v) / len(v), 6), f"mean of {len(v)}: {comments[key]}"[:47])


def _parameters(stage: str, pipeline: str) -> JwstParameters:
    return JwstParameters(
        stage,
        pipeline,
        STAGE_DEFAULTS.get(stage, {}),
        {inst: layers[stage] for inst, layers in INSTRUMENT_DEFAULTS.items() if stage in layers},
    )


DETECTOR1 = Stage(
    name="lv1",
    unit="exposure",
    exposures="all",  # the MIRI off-fields too
    inputs=(Input("uncal", "raw"),),
    outputs=("_rate.fits",),
    run="processing.jwst_stages:run_lv1",
    parameters=_parameters("lv1", "jwst.pipeline:Detector1Pipeline"),
    memory_gb=2.5,
    retain=True,  # ramps to rates: the most expensive step, and every later release starts from them
    description="calwebb_detector1: ramps to count-rate images",
)
IMAGE2 = Stage(
    name="lv2",
    unit="exposure",
    inputs=(
        Input("rate", "same", "lv1", "_rate.fits"),
        Input("background", "background", "lv1", "_rate.fits", optional=True),
    ),
    outputs=("_cal.fits",),
    run="processing.jwst_stages:run_lv2",
    parameters=_parameters("lv2", "jwst.pipeline:Image2Pipeline"),
    memory_gb=2.5,
    description="calwebb_image2: flat field, photometric calibration, MIRI off-field background",
)
IMAGE3 = Stage(
    name="lv3",
    unit="target_band",
    inputs=(Input("cal", "members", "lv2", "_cal.fits"),),
    outputs=("_i2d.fits", "_crf.fits"),
    run="processing.jwst_stages:run_lv3",
    parameters=_parameters("lv3", "jwst.pipeline:Image3Pipeline"),
    products=(Product("img", "_i2d.fits"),),
    memory_gb=2.5,
    description="calwebb_image3: tweakreg (NIRCam), outlier detection, resample to the mosaic (skymatch off: level "
    "matching replaces it)",
)
