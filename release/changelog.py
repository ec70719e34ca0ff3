"""What changed between a release and the previous one: in the manifest (pins, program,
targets, parameters, products, comparisons) and in the products (which files changed, which
are the same recipe, which are new or gone, and by how much the mosaics moved).

- :func:`manifest_changes`: every leaf of the two validated manifests that differs, by dotted
  key (``pins.crds_context``, ``targets.ngc0628.parameters.band.F2100W.anchoring.n_bins``),
  with its old and new value; the release's own bookkeeping (version, dates, the changes text)
  is left out;
- :func:`product_changes`: the previous release's files paired with this one's by target,
  band, product type and extension (not version). A FITS product is *unchanged* when its
  HLSPTASK is the same (the engine's task key: same inputs, parameters, code and versions:
  the same recipe; the bytes differ only by the version keywords), another file when its
  sha256 is (from the two manifest CSVs); a changed mosaic gets the comparison numbers
  (release/compare.py);
- :func:`render`: the changelog text (jinja2, templates/CHANGES.txt.j2), shipped as the
  release's ``*_changes.txt`` and summarised in its README.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

#: manifest keys that are the release's bookkeeping, not what was made
BOOKKEEPING = (
    "release.version",
    "release.changes",
    "release.previous",
    "release.known_issues",
    "comparisons.previous_release",
    "comparisons.mast_mosaics",
    "patch",
)


@dataclass
class Change:
    key: str
    old: object
    new: object

    @property
    def kind(self) -> str:
        return "added" if self.old is None else "removed" if self.new is None else "changed"

    @property
    def section(self) -> str:
        head = self.key.split(".")[0]
        if head == "targets":
            return "targets"
        return head


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Leaves by dotted key (an empty table has none: absent and empty are the same)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def manifest_changes(old, new) -> list[Change]:
    """Differences between two validated manifests (``release.manifest.Manifest``), by dotted key."""
    a = flatten(old.model_dump(mode="json", exclude_none=True))
    b = flatten(new.model_dump(mode="json", exclude_none=True))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in BOOKKEEPING):
            continue
        if a.get(key) != b.get(key):
            out.append(Change(key, a.get(key), b.get(key)))
    return out


@dataclass
class FileChange:
    target: str
    filter: str
    product: str
    ext: str
    status: str  # unchanged | changed | added | removed
    old: str = ""
    new: str = ""
    how: str = ""
    numbers: dict = field(default_factory=dict)


def _csv_rows(release: Path) -> dict[str, dict]:
    """``{relative file name: {"sha256": ...}}`` from the release's manifest CSV, or (a release
    being written, without one yet) from its files."""
    from processing.fileio import file_sha256

    path = next(Path(release).glob("*_manifest.csv"), None)
    if path is None:
        return {
            p.relative_to(release).as_posix(): {"sha256": file_sha256(p)}
            for p in sorted(Path(release).rglob("*"))
            if p.is_file()
        }
    with open(path, newline="") as fh:
        return {r["filename"]: r for r in csv.DictReader(fh)}


def _task_key(path: Path) -> str | None:
    from astropy.io import fits

    try:
        return fits.getval(path, "HLSPTASK", 0)
    except (KeyError, OSError):
        return None


def _same_table(a: Path, b: Path) -> bool:
    """Two per-target tables hold the same rows and per-band metadata (their release and
    version metadata may differ)."""
    import numpy as np
    from astropy.table import Table

    try:
        ta, tb = Table.read(a, format="ascii.ecsv"), Table.read(b, format="ascii.ecsv")
    except Exception:  # noqa: BLE001 - an unreadable table is simply not the same
        return False
    if ta.colnames != tb.colnames or len(ta) != len(tb) or ta.meta.get("bands") != tb.meta.get("bands"):
        return False
    for name in ta.colnames:
        x, y = np.asarray(ta[name]), np.asarray(tb[name])
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif not np.array_equal(x.astype(str), y.astype(str)):
            return False
    return True


def product_changes(previous: Path, current: Path, compare_mosaics: bool = True) -> list[FileChange]:
    """The products of ``current`` against ``previous`` (two release folders; ``current`` may
    be one being written, without its manifest CSV yet)."""
    from release.naming import parse_name

    def index(release: Path) -> dict[tuple, tuple[str, dict]]:
        out = {}
        for name, row in _csv_rows(release).items():
            parsed = parse_name(Path(name).name)
            if parsed is None or parsed.target == "all":
                continue
            out[(parsed.target, parsed.filter, parsed.product, parsed.ext)] = (name, row)
        return out

    old, new = index(previous), index(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        target, filt, product, ext = key
        if key not in old:
            changes.append(FileChange(target, filt, product, ext, "added", new=new[key][0]))
            continue
        if key not in new:
            changes.append(FileChange(target, filt, product, ext, "removed", old=old[key][0]))
            continue
        (on, orow), (nn, nrow) = old[key], new[key]
        if ext == "fits":
            ko, kn = _task_key(Path(previous) / on), _task_key(Path(current) / nn)
            same = ko is not None and ko == kn
            how = "same recipe (HLSPTASK)" if same else "another recipe (HLSPTASK differs)"
        elif ext == "ecsv" and orow["sha256"] != nrow["sha256"]:
            same = _same_table(Path(previous) / on, Path(current) / nn)
            how = "same rows (the release's version aside)" if same else "other rows"
        else:
            same = orow["sha256"] == nrow["sha256"]
            how = "same bytes" if same else "other bytes"
        fc = FileChange(target, filt, product, ext, "unchanged" if same else "changed", on, nn, how)
        if not same and compare_mosaics and product == "img":
            from release.compare import Pair, compare_files

            try:
                n, _, _ = compare_files(Pair(target, filt.upper(), product, Path(current) / nn, Path(previous) / on))
                fc.numbers = {
                    "median": n.median,
                    "mad": n.mad,
                    "background": n.background,
                    "flux_ratio": n.flux_ratio,
                    "shift_mas": n.shift_mas,
                }
            except ValueError as exc:
                fc.how += f"; not compared: {exc}"
        changes.append(fc)
    return changes


def render(m, previous_manifest, mchanges: list[Change], fchanges: list[FileChange] | None) -> str:
    """The changelog as text (templates/CHANGES.txt.j2)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["short"] = lambda v: "(unset)" if v is None else (repr(v) if isinstance(v, str) else str(v))
    sections: dict[str, list[Change]] = {}
    for c in mchanges:
        sections.setdefault(c.section, []).append(c)
    counts = {}
    for f in fchanges or []:
        counts[f.status] = counts.get(f.status, 0) + 1
    return env.get_template("CHANGES.txt.j2").render(
        m=m,
        previous=previous_manifest,
        sections=sections,
        files=fchanges,
        counts=counts,
    )
