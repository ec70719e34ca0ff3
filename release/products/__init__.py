"""Release product types, each declared once.

A :class:`ProductType` says what one kind of release file is: its product-type name (the
last field of the MAST file name; ``{variant}`` where it repeats per value of the manifest,
e.g. one PSF-matched mosaic per resolution), its extension, whether there is one per target
and band, per target or per release, which of the run's products it is made from (a stage's
:class:`processing.stages.Product`), whether the manifest asks for it, the function that
writes it, the checks ``hlsp validate`` runs on it, the README paragraph that describes it,
and what a patch release does with the parent's file of that kind.

Packaging (release/package.py), validation (release/validate.py), naming
(release/naming.py: the file list a manifest will give, which ``hlsp check`` checks against
MAST's rules) and the README iterate the declarations of :mod:`release.products.registry`:
adding a product type is its declaration (and its writer and checks), nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: how many files of a type a release holds: one per target and band, per target, per release
PER = ("band", "target", "release")
#: what a patch release does with its parent's file of a type (for what it does not remake):
#: ``carry`` it over byte for byte; ``merge`` the parent's rows of the bands it does not remake
#: into its own (per-target tables); ``replace`` it with its own (README, file list); ``keep``
#: the parent's beside its own (the release manifests the carried files were made from)
ON_PATCH = ("carry", "merge", "replace", "keep")


@dataclass(frozen=True)
class ProductType:
    """One kind of release file (see the module docstring).

    ``write(ctx, unit)`` writes ``ctx.dest(unit)`` (:class:`PackContext`, :class:`Unit`);
    each of ``checks`` is ``check(ctx, rel, path, hdul)`` (:class:`CheckContext`; ``hdul``: the
    open HDU list of a FITS file, else None) and reports through ``ctx.report``; ``readme`` is
    jinja2 text rendered into the README's Products section when the release holds a file of
    this type (with ``m``, the manifest, and ``files``, the release's files of this type);
    ``source`` is the type of the run's product it is made from (None: made by packaging from
    the manifest and the other files); ``wanted(manifest)``: whether the manifest asks for it;
    ``readme_context(m, files)``: more names for its ``readme`` text, from its files (each a
    dict with ``name``, ``path``, ``target``, ``filter``).
    """

    name: str
    ext: str
    per: str
    write: Callable[[PackContext, Unit], None]
    checks: tuple[Callable[..., None], ...] = ()
    readme: str = ""
    source: str | None = None
    wanted: Callable[[Any], bool] | None = None
    on_patch: str = "carry"
    readme_context: Callable[[Any, list[dict]], dict] | None = None

    def __post_init__(self):
        if self.per not in PER:
            raise ValueError(f"product type {self.name}: per '{self.per}' is not one of {PER}")
        if self.on_patch not in ON_PATCH:
            raise ValueError(f"product type {self.name}: on_patch '{self.on_patch}' is not one of {ON_PATCH}")

    def variant_of(self, product: str) -> str | None:
        """The variant a file-name product type is of this type ('' without variants), or None."""
        if "{variant}" not in self.name:
            return "" if product == self.name else None
        head, _, tail = self.name.partition("{variant}")
        ok = product.startswith(head) and product.endswith(tail) and len(product) > len(head) + len(tail)
        return product[len(head) : len(product) - len(tail)] if ok else None


@dataclass(frozen=True)
class Unit:
    """One file a release of a manifest holds: its type, file-name product type (the variant
    expanded), target (``all`` for the release's own files), band (None per target or
    release) and the file name's instrument field."""

    ptype: ProductType
    product: str
    target: str
    band: str | None
    instrument: str

    @property
    def filter(self) -> str:
        return self.band.lower() if self.band else "multi"

    def name(self, project: str, version: str) -> str:
        from release.naming import make_name

        return make_name(project, self.instrument, self.target, self.filter, version, self.product, self.ptype.ext)

    def folder(self) -> str:
        """Where in the release it sits: its target's folder, or the top."""
        return "" if self.target == "all" else self.target

    def regenerated(self, m) -> bool:
        """Whether a release of ``m`` makes this file (a patch makes only what it regenerates)."""
        if self.band is not None:
            return m.regenerates(self.target, self.band)
        if self.target != "all":
            return any(m.regenerates(self.target, b.upper()) for b in m.target_bands(self.target))
        return True


@dataclass
class PackagedFile:
    path: Path
    product: str
    target: str
    instrument: str
    filter: str


