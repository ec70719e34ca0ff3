"""Find a release's raw exposures and decide which belong to which (target, band).

Exposures are identified from their primary headers, as archive files are: TARGPROP (the
proposer's target name), INSTRUME, FILTER, EXPRIPAR (PRIME or PARALLEL_*: MIRI parallels of
NIRCam are the off-field background exposures), the visit id and EXPSTART. The manifest's
``observations.skip/include`` patterns and ``miri_background`` settings are applied here.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from processing.errors import BadInput

if TYPE_CHECKING:  # release/ depends on processing/, never the reverse
    from release.manifest import LoadedManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawExposure:
    path: str  # absolute
    name: str  # file name without _uncal.fits
    target: str  # normalised TARGPROP
    instrument: str  # nircam | miri
    band: str
    parallel: bool
    visit: str
    mjd_start: float


def normalise_target(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum() or ch in "+-.")


def _facts_of(path: Path) -> dict:
    """What the engine needs of an exposure, from its primary header only (the file's data
    are never read: a survey's headers are read in seconds)."""
    from astropy.io import fits

    with open(path, "rb") as fh:
        h = fits.Header.fromfile(fh)
    return {
        "target": normalise_target(str(h.get("TARGPROP", ""))),
        "instrument": str(h["INSTRUME"]).lower(),
        "band": str(h["FILTER"]).upper(),
        "parallel": str(h.get("EXPRIPAR", "PRIME")).startswith("PARALLEL"),
        "visit": f"jw{h['PROGRAM']}{h['OBSERVTN']}{h['VISIT']}",
        "mjd_start": float(h["EXPSTART"]),
    }


class HeaderFacts:
    """The exposures' header facts (:func:`_facts_of`) remembered by file name, size and
    modification time, so a program's headers are read once, not at every plan or run.

    Kept per data folder in the user's cache (``$HLSP_CACHE_HOME``, else
    ``$XDG_CACHE_HOME/hlsp``, else ``~/.cache/hlsp``), never in the data folder (it may be
    read-only or shared); a cache that cannot be written is skipped (the headers are read
    again next time)."""

    def __init__(self, data_dir: Path):
        import hashlib

        home = os.environ.get("HLSP_CACHE_HOME") or str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hlsp"
        )
        tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        self.path = Path(home) / "header-facts" / f"{tag}.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def facts(self, path: Path) -> tuple[str, dict]:
        """``(index key, facts)`` of the file at ``path``."""
        st = os.stat(path)
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.entries:
            self.entries[key] = _facts_of(path)
            self.changed = True
        return key, self.entries[key]

    def save(self, keep: set[str]) -> None:
        """Write the entries of the files seen this time (``keep``: their keys) if any changed."""
        if not self.changed and len(keep) == len(self.entries):
            return
        from processing.fileio import atomic_write_text

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({k: v for k, v in self.entries.items() if k in keep}))
        except OSError as exc:
            log.debug("header facts not cached (%s): %s", self.path, exc)


def scan_exposures(data_dir: Path) -> list[RawExposure]:
    """The identity of every ``*_uncal.fits`` under ``data_dir``, from its primary header
    (remembered by :class:`HeaderFacts` while the file is unchanged)."""
    if not data_dir.is_dir():
        raise BadInput(
            f"program.data.path: {data_dir} is not a directory (a synthetic program is written by `hlsp simulate DIR`)"
        )
    index = HeaderFacts(data_dir)
    out, seen = [], set()
    found = []
    for folder, _dirs, names in os.walk(data_dir.resolve(), followlinks=True):
        found += [os.path.join(folder, n) for n in names if n.endswith("_uncal.fits")]
    for name in sorted(found, key=lambda f: f.split(os.sep)):
        path = Path(os.path.realpath(name)) if os.path.islink(name) else Path(name)
        try:
            key, facts = index.facts(path)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            # unreadable headers are reported per task (the stage that reads the file fails);
            # an exposure whose identity cannot be read cannot be assigned to a task at all
            raise BadInput(f"{path}: cannot read the exposure's primary header ({type(exc).__name__}: {exc})") from None
        seen.add(key)
        out.append(RawExposure(path=str(path), name=path.name[: -len("_uncal.fits")], **facts))
    index.save(seen)
    return out


def run_selection(lm: LoadedManifest, targets: list[str] | None = None, bands: list[str] | None = None):
    """The (target, band) units a run covers: ``--targets``/``--bands`` (checked against the
    manifest: :class:`BadInput` naming the option) and, for a patch, its targets, instruments
    and bands. Returns ``selects(target, band, instrument) -> bool``; the task graph and
    ``hlsp fetch`` use the same rule."""
    m = lm.manifest
    for t in targets or []:
        if t not in m.targets:
            raise BadInput(f"--targets: '{t}' is not a target of {lm.path.name}")
    bands_u = [b.upper() for b in bands] if bands else None
    for b in bands_u or []:
        if b not in m.program.bands:
            raise BadInput(f"--bands: '{b}' is not a band of {lm.path.name}")
    patch = m.patch
    if patch is not None:
        targets = [t for t in (targets or patch.targets) if t in patch.targets]

    def selects(target: str, band: str, instrument: str) -> bool:
        if (targets and target not in targets) or (bands_u and band not in bands_u):
            return False
        return patch is None or not (
            (patch.instruments and instrument not in patch.instruments) or (patch.bands and band not in patch.bands)
        )

    return selects


