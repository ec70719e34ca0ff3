"""The release manifest: shipped manifests validate; broken ones fail with exit 2, a message
naming the key or target, and nothing written anywhere."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
import tomli_w

from processing.errors import ManifestError
from release.cli import main
from release.manifest import file_version, load_manifest
from tests.conftest import MANIFESTS

SHIPPED = sorted(MANIFESTS.rglob("*.toml"))

BASE = {
    "schema_version": 1,
    "release": {
        "project": "test-jwst",
        "title": "Test",
        "version": "1.1.0",
        "previous": "1.0.0",
        "doi": "10.17909/abcd-1234",
        "lead": "A. Lead",
        "pi": "P. I.",
        "contact": {"name": "C. Ontact", "email": "c@example.org"},
    },
    "pins": {"jwst": "3.0.0", "crds_context": "jwst_9001.pmap"},
    "program": {
        "proposal_ids": [2107],
        "instruments": ["nircam", "miri"],
        "bands": ["F200W", "F300M", "F770W", "F2100W"],
    },
    "targets": {
        "ngc7496": {"ra": 347.447, "dec": -43.4278},
        "ic5332": {
            "ra": 353.6145,
            "dec": -36.1011,
            "miri_background": {"source": "borrowed", "borrow_from": "ngc7496"},
        },
        "ngc0628": {"ra": 24.1739, "dec": 15.7836, "bands": ["F200W", "F770W"]},
    },
    "parameters": {"instrument": {"miri": {"lv3": {"tweakreg": {"skip": True}}}}},
}


def write(tmp_path: Path, data: dict, name: str = "m.toml") -> Path:
    p = tmp_path / name
    p.write_text(tomli_w.dumps(data))
    return p


def snapshot(*dirs: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for d in dirs for p in d.rglob("*")}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_shipped_manifests_pass_check(path, capsys):
    assert main(["check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_phangs_releases_match_the_paper():
    dr101 = load_manifest(MANIFESTS / "phangs-jwst" / "dr1.0.1.toml").manifest
    dr110 = load_manifest(MANIFESTS / "phangs-jwst" / "dr1.1.0.toml").manifest
    dr111 = load_manifest(MANIFESTS / "phangs-jwst" / "dr1.1.1.toml").manifest
    assert (dr101.pins.jwst, dr101.pins.crds_context) == ("1.12.4", "jwst_1147.pmap")
    assert (dr110.pins.jwst, dr110.pins.crds_context) == ("1.13.4", "jwst_1201.pmap")
    assert len(dr110.targets) == 19 and len(dr110.program.bands) == 8
    assert dr110.targets["ic5332"].miri_background.borrow_from == "ngc7496"
    # the patch inherits everything from DR1.1.0 but its identity
    assert dr111.release.kind == "patch" and dr111.patch.targets == ["ngc3627"]
    assert dr111.pins == dr110.pins and dr111.targets.keys() == dr110.targets.keys()
    assert dr111.release.doi == dr110.release.doi and dr111.release.previous == "1.1.0"
    assert dr111.targets["ngc3627"].notes and not dr110.targets["ngc3627"].notes


@pytest.mark.parametrize(
    "version, expected",
    [("1.1.0", "v1p1"), ("1.0.1", "v1p0p1"), ("1.1.1", "v1p1p1"), ("2.0.0", "v2p0"), ("10.12.3", "v10p12p3")],
)
def test_file_version(version, expected):
    assert file_version(version) == expected


def test_content_hash_ignores_formatting(tmp_path):
    a = load_manifest(write(tmp_path, BASE, "a.toml")).manifest
    text = "# a comment\n" + tomli_w.dumps(BASE, indent=2)
    (tmp_path / "b.toml").write_text(text)
    b = load_manifest(tmp_path / "b.toml").manifest
    assert a.content_hash() == b.content_hash()
    changed = copy.deepcopy(BASE)
    changed["targets"]["ngc0628"]["ra"] = 24.2
    assert load_manifest(write(tmp_path, changed, "c.toml")).manifest.content_hash() != a.content_hash()


def test_identity_is_what_was_written_and_survives_a_new_setting_with_a_default(tmp_path):
    """HLSPMANI is the hash of the settings the manifest gives (and the schema version), not of
    the defaults: a setting added to the schema later, with a default, keeps every earlier
    manifest's identity (and so its releases valid), at the top and in a nested table; giving
    a default's value explicitly is a different manifest (it was written)."""
    from pydantic import Field, create_model

    from release import manifest as M

    lm = load_manifest(write(tmp_path, BASE, "a.toml"))
    written = lm.manifest.written()
    assert "comparisons" not in written and "previews" not in written.get("products", {})
    data = tomllib.loads((tmp_path / "a.toml").read_text())
    before = lm.manifest.content_hash()
    assert M.Manifest.model_validate(data).content_hash() == before
    Products = create_model("Products", __base__=M.Products, ratio_maps=(bool, Field(False)))
    Later = create_model(
        "Later",
        __base__=M.Manifest,
        provenance_level=(int, Field(2)),
        products=(Products, Field(default_factory=Products)),
    )
    later = Later.model_validate(data)
    assert later.provenance_level == 2 and later.products.ratio_maps is False
    assert later.content_hash() == before
    explicit = copy.deepcopy(data)
    explicit.setdefault("products", {})["previews"] = True  # the default, now written
    assert M.Manifest.model_validate(explicit).content_hash() != before


