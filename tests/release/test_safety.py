"""Safe files and exact releases: what a release holds is exactly one manifest's products,
world-readable; no command writes or deletes through a symbolic link; concurrent commands are
serialised; read-only folders, a killed packaging and a missing fitsverify are handled with a
message, never a traceback; `hlsp plan` writes nothing; the console stays readable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processing.errors import BadInput
from processing.fileio import folder_lock, remove_scratch
from tests.conftest import REPO, hlsp, linked_copy


def _tree(root: Path) -> dict[str, int]:
    return {str(p): p.lstat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


# -- fast: the file helpers on their own ------------------------------------------------------


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_scratch_removal_never_follows_a_link(tmp_path, where):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.fits").write_bytes(b"keep me")
    scratch = tmp_path / "scratch"
    if where == "inside":
        scratch.mkdir()
        (scratch / "own.tmp").write_text("x")
        (scratch / "to-folder").symlink_to(precious)
        (scratch / "to-file").symlink_to(precious / "data.fits")
    else:
        scratch.symlink_to(precious)
    remove_scratch(scratch)
    assert not scratch.exists() and not scratch.is_symlink()
    assert (precious / "data.fits").read_bytes() == b"keep me"


def test_a_second_holder_of_a_folder_lock_is_refused(tmp_path):
    from processing.errors import BadInput

    with folder_lock(tmp_path, "the work folder", "run"):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from processing.fileio import folder_lock\n"
                "from processing.errors import BadInput\n"
                "try:\n    with folder_lock(Path(sys.argv[1]), 'the work folder', 'run'): pass\n"
                "except BadInput as e:\n    print(e); sys.exit(2)",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert proc.returncode == 2 and "is in use by another hlsp command (hlsp run, pid" in proc.stdout
    with folder_lock(tmp_path, "the work folder", "run"):  # released when the holder is done
        pass
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "w2").mkdir()
    (tmp_path / "w2" / ".hlsp.lock").symlink_to(tmp_path / "elsewhere" / "victim")
    with pytest.raises(BadInput, match="is a symbolic link"):
        with folder_lock(tmp_path / "w2", "the work folder", "run"):
            pass
    assert not (tmp_path / "elsewhere" / "victim").exists()


def test_an_output_folder_keeps_what_the_command_did_not_write(tmp_path):
    """hlsp report / compare --outdir / validate --figures write through owned_output: a folder
    holding the user's files (even under names the command uses) or a link is refused before
    anything is written; the command's own earlier output is replaced whole, and only when
    its marker proves it; a failure leaves the earlier output as it was."""
    from processing.fileio import OUTPUT_MARKER, owned_output

    user = tmp_path / "user"
    (user / "img").mkdir(parents=True)
    (user / "img" / "holiday.jpg").write_bytes(b"jpeg")
    (user / "previous").mkdir()
    (user / "previous" / "notes.txt").write_text("notes")
    (user / "index.html").write_text("my page")
    with pytest.raises(BadInput, match="holds files this command did not write"):
        with owned_output(user, "report") as out:
            (out / "index.html").write_text("report")
    assert (user / "img" / "holiday.jpg").read_bytes() == b"jpeg" and (user / "index.html").read_text() == "my page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"]  # no staging left
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "img").symlink_to(user / "img")
    with pytest.raises(BadInput, match=r"img \(a link\)"):
        with owned_output(linked, "report"):
            pass
    with pytest.raises(BadInput, match="is a symbolic link"):
        with owned_output(linked / "img" / "new", "report"):
            pass
    assert (user / "img" / "holiday.jpg").exists()
    # our own output: replaced whole, the marker listing what was written
    ours = tmp_path / "report"
    for n in (1, 2):
        with owned_output(ours, "report") as out:
            (out / "index.html").write_text(f"report {n}")
            if n == 1:
                (out / "img").mkdir()
                (out / "img" / "old.png").write_bytes(b"png")
    assert (ours / "index.html").read_text() == "report 2" and not (ours / "img").exists()
    assert (ours / OUTPUT_MARKER).is_file()
    # ... but not when the user put something in it, nor by another command
    (ours / "mine.txt").write_text("mine")
    with pytest.raises(BadInput, match=r"holds what it did not write \(mine.txt\)"):
        with owned_output(ours, "report"):
            pass
    (ours / "mine.txt").unlink()
    with pytest.raises(BadInput, match="did not write"):
        with owned_output(ours, "compare"):
            pass
    # a failure keeps the earlier output
    with pytest.raises(RuntimeError):
        with owned_output(ours, "report") as out:
            (out / "index.html").write_text("half")
            raise RuntimeError("died")
    assert (ours / "index.html").read_text() == "report 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked", "report", "user"]


# -- the engine and packaging on the real run ---------------------------------------------------


def test_run_never_empties_a_link_in_the_cache_scratch(engine_run, tmp_path):
    """A link planted in the cache's tmp folder, named like a dead process's scratch, is
    removed as a link: its target keeps its files."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "result.fits").write_bytes(b"a week of work")
    cache = linked_copy(engine_run["cache"], tmp_path / "cache")
    from processing.cache import _host

    planted = cache / "tmp" / f"{'0' * 64}.{_host()}.99999999"  # this host, no such process: stale scratch
    planted.symlink_to(precious)
    hlsp("run", str(engine_run["manifest"]), "--workdir", str(tmp_path / "work"), "--cache", str(cache), check_code=0)
    assert (precious / "result.fits").read_bytes() == b"a week of work"
    assert not planted.is_symlink()


