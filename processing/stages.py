"""What a processing stage is: one declaration, from which everything else follows.

A :class:`Stage` names its unit of work, its inputs as named connections to upstream stages
(or to files named by the manifest), the outputs it writes, its parameters, the function that
runs it (by dotted name, so any worker can import it; the project modules it can execute,
found by following imports, make its code version) and the release products it provides.
From the declarations alone the engine builds the task graph (processing/pipeline.py), the
cache keys and the product index (processing/executor.py); the manifest validation and the
generated manifest reference take the parameters from them. The registry of this system's
stages is processing/registry.py.

Adding a stage: write its module (the pure algorithm on arrays and a thin adapter with the
signature of :data:`RunFunction`), declare it with ``STAGE = Stage(...)`` there, and add it to
the list in processing/registry.py. Nothing in the engine, the CLI or the packaging changes.

Variants of a stage's outputs: a stage whose outputs depend on a manifest value beyond its
parameters (PSF matching writes one mosaic per resolution the manifest's
``products.convolved_fwhm_arcsec`` asks for) declares ``variants='module:function'``
(``function(manifest) -> {variant name: value}``, e.g. ``{"gauss0p85as": 0.85}``) and writes
``{variant}`` in the outputs and products it repeats (``"_{variant}.fits"``,
``Product("img-{variant}", "_{variant}.fits")``). The engine expands them when it builds the
graph: the variants enter each task's context (``context["variants"]``, so its cache key), the
declared outputs and the product index hold one per variant (product type ``img-gauss0p85as``),
and no task is made when the manifest asks for none. Packaging picks a product's writer by its
declared (template) type.

Units (:data:`UNITS`): ``exposure`` (one raw exposure), ``target_band`` (a target in one band),
``target_instrument`` (a target's bands of one instrument), ``target`` (all of a target).

Relations of an input (:data:`RELATIONS`), from the task's unit to the upstream tasks it reads:

- ``raw``: the exposure's own raw file (an ``exposure`` stage with no upstream);
- ``same``: the upstream task of the same unit (same exposure, same target and band, ...);
- ``members``: every science exposure of the unit (``exposure`` upstream of a wider unit);
- ``background``: the MIRI off-field exposures the manifest assigns to the exposure's target
  and band (own, borrowed or both);
- ``visit_reference``: the exposures of the same visit in the stage's reference band
  (parameter ``reference_band``), e.g. a relative astrometric shift solved on F300M and
  applied to every NIRCam band of the visit;
- ``reference_band``: the upstream ``target_band`` task of the same target in the stage's
  reference band, e.g. anchoring every band against the anchored reference band. A stage
  whose ``reference_band`` parameter is a ranked list gets one task per band of it (the
  unit's own band left out; for an optional input only the observed ones), in rank, each
  with its band in ``context["facts"][input name]``, and chooses among them itself;
- an optional ``reference_band`` or ``visit_reference`` input selects nothing when the
  stage's ``reference_band`` parameter is empty (the unit is its own reference, e.g. NIRCam
  absolute astrometry per band) or when the target has no science exposure in that band
  (the stage falls back and records it); a reference band observed but left out of the run
  (``--bands``, a patch) is an error naming it;
- ``manifest_file``: files the manifest names for the unit, returned by the input's ``files``
  function (an external image, a catalogue, a PSF); they enter the cache key by content. The
  function may return ``(path, facts)`` pairs: what the manifest says about each file (an
  external image's survey and beam) reaches the stage as ``context["facts"][input name]``
  (one dict per file, in order) and enters the key with the rest of the context.

Refining a stage's output in place (``refines=(stage, suffix)``): a stage that corrects an
upstream output without changing what it is (destriping the rate files of detector1 before
image2 reads them) declares so; every other reader of that output then reads the refined one,
for the refiner's instruments, with no change to the readers' declarations. Several refiners
of one output chain in registry order.

A refiner may have a wider unit than the output it refines when the output is an exposure's
and the refiner reads all of them (``members``): multi-tile destriping or level matching
need every exposure of a target and band at once and write each exposure's corrected file
back, named ``<exposure><suffix>``. A reader of one exposure's output then reads that
exposure's file from the wider task (the engine checks that the task wrote one per member).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from processing.instruments import did_you_mean

UNITS = ("exposure", "target_band", "target_instrument", "target")
RELATIONS = ("raw", "same", "members", "background", "visit_reference", "reference_band", "manifest_file")

#: ``run(inputs, outdir, params, context) -> [written files]``: ``inputs`` maps each declared
#: input name to its files, ``outdir`` is the task's private scratch folder, ``params`` the
#: resolved parameters, ``context`` the unit (target, band, instrument, exposure, product).
RunFunction = Callable[[dict, Any, dict, dict], list]


class ParameterSpec(Protocol):
    """How a stage's parameters are checked, defaulted and documented."""

    def check(self, values: Any, path: str) -> tuple[list[tuple[str, str]], Any]: ...

    def default_values(self, instrument: str) -> dict[str, Any]: ...

    def describe(self) -> str: ...


