"""The registry: every product type of a release, one line each (their declarations live in
their own modules), in the order packaging writes them: what a file is made from before it
(the mosaic before its preview), the release's own files last (the README lists what came
before it, the manifest CSV everything)."""

from __future__ import annotations

from release.products import ProductTypes, collection, convolved, img, preview, tables, tweakback

PRODUCT_TYPES = ProductTypes(
    [
        img.IMG,  # the mosaic
        preview.PREVIEW,  # a PNG of it (products.previews)
        tweakback.TWEAKBACK,  # the exposures with the absolute astrometry (products.tweakback)
        convolved.CONVOLVED,  # the mosaic PSF-matched to each resolution (products.convolved_fwhm_arcsec)
        tables.ANCHORING,  # per target: the background anchoring of every band
        tables.PSF_MATCHING,  # per target: the PSF-matching kernels and noise curves
        collection.CHANGES,  # against the previous release (a patch: its parent)
        collection.README,
        collection.MANIFEST_TOML,  # the release manifest the products were made from
        collection.MANIFEST_CSV,  # every file, its size and sha256
    ]
)


def name_problems(m, registry: ProductTypes | None = None) -> list[tuple[str, str]]:
    """``(manifest key, problem)`` for the files a release of manifest ``m`` would hold whose
    names would break MAST's rules (one example per target): found before any processing."""
    from release.naming import HlspName, check_name, file_version

    fv = file_version(m.release.version)
    problems, reported = [], set()
    for u in (registry or default_product_types()).units(m):
        name = str(HlspName(m.release.project, u.instrument, u.target, u.filter, fv, u.product, u.ptype.ext))
        bad = check_name(name)
        key = f"targets.{u.target}" if u.target != "all" else "release"
        if bad and key not in reported:
            reported.add(key)
            problems.append((key, f"its release files would break MAST's naming rules, e.g. {name}: {'; '.join(bad)}"))
    return problems


def default_product_types() -> ProductTypes:
    """This system's product types (what packaging, validation and `hlsp check` use)."""
    return PRODUCT_TYPES