def test_a_log_folder_linked_out_of_the_work_folder_is_refused(engine_run, tmp_path):
    """`hlsp run` writes its log in WORKDIR/logs: a link there to another place is refused
    (exit 2, named), never written through."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "logs").symlink_to(elsewhere)
    cache = linked_copy(engine_run["cache"], tmp_path / "cache")
    proc = hlsp("run", str(engine_run["manifest"]), "--workdir", str(work), "--cache", str(cache), check_code=2)
    assert "is a symbolic link out of" in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert list(elsewhere.iterdir()) == []


def test_concurrent_run_and_package_are_refused_cleanly(engine_run, tmp_path):
    work = linked_copy(engine_run["workdir"], tmp_path / "work")
    with folder_lock(work, "the work folder", "run"):
        proc = hlsp("run", str(engine_run["manifest"]), "--workdir", str(work), check_code=2)
    assert f"the work folder {work} is in use by another hlsp command" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    releases = tmp_path / "rel"
    with folder_lock(releases / "synth-jwst", "the release folder", "package"):
        proc = hlsp(
            "package", str(engine_run["manifest"]), "--workdir", str(work), "--releases", str(releases), check_code=2
        )
    assert "is in use by another hlsp command" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (releases / "synth-jwst").iterdir()) == [".hlsp.lock"]  # no staging, no release


def test_package_ships_only_the_products_of_its_manifest(engine_run, changed_run, tmp_path):
    """Manifest B run in the same work folder (other parameters for synth2) does not make
    `hlsp package A` ship B's mosaics; without A's own products it refuses, naming them."""
    from release.manifest import load_manifest

    lm_a = load_manifest(engine_run["manifest"])
    # B's run (changed_run: A's cache, B's work folder), copied: this test removes entries
    cache = linked_copy(changed_run["cache"], tmp_path / "cache")
    work = linked_copy(changed_run["workdir"], tmp_path / "work")
    b_product = work / "products" / "synth2" / "f770w" / "synth2_f770w_i2d.fits"
    a_product = engine_run["workdir"] / "products" / "synth2" / "f770w" / "synth2_f770w_i2d.fits"
    assert fits.getval(b_product, "HLSPTASK") != fits.getval(a_product, "HLSPTASK")

    hlsp(
        "package",
        str(engine_run["manifest"]),
        "--workdir",
        str(work),
        "--cache",
        str(cache),
        "--releases",
        str(tmp_path / "rel"),
        check_code=0,
    )
    img = next((tmp_path / "rel").rglob("*_miri_synth2_f770w_v1p0_img.fits"))
    with fits.open(img) as hdul, fits.open(a_product) as a:
        assert hdul[0].header["HLSPTASK"] == a[0].header["HLSPTASK"]
        assert hdul[0].header["HLSPMANI"] == lm_a.manifest.content_hash()
        assert np.array_equal(hdul["SCI"].data, a["SCI"].data, equal_nan=True)

    # A's synth2 mosaics gone from the cache (B's stay): refused, naming them, nothing published
    for band in ("f200w", "f770w"):
        key = fits.getval(engine_run["workdir"] / "products" / "synth2" / band / f"synth2_{band}_i2d.fits", "HLSPTASK")
        entry = cache / "objects" / key[:2] / key
        for f in entry.iterdir():
            f.unlink()
        entry.rmdir()
    proc = hlsp(
        "package",
        str(engine_run["manifest"]),
        "--workdir",
        str(work),
        "--cache",
        str(cache),
        "--releases",
        str(tmp_path / "rel2"),
        check_code=2,
    )
    text = " ".join(proc.stderr.split())
    assert "are not in the cache" in text and "synth2/F200W" in text and "synth2/F770W" in text, text
    assert not (tmp_path / "rel2" / "synth-jwst" / "v1p0").exists()


def test_release_is_world_readable_and_stale_staging_is_cleaned(engine_run, tmp_path):
    releases = tmp_path / "rel"
    stale = releases / "synth-jwst" / ".staging-v1p0-99999999"
    stale.mkdir(parents=True)
    (stale / "half.fits").write_bytes(b"\0" * 4096)
    old = os.umask(0o077)  # even a strict umask gives a readable release (the command inherits it)
    try:
        hlsp(
            "package",
            str(engine_run["manifest"]),
            "--workdir",
            str(linked_copy(engine_run["workdir"], tmp_path / "work")),
            "--releases",
            str(releases),
            check_code=0,
        )
    finally:
        os.umask(old)
    assert not stale.exists()
    rel = releases / "synth-jwst" / "v1p0"
    for p in [rel, *rel.rglob("*")]:
        mode = p.stat().st_mode
        assert mode & (0o005 if p.is_dir() else 0o004) == (0o005 if p.is_dir() else 0o004), (p, oct(mode))
    # the work folder's products are readable by the group and others too (umask 022 files)
    prod = next((engine_run["workdir"] / "products").rglob("*_i2d.fits"))
    assert prod.stat().st_mode & 0o044 == 0o044


def _read_only(folder: Path) -> list[str] | None:
    """A command prefix that runs with ``folder`` read-only, or None where that cannot be made."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}'"], capture_output=True
    )
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}' && exec \"$@\"", "sh"]