#: No parameter of a bespoke stage means a number of larger magnitude (a model's own bounds
#: are tighter where it has them; 1e30 or 1e300 is a typo, not a setting).
MAX_MAGNITUDE = 1e9


def _magnitude_problem(value: Any) -> str | None:
    """A number (or a list of them) that is not finite or is beyond :data:`MAX_MAGNITUDE`."""
    import math

    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v):
                return f"{v!r} is not a finite number"
            if abs(v) > MAX_MAGNITUDE:
                return f"{v!r} is beyond +-{MAX_MAGNITUDE:g}: no parameter of this stage means that much"
    return None


@dataclass(frozen=True)
class ModelParameters:
    """Parameters of a bespoke stage as a pydantic model (defaults, units in the field
    descriptions), with per-instrument defaults over the model's own."""

    model: Any
    instrument_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(self, values: Any, path: str) -> tuple[list[tuple[str, str]], Any]:
        from pydantic import ValidationError

        if not isinstance(values, dict):
            return [(path, "must be a table of parameters")], values
        problems: list[tuple[str, str]] = []
        known = set(self.model.model_fields)
        for key in values:
            if key not in known:
                problems.append((f"{path}.{key}", f"unknown parameter{did_you_mean(key, sorted(known))}"))
        if problems:
            return problems, values
        try:
            # strict: a quoted number or boolean is refused; partial tables are fine (defaults fill in)
            self.model.model_validate(values, strict=True)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"])
                problems.append((f"{path}.{loc}" if loc else path, err["msg"]))
            return problems, values
        problems = [(f"{path}.{k}", p) for k, v in values.items() if (p := _magnitude_problem(v))]
        if problems:
            return problems, values
        out = {}
        for k, v in values.items():  # an integer given for a float is that float
            out[k] = float(v) if self.model.model_fields[k].annotation is float and type(v) is int else v
        return [], out

    def default_values(self, instrument: str) -> dict[str, Any]:
        out = self.model().model_dump()
        out.update(self.instrument_defaults.get(instrument, {}))
        return out

    def describe(self) -> str:
        fields = ", ".join(f"{k} ({f.description or ''})" for k, f in self.model.model_fields.items())
        return f"parameters: {fields}"


@dataclass(frozen=True)
class Input:
    """A named input connection of a stage.

    ``stage``/``suffix``: the upstream stage and which of its outputs (file-name suffix);
    ``relation``: which upstream tasks (:data:`RELATIONS`); ``files``: for ``manifest_file``,
    ``module:function(manifest, unit) -> [paths]``; ``optional``: an empty selection is fine
    (for example no background exposure for NIRCam).
    """

    name: str
    relation: str
    stage: str | None = None
    suffix: str = ""
    files: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class Product:
    """A product a stage provides to the release: its type and the output it is (the file of
    each task with that suffix). What the release makes of it (a file per target and band, a
    table per target, a preview drawn from it) is the release side's declaration of that type
    (release/products/); processing never says how a release looks."""

    type: str
    suffix: str

    def expand(self, variants: dict | None) -> list[tuple[str, str]]:
        """``[(product type, suffix)]``: one per variant when the declaration names
        ``{variant}``, else the declaration itself."""
        if "{variant}" not in self.type + self.suffix:
            return [(self.type, self.suffix)]
        return [(self.type.replace("{variant}", v), self.suffix.replace("{variant}", v)) for v in (variants or {})]


