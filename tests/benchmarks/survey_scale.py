"""`make bench-survey`: the engine's bookkeeping at survey scale (header-only programs).

For n = 1,000 to 12,880 NIRCam exposures (COSMOS-Web's count; processing/simulate/survey.py
writes the header-only program), measures as separate processes, as a user runs them:

- ``hlsp plan`` the first time (no header facts cached, empty task cache: no key needed);
- ``hlsp plan`` with every task cached (every key computed, every entry looked up);
- ``hlsp run`` with every task cached (keys, lookups, scheduling, retention, product index).

"Every task cached": each task's cache entry is written as a record without outputs (the files
have no pixels, nothing can run): what is measured is the engine's bookkeeping, the part that
grows with the number of exposures. Each program is removed once measured. Wall time and
the process's peak RSS (``wait4``) are written to bench-output/survey-scale.json, the plot to
docs/survey-scale.png and the table between the survey markers of docs/performance.md.

Run: python -m tests.benchmarks.survey_scale [--outdir bench-output] [--sizes 1000,4000,12880]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- survey:begin -->", "<!-- survey:end -->"
SIZES = (1000, 2000, 4000, 8000, 12880)


def _timed(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its wall time and peak RSS (of that process alone)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 0)}


def seed_cache(manifest: Path, work: Path) -> int:
    """Every task of ``manifest``'s graph given a cache entry: a record without outputs (the
    engine's bookkeeping only: a header-only program cannot be processed). Returns the count."""
    from processing.executor import Engine
    from processing.pipeline import build_graph
    from release.manifest import load_manifest

    lm = load_manifest(manifest)
    graph = build_graph(lm)
    engine = Engine(lm, graph, work, allow_version_mismatch=True)
    keys = engine.task_keys()
    engine.hashes.save()
    for tid, key in keys.items():
        entry = engine.cache.entry(key)
        entry.mkdir(parents=True, exist_ok=True)
        record = {"task": tid, "stage": graph.tasks[tid].stage, "key": key, "outputs": {}}
        (entry / "task.json").write_text(json.dumps(record))
    return len(keys)


def measure(n: int, out: Path) -> dict:
    from processing.simulate.survey import write_survey_headers

    root = out / f"survey-{n}"
    if root.exists():
        shutil.rmtree(root)  # a fresh program: the first plan reads every header
    t0 = time.time()
    made = write_survey_headers(root / "program", n)
    written = time.time() - t0
    manifest, work = made["manifest"], root / "work"
    env = {**os.environ, "HLSP_CACHE_HOME": str(root / "user-cache"), "COLUMNS": "200"}
    hlsp = [sys.executable, "-m", "release.cli"]
    first_plan = _timed([*hlsp, "plan", str(manifest), "--workdir", str(work)], env)
    tasks = seed_cache(manifest, work)
    cached_plan = _timed([*hlsp, "plan", str(manifest), "--workdir", str(work)], env)
    cached_run = _timed([*hlsp, "run", str(manifest), "--workdir", str(work), "--allow-version-mismatch"], env)
    shutil.rmtree(root)  # regenerated in seconds, not kept (12,880 exposures: ~0.5 GB with its cache)
    return {
        "exposures": made["exposures"],
        "pointings": made["pointings"],
        "tasks": tasks,
        "write_headers_s": round(written, 1),
        "plan_first": first_plan,
        "plan_cached": cached_plan,
        "run_cached": cached_run,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["exposures"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (
        ("plan_first", "plan (first)"),
        ("plan_cached", "plan (all cached)"),
        ("run_cached", "run (all cached)"),
    ):
        a.plot(n, [r[key]["wall_s"] for r in rows], "o-", label=label)
        b.plot(n, [r[key]["peak_rss_mb"] for r in rows], "o-", label=label)
    a.axhline(10, color="grey", ls=":", label="goal 10 s")
    b.axhline(1024, color="grey", ls=":", label="goal 1 GB")
    for ax, ylabel in ((a, "wall time [s]"), (b, "peak RSS [MB]")):
        ax.set_xlabel("NIRCam exposures (header-only program)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("hlsp plan / run bookkeeping against the number of exposures (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(rows: list[dict]) -> str:
    lines = [
        BEGIN,
        "",
        f"Measured by `make bench-survey` on {time.strftime('%Y-%m-%d')} (2 cores; each command a separate process,",
        "wall time and that process's peak RSS). ![time and memory against n](survey-scale.png)",
        "",
        "| exposures | tasks | plan, first (s / MB) | plan, all cached (s / MB) | run, all cached (s / MB) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = [
            f"{r[k]['wall_s']:.1f} / {r[k]['peak_rss_mb']:.0f}" for k in ("plan_first", "plan_cached", "run_cached")
        ]
        lines.append(f"| {r['exposures']:,} | {r['tasks']:,} | " + " | ".join(cells) + " |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outdir", type=Path, default=REPO / "bench-output")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = ap.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        rows.append(measure(n, args.outdir))
        print(json.dumps(rows[-1]), flush=True)
    (args.outdir / "survey-scale.json").write_text(json.dumps(rows, indent=1))
    plot(rows, REPO / "docs" / "survey-scale.png")
    doc = REPO / "docs" / "performance.md"
    text = doc.read_text()
    block = render(rows)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n## Planning at survey scale\n\n" + block + "\n"
    doc.write_text(text)
    print(block)


if __name__ == "__main__":
    main()
