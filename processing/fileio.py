"""Safe file work: atomic writes, readable modes, symlink-proof cleanup, folder locks.

- Atomic: write to a temporary name in the same directory, then rename. A reader never sees a
  half-written file, and a failure leaves the previous file (if any) in place. Used for every
  file this package writes.
- Readable: files get the mode a normal ``open`` would give (0644 under the usual umask), not
  the 0600 of a temporary file; a release is made world-readable whatever the umask
  (:func:`make_world_readable`).
- Symlinks: scratch removal deletes a link, never what it points to, and never descends
  through one.
- Locks: :func:`folder_lock` serialises commands on one work folder or release root; a
  second one is refused with a message naming the folder and the holder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from processing.errors import BadInput


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600 files: give the file the mode a plain open() would
        os.chmod(tmp_path, default_file_mode())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def link_or_copy(src: str | Path, dest: str | Path) -> bool:
    """``dest`` as the very file ``src`` (a hard link: no bytes written), or a copy where the file
    system cannot link them; returns whether it linked. For a stage that passes an input through
    unchanged: the cache then holds one file, and the engine never edits a linked output."""
    import shutil

    try:
        os.link(src, dest)
        return True
    except OSError:
        shutil.copyfile(src, dest)
        return False


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def save_model_atomic(model, target: str | Path) -> None:
    """Save a jwst datamodel to ``target`` atomically, keeping meta.filename = target's name.

    The model is saved under its final name in a private temporary folder beside the target
    (datamodels record the name they are saved under), then renamed into place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staged = tmpdir / target.name
        model.save(str(staged))
        os.chmod(staged, default_file_mode())
        os.replace(staged, target)
    finally:
        for leftover in tmpdir.iterdir():
            leftover.unlink()
        tmpdir.rmdir()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def reproducible_tarball(dest: str | Path):
    """Write a gzipped tar archive whose bytes depend only on what is added: names, order and
    contents (owner, times, mode and the gzip timestamp fixed). Yields ``add(name, path)``."""
    import gzip
    import tarfile

    with (
        open(dest, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):

        def add(name: str, path: str | Path) -> None:
            info = tarfile.TarInfo(name)
            info.size = Path(path).stat().st_size
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)

        yield add


def remove_scratch(path: Path) -> None:
    """Remove a scratch folder this package made (a task's or a staging folder), never finished work.

    Symbolic links are removed as links: a link (to a file or a folder) inside the scratch, or
    the scratch path itself being a link, never leads the removal to what it points to.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    for root, dirs, files in os.walk(path, topdown=False, followlinks=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            p = os.path.join(root, name)
            if os.path.islink(p):
                os.unlink(p)  # a link to a folder: the link goes, the folder stays
            else:
                os.rmdir(p)
    os.rmdir(path)


def make_world_readable(root: Path) -> None:
    """Files 0644 and folders 0755 under ``root`` (links are left alone, never followed)."""
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        os.chmod(dirpath, 0o755)
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644)


def not_writable(path: Path, exc: OSError, what: str) -> BadInput:
    """The user's error of pointing a command at a folder it cannot write."""
    reason = {
        errno.EROFS: "is on a read-only file system",
        errno.EACCES: "is not writable (permission denied)",
        errno.EPERM: "is not writable (operation not permitted)",
    }.get(exc.errno, f"cannot be written ({exc.strerror})")
    return BadInput(f"{what} {path} {reason}")


def writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and prove it writable by writing in it; BadInput naming it if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hlsp-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise not_writable(path, exc, what) from None
    return path


