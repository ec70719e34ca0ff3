"""Per-target tables (``<target>/..._<target>_multi_<v>_<type>.ecsv``): one table per target
stacking what each band's task wrote (each row with its band; each band's metadata kept under
its name), for a stage product that is a table per band (``anchoring``, ``psf-matching``).
A patch that remakes some of a target's bands keeps the parent's rows of the others.

:func:`target_table` declares one: its name, the stage product it stacks, its README text."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from release.products import ProductType

_BAND = re.compile(r"^F\d{3,4}[WMNC]\d?$")


def write(ctx, unit) -> None:
    from astropy.table import Table, vstack

    m = ctx.m
    parts, meta = [], {}
    for entry in sorted(ctx.entries_for(unit), key=lambda e: e.band or ""):
        t = Table.read(entry.path, format="ascii.ecsv")
        t.add_column([entry.band] * len(t), name="band", index=0)
        parts.append(t)
        meta[entry.band] = dict(t.meta)
    parent_part = ctx.parent_parts.get((unit.product, unit.target))
    if parent_part is not None:  # a patch: the parent's rows of the bands it does not remake
        old = Table.read(parent_part.decode(), format="ascii.ecsv")
        keep = [b for b in (old.meta.get("bands") or {}) if b not in meta]
        if keep:
            parts.append(old[[str(b) in keep for b in old["band"]]])
            meta.update({b: old.meta["bands"][b] for b in keep})
    table = vstack(parts, metadata_conflicts="silent") if parts else Table()
    if len(table):
        table = table[np.argsort(np.asarray(table["band"], str), kind="stable")]
    table.meta.clear()
    table.meta.update(
        {
            "release": m.release.project,
            "version": m.release.version,
            "target": unit.target,
            "product": unit.product,
            "bands": meta,
        }
    )
    dest = ctx.dest(unit)
    dest.parent.mkdir(parents=True, exist_ok=True)
    table.write(dest, format="ascii.ecsv", overwrite=True)


def check(ctx, rel: str, path: Path, hdul=None) -> None:
    """A per-target table opens, has rows and metadata for exactly the target's bands, and the
    rows of every band another band's rows or metadata refer to (e.g. the reference band an
    anchored band was fitted against: without it that band's anchoring is unexplained)."""

    from release.naming import parse_name

    parsed = parse_name(path.name)
    ptype = parsed.product if parsed else "per-target"
    m = ctx.manifest
    if m is None or parsed is None or parsed.target not in m.targets:
        return
    bands = {b.upper() for b in m.target_bands(parsed.target)}
    check_table(ctx.report, rel, path, bands, ptype)


def check_table(report, rel: str, path: Path, bands: set[str], ptype: str) -> None:
    from astropy.table import Table

    try:
        t = Table.read(path, format="ascii.ecsv")
    except Exception as exc:  # noqa: BLE001 - any unreadable table is a finding
        report.add(rel, f"{ptype} table", f"does not open as an ECSV table ({type(exc).__name__}: {exc})")
        return
    have = {str(b).upper() for b in t["band"]} if "band" in t.colnames else set()
    meta = {str(b).upper(): v for b, v in (t.meta.get("bands") or {}).items()}
    problems = []
    if have != bands:
        problems.append(
            f"rows for {', '.join(sorted(have)) or 'no band'}, but the release manifest's bands are "
            f"{', '.join(sorted(bands))}"
        )
    if set(meta) != bands:
        problems.append(f"metadata for {', '.join(sorted(meta)) or 'no band'}, expected {', '.join(sorted(bands))}")
    referred = {
        str(v.get("anchored_to")).upper(): b
        for b, v in meta.items()
        if isinstance(v, dict) and v.get("anchored_to") and _BAND.match(str(v.get("anchored_to")).upper())
    }
    if "against" in t.colnames:
        referred.update(
            {str(a).upper(): str(b).upper() for a, b in zip(t["against"], t["band"]) if _BAND.match(str(a).upper())}
        )
    unexplained = sorted(f"{b} (refers to {ref})" for ref, b in referred.items() if ref not in have)
    if unexplained:
        problems.append(f"rows of the band(s) others refer to are missing: {', '.join(unexplained)}")
    report.add(rel, f"{ptype} table", "; ".join(problems) if problems else None)


def target_table(name: str, readme: str, source: str | None = None) -> ProductType:
    """The declaration of a per-target table stacking the stage product ``source`` (default:
    ``name``)."""
    return ProductType(
        name, "ecsv", "target", write, checks=(check,), readme=readme, source=source or name, on_patch="merge"
    )


ANCHORING = target_table(
    "anchoring",
    """\
*_multi_*_anchoring.ecsv: per target, the background anchoring of every band (ECSV table,
  one row per image a band was fitted against): role (external: against a wide-field
  image; external (direct): against a wide-field image of the band's own wavelength, such as
  a 24 um image for F2100W; internal: against the instrument's anchored reference band;
  external (F770W): the reference band's own fit, repeated in each band's rows), against, used (and
  the reason when not), slope, intercept, offset and its uncertainty (MJy/sr), the fitted
  intensity range, the wide-field image's own zero as measured from its sky (sky_level).
  The metadata of each band: the offset subtracted, its uncertainty and the status. The
  mosaics and the tweakback exposures carry the same numbers: HLSPDBO (offset subtracted,
  MJy/sr; negative where level matching's constant was added back), HLSPDBE (the level's
  uncertainty; a bound for a band not anchored), HLSPDBL (level basis), HLSPDBR (what it was
  anchored to), HLSPDBS (slope), HLSPDBST (anchored, internal only or not anchored and why).
""",
)
PSF_MATCHING = target_table(
    "psf-matching",
    """\
*_multi_*_psf-matching.ecsv: per target, the kernels of every band (one row per resolution:
  W-, D, the FWHM a point source gets, seconds) and the noise of the smoothed mosaic against
  resolution (rows with product '-': the paper's Figure 10), MJy/sr.
""",
)
