"""Downloads that can be trusted: resumable, verified, concurrent, atomic, recorded.

:func:`fetch_files` brings each :class:`Item` (a URL and the path it goes to) with a few
parallel HTTP connections (``requests``):

- **resumable**: bytes arrive in ``<dest>.part``; a later run continues a partial file with an
  HTTP Range request (a server that ignores Range sends it whole: it restarts), and skips a file
  already present whose size is the expected one, whose FITS checksums verify and whose sha256
  is the one an earlier fetch recorded;
- **verified**: the size MAST lists, and the FITS ``CHECKSUM``/``DATASUM`` cards the archive
  writes in every JWST product (astropy); a file that fails is downloaded once more from the
  start and, failing again, refused: it never reaches its final name;
- **retried**: a 5xx answer or a broken connection is retried with exponential backoff; a 404
  (or another 4xx) stops that file at once, named;
- **atomic**: the final name appears only by ``os.replace`` of a verified file;
- **recorded**: :func:`write_record` writes the fetch record (every file's MAST URI, size,
  sha256 and date) beside the files.

A MAST token is sent as ``Authorization: token ...`` and never written to a log, an error
message or the record.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from processing.errors import HlspError
from processing.fileio import file_sha256

log = logging.getLogger(__name__)

#: bytes read from the connection at a time: what a broken transfer keeps for the resume
NET_CHUNK = 1 << 16
#: name of the fetch record in the destination folder
RECORD = "fetch-record.json"


class DownloadFailed(HlspError):
    """A file could not be downloaded or verified."""


@dataclass(frozen=True)
class Item:
    url: str
    dest: Path
    size: int | None = None  # expected bytes (MAST's listing), if known
    uri: str = ""  # what the record cites (mast:JWST/product/...)
    meta: tuple[tuple[str, str], ...] = ()  # target, band, role... for the record
    sha256: str | None = None  # what an earlier fetch recorded: a file present must still be it


@dataclass
class Result:
    item: Item
    status: str  # "present" | "downloaded" | "resumed"
    sha256: str
    size: int
    attempts: int


def fits_checksum_problem(path: Path) -> str | None:
    """None if every HDU's CHECKSUM/DATASUM (where written) verifies, else what failed. A FITS
    file without the cards has nothing to verify (the synthetic program writes none)."""
    import warnings

    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False, checksum=False) as hdul:
                for i, hdu in enumerate(hdul):
                    h = hdu.header
                    if "DATASUM" in h and hdu.verify_datasum() == 0:
                        return f"HDU {i}: DATASUM does not match the data"
                    if "CHECKSUM" in h and hdu.verify_checksum() == 0:
                        return f"HDU {i}: CHECKSUM does not match"
    except (OSError, ValueError, TypeError) as exc:
        return f"not a readable FITS file ({type(exc).__name__})"
    return None


def _verify(path: Path, size: int | None, fits_file: bool) -> str | None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"{actual} bytes, MAST lists {size}"
    return fits_checksum_problem(path) if fits_file else None


def _one(item: Item, session, retries: int, backoff_s: float, timeout_s: float) -> Result:
    import requests

    dest = item.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        why = _verify(dest, item.size, dest.name.endswith(".fits"))
        sha = file_sha256(dest) if why is None else None
        if why is None and item.sha256 not in (None, sha):
            why = "its sha256 differs from the fetch record's"
        if why is None:
            return Result(item, "present", sha, dest.stat().st_size, 0)
        log.warning("%s: present but fails verification (%s): downloading it again", dest.name, why)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    attempts, fresh_tries, resumed = 0, 0, False
    while True:
        attempts += 1
        offset = part.stat().st_size if part.exists() else 0
        if item.size is not None and offset > item.size:
            part.unlink()
            offset = 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with session.get(item.url, headers=headers, stream=True, timeout=(timeout_s, timeout_s)) as r:
                if r.status_code == 416 and item.size is not None and offset == item.size:
                    pass  # the part is whole already: verify it below
                elif r.status_code >= 500:
                    raise _Retry(f"HTTP {r.status_code}")
                elif r.status_code >= 400:
                    what = item.uri or dest.name
                    raise DownloadFailed(f"{what}: HTTP {r.status_code} from the archive ({dest.name})")
                else:
                    mode = "ab" if (offset and r.status_code == 206) else "wb"
                    resumed = resumed or mode == "ab"
                    with open(part, mode) as fh:
                        for chunk in r.iter_content(NET_CHUNK):
                            fh.write(chunk)
        except (_Retry, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if attempts > retries:
                raise DownloadFailed(
                    f"{item.uri or dest.name}: gave up after {attempts} attempts ({_reason(exc)}); run again to resume"
                ) from None
            wait = backoff_s * 2 ** (attempts - 1)
            log.info("%s: %s; retrying in %.1f s", dest.name, _reason(exc), wait)
            time.sleep(wait)
            continue
        problem = _verify(part, item.size, dest.name.endswith(".fits"))
        if problem is None:
            os.replace(part, dest)
            return Result(
                item, "resumed" if resumed else "downloaded", file_sha256(dest), dest.stat().st_size, attempts
            )
        part.unlink()
        fresh_tries += 1
        if fresh_tries > 1:
            raise DownloadFailed(f"{item.uri or dest.name}: refused, the download does not verify ({problem})")
        log.warning("%s: the download does not verify (%s): downloading it again from the start", dest.name, problem)


class _Retry(Exception):
    pass


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, _Retry) else type(exc).__name__


def fetch_files(
    items: list[Item],
    workers: int = 4,
    token: str | None = None,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress=None,
) -> tuple[list[Result], list[str]]:
    """Download ``items`` with ``workers`` parallel connections. Returns the results and the
    errors (one message per file that failed; the others are kept: a re-run resumes)."""
    import requests

    def session():
        s = requests.Session()
        if token:
            s.headers["Authorization"] = f"token {token}"
        return s

    results: list[Result] = []
    errors: list[str] = []
    sessions = [session() for _ in range(max(1, workers))]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(_one, item, sessions[i % len(sessions)], retries, backoff_s, timeout_s): item
            for i, item in enumerate(items)
        }
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except DownloadFailed as exc:
                errors.append(str(exc))
            if progress is not None:
                progress(futures[fut])
    for s in sessions:
        s.close()
    return sorted(results, key=lambda r: str(r.item.dest)), sorted(errors)


def recorded_sha256(dest: Path) -> dict[str, str]:
    """``{path relative to dest: sha256}`` of an earlier fetch record in ``dest`` (empty if none)."""
    try:
        return {f["file"]: f["sha256"] for f in json.loads((dest / RECORD).read_text()).get("files", [])}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}


def write_record(dest: Path, results: list[Result], about: dict) -> Path:
    """Merge ``results`` into ``dest/fetch-record.json`` (one entry per file, by its path
    relative to ``dest``: MAST URI, size, sha256, when it was fetched, and its ``meta``)."""
    from processing.fileio import atomic_write_text

    path = dest / RECORD
    try:
        old = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        old = {}
    files = {f["file"]: f for f in old.get("files", [])}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for r in results:
        rel = r.item.dest.relative_to(dest).as_posix()
        prev = files.get(rel, {})
        fetched = prev.get("fetched") if r.status == "present" and prev.get("sha256") == r.sha256 else now
        files[rel] = {
            "file": rel,
            "uri": r.item.uri,
            "size": r.size,
            "sha256": r.sha256,
            "fetched": fetched or now,
            **dict(r.item.meta),
        }
    record = {**old, **about, "files": [files[k] for k in sorted(files)]}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path
