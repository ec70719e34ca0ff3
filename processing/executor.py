"""Run a task graph: cached, resumable, in a local process pool.

Tasks are pure functions of their declared inputs: :func:`execute_task` gets a plain,
picklable description (stage, input files, parameters, provenance), writes its outputs into
a scratch folder and publishes them to the content-addressed cache. The scheduler in this
process decides what is cached, what runs, and what cannot run because something it needs
failed. The pool is where a dask.distributed executor drops in: it only needs ``submit`` and
futures.

Failures (a corrupt input, a missing file, a jwst step or CRDS error) fail their task with
a message naming the file and stage; tasks that need it are skipped; independent targets go
on; nothing from a failed task is published; finished entries are never deleted.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from processing import jwst_stages
from processing.cache import Cache, file_sha256, task_key
from processing.pipeline import Graph, Task, product_path
from release.errors import BadInput, HlspError, WorkFailed

log = logging.getLogger(__name__)

#: Engine code version: bumped when the meaning of a stage's outputs changes. The content
#: hash of the stage's implementation is added to it (see :func:`code_version`).
ENGINE_VERSION = "0.1.0"
#: Header keywords this engine adds to every product (primary HDU).
PROVENANCE_KEYWORDS = ("HLSPMANI", "HLSPTASK", "HLSPCODE", "HLSPJWST", "HLSPCRDS", "HLSPVMIS")
#: Memory one worker may need (GB): full-frame NIRCam detector1+image2 peaked at 2.3 GB (measured).
WORKER_MEMORY_GB = 2.5


@functools.lru_cache(maxsize=None)
def code_version(stage: str) -> str:
    """Engine version + hash of the stage implementation, read once per process."""
    import hashlib

    src = Path(jwst_stages.__file__).read_bytes() + Path(__file__).read_bytes()
    return f"{ENGINE_VERSION}+{hashlib.sha256(src).hexdigest()[:12]}"


def installed_jwst() -> str:
    from importlib.metadata import version

    return version("jwst")


def default_workers() -> int:
    import psutil

    cores = os.cpu_count() or 1
    mem_gb = psutil.virtual_memory().available / 2**30
    return max(1, min(cores, int(mem_gb // WORKER_MEMORY_GB)))


# --------------------------------------------------------------------------------------------
# In the worker
# --------------------------------------------------------------------------------------------


def execute_task(spec: dict) -> dict:
    """Run one task described by ``spec`` and publish it to the cache; return its record."""
    cache = Cache(spec["cache"], writable=False)  # made and checked by the engine
    key = spec["key"]
    if (rec := cache.lookup(key)) is not None:
        return rec
    scratch = cache.scratch(key)
    handler = logging.FileHandler(scratch / "task.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    t0 = time.time()
    published = False
    try:
        outputs = _run_stage(spec, scratch)
        for out in outputs:
            _stamp_provenance(out, spec["provenance"])
        record = {
            "task": spec["task"], "stage": spec["stage"], "key": key, "params": spec["params"],
            "inputs": spec["input_hashes"], "provenance": spec["provenance"],
            "outputs": {o.name: file_sha256(o) for o in outputs},
            "elapsed_s": round(time.time() - t0, 2), "peak_rss_mb": round(_peak_rss_mb(), 1),
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
            from release.fileio import remove_scratch

            remove_scratch(scratch)  # our own scratch: nothing of a failed task is kept


def _run_stage(spec: dict, scratch: Path) -> list[Path]:
    stage, inputs, params = spec["stage"], spec["inputs"], spec["params"]
    if stage == "lv1":
        return [jwst_stages.run_detector1(Path(inputs["uncal"][0]), scratch, params)]
    if stage == "lv2":
        bkg = [Path(p) for p in inputs.get("background", [])]
        cal = jwst_stages.run_image2(Path(inputs["rate"][0]), scratch, params, background=bkg or None)
        _drop_links(scratch, keep={cal.name})
        return [cal]
    if stage == "lv3":
        i2d = jwst_stages.run_image3([Path(p) for p in inputs["cal"]], scratch, spec["extra"]["product"], params)
        _drop_links(scratch, keep={i2d.name}, keep_suffixes=("_crf.fits",))
        return [i2d] + sorted(scratch.glob("*_crf.fits"))
    raise HlspError(f"unknown stage {stage}")


def _drop_links(folder: Path, keep: set[str], keep_suffixes: tuple[str, ...] = ()) -> None:
    """Remove input links and association files from a task's scratch; keep its outputs and log."""
    for p in folder.iterdir():
        if p.name in keep or p.name == "task.log" or p.name.endswith(keep_suffixes):
            continue
        p.unlink()


def _stamp_provenance(path: Path, prov: dict) -> None:
    from astropy.io import fits

    if not path.name.endswith(".fits"):
        return
    with fits.open(path, mode="update") as hdul:
        h = hdul[0].header
        # 64-character values: no room left on the card for a comment (see docs/provenance)
        h["HLSPMANI"] = prov["manifest_sha256"]
        h["HLSPTASK"] = prov["task_key"]
        h["HLSPCODE"] = (prov["code_version"], "hlsp engine code version")
        h["HLSPJWST"] = (prov["jwst_version"], "jwst version that ran")
        h["HLSPCRDS"] = (prov["crds_context"], "CRDS context of every reference lookup")
        h["HLSPVMIS"] = (bool(prov["version_mismatch_allowed"]), "jwst differs from the manifest pin")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------


