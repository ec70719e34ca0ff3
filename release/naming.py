"""MAST High-Level Science Product file names.

``hlsp_<proj-id>_<observatory>_<instrument>_<target>_<opt-elem>_<version>_<product-type>.<ext>``

The product types (the last field) and extensions a release holds are declared in
release/products/ (``img``, ``img-preview``, ``tweakback``, ``img-gauss0p85as``, the per-target
tables, the README and the manifests); ``release.products.name_problems`` checks the names a
manifest's release will have, from those declarations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OBSERVATORY = "jwst"
MAX_NAME = 90
EXTENSIONS = ("fits", "fits.gz", "tar.gz", "png", "txt", "csv", "ecsv", "md", "toml")
_FIELD_LIMITS = {
    "project": 20,
    "observatory": 20,
    "instrument": 20,
    "target": 30,
    "filter": 20,
    "version": 9,
    "product": 16,
}
_FIELD_RE = {
    "project": re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$"),
    "observatory": re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
    "instrument": re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
    "target": re.compile(r"^[a-z0-9]([a-z0-9.+-]*[a-z0-9])?$"),
    "filter": re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
    "version": re.compile(r"^v\d+([p.]\d+)*$"),
    "product": re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$"),
}


@dataclass(frozen=True)
class HlspName:
    project: str
    instrument: str
    target: str
    filter: str
    version: str
    product: str
    ext: str
    observatory: str = OBSERVATORY

    def __str__(self) -> str:
        return (
            f"hlsp_{self.project}_{self.observatory}_{self.instrument}_{self.target}_"
            f"{self.filter}_{self.version}_{self.product}.{self.ext}"
        )


def version_tuple(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(x) for x in version.split("."))
    return major, minor, patch


def file_version(version: str) -> str:
    """File-name version of a release version: 1.1.0 -> v1p1, 1.0.1 -> v1p0p1."""
    major, minor, patch = version_tuple(version)
    return f"v{major}p{minor}" + (f"p{patch}" if patch else "")


def make_name(project: str, instrument: str, target: str, filter: str, version: str, product: str, ext: str) -> str:
    name = HlspName(project, instrument.lower(), target, filter.lower(), version, product, ext)
    problems = check_name(str(name))
    if problems:
        raise ValueError(f"{name}: " + "; ".join(problems))
    return str(name)


def parse_name(name: str) -> HlspName | None:
    """Split a file name into its fields, or None if it does not have the HLSP shape."""
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith("." + ext):
            stem = name[: -len(ext) - 1]
            break
    else:
        return None
    parts = stem.split("_")
    if len(parts) != 8 or parts[0] != "hlsp":
        return None
    _, project, observatory, instrument, target, filt, version, product = parts
    return HlspName(project, instrument, target, filt, version, product, ext, observatory)


def check_name(name: str) -> list[str]:
    """Every way ``name`` breaks MAST's file-name rules (empty when it is fine)."""
    problems = []
    if len(name) > MAX_NAME:
        problems.append(f"longer than {MAX_NAME} characters ({len(name)})")
    if name != name.lower():
        problems.append("has upper-case letters")
    parsed = parse_name(name)
    if parsed is None:
        return problems + [
            "is not hlsp_<project>_<observatory>_<instrument>_<target>_<filter>_<version>_<product>.<ext> "
            f"with ext one of {', '.join(EXTENSIONS)}"
        ]
    for field, limit in _FIELD_LIMITS.items():
        value = getattr(parsed, field)
        if len(value) > limit:
            problems.append(f"{field} field '{value}' is longer than {limit} characters")
        if not _FIELD_RE[field].match(value):
            problems.append(f"{field} field '{value}' has characters MAST does not allow there")
    return problems


def collection_instrument(instruments) -> str:
    """Instrument field of the collection files: the release's instruments joined, ``miri-nircam``."""
    return "-".join(sorted({part for i in instruments for part in i.lower().split("-")}))
