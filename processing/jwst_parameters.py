"""Parameters of the official pipeline stages: ``{jwst step: {parameter: value}}``.

Checked against the specification of the *installed* jwst (step and parameter names, allowed
options) strictly: the TOML type must be the spec's type (a quoted ``"false"`` is refused,
never converted), numbers are finite and within jwst's bounds, :data:`SCIENCE_BOUNDS` and
:data:`MAX_MAGNITUDE`, and
the normalised values are what the stage receives (an integer given for a float becomes that
float). File locations belong to the engine (:data:`ENGINE_OWNED`).

jwst is imported only when a manifest sets a parameter of a jwst stage.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any

from processing.instruments import did_you_mean

#: Step options the engine owns: where files go and how they are named.
ENGINE_OWNED = frozenset(
    {
        "output_file",
        "output_dir",
        "output_ext",
        "output_use_model",
        "output_use_index",
        "save_results",
        "search_output_file",
        "input_dir",
        "pre_hooks",
        "post_hooks",
        "suffix",
    }
)


@functools.cache
def _jwst_step_specs(pipeline_path: str) -> dict[str, Any]:
    """``{step name: ConfigObj spec}`` of one jwst pipeline (``module:Class``), from the installed jwst."""
    module, cls_name = pipeline_path.split(":")
    pipeline = getattr(importlib.import_module(module), cls_name)
    return {name: step.load_spec_file() for name, step in pipeline.step_defs.items()}


#: Bounds the science needs where jwst's own specification declares none (or a looser one):
#: ``{(step, parameter): (low, low_inclusive, high, high_inclusive)}``, None for open. A
#: negative tolerance or search radius, a zero pixel scale or a pixfrac of 0 is never meant;
#: nor a tolerance or search radius wider than any JWST imager's field (10 arcmin), more
#: sources than a field holds, or a clip of thousands of sigma.
_ARCSEC_FIELD = 600.0  # arcsec: beyond NIRCam's 2 x 2.2' and MIRI's 1.9'
_SOURCES = 1_000_000  # more sources than any one field's catalogue
SCIENCE_BOUNDS: dict[tuple[str, str], tuple[float | None, bool, float | None, bool]] = {
    **{
        ("tweakreg", p): (0.0, False, _ARCSEC_FIELD, True)
        for p in ("tolerance", "abs_tolerance", "searchrad", "abs_searchrad", "separation", "abs_separation")
    },
    **{("tweakreg", p): (0.0, False, 1e4, True) for p in ("snr_threshold", "sigma", "abs_sigma", "sigma_radius")},
    ("tweakreg", "kernel_fwhm"): (0.0, False, 100.0, True),
    **{("tweakreg", p): (1, True, _SOURCES, True) for p in ("brightest", "minobj", "abs_minobj")},
    ("tweakreg", "npixels"): (1, True, 2048 * 2048, True),
    ("tweakreg", "bkg_boxsize"): (1, True, 20000, True),
    ("tweakreg", "nlevels"): (1, True, 1000, True),
    ("tweakreg", "minsep_fwhm"): (0.0, True, 100.0, True),
    ("tweakreg", "contrast"): (0.0, True, 1.0, True),
    ("resample", "pixel_scale"): (0.0, False, 60.0, True),
    ("resample", "pixel_scale_ratio"): (0.0, False, 100.0, True),
    ("resample", "pixmap_stepsize"): (0.0, False, 1e4, True),
    ("resample", "pixfrac"): (0.0, False, 1.0, True),
    ("resample", "rotation"): (-360.0, True, 360.0, True),
    ("resample", "pixmap_order"): (1, True, 10, True),
    ("outlier_detection", "pixfrac"): (0.0, False, 1.0, True),
    ("outlier_detection", "maskpt"): (0.0, True, 1.0, True),
    ("outlier_detection", "threshold_percent"): (0.0, False, 100.0, True),
    ("outlier_detection", "rolling_window_width"): (1, True, 1e4, True),
    ("outlier_detection", "pixmap_stepsize"): (0.0, False, 1e4, True),
    **{("skymatch", p): (0.0, False, 1e4, True) for p in ("lsigma", "usigma", "binwidth")},
    ("skymatch", "stepsize"): (1, True, 1e6, True),
    ("bkg_subtract", "sigma"): (0.0, False, 1e4, True),
    ("bkg_subtract", "maxiters"): (1, True, 1e4, True),
    **{
        ("jump", p): (0.0, False, 1e4, True)
        for p in (
            "rejection_threshold",
            "three_group_rejection_threshold",
            "four_group_rejection_threshold",
            "expand_factor",
        )
    },
    **{("jump", p): (0.0, False, 2048 * 2048, True) for p in ("min_jump_area", "min_sat_area")},
    **{("refpix", p): (0.0, False, 1e4, True) for p in ("sigreject", "gaussmooth", "siglimit")},
    **{("source_catalog", p): (0.0, False, 1e4, True) for p in ("snr_threshold", "kernel_fwhm", "sigma_radius")},
    **{("source_catalog", p): (0.0, False, 100.0, False) for p in ("aperture_ee1", "aperture_ee2", "aperture_ee3")},
}
#: Every other number a manifest gives jwst: no step parameter means a larger magnitude (the
#: specification leaves most of them unbounded; 1e30 or 1e300 there is a typo, not a setting).
MAX_MAGNITUDE = 1e9


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _bounds_problem(value: float, bounds: tuple) -> str | None:
    lo, lo_inc, hi, hi_inc = bounds
    if lo is not None and (value < lo or (value == lo and not lo_inc)):
        return f"must be {'>=' if lo_inc else '>'} {lo}"
    if hi is not None and (value > hi or (value == hi and not hi_inc)):
        return f"must be {'<=' if hi_inc else '<'} {hi}"
    return None


def _kind_of(value: Any) -> str:
    return {
        bool: "a boolean",
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def check_jwst_value(step: str, name: str, spec: str, value: Any) -> tuple[str | None, Any]:
    """Check one manifest value against a jwst step's spec, strictly; return (problem, value).

    Strict means the TOML type must be the spec's type: ``skip = "false"`` is a string, not a
    boolean, and is refused (configobj would turn it into False, and jwst, given the string,
    would treat it as true). Integers are accepted for floats and returned as floats, so the
    value that reaches jwst is exactly the validated one. Numbers must be finite and within
    the spec's bounds and :data:`SCIENCE_BOUNDS`.
    """
    import math

    from configobj.validate import Validator

    fun, args, kwargs, _default = Validator()._parse_with_caching(spec)

    def num_bounds(v: float) -> str | None:
        lo = kwargs.get("min")
        hi = kwargs.get("max")
        bounds = (float(lo) if lo is not None else None, True, float(hi) if hi is not None else None, True)
        return (
            _bounds_problem(v, bounds)
            or (_bounds_problem(v, SCIENCE_BOUNDS[(step, name)]) if (step, name) in SCIENCE_BOUNDS else None)
            or _bounds_problem(v, (-MAX_MAGNITUDE, True, MAX_MAGNITUDE, True))
        )

    if fun == "boolean":
        if not isinstance(value, bool):
            return f"{value!r} is {_kind_of(value)}; a boolean is needed (write true or false, without quotes)", value
        return None, value
    if fun in ("integer", "float"):
        ok = _is_int(value) if fun == "integer" else _is_number(value)
        if not ok:
            need = "an integer" if fun == "integer" else "a number"
            hint = " (without quotes)" if isinstance(value, str) else ""
            return f"{value!r} is {_kind_of(value)}; {need} is needed{hint}", value
        if not math.isfinite(value):
            return f"{value!r} is not a finite number", value
        problem = num_bounds(value)
        if problem:
            return f"{value!r} {problem}", value
        return None, float(value) if fun == "float" else value
    if fun in ("int_list", "float_list", "force_list"):
        if not isinstance(value, list):
            return f"{value!r} is {_kind_of(value)}; a list is needed", value
        n_lo, n_hi = kwargs.get("min"), kwargs.get("max")
        if (n_lo is not None and len(value) < int(n_lo)) or (n_hi is not None and len(value) > int(n_hi)):
            return f"{value!r} must have {n_lo if n_lo == n_hi else f'{n_lo} to {n_hi}'} elements", value
        if fun == "force_list":
            if not all(isinstance(v, str) for v in value):
                return f"{value!r} must be a list of strings", value
            return None, value
        check = _is_int if fun == "int_list" else _is_number
        if not all(check(v) for v in value):
            return f"{value!r} must be a list of {'integers' if fun == 'int_list' else 'numbers'}", value
        if not all(math.isfinite(v) for v in value):
            return f"{value!r} has a value that is not a finite number", value
        if any(abs(v) > MAX_MAGNITUDE for v in value):
            return f"{value!r} has a value beyond +-{MAX_MAGNITUDE:g}", value
        return None, [float(v) for v in value] if fun == "float_list" else value
    if fun in ("string", "option", "is_string_or_datamodel"):
        if not isinstance(value, str):
            return f"{value!r} is {_kind_of(value)}; a string is needed", value
        if fun == "option" and value not in args:
            return f"{value!r} is not one of {', '.join(repr(a) for a in args)}", value
        return None, value
    return f"parameters of type '{fun}' cannot be set from a manifest", value


def _check_jwst_stage(stage: str, pipeline_path: str, steps: Any, path: str) -> tuple[list[tuple[str, str]], dict]:
    problems: list[tuple[str, str]] = []
    if not isinstance(steps, dict):
        return [(path, "must be a table of jwst steps, e.g. [...lv3.tweakreg]")], steps
    specs = _jwst_step_specs(pipeline_path)
    normalised: dict[str, Any] = {}
    for step, params in steps.items():
        step_path = f"{path}.{step}"
        if step not in specs:
            problems.append((step_path, f"'{step}' is not a step of the {stage} pipeline{did_you_mean(step, specs)}"))
            continue
        if not isinstance(params, dict):
            problems.append((step_path, "must be a table of step parameters"))
            continue
        spec = specs[step]
        out = normalised.setdefault(step, {})
        for name, value in params.items():
            p = f"{step_path}.{name}"
            if name in ENGINE_OWNED:
                problems.append((p, "is decided by the engine (file locations), not the manifest"))
            elif name not in spec or not isinstance(spec[name], str):
                problems.append((p, f"unknown parameter of jwst step '{step}'{did_you_mean(name, spec)}"))
            else:
                problem, out[name] = check_jwst_value(step, name, spec[name], value)
                if problem:
                    problems.append((p, problem))
    return problems, normalised


@dataclass(frozen=True)
class JwstParameters:
    """The parameter specification of a stage that runs one jwst pipeline.

    ``pipeline``: ``module:Class`` of the jwst pipeline; ``defaults``: this system's values
    where they differ from jwst's (all instruments); ``instrument_defaults``: per instrument.
    """

    stage: str
    pipeline: str
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    instrument_defaults: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def check(self, values: Any, path: str) -> tuple[list[tuple[str, str]], Any]:
        return _check_jwst_stage(self.stage, self.pipeline, values, path)

    def default_values(self, instrument: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for layer in (self.defaults, self.instrument_defaults.get(instrument, {})):
            for step, values in layer.items():
                out.setdefault(step, {}).update(values)
        return out

    def describe(self) -> str:
        return f"jwst {self.pipeline.split(':')[1]} step parameters: [<scope>.{self.stage}.<step>] tables"