def test_base_is_valid(tmp_path):
    assert main(["check", str(write(tmp_path, BASE))]) == 0


def _set(data, dotted, value):
    keys = dotted if isinstance(dotted, tuple) else dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    if value is DELETE:
        del data[keys[-1]]
    else:
        data[keys[-1]] = value


DELETE = object()

# (id, mutation(s) as (dotted key or tuple of keys, value), text the error must contain)
BROKEN = [
    (
        "typo-key",
        [("targets.ic5332.miri_background.borow_from", "ngc7496")],
        "targets.ic5332.miri_background.borow_from: unknown key (did you mean 'borrow_from'?)",
    ),
    ("typo-top-level", [("product", {"tweakback": False})], "product: unknown key (did you mean 'products'?)"),
    ("wrong-type", [("targets.ngc7496.ra", "twelve")], "targets.ngc7496.ra"),
    ("ra-out-of-range", [("targets.ngc7496.ra", 400.0)], "targets.ngc7496.ra"),
    (
        "unknown-band",
        [("program.bands", ["F200W", "F210X"])],
        "program.bands[1]: 'F210X' is not a NIRCam or MIRI imaging filter",
    ),
    (
        "band-not-in-program",
        [("targets.ngc0628.bands", ["F200W", "F335M"])],
        "targets.ngc0628.bands[1]: F335M is not in program.bands",
    ),
    ("band-wrong-instrument", [("program.instruments", ["nircam"])], "program.bands[2]: F770W is a miri filter"),
    (
        "borrow-missing-target",
        [("targets.ic5332.miri_background.borrow_from", "ngc7497")],
        "targets.ic5332.miri_background.borrow_from: 'ngc7497' is not a target of this manifest (did you mean "
        "'ngc7496'?)",
    ),
    (
        "borrow-cycle",
        [("targets.ngc7496.miri_background", {"source": "borrowed", "borrow_from": "ic5332"})],
        "borrowing forms a cycle: ic5332 -> ngc7496 -> ic5332",
    ),
    ("borrow-self", [("targets.ic5332.miri_background.borrow_from", "ic5332")], "a target cannot borrow from itself"),
    (
        "borrow-without-source",
        [("targets.ic5332.miri_background.source", "own")],
        "targets.ic5332.miri_background.source",
    ),
    ("bad-version", [("release.version", "1.1")], "release.version: '1.1' is not a release version"),
    ("previous-not-lower", [("release.previous", "1.2.0")], "release.previous: 1.2.0 is not lower"),
    (
        "bad-crds-context",
        [("pins.crds_context", "jwst_1201")],
        "pins.crds_context: 'jwst_1201' is not a JWST CRDS context",
    ),
    ("bad-jwst-version", [("pins.jwst", "latest")], "pins.jwst: 'latest' is not a jwst release version"),
    ("target-with-slash", [("targets.ngc/628", {"ra": 1.0, "dec": 1.0})], "targets.ngc/628"),
    ("target-dotdot", [(("targets", "a..b"), {"ra": 1.0, "dec": 1.0})], "targets.a..b"),
    ("target-uppercase", [("targets.NGC0628", {"ra": 1.0, "dec": 1.0})], "did you mean 'ngc0628'?"),
    ("missing-required", [("pins.crds_context", DELETE)], "pins.crds_context: required key is missing"),
    ("bad-project-id", [("release.project", "PHANGS_JWST")], "release.project"),
    ("bad-email", [("release.contact.email", "nobody")], "release.contact.email"),
    (
        "unknown-jwst-step",
        [("parameters.default", {"lv3": {"tweakrek": {"fitgeometry": "shift"}}})],
        "parameters.default.lv3.tweakrek: 'tweakrek' is not a step of the lv3 pipeline (did you mean 'tweakreg'?)",
    ),
    (
        "unknown-jwst-param",
        [("parameters.band", {"F200W": {"lv3": {"tweakreg": {"snr_treshold": 5}}}})],
        "parameters.band.F200W.lv3.tweakreg.snr_treshold: unknown parameter",
    ),
    (
        "bad-jwst-param-value",
        [("parameters.default", {"lv1": {"ramp_fit": {"suppress_one_group": "maybe"}}})],
        "parameters.default.lv1.ramp_fit.suppress_one_group",
    ),
    (
        "engine-owned-param",
        [("parameters.default", {"lv3": {"resample": {"output_dir": "/tmp"}}})],
        "decided by the engine",
    ),
    (
        "unknown-stage",
        [("targets.ngc7496.parameters", {"default": {"lv4": {}}})],
        "targets.ngc7496.parameters.default.lv4: unknown stage",
    ),
    (
        "psf-matching-parameter-misspelt",
        [("parameters.default", {"psf_matching": {"max_negative_weight": 0.5}})],
        "unknown parameter (did you mean 'max_negative_power'?)",
    ),
    (
        "resolutions-same-name",
        [("products", {"convolved_fwhm_arcsec": [0.851, 0.849]})],
        "share the product name img-gauss0p85as",
    ),
    ("psf-band-not-in-program", [("products", {"psfs": {"F444W": "psf.fits"}})], "products.psfs.F444W"),
    (
        "anchoring-parameter-misspelt",
        [("parameters.band", {"F300M": {"anchoring": {"range_percentile": [2, 40]}}})],
        "unknown parameter (did you mean 'range_percentiles'?)",
    ),
    (
        "anchoring-direct-band-of-the-other-instrument",
        [
            (
                "targets.ngc0628.anchoring",
                {"miri": [{"survey": "mips24", "file": "m.fits", "fwhm_arcsec": 6.0, "bands": ["F200W"]}]},
            )
        ],
        "targets.ngc0628.anchoring.miri[0].bands[0]: F200W is not a miri band",
    ),
    (
        "anchoring-direct-band-not-observed",
        [
            (
                "targets.ngc0628.anchoring",
                {"miri": [{"survey": "mips24", "file": "m.fits", "fwhm_arcsec": 6.0, "bands": ["F2100W"]}]},
            )
        ],
        "targets.ngc0628.anchoring.miri[0].bands[0]: F2100W is not a band of target 'ngc0628'",
    ),
    (
        "anchoring-range-quoted",
        [("targets.ngc0628.parameters", {"default": {"anchoring": {"n_bins": "15"}}})],
        "anchoring.n_bins",
    ),
    (
        "destripe-parameter-misspelt",
        [("parameters.default", {"destripe": {"scale": [3, 7]}})],
        "unknown parameter (did you mean 'scales'?)",
    ),
    (
        "destripe-parameter-quoted",
        [("parameters.default", {"destripe_multi": {"second_pass": "yes"}})],
        "destripe_multi.second_pass",
    ),
    (
        "param-band-not-observed",
        [("targets.ngc0628.parameters", {"band": {"F2100W": {}}})],
        "targets.ngc0628.parameters.band.F2100W",
    ),
    ("kind-patch-without-table", [("release.kind", "patch")], "patch: release.kind is 'patch'"),
    ("bad-kind", [("release.kind", "hotfix")], "release.kind: 'hotfix' is not allowed"),
    (
        "bad-observation-pattern",
        [("targets.ngc7496.observations", {"skip": ["../jw02107*"]})],
        "targets.ngc7496.observations.skip[0]",
    ),
    ("synthetic-without-path", [("program.data", {"source": "synthetic"})], "program.data.path: is required"),
    ("duplicate-resolution", [("products", {"convolved_fwhm_arcsec": [0.9, 0.9]})], "products.convolved_fwhm_arcsec"),
    # a value must have the type the parameter has: a quoted one is a mistake, never converted
    (
        "quoted-boolean",
        [("parameters.default", {"lv3": {"tweakreg": {"skip": "false"}}})],
        "parameters.default.lv3.tweakreg.skip: 'false' is a string; a boolean is needed",
    ),
    (
        "quoted-number",
        [("parameters.default", {"lv3": {"tweakreg": {"tolerance": "0.3"}}})],
        "parameters.default.lv3.tweakreg.tolerance: '0.3' is a string; a number is needed",
    ),
    (
        "boolean-for-integer",
        [("parameters.default", {"lv3": {"tweakreg": {"brightest": True}}})],
        "tweakreg.brightest: True is a boolean; an integer is needed",
    ),
    (
        "float-for-integer",
        [("parameters.default", {"lv3": {"tweakreg": {"brightest": 20.5}}})],
        "tweakreg.brightest: 20.5 is a number; an integer is needed",
    ),
    (
        "number-for-string",
        [("parameters.default", {"lv3": {"outlier_detection": {"snr": 5}}})],
        "outlier_detection.snr: 5 is an integer; a string is needed",
    ),
    (
        "bad-option",
        [("parameters.default", {"lv3": {"skymatch": {"skymethod": "globl"}}})],
        "skymatch.skymethod: 'globl' is not one of",
    ),
    # the bounds the science needs, beyond jwst's own spec
    (
        "negative-tolerance",
        [("parameters.band", {"F200W": {"lv3": {"tweakreg": {"tolerance": -0.3}}}})],
        "parameters.band.F200W.lv3.tweakreg.tolerance: -0.3 must be > 0.0",
    ),
    (
        "negative-searchrad",
        [("parameters.default", {"lv3": {"tweakreg": {"searchrad": -2.0}}})],
        "tweakreg.searchrad: -2.0 must be > 0.0",
    ),
    (
        "zero-pixel-scale",
        [("parameters.default", {"lv3": {"resample": {"pixel_scale": 0.0}}})],
        "resample.pixel_scale: 0.0 must be > 0.0",
    ),
    (
        "infinite-value",
        [("parameters.default", {"lv3": {"resample": {"pixel_scale_ratio": float("inf")}}})],
        "resample.pixel_scale_ratio: inf is not a finite number",
    ),
    (
        "nan-value",
        [("parameters.default", {"lv3": {"tweakreg": {"tolerance": float("nan")}}})],
        "tweakreg.tolerance: nan is not a finite number",
    ),
    (
        "pixfrac-above-1",
        [("parameters.default", {"lv3": {"resample": {"pixfrac": 1.5}}})],
        "resample.pixfrac: 1.5 must be <= 1.0",
    ),
    (
        "bad-list-length",
        [("parameters.default", {"lv3": {"resample": {"crpix": [1.0]}}})],
        "resample.crpix: [1.0] must have 2 elements",
    ),
    # two keys naming one band: never merged with one silently dropped
    (
        "band-keys-differ-in-case",
        [
            (
                "parameters.band",
                {
                    "F200W": {"lv3": {"tweakreg": {"tolerance": 0.3}}},
                    "f200w": {"lv3": {"tweakreg": {"tolerance": 0.5}}},
                },
            )
        ],
        "parameters.band: 'F200W' and 'f200w' are the same band",
    ),
    (
        "target-band-keys-differ-in-case",
        [("targets.ngc7496.parameters", {"band": {"f770w": {}, "F770W": {}}})],
        "targets.ngc7496.parameters.band: 'f770w' and 'F770W' are the same band",
    ),
    (
        "target-band-listed-twice",
        [("targets.ngc0628.bands", ["F200W", "f200w"])],
        "targets.ngc0628.bands: lists a band twice",
    ),
    ("target-without-bands", [("targets.ngc0628.bands", [])], "targets.ngc0628.bands"),
    # what would break MAST's names or FITS headers is refused before any processing
    (
        "version-too-long-for-names",
        [("release.version", "100.200.300"), ("release.previous", "1.0.0")],
        "release.version: 100.200.300 gives the file-name version 'v100p200p300', longer than the 9 characters",
    ),
    (
        "names-too-long",
        [
            ("release.project", "a-twenty-char-projct"),
            ("targets.ngc0628x-twenty-six-characters", {"ra": 1.0, "dec": 1.0}),
        ],
        "targets.ngc0628x-twenty-six-characters: its release files would break MAST's naming rules",
    ),
    (
        "non-ascii-designation",
        [("targets.ngc0628.designation", "NGC 628 \u2014 ring")],
        "targets.ngc0628.designation: 'NGC 628 \u2014 ring' has characters a FITS header cannot hold",
    ),
    ("control-char-in-lead", [("release.lead", "A. Lead\n")], "release.lead"),
    (
        "title-longer-than-a-card",
        [("release.title", "T" * 69)],
        "release.title: is 69 characters; a FITS header value holds at most 68",
    ),
    ("empty-lead", [("release.lead", "  ")], "release.lead: must not be empty"),
    (
        "quoted-coordinate",
        [("targets.ngc7496.ra", "347.447")],
        "targets.ngc7496.ra: '347.447' is str; a number is needed (write it without quotes)",
    ),
    (
        "quoted-product-flag",
        [("products", {"tweakback": "false"})],
        "products.tweakback: 'false' is str; a boolean (true or false) is needed",
    ),
    (
        "quoted-proposal-id",
        [("program.proposal_ids", ["2107"])],
        "program.proposal_ids[0]: '2107' is str; an integer is needed",
    ),
    (
        "non-ascii-reference",
        [("release.references", ["2024ApJS..273...13W", "Williams et al. \u00e9"])],
        "release.references[1]",
    ),
    # offline by design: a catalogue service by name would need the network
    (
        "catalog-service-by-name",
        [("targets.ngc0628.astrometry_catalog", "GAIADR3")],
        "targets.ngc0628.astrometry_catalog: 'GAIADR3' names a catalogue service, which needs the network",
    ),
    # bespoke stages' parameters: finite, in the science's bounds
    (
        "infinite-stage-parameter",
        [("parameters.default", {"level_match": {"sigma": float("inf")}})],
        "parameters.default.level_match.sigma",
    ),
    (
        "destripe-scale-zero",
        [("parameters.default", {"destripe": {"scales": [0, 7]}})],
        "parameters.default.destripe.scales.0",
    ),
    (
        "astrometry-negative-tolerance",
        [("parameters.instrument", {"nircam": {"astrometry": {"tolerance_strict_arcsec": -0.1}}})],
        "parameters.instrument.nircam.astrometry.tolerance_strict_arcsec",
    ),
    (
        "astrometry-quoted-flag",
        [("parameters.default", {"astrometry": {"rotation": "no"}})],
        "parameters.default.astrometry.rotation",
    ),
    # numbers jwst's own specification leaves unbounded: counts, tolerances (a typo, not a setting)
    (
        "jwst-count-beyond-any-field",
        [("parameters.default", {"lv3": {"tweakreg": {"minobj": 10**30}}})],
        "parameters.default.lv3.tweakreg.minobj: 1000000000000000000000000000000 must be <= 1000000",
    ),
    (
        "jwst-tolerance-1e300",
        [("parameters.band", {"F200W": {"lv3": {"tweakreg": {"tolerance": 1e300}}}})],
        "parameters.band.F200W.lv3.tweakreg.tolerance: 1e+300 must be <= 600",
    ),
    (
        "jwst-unlisted-number-huge",
        [("parameters.default", {"lv1": {"jump": {"max_extended_radius": 10**12}}})],
        "parameters.default.lv1.jump.max_extended_radius: 1000000000000 must be <= 1000000000",
    ),
    (
        "stage-parameter-huge",
        [("parameters.default", {"level_match": {"max_shift_pixels": 1e300}})],
        "parameters.default.level_match.max_shift_pixels: 1e+300 is beyond",
    ),
    ("target-named-all", [("targets.all", {"ra": 1.0, "dec": 1.0})], "target name 'all' is reserved"),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_manifest_exits_2_and_names_the_key(tmp_path, case, capsys, monkeypatch):
    _, mutations, expected = case
    data = copy.deepcopy(BASE)
    for key, value in mutations:
        _set(data, key, value)
    path = write(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, MANIFESTS)
    assert main(["check", str(path)]) == 2
    assert main(["plan", str(path)]) == 2
    text = " ".join(capsys.readouterr().err.split())
    assert expected in text, text
    assert str(path) in text
    assert "Traceback" not in text
    assert snapshot(tmp_path, MANIFESTS) == before


def test_all_problems_reported_at_once(tmp_path):
    data = copy.deepcopy(BASE)
    data["pins"]["crds_context"] = "bad"
    data["targets"]["ic5332"]["miri_background"]["borrow_from"] = "nowhere"
    data["program"]["bands"].append("F999W")
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, data))
    # shape errors come first (pydantic), then the cross checks once the shape is right
    paths = [p for p, _ in info.value.problems]
    assert "pins.crds_context" in paths and "program.bands[4]" in paths


