"""Resolve the step parameters of one (target, band) from the manifest's layers.

Precedence, lowest to highest (later layers override single parameters, not whole tables):

1. the stage's own defaults (given by the engine, the paper's processing),
2. ``parameters.default``, 3. ``parameters.instrument.<inst>``, 4. ``parameters.band.<band>``,
5. ``targets.<t>.parameters.default``, 6. ``...instrument.<inst>``, 7. ``...band.<band>``.

The result records, for each value, the layer it came from, so provenance can say why a value
is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from release.instruments import instrument_of
from release.manifest import Manifest, ParameterLayers


@dataclass
class ResolvedParameters:
    """``values[stage][...path...] = value`` and ``origin`` with the same shape, naming layers."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> dict[str, Any]:
        return self.values.get(name, {})


def _overlay(values: dict, origin: dict, layer: dict, layer_name: str) -> None:
    for key, value in layer.items():
        if isinstance(value, dict):
            _overlay(values.setdefault(key, {}), origin.setdefault(key, {}), value, layer_name)
        else:
            values[key] = value
            origin[key] = layer_name


def layers_for(manifest: Manifest, target: str, band: str) -> list[tuple[str, dict]]:
    inst = instrument_of(band)
    out: list[tuple[str, dict]] = []

    def add(scope: str, layers: ParameterLayers) -> None:
        out.append((f"{scope}.default", layers.default))
        out.append((f"{scope}.instrument.{inst}", layers.instrument.get(inst, {})))
        out.append((f"{scope}.band.{band}", layers.band.get(band, {})))

    add("parameters", manifest.parameters)
    add(f"targets.{target}.parameters", manifest.targets[target].parameters)
    return out


def resolve_parameters(
    manifest: Manifest, target: str, band: str, defaults: dict[str, Any] | None = None
) -> ResolvedParameters:
    resolved = ResolvedParameters()
    if defaults:
        _overlay(resolved.values, resolved.origin, defaults, "default")
    for name, layer in layers_for(manifest, target, band):
        _overlay(resolved.values, resolved.origin, layer, name)
    return resolved
