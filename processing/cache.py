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

Storage (a cache must not multiply the data):

- **Identical files are stored once.** Every published file is also linked under
  ``<cache>/content/<sha[:2]>/<sha256>``; a file whose content is already there becomes a hard
  link to it (files are never modified in place, so sharing them is safe). A stage that
  passes an exposure through unchanged links it instead of copying it, and the engine leaves
  such a link as it is (no provenance stamp would make it a different file).
- **Thinning.** An entry whose bulky outputs (:func:`bulky`: FITS files and archives above
  :data:`SMALL_BYTES`) are no longer needed is *thinned* (:meth:`Cache.thin`): those files are
  removed, its small outputs (tables, solutions, figures) and its record stay, and the record
  names what was dropped. A thinned entry is not a result: a task that needs it runs it again
  (its key is still known), and the new result replaces it (:meth:`Cache.publish`). What is
  thinned, and when, is the engine's retention policy (processing/executor.py).
- **Packing.** The entries the retention keeps whole (rate files, final products) hold their
  bulky FITS outputs gzip-compressed (:func:`pack`: ``name.fits`` stored as ``name.fits.gz``,
  level 1, 2-3x smaller, written by the task's own worker before publishing). The record
  still names the logical file and its sha256 (keys and checksums are of the FITS bytes) and
  lists the stored one under ``packed`` with the sha256 of the compressed bytes;
  :func:`stored` gives the file as stored. A task reading a packed input gets it decompressed
  into its scratch folder (:func:`materialize`); astropy opens the stored ``.fits.gz`` as it
  is (packaging, product links). ``--keep all`` packs nothing (every file as the stage wrote it).
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
#: what a packed output's stored name adds to its name
PACKED = ".gz"
#: gzip level of packed outputs: 1 compresses the demo's rate files 2.05x and a MIRI mosaic 3.0x
#: (1.1 s for 68 MB); 6 and 9 gain 1-3% for 1.7x and 3.6x the time (measured 2026-12-07)
PACK_LEVEL = 1
#: an output at most this large is small (a table, a solution, a figure): never thinned
SMALL_BYTES = 1 << 20
#: outputs that are bulky when larger than SMALL_BYTES
BULKY_SUFFIXES = (".fits", ".fits.gz", ".tar.gz", ".asdf", ".npy")


def complete(record: dict | None) -> bool:
    """Whether a task record is a whole result (not None, not thinned)."""
    return record is not None and not record.get("dropped")


def bulky(name: str, size: int) -> bool:
    return name.endswith(BULKY_SUFFIXES) and size > SMALL_BYTES


def packable(name: str, size: int) -> bool:
    """Whether an output is stored compressed in a kept entry: a bulky FITS file (archives and
    ASDF are left as they are)."""
    return name.endswith(".fits") and size > SMALL_BYTES


def pack(path: Path) -> tuple[Path, str, str]:
    """Compress ``path`` to ``path.gz`` (:data:`PACK_LEVEL`; no name or time in the gzip
    header, so the same bytes give the same file) and remove ``path``, reading it once.
    Returns the stored path, the sha256 of the FITS bytes and that of the stored bytes."""
    import gzip
    import hashlib

    from processing.fileio import atomic_path

    class _Hashed:  # the compressed stream, hashed as it is written
        def __init__(self, fh):
            self.fh, self.h = fh, hashlib.sha256()

        def write(self, data):
            self.h.update(data)
            return self.fh.write(data)

        def flush(self):
            self.fh.flush()

    dest = path.with_name(path.name + PACKED)
    raw_sha = hashlib.sha256()
    with atomic_path(dest) as tmp:
        with open(path, "rb") as src, open(tmp, "wb") as fh:
            out = _Hashed(fh)
            with gzip.GzipFile(filename="", mode="wb", compresslevel=PACK_LEVEL, fileobj=out, mtime=0) as gz:
                while chunk := src.read(1 << 20):
                    raw_sha.update(chunk)
                    gz.write(chunk)
    path.unlink()
    return dest, raw_sha.hexdigest(), out.h.hexdigest()


def stored(entry: Path, name: str, record: dict) -> Path:
    """The file that holds output ``name`` of the entry at ``entry``: ``name.gz`` if the record
    lists it as packed, else ``name``."""
    return entry / (name + PACKED) if name in (record.get("packed") or {}) else entry / name


def materialize(paths: dict[str, list[str]], folder: Path) -> tuple[dict[str, list[str]], set[tuple[int, int]]]:
    """Task inputs as files a stage can read: a path whose file is stored packed (only
    ``path.gz`` exists) is decompressed to ``folder/<name>``; every other path is returned as it
    is. Returns the inputs and the (device, inode) of each decompressed file (an output that is
    one of them is an input passed through unchanged)."""
    import gzip
    import shutil

    out: dict[str, list[str]] = {}
    made: set[tuple[int, int]] = set()
    for key, files in paths.items():
        out[key] = []
        for f in files:
            packed = f + PACKED
            if not os.path.exists(f) and os.path.exists(packed):
                folder.mkdir(exist_ok=True)
                dest = folder / os.path.basename(f)
                if not dest.exists():
                    with gzip.open(packed, "rb") as src, open(dest, "wb") as fh:
                        shutil.copyfileobj(src, fh, 1 << 20)
                    st = dest.stat()
                    made.add((st.st_dev, st.st_ino))
                f = str(dest)
            out[key].append(f)
    return out, made


def content_sha256(name: str, record: dict) -> str:
    """The sha256 the record holds for the stored file of ``name``: of the compressed bytes
    for a packed output, else of the file (what :func:`verify` and product lookups compare)."""
    packed = record.get("packed") or {}
    return packed[name] if name in packed else record["outputs"][name]


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def task_key(payload: dict) -> str:
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


class Cache:
    """The store under ``root``. ``writable=False`` opens it for lookups only: nothing is
    created (``hlsp plan`` writes nothing); a missing store simply has no entries."""

    def __init__(self, root: str | Path, writable: bool = True):
        self.root = Path(root)
        self._objects = str(self.root / "objects")
        if writable:
            from processing.fileio import writable_dir

            writable_dir(self.root / "objects", "the task cache")
            writable_dir(self.root / "tmp", "the task cache")

    def entry(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def lookup(self, key: str) -> dict | None:
        """The task record if the entry is complete, else None."""
        try:  # a string path: a run of a survey looks up tens of thousands of entries
            with open(os.path.join(self._objects, key[:2], key, RECORD)) as fh:
                return json.loads(fh.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def scratch(self, key: str) -> Path:
        d = self.root / "tmp" / f"{key}.{_host()}.{os.getpid()}"
        d.mkdir(parents=True, exist_ok=False)
        return d

    def publish(self, key: str, scratch: Path, record: dict) -> Path:
        """Store identical files once (:meth:`share`), write the record into ``scratch`` and move
        it into place in one rename. A thinned entry of the same key is replaced (renamed
        aside, the new one renamed in, the old removed: a crash between leaves no entry, which
        is simply recomputed)."""
        from processing.fileio import atomic_write_text

        self.share(scratch, record.get("outputs", {}))
        atomic_write_text(scratch / RECORD, json.dumps(record, indent=1, sort_keys=True, default=str))
        dest = self.entry(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        old = self.lookup(key)
        if old is not None and not complete(old):
            aside = self.root / "tmp" / f"{key}.thinned.{_host()}.{os.getpid()}"
            os.rename(dest, aside)
            os.rename(scratch, dest)
            _remove_tree(aside)
            return dest
        try:
            os.rename(scratch, dest)
        except OSError:
            if self.lookup(key) is None:  # not a concurrent identical result: a real error
                raise
            _remove_tree(scratch)  # the same result was published by another process
        return dest

    # -- storage ------------------------------------------------------------------------------
    def _content(self, sha: str) -> Path:
        return self.root / "content" / sha[:2] / sha

    def share(self, folder: Path, outputs: dict[str, str]) -> int:
        """Hard-link each of ``outputs`` (name -> sha256) in ``folder`` to the stored file of that
        content, or store it there: identical files are kept once. Returns the bytes saved. A
        file system without hard links keeps the copies (nothing fails)."""
        saved = 0
        for name, sha in outputs.items():
            path = folder / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            store = self._content(sha)
            try:
                if store.exists() and store.stat().st_size == st.st_size:
                    if not os.path.samefile(store, path):
                        tmp = path.with_name(f".{name}.link")
                        os.link(store, tmp)
                        os.replace(tmp, path)
                        saved += st.st_size
                else:
                    store.parent.mkdir(parents=True, exist_ok=True)
                    os.link(path, store)
            except FileExistsError:
                pass  # stored by another task at the same moment
            except OSError:
                pass  # no hard links here: the copy stays
        return saved

    def _forget(self, sha: str) -> None:
        """Remove a stored content file no entry links to any more."""
        store = self._content(sha)
        try:
            if store.stat().st_nlink == 1:
                store.unlink()
        except FileNotFoundError:
            pass

    def thin(self, key: str, record: dict | None = None) -> int:
        """Remove an entry's bulky outputs (:func:`bulky`), keep its small ones and its record,
        which then names what was dropped; returns the bytes freed (what no other link holds).
        ``record``: the entry's record, when the caller has just read it."""
        from processing.fileio import atomic_write_text

        rec = record if record is not None else self.lookup(key)
        if not complete(rec):
            return 0
        if not any(bulky(name, SMALL_BYTES + 1) for name in rec.get("outputs", {})):
            return 0  # nothing it holds could be bulky (a thinned entry, or small outputs only)
        entry = self.entry(key)
        dropped, freed = [], 0
        for name, sha in sorted(rec.get("outputs", {}).items()):
            path = stored(entry, name, rec)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not bulky(path.name, st.st_size):
                continue
            path.unlink()
            dropped.append(name)
            store = self._content(sha)
            last = st.st_nlink <= 1 or (st.st_nlink == 2 and store.exists() and store.stat().st_ino == st.st_ino)
            self._forget(sha)
            freed += st.st_size if last else 0
        if dropped:
            rec["dropped"] = dropped
            atomic_write_text(entry / RECORD, json.dumps(rec, indent=1, sort_keys=True, default=str))
        return freed

    def remove(self, key: str) -> int:
        """Remove an entry whole (``hlsp cache prune``); returns the bytes freed."""
        rec = self.lookup(key) or {}
        entry = self.entry(key)
        freed = 0
        for p in entry.iterdir() if entry.is_dir() else []:
            st = p.lstat()
            freed += st.st_size if st.st_nlink <= 2 else 0
        _remove_tree(entry)
        for sha in rec.get("outputs", {}).values():
            self._forget(sha)
        return freed

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


# --------------------------------------------------------------------------------------------
# Looking after a cache (hlsp cache du | prune | verify)
# --------------------------------------------------------------------------------------------


def entries(root: Path):
    """``(key, entry folder, record or None)`` of every entry of the cache at ``root``."""
    objects = Path(root) / "objects"
    for entry in sorted(objects.glob("*/*")) if objects.is_dir() else []:
        try:
            rec = json.loads((entry / RECORD).read_text())
        except (FileNotFoundError, ValueError):
            rec = None
        yield entry.name, entry, rec


def usage(root: Path, intermediate=None) -> dict:
    """Bytes of the cache by stage and by unit (``stage/target/band``), each file counted once
    however many entries link it, and what thinning the ``intermediate(record)`` entries would
    release: ``{"total", "by_stage", "by_unit", "would_release", "entries", "thinned", "content"}``."""
    seen: set[tuple[int, int]] = set()
    out = {"total": 0, "by_stage": {}, "by_unit": {}, "would_release": 0, "entries": 0, "thinned": 0}
    for _key, entry, rec in entries(root):
        stage = (rec or {}).get("stage", "?")
        task = (rec or {}).get("task", entry.name)
        unit = "/".join(task.split("/")[:3])
        out["entries"] += 1
        out["thinned"] += int(bool(rec and rec.get("dropped")))
        for p in entry.iterdir():
            st = p.lstat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            out["total"] += st.st_size
            out["by_stage"][stage] = out["by_stage"].get(stage, 0) + st.st_size
            out["by_unit"][unit] = out["by_unit"].get(unit, 0) + st.st_size
            if complete(rec) and intermediate is not None and intermediate(rec) and bulky(p.name, st.st_size):
                out["would_release"] += st.st_size if st.st_nlink <= 2 else 0
    return out


def verify(root: Path) -> list[tuple[str, str]]:
    """Re-hash every file of every entry against its record. A damaged entry (a file missing
    that is not recorded as dropped, or one whose sha256 differs, or an unreadable record) is
    moved to ``<cache>/quarantine/`` whole, so the next run recomputes it. Returns
    ``[(task or key, problem)]``."""
    import time

    found = []
    quarantine = Path(root) / "quarantine"
    for key, entry, rec in entries(root):
        problems = []
        if rec is None:
            problems.append("its record (task.json) is missing or unreadable")
        else:
            dropped = set(rec.get("dropped") or [])
            for name in sorted(rec.get("outputs", {})):
                path = stored(entry, name, rec)
                if name in dropped:
                    continue
                if not path.is_file():
                    problems.append(f"{path.name} is missing")
                elif file_sha256(path) != content_sha256(name, rec):
                    problems.append(f"{path.name}: content differs from the record (sha256)")
        if problems:
            quarantine.mkdir(exist_ok=True)
            os.rename(entry, quarantine / f"{key}.{time.strftime('%Y%m%dT%H%M%S')}")
            found.append(((rec or {}).get("task", key), "; ".join(problems)))
    return found


def prune(root: Path, keep_keys: set[str]) -> tuple[int, int]:
    """Remove every entry whose key is not in ``keep_keys`` (what the listed manifests' graphs
    reach), and stored contents nothing links any more; returns ``(entries removed, bytes)``."""
    cache = Cache(root)
    n = freed = 0
    for key, _entry, _rec in list(entries(root)):
        if key not in keep_keys:
            freed += cache.remove(key)
            n += 1
    content = Path(root) / "content"
    for p in content.glob("*/*") if content.is_dir() else []:
        if p.stat().st_nlink == 1:
            freed += p.stat().st_size
            p.unlink()
    return n, freed