def background_sources(lm: LoadedManifest, target: str) -> list[str]:
    """The targets whose MIRI off-field exposures ``target``'s run uses (its ``miri_background``:
    itself for 'own', the lender for 'borrowed', both, or none)."""
    bg = lm.manifest.targets[target].miri_background
    return [target] * (bg.source in ("own", "both")) + [bg.borrow_from] * (bg.source in ("borrowed", "both"))


def target_aliases(lm: LoadedManifest) -> dict[str, str]:
    """Normalised target names (each target's key and designation, :func:`normalise_target`)
    -> the manifest's target: how an exposure's TARGPROP, or MAST's target_name, finds its
    target."""
    aliases = {}
    for name, t in lm.manifest.targets.items():
        aliases[normalise_target(name)] = name
        if t.designation:
            aliases[normalise_target(t.designation)] = name
    return aliases


def selected(name: str, include: list[str], skip: list[str]) -> bool:
    """Whether an exposure named ``name`` passes the manifest's ``include``/``skip`` patterns."""
    if include and not any(fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(name, p) for p in skip)


@dataclass
class TargetBandInputs:
    target: str
    band: str
    instrument: str
    science: list[RawExposure]
    background: list[RawExposure]  # MIRI off-field exposures used for this target and band
    background_source: str

    @functools.cached_property
    def science_names(self) -> frozenset[str]:
        """The science exposures' names (asked once per member of every wide task: a set made once)."""
        return frozenset(e.name for e in self.science)


def assign_exposures(lm: LoadedManifest, exposures: list[RawExposure]) -> dict[tuple[str, str], TargetBandInputs]:
    """For every (target, band) of the manifest: its science exposures and MIRI off-fields."""
    m = lm.manifest
    aliases = target_aliases(lm)
    by_target: dict[str, list[RawExposure]] = {}
    for e in exposures:
        if e.target in aliases:
            by_target.setdefault(aliases[e.target], []).append(e)
    out: dict[tuple[str, str], TargetBandInputs] = {}
    problems = []
    for name, t in m.targets.items():
        mine = [e for e in by_target.get(name, []) if selected(e.name, t.observations.include, t.observations.skip)]
        for band in m.target_bands(name):
            inst = "miri" if band in _miri_bands() else "nircam"
            science = sorted(
                (e for e in mine if e.band == band and not e.parallel), key=lambda e: (e.mjd_start, e.name)
            )
            if not science:
                problems.append(
                    f"targets.{name}: no science exposure in {band} under {lm.resolve_path(m.program.data.path)}"
                )
                continue
            background: list[RawExposure] = []
            bg = t.miri_background
            if inst == "miri" and bg.source != "none":
                for source in background_sources(lm, name):
                    if source == name:
                        background += [e for e in mine if e.band == band and e.parallel and e.instrument == "miri"]
                        continue
                    lender = m.targets[source]
                    background += [
                        e
                        for e in by_target.get(source, [])
                        if e.band == band
                        and e.parallel
                        and e.instrument == "miri"
                        and selected(e.name, lender.observations.include, lender.observations.skip)
                        and selected(e.name, bg.observations, [])
                    ]
                if not background:
                    problems.append(f"targets.{name}.miri_background: no {band} off-field exposure found ({bg.source})")
            out[(name, band)] = TargetBandInputs(
                name, band, inst, science, sorted(background, key=lambda e: e.mjd_start), bg.source
            )
    if problems:
        hint = (
            f"\n  (the exposures come from MAST: `hlsp fetch {lm.path.name}` downloads what the run needs)"
            if m.program.data.source == "mast"
            else ""
        )
        raise BadInput("missing observations:\n  " + "\n  ".join(problems) + hint)
    return out


def _miri_bands() -> set[str]:
    from processing.instruments import FILTERS

    return set(FILTERS["miri"])


class HashIndex:
    """sha256 of input files, remembered by (path, size, mtime) so unchanged files are read once."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            self.entries = {}

    def sha256(self, file: str | Path) -> str:
        st = os.stat(file)
        path = os.path.abspath(file)
        key = f"{os.path.realpath(path) if os.path.islink(path) else path}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.entries:
            from processing.fileio import file_sha256

            self.entries[key] = file_sha256(file)
        return self.entries[key]

    def save(self) -> None:
        from processing.fileio import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.entries, indent=0, sort_keys=True))


__all__ = ["RawExposure", "TargetBandInputs", "assign_exposures", "scan_exposures", "HashIndex", "asdict"]
