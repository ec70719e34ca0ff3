"""Release product types are declared once (release/products/): a new one, a toy source
catalogue per band made by a toy stage, is packaged, named, described in the README, listed
in the manifest CSV and validated from its declaration alone."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processing.fileio import atomic_path
from release.products import ProductType, ProductTypes
from release.products.registry import default_product_types
from release.validate import validate_release
from tests.release import tiny_release

# -- the toy product type: all of it is here ---------------------------------------------------


def write_catalog(ctx, unit) -> None:
    """The catalogue as released: the released mosaic's primary header (MAST's keywords) and
    the stage's table, with checksums."""
    (entry,) = ctx.entries_for(unit)
    header = fits.getheader(ctx.written("img", unit.target, unit.band), 0)
    with fits.open(entry.path) as src:
        table = fits.BinTableHDU(src["SOURCES"].data, name="SOURCES")
    with atomic_path(ctx.dest(unit)) as tmp:
        fits.HDUList([fits.PrimaryHDU(header=header), table]).writeto(tmp, checksum=True)


def check_catalog(ctx, rel: str, path: Path, hdul) -> None:
    ok = "SOURCES" in hdul and {"RA", "DEC", "FLUX"} <= set(hdul["SOURCES"].columns.names)
    n = len(hdul["SOURCES"].data) if ok else 0
    ctx.report.add(rel, "catalogue", None if ok and n else "no SOURCES table with RA, DEC, FLUX and sources")


CATALOG = ProductType(
    "catalog",
    "fits",
    "band",
    write_catalog,
    checks=(check_catalog,),
    readme="*_catalog.fits: per target and band, the point sources of the mosaic (RA, DEC, FLUX in Jy).\n",
    source="catalog",
)


def run_catalog_stage(folder: Path) -> Path:
    """What the toy stage writes per target and band: a FITS table of sources."""
    cols = [
        fits.Column(name="RA", format="D", array=np.array([150.1, 150.1002])),
        fits.Column(name="DEC", format="D", array=np.array([2.2, 2.2001])),
        fits.Column(name="FLUX", format="E", array=np.array([1e-5, 2e-5])),
    ]
    path = folder / "tiny1_f770w_catalog.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="SOURCES")]).writeto(path)
    return path


# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def registries():
    """This system's stages plus a toy stage providing ``catalog`` after lv3, and its product
    types plus the toy one (before the release's own files)."""
    from pydantic import BaseModel

    from processing.registry import default_registry
    from processing.stages import Input, ModelParameters, Product, Registry, Stage

    class NoParameters(BaseModel):
        pass

    toy = Stage(
        "catalog",
        "target_band",
        (Input("mosaic", "same", "lv3", "_i2d.fits"),),
        ("_catalog.fits",),
        "tests.release.test_products:run_catalog_stage",
        ModelParameters(NoParameters),
        products=(Product("catalog", "_catalog.fits"),),
    )
    stages = Registry([*default_registry().stages.values(), toy])
    types = list(default_product_types())
    first_own = next(i for i, t in enumerate(types) if t.per == "release")
    return ProductTypes(types[:first_own] + [CATALOG] + types[first_own:]), stages


def test_a_new_product_type_is_packaged_named_described_listed_and_validated(tmp_path, registries):
    registry, stages = registries
    rel = tiny_release.write(tmp_path, registry=registry, stages=stages, extra={"catalog": run_catalog_stage})
    name = "hlsp_synth-tiny_jwst_miri_tiny1_f770w_v1p0_catalog.fits"
    assert (rel / "tiny1" / name).is_file()
    readme = next(rel.glob("*_readme.txt")).read_text()
    assert "*_catalog.fits: per target and band, the point sources" in readme and name in readme
    with open(next(rel.glob("*_manifest.csv")), newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["filename"] == f"tiny1/{name}")
    assert row["product_type"] == "catalog" and row["filter"] == "f770w"
    report = validate_release(rel, use_fitsverify=False, registry=registry, stages=stages)
    assert report.ok, [(f.file, f.message) for f in report.failures]
    assert any(f.check == "catalogue" and f.file.endswith(name) for f in report.findings)
    # this system's own declarations know no catalogue: the same release is not theirs
    plain = validate_release(rel, use_fitsverify=False)
    assert any("'catalog' (fits) is not a product type of this system" in f.message for f in plain.failures)
    # the declared checks run: a catalogue without sources fails, named
    path = rel / "tiny1" / name
    with fits.open(path) as hdul:
        empty = fits.BinTableHDU(hdul["SOURCES"].data[:0], name="SOURCES")
        out = fits.HDUList([fits.PrimaryHDU(header=hdul[0].header), empty])
        path.chmod(0o644)
        path.unlink()
        out.writeto(path, checksum=True)
    broken = validate_release(rel, use_fitsverify=False, registry=registry, stages=stages)
    assert any(f.file.endswith(name) and "no SOURCES table" in f.message for f in broken.failures)


def test_the_product_types_and_the_files_a_manifest_gives():
    """What a release of the demo manifest holds, from the declarations alone (packaging,
    validation and `hlsp check` use this one list)."""
    from release.manifest import load_manifest

    lm = load_manifest(Path(__file__).resolve().parents[2] / "manifests" / "demo" / "demo.toml")
    units = default_product_types().units(lm.manifest)
    kinds = sorted({(u.ptype.name, u.ptype.ext, u.ptype.per) for u in units})
    assert (
        kinds
        == [
            ("anchoring", "ecsv", "target"),
            ("changes", "txt", "release"),
            ("img", "fits", "band"),
            ("img-preview", "png", "band"),
            ("img-{variant}", "fits", "band"),
            ("manifest", "csv", "release"),
            ("manifest", "toml", "release"),
            ("psf-matching", "ecsv", "target"),
            ("readme", "txt", "release"),
            ("tweakback", "tar.gz", "band"),
        ]
        or ("changes", "txt", "release") not in kinds
    )
    bands = [(u.target, u.band) for u in units if u.product == "img"]
    assert len(bands) == sum(len(lm.manifest.target_bands(t)) for t in lm.manifest.targets)
    assert {u.product for u in units if u.ptype.name == "img-{variant}"} == {
        "img-gauss0p85as",
        "img-gauss0p90as",
        "img-gauss1p00as",
    }


def test_a_file_name_matches_its_own_declaration():
    """An exact product type wins over a {variant} pattern it happens to fit."""
    reg = default_product_types()
    assert reg.match("img", "fits").name == "img"
    assert reg.match("img-gauss0p85as", "fits").name == "img-{variant}"
    assert reg.match("img-preview", "png").name == "img-preview"
    assert reg.match("img-preview", "fits").name == "img-{variant}"  # a FITS variant of that name would be one
    assert reg.match("manifest", "csv").ext == "csv" and reg.match("manifest", "toml").ext == "toml"
    assert reg.match("catalog", "fits") is None
