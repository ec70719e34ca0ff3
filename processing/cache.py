"""Content-addressed store of task results.

A task's key is the sha256 of everything that determines its outputs: the stage, the content
hashes of its inputs (raw files, or upstream outputs by their recorded hashes), its resolved
parameters, the code version of the stage, the jwst version and the CRDS context. Results
live in ``<cache>/objects/<key[:2]>/<key>/`` with a ``task.json`` record (outputs with their
sha256, parameters, inputs, timings) written last.

A task runs in ``<cache>/tmp/<key>.<host>.<pid>/`` and is published by one ``rename`` of that folder:
an entry either exists whole or not at all. A run killed in the middle leaves at most a
stale temporary folder, which the next run ignores (and removes, being scratch of a dead
process on the same host), never a half entry. Scratch folders are named by host and process:
with a cache shared by several machines, a run removes only its own host's dead scratch,
never a live task's on another machine. Finished entries are never deleted by the engine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from processing.fileio import file_sha256  # noqa: F401 (re-exported)
from processing.fileio import remove_scratch as _remove_tree

RECORD = "task.json"


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def task_key(payload: dict) -> str:
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


class Cache:
    """The store under ``root``. ``writable=False`` opens it for lookups only: nothing is
    created (``hlsp plan`` writes nothing); a missing store simply has no entries."""

    def __init__(self, root: str | Path, writable: bool = True):
        self.root = Path(root)
        if writable:
            from processing.fileio import writable_dir

            writable_dir(self.root / "objects", "the task cache")
            writable_dir(self.root / "tmp", "the task cache")

    def entry(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def lookup(self, key: str) -> dict | None:
        """The task record if the entry is complete, else None."""
        try:
            return json.loads((self.entry(key) / RECORD).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def scratch(self, key: str) -> Path:
        d = self.root / "tmp" / f"{key}.{_host()}.{os.getpid()}"
        d.mkdir(parents=True, exist_ok=False)
        return d

    def publish(self, key: str, scratch: Path, record: dict) -> Path:
        """Write the record into ``scratch`` and move it into place in one rename."""
        from processing.fileio import atomic_write_text

        atomic_write_text(scratch / RECORD, json.dumps(record, indent=1, sort_keys=True, default=str))
        dest = self.entry(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(scratch, dest)
        except OSError:
            if self.lookup(key) is None:  # not a concurrent identical result: a real error
                raise
            _remove_tree(scratch)  # the same result was published by another process
        return dest

    def clean_stale_scratch(self) -> int:
        """Remove temporary folders of processes that no longer run. Returns how many."""
        n = 0
        host = _host()
        for d in (self.root / "tmp").iterdir():
            # a link here is not ours: remove_scratch removes the link, never its target
            parts = d.name.split(".")
            if len(parts) < 3 or parts[-2] != host:  # another machine's (or not ours at all)
                continue
            pid = parts[-1]
            if pid.isdigit() and not _alive(int(pid)):
                _remove_tree(d)
                n += 1
        return n


def _host() -> str:
    """This machine's name as it appears in scratch folder names (no dots)."""
    import socket

    return socket.gethostname().split(".")[0].replace("_", "-") or "localhost"


def _alive(pid: int) -> bool:
    """True if process ``pid`` runs (a zombie, killed but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True
