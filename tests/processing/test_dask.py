"""The demo graph on a real dask.distributed scheduler: two worker processes on loopback, one
killed mid-run; the run completes (or fails cleanly naming the task and resumes), and the
products are identical to the local executor's."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from processing.executor import fits_fingerprint
from tests.conftest import REPO, hlsp, product_file

# one target: the scheduler, the kill and the resume are what is tested, not the whole graph again
PRODUCTS = [("synth2", "f200w"), ("synth2", "f770w")]


def _done(cache) -> int:
    return len(list((cache / "objects").glob("*/*/task.json"))) if (cache / "objects").exists() else 0


def test_dask_scheduler_survives_a_killed_worker_and_matches_the_local_executor(engine_run, tmp_path):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    try:
        from tests.conftest import seed_cache

        addr = cluster.scheduler_address
        cache, work = tmp_path / "cache", tmp_path / "work"
        seeded = seed_cache(engine_run["cache"], cache)  # the early stages: what is tested is the kill
        args = [
            "run",
            str(engine_run["manifest"]),
            "--workdir",
            str(work),
            "--cache",
            str(cache),
            "--scheduler",
            addr,
            "--targets",
            "synth2",
        ]
        t0 = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "release.cli", *args],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "400"},
        )
        deadline = time.time() + 600
        while _done(cache) < seeded + 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        pids = client.run(os.getpid)  # worker address -> pid
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)  # one worker dies mid-run (its task is lost)
        killed_at = _done(cache)
        out, err = proc.communicate(timeout=1200)
        elapsed = time.time() - t0
        assert "Traceback" not in out + err, err[-3000:]
        if proc.returncode != 0:  # failed cleanly: exit 1, the task named; the rerun resumes
            assert proc.returncode == 1 and "what did not complete" in out, out + err
            hlsp(*args, check_code=0)
        rerun = hlsp(*args, check_code=0)
        assert seeded + 1 <= killed_at < _done(cache), (seeded, killed_at, _done(cache))  # killed mid-run
        assert all(
            line.split("│")[3].strip() == "0" for line in rerun.stdout.splitlines() if line.startswith("│ lv")
        ), rerun.stdout
        for target, band in PRODUCTS:
            a = product_file(work / "products" / target / band, f"{target}_{band}_i2d.fits")
            b = product_file(engine_run["workdir"] / "products" / target / band, f"{target}_{band}_i2d.fits")
            assert fits_fingerprint(a) == fits_fingerprint(b), (target, band)
        print(f"\ndask run with a killed worker: {elapsed:.1f} s (local executor: {engine_run['elapsed_s']:.1f} s)")
    finally:
        client.close()
        cluster.close()


def test_the_engine_runs_on_a_scheduler_and_workers_started_as_separate_processes(engine_run, tmp_path):
    """As on a cluster: `dask scheduler` and two `dask worker` processes started on their own
    (the distributed command-line programs), the engine connecting with --scheduler. The
    stages before PSF matching come from the engine run's cache (what is tested is the
    connection, the worker plugin setting the CRDS environment and the MEMORY resource, not the
    whole graph again); the PSF-matched mosaics equal the local executor's."""
    import socket

    from distributed import Client

    from tests.conftest import seed_cache

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "COLUMNS": "400"}
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port)]
            + ["--dashboard-address", ":0"],
            cwd=tmp_path,
            env=env,
            stdout=open(logs / "scheduler.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]
    try:
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nworkers", "1", "--nthreads", "1"]
                    + ["--resources", "MEMORY=8e9", "--dashboard-address", ":0", "--local-directory", str(tmp_path)],
                    cwd=REPO,
                    env=env,
                    stdout=open(logs / f"worker-{i}.log", "w"),
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.time() + 120
        while True:
            try:
                with Client(addr, timeout=5) as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        cache, work = tmp_path / "cache", tmp_path / "work"
        seed_cache(engine_run["cache"], cache, skip_stages=("psf_matching",))
        args = ["run", str(engine_run["manifest"]), "--workdir", str(work), "--cache", str(cache)]
        proc = hlsp(*args, "--scheduler", addr, "--targets", "synth2", check_code=0)
        assert "dask" in proc.stdout + proc.stderr
        ran = [line for line in proc.stdout.splitlines() if line.startswith("│ psf_matching")]
        assert ran and ran[0].split("│")[3].strip() == "2", proc.stdout  # synth2's two bands ran on the workers
        for target, band in PRODUCTS:
            for res in ("0p85", "0p90", "1p00"):
                name = f"{target}_{band}_gauss{res}as.fits"
                a = product_file(work / "products" / target / band, name)
                b = product_file(engine_run["workdir"] / "products" / target / band, name)
                assert fits_fingerprint(a) == fits_fingerprint(b), name
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