def test_not_toml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[release\nproject = 1")
    assert main(["check", str(bad)]) == 2
    assert main(["check", str(tmp_path / "absent.toml")]) == 2
    err = capsys.readouterr().err
    assert "is not valid TOML" in err and "file not found" in err


def test_patch_inherits_and_checks_targets(tmp_path):
    write(tmp_path, BASE, "parent.toml")
    patch = {
        "release": {"version": "1.1.1", "kind": "patch", "changes": ["fix"]},
        "patch": {"parent": "parent.toml", "targets": ["ngc0628"], "instruments": ["nircam"]},
        "targets": {"ngc0628": {"notes": ["astrometry re-solved"]}},
    }
    m = load_manifest(write(tmp_path, patch, "patch.toml")).manifest
    assert m.release.previous == "1.1.0" and m.release.project == "test-jwst"
    assert m.targets["ngc0628"].ra == BASE["targets"]["ngc0628"]["ra"]
    assert m.targets["ngc0628"].notes == ["astrometry re-solved"]

    bad = copy.deepcopy(patch)
    bad["patch"]["targets"] = ["ngc9999"]
    with pytest.raises(ManifestError, match=r"patch.targets\[0\]: 'ngc9999' is not a target of the parent"):
        load_manifest(write(tmp_path, bad, "bad1.toml"))
    bad = copy.deepcopy(patch)
    bad["targets"] = {"ngc9999": {"ra": 1.0, "dec": 1.0}}
    with pytest.raises(ManifestError, match=r"targets.ngc9999: 'ngc9999' is not a target of the parent"):
        load_manifest(write(tmp_path, bad, "bad2.toml"))
    bad = copy.deepcopy(patch)
    bad["patch"]["parent"] = "missing.toml"
    with pytest.raises(ManifestError, match=r"patch.parent: parent manifest .*missing.toml does not exist"):
        load_manifest(write(tmp_path, bad, "bad3.toml"))
    selfref = copy.deepcopy(patch)
    selfref["patch"]["parent"] = "self.toml"
    with pytest.raises(ManifestError, match="patch cycle"):
        load_manifest(write(tmp_path, selfref, "self.toml"))


def test_values_reach_the_stage_as_validated(tmp_path):
    """An integer given for a float parameter is the float the stage gets, in the manifest,
    its content hash (so 1 and 1.0 are one manifest) and the parameters resolved for jwst."""
    from processing.parameters import resolve_parameters

    data = copy.deepcopy(BASE)
    data["parameters"]["band"] = {"F200W": {"lv3": {"tweakreg": {"tolerance": 1, "skip": False, "brightest": 50}}}}
    a = load_manifest(write(tmp_path, data, "int.toml")).manifest
    data["parameters"]["band"]["F200W"]["lv3"]["tweakreg"]["tolerance"] = 1.0
    b = load_manifest(write(tmp_path, data, "float.toml")).manifest
    assert a.content_hash() == b.content_hash()
    tw = resolve_parameters(a, "ngc0628", "F200W").stage("lv3")["tweakreg"]
    assert tw["tolerance"] == 1.0 and type(tw["tolerance"]) is float
    assert tw["skip"] is False and type(tw["brightest"]) is int


def test_jwst_receives_the_validated_values(tmp_path):
    """The resolved values configure the real jwst pipeline object as validated (no string
    'false' read as true)."""
    from jwst.pipeline import Image3Pipeline

    from processing.jwst_stages import _configure
    from processing.parameters import resolve_parameters

    data = copy.deepcopy(BASE)
    data["parameters"]["band"] = {"F200W": {"lv3": {"tweakreg": {"skip": False, "tolerance": 2}}}}
    m = load_manifest(write(tmp_path, data)).manifest
    pipe = Image3Pipeline()
    _configure(pipe, resolve_parameters(m, "ngc0628", "F200W").stage("lv3"))
    assert pipe.tweakreg.skip is False
    assert pipe.tweakreg.tolerance == 2.0 and isinstance(pipe.tweakreg.tolerance, float)


def test_patch_resolves_parent_paths_from_the_parents_folder(tmp_path):
    parent_dir, patch_dir = tmp_path / "dr1.1.0", tmp_path / "patches" / "dr1.1.1"
    parent_dir.mkdir()
    patch_dir.mkdir(parents=True)
    data = copy.deepcopy(BASE)
    data["pins"]["crds_path"] = "crds-cache"
    data["program"]["data"] = {"source": "local", "path": "raw"}
    data["targets"]["ngc0628"]["astrometry_catalog"] = "catalogs/ngc0628.ecsv"
    data["targets"]["ngc0628"]["anchoring"] = {
        "nircam": [{"survey": "irac1", "file": "ext/irac1.fits", "fwhm_arcsec": 1.7}]
    }
    data["products"] = {"psf_path": "psfs", "psfs": {"F200W": "psfs/F200W_stpsf.fits"}}
    data["comparisons"] = {"mast_mosaics": "mast", "previous_release": "../releases/v1p0"}
    write(parent_dir, data, "parent.toml")
    patch = {
        "release": {"version": "1.1.1", "kind": "patch"},
        "patch": {"parent": "../../dr1.1.0/parent.toml", "targets": ["ngc0628"]},
    }
    lm = load_manifest(write(patch_dir, patch, "patch.toml"))
    m = lm.manifest
    assert lm.resolve_path(m.program.data.path) == (parent_dir / "raw").resolve()
    assert lm.resolve_path(m.pins.crds_path) == (parent_dir / "crds-cache").resolve()
    assert (
        lm.resolve_path(m.targets["ngc0628"].astrometry_catalog) == (parent_dir / "catalogs" / "ngc0628.ecsv").resolve()
    )
    assert (
        lm.resolve_path(m.targets["ngc0628"].anchoring.nircam[0].file) == (parent_dir / "ext" / "irac1.fits").resolve()
    )
    # every path setting, the PSFs and comparisons too (these were missed once: a field list,
    # test_every_setting_naming_a_file_is_a_path_setting, now keeps them from being missed)
    assert lm.resolve_path(m.products.psf_path) == (parent_dir / "psfs").resolve()
    assert lm.resolve_path(m.products.psfs["F200W"]) == (parent_dir / "psfs" / "F200W_stpsf.fits").resolve()
    assert lm.resolve_path(m.comparisons.mast_mosaics) == (parent_dir / "mast").resolve()
    assert lm.resolve_path(m.comparisons.previous_release) == (tmp_path / "releases" / "v1p0").resolve()
    # a path the patch sets itself is the patch's own
    patch["program"] = {"data": {"source": "local", "path": "newraw"}}
    lm = load_manifest(write(patch_dir, patch, "patch2.toml"))
    assert lm.resolve_path(lm.manifest.program.data.path) == (patch_dir / "newraw").resolve()


def _string_settings(model, where: str = "") -> set[str]:
    """Dotted names of every setting whose value can be a string (``*``: a table's keys or a
    list's items), wherever it is in the manifest models."""
    from release.manifest import _inner_types

    out: set[str] = set()

    def walk(annotation, w: str) -> None:
        if annotation is str:
            out.add(w)
        for kind, inner, _meta in _inner_types(annotation):
            if kind == "model":
                for name, f in inner.model_fields.items():
                    walk(f.annotation, f"{w}.{name}" if w else name)
            elif kind in ("dict", "list"):
                walk(inner, f"{w}.*")
            else:
                walk(inner, w)

    walk(model, where)
    return out


def test_every_setting_naming_a_file_is_a_path_setting():
    """Each string setting is either a file or folder (ManifestPath: resolved against the
    manifest's folder, rebased when a patch in another folder inherits it) or listed here as
    not one: a new string setting fails this test until it is classified."""
    from release.manifest import Manifest, path_fields

    paths = set(path_fields())
    assert paths == {
        "comparisons.mast_mosaics",
        "comparisons.previous_release",
        "patch.parent",
        "pins.crds_path",
        "products.psf_path",
        "products.psfs.*",
        "program.data.path",
        "targets.*.anchoring.miri.*.file",
        "targets.*.anchoring.nircam.*.file",
        "targets.*.astrometry_catalog",
    }
    not_paths = {s for s in _string_settings(Manifest) if s not in paths}
    assert not_paths == NOT_PATH_SETTINGS, sorted(not_paths ^ NOT_PATH_SETTINGS)


#: the string settings that do not name a file or folder
NOT_PATH_SETTINGS = {
    "patch.bands.*",
    "patch.targets.*",
    "pins.crds_context",
    "pins.crds_server_url",
    "pins.jwst",
    "program.bands.*",
    "release.changes.*",
    "release.contact.email",
    "release.contact.name",
    "release.doi",
    "release.known_issues.*",
    "release.lead",
    "release.license",
    "release.license_url",
    "release.pi",
    "release.previous",
    "release.project",
    "release.references.*",
    "release.summary",
    "release.title",
    "release.version",
    "targets.*.anchoring.miri.*.bands.*",
    "targets.*.anchoring.miri.*.survey",
    "targets.*.anchoring.nircam.*.bands.*",
    "targets.*.anchoring.nircam.*.survey",
    "targets.*.bands.*",
    "targets.*.designation",
    "targets.*.miri_background.borrow_from",
    "targets.*.miri_background.observations.*",
    "targets.*.notes.*",
    "targets.*.observations.include.*",
    "targets.*.observations.skip.*",
}
