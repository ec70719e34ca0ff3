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
from typing import TYPE_CHECKING, Any

from processing.instruments import instrument_of

if TYPE_CHECKING:  # the manifest models live in release/, which depends on processing/, not the reverse
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


def layers_for(
    manifest: Manifest, target: str, band: str | None, instrument: str | None = None
) -> list[tuple[str, dict]]:
    """The manifest's layers for a unit, lowest precedence first. A unit wider than one band
    (a target's instrument, or a whole target) has no band layer; a whole target no
    instrument layer either."""
    inst = instrument_of(band) if band else instrument
    out: list[tuple[str, dict]] = []

    def add(scope: str, layers: ParameterLayers) -> None:
        out.append((f"{scope}.default", layers.default))
        if inst:
            out.append((f"{scope}.instrument.{inst}", layers.instrument.get(inst, {})))
        if band:
            out.append((f"{scope}.band.{band}", layers.band.get(band, {})))

    add("parameters", manifest.parameters)
    add(f"targets.{target}.parameters", manifest.targets[target].parameters)
    return out


def resolve_parameters(
    manifest: Manifest,
    target: str,
    band: str | None,
    defaults: dict[str, Any] | None = None,
    instrument: str | None = None,
) -> ResolvedParameters:
    resolved = ResolvedParameters()
    if defaults:
        _overlay(resolved.values, resolved.origin, defaults, "default")
    for name, layer in layers_for(manifest, target, band, instrument):
        _overlay(resolved.values, resolved.origin, layer, name)
    return resolved
