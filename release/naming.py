"""MAST High-Level Science Product file names (reference/hlsp.md).

``hlsp_<proj-id>_<observatory>_<instrument>_<target>_<opt-elem>_<version>_<product-type>.<ext>``

Our product types (MAST names none for these; kept inside its field rules):

==========================  =============================================================
``img``                     the mosaic (SCI, ERR, DQ, VAR_*, CON, WHT), ``.fits``
``img-gauss0p85as``         the mosaic convolved to a 0.85" Gaussian (SCI, ERR), ``.fits``
``tweakback``               per-exposure files with the absolute astrometry, ``.tar.gz``
``img-preview``             preview of the mosaic, ``.png``
``readme``, ``manifest``    collection files (target ``all``, filter ``multi``): the README
                            (``.txt``), the file list (``.csv``) and the release manifest
                            the products were made from (``.toml``)
==========================  =============================================================
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


def convolved_product(fwhm_arcsec: float) -> str:
    """Product type of a PSF-matched mosaic: 0.85 -> ``img-gauss0p85as`` (the PSF-matching
    stage's variant of the mosaic)."""
    from processing.psf_matching.stage import variant_name

    return "img-" + variant_name(fwhm_arcsec)


def convolved_fwhm(product: str) -> float | None:
    """The Gaussian FWHM (arcsec) a PSF-matched product type names: ``img-gauss0p85as`` ->
    0.85; None for any other product type."""
    m = re.fullmatch(r"img-gauss(\d+)p(\d+)as", product)
    return float(f"{m.group(1)}.{m.group(2)}") if m else None


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


def release_names(manifest, version: str) -> list[tuple[str, str]]:
    """``(manifest key, file name)`` of every file a release of ``manifest`` would hold.

    Per target and band: the mosaic, its preview, its PSF-matched products and its tweakback
    tarball as the manifest's ``products`` asks; per release: the README and the manifest CSV.
    The names are not checked here (:func:`check_name` does), so a manifest can be refused
    before any processing when one of them would break MAST's rules.
    """
    from processing.instruments import instrument_of

    m = manifest
    out: list[tuple[str, str]] = []
    products = ["img"]
    if m.products.previews:
        products.append("img-preview")
    products += [convolved_product(f) for f in m.products.convolved_fwhm_arcsec]
    ext = {"img-preview": "png", "tweakback": "tar.gz"}
    if m.products.tweakback:
        products.append("tweakback")
    insts = set()
    for target in m.targets:
        for band in m.target_bands(target):
            inst = instrument_of(band)
            insts.add(inst)
            for product in products:
                name = HlspName(
                    m.release.project, inst, target, band.lower(), version, product, ext.get(product, "fits")
                )
                out.append((f"targets.{target}", str(name)))
    coll = collection_instrument(insts or m.program.instruments)
    for product, e in (("readme", "txt"), ("manifest", "csv"), ("manifest", "toml")):
        out.append(("release", str(HlspName(m.release.project, coll, "all", "multi", version, product, e))))
    return out
