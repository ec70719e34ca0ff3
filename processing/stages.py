"""Which processing stages exist, and which parameters each accepts.

The manifest may set a parameter of any stage listed here. The three official pipeline stages
take ``{jwst step name: {parameter: value}}`` and are checked against the specification of the
*installed* jwst (names, types, allowed options). The PHANGS algorithms are listed in
:data:`PLANNED_STAGES` until their module exists; a manifest that sets one of their parameters
is refused with a message saying the stage is not available, rather than silently ignored.

This module does not import jwst at import time; :func:`check_stage_parameters` does, once.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from release.instruments import did_you_mean

#: Official pipeline stages: manifest name -> (module, class).
JWST_STAGES: dict[str, tuple[str, str]] = {
    "lv1": ("jwst.pipeline", "Detector1Pipeline"),
    "lv2": ("jwst.pipeline", "Image2Pipeline"),
    "lv3": ("jwst.pipeline", "Image3Pipeline"),
}

#: Bespoke stages by manifest name -> parameter checker ``f(params, path) -> problems``.
#: Each entry is added by the module that implements the stage.
BESPOKE_STAGES: dict[str, Any] = {}

#: Stages of the PHANGS processing (reference/pipeline.md) that this version does not have yet.
PLANNED_STAGES = ("destripe", "lyot", "level_match", "astrometry", "anchoring", "psf_matching")

#: Step options the engine owns: where files go and how they are named.
ENGINE_OWNED = frozenset(
    {
        "output_file", "output_dir", "output_ext", "output_use_model", "output_use_index",
        "save_results", "search_output_file", "input_dir", "pre_hooks", "post_hooks", "suffix",
    }
)


def known_stages() -> list[str]:
    return list(JWST_STAGES) + list(BESPOKE_STAGES)


@functools.lru_cache(maxsize=None)
def _jwst_step_specs(stage: str) -> dict[str, Any]:
    """``{step name: ConfigObj spec}`` of one jwst pipeline, from the installed jwst."""
    module, cls_name = JWST_STAGES[stage]
    pipeline = getattr(importlib.import_module(module), cls_name)
    return {name: step.load_spec_file() for name, step in pipeline.step_defs.items()}


def _check_jwst_stage(stage: str, steps: Any, path: str) -> list[tuple[str, str]]:
    from configobj.validate import ValidateError, Validator

    problems: list[tuple[str, str]] = []
    if not isinstance(steps, dict):
        return [(path, "must be a table of jwst steps, e.g. [...lv3.tweakreg]")]
    specs = _jwst_step_specs(stage)
    validator = Validator()
    for step, params in steps.items():
        step_path = f"{path}.{step}"
        if step not in specs:
            problems.append(
                (step_path, f"'{step}' is not a step of the {stage} pipeline{did_you_mean(step, specs)}")
            )
            continue
        if not isinstance(params, dict):
            problems.append((step_path, "must be a table of step parameters"))
            continue
        spec = specs[step]
        for name, value in params.items():
            p = f"{step_path}.{name}"
            if name in ENGINE_OWNED:
                problems.append((p, "is decided by the engine (file locations), not the manifest"))
            elif name not in spec:
                problems.append((p, f"unknown parameter of jwst step '{step}'{did_you_mean(name, spec)}"))
            else:
                try:
                    validator.check(spec[name], value)
                except ValidateError as exc:
                    problems.append((p, f"{value!r} is not valid for '{spec[name]}': {exc}"))
    return problems


def check_stage_parameters(stages: dict[str, Any], path: str) -> list[tuple[str, str]]:
    """Problems with one ``{stage: parameters}`` table found at dotted ``path``."""
    problems: list[tuple[str, str]] = []
    for stage, params in stages.items():
        p = f"{path}.{stage}"
        if stage in JWST_STAGES:
            problems.extend(_check_jwst_stage(stage, params, p))
        elif stage in BESPOKE_STAGES:
            problems.extend(BESPOKE_STAGES[stage](params, p))
        elif stage in PLANNED_STAGES:
            problems.append((p, f"stage '{stage}' is not available in this version"))
        else:
            problems.append((p, f"unknown stage '{stage}'{did_you_mean(stage, known_stages() + list(PLANNED_STAGES))}"))
    return problems
