"""Where tasks run: a local process pool (the default) or a dask.distributed cluster.

Both give the engine the same interface: a context manager with ``submit(fn, spec,
memory_gb) -> concurrent.futures.Future`` and ``describe_failure(exc) -> str``, so progress,
failures and the summary are the same whichever runs the tasks.

- :class:`LocalExecutor`: ``spawn``-ed worker processes on this machine, each set up with the
  CRDS environment and no console output.
- :class:`DaskExecutor`: a ``LocalCluster`` of single-threaded worker processes on loopback,
  or an existing scheduler (``--scheduler tcp://host:8786``, e.g. started by dask-jobqueue on
  Slurm). A worker plugin sets the CRDS environment on every worker, present and future; each
  task carries a ``MEMORY`` resource hint (bytes) where the workers declare that resource, so
  two heavy tasks never share a worker too small for both. A worker that dies has its task
  retried elsewhere by the scheduler; a task that keeps killing workers fails, named.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Callable
from multiprocessing import get_context
from typing import Any

try:  # a dependency; imported here so the plugin class is importable (picklable) on every worker
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover
    _WorkerPluginBase = object

log = logging.getLogger(__name__)


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int, env: dict[str, str]):
        self.workers, self.env = workers, env

    def __enter__(self) -> LocalExecutor:
        self._start()
        return self

    def _start(self) -> None:
        from processing.jwst_stages import worker_init

        self.pool = cf.ProcessPoolExecutor(
            self.workers, mp_context=get_context("spawn"), initializer=worker_init, initargs=(self.env,)
        )

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable, spec: dict, memory_gb: float = 0.0, isolated: bool = False) -> cf.Future:
        """Submit a task; a pool broken by a worker that died (killed, out of memory) is
        replaced, so the remaining tasks still run (the tasks that were running in it fail,
        named, and a rerun resumes them). ``isolated``: run it alone in a pool of its own (a
        task retried after a worker died: if it kills this one too, it was the culprit, and no
        other task pays for it)."""
        if isolated:
            from processing.jwst_stages import worker_init

            own = cf.ProcessPoolExecutor(
                1, mp_context=get_context("spawn"), initializer=worker_init, initargs=(self.env,)
            )
            future = own.submit(fn, spec)
            future.add_done_callback(lambda _f: own.shutdown(wait=False))
            return future
        try:
            return self.pool.submit(fn, spec)
        except cf.process.BrokenProcessPool:
            log.warning("a worker process died: a new pool runs the remaining tasks")
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._start()
            return self.pool.submit(fn, spec)

    @staticmethod
    def describe_failure(exc: BaseException) -> str:
        if isinstance(exc, cf.process.BrokenProcessPool):
            return "a worker process died (killed, or out of memory)"
        return f"{type(exc).__name__}: {exc}"

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        """A worker that died fails every task of its pool, the innocent with the culprit: each
        is run once more, alone in a pool of its own; a task that kills that one too fails."""
        return isinstance(exc, cf.process.BrokenProcessPool)


class HlspWorkerPlugin(_WorkerPluginBase):
    """Sets a dask worker up like a local one: the CRDS environment, records to task logs only."""

    name = "hlsp-worker-setup"

    def __init__(self, env: dict[str, str]):
        self.env = env

    def setup(self, worker: Any) -> None:
        from processing.jwst_stages import apply_crds_environment

        apply_crds_environment(self.env)
        logging.captureWarnings(True)


#: dask settings of the LocalCluster the engine starts (docs/engine.md, "dask as fast as the
#: local pool"), measured on calwebb_detector1 of a demo MIRI exposure, one worker, tasks in
#: sequence: 7.2 s in the local pool, 9.7 s in a default dask worker. The nanny starts its
#: workers with MALLOC_TRIM_THRESHOLD_=65536 (fixing glibc's trim threshold also fixes its
#: mmap threshold: every large numpy array is then mmap'd and unmapped, page faults each
#: time; the local pool with it: 8.4 s) and OMP/MKL/OPENBLAS_NUM_THREADS=1 (the local pool
#: with it: 8.5 s); the worker's statistical profiler samples the task's Python stack every
#: 10 ms for a dashboard the engine does not start. The engine's workers are started as the
#: local pool's are: the environment inherited, no profiler.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.daemon": False,
    "distributed.nanny.pre-spawn-environ": {},
    "distributed.worker.profile.enabled": False,
}


class DaskExecutor:
    name = "dask"

    def __init__(
        self, workers: int, env: dict[str, str], scheduler: str | None = None, memory_gb_per_worker: float | None = None
    ):
        self.workers, self.env, self.scheduler = workers, env, scheduler
        self.memory_gb_per_worker = memory_gb_per_worker
        self.cluster = None

    def __enter__(self) -> DaskExecutor:
        import dask
        import psutil
        from distributed import Client, LocalCluster

        if self.scheduler:
            self.client = Client(self.scheduler, timeout="30s")
            log.info("joined the dask scheduler at %s", self.scheduler)
        else:
            per_worker = self.memory_gb_per_worker or psutil.virtual_memory().total / 2**30 / max(1, self.workers)
            with dask.config.set(LOCAL_CLUSTER_CONFIG):
                self.cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    memory_limit=f"{per_worker:.2f}GiB",
                    resources={"MEMORY": per_worker * 2**30},
                    silence_logs=logging.ERROR,
                )
            self.client = Client(self.cluster)
            log.info("started a dask LocalCluster: %d workers on %s", self.workers, self.cluster.scheduler_address)
        self.client.register_plugin(HlspWorkerPlugin(self.env), name=HlspWorkerPlugin.name)
        workers = self.client.scheduler_info().get("workers", {})
        self.use_resources = bool(workers) and all("MEMORY" in w.get("resources", {}) for w in workers.values())
        #: the largest MEMORY a worker offers: a task asking for more could never be placed (the
        #: run would wait forever), so its hint is capped there, with a warning
        self.max_memory = (
            max((w["resources"]["MEMORY"] for w in workers.values()), default=0.0) if self.use_resources else 0.0
        )
        self._warned: set[float] = set()
        if workers and not self.use_resources:
            log.info(
                "the dask workers declare no MEMORY resource: tasks carry no memory hint "
                "(start workers with --resources MEMORY=<bytes> to use them)"
            )
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def submit(self, fn: Callable, spec: dict, memory_gb: float = 0.0, isolated: bool = False) -> cf.Future:
        # ``isolated`` is the local pool's concern: dask reschedules a dead worker's tasks itself
        resources = None
        if self.use_resources and memory_gb:
            want = memory_gb * 2**30
            if want > self.max_memory:
                if memory_gb not in self._warned:
                    self._warned.add(memory_gb)
                    log.warning(
                        "tasks of %.1f GB run on dask workers offering at most %.1f GB (MEMORY): they may run out "
                        "of memory; give the workers more",
                        memory_gb,
                        self.max_memory / 2**30,
                    )
                want = self.max_memory
            resources = {"MEMORY": want}
        future = self.client.submit(fn, spec, key=f"{spec['task']}-{spec['key'][:16]}", pure=False, resources=resources)
        out: cf.Future = cf.Future()

        def done(f) -> None:
            try:
                out.set_result(f.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the engine, which names the task
                out.set_exception(exc)

        future.add_done_callback(done)
        out._dask_future = future  # type: ignore[attr-defined]  # keep it alive while pending
        return out

    @staticmethod
    def describe_failure(exc: BaseException) -> str:
        name = type(exc).__name__
        if name == "KilledWorker":
            return "the dask workers running it died repeatedly (killed, or out of memory)"
        return f"{name}: {exc}"

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        return False  # the scheduler already retries a task whose worker died