@dataclass(frozen=True)
class Stage:
    """One processing stage, declared once. See the module docstring."""

    name: str
    unit: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    run: str
    parameters: ParameterSpec
    products: tuple[Product, ...] = ()
    instruments: tuple[str, ...] = ("nircam", "miri")
    #: for ``exposure`` stages: ``science`` exposures only, or ``all`` (the off-fields too)
    exposures: str = "science"
    #: memory one task may need (GB): a resource hint for the executors
    memory_gb: float = 2.5
    description: str = ""
    #: ``(stage, suffix)`` this stage rewrites in place: its readers read this stage's output
    refines: tuple[str, str] | None = None
    #: keep this stage's entries whole under the default retention (expensive to recompute and
    #: read again by later releases: the detector1 rate files); other intermediates are thinned
    retain: bool = False
    #: ``module:function(manifest) -> {variant: value}``: the variants of the outputs and
    #: products that name ``{variant}`` (see the module docstring)
    variants: str | None = None

    def run_function(self) -> RunFunction:
        return resolve(self.run)

    def variants_of(self, manifest) -> dict:
        """The variants ``manifest`` asks this stage for (``{}`` for a stage without variants)."""
        return dict(resolve(self.variants)(manifest)) if self.variants else {}

    def concrete_outputs(self, variants: dict | None) -> list[str]:
        """The declared output suffixes, ``{variant}`` expanded over ``variants``."""
        out: list[str] = []
        for o in self.outputs:
            out += [o.replace("{variant}", v) for v in (variants or {})] if "{variant}" in o else [o]
        return out

    def upstream(self) -> set[str]:
        return {i.stage for i in self.inputs if i.stage is not None}


def resolve(dotted: str) -> Any:
    """``module:attribute`` -> the attribute (how a worker finds a stage's function)."""
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


class RegistryError(Exception):
    """A registry whose declarations do not fit together (a programming error, not input)."""