@dataclass
class TaskResult:
    task: Task
    status: str                      # cached | ran | failed | skipped
    key: str | None = None
    record: dict | None = None
    error: str | None = None
    elapsed_s: float = 0.0


@dataclass
class RunSummary:
    results: dict[str, TaskResult] = field(default_factory=dict)
    products: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results.values() if r.status == status)

    @property
    def ok(self) -> bool:
        return not any(r.status in ("failed", "skipped") for r in self.results.values())


class Engine:
    """Runs (or, with ``read_only``, only plans) a graph in a work folder with a task cache.

    ``read_only``: nothing is created or written (``hlsp plan``, and the key computation of
    ``hlsp package``); :meth:`run` needs a writable engine.
    """

    def __init__(self, lm, graph: Graph, workdir: Path, cache_dir: Path | None = None,
                 allow_version_mismatch: bool = False, workers: int | None = None, read_only: bool = False):
        self.lm, self.graph = lm, graph
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
        if m.pins.crds_mode == "local" and (crds_path is None or not Path(crds_path, "mappings", "jwst", m.pins.crds_context).exists()):
            raise BadInput(
                f"{lm.path.name}: pins.crds_mode is 'local' but the CRDS cache {crds_path} does not hold "
                f"{m.pins.crds_context}"
            )
        self.env = jwst_stages.crds_environment(crds_path, m.pins.crds_context, m.pins.crds_mode, m.pins.crds_server_url)
        self.workers = workers or default_workers()
        from processing.inputs import HashIndex

        self.hashes = HashIndex(self.cache.root / "input-hashes.json")

    # -- keys ------------------------------------------------------------------------------
    def _input_files(self, task: Task, done: dict[str, TaskResult]) -> dict[str, list[str]]:
        def outputs_of(tid: str, suffix: str) -> list[str]:
            r = done[tid]
            entry = self.cache.entry(r.key)
            return [str(entry / n) for n in sorted(r.record["outputs"]) if n.endswith(suffix)]

        if task.stage == "lv1":
            return {"uncal": list(task.raw_inputs)}
        if task.stage == "lv2":
            return {"rate": outputs_of(task.deps[0], "_rate.fits"),
                    "background": [p for tid in task.extra["background"] for p in outputs_of(tid, "_rate.fits")]}
        return {"cal": [p for tid in task.deps for p in outputs_of(tid, "_cal.fits")]}

    def _key(self, task: Task, keys: dict[str, str]) -> tuple[str, dict]:
        """The task's cache key, from the keys of the tasks it needs (``keys``: task id -> key)."""
        if task.stage == "lv1":
            hashes = {Path(p).name: self.hashes.sha256(p) for p in task.raw_inputs}
        else:
            # upstream results by their task keys: a key names a recipe (inputs, parameters,
            # versions) recursively, so a rerun of identical work keeps every downstream key,
            # even though jwst stamps each file with its creation time and step logs
            hashes = {tid: keys[tid] for tid in task.deps}
        payload = {
            "stage": task.stage, "inputs": hashes, "params": task.params, "extra": task.extra,
            "code": code_version(task.stage), "jwst": self.jwst_version, "crds_context": self.lm.manifest.pins.crds_context,
            # a product made against the pin's wishes says so in its header: a different result
            "version_mismatch_allowed": self.allow_mismatch,
        }
        return task_key(payload), hashes

    def _spec(self, task: Task, key: str, hashes: dict, done: dict) -> dict:
        return {
            "task": task.id, "stage": task.stage, "key": key, "cache": str(self.cache.root),
            "inputs": self._input_files(task, done), "input_hashes": hashes, "params": task.params,
            "extra": task.extra,
            "provenance": {
                "manifest_sha256": self.lm.manifest.content_hash(), "manifest_file": str(self.lm.path),
                "task_key": key, "task": task.id, "code_version": code_version(task.stage),
                "jwst_version": self.jwst_version, "jwst_pinned": self.lm.manifest.pins.jwst,
                "crds_context": self.lm.manifest.pins.crds_context, "version_mismatch_allowed": self.allow_mismatch,
                "parameters": task.params, "parameter_origin": task.param_origin,
            },
        }

    # -- planning --------------------------------------------------------------------------
    def task_keys(self) -> dict[str, str]:
        """Every task's cache key, computed from the inputs and the manifest alone (nothing runs)."""
        keys: dict[str, str] = {}
        for task in self.graph.order():
            keys[task.id] = self._key(task, keys)[0]
        return keys

    def plan(self) -> dict[str, str]:
        """``{task id: 'cached' | 'run'}`` without running or writing anything."""
        return {tid: "cached" if self.cache.lookup(key) is not None else "run" for tid, key in self.task_keys().items()}

    def products(self, stage: str = "lv3") -> tuple[dict[tuple[str, str], Path], list[str]]:
        """The finished outputs of this manifest's ``stage`` tasks, found by their task keys.

        Returns ``({(target, band): file in the cache}, [task ids not in the cache])``. Each
        file is checked against its record (sha256) and its HLSPTASK header names its key: a
        product made from another manifest (other parameters, inputs or versions) has another
        key and is never returned, whatever a shared work folder holds.
        """
        from astropy.io import fits

        found: dict[tuple[str, str], Path] = {}
        missing: list[str] = []
        for tid, key in self.task_keys().items():
            task = self.graph.tasks[tid]
            if task.stage != stage:
                continue
            rec = self.cache.lookup(key)
            path = self.cache.entry(key) / product_path(self.workdir, task).name
            if rec is None or path.name not in rec.get("outputs", {}):
                missing.append(tid)
                continue
            if file_sha256(path) != rec["outputs"][path.name]:
                raise WorkFailed(f"{path}: content differs from its cache record (sha256): the cache entry was altered")
            if fits.getval(path, "HLSPTASK", 0) != key:
                raise WorkFailed(f"{path}: HLSPTASK does not name its cache key {key}: the cache entry was altered")
            found[(task.target, task.band)] = path
        return found, missing

    # -- running ---------------------------------------------------------------------------
    def run(self, progress: Callable[[str, str], None] | None = None) -> RunSummary:
        """Run every task not in the cache; one run at a time per work folder (a lock)."""
        from release.fileio import folder_lock

        if self.read_only:
            raise HlspError("a read-only engine cannot run")
        with folder_lock(self.workdir, "the work folder", "run"):
            return self._run(progress)

    def _run(self, progress: Callable[[str, str], None] | None) -> RunSummary:
        t0 = time.time()
        summary = RunSummary()
        keys: dict[str, str] = {}
        stale = self.cache.clean_stale_scratch()
        if stale:
            log.info("removed %d scratch folder(s) left by interrupted runs", stale)
        done: dict[str, TaskResult] = {}
        pending = {t.id: t for t in self.graph.order()}
        running: dict[Any, tuple[Task, str, float]] = {}
        ctx = get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=jwst_stages.worker_init, initargs=(self.env,)) as pool:
            while pending or running:
                for tid in list(pending):
                    task = pending[tid]
                    if any(summary.results.get(d) and summary.results[d].status in ("failed", "skipped") for d in task.deps):
                        bad = next(d for d in task.deps if summary.results.get(d) and summary.results[d].status in ("failed", "skipped"))
                        summary.results[tid] = TaskResult(task, "skipped", error=f"needs {bad}, which did not complete")
                        del pending[tid]
                        _tick(progress, task, "skipped")
                        continue
                    if not all(d in done for d in task.deps):
                        continue
                    key, hashes = self._key(task, keys)
                    keys[tid] = key
                    rec = self.cache.lookup(key)
                    del pending[tid]
                    if rec is not None:
                        done[tid] = summary.results[tid] = TaskResult(task, "cached", key, rec)
                        _tick(progress, task, "cached")
                        continue
                    fut = pool.submit(execute_task, self._spec(task, key, hashes, done))
                    running[fut] = (task, key, time.time())
                if not running:
                    continue
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    task, key, started = running.pop(fut)
                    try:
                        rec = fut.result()
                        done[task.id] = summary.results[task.id] = TaskResult(task, "ran", key, rec, elapsed_s=time.time() - started)
                        _tick(progress, task, "ran")
                    except HlspError as exc:
                        summary.results[task.id] = TaskResult(task, "failed", key, error=str(exc))
                        log.error("%s", exc)
                        _tick(progress, task, "failed")
                    except Exception as exc:  # a worker that died (memory, kill) or an unexpected bug
                        summary.results[task.id] = TaskResult(task, "failed", key, error=f"{task.stage} failed on {task.id}: {type(exc).__name__}: {exc}")
                        log.error("%s: %s", task.id, exc)
                        _tick(progress, task, "failed")
        self.hashes.save()
        summary.products = self._publish(done)
        summary.elapsed_s = time.time() - t0
        return summary

    def _publish(self, done: dict[str, TaskResult]) -> list[Path]:
        """Link finished mosaics into ``workdir/products`` with their provenance sidecar."""
        import json

        from release.fileio import atomic_path, atomic_write_text, inside

        out = []
        for r in done.values():
            if r.task.stage != "lv3":
                continue
            dest = product_path(self.workdir, r.task)
            inside(dest.parent, self.workdir, "a product folder")  # never write through a planted link
            src = self.cache.entry(r.key) / dest.name
            if not (dest.exists() and os.path.samefile(src, dest)):
                with atomic_path(dest) as tmp:
                    tmp.unlink()
                    os.link(src, tmp)
            atomic_write_text(dest.with_suffix(".prov.json"), json.dumps(r.record, indent=1, sort_keys=True, default=str))
            out.append(dest)
        return sorted(out)


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
