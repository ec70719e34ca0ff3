"""Run a task graph: cached, resumable, on a local process pool or a dask.distributed cluster.

Tasks are pure functions of their declared inputs: :func:`execute_task` gets a plain,
picklable description (the stage's run function by dotted name, input files, parameters, the
unit, provenance), runs it in a private scratch folder and publishes its declared outputs to
the content-addressed cache. The scheduler in this process decides what is cached, what runs
where (processing/executors.py), and what cannot run because something it needs failed.

Cache keys are exact (:meth:`Engine._key`): the stage, its code version (the source of every
project module it can execute, found by following its imports: :func:`code_version`), the
content of every file it reads (raw exposures, files the manifest names; by name and sha256,
not path, so another machine gets the same keys), the keys of the upstream tasks it reads, its
parameters and unit, the jwst version and the CRDS context's content (:func:`crds_fingerprint`).

Failures (a corrupt input, a missing file, a jwst step or CRDS error, a worker that died) fail
their task with a message naming the file and stage; tasks that need it are skipped;
independent targets go on; nothing from a failed task is published; finished entries are
never deleted.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processing import jwst_stages
from processing.cache import (
    PACKED,
    Cache,
    complete,
    content_sha256,
    file_sha256,
    materialize,
    pack,
    packable,
    stored,
    task_key,
)
from processing.errors import BadInput, HlspError, WorkFailed
from processing.pipeline import Graph, Task
from processing.stages import resolve

log = logging.getLogger(__name__)

#: The engine's own part of every product (the provenance it stamps): bumped when that changes.
ENGINE_VERSION = "0.2.0"
#: Header keywords this engine adds to every product (primary HDU).
PROVENANCE_KEYWORDS = ("HLSPMANI", "HLSPTASK", "HLSPCODE", "HLSPJWST", "HLSPCRDS", "HLSPVMIS")
#: Memory one worker may need (GB): full-frame NIRCam detector1+image2 peaked at 2.3 GB (measured).
WORKER_MEMORY_GB = 2.5


#: Top-level packages whose modules count as a stage's code (besides the stage's own package).
PROJECT_PACKAGES = ("processing",)
#: The engine's own modules a stage imports for its declaration (Stage, Input, Product, the
#: parameter checks): they never compute a product, and :data:`ENGINE_VERSION` stands for them
#: in every key (bump it when a change there changes what a task makes). Without this, every
#: edit of the declaration types would rerun every task of every release.
ENGINE_MODULES = ("processing", "processing.stages")


@functools.cache
def _package_dirs(top: str) -> tuple[Path, ...]:
    """Where a top-level package's modules live (found without importing it)."""
    spec = importlib.util.find_spec(top)
    if spec is None:
        return ()
    if spec.submodule_search_locations:
        return tuple(Path(d) for d in spec.submodule_search_locations)
    return (Path(spec.origin).parent,) if spec.origin else ()


def _module_file(name: str) -> tuple[Path | None, bool]:
    """``(source file, is a package)`` of a project module by dotted name, ``(None, False)`` if
    it is not a module (an attribute imported from one) or has no file (a namespace package)."""
    top, *rest = name.split(".")
    for d in _package_dirs(top):
        base = d.joinpath(*rest) if rest else d
        if rest and base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), False
        if (base / "__init__.py").is_file():
            return base / "__init__.py", True
        if not rest and d.is_file():  # a top-level single-file module
            return d, False
    if not rest:
        spec = importlib.util.find_spec(top)
        if spec is not None and spec.origin and spec.origin.endswith(".py") and not spec.submodule_search_locations:
            return Path(spec.origin), False
    return None, False


