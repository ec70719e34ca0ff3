"""The registry: every stage of this system, one line each (their declarations live in their
own modules). The order here is only a tie-break: the engine orders stages by their
connections (processing/stages.py)."""

from __future__ import annotations

from typing import Any

from processing import destripe, destripe_multi, jwst_stages, level_match, lyot
from processing.anchoring import stage as anchoring
from processing.astrometry import absolute, relative
from processing.psf_matching import stage as psf_matching
from processing.stages import Registry

REGISTRY = Registry(
    [
        jwst_stages.DETECTOR1,
        jwst_stages.IMAGE2,
        jwst_stages.IMAGE3,
        destripe.STAGE,  # refines lv1's rate files (NIRCam)
        relative.STAGE,  # refines lv2's cal files, every band of an instrument at once: one shift per visit
        lyot.STAGE,  # refines lv2's cal files (MIRI): imager and coronagraph parts
        level_match.STAGE,  # refines lv2's cal files, every exposure of a band at once (parts merged)
        destripe_multi.STAGE,  # refines lv2's cal files (NIRCam), every exposure of a band at once
        absolute.STAGE,  # refines lv3's mosaic; back-propagates to the exposures (tweakback)
        anchoring.STAGE,  # refines lv3's mosaic (after astrometry) and the tweakback exposures: absolute level
        psf_matching.STAGE,  # the anchored mosaic convolved to each Gaussian resolution of the manifest
    ],
)


def default_registry() -> Registry:
    """This system's stages (what the engine, the manifest checks and the release side use).

    Only the engine, the manifest and the release side import this module: a stage module
    never does (its code version is the code it can reach, see processing/executor.py)."""
    return REGISTRY


def check_stage_parameters(stages: dict[str, Any], path: str) -> list[tuple[str, str]]:
    """Problems with one ``{stage: parameters}`` table of a manifest found at dotted ``path``."""
    return REGISTRY.check_parameters(stages, path)[0]


def normalise_stage_parameters(stages: dict[str, Any], path: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """``(problems, values)``: the problems of one ``{stage: parameters}`` table at dotted
    ``path``, and the table with every value as the stage will receive it (integers given for
    float parameters become floats)."""
    return REGISTRY.check_parameters(stages, path)
