"""The changelog against the previous release (release/changelog.py): manifest differences by
key, products unchanged / changed by recipe, and a second release of the test program that
changes one band's parameter, packaged with its CHANGES file and README section."""

from __future__ import annotations

import tomllib

from release import changelog as L
from release.manifest import Manifest, load_manifest
from release.plan_diff import PlanDiff
from tests.conftest import hlsp, linked_copy


def test_the_changelog_lists_a_changed_crds_context_and_a_changed_target_parameter(engine_run):
    old = load_manifest(engine_run["manifest"]).manifest
    data = tomllib.loads(engine_run["manifest"].read_text())
    data["release"]["version"] = "1.1.0"
    data["release"]["changes"] = ["New CRDS context; finer anchoring bins for synth2 F770W."]
    data["pins"]["crds_context"] = "jwst_9002.pmap"
    data["targets"]["synth2"]["parameters"] = {"band": {"F770W": {"anchoring": {"n_bins": 20}}}}
    new = Manifest.model_validate(data)
    changes = L.manifest_changes(old, new)
    assert [(c.kind, c.key, c.old, c.new) for c in changes] == [
        ("changed", "pins.crds_context", "jwst_9001.pmap", "jwst_9002.pmap"),
        ("added", "targets.synth2.parameters.band.F770W.anchoring.n_bins", None, 20),
    ]
    text = L.render(new, old, changes, None)
    assert "changed: pins.crds_context: 'jwst_9001.pmap' -> 'jwst_9002.pmap'" in text
    assert "added: targets.synth2.parameters.band.F770W.anchoring.n_bins: (unset) -> 20" in text
    assert "synth-jwst 1.1.0: changes from 1.0.0" in text and "finer anchoring bins" in text


def test_a_second_release_says_what_changed_and_validates_against_the_first(second_release, tmp_path):
    # the first release's cache (a linked copy), another work folder: only synth2 F770W's PSF matching ran
    assert "psf_matching" in second_release["run_stdout"]
    rel = second_release["release"]
    changes = next(rel.glob("*_all_multi_v1p1_changes.txt")).read_text()
    assert "added: targets.synth2.parameters.band.F770W.psf_matching.min_coverage: (unset) -> 0.9" in changes
    # only synth2 F770W's PSF-matched mosaics and the synth2 PSF-matching table were remade
    changed = sorted(
        line.split(": ", 1)[1].split(" (")[0]
        for line in changes.splitlines()
        if line.strip().startswith("changed:") and "targets." not in line
    )
    assert changed == [
        "synth2 F770W img-gauss0p85as.fits",
        "synth2 F770W img-gauss0p90as.fits",
        "synth2 F770W img-gauss1p00as.fits",
        "synth2 MULTI psf-matching.ecsv",
    ], changes
    assert " 0 new, 0 gone" in changes
    readme = next(rel.glob("*_readme.txt")).read_text()
    assert "Against version 1.0.0" in readme and "psf_matching.min_coverage" in readme
    # the mosaics themselves did not move
    hlsp("validate", str(rel), "--against", str(second_release["previous"]), check_code=0)
    # `hlsp plan --against` said so before anything ran: the same tasks, the same files
    proc = hlsp("plan", str(second_release["manifest"]), "--against-previous", "--format", "json", check_code=0)
    plan = PlanDiff.model_validate_json(proc.stdout)
    assert [(t.task, t.status) for t in plan.tasks] == [("psf_matching/synth2/F770W", "changed")]
    assert plan.tasks[0].reasons == ["parameters: psf_matching.min_coverage 0.5 -> 0.9"]
    predicted = sorted(
        f"{f.target} {f.band or 'MULTI'} {f.file.rsplit('_', 1)[1]}" for f in plan.files if f.status == "changed"
    )
    assert predicted == changed
    assert [c.key for c in plan.manifest_changes] == ["targets.synth2.parameters.band.F770W.psf_matching.min_coverage"]