class Registry:
    """The stages of a system, checked, in a real topological order of their connections."""

    def __init__(self, stages: list[Stage]):
        self.stages: dict[str, Stage] = {}
        for s in stages:
            if s.name in self.stages:
                raise RegistryError(f"stage '{s.name}' is declared twice")
            if s.unit not in UNITS:
                raise RegistryError(f"stage '{s.name}': unit '{s.unit}' is not one of {UNITS}")
            for i in s.inputs:
                if i.relation not in RELATIONS:
                    raise RegistryError(
                        f"stage '{s.name}' input '{i.name}': relation '{i.relation}' is not one of {RELATIONS}"
                    )
                if (i.relation in ("raw", "manifest_file")) != (i.stage is None):
                    raise RegistryError(
                        f"stage '{s.name}' input '{i.name}': '{i.relation}' inputs "
                        + ("name no stage" if i.stage is not None else "need an upstream stage")
                    )
                if i.relation == "manifest_file" and not i.files:
                    raise RegistryError(
                        f"stage '{s.name}' input '{i.name}': manifest_file needs files='module:function'"
                    )
            templated = [o for o in s.outputs if "{variant}" in o] + [
                p.type for p in s.products if "{variant}" in p.type + p.suffix
            ]
            if templated and not s.variants:
                raise RegistryError(f"stage '{s.name}' names {{variant}} in {templated[0]} but declares no variants")
            self.stages[s.name] = s
        for s in stages:
            for up in s.upstream():
                if up not in self.stages:
                    raise RegistryError(f"stage '{s.name}' reads '{up}', which is not declared")
        #: (stage, suffix) -> the stages refining it, in registry order
        self.refiners: dict[tuple[str, str], list[Stage]] = {}
        for s in stages:
            if s.refines is None:
                continue
            target, suffix = s.refines
            if target not in self.stages:
                raise RegistryError(f"stage '{s.name}' refines '{target}', which is not declared")
            if self.stages[target].unit == s.unit:
                relation = "same"
            elif self.stages[target].unit == "exposure":
                relation = "members"  # a wider refiner: one output per member exposure
            else:
                raise RegistryError(
                    f"stage '{s.name}' refines '{target}' but their units differ "
                    "(only exposure outputs can be refined by a wider unit)"
                )
            if not any(i.stage == target and i.suffix == suffix and i.relation == relation for i in s.inputs):
                raise RegistryError(f"stage '{s.name}' refines {target} *{suffix} but does not read it ('{relation}')")
            if suffix not in s.outputs:
                raise RegistryError(f"stage '{s.name}' refines *{suffix} but does not write it")
            self.refiners.setdefault((target, suffix), []).append(s)
        self.order = self._topological()

    def source(self, reader: str, stage: str, suffix: str, instrument: str | None) -> str:
        """The stage whose output ``reader`` really reads when it declares ``stage``'s
        ``suffix``: the last refiner of it that covers ``instrument`` (a refiner reads the one
        before it), else ``stage`` itself."""
        chain = self.refiners.get((stage, suffix), [])
        names = [r.name for r in chain]
        if reader in names:
            chain = chain[: names.index(reader)]
        applicable = [r for r in chain if instrument is None or instrument in r.instruments]
        return applicable[-1].name if applicable else stage

    def widens(self, stage: str) -> bool:
        """Whether ``stage`` refines an exposure output from a wider unit (one file per member)."""
        s = self.stages[stage]
        return s.refines is not None and self.stages[s.refines[0]].unit != s.unit

    def effective_upstream(self, name: str) -> set[str]:
        """The stages ``name`` may read, refiners of its inputs included."""
        out = set()
        for i in self.stages[name].inputs:
            if i.stage is None:
                continue
            out.add(i.stage)
            chain = [r.name for r in self.refiners.get((i.stage, i.suffix), [])]
            out.update(chain[: chain.index(name)] if name in chain else chain)
        return out

    def _topological(self) -> list[str]:
        """Kahn's algorithm over the connections (refiners included); ties keep declaration order."""
        names = list(self.stages)
        ups = {n: self.effective_upstream(n) for n in names}
        indegree = {n: len(ups[n]) for n in names}
        order: list[str] = []
        ready = [n for n in names if indegree[n] == 0]
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in names:
                if n in ups[m]:
                    indegree[m] -= 1
                    if indegree[m] == 0:
                        ready.append(m)
            ready.sort(key=names.index)
        if len(order) != len(names):
            cyc = sorted(set(names) - set(order))
            raise RegistryError(f"the stages {cyc} read each other in a cycle")
        return order

    def __getitem__(self, name: str) -> Stage:
        return self.stages[name]

    def __contains__(self, name: str) -> bool:
        return name in self.stages

    def ordered(self) -> list[Stage]:
        return [self.stages[n] for n in self.order]

    def product_providers(self) -> dict[str, Stage]:
        """Release product type -> the stage that provides it (the most downstream one wins,
        so a later stage that refines a product, e.g. anchoring the mosaic, replaces it)."""
        out: dict[str, Stage] = {}
        for s in self.ordered():
            for p in s.products:
                out[p.type] = s
        return out

    def kept_whole(self) -> set[str]:
        """The stages whose cache entries the default retention keeps whole: those declared
        ``retain`` (expensive to recompute, reused by every later release) and the providers of
        release products (:meth:`product_providers`). Every other stage's bulky outputs are
        intermediates, dropped once their readers have their results."""
        return {s.name for s in self.ordered() if s.retain} | {s.name for s in self.product_providers().values()}

    # -- manifest parameters ---------------------------------------------------------------
    def check_parameters(self, stages: dict[str, Any], path: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        problems: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        for stage, params in stages.items():
            p = f"{path}.{stage}"
            values[stage] = params
            if stage in self.stages:
                found, values[stage] = self.stages[stage].parameters.check(params, p)
                problems.extend(found)
            else:
                problems.append((p, f"unknown stage '{stage}'{did_you_mean(stage, list(self.stages))}"))
        return problems, values