def test_read_only_work_folder_or_cache_is_bad_input(engine_run, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    prefix = _read_only(work)
    if prefix is None:
        pytest.skip("no way to make a read-only folder here (not root with mount namespaces, and root ignores modes)")
    proc = hlsp("run", str(engine_run["manifest"]), "--workdir", str(work), check_code=2, prefix=prefix)
    assert str(work) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    cache = tmp_path / "cache"
    cache.mkdir()
    prefix = _read_only(cache)
    proc = hlsp(
        "run",
        str(engine_run["manifest"]),
        "--workdir",
        str(tmp_path / "w2"),
        "--cache",
        str(cache),
        check_code=2,
        prefix=prefix,
    )
    assert f"the task cache {cache}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_plan_writes_nothing(engine_run, tmp_path):
    fresh = tmp_path / "fresh-work"
    proc = hlsp("plan", str(engine_run["manifest"]), "--workdir", str(fresh), check_code=0)
    assert not fresh.exists(), "plan created the work folder"
    assert "will run" in proc.stdout
    work = linked_copy(engine_run["workdir"], tmp_path / "work")  # a finished run's folder
    before = _tree(work)
    hlsp("plan", str(engine_run["manifest"]), "--workdir", str(work), check_code=0)
    assert _tree(work) == before


def test_console_is_readable(engine_run, demo_release, tmp_path):
    """Library warnings go to the run's log file, not the console; paths are not broken."""
    noise = ("UserWarning", "VerifyWarning", "Card is too long", "warnings.warn", "DeprecationWarning")
    for text in (engine_run["stdout"], engine_run["stderr"]):
        assert not any(n in text for n in noise), text[:3000]
    logs = list((engine_run["workdir"] / "logs").glob("run-*.log"))
    assert logs
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # as in a pipe or CI log: no terminal width
    work = linked_copy(engine_run["workdir"], tmp_path / "work")
    proc = hlsp(
        "package",
        str(engine_run["manifest"]),
        "--workdir",
        str(work),
        "--releases",
        str(tmp_path / "rel"),
        check_code=0,
        env=env,
    )
    assert not any(n in proc.stdout + proc.stderr for n in noise), proc.stdout + proc.stderr
    dest = tmp_path / "rel" / "synth-jwst" / "v1p0"
    assert any(line.endswith(str(dest)) for line in proc.stdout.splitlines()), proc.stdout
    proc = hlsp("plan", str(engine_run["manifest"]), "--workdir", str(work), check_code=0, env=env)
    for name in (
        "hlsp_synth-jwst_jwst_miri_synth2_f770w_v1p0_img.fits",
        "hlsp_synth-jwst_jwst_nircam_synth1_f200w_v1p0_img.fits",
    ):
        assert name in proc.stdout, proc.stdout


def test_missing_fitsverify_is_reported_not_run_and_fails_strict(demo_release, tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "COLUMNS")}
    env["PATH"] = venv_bin  # no /usr/bin: fitsverify cannot be found
    proc = hlsp("validate", str(demo_release), "--junit", str(tmp_path / "j.xml"), env=env, check_code=0)
    out = " ".join(proc.stdout.split())
    assert "not run: fitsverify on 16 file(s): fitsverify is not installed" in out, out  # 4 mosaics, 12 PSF-matched
    assert "<skipped" in (tmp_path / "j.xml").read_text()
    # exit 4: only checks that could not run failed (the runner lacks a tool; the release is fine)
    proc = hlsp("validate", str(demo_release), env={**env, "CI": "true", "COLUMNS": "400"}, check_code=4)
    assert "--strict (the default under CI) requires every check" in " ".join(proc.stdout.split())
    hlsp("validate", str(demo_release), "--strict", env=env, check_code=4)