class ProductTypes:
    """The product types of a system, in the order packaging writes them (the release's own
    files last: the README lists what came before, the file list everything)."""

    def __init__(self, types: list[ProductType]):
        self.types = list(types)
        seen = set()
        for t in self.types:
            if (t.name, t.ext) in seen:
                raise ValueError(f"product type {t.name}.{t.ext} is declared twice")
            seen.add((t.name, t.ext))

    def __iter__(self):
        return iter(self.types)

    def match(self, product: str, ext: str) -> ProductType | None:
        """The declaration of a file-name product type and extension, or None: a type named
        exactly so first, then one whose ``{variant}`` pattern it fits (``img-preview`` is the
        preview, not a variant of ``img-{variant}``)."""
        exact = next((t for t in self.types if t.ext == ext and t.name == product), None)
        return exact or next((t for t in self.types if t.ext == ext and t.variant_of(product) is not None), None)

    def units(self, m, stages=None) -> list[Unit]:
        """Every file a release of manifest ``m`` holds (a patch: what it makes and what it
        carries), in declaration order: computed once, for packaging, validation and the
        names ``hlsp check`` checks. ``stages``: the stage registry whose products the files are
        made from (default: this system's)."""
        from processing.instruments import instrument_of
        from release.naming import collection_instrument

        if stages is None:
            from processing.registry import default_registry

            stages = default_registry()
        providers = stages.product_providers()
        all_bands = [b for t in m.targets for b in m.target_bands(t)]
        collection = collection_instrument(instrument_of(b) for b in all_bands or m.program.bands)
        out: list[Unit] = []
        for pt in self.types:
            if pt.wanted is not None and not pt.wanted(m):
                continue
            if pt.per == "release":
                out.append(Unit(pt, pt.name, "all", None, collection))
                continue
            stage = providers.get(pt.source) if pt.source else None
            if pt.source and stage is None:
                continue  # no stage of this system makes what it is made from
            variants = list(stage.variants_of(m)) if stage is not None and stage.variants else []
            if "{variant}" in pt.name:
                products = [pt.name.replace("{variant}", v) for v in variants]
            else:
                products = [] if stage is not None and stage.variants and not variants else [pt.name]
            for target in m.targets:
                bands = [b.upper() for b in m.target_bands(target)]
                made = [b for b in bands if stage is None or instrument_of(b) in stage.instruments]
                if pt.per == "band":
                    out += [Unit(pt, p, target, b, instrument_of(b)) for b in made for p in products]
                elif made and products:
                    out.append(Unit(pt, pt.name, target, None, collection_instrument(instrument_of(b) for b in made)))
        return out


@dataclass
class PackContext:
    """What a writer works with: the manifest, the staging folder, the run's products
    (``entries``, the engine's product index), the files written so far, and for a patch the
    parent release and the parent's parts of the tables it merges."""

    lm: Any
    staging: Path
    simulated: bool
    entries: list
    registry: ProductTypes
    stages: Any
    files: list[PackagedFile] = field(default_factory=list)
    parent: Path | None = None
    parent_parts: dict = field(default_factory=dict)
    #: what the changelog found (the README summarises it): set by the changes writer
    changes: dict | None = None

    @property
    def m(self):
        return self.lm.manifest

    @property
    def version(self) -> str:
        from release.naming import file_version

        return file_version(self.m.release.version)

    def dest(self, unit: Unit) -> Path:
        return self.staging / unit.folder() / unit.name(self.m.release.project, self.version)

    def entries_for(self, unit: Unit) -> list:
        """The run's products a file is made from (one per band: a per-target table's parts)."""
        variant = unit.ptype.variant_of(unit.product)
        source = unit.ptype.source
        if source and "{variant}" in source:
            source = source.replace("{variant}", variant or "")
        return [
            e
            for e in self.entries
            if e.product == source and e.target == unit.target and (unit.band is None or e.band == unit.band)
        ]

    def written(self, product: str, target: str, band: str) -> Path:
        """A file this packaging already wrote (e.g. the mosaic a preview is drawn from)."""
        return next(
            f.path for f in self.files if f.product == product and f.target == target and f.filter == band.lower()
        )


@dataclass
class CheckContext:
    """What a check works with: the report to add findings to, the release folder and its
    files (relative path -> path), and the release manifest (None where it did not load)."""

    report: Any
    root: Path
    rels: dict[str, Path]
    manifest: Any = None
    #: FITS files whose required primary keywords are sound (what an image check may build on)
    primary_ok: dict[str, bool] = field(default_factory=dict)
