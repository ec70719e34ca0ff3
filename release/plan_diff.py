"""What a manifest change will rerun and which release files it will change: ``hlsp plan
MANIFEST --against OLD_MANIFEST`` (for a pull request that edits a release manifest).

Both manifests' task graphs are built and every task's cache key computed (the engine's keys:
inputs by content, parameters, unit context, stage code, jwst and CRDS; nothing runs, nothing
is read but the raw files' hashes). Tasks are paired by id (``stage/target/band`` or
``stage/exposure``):

- ``changed``: the key differs; ``reasons`` says why (``parameters``: which ones, old -> new;
  ``inputs``: an upstream task it reads changed; ``files``: a raw or external file's content;
  ``context``, ``code``, ``versions``: the unit's facts, the stage's code, jwst or CRDS);
- ``new`` / ``removed``: only in the new / the old graph (a target or band added or dropped);
- ``unchanged``: the same key: the same recipe, whatever the cache holds.

Release files are paired by target, band, product type and extension (not version, which
every new release changes). A file is ``changed`` when a task it is made from changed (its
type's source product, declared in release/products/), ``new``/``removed`` when only one
release has it; the release's own files (README, manifest, file list, changelog) are made
anew by every release and are listed apart as ``release_files``.

:func:`plan_diff` returns a :class:`PlanDiff` (pydantic: its JSON Schema is
docs/plan-diff.schema.json, written by ``hlsp schema``); :func:`render_markdown` is the text
a CI job posts on the pull request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

TaskStatus = Literal["changed", "new", "removed"]
FileStatus = Literal["changed", "new", "removed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManifestRef(_Model):
    """One side of the comparison."""

    path: str = Field(description="The manifest file as given on the command line.")
    project: str
    version: str
    sha256: str = Field(description="The manifest's content hash (as `hlsp check` prints it).")


class ManifestChange(_Model):
    """One leaf of the manifests that differs (release bookkeeping such as the version left out)."""

    key: str = Field(description="Dotted manifest key, e.g. targets.ngc0628.parameters.band.F2100W.anchoring.n_bins.")
    old: object = Field(default=None, description="Old value (null: not set).")
    new: object = Field(default=None, description="New value (null: not set).")


class StageCount(_Model):
    """Per stage: how many tasks the new manifest has, and how many of them change."""

    stage: str
    tasks: int = Field(description="Tasks of this stage in the new manifest's graph.")
    changed: int
    new: int
    removed: int
    unchanged: int


class TaskChange(_Model):
    """A task whose recipe differs between the two manifests (it will run again, unless a cache
    already holds its new key)."""

    task: str = Field(
        description="Task id: stage/target/band, stage/target/instrument, stage/target or stage/exposure."
    )
    stage: str
    target: str
    band: str | None = None
    status: TaskStatus
    reasons: list[str] = Field(
        default_factory=list,
        description="Why the key changed: 'parameters: a.b old -> new', 'inputs: <task>', 'files: <name>', "
        "'context', 'code', 'versions'.",
    )


class FileChange(_Model):
    """A release file that the new manifest's release will hold different from the old one's."""

    file: str = Field(description="Its name in the new release (the old release's name for 'removed').")
    product: str = Field(description="File-name product type (img, img-gauss0p85as, anchoring, ...).")
    target: str
    band: str | None = None
    status: FileStatus
    tasks: list[str] = Field(default_factory=list, description="The changed or new tasks it is made from.")


class Summary(_Model):
    tasks: int = Field(description="Tasks in the new manifest's graph.")
    changed: int
    new: int
    removed: int
    unchanged: int
    files_changed: int
    files_new: int
    files_removed: int
    files_unchanged: int


class PlanDiff(_Model):
    """``hlsp plan MANIFEST --against OLD --format json``: what the change reruns and remakes."""

    schema_version: Literal[1] = SCHEMA_VERSION
    manifest: ManifestRef
    against: ManifestRef
    manifest_changes: list[ManifestChange]
    summary: Summary
    stages: list[StageCount]
    tasks: list[TaskChange] = Field(description="Changed, new and removed tasks, in graph order (removed last).")
    files: list[FileChange] = Field(description="Changed, new and removed release files (release files apart).")
    release_files: list[str] = Field(
        description="The release's own files, made anew by every release (README, manifests, file list, changes)."
    )


# --------------------------------------------------------------------------------------------


class _Side:
    """One manifest's release, task by task: its own graph, and for a patch what it carries
    from its parent (recursively): ``{task id: (task, key, engine)}`` in graph order, own
    tasks first."""

    def __init__(self, lm, targets, bands):
        from processing.executor import Engine
        from processing.pipeline import build_graph

        self.lm = lm
        self.graph = build_graph(lm, targets, [b.upper() for b in bands] if bands else None)
        self.engine = Engine(lm, self.graph, Path("."), allow_version_mismatch=True, read_only=True)
        keys = self.engine.task_keys()
        self.tasks = {t.id: (t, keys[t.id], self.engine) for t in self.graph.order()}
        self.own = set(self.tasks)
        if lm.manifest.patch is not None and lm.parent is not None:
            parent = _Side(lm.parent, targets, bands)
            for tid, entry in parent.tasks.items():
                self.tasks.setdefault(tid, entry)  # carried: made by the parent (or its parent)

    def made_in(self, unit) -> str:
        """The file version of the release that made ``unit`` (a patch carries its parent's)."""
        from release.naming import file_version

        lm = self.lm
        while lm.manifest.patch is not None and lm.parent is not None and not unit.regenerated(lm.manifest):
            lm = lm.parent
        return file_version(lm.manifest.release.version)


def _payload_reasons(old_task, new_task, old_engine, new_engine, changed: set[str]) -> list[str]:
    """Why a task's key differs (the parts of the engine's key payload that differ)."""
    from processing.executor import code_version

    reasons: list[str] = []
    from release.changelog import flatten

    a, b = flatten(old_task.params), flatten(new_task.params)
    for k in sorted(set(a) | set(b)):
        if a.get(k, "(unset)") != b.get(k, "(unset)"):
            reasons.append(f"parameters: {new_task.stage}.{k} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}")
    if old_task.context != new_task.context:
        reasons.append("context")
    ups_old = {r["task"] for refs in old_task.inputs.values() for r in refs if "task" in r}
    ups_new = {r["task"] for refs in new_task.inputs.values() for r in refs if "task" in r}
    for up in sorted(ups_new):
        if up in changed or up not in ups_old:
            reasons.append(f"inputs: {up}")
    for up in sorted(ups_old - ups_new):
        reasons.append(f"inputs: no longer {up}")

    def files(task, engine) -> dict[str, str]:
        return {
            Path(r["file"]).name: engine.hashes.sha256(r["file"])
            for refs in task.inputs.values()
            for r in refs
            if "file" in r
        }

    files_old, files_new = files(old_task, old_engine), files(new_task, new_engine)
    for name in sorted(set(files_old) | set(files_new)):
        if files_old.get(name) != files_new.get(name):
            reasons.append(f"files: {name}")
    if code_version(old_engine.registry[old_task.stage].run) != code_version(new_engine.registry[new_task.stage].run):
        reasons.append("code")
    if (old_engine.jwst_version, old_engine.crds, old_engine.allow_mismatch) != (
        new_engine.jwst_version,
        new_engine.crds,
        new_engine.allow_mismatch,
    ):
        reasons.append("versions")
    return reasons or ["inputs"]


def _ref(lm, given: Path) -> ManifestRef:
    r = lm.manifest.release
    return ManifestRef(path=str(given), project=r.project, version=r.version, sha256=lm.manifest.content_hash())


def _sources(units, side: _Side, stages) -> dict[tuple, tuple[list[str], object]]:
    """``{(target, band, product, ext): ([task ids it is made from], unit)}`` for the units
    made from a run's products (``source`` set); the release's own files are left out."""
    providers = stages.product_providers()
    by_stage_target: dict[tuple[str, str], list] = {}
    for t, _key, _engine in side.tasks.values():
        by_stage_target.setdefault((t.stage, t.target), []).append(t)
    out: dict[tuple, tuple[list[str], object]] = {}
    for u in units:
        if u.ptype.source is None:
            continue
        stage = providers[u.ptype.source]
        tasks = by_stage_target.get((stage.name, u.target), [])
        if u.band is not None:
            tasks = [t for t in tasks if t.band == u.band]
        out[(u.target, u.band, u.product, u.ptype.ext)] = (sorted(t.id for t in tasks), u)
    return out


def plan_diff(new_lm, old_lm, new_path: Path, old_path: Path, targets=None, bands=None) -> PlanDiff:
    """The :class:`PlanDiff` of ``new_lm`` against ``old_lm`` (loaded manifests), limited to
    ``targets``/``bands`` where given (as ``hlsp plan``). A patch is compared as the release it
    makes: what it regenerates, and what it carries from its parent (the parent's tasks)."""
    from release.changelog import manifest_changes
    from release.naming import make_name
    from release.products.registry import default_product_types

    new, old = _Side(new_lm, targets, bands), _Side(old_lm, targets, bands)
    registry = new.graph.registry

    changed_ids: set[str] = set()
    task_changes: list[TaskChange] = []
    for tid, (task, key, engine) in new.tasks.items():
        if tid not in old.tasks:
            task_changes.append(
                TaskChange(task=tid, stage=task.stage, target=task.target, band=task.band, status="new")
            )
            changed_ids.add(tid)
        elif key != old.tasks[tid][1]:
            changed_ids.add(tid)
            old_task, _, old_engine = old.tasks[tid]
            reasons = _payload_reasons(old_task, task, old_engine, engine, changed_ids)
            task_changes.append(
                TaskChange(
                    task=tid, stage=task.stage, target=task.target, band=task.band, status="changed", reasons=reasons
                )
            )
    for tid, (task, _key, _engine) in old.tasks.items():
        if tid not in new.tasks:
            task_changes.append(
                TaskChange(task=tid, stage=task.stage, target=task.target, band=task.band, status="removed")
            )
    rank = {s: i for i, s in enumerate(registry.order)}
    order = {tid: i for i, tid in enumerate(new.tasks)}
    task_changes.sort(key=lambda c: (c.status == "removed", rank.get(c.stage, 99), order.get(c.task, 0), c.task))

    stages = []
    for stage in registry.ordered():
        n_tasks = sum(1 for t, _k, _e in new.tasks.values() if t.stage == stage.name)
        st = [c for c in task_changes if c.stage == stage.name]
        n_changed = sum(c.status == "changed" for c in st)
        n_new = sum(c.status == "new" for c in st)
        stages.append(
            StageCount(
                stage=stage.name,
                tasks=n_tasks,
                changed=n_changed,
                new=n_new,
                removed=sum(c.status == "removed" for c in st),
                unchanged=n_tasks - n_changed - n_new,
            )
        )

    products = default_product_types()
    m_new, m_old = new_lm.manifest, old_lm.manifest
    new_units = products.units(m_new, registry)
    src_new = _sources(new_units, new, registry)
    src_old = _sources(products.units(m_old, old.graph.registry), old, old.graph.registry)

    def name(side: _Side, m, unit) -> str:
        filt = (unit.band or "multi").lower()
        return make_name(
            m.release.project, unit.instrument, unit.target, filt, side.made_in(unit), unit.product, unit.ptype.ext
        )

    def change(side: _Side, m, k: tuple, unit, status: str, tasks: list[str]) -> FileChange:
        target, band, product, _ext = k
        return FileChange(
            file=name(side, m, unit), product=product, target=target, band=band, status=status, tasks=tasks
        )

    files: list[FileChange] = []
    unchanged_files = 0
    for k, (tids, unit) in src_new.items():
        if k not in src_old:
            files.append(change(new, m_new, k, unit, "new", tids))
            continue
        moved = [t for t in tids if t in changed_ids]
        if moved or tids != src_old[k][0]:
            files.append(change(new, m_new, k, unit, "changed", moved))
        else:
            unchanged_files += 1
    files += [change(old, m_old, k, unit, "removed", []) for k, (_t, unit) in src_old.items() if k not in src_new]
    release_files = [name(new, m_new, u) for u in new_units if u.ptype.source is None]
    summary = Summary(
        tasks=len(new.tasks),
        changed=sum(c.status == "changed" for c in task_changes),
        new=sum(c.status == "new" for c in task_changes),
        removed=sum(c.status == "removed" for c in task_changes),
        unchanged=len(new.tasks) - sum(c.status in ("changed", "new") for c in task_changes),
        files_changed=sum(f.status == "changed" for f in files),
        files_new=sum(f.status == "new" for f in files),
        files_removed=sum(f.status == "removed" for f in files),
        files_unchanged=unchanged_files,
    )
    return PlanDiff(
        manifest=_ref(new_lm, new_path),
        against=_ref(old_lm, old_path),
        manifest_changes=[ManifestChange(key=c.key, old=c.old, new=c.new) for c in manifest_changes(m_old, m_new)],
        summary=summary,
        stages=stages,
        tasks=task_changes,
        files=files,
        release_files=release_files,
    )


def _cell(value) -> str:
    text = "(unset)" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(d: PlanDiff) -> str:
    """The plan diff as GitHub-flavoured Markdown (what a CI job posts on the pull request)."""
    s = d.summary
    lines = [
        f"## `hlsp plan`: {d.manifest.project} {d.manifest.version} against {d.against.version}",
        "",
        f"`{d.manifest.path}` against `{d.against.path}`: **{s.changed + s.new} of {s.tasks} tasks rerun** "
        f"({s.changed} changed, {s.new} new; {s.removed} removed), "
        f"**{s.files_changed + s.files_new} release files change** ({s.files_changed} changed, {s.files_new} new, "
        f"{s.files_removed} removed; {s.files_unchanged} the same recipe).",
        "",
    ]
    if d.manifest_changes:
        lines += ["### Manifest changes", "", "| key | old | new |", "| --- | --- | --- |"]
        lines += [f"| `{c.key}` | {_cell(c.old)} | {_cell(c.new)} |" for c in d.manifest_changes]
        lines.append("")
    else:
        lines += ["No manifest change apart from the release's bookkeeping.", ""]
    lines += [
        "### Tasks by stage",
        "",
        "| stage | tasks | changed | new | removed |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {c.stage} | {c.tasks} | {c.changed} | {c.new} | {c.removed} |" for c in d.stages]
    lines.append("")
    if d.tasks:
        lines += ["### Tasks that rerun", "", "| task | status | why |", "| --- | --- | --- |"]
        lines += [f"| `{t.task}` | {t.status} | {_cell('; '.join(t.reasons))} |" for t in d.tasks]
        lines.append("")
    if d.files:
        lines += ["### Release files that change", "", "| file | status | made by |", "| --- | --- | --- |"]
        lines += [f"| `{f.file}` | {f.status} | {_cell(', '.join(f.tasks))} |" for f in d.files]
        lines.append("")
    else:
        lines += ["No release product changes.", ""]
    lines += [f"Made anew by every release: {', '.join(f'`{n}`' for n in d.release_files)}.", ""]
    return "\n".join(lines)
