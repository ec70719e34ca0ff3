"""Find a release's raw exposures and decide which belong to which (target, band).

Exposures are identified from their primary headers, as archive files are: TARGPROP (the
proposer's target name), INSTRUME, FILTER, EXPRIPAR (PRIME or PARALLEL_*: MIRI parallels of
NIRCam are the off-field background exposures), the visit id and EXPSTART. The manifest's
``observations.skip/include`` patterns and ``miri_background`` settings are applied here.
"""

from __future__ import annotations

import fnmatch
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


def scan_exposures(data_dir: Path) -> list[RawExposure]:
    """Read the primary header of every ``*_uncal.fits`` under ``data_dir``."""
    from astropy.io import fits

    if not data_dir.is_dir():
        raise BadInput(
            f"program.data.path: {data_dir} is not a directory (a synthetic program is written by `hlsp simulate DIR`)"
        )
    out = []
    for path in sorted(data_dir.rglob("*_uncal.fits")):
        try:
            h = fits.getheader(path, 0)
            out.append(
                RawExposure(
                    path=str(path.resolve()),
                    name=path.name[: -len("_uncal.fits")],
                    target=normalise_target(str(h.get("TARGPROP", ""))),
                    instrument=str(h["INSTRUME"]).lower(),
                    band=str(h["FILTER"]).upper(),
                    parallel=str(h.get("EXPRIPAR", "PRIME")).startswith("PARALLEL"),
                    visit=f"jw{h['PROGRAM']}{h['OBSERVTN']}{h['VISIT']}",
                    mjd_start=float(h["EXPSTART"]),
                )
            )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            # unreadable headers are reported per task (the stage that reads the file fails);
            # an exposure whose identity cannot be read cannot be assigned to a task at all
            raise BadInput(f"{path}: cannot read the exposure's primary header ({type(exc).__name__}: {exc})") from None
    return out


def _selected(name: str, include: list[str], skip: list[str]) -> bool:
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


def assign_exposures(lm: LoadedManifest, exposures: list[RawExposure]) -> dict[tuple[str, str], TargetBandInputs]:
    """For every (target, band) of the manifest: its science exposures and MIRI off-fields."""
    m = lm.manifest
    aliases = {}
    for name, t in m.targets.items():
        aliases[normalise_target(name)] = name
        if t.designation:
            aliases[normalise_target(t.designation)] = name
    by_target: dict[str, list[RawExposure]] = {}
    for e in exposures:
        if e.target in aliases:
            by_target.setdefault(aliases[e.target], []).append(e)
    out: dict[tuple[str, str], TargetBandInputs] = {}
    problems = []
    for name, t in m.targets.items():
        mine = [e for e in by_target.get(name, []) if _selected(e.name, t.observations.include, t.observations.skip)]
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
                if bg.source in ("own", "both"):
                    background += [e for e in mine if e.band == band and e.parallel and e.instrument == "miri"]
                if bg.source in ("borrowed", "both"):
                    lender = m.targets[bg.borrow_from]
                    background += [
                        e
                        for e in by_target.get(bg.borrow_from, [])
                        if e.band == band
                        and e.parallel
                        and e.instrument == "miri"
                        and _selected(e.name, lender.observations.include, lender.observations.skip)
                        and _selected(e.name, bg.observations, [])
                    ]
                if not background:
                    problems.append(f"targets.{name}.miri_background: no {band} off-field exposure found ({bg.source})")
            out[(name, band)] = TargetBandInputs(
                name, band, inst, science, sorted(background, key=lambda e: e.mjd_start), bg.source
            )
    if problems:
        raise BadInput("missing observations:\n  " + "\n  ".join(problems))
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
        key = f"{Path(file).resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.entries:
            from processing.fileio import file_sha256

            self.entries[key] = file_sha256(file)
        return self.entries[key]

    def save(self) -> None:
        from processing.fileio import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.entries, indent=0, sort_keys=True))


__all__ = ["RawExposure", "TargetBandInputs", "assign_exposures", "scan_exposures", "HashIndex", "asdict"]