def _imported_names(name: str, source: bytes, is_package: bool) -> set[str]:
    """Every module name a module's source can import, at any depth (inside functions too): for
    ``from a import b`` both ``a`` and ``a.b`` (``b`` may be a module)."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names if a.name != "*"}
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    return out | {".".join(m.split(".")[:i]) for m in out for i in range(1, m.count(".") + 1)}


@functools.cache
def code_closure(module: str) -> tuple[tuple[str, Path], ...]:
    """The project modules a stage can execute: ``module`` (its run function's), its packages,
    and every module they import, at any depth and inside functions too, within the project's
    packages (:data:`PROJECT_PACKAGES` and ``module``'s own top-level package), but the
    engine's declaration modules (:data:`ENGINE_MODULES`). Sorted ``(dotted name, source
    file)`` pairs. Found by reading the sources, never by importing."""
    tops = set(PROJECT_PACKAGES) | {module.split(".")[0]}
    seen: dict[str, Path] = {}
    todo = [module] + [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in tops or name in ENGINE_MODULES:
            continue
        path, is_package = _module_file(name)
        if path is None:
            if name == module:
                raise HlspError(f"stage module {module} cannot be found")
            continue
        seen[name] = path
        todo += sorted(_imported_names(name, path.read_bytes(), is_package) - set(seen))
    return tuple(sorted(seen.items()))


#: Retention policies: ``default`` thins intermediates once their readers have their results;
#: ``all`` keeps every entry whole (for debugging, and the measurements that read them).
KEEP_POLICIES = ("default", "all")


def keep_policy(keep: str | None) -> str:
    """The retention policy: ``keep`` if given, else the environment's ``HLSP_KEEP``, else
    ``default``."""
    value = keep or os.environ.get("HLSP_KEEP") or "default"
    if value not in KEEP_POLICIES:
        raise BadInput(f"--keep / HLSP_KEEP: '{value}' is not one of {', '.join(KEEP_POLICIES)}")
    return value


@functools.cache
def code_version(run: str) -> str:
    """Engine version + hash of every project module a stage's run function (``module:function``)
    can execute (:func:`code_closure`): derived from the code, never a hand-kept list. Editing a
    module changes the keys of exactly the stages that can run it (and so their dependents')."""
    h = hashlib.sha256(ENGINE_VERSION.encode())
    for name, path in code_closure(run.partition(":")[0]):
        h.update(name.encode() + b"\0" + path.read_bytes())
    return f"{ENGINE_VERSION}+{h.hexdigest()[:12]}"


def clear_code_caches() -> None:
    """Forget the code versions (a long-lived process whose modules were edited, e.g. tests)."""
    for f in (code_version, code_closure, _package_dirs):
        f.cache_clear()


def installed_jwst() -> str:
    from importlib.metadata import version

    return version("jwst")


def default_workers() -> int:
    import psutil

    cores = os.cpu_count() or 1
    mem_gb = psutil.virtual_memory().available / 2**30
    return max(1, min(cores, int(mem_gb // WORKER_MEMORY_GB)))


_MAPPING_RE = re.compile(r"'([A-Za-z0-9_.-]+\.(?:pmap|imap|rmap))'")
_REFERENCE_RE = re.compile(r"'([A-Za-z0-9_.-]+\.(?:fits|asdf|json|yaml|txt))'")


def crds_fingerprint(crds_path: str | Path | None, context: str, hashes, references_by_content: bool = True) -> str:
    """The CRDS context by content: its mapping files and every reference file it names.

    References count by sha256 (remembered by ``hashes``) where ``references_by_content``
    (``crds_mode = "local"``: a context built or copied by hand, whose files nothing else
    guarantees), else by name: the real CRDS never reuses a name, and a key that changed when
    a reference was downloaded (or differed between two machines' caches) would rerun
    everything. Without a local cache, the context name."""
    if crds_path is None:
        return context
    mappings = Path(crds_path) / "mappings" / "jwst"
    if not (mappings / context).exists():
        return context
    h = hashlib.sha256(context.encode())
    seen: set[str] = set()
    todo = [context]
    refs: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = mappings / name
        if not path.exists():
            h.update(f"missing mapping {name}".encode())
            continue
        text = path.read_text(errors="replace")
        h.update(name.encode() + b"\0" + text.encode())
        todo += [m for m in _MAPPING_RE.findall(text) if m != name]
        refs.update(_REFERENCE_RE.findall(text))
    references = Path(crds_path) / "references" / "jwst"
    for ref in sorted(refs):
        if not references_by_content:
            h.update(ref.encode() + b"\0")
            continue
        found = sorted(references.glob(f"*/{ref}")) if references.is_dir() else []
        h.update(ref.encode() + b"\0" + (hashes.sha256(found[0]).encode() if found else b"not local"))
    return f"{context}:{h.hexdigest()[:16]}"


# --------------------------------------------------------------------------------------------
# In the worker
# --------------------------------------------------------------------------------------------


def _reset_peak_memory() -> bool:
    """Reset this process's peak resident memory (Linux: VmHWM), so a task measures its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_memory_mb(reset_ok: bool) -> tuple[float, str]:
    """(peak resident memory in MB, 'task' or 'worker': what the number covers)."""
    if reset_ok:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1), "task"
        except OSError:
            pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1), "worker"


def execute_task(spec: dict) -> dict:
    """Run one task described by ``spec`` and publish it to the cache; return its record."""
    from processing.fileio import remove_scratch

    if spec.get("env"):
        jwst_stages.apply_crds_environment(spec["env"])  # a worker of any executor
    cache = Cache(spec["cache"], writable=False)  # made and checked by the engine
    key = spec["key"]
    if complete(rec := cache.lookup(key)):
        return rec
    here = code_version(spec["run"])
    if here != spec["code_version"]:
        raise WorkFailed(
            f"{spec['task']}: this worker's code of stage {spec['stage']} ({here}) differs from the "
            f"engine's ({spec['code_version']}): install the same version on every worker"
        )
    scratch = cache.scratch(key)
    handler = logging.FileHandler(scratch / "task.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    t0 = time.time()
    reset_ok = _reset_peak_memory()
    published = False
    try:
        # a packed input (a kept entry's .fits.gz) is read decompressed from the scratch folder
        inputs, unpacked = materialize(spec["inputs"], scratch / ".inputs")
        written = resolve(spec["run"])(inputs, scratch, spec["params"], spec["context"])
        outputs = _declared_outputs(spec, scratch, written)
        for out in outputs:
            st = out.stat()
            # a link is an input passed through unchanged: never edited
            if st.st_nlink == 1 and (st.st_dev, st.st_ino) not in unpacked:
                _stamp_provenance(out, spec["provenance"])
        peak, scope = _peak_memory_mb(reset_ok)
        hashes, packed = {}, {}
        for i, o in enumerate(outputs):
            if spec.get("pack") and packable(o.name, o.stat().st_size):  # a kept entry's bulky FITS file
                outputs[i], hashes[o.name], packed[o.name] = pack(o)  # read once: both hashes
            else:
                hashes[o.name] = file_sha256(o)
        record = {
            "task": spec["task"],
            "stage": spec["stage"],
            "key": key,
            "params": spec["params"],
            "inputs": spec["input_hashes"],
            "provenance": spec["provenance"],
            "context": spec["context"],
            "outputs": hashes,
            # the bytes stored: a packed output's compressed size
            "bytes": {name: o.stat().st_size for name, o in zip(hashes, outputs)},
            **({"packed": packed} if packed else {}),
            "elapsed_s": round(time.time() - t0, 2),
            "peak_rss_mb": peak,
            "peak_rss_scope": scope,
            "host": os.uname().nodename,
            "pid": os.getpid(),
        }
        logging.getLogger().removeHandler(handler)
        handler.close()
        cache.publish(key, scratch, record)
        published = True
        return record
    finally:
        if handler in logging.getLogger().handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if not published and scratch.exists():
            remove_scratch(scratch)  # our own scratch: nothing of a failed task is kept


def _declared_outputs(spec: dict, scratch: Path, written: list) -> list[Path]:
    """The files the run function wrote that its declaration names; everything else in the
    scratch (input links, association files) is removed before publishing."""
    suffixes = tuple(spec["outputs"])
    outputs = sorted({Path(p).resolve() for p in written})
    for p in outputs:
        if p.parent != scratch.resolve() or not p.is_file():
            raise WorkFailed(f"{spec['task']}: the stage returned {p}, which is not a file in its scratch folder")
        if not p.name.endswith(suffixes):
            raise WorkFailed(
                f"{spec['task']}: the stage wrote {p.name}, which is not a declared output ({', '.join(suffixes)})"
            )
    missing = sorted(set(spec.get("required_outputs", [])) - {p.name for p in outputs})
    if missing:
        raise WorkFailed(
            f"{spec['task']}: the stage did not write {', '.join(missing)} (one refined file per member exposure)"
        )
    keep = {p.name for p in outputs} | {"task.log"}
    for p in scratch.iterdir():
        if p.name not in keep:
            if p.is_dir() and not p.is_symlink():
                from processing.fileio import remove_scratch

                remove_scratch(p)
            else:
                p.unlink()
    return [scratch / p.name for p in outputs]


def _stamp_provenance(path: Path, prov: dict) -> None:
    from astropy.io import fits

    if not path.name.endswith(".fits"):
        return
    with fits.open(path, mode="update") as hdul:
        h = hdul[0].header
        # 64-character values: no room left on the card for a comment (docs/engine.md, Provenance)
        h["HLSPMANI"] = prov["manifest_sha256"]
        h["HLSPTASK"] = prov["task_key"]
        h["HLSPCODE"] = (prov["code_version"], "hlsp engine code version")
        h["HLSPJWST"] = (prov["jwst_version"], "jwst version that ran")
        h["HLSPCRDS"] = (prov["crds_context"], "CRDS context of every reference lookup")
        h["HLSPVMIS"] = (bool(prov["version_mismatch_allowed"]), "jwst differs from the manifest pin")


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------


@dataclass
class TaskResult:
    task: Task
    status: str  # cached | ran | not needed (thinned, its readers cached) | failed | skipped
    key: str | None = None
    record: dict | None = None
    error: str | None = None
    elapsed_s: float = 0.0


@dataclass
class ProductEntry:
    """One release product of a run: what it is, for which unit, from which task, where."""

    product: str
    target: str
    band: str | None
    instrument: str | None
    task: str
    key: str
    path: Path
    #: the product type as its stage declares it (``img-{variant}`` for ``img-gauss0p85as``):
    #: what packaging writes it with
    kind: str = ""

    def __post_init__(self):
        self.kind = self.kind or self.product

    def as_dict(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "target": self.target,
            "band": self.band,
            "instrument": self.instrument,
            "task": self.task,
            "key": self.key,
            "file": self.path.name,
        }


@dataclass
class RunSummary:
    results: dict[str, TaskResult] = field(default_factory=dict)
    products: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0
    executor: str = "local"
    #: bytes the tasks that ran wrote; bytes the retention policy released (thinned entries)
    bytes_written: int = 0
    bytes_released: int = 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results.values() if r.status == status)

    @property
    def ok(self) -> bool:
        return not any(r.status in ("failed", "skipped") for r in self.results.values())


class Engine:
    """Runs (or, with ``read_only``, only plans) a graph in a work folder with a task cache.

    ``read_only``: nothing is created or written (``hlsp plan``, and the key computation of
    ``hlsp package``); :meth:`run` needs a writable engine. ``executor``: ``local`` (a process
    pool, the default) or ``dask`` (a dask.distributed LocalCluster, or the scheduler at
    ``scheduler``). ``keep``: the retention policy (:func:`keep_policy`).

    Retention (``keep = "default"``): the entries of the stages that are expensive to redo
    (declared ``retain``: detector1's rate files)
    and of the stages that provide the release products are kept whole; every other entry is an intermediate, thinned
    (processing/cache.py) as soon as every task that reads it has its result. A task whose
    entry is missing or thinned runs only when something needs it: it provides a product, or a
    task that must run reads it. ``keep = "all"`` thins nothing.
    """

    def __init__(
        self,
        lm,
        graph: Graph,
        workdir: Path,
        cache_dir: Path | None = None,
        allow_version_mismatch: bool = False,
        workers: int | None = None,
        read_only: bool = False,
        executor: str = "local",
        scheduler: str | None = None,
        keep: str | None = None,
    ):
        self.lm, self.graph = lm, graph
        self.keep = keep_policy(keep)
        self.registry = graph.registry
        self._kept_stages = self.registry.kept_whole()
        self.read_only = read_only
        self.workdir = Path(workdir).resolve()
        self.cache = Cache(cache_dir or self.workdir / "cache", writable=not read_only)
        m = lm.manifest
        self.jwst_version = installed_jwst()
        if self.jwst_version != m.pins.jwst and not allow_version_mismatch:
            raise BadInput(
                f"{lm.path.name}: pins.jwst is {m.pins.jwst} but jwst {self.jwst_version} is installed; "
                "install the pinned version, or pass --allow-version-mismatch (recorded in every product)"
            )
        self.allow_mismatch = self.jwst_version != m.pins.jwst
        crds_path = lm.resolve_path(m.pins.crds_path) if m.pins.crds_path else os.environ.get("CRDS_PATH")
        if m.pins.crds_mode == "local" and (
            crds_path is None or not Path(crds_path, "mappings", "jwst", m.pins.crds_context).exists()
        ):
            raise BadInput(
                f"{lm.path.name}: pins.crds_mode is 'local' but the CRDS cache {crds_path} does not hold "
                f"{m.pins.crds_context}"
            )
        self.crds_path = crds_path
        self.env = jwst_stages.crds_environment(
            crds_path, m.pins.crds_context, m.pins.crds_mode, m.pins.crds_server_url
        )
        if executor not in ("local", "dask"):
            raise BadInput(f"--executor: '{executor}' is not one of local, dask")
        self.executor_kind = "dask" if scheduler else executor
        self.scheduler = scheduler
        self.workers = workers or default_workers()
        from processing.inputs import HashIndex

        self.hashes = HashIndex(self.cache.root / "input-hashes.json")

    @functools.cached_property
    def crds(self) -> str:
        pins = self.lm.manifest.pins
        return crds_fingerprint(
            self.crds_path, pins.crds_context, self.hashes, references_by_content=pins.crds_mode == "local"
        )

    # -- keys ------------------------------------------------------------------------------
    def _input_files(self, task: Task, keys: dict[str, str], records: dict[str, dict]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, refs in task.inputs.items():
            files: list[str] = []
            for r in refs:
                if "file" in r:
                    files.append(r["file"])
                else:
                    entry = self.cache.entry(keys[r["task"]])
                    # "member": one exposure's file of a wider refining task
                    wanted = (
                        (lambda n: n == r["member"] + r["suffix"])
                        if "member" in r
                        else (lambda n: n.endswith(r["suffix"]))
                    )
                    files += [str(entry / n) for n in sorted(records[r["task"]]["outputs"]) if wanted(n)]
            out[name] = files
        return out

    def _key(self, task: Task, keys: dict[str, str]) -> tuple[str, dict]:
        """The task's cache key, from the keys of the tasks it reads (``keys``: task id -> key)."""
        stage = self.registry[task.stage]
        hashes: dict[str, list] = {}
        for name, refs in task.inputs.items():
            # files by name and content (not path: another machine gets the same key); upstream
            # results by their task keys, which name a recipe recursively, so identical work
            # keeps every downstream key although jwst stamps each file with its creation time
            hashes[name] = [
                {"file": Path(r["file"]).name, "sha256": self.hashes.sha256(r["file"])}
                if "file" in r
                else {
                    "task": keys[r["task"]],
                    "suffix": r["suffix"],
                    **({"member": r["member"]} if "member" in r else {}),
                }
                for r in refs
            ]
        payload = {
            "stage": task.stage,
            "inputs": hashes,
            "params": task.params,
            "context": task.context,
            "code": code_version(stage.run),
            "jwst": self.jwst_version,
            "crds": self.crds,
            # a product made against the pin's wishes says so in its header: a different result
            "version_mismatch_allowed": self.allow_mismatch,
        }
        return task_key(payload), hashes

    def _spec(self, task: Task, key: str, hashes: dict, keys: dict, records: dict) -> dict:
        stage = self.registry[task.stage]
        return {
            "task": task.id,
            "stage": task.stage,
            "key": key,
            "cache": str(self.cache.root),
            "run": stage.run,
            "code_version": code_version(stage.run),
            "outputs": stage.concrete_outputs(task.context.get("variants")),
            "required_outputs": self._required_outputs(task),
            "env": self.env,
            "pack": self.keep == "default" and task.stage in self._kept_stages,
            "inputs": self._input_files(task, keys, records),
            "input_hashes": hashes,
            "params": task.params,
            "context": task.context,
            "provenance": {
                "manifest_sha256": self.lm.manifest.content_hash(),
                "manifest_file": str(self.lm.path),
                "task_key": key,
                "task": task.id,
                "code_version": code_version(stage.run),
                "jwst_version": self.jwst_version,
                "jwst_pinned": self.lm.manifest.pins.jwst,
                "crds_context": self.lm.manifest.pins.crds_context,
                "crds_fingerprint": self.crds,
                "version_mismatch_allowed": self.allow_mismatch,
                "parameters": task.params,
                "parameter_origin": task.param_origin,
            },
        }

    def _required_outputs(self, task: Task) -> list[str]:
        """A wider refiner must write each member exposure's refined file (its readers read
        them by name)."""
        if not self.registry.widens(task.stage):
            return []
        stage = self.registry[task.stage]
        target, suffix = stage.refines
        conn = next(i for i in stage.inputs if i.stage == target and i.suffix == suffix and i.relation == "members")
        return [(r.get("member") or r["task"].split("/", 1)[1]) + suffix for r in task.inputs[conn.name]]

    def task_keys(self) -> dict[str, str]:
        """Every task's cache key, computed from the inputs and the manifest alone (nothing runs)."""
        keys: dict[str, str] = {}
        for task in self.graph.order():
            keys[task.id] = self._key(task, keys)[0]
        return keys

    def plan(self) -> dict[str, str]:
        """``{task id: 'cached' | 'run' | 'not needed'}`` without running or writing anything
        ('not needed': not in the cache whole, but every task that reads it is: a thinned
        intermediate). An empty or absent cache needs no key (and so reads no raw file: a first
        plan of a large program is instant)."""
        objects = self.cache.root / "objects"
        if not objects.is_dir() or not any(objects.iterdir()):
            return {tid: "run" for tid in self.graph.tasks}
        present = {tid for tid, key in self.task_keys().items() if complete(self.cache.lookup(key))}
        must = self._must_run(present)
        return {t: "cached" if t in present else ("run" if t in must else "not needed") for t in self.graph.tasks}

    # -- retention -------------------------------------------------------------------------
    def _children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {tid: [] for tid in self.graph.tasks}
        for tid, t in self.graph.tasks.items():
            for d in t.deps:
                out[d].append(tid)
        return out

    def _kept(self, task: Task) -> bool:
        """Whether a task's entry is kept whole (``--keep all``, or its stage is one the
        registry keeps whole: :meth:`~processing.stages.Registry.kept_whole`)."""
        return self.keep == "all" or task.stage in self._kept_stages

    def _must_run(self, present: set[str]) -> set[str]:
        """The tasks to run: not in the cache whole, and providing a release product (its
        stage is the provider of a product type: a stage whose mosaic a later one refines is
        not), read by nothing, or read by a task that must run (so a thinned intermediate whose
        readers are all cached stays thinned)."""
        children = self._children()
        providers = {s.name for s in self.registry.product_providers().values()}
        must: set[str] = set()
        for task in reversed(self.graph.order()):
            tid = task.id
            if tid in present:
                continue
            if task.stage in providers or not children[tid] or any(c in must for c in children[tid]):
                must.add(tid)
        return must

    # -- products --------------------------------------------------------------------------
    def product_index(self, keys: dict[str, str] | None = None) -> tuple[list[ProductEntry], list[str]]:
        """The release products of this manifest's graph, found in the cache by task key.

        Returns ``(entries, [task ids whose products are not in the cache])``. Each product
        type comes from the stage that provides it (the most downstream one). Each file is
        checked against its record (sha256) and its HLSPTASK header (FITS) names its key: a
        product made from another manifest (other parameters, inputs or versions) has another
        key and is never returned, whatever a shared work folder holds.
        """
        entries, missing = self._product_entries(keys or self.task_keys(), verify=True)
        return [e for e, _ in entries], missing

    def _product_entries(self, keys: dict[str, str], verify: bool) -> tuple[list[tuple[ProductEntry, dict]], list[str]]:
        """``([(entry, task record)], [task ids without their product])`` for the tasks in
        ``keys``; ``verify`` re-reads each file against its record and HLSPTASK (packaging
        does; publishing right after the run, which wrote and hashed them, does not)."""
        from astropy.io import fits

        entries: list[tuple[ProductEntry, dict]] = []
        missing: list[str] = []
        for template, stage in self.registry.product_providers().items():
            declared = next(p for p in stage.products if p.type == template)
            for task in self.graph.order():
                if task.stage != stage.name or task.id not in keys:
                    continue
                key = keys[task.id]
                rec = self.cache.lookup(key)
                for ptype, suffix in declared.expand(task.context.get("variants")):
                    names = sorted(n for n in (rec or {}).get("outputs", {}) if n.endswith(suffix))
                    if rec is None or not names:
                        if task.id not in missing:
                            missing.append(task.id)
                        continue
                    for n in names:
                        path = stored(self.cache.entry(key), n, rec)
                        if verify and file_sha256(path) != content_sha256(n, rec):
                            raise WorkFailed(
                                f"{path}: content differs from its cache record (sha256): the cache entry was altered"
                            )
                        if verify and n.endswith(".fits") and fits.getval(path, "HLSPTASK", 0) != key:
                            raise WorkFailed(
                                f"{path}: HLSPTASK does not name its cache key {key}: the cache entry was altered"
                            )
                        entries.append(
                            (
                                ProductEntry(
                                    ptype, task.target, task.band, task.instrument, task.id, key, path, kind=template
                                ),
                                rec,
                            )
                        )
        return entries, missing

    # -- running ---------------------------------------------------------------------------
    def run(self, progress: Callable[[str, str], None] | None = None) -> RunSummary:
        """Run every task not in the cache; one run at a time per work folder (a lock)."""
        from processing.fileio import folder_lock

        if self.read_only:
            raise HlspError("a read-only engine cannot run")
        with folder_lock(self.workdir, "the work folder", "run"):
            with folder_lock(self.cache.root, "the task cache", "run", shared=True):  # prune waits for us
                return self._run(progress)

    def _executor(self):
        from processing.executors import DaskExecutor, LocalExecutor

        if self.executor_kind == "dask":
            return DaskExecutor(self.workers, self.env, scheduler=self.scheduler)
        return LocalExecutor(self.workers, self.env)

    def _run(self, progress: Callable[[str, str], None] | None) -> RunSummary:
        t0 = time.time()
        summary = RunSummary(executor=self.executor_kind)
        keys: dict[str, str] = {}
        records: dict[str, dict] = {}
        stale = self.cache.clean_stale_scratch()
        if stale:
            log.info("removed %d scratch folder(s) left by interrupted runs", stale)
        order = self.graph.order()
        hashes_of: dict[str, dict] = {}
        for task in order:  # every key first: what must run depends on what is cached downstream
            keys[task.id], hashes_of[task.id] = self._key(task, keys)
        found = {t.id: self.cache.lookup(keys[t.id]) for t in order}
        present = {tid for tid, rec in found.items() if complete(rec)}
        must = self._must_run(present)
        children = self._children()
        waiting = {tid: len(c) for tid, c in children.items()}  # readers without their result yet
        resolved: set[str] = set()  # cached, ran or not needed: what its readers can go on from
        pending = {t.id: t for t in order}
        running: dict[Any, tuple[Task, str, float]] = {}
        attempts: dict[str, int] = {}  # tasks run again after their worker died
        # a task is ready when every task it reads has its result: counted, not searched for
        # (a survey's graph has tens of thousands of tasks); the ready ones go in graph order
        rank = {t.id: i for i, t in enumerate(order)}
        unresolved = {t.id: len(set(t.deps)) for t in order}
        ready = [(rank[tid], tid) for tid, n in unresolved.items() if n == 0]
        heapq.heapify(ready)

        def has_result(task: Task) -> None:
            """A task has its result: its readers count it; an intermediate whose readers all
            have theirs is thinned."""
            resolved.add(task.id)
            for c in children[task.id]:
                unresolved[c] -= 1
                if unresolved[c] == 0 and c in pending:
                    heapq.heappush(ready, (rank[c], c))
            for d in set(task.deps):
                waiting[d] -= 1
                dep = self.graph.tasks[d]
                status = summary.results[d].status if d in summary.results else None
                if waiting[d] == 0 and not self._kept(dep) and status in ("cached", "ran"):
                    # a cached entry's record was read at the start: not read again
                    summary.bytes_released += self.cache.thin(keys[d], found[d] if status == "cached" else None)

        def skip_readers(tid: str) -> None:
            """Every task that reads ``tid`` (which failed or was skipped), and theirs: skipped."""
            stack = [tid]
            while stack:
                bad = stack.pop()
                for c in children[bad]:
                    if c in pending:
                        del pending[c]
                        summary.results[c] = TaskResult(
                            self.graph.tasks[c], "skipped", error=f"needs {bad}, which did not complete"
                        )
                        _tick(progress, self.graph.tasks[c], "skipped")
                        stack.append(c)

        with self._executor() as pool:
            while pending or running:
                while ready:
                    _, tid = heapq.heappop(ready)
                    if tid not in pending:
                        continue
                    task = pending.pop(tid)
                    key, hashes = keys[tid], hashes_of[tid]
                    if tid in present:
                        records[tid] = found[tid]
                        summary.results[tid] = TaskResult(task, "cached", key, found[tid])
                        _tick(progress, task, "cached")
                        has_result(task)
                        continue
                    if tid not in must:  # thinned, and every task that reads it has its result
                        summary.results[tid] = TaskResult(task, "not needed", key, found[tid])
                        _tick(progress, task, "not needed")
                        has_result(task)
                        continue
                    spec = self._spec(task, key, hashes, keys, records)
                    fut = pool.submit(
                        execute_task, spec, memory_gb=self.registry[task.stage].memory_gb, isolated=task.id in attempts
                    )
                    running[fut] = (task, key, time.time())
                if not running:
                    if pending:  # nothing runs and nothing is ready: a cycle would be a bug
                        raise WorkFailed(f"{len(pending)} task(s) can never start: " + ", ".join(sorted(pending)[:5]))
                    continue
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    task, key, started = running.pop(fut)
                    try:
                        rec = fut.result()
                        records[task.id] = rec
                        summary.results[task.id] = TaskResult(task, "ran", key, rec, elapsed_s=time.time() - started)
                        summary.bytes_written += sum((rec.get("bytes") or {}).values())
                        _tick(progress, task, "ran")
                        has_result(task)
                    except HlspError as exc:
                        summary.results[task.id] = TaskResult(task, "failed", key, error=str(exc))
                        log.error("%s", exc)
                        _tick(progress, task, "failed")
                        skip_readers(task.id)
                    except Exception as exc:  # a worker that died (memory, kill) or an unexpected bug
                        reason = pool.describe_failure(exc)
                        if pool.retryable(exc) and attempts.get(task.id, 0) < 1:
                            attempts[task.id] = attempts.get(task.id, 0) + 1
                            log.warning("%s: %s; running it once more", task.id, reason)
                            pending[task.id] = task
                            heapq.heappush(ready, (rank[task.id], task.id))
                            continue
                        summary.results[task.id] = TaskResult(
                            task, "failed", key, error=f"{task.stage} failed on {task.id}: {reason}"
                        )
                        log.error("%s: %s", task.id, reason)
                        _tick(progress, task, "failed")
                        skip_readers(task.id)
        self.hashes.save()
        summary.products = self._publish(keys)
        summary.elapsed_s = time.time() - t0
        return summary

    def _publish(self, keys: dict[str, str]) -> list[Path]:
        """Link the finished products into ``workdir/products/<target>/<band>/`` with a
        provenance sidecar each, and write the product index ``workdir/products/index.json``."""
        from processing.fileio import atomic_path, atomic_write_text, inside

        entries, _ = self._product_entries(keys, verify=False)  # failed tasks simply have none
        out = []
        index = []
        for e, rec in entries:
            folder = inside(
                self.workdir / "products" / e.target / (e.band or e.instrument or "all").lower(),
                self.workdir,
                "a product folder",
            )
            dest = folder / e.path.name
            if not (dest.exists() and os.path.samefile(e.path, dest)):
                with atomic_path(dest) as tmp:
                    tmp.unlink()
                    os.link(e.path, tmp)
            atomic_write_text(sidecar(dest), json.dumps(rec, indent=1, sort_keys=True, default=str))
            index.append({**e.as_dict(), "path": str(dest.relative_to(self.workdir))})
            out.append(dest)
        if index:
            atomic_write_text(
                self.workdir / "products" / "index.json",
                json.dumps({"manifest_sha256": self.lm.manifest.content_hash(), "products": index}, indent=1),
            )
        return sorted(out)


def unpublish(workdir: Path, keep_keys: set[str]) -> tuple[int, int]:
    """Remove from ``workdir/products/`` the links (and provenance sidecars) of the products
    whose task keys are not in ``keep_keys``, and their lines of the product index: what
    ``hlsp cache prune`` removes must not stay alive through the last run's product links.
    Returns ``(products removed, bytes no other link holds)``."""
    from processing.fileio import atomic_write_text, inside

    index_path = Path(workdir) / "products" / "index.json"
    if not index_path.is_file():
        return 0, 0
    index = json.loads(index_path.read_text())
    kept, n, freed = [], 0, 0
    for e in index.get("products", []):
        if e.get("key") in keep_keys:
            kept.append(e)
            continue
        rel = Path(e["path"])
        if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != ("products",):
            raise HlspError(f"{index_path}: product path {e['path']} is not under products/: the index was altered")
        path = inside(Path(workdir) / rel.parent, Path(workdir), "a product folder") / rel.name
        for p in (path, sidecar(path)):
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            freed += st.st_size if st.st_nlink <= 1 else 0
            p.unlink()
        n += 1
    atomic_write_text(index_path, json.dumps({**index, "products": kept}, indent=1))
    return n, freed


def sidecar(product: Path) -> Path:
    """The provenance sidecar of a linked product: ``x_i2d.prov.json`` for ``x_i2d.fits`` and
    for a packed ``x_i2d.fits.gz``."""
    name = product.name.removesuffix(PACKED)
    return product.with_name(name).with_suffix(".prov.json")


def _tick(progress, task: Task, status: str) -> None:
    if progress is not None:
        progress(task.stage, status)


#: What may differ between two runs of the same task: the file-creation time jwst writes
#: (DATE card, and the DATE column of HDRTAB, which holds the input files' headers) and the
#: ASDF extension, which embeds the step logs with their timestamps, the scratch folder's
#: name and that date (its WCS is compared separately by evaluating it). Every other header
#: card, every array and the provenance are identical.
VOLATILE_CARDS = ("DATE",)
VOLATILE_HDUS = ("ASDF",)


def fits_fingerprint(path: str | Path) -> dict[str, str]:
    """sha256 per HDU of the header (minus volatile cards) and the data bytes."""
    import hashlib

    import numpy as np
    from astropy.io import fits

    out = {}
    with fits.open(path) as hdul:
        for i, h in enumerate(hdul):
            name = h.name or str(i)
            if name in VOLATILE_HDUS:
                continue
            cards = [str(c) for c in h.header.cards if c.keyword not in VOLATILE_CARDS]
            digest = hashlib.sha256("\n".join(cards).encode())
            if isinstance(h, (fits.BinTableHDU, fits.TableHDU)):
                for col in h.columns.names:
                    if col not in VOLATILE_CARDS:
                        digest.update(col.encode() + np.asarray(h.data[col]).tobytes())
            elif h.data is not None:
                digest.update(np.ascontiguousarray(h.data).tobytes())
            out[f"{i}:{name}"] = digest.hexdigest()
    return out
