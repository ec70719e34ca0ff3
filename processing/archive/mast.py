"""Which MAST products a manifest needs, found with astroquery.mast.

``hlsp fetch`` asks MAST (``astroquery.mast.Observations``) for the manifest's program, per
instrument and filter (``query_criteria(obs_collection="JWST", proposal_id, instrument_name,
filters)``), keeps the observations of the manifest's targets (``target_name`` matched like the
engine matches TARGPROP: the target's key or designation, letters and digits only), lists
their products (``get_product_list``) and keeps one product level (``filter_products`` by
``productSubGroupDescription``: UNCAL or RATE) of exposure files. An exposure's role is read from
its JWST file name, ``jw<program><obs><visit>_<group><seq><activity>_<exposure>_<detector>``:
sequence 1 is the prime exposure (science), 2-5 a parallel one (MIRI off-fields, taken in
parallel). Selected are exactly the files the run graph reads (processing/inputs.py applies the
same rules to the headers): every science exposure of a (target, band) the run covers (a patch:
its targets, instruments and bands), and for MIRI the off-fields its ``miri_background`` names
(its own, another target's for ``borrowed``, or both), with the manifest's ``observations``
patterns applied.

Nothing here downloads (processing/archive/download.py does); the MAST server address is a
parameter so that tests run against a loopback server speaking the same API.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from processing.errors import HlspError
from processing.inputs import background_sources, normalise_target, run_selection, selected, target_aliases

if TYPE_CHECKING:
    from release.manifest import LoadedManifest

log = logging.getLogger(__name__)

#: the MAST portal (astroquery.mast's default server)
MAST_SERVER = "https://mast.stsci.edu"
#: product level -> MAST productSubGroupDescription and the file suffix
LEVELS = {"uncal": ("UNCAL", "_uncal.fits"), "rate": ("RATE", "_rate.fits")}
INSTRUMENT_NAMES = {"nircam": "NIRCAM/IMAGE", "miri": "MIRI/IMAGE"}
#: seconds to wait for MAST to answer at all before saying it cannot be reached
CONNECT_TIMEOUT_S = 5.0

_NAME = re.compile(
    r"^jw(?P<program>\d{5})(?P<observation>\d{3})(?P<visit>\d{3})_(?P<group>\d{2})(?P<sequence>\d)(?P<activity>\w{2})"
    r"_(?P<exposure>\d{5})_(?P<detector>[a-z0-9]+)_(?P<suffix>\w+)\.fits$"
)


class ArchiveUnreachable(HlspError):
    """MAST (or the CRDS server) could not be reached."""


@dataclass(frozen=True)
class ArchiveFile:
    """One exposure file to fetch: where MAST has it and why the run needs it."""

    filename: str
    uri: str  # mast:JWST/product/<filename>
    size: int | None  # bytes, as MAST lists them
    obs_id: str
    target: str  # the manifest target whose exposure it is (its folder under the destination)
    band: str
    instrument: str
    role: str  # "science" | "off-field"
    used_by: tuple[str, ...] = field(default=())  # the targets whose run reads it

    @property
    def relpath(self) -> str:
        return f"{self.target}/{self.filename}"


def exposure_role(filename: str) -> str | None:
    """``'science'`` (prime exposure, sequence 1), ``'off-field'`` (a parallel one) or None if
    ``filename`` is not a JWST exposure file name."""
    m = _NAME.match(filename)
    if m is None:
        return None
    return "science" if m["sequence"] == "1" else "off-field"


@dataclass(frozen=True)
class Need:
    """Exposures the run reads: ``role`` exposures of ``target`` in ``band``, for ``used_by``."""

    target: str
    band: str
    instrument: str
    role: str
    used_by: str


def needs(lm: LoadedManifest, targets: list[str] | None = None, bands: list[str] | None = None) -> list[Need]:
    """What the manifest's run reads, as (target, band, role) needs: the same selection as the
    task graph (processing/pipeline.py build_graph) and the exposure assignment
    (processing/inputs.py assign_exposures)."""
    from processing.instruments import instrument_of

    m = lm.manifest
    selects = run_selection(lm, targets, bands)
    out: list[Need] = []
    for name in m.targets:
        for band in m.target_bands(name):
            inst = instrument_of(band)
            if not selects(name, band, inst):
                continue
            out.append(Need(name, band, inst, "science", name))
            if inst == "miri":
                out += [Need(source, band, inst, "off-field", name) for source in background_sources(lm, name)]
    return out


def _band_of(filters: str) -> str:
    """MAST's ``filters`` of a JWST imaging observation (``F200W``, ``F200W;CLEAR``, ``F770W``) ->
    the filter."""
    parts = [p for p in re.split(r"[;,]", str(filters).upper()) if p and p not in ("CLEAR", "")]
    return parts[0] if parts else ""


def select(
    lm: LoadedManifest,
    observations: Any,
    products: Any,
    wanted: list[Need],
    level: str = "uncal",
) -> list[ArchiveFile]:
    """The files to fetch, from MAST's observation rows (``target_name``, ``filters``,
    ``instrument_name``, ``obsid``) and product rows (``obsID`` or ``parent_obsid``,
    ``productFilename``, ``dataURI``, ``size``, ``productSubGroupDescription``), both as
    astropy tables or lists of dicts: one per exposure file of a wanted (target, band, role),
    with the manifest's ``observations`` include/skip patterns (and a borrower's choice of its
    lender's off-fields) applied. Sorted by target and file name."""
    m = lm.manifest
    group, suffix = LEVELS[level]
    aliases = target_aliases(lm)
    obs_of: dict[str, tuple[str, str]] = {}  # obsid -> (manifest target, band)
    for row in observations:
        target = aliases.get(normalise_target(str(row["target_name"])))
        if target is not None:
            obs_of[str(row["obsid"])] = (target, _band_of(row["filters"]))
    by_key: dict[tuple[str, str, str], list[str]] = {}
    for need in wanted:
        by_key.setdefault((need.target, need.band, need.role), []).append(need.used_by)
    chosen: dict[str, ArchiveFile] = {}
    for row in products:
        fname = str(row["productFilename"])
        if str(row["productSubGroupDescription"]).upper() != group or not fname.endswith(suffix):
            continue
        role = exposure_role(fname)
        if role is None:
            continue
        owner = None
        for col in ("obsID", "parent_obsid"):
            if col in _columns(row) and str(row[col]) in obs_of:
                owner = obs_of[str(row[col])]
                break
        if owner is None:
            continue
        target, band = owner
        users = by_key.get((target, band, role))
        if not users:
            continue
        exposure = fname[: -len(suffix)]
        t = m.targets[target]
        if not selected(exposure, t.observations.include, t.observations.skip):
            continue
        users = [
            u
            for u in users
            if u == target or selected(exposure, m.targets[u].miri_background.observations, [])  # borrowed subset
        ]
        if not users:
            continue
        size = row["size"] if "size" in _columns(row) else None
        inst = "miri" if "mirimage" in fname else "nircam"
        prev = chosen.get(fname)
        used = tuple(sorted(set(users) | set(prev.used_by if prev else ())))
        chosen[fname] = ArchiveFile(
            fname,
            str(row["dataURI"]),
            int(size) if size not in (None, "") and str(size) != "--" else None,
            str(row["obs_id"]) if "obs_id" in _columns(row) else "",
            target,
            band,
            inst,
            role,
            used,
        )
    return sorted(chosen.values(), key=lambda f: (f.target, f.filename))


