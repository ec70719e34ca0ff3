"""From a validated manifest to the task graph.

Tasks, in the order of reference/pipeline.md, limited to the stages this version has:

- ``lv1/<exposure>``: calwebb_detector1 on one uncal file (science and MIRI off-fields; an
  off-field exposure lent to another target is one task used by both).
- ``lv2/<exposure>``: calwebb_image2 on one science rate file; for MIRI with the target's
  off-field rate files (own, borrowed or both, per the manifest) as background members,
  combined per pixel with a 1.5-sigma clip into a master background and subtracted.
- ``lv3/<target>/<band>``: calwebb_image3 on all cal files of a target and band: tweakreg
  strict (NIRCam, shifts only) or off (MIRI), skymatch subtracting one global constant (the
  lowest sigma-clipped level), outlier detection, resample at the native scale with DQ.

The bespoke PHANGS stages (destripe, relative and absolute astrometry, Lyot separation, level
matching, anchoring, PSF matching) are not in this version and are not in the graph.

Each task declares its inputs (raw files or upstream tasks), its resolved parameters and the
files it writes. The engine, not the stage, decides where files live and whether a cached
result can be reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processing import jwst_stages
from processing.inputs import TargetBandInputs, assign_exposures, scan_exposures
from processing.parameters import resolve_parameters
from release.errors import BadInput
from release.manifest import LoadedManifest

#: The order of the stages in a run (those of this version).
STAGES = ("lv1", "lv2", "lv3")


@dataclass
class Task:
    id: str
    stage: str
    target: str
    band: str
    instrument: str
    deps: list[str] = field(default_factory=list)
    raw_inputs: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    param_origin: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)   # stage-specific (e.g. background members)

    @property
    def label(self) -> str:
        return self.id


@dataclass
class Graph:
    tasks: dict[str, Task]
    inputs: dict[tuple[str, str], TargetBandInputs]

    def order(self) -> list[Task]:
        """Topological order (stage order, then id): deterministic."""
        rank = {s: i for i, s in enumerate(STAGES)}
        return sorted(self.tasks.values(), key=lambda t: (rank[t.stage], t.id))

    def dependents(self, task_id: str) -> set[str]:
        out, frontier = set(), {task_id}
        while frontier:
            nxt = {t.id for t in self.tasks.values() if set(t.deps) & frontier} - out
            out |= nxt
            frontier = nxt
        return out


def _params(lm: LoadedManifest, stage: str, target: str, band: str, instrument: str):
    defaults = {stage: jwst_stages.default_parameters(stage, instrument)}
    resolved = resolve_parameters(lm.manifest, target, band, defaults)
    return resolved.stage(stage), resolved.origin.get(stage, {})


def build_graph(lm: LoadedManifest, targets: list[str] | None = None, bands: list[str] | None = None) -> Graph:
    m = lm.manifest
    if m.program.data.source == "mast":
        raise BadInput(
            f"{lm.path.name}: program.data.source = 'mast': downloading from MAST is not available in this "
            "version; download the uncal files and use source = 'local' with program.data.path"
        )
    data_dir = lm.resolve_path(m.program.data.path)
    inputs = assign_exposures(lm, scan_exposures(data_dir))
    for t in targets or []:
        if t not in m.targets:
            raise BadInput(f"--targets: '{t}' is not a target of {lm.path.name}")
    bands_u = [b.upper() for b in bands] if bands else None
    for b in bands_u or []:
        if b not in m.program.bands:
            raise BadInput(f"--bands: '{b}' is not a band of {lm.path.name}")
    if m.patch is not None:
        targets = [t for t in (targets or m.patch.targets) if t in m.patch.targets]
    tasks: dict[str, Task] = {}
    for (target, band), tb in sorted(inputs.items()):
        if (targets and target not in targets) or (bands_u and band not in bands_u):
            continue
        if m.patch is not None and (
            (m.patch.instruments and tb.instrument not in m.patch.instruments) or (m.patch.bands and band not in m.patch.bands)
        ):
            continue
        cal_ids = []
        for e in tb.science + tb.background:
            tid = f"lv1/{e.name}"
            if tid not in tasks:
                owner = _owner(lm, e, target)
                p, o = _params(lm, "lv1", owner, band, tb.instrument)
                tasks[tid] = Task(tid, "lv1", owner, band, tb.instrument, raw_inputs=[e.path], params=p, param_origin=o)
        for e in tb.science:
            tid = f"lv2/{e.name}"
            p, o = _params(lm, "lv2", target, band, tb.instrument)
            bkg = [f"lv1/{b.name}" for b in tb.background]
            tasks[tid] = Task(
                tid, "lv2", target, band, tb.instrument, deps=[f"lv1/{e.name}"] + bkg, params=p, param_origin=o,
                extra={"background": bkg, "background_source": tb.background_source if tb.instrument == "miri" else None},
            )
            cal_ids.append(tid)
        p, o = _params(lm, "lv3", target, band, tb.instrument)
        tid = f"lv3/{target}/{band}"
        tasks[tid] = Task(tid, "lv3", target, band, tb.instrument, deps=cal_ids, params=p, param_origin=o,
                          extra={"product": f"{target}_{band.lower()}"})
    if not tasks:
        raise BadInput(f"{lm.path.name}: nothing to process for the targets and bands asked for")
    return Graph(tasks, inputs)


def _owner(lm: LoadedManifest, exposure, default: str) -> str:
    """The manifest target an exposure belongs to (the lender, for a borrowed off-field)."""
    from processing.inputs import normalise_target

    for name, t in lm.manifest.targets.items():
        if exposure.target in (normalise_target(name), normalise_target(t.designation or "")):
            return name
    return default


def product_path(workdir: Path, task: Task) -> Path:
    return workdir / "products" / task.target / task.band.lower() / f"{task.extra['product']}_i2d.fits"
