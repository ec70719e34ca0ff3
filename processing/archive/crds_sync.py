"""The pinned CRDS context and the references a run needs, synced ahead of the run through
the ``crds`` client (``hlsp fetch --crds``).

The client does what ``crds sync --contexts CONTEXT`` and the pipeline's own lookups do: it
downloads the context's mappings (``crds.client.api.dump_mappings``, the closure of the
.pmap), then, for each exposure, computes its best references with those mappings and
downloads the ones missing (``crds.getreferences``), verified by size and sha1 against the
server's listing, into ``CRDS_PATH``. After it, a run with ``pins.crds_mode = "local"`` needs no
server. The server is asked first with a short timeout: without network the command stops in
seconds naming the server and the context.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from processing.archive.mast import CONNECT_TIMEOUT_S, ArchiveUnreachable
from processing.errors import WorkFailed

log = logging.getLogger(__name__)


def sync(context: str, crds_path: Path, server_url: str, exposures: list[Path]) -> dict:
    """Sync ``context``'s mappings and every reference the ``exposures`` (raw files, by their
    primary headers) select into ``crds_path`` from ``server_url``.

    Returns ``{"mappings": n, "references": sorted names, "bytes": downloaded bytes}``.
    Raises :class:`ArchiveUnreachable` if the server does not answer, :class:`WorkFailed`
    naming the context if it cannot be synced."""
    import requests
    from astropy.io import fits

    try:
        requests.get(server_url, timeout=(CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S))
    except requests.RequestException as exc:
        raise ArchiveUnreachable(
            f"cannot reach the CRDS server at {server_url} to sync context {context} ({type(exc).__name__})"
        ) from None
    crds_path = Path(crds_path).resolve()
    crds_path.mkdir(parents=True, exist_ok=True)
    before = _bytes(crds_path)
    os.environ.update(
        {"CRDS_PATH": str(crds_path), "CRDS_SERVER_URL": server_url, "CRDS_MODE": "auto", "CRDS_CONTEXT": context}
    )
    import crds
    from crds.client import api
    from crds.core import utils

    utils.clear_function_caches()  # crds remembers its configuration and loaded mappings
    api.set_crds_server(server_url)
    try:
        mappings = api.dump_mappings(context)
    except (crds.CrdsError, SystemExit, OSError) as exc:
        raise WorkFailed(f"CRDS context {context} could not be synced from {server_url}: {exc}") from None
    refs: set[str] = set()
    seen: set[tuple] = set()
    for path in exposures:
        header = {k: v for k, v in fits.getheader(path, 0).items() if k and not k.startswith(("COMMENT", "HISTORY"))}
        key = tuple(sorted((k, str(v)) for k, v in header.items() if k not in ("DATE", "CHECKSUM", "DATASUM")))
        if key in seen:
            continue
        seen.add(key)
        try:
            found = crds.getreferences(header, observatory="jwst", context=context)
        except (crds.CrdsError, SystemExit) as exc:
            raise WorkFailed(
                f"CRDS context {context}: the references of {path.name} could not be synced: {exc}"
            ) from None
        # a type the context does not provide for it comes back as 'NOT FOUND n/a', not a file
        refs.update(os.path.basename(v) for v in found.values() if os.path.isfile(str(v)))
    return {"mappings": len(mappings), "references": sorted(refs), "bytes": _bytes(crds_path) - before}


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