def inside(path: Path, root: Path, what: str) -> Path:
    """Create folder ``path`` under ``root`` and make sure it really is there: a symbolic link
    on the way that leads out of ``root`` is refused (BadInput), never written through."""
    path, root = Path(path), Path(root)
    real_root = root.resolve()
    for p in [path, *path.parents]:
        if p == root or p == real_root:
            break
        if p.is_symlink():
            target = os.path.realpath(p)
            if not (target == str(real_root) or target.startswith(str(real_root) + os.sep)):
                raise BadInput(
                    f"{what} {p} is a symbolic link out of {root} (to {target}): refusing to write through it"
                )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, command: str, shared: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``.hlsp.lock`` in it) while the block runs.

    A second command on the same folder is refused at once (BadInput naming the folder and the
    process holding it), instead of two commands writing the same files. The lock is the
    kernel's (flock): a killed holder releases it, so a crash never leaves a stale lock.
    ``shared``: a shared lock instead (runs sharing a task cache hold it together; a prune of
    the cache needs it exclusive, so it waits for none of them but is refused while one runs).
    """
    import fcntl

    folder = writable_dir(folder, what)
    path = folder / ".hlsp.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInput(f"{path} is a symbolic link: refusing to follow it") from None
        raise not_writable(folder, exc, what) from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInput(
                f"{what} {folder} is in use by another hlsp command ({_lock_holder(path)}); "
                f"wait for it to finish, then run `hlsp {command}` again"
            ) from None
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, f"hlsp {command}, pid {os.getpid()}\n".encode())
        yield folder
    finally:
        os.close(fd)  # closing releases the flock


#: The file an output folder of this system holds, listing what the command wrote there.
OUTPUT_MARKER = ".hlsp-output.json"


def _listing(folder: Path) -> tuple[list[str], list[str]]:
    """``(regular files, links or special files)`` under ``folder``, relative, sorted; links are
    never followed."""
    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for name in list(dirnames):
            if (here / name).is_symlink():
                odd.append((here / name).relative_to(folder).as_posix())
                dirnames.remove(name)
        for name in filenames:
            p = here / name
            rel = p.relative_to(folder).as_posix()
            (odd if p.is_symlink() or not p.is_file() else files).append(rel)
    return sorted(files), sorted(odd)


@contextlib.contextmanager
def owned_output(folder: str | Path, command: str, what: str = "--outdir") -> Iterator[Path]:
    """Yield a new, empty folder to write ``command``'s output in; on success it becomes
    ``folder``. What a user keeps there is never touched:

    - ``folder`` (or an existing folder on its way) a symbolic link: refused;
    - ``folder`` holding anything that is not this command's earlier output (proved by the
      marker :data:`OUTPUT_MARKER` it left, which lists every file it wrote) or a file the
      marker does not list: refused, naming it (BadInput: exit 2), before anything is written;
    - its own earlier output (only that) is replaced after the new one is complete: the new
      folder is renamed into place, the old one removed as scratch;
    - a failure removes the new folder and leaves ``folder`` as it was.
    """
    import json

    folder = Path(folder).expanduser().absolute()
    for p in [folder, *folder.parents]:
        if p.is_symlink():
            raise BadInput(f"{what} {folder}: {p} is a symbolic link; give a real folder")
    previous = None
    if folder.exists():
        if not folder.is_dir():
            raise BadInput(f"{what} {folder} is not a folder")
        files, odd = _listing(folder)
        if files or odd:
            marker = folder / OUTPUT_MARKER
            try:
                record = json.loads(marker.read_text()) if marker.is_file() else None
            except (OSError, ValueError):
                record = None
            if not record or record.get("command") != command:
                shown = [f"{o} (a link)" for o in odd] + files
                raise BadInput(
                    f"{what} {folder} holds files this command did not write ({', '.join(shown[:3])}"
                    f"{' ...' if len(files) + len(odd) > 3 else ''}); give a new or empty folder (nothing was changed)"
                )
            theirs = odd + [f for f in files if f != OUTPUT_MARKER and f not in set(record.get("files", []))]
            if theirs:
                raise BadInput(
                    f"{what} {folder} is an earlier `hlsp {command}` output, but holds what it did not write "
                    f"({', '.join(theirs[:3])}{' ...' if len(theirs) > 3 else ''}): move that away, or give another "
                    "folder (nothing was changed)"
                )
            previous = folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        files, _ = _listing(staging)
        atomic_write_text(staging / OUTPUT_MARKER, json.dumps({"command": command, "files": files}, indent=1))
        if previous is not None:
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.rename(folder, old / "x")
            os.rename(staging, folder)
            remove_scratch(old)
        else:
            if folder.exists():  # empty: ours to take
                folder.rmdir()
            os.rename(staging, folder)
    finally:
        if staging.exists():
            remove_scratch(staging)
