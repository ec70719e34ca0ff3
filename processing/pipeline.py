"""From a validated manifest and the stage declarations to the task graph.

One task per stage and unit (processing/stages.py): ``<stage>/<exposure>`` for an exposure
stage, ``<stage>/<target>/<band>``, ``<stage>/<target>/<instrument>``, ``<stage>/<target>``.
Each task's inputs are resolved from its stage's declared connections: upstream tasks (by
relation: same unit, members, MIRI off-fields, the visit's or the target's reference band) or
files (the raw exposure, files the manifest names), and its parameters from the manifest's
layers over the stage's defaults. The graph's order is a real topological order of the task
dependencies. Nothing here knows a stage by name: the registry says what exists.

The engine, not the stage, decides where files live and whether a cached result can be reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from processing.errors import BadInput
from processing.inputs import RawExposure, TargetBandInputs, assign_exposures, run_selection, scan_exposures
from processing.parameters import resolve_parameters
from processing.registry import default_registry
from processing.stages import Registry, Stage, resolve

if TYPE_CHECKING:  # release/ depends on processing/, never the reverse
    from release.manifest import LoadedManifest


@dataclass
class Task:
    id: str
    stage: str
    target: str
    band: str | None
    instrument: str | None
    exposure: str | None = None
    deps: list[str] = field(default_factory=list)
    #: input name -> [{"task": id, "suffix": s}] (upstream outputs; with "member": exposure
    #: when a wider task refined the exposure's output) or [{"file": path}]
    inputs: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    param_origin: dict[str, Any] = field(default_factory=dict)
    #: what the run function is told about its unit (target, band, instrument, exposure, product)
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.id


@dataclass
class Graph:
    tasks: dict[str, Task]
    inputs: dict[tuple[str, str], TargetBandInputs]
    registry: Registry
    _order: list[Task] | None = field(default=None, repr=False, compare=False)

    def order(self) -> list[Task]:
        """A topological order of the tasks (Kahn), ties broken by stage order then id:
        deterministic; computed once (a graph is not changed after it is built)."""
        if self._order is None or len(self._order) != len(self.tasks):
            self._order = self._topological()
        return list(self._order)

    def _topological(self) -> list[Task]:
        rank = {s: i for i, s in enumerate(self.registry.order)}
        remaining = {tid: set(t.deps) for tid, t in self.tasks.items()}
        dependents: dict[str, list[str]] = {}
        for tid, t in self.tasks.items():
            for d in t.deps:
                dependents.setdefault(d, []).append(tid)
        import heapq

        key = lambda tid: (rank[self.tasks[tid].stage], tid)  # noqa: E731
        ready = [key(tid) for tid, deps in remaining.items() if not deps]
        heapq.heapify(ready)
        out: list[Task] = []
        while ready:
            _, tid = heapq.heappop(ready)
            out.append(self.tasks[tid])
            for n in dependents.get(tid, []):
                remaining[n].discard(tid)
                if not remaining[n]:
                    heapq.heappush(ready, key(n))
        if len(out) != len(self.tasks):
            raise BadInput("the task graph has a cycle: " + ", ".join(sorted(set(self.tasks) - {t.id for t in out})))
        return out

    def dependents(self, task_id: str) -> set[str]:
        out, frontier = set(), {task_id}
        while frontier:
            nxt = {t.id for t in self.tasks.values() if set(t.deps) & frontier} - out
            out |= nxt
            frontier = nxt
        return out

    def stage_counts(self) -> dict[str, int]:
        return {s: sum(1 for t in self.tasks.values() if t.stage == s) for s in self.registry.order}


# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """What one task works on. ``exposure`` is None for units wider than an exposure."""

    target: str
    band: str | None
    instrument: str | None
    exposure: RawExposure | None = None

    def id(self, kind: str) -> str:
        if kind == "exposure":
            return self.exposure.name
        if kind == "target_band":
            return f"{self.target}/{self.band}"
        if kind == "target_instrument":
            return f"{self.target}/{self.instrument}"
        return self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "band": self.band,
            "instrument": self.instrument,
            "exposure": self.exposure.name if self.exposure else None,
        }


def _units(stage: Stage, selected: dict[tuple[str, str], TargetBandInputs], lm: LoadedManifest) -> list[Unit]:
    out: dict[str, Unit] = {}
    for (target, band), tb in sorted(selected.items()):
        if tb.instrument not in stage.instruments:
            continue
        if stage.unit == "exposure":
            for e in tb.science:
                out.setdefault(e.name, Unit(target, band, tb.instrument, e))
            if stage.exposures == "all":
                for e in tb.background:  # an off-field lent to another target: one task, its owner's
                    out.setdefault(e.name, Unit(_owner(lm, e, target), band, tb.instrument, e))
        elif stage.unit == "target_band":
            out.setdefault(f"{target}/{band}", Unit(target, band, tb.instrument))
        elif stage.unit == "target_instrument":
            out.setdefault(f"{target}/{tb.instrument}", Unit(target, None, tb.instrument))
        else:
            out.setdefault(target, Unit(target, None, None))
    return [out[k] for k in sorted(out)]


def _contains(unit: Unit, kind: str, other: Unit) -> bool:
    """Whether ``other`` (an upstream unit) lies inside ``unit``."""
    if unit.target != other.target:
        return False
    if kind == "target_band":
        return other.band == unit.band
    if kind == "target_instrument":
        return other.instrument == unit.instrument
    return kind == "target"


# --------------------------------------------------------------------------------------------
# Building the graph
# --------------------------------------------------------------------------------------------


def build_graph(
    lm: LoadedManifest,
    targets: list[str] | None = None,
    bands: list[str] | None = None,
    registry: Registry | None = None,
) -> Graph:
    registry = registry or default_registry()
    m = lm.manifest
    if m.program.data.source == "mast" and not m.program.data.path:
        raise BadInput(
            f"{lm.path.name}: program.data.source = 'mast' and no program.data.path: download the exposures with "
            f"`hlsp fetch {lm.path.name} --dest DIR` and set program.data.path = DIR"
        )
    selects = run_selection(lm, targets, bands)  # checks --targets/--bands before any header is read
    inputs = assign_exposures(lm, scan_exposures(lm.resolve_path(m.program.data.path)))
    selected = {key: tb for key, tb in inputs.items() if selects(tb.target, tb.band, tb.instrument)}
    tasks: dict[str, Task] = {}
    units_of: dict[str, dict[str, Unit]] = {}
    observed = {key for key, tb in inputs.items() if tb.science}  # (target, band) with science exposures
    parameters: dict = {}  # (stage, target, band, instrument) -> resolved parameters, for this graph
    for stage in registry.ordered():
        # a stage with variants (e.g. one mosaic per PSF-matched resolution) that the manifest
        # asks for none of has nothing to do
        units = [] if stage.variants and not stage.variants_of(m) else _units(stage, selected, lm)
        units_of[stage.name] = {u.id(stage.unit): u for u in units}
        for unit in units:
            task = _task(lm, registry, stage, unit, selected, units_of, observed, parameters)
            tasks[task.id] = task
    if not tasks:
        raise BadInput(f"{lm.path.name}: nothing to process for the targets and bands asked for")
    return Graph(tasks, inputs, registry)


def _task(
    lm: LoadedManifest,
    registry: Registry,
    stage: Stage,
    unit: Unit,
    selected: dict[tuple[str, str], TargetBandInputs],
    units_of: dict[str, dict[str, Unit]],
    observed: set[tuple[str, str]] = frozenset(),
    memo: dict | None = None,
) -> Task:
    params, origin = _parameters(lm, stage, unit.target, unit.band, unit.instrument, {} if memo is None else memo)
    tid = f"{stage.name}/{unit.id(stage.unit)}"
    context = unit.as_dict()
    if unit.band:
        context["product"] = f"{unit.target}_{unit.band.lower()}"
    if stage.variants:  # in the context: part of the task's key
        context["variants"] = stage.variants_of(lm.manifest)
    task = Task(
        tid,
        stage.name,
        unit.target,
        unit.band,
        unit.instrument,
        exposure=unit.exposure.name if unit.exposure else None,
        params=params,
        param_origin=origin,
        context=context,
    )
    seen: set[str] = set()
    for conn in stage.inputs:
        refs = _resolve_input(lm, registry, stage, conn, unit, params, selected, units_of, observed)
        if not refs and not conn.optional:
            raise BadInput(
                f"{tid}: input '{conn.name}' ({conn.relation}"
                + (f" of {conn.stage}" if conn.stage else "")
                + ") selects nothing in this run"
            )
        task.inputs[conn.name] = refs
        if any("facts" in r for r in refs):  # in the context: part of the task's key
            context.setdefault("facts", {})[conn.name] = [r.get("facts", {}) for r in refs]
        for r in refs:
            if "task" in r and r["task"] not in seen:  # a set: a wide task reads thousands
                seen.add(r["task"])
                task.deps.append(r["task"])
    return task


def _parameters(
    lm, stage: Stage, target: str, band: str | None, instrument: str | None, memo: dict
) -> tuple[dict, dict]:
    """A stage's parameters for a unit and where each came from: the same for every exposure of
    a target and band, so resolved once per (stage, target, band, instrument) in one graph
    (``memo``) and shared by those tasks (a task's parameters are not changed once built)."""
    key = (stage.name, target, band, instrument)
    if key not in memo:
        defaults = {stage.name: stage.parameters.default_values(instrument or "")}
        resolved = resolve_parameters(lm.manifest, target, band, defaults, instrument=instrument)
        memo[key] = (resolved.stage(stage.name), resolved.origin.get(stage.name, {}))
    return memo[key]


def _resolve_input(
    lm,
    registry: Registry,
    stage: Stage,
    conn,
    unit: Unit,
    params: dict,
    selected: dict[tuple[str, str], TargetBandInputs],
    units_of: dict[str, dict[str, Unit]],
    observed: set[tuple[str, str]] = frozenset(),
) -> list[dict[str, str]]:
    if conn.relation == "raw":
        if unit.exposure is None:
            raise BadInput(f"stage {stage.name}: a 'raw' input needs an exposure unit")
        return [{"file": unit.exposure.path}]
    if conn.relation == "manifest_file":
        # each item: a path, or (path, facts): what the manifest says about the file (e.g. an
        # external image's beam), given to the stage in context["facts"][input name]
        items = [(i, None) if isinstance(i, (str, Path)) else i for i in resolve(conn.files)(lm, unit.as_dict())]
        out = []
        for p, facts in items:
            if not Path(p).is_file():
                raise BadInput(
                    f"{stage.name}/{unit.id(stage.unit)}: input '{conn.name}' names {p}, which is not a file"
                )
            out.append({"file": str(p), **({"facts": dict(facts)} if facts is not None else {})})
        return out
    up = registry[conn.stage]
    ups = units_of.get(conn.stage, {})

    def ref(uid: str) -> dict[str, str]:
        if uid not in ups:
            raise BadInput(
                f"{stage.name}/{unit.id(stage.unit)} needs {conn.stage}/{uid}, which is not in this run "
                "(widen --targets/--bands or the patch)"
            )
        # a stage that refines this output in place (for this unit's instrument) is read instead
        member = ups[uid]
        source = registry.source(stage.name, conn.stage, conn.suffix, member.instrument)
        if not registry.widens(source):
            return {"task": f"{source}/{uid}", "suffix": conn.suffix}
        # refined by a wider unit (e.g. every exposure of a target and band at once): that
        # task's file for this exposure, if the exposure is one of its members
        wide = registry[source]
        wide_uid = Unit(member.target, member.band, member.instrument).id(wide.unit)
        wide_units = units_of.get(source, {})
        if (
            wide_uid in wide_units
            and member.exposure is not None
            and member.exposure.name in _science_names(selected, member)
        ):
            return {"task": f"{source}/{wide_uid}", "suffix": conn.suffix, "member": uid}
        before = registry.source(source, conn.stage, conn.suffix, member.instrument)
        return {"task": f"{before}/{uid}", "suffix": conn.suffix}

    if conn.relation == "same":
        if up.unit != stage.unit:
            raise BadInput(f"stage {stage.name}: 'same' needs {conn.stage} to have the unit {stage.unit}")
        return [ref(unit.id(stage.unit))]
    if conn.relation == "members":
        return [
            ref(uid)
            for uid, u in sorted(ups.items())
            if (u.exposure is None or u.exposure.name in _science_names(selected, u)) and _contains(unit, stage.unit, u)
        ]
    if conn.relation == "background":
        tb = selected.get((unit.target, unit.band))
        return [ref(e.name) for e in (tb.background if tb else [])]
    if conn.optional and not params.get("reference_band"):
        return []  # an optional reference with no reference band set: the unit is its own reference
    ranked = _reference_bands(stage, params, unit)
    if len(ranked) > 1:
        # a ranked list: every band of it the target was observed in (the unit's own left out),
        # in order, each with its band; the stage tries them in turn
        if conn.optional:
            ranked = [b for b in ranked if (unit.target, b) in observed]
        if conn.relation == "reference_band":
            return [{**ref(f"{unit.target}/{b}"), "facts": {"band": b}} for b in ranked if b != unit.band]
    ref_band = ranked[0] if ranked else ""
    if conn.optional and (unit.target, ref_band) not in observed:
        return []  # an optional reference the target was never observed in: the stage falls back (and says so)
    if conn.relation == "reference_band":
        return [ref(f"{unit.target}/{ref_band}")]
    if conn.relation == "visit_reference":
        tb = selected.get((unit.target, ref_band))
        if tb is None:
            raise BadInput(
                f"{stage.name}/{unit.id(stage.unit)} needs the reference band {ref_band} of {unit.target}, "
                "which is not in this run"
            )
        return [ref(e.name) for e in tb.science if e.visit == unit.exposure.visit]
    raise BadInput(f"stage {stage.name}: unknown relation {conn.relation}")


def _science_names(selected: dict[tuple[str, str], TargetBandInputs], u: Unit) -> frozenset[str]:
    tb = selected.get((u.target, u.band))
    return tb.science_names if tb else frozenset()


def _reference_bands(stage: Stage, params: dict, unit: Unit) -> list[str]:
    """The stage's reference band, or its ranked list of reference bands, upper case."""
    band = params.get("reference_band")
    bands = [band] if isinstance(band, str) else list(band) if isinstance(band, (list, tuple)) else []
    if not bands or not all(isinstance(b, str) and b for b in bands):
        raise BadInput(
            f"stage {stage.name} for {unit.target}: parameter 'reference_band' is not set "
            f"for {unit.instrument or 'this unit'}"
        )
    return [b.upper() for b in bands]


def _owner(lm: LoadedManifest, exposure, default: str) -> str:
    """The manifest target an exposure belongs to (the lender, for a borrowed off-field)."""
    from processing.inputs import normalise_target

    for name, t in lm.manifest.targets.items():
        if exposure.target in (normalise_target(name), normalise_target(t.designation or "")):
            return name
    return default
