"""The synthetic observing program: which exposures, where, when, with which effects.

The plan mirrors PHANGS-JWST (program 2107) at a small scale: per target, a NIRCam
observation (mosaic tiles x dithers, per band) with MIRI off-field exposures taken in
parallel (so MIRI backgrounds come from another position, at the NIRCam time), and a MIRI
science observation. One target ('synth2', the IC 5332 case) had its NIRCam observation, and
with it its own MIRI off-fields, months after its MIRI science; the target observed just before
it ('synth1', the NGC 7496 case) has off-fields that ended minutes before its MIRI science.

Times are MJD (UTC). Offsets are arcsec. Nothing here touches files: :mod:`.exposures` renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from processing.simulate.detectors import FILTERS

PROGRAM_ID = 9001
T0_MJD = 60000.0
OVERHEAD_S = 60.0
#: Time between the end of synth1's parallel off-fields and the start of synth2's MIRI science.
BORROW_GAP_MIN = 14.0
#: How much later the late target's NIRCam observation (and own MIRI off-fields) came.
LATE_DAYS = 120.0


@dataclass(frozen=True)
class Size:
    name: str
    nircam_groups: int
    miri_groups: int
    dithers: int


SIZES = {
    "demo": Size("demo", nircam_groups=5, miri_groups=5, dithers=2),
    "full": Size("full", nircam_groups=8, miri_groups=10, dithers=4),
}

#: Dither offsets (RA*cos(Dec), Dec) in arcsec, a 4-point pattern.
DITHERS = [(0.0, 0.0), (1.55, 0.72), (0.74, 2.31), (2.28, 1.57)]


@dataclass
class TargetPlan:
    name: str
    ra: float
    dec: float
    tiles: list[tuple[float, float]]  # tile centre offsets (east, north) in arcsec from (ra, dec)
    late_nircam: bool = False  # NIRCam (and own MIRI off-fields) observed LATE_DAYS later


@dataclass
class Exposure:
    """One exposure to render."""

    basename: str
    target: str
    band: str
    kind: str  # 'science' or 'off'
    observation: int
    visit: int
    sequence: int  # 1 prime, 2 parallel
    activity: int
    exposure: int
    tile: int
    dither: int
    ra_ref: float  # nominal pointing of the aperture reference point (header)
    dec_ref: float
    pa_v3: float
    mjd_start: float
    ngroups: int
    effects: dict = field(default_factory=dict)

    @property
    def visit_id(self) -> str:
        return f"jw{PROGRAM_ID:05d}{self.observation:03d}{self.visit:03d}"

    @property
    def instrument(self) -> str:
        return "miri" if FILTERS[self.band]["detector"] == "MIRIMAGE" else "nircam"


def demo_targets() -> list[TargetPlan]:
    return [
        TargetPlan("synth1", 150.10, 2.20, tiles=[(-8.5, 0.0), (8.5, 0.0)]),
        TargetPlan("synth2", 150.60, 2.45, tiles=[(0.0, 0.0)], late_nircam=True),
    ]


def offset_radec(ra: float, dec: float, east: float, north: float) -> tuple[float, float]:
    """Small offset on the sky (arcsec) -> new RA, Dec in degrees (TAN projection)."""
    xi, eta = np.deg2rad(east / 3600.0), np.deg2rad(north / 3600.0)
    a0, d0 = np.deg2rad(ra), np.deg2rad(dec)
    denom = np.cos(d0) - eta * np.sin(d0)
    a = a0 + np.arctan2(xi, denom)
    d = np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, denom))
    return float(np.rad2deg(a) % 360.0), float(np.rad2deg(d))


def basename(obs: int, visit: int, seq: int, act: int, exp: int, detector: str) -> str:
    return f"jw{PROGRAM_ID:05d}{obs:03d}{visit:03d}_02{seq:1d}{act:02d}_{exp:05d}_{detector.lower()}"


def group_time(band: str, size: str) -> float:
    from processing.simulate.detectors import DETECTORS, subarray

    det = FILTERS[band]["detector"]
    return DETECTORS[det].frame_time[subarray(det, size)["name"]]


def parallel_pointing(ra: float, dec: float, pa_v3: float) -> tuple[float, float]:
    """Where the MIRI imager points while the NIRCam long-wave aperture is at (ra, dec)."""
    from pysiaf.utils import rotations

    from processing.simulate.detectors import siaf_aperture

    nrc, miri = siaf_aperture("NRCA5_FULL"), siaf_aperture("MIRIM_FULL")
    att = rotations.attitude(nrc.V2Ref, nrc.V3Ref, ra, dec, pa_v3)
    r, d = rotations.pointing(att, miri.V2Ref, miri.V3Ref)
    return float(r), float(d)


#: Position angle of V3 for every exposure (degrees east of north).
PA_V3 = 60.0


def plan_program(
    bands: list[str], size: str = "demo", targets: list[TargetPlan] | None = None, pa_v3: float = PA_V3
) -> list[Exposure]:
    """Every exposure of the program in time order."""
    from processing.simulate.detectors import DETECTORS

    sz = SIZES[size]
    targets = targets or demo_targets()
    nircam_bands = [b for b in bands if FILTERS[b]["detector"] != "MIRIMAGE"]
    miri_bands = [b for b in bands if FILTERS[b]["detector"] == "MIRIMAGE"]
    exposures: list[Exposure] = []
    t = T0_MJD

    def duration(band: str) -> float:
        ng = sz.miri_groups if band in miri_bands else sz.nircam_groups
        return ng * group_time(band, size) + OVERHEAD_S

    def add(target, band, kind, obs, visit, seq, act, exp, tile, dither, ra, dec, mjd):
        det = FILTERS[band]["detector"]
        ng = sz.miri_groups if band in miri_bands else sz.nircam_groups
        exposures.append(
            Exposure(
                basename(obs, visit, seq, act, exp, DETECTORS[det].name),
                target,
                band,
                kind,
                obs,
                visit,
                seq,
                act,
                exp,
                tile,
                dither,
                ra,
                dec,
                pa_v3,
                mjd,
                ng,
            )
        )

    late_queue: list[tuple[TargetPlan, int]] = []
    for ti, tp in enumerate(targets):
        obs_nircam, obs_miri = 2 * ti + 1, 2 * ti + 2
        # MIRI science first
        t = _miri_science(tp, obs_miri, miri_bands, sz, t, add, duration)
        if tp.late_nircam:
            late_queue.append((tp, obs_nircam))
            continue
        t = _nircam_with_parallels(tp, obs_nircam, nircam_bands, miri_bands, sz, t, add, duration)
        # the next target's MIRI science starts BORROW_GAP_MIN after these off-fields ended
        t += BORROW_GAP_MIN / 1440.0
    for tp, obs_nircam in late_queue:
        t = max(t, T0_MJD + LATE_DAYS)
        t = _nircam_with_parallels(tp, obs_nircam, nircam_bands, miri_bands, sz, t, add, duration)
    exposures.sort(key=lambda e: e.mjd_start)
    return exposures


def _dither_sequence(tp, obs, bands, sz, t, add, duration, tile, east, north, kind="science", seq=1, pointing=None):
    """Every band's dither pattern at one tile, back to back from time ``t``; returns the end time."""
    for act, band in enumerate(bands, start=1):
        for d in range(sz.dithers):
            de, dn = DITHERS[d]
            ra, dec = offset_radec(tp.ra, tp.dec, east + de, north + dn)
            if pointing is not None:
                ra, dec = pointing(ra, dec)
            add(tp.name, band, kind, obs, tile + 1, seq, act, d + 1, tile, d, ra, dec, t)
            t += duration(band) / 86400.0
    return t


def _miri_science(tp, obs, miri_bands, sz, t, add, duration):
    for tile, (east, north) in enumerate(tp.tiles):
        t = _dither_sequence(tp, obs, miri_bands, sz, t, add, duration, tile, east, north)
    return t


def _nircam_with_parallels(tp, obs, nircam_bands, miri_bands, sz, t, add, duration):
    """NIRCam science per tile; MIRI off-field exposures in parallel (same time, same attitude)."""
    for tile, (east, north) in enumerate(tp.tiles):
        t_end = _dither_sequence(tp, obs, nircam_bands, sz, t, add, duration, tile, east, north)
        # parallel MIRI: from the same start time, pointed by the NIRCam attitude
        t_par = _dither_sequence(
            tp,
            obs,
            miri_bands,
            sz,
            t,
            add,
            duration,
            tile,
            east,
            north,
            kind="off",
            seq=2,
            pointing=lambda r, d: parallel_pointing(r, d, PA_V3),
        )
        t = max(t_end, t_par)
    return t