def _columns(row) -> set[str]:
    return set(row.colnames) if hasattr(row, "colnames") else set(row)


class Mast:
    """astroquery.mast's Observations, at ``server`` (MAST, or a loopback server in tests), with
    an optional token for exclusive-access data (never logged)."""

    def __init__(self, server: str = MAST_SERVER, token: str | None = None, timeout: float = 120.0):
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._obs = None

    def reachable(self) -> None:
        """Raise :class:`ArchiveUnreachable` unless the server answers within
        :data:`CONNECT_TIMEOUT_S` (no network: a clear error in seconds, not a hang)."""
        import requests

        try:
            requests.get(self.server + "/api/v0/invoke", timeout=(CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S))
        except requests.RequestException as exc:
            raise ArchiveUnreachable(
                f"cannot reach MAST at {self.server} ({type(exc).__name__}); check the network or --server"
            ) from None

    @property
    def observations(self):
        if self._obs is None:
            from astroquery.mast import ObservationsClass

            obs = ObservationsClass()
            portal = obs._portal_api_connection
            # the portal's addresses are class attributes made from the configured server
            portal.MAST_REQUEST_URL = self.server + "/api/v0/invoke"
            portal.COLUMNS_CONFIG_URL = self.server + "/portal/Mashup/Mashup.asmx/columnsconfig"
            portal.MAST_DOWNLOAD_URL = self.server + "/api/v0.1/Download/file"
            portal.TIMEOUT = self.timeout
            obs._auth_obj.SESSION_INFO_URL = self.server + "/whoami"
            if self.token:
                obs.login(token=self.token, store_token=False, reenter_token=False)
            self._obs = obs
        return self._obs

    def query(self, proposal_ids: list[int], instrument: str, bands: list[str]):
        """JWST observations of the program in the instrument's imaging mode and these filters."""
        return self.observations.query_criteria(
            obs_collection="JWST",
            proposal_id=[str(p) for p in proposal_ids],
            instrument_name=INSTRUMENT_NAMES[instrument],
            filters=bands,
        )

    def products(self, obsids: list[str], level: str):
        """The exposure files of one level (``LEVELS``) of these observations."""
        if not obsids:
            return []
        products = self.observations.get_product_list(obsids)
        return self.observations.filter_products(products, productSubGroupDescription=[LEVELS[level][0]])

    def url(self, uri: str) -> str:
        from urllib.parse import quote

        return self.server + "/api/v0.1/Download/file?uri=" + quote(uri, safe=":/")


def missing(wanted: list[Need], files: list[ArchiveFile]) -> list[Need]:
    """The needs no file answers (a target, band and role MAST lists nothing for)."""
    have = {(f.target, f.band, f.role, u) for f in files for u in f.used_by}
    return [n for n in wanted if (n.target, n.band, n.role, n.used_by) not in have]


def find(lm: LoadedManifest, mast: Mast, level: str = "uncal", targets=None, bands=None):
    """``(files, needs not found)``: every file the manifest's run needs, from MAST, and the
    (target, band, role) it needs that MAST lists nothing for."""
    wanted = needs(lm, targets, bands)
    if not wanted:
        return [], []
    m = lm.manifest
    mast.reachable()
    files: list[ArchiveFile] = []
    for inst in sorted({n.instrument for n in wanted}):
        inst_bands = sorted({n.band for n in wanted if n.instrument == inst})
        obs = mast.query(m.program.proposal_ids, inst, inst_bands)
        aliases = target_aliases(lm)
        mine = [r for r in obs if normalise_target(str(r["target_name"])) in aliases]
        prods = mast.products([str(r["obsid"]) for r in mine], level)
        files += select(lm, mine, prods, [n for n in wanted if n.instrument == inst], level)
    files = sorted(files, key=lambda f: (f.target, f.filename))
    return files, missing(wanted, files)