def test_a_patch_release_remakes_its_target_and_carries_the_rest_byte_for_byte(engine_run, demo_release, tmp_path):
    import shutil

    from processing.fileio import file_sha256

    patch = tmp_path / "patch.toml"
    patch.write_text(f"""
schema_version = 1
[release]
version = "1.0.1"
kind = "patch"
changes = ["synth2 MIRI: PSF-matched pixels need 80% of the kernel on data."]
[patch]
parent = "{engine_run["manifest"]}"
targets = ["synth2"]
instruments = ["miri"]
[targets.synth2.parameters.instrument.miri.psf_matching]
min_coverage = 0.8
""")
    work = ["--workdir", str(tmp_path / "work"), "--cache", str(linked_copy(engine_run["cache"], tmp_path / "cache"))]
    hlsp("run", str(patch), *work, check_code=0)
    # a parent file changed after publication, or replaced by a link (to the very same bytes):
    # refused (exit 1) naming it, nothing published
    for damage in ("changed", "linked"):
        bad = linked_copy(demo_release.parent.parent, tmp_path / f"parent-{damage}")
        victim = next((bad / "synth-jwst" / "v1p0").rglob("*miri_synth1_f770w_*_img.fits"))
        data = bytearray(victim.read_bytes())
        victim.unlink()  # a hard link: the shared release stays whole
        if damage == "changed":
            data[len(data) // 2] ^= 1
            victim.write_bytes(bytes(data))
        else:
            (tmp_path / "elsewhere.fits").write_bytes(bytes(data))
            victim.symlink_to(tmp_path / "elsewhere.fits")
        proc = hlsp("package", str(patch), *work, "--releases", str(bad), check_code=1)
        text = " ".join(proc.stderr.split())
        assert (
            victim.name in text and ("is not the file it published" if damage == "changed" else "symbolic link") in text
        )
        assert "Traceback" not in text and not (bad / "synth-jwst" / "v1p0p1").exists()
    # the parent is published there (a linked copy of its releases folder): a patch is packaged beside it
    releases = linked_copy(demo_release.parent.parent, tmp_path / "releases")
    demo_release = releases / demo_release.relative_to(demo_release.parent.parent)
    hlsp("package", str(patch), *work, "--releases", str(releases), check_code=0)
    rel = demo_release.parent / "v1p0p1"
    try:
        names = {p.relative_to(rel).as_posix() for p in rel.rglob("*") if p.is_file()}
        parent = {p.relative_to(demo_release).as_posix() for p in demo_release.rglob("*") if p.is_file()}
        # synth1 and synth2's NIRCam: the parent's files, same names, same bytes
        carried = sorted(n for n in names if "_v1p0_" in n)
        assert carried and all(file_sha256(rel / n) == file_sha256(demo_release / n) for n in carried)
        # carried as hard links to the parent's files (one file system): no second copy
        assert all((rel / n).stat().st_ino == (demo_release / n).stat().st_ino for n in carried)
        assert {n for n in parent if n.startswith("synth1/") or ("nircam_synth2" in n and "_multi_" not in n)} <= set(
            carried
        )
        # synth2's MIRI: made again, with the new version; the per-target tables hold every band
        assert "synth2/hlsp_synth-jwst_jwst_miri_synth2_f770w_v1p0p1_img-gauss0p85as.fits" in names
        assert not any("miri_synth2" in n and "_v1p0_" in n for n in names)
        from astropy.table import Table

        t = Table.read(rel / "synth2/hlsp_synth-jwst_jwst_miri-nircam_synth2_multi_v1p0p1_psf-matching.ecsv")
        assert set(t["band"]) == {"F200W", "F770W"}
        changes = next(rel.glob("*_changes.txt")).read_text()
        assert "changed: synth2 F770W img-gauss0p85as.fits" in changes and "changed: synth1" not in changes
        proc = hlsp("validate", str(rel), "--against", str(demo_release), check_code=0)
        assert "valid" in proc.stdout
        # a patch says what changed: without its changes file it fails, naming that
        bare = linked_copy(rel, tmp_path / "bare" / rel.name)
        changes_file = next(bare.glob("*_changes.txt"))
        changes_file.unlink()
        csv_file = next(bare.glob("*_manifest.csv"))
        rows = [r for r in csv_file.read_text().splitlines(keepends=True) if changes_file.name not in r]
        csv_file.unlink()
        csv_file.write_text("".join(rows))
        proc = hlsp("validate", str(bare), "--no-fitsverify", "--no-strict", check_code=1)
        assert "the release's changes file (.txt) is missing" in " ".join(proc.stdout.split())
        # a carried file that is not the parent's fails, naming it
        victim = rel / next(n for n in carried if n.startswith("synth1/") and n.endswith("_img-preview.png"))
        data = bytearray(victim.read_bytes())
        data[-1] ^= 1
        victim.unlink()  # replaced, not edited: the carried file is a hard link to the parent's
        victim.write_bytes(bytes(data))
        proc = hlsp(
            "validate",
            str(rel),
            "--against",
            str(demo_release),
            "--no-fitsverify",
            "--junit",
            str(tmp_path / "j.xml"),
            check_code=1,
        )
        junit = (tmp_path / "j.xml").read_text()
        assert any(
            victim.name in line and "differs from v1p0's file of that name" in line for line in junit.split("<testcase")
        )
    finally:
        shutil.rmtree(rel, ignore_errors=True)
