"""`hlsp fetch`: the exposures a manifest's run needs, found in MAST with astroquery.mast and
downloaded resumably and verified (processing/archive/). Never leaves the machine: a loopback
server speaks MAST's API (tests/processing/archive_server.py) with astroquery's own recorded
answers and rows shaped like program 2107's; fast."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processing.archive import download, mast
from processing.fileio import file_sha256
from release.manifest import load_manifest
from tests.conftest import REPO, hlsp
from tests.processing.archive_server import MastServer, astroquery_data, jwst_program

PHANGS = REPO / "manifests" / "phangs-jwst"
NIRCAM = ["F200W", "F300M", "F335M", "F360M"]
MIRI = ["F770W", "F1000W", "F1130W", "F2100W"]
PROGRAM_2107 = {
    "NGC3627": {"nircam": NIRCAM, "miri": MIRI, "miri_off": MIRI},
    "IC5332": {"nircam": NIRCAM, "miri": MIRI, "miri_off": ["F770W"]},  # observed months later: not used
    "NGC7496": {"nircam": NIRCAM, "miri": MIRI, "miri_off": MIRI},
    "NGC0628": {"nircam": NIRCAM, "miri": MIRI, "miri_off": MIRI},
}


def _closed_port() -> int:
    """A loopback port nothing listens on (a server that cannot be reached)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fits_bytes(value: float, checksum: bool = True, n: int = 64) -> bytes:
    buf = io.BytesIO()
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.full((n, n), value, np.float32), name="SCI")])
    hdul.writeto(buf, checksum=checksum)
    return buf.getvalue()


def test_the_patch_fetches_what_it_regenerates_and_nothing_else():
    """DR1.1.1 regenerates NGC 3627's NIRCam: exactly its NIRCam science exposures, at the
    level asked, from the observations MAST lists for the program (queried by proposal,
    instrument and filters), the level-3 products and the other levels left out."""
    lm = load_manifest(PHANGS / "dr1.1.1.toml")
    obs, prods = jwst_program(PROGRAM_2107)
    with MastServer(obs, prods) as srv:
        files, lacking = mast.find(lm, mast.Mast(srv.url), "uncal")
        rate, _ = mast.find(lm, mast.Mast(srv.url), "rate")
    assert not lacking
    assert {(f.target, f.band, f.role) for f in files} == {("ngc3627", b, "science") for b in NIRCAM}
    assert len(files) == 8 and all(f.filename.endswith("_uncal.fits") and "_021" in f.filename for f in files)
    assert all(f.uri == f"mast:JWST/product/{f.filename}" and f.size == 100_000_000 for f in files)
    assert sorted(f.filename.replace("_rate", "_uncal") for f in rate) == sorted(f.filename for f in files)
    query = next(r for r in srv.invocations if r["service"] == "Mast.Caom.Filtered")
    sent = {f["paramName"]: f["values"] for f in query["params"]["filters"]}
    assert sent["obs_collection"] == ["JWST"] and sent["proposal_id"] == ["2107"]
    assert sent["instrument_name"] == ["NIRCAM/IMAGE"] and sorted(sent["filters"]) == NIRCAM


def test_a_borrowed_background_fetches_the_lenders_off_fields_and_reports_what_mast_lacks():
    """IC 5332 uses NGC 7496's MIRI off-fields (paper section 3.2): those are fetched for it
    (its own, listed in MAST, are not: the run does not read them); NGC 7496's science and
    off-fields for itself. A target MAST has nothing for is reported, per band and role."""
    lm = load_manifest(PHANGS / "dr1.1.0.toml")
    obs, prods = jwst_program(PROGRAM_2107)
    with MastServer(obs, prods) as srv:
        files, lacking = mast.find(lm, mast.Mast(srv.url), "uncal", targets=["ic5332", "ngc7496", "ngc1087"])
    ic = [f for f in files if "ic5332" in f.used_by and f.role == "off-field"]
    assert {(f.target, f.band) for f in ic} == {("ngc7496", b) for b in MIRI} and len(ic) == 8
    assert not [f for f in files if f.target == "ic5332" and f.role == "off-field"]
    assert all(set(f.used_by) == {"ic5332", "ngc7496"} for f in ic)
    science = {(f.target, f.band) for f in files if f.role == "science"}
    assert science == {(t, b) for t in ("ic5332", "ngc7496") for b in NIRCAM + MIRI}
    assert {(n.target, n.band, n.role) for n in lacking} == {
        ("ngc1087", b, role) for b in NIRCAM + MIRI for role in ("science",)
    } | {("ngc1087", b, "off-field") for b in MIRI}


def test_selection_on_astroquery_recorded_answers_keeps_no_foreign_product():
    """MAST's answers as astroquery recorded them (HST observations and products), through the
    same client code (astroquery parses them into tables): nothing of them is a JWST exposure
    of the manifest's targets."""
    lm = load_manifest(PHANGS / "dr1.1.1.toml")
    recorded = {
        "Mast.Caom.Filtered": astroquery_data("advSearch.json"),
        "Mast.Caom.Products": astroquery_data("products.json"),
    }
    with MastServer(recorded=recorded) as srv:
        client = mast.Mast(srv.url)
        observations = client.query([2107], "nircam", NIRCAM)
        products = client.observations.get_product_list([str(o) for o in observations["obsid"]])
    assert len(observations) and len(products)
    assert mast.select(lm, observations, products, mast.needs(lm)) == []
    assert mast.exposure_role("jw02107041001_02101_00001_nrca1_uncal.fits") == "science"
    assert mast.exposure_role("jw02107041001_02201_00001_mirimage_uncal.fits") == "off-field"
    assert mast.exposure_role("u9o40504m_c3m.fits") is None


def test_dry_run_lists_the_files_per_target_and_band(tmp_path):
    obs, prods = jwst_program(PROGRAM_2107)
    with MastServer(obs, prods) as srv:
        proc = hlsp("fetch", str(PHANGS / "dr1.1.1.toml"), "--dry-run", "--server", srv.url, "--dest", str(tmp_path))
    text = " ".join(proc.stdout.split())
    assert "8 file(s) from MAST" in text and "dry run: 8 file(s), 800.0 MB" in text
    for band in NIRCAM:
        assert f"ngc3627 │ {band} │ 2 │ 0 │ 200.0 MB" in text
    assert not any(tmp_path.iterdir())  # nothing written


def test_without_network_fetch_fails_fast_naming_mast(tmp_path):
    """No MAST (a closed port here; the machine has no network either): exit 1 within 10 s,
    MAST named, nothing left behind."""
    port = _closed_port()
    t0 = time.time()
    proc = hlsp(
        "fetch",
        str(PHANGS / "dr1.1.1.toml"),
        "--server",
        f"http://127.0.0.1:{port}",
        "--dest",
        str(tmp_path / "d"),
        check_code=1,
    )
    assert time.time() - t0 < 10
    assert "cannot reach MAST at http://127.0.0.1" in " ".join(proc.stderr.split())
    assert not (tmp_path / "d").exists()


def _items(srv, names, tmp_path, sizes=None):
    return [
        download.Item(
            mast.Mast(srv.url).url(f"mast:JWST/product/{n}"),
            tmp_path / "dest" / "t" / n,
            (sizes or {}).get(n, len(srv.files[f"mast:JWST/product/{n}"])),
            f"mast:JWST/product/{n}",
        )
        for n in names
    ]


def test_downloads_resume_retry_verify_and_refuse(tmp_path):
    files = {f"mast:JWST/product/f{i}_uncal.fits": _fits_bytes(i, n=400) for i in range(5)}  # 0.64 MB each
    with MastServer(files=files) as srv:
        names = [f"f{i}_uncal.fits" for i in range(5)]
        items = _items(srv, names, tmp_path)
        # f0: cut mid-transfer, then resumed with a Range request; f1: two 500s, then served;
        # f2: a partial file left by a killed run; f3: a damaged copy already at its final name
        srv.faults.cut_after["mast:JWST/product/f0_uncal.fits"] = 300_000
        srv.faults.fail_first["mast:JWST/product/f1_uncal.fits"] = 2
        (tmp_path / "dest" / "t").mkdir(parents=True)
        whole = files["mast:JWST/product/f2_uncal.fits"]
        (tmp_path / "dest" / "t" / "f2_uncal.fits.part").write_bytes(whole[:7000])
        damaged = bytearray(files["mast:JWST/product/f3_uncal.fits"])
        damaged[-100] ^= 0xFF
        (tmp_path / "dest" / "t" / "f3_uncal.fits").write_bytes(bytes(damaged))
        results, errors = download.fetch_files(items, workers=3, backoff_s=0.05)
        assert errors == []
        by = {r.item.dest.name: r for r in results}
        for n in names:
            assert (tmp_path / "dest" / "t" / n).read_bytes() == files[f"mast:JWST/product/{n}"], n
            assert not (tmp_path / "dest" / "t" / (n + ".part")).exists()
        assert by["f0_uncal.fits"].status == "resumed" and by["f2_uncal.fits"].status == "resumed"
        assert by["f1_uncal.fits"].attempts == 3
        ranges = [h.get("Range") for m, p, h in srv.requests if "f2_uncal" in p]
        assert ranges == ["bytes=7000-"]
        # everything present and verified: a second run downloads nothing
        served = dict(srv.served)
        again, errors = download.fetch_files(items, workers=2)
        assert not errors and {r.status for r in again} == {"present"} and srv.served == served
        # a file changed after it was fetched (still valid FITS): the record's sha256 finds it
        f4 = tmp_path / "dest" / "t" / "f4_uncal.fits"
        f4.write_bytes(_fits_bytes(4.5, n=400))
        recorded = [download.Item(i.url, i.dest, None, i.uri, (), r.sha256) for i, r in zip(items, again)]
        fixed, errors = download.fetch_files(recorded[4:], backoff_s=0.05)
        assert not errors and fixed[0].status == "downloaded" and f4.read_bytes() == files[recorded[4].uri]
        # a download that does not verify (its CHECKSUM fails) is refused after one fresh try
        srv.files["mast:JWST/product/bad_uncal.fits"] = _fits_bytes(7)
        srv.faults.corrupt.add("mast:JWST/product/bad_uncal.fits")
        # a file MAST does not have: 404, named
        srv.files["mast:JWST/product/gone_uncal.fits"] = b"x" * 10
        gone = _items(srv, ["gone_uncal.fits"], tmp_path)
        del srv.files["mast:JWST/product/gone_uncal.fits"]
        results, errors = download.fetch_files(_items(srv, ["bad_uncal.fits"], tmp_path) + gone, backoff_s=0.05)
    assert results == [] and len(errors) == 2
    assert "bad_uncal.fits: refused, the download does not verify (HDU 1: DATASUM does not match the data)" in errors[0]
    assert "gone_uncal.fits: HTTP 404" in errors[1]
    assert srv.served["mast:JWST/product/bad_uncal.fits"] == 2
    for n in ("bad_uncal.fits", "gone_uncal.fits"):  # never at their final names, nothing partial kept
        assert not (tmp_path / "dest" / "t" / n).exists() and not (tmp_path / "dest" / "t" / (n + ".part")).exists()


def test_a_wrong_size_is_refused(tmp_path):
    files = {"mast:JWST/product/s_uncal.fits": _fits_bytes(1, checksum=False)}
    with MastServer(files=files) as srv:
        items = _items(srv, ["s_uncal.fits"], tmp_path, sizes={"s_uncal.fits": 123})
        results, errors = download.fetch_files(items, backoff_s=0.01)
    assert not results and "refused" in errors[0] and "MAST lists 123" in errors[0]


def test_fetch_downloads_records_and_never_writes_the_token(tmp_path, monkeypatch):
    """The whole command: files under <dest>/<target>/, the fetch record (URI, size, sha256,
    date per file), the token sent to MAST (login and downloads) and found in no log, record
    or output; a second run finds everything present."""
    token = "s3cr3t-t0ken-0123456789abcdef"
    obs, prods = jwst_program({"NGC3627": {"nircam": NIRCAM}})
    sizes = {}
    files = {}
    for p in prods:
        if p["productSubGroupDescription"] == "UNCAL":
            data = _fits_bytes(len(files))
            files[p["dataURI"]] = data
            p["size"] = len(data)
    monkeypatch.setenv("MAST_API_TOKEN", token)
    dest = tmp_path / "data"
    with MastServer(obs, prods, files, token=token) as srv:
        proc = hlsp("fetch", str(PHANGS / "dr1.1.1.toml"), "--server", srv.url, "--dest", str(dest), check_code=0)
        assert "8 downloaded, 0 resumed, 0 already present" in " ".join(proc.stdout.split())
        again = hlsp("fetch", str(PHANGS / "dr1.1.1.toml"), "--server", srv.url, "--dest", str(dest), check_code=0)
        assert "0 downloaded, 0 resumed, 8 already present" in " ".join(again.stdout.split())
        sent = [h for m, p, h in srv.requests if "Download/file" in p]
    assert sent and all(h.get("Authorization") == f"token {token}" for h in sent)
    record = json.loads((dest / "fetch-record.json").read_text())
    assert record["manifest"] == "dr1.1.1.toml" and record["program"] == [2107] and len(record["files"]) == 8
    for f in record["files"]:
        path = dest / f["file"]
        assert f["file"].startswith("ngc3627/") and f["uri"].endswith(path.name)
        assert f["size"] == path.stat().st_size and f["sha256"] == file_sha256(path) and f["fetched"]
        assert f["target"] == "ngc3627" and f["role"] == "science"
    written = [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(".fits")]
    assert any(p.suffix == ".log" for p in written)
    for p in written:
        assert token not in p.read_text(errors="replace"), p
    assert token not in proc.stdout + proc.stderr + again.stdout + again.stderr
    del sizes


@pytest.mark.parametrize("source", ["local", "mast-without-path", "mast-not-fetched"])
def test_fetch_and_run_say_what_to_do(tmp_path, source):
    manifest = tmp_path / "m.toml"
    text = (PHANGS / "dr1.1.0.toml").read_text()
    if source == "local":
        text = text.replace('[program.data]\nsource = "mast"', '[program.data]\nsource = "local"\npath = "data"')
        manifest.write_text(text)
        proc = hlsp("fetch", str(manifest), "--dry-run", check_code=2)
        assert "its exposures are local, there is nothing to fetch" in " ".join(proc.stderr.split())
    elif source == "mast-not-fetched":
        (tmp_path / "data").mkdir()
        block = '[program.data]\nsource = "mast"'
        manifest.write_text(text.replace(block, block + '\npath = "data"'))
        proc = hlsp("plan", str(manifest), "--workdir", str(tmp_path / "w"), check_code=2)
        text = " ".join(proc.stderr.split())
        assert "missing observations" in text and "targets.ngc0628: no science exposure in F200W" in text
        assert "`hlsp fetch m.toml` downloads what the run needs" in text
    else:
        manifest.write_text(text)
        proc = hlsp("fetch", str(manifest), "--dry-run", check_code=2)
        assert "give --dest, or set program.data.path" in " ".join(proc.stderr.split())
        proc = hlsp("run", str(manifest), "--workdir", str(tmp_path / "w"), check_code=2)
        assert "hlsp fetch m.toml --dest DIR" in " ".join(proc.stderr.split())


def test_a_fetched_program_runs_packages_and_validates_like_archive_data(engine_run, tmp_path):
    """The synthetic program's exposures served under MAST-like names by the loopback server:
    `hlsp fetch` lays them out, `hlsp run` reads them like archive data (program.data.source =
    'mast'; same file names and contents, so every task is found in the engine run's cache),
    `hlsp package` and `hlsp validate` make and prove the release; the fetch record is the
    program's exposures. (The release says SIMULATD = F: the engine knows the data as archive
    data here, which is the path under test.)"""
    import re

    from tests.conftest import linked_copy, write_manifest

    text = engine_run["manifest"].read_text()
    program = Path(re.search(r'^path = "(.*)"$', text, re.M).group(1))
    uncal = sorted(program.rglob("*_uncal.fits"))
    obs, prods, files = [], [], {}
    for i, path in enumerate(uncal):
        h = fits.getheader(path)
        obsid = str(70000000 + i)
        filters = f"{h['FILTER']};CLEAR" if h["INSTRUME"] == "NIRCAM" else h["FILTER"]
        obs.append(
            {
                "obs_collection": "JWST",
                "instrument_name": f"{h['INSTRUME']}/IMAGE",
                "filters": filters,
                "target_name": h["TARGPROP"],
                "obs_id": path.name[: -len("_uncal.fits")],
                "obsid": obsid,
                "proposal_id": "9001",
            }
        )
        uri = f"mast:JWST/product/{path.name}"
        prods.append(
            {
                "obsID": obsid,
                "obs_id": path.name[: -len("_uncal.fits")],
                "dataURI": uri,
                "productSubGroupDescription": "UNCAL",
                "productFilename": path.name,
                "size": path.stat().st_size,
                "parent_obsid": obsid,
                "calib_level": 1,
            }
        )
        files[uri] = path
    fetched = tmp_path / "fetched"
    manifest = write_manifest(tmp_path / "archive.toml", program, extra=f'[products]\npsf_path = "{program / "psf"}"\n')
    manifest.write_text(
        manifest.read_text().replace(
            f'source = "synthetic"\npath = "{program}"', f'source = "mast"\npath = "{fetched}"'
        )
    )
    with MastServer(obs, prods, files) as srv:
        proc = hlsp("fetch", str(manifest), "--server", srv.url, check_code=0)
    # exactly what the engine run read (synth2 borrows synth1's off-fields: its own are not)
    from processing.inputs import assign_exposures, scan_exposures

    used = assign_exposures(load_manifest(engine_run["manifest"]), scan_exposures(program))
    read = sorted({Path(e.path).name for tb in used.values() for e in tb.science + tb.background})
    assert len(read) < len(uncal)
    assert f"{len(read)} downloaded" in " ".join(proc.stdout.split())
    record = json.loads((fetched / "fetch-record.json").read_text())
    assert sorted(Path(f["file"]).name for f in record["files"]) == read
    cache = linked_copy(engine_run["cache"], tmp_path / "cache")
    work = tmp_path / "work"
    proc = hlsp("run", str(manifest), "--workdir", str(work), "--cache", str(cache), "--keep", "all", check_code=0)
    ran = [line for line in proc.stdout.splitlines() if line.startswith("│ ") and line.split("│")[3].strip() != "0"]
    assert not ran, proc.stdout  # the same exposures by name and content: the same keys
    releases = tmp_path / "releases"
    hlsp(
        "package",
        str(manifest),
        "--workdir",
        str(work),
        "--cache",
        str(cache),
        "--releases",
        str(releases),
        check_code=0,
    )
    hlsp("validate", str(releases / "synth-jwst" / "v1p0"), check_code=0)
    readme = next((releases / "synth-jwst" / "v1p0").glob("*_readme.txt")).read_text()
    assert f"Input exposures: {len(read)} uncal files from MAST ({srv.url})" in " ".join(readme.split())
    visits = sorted({p.name.split("_")[0] for p in uncal if "synth1" in str(p.parent)})
    assert visits and all(v in readme for v in visits)


def _nircam_exposure(path: Path) -> Path:
    """A raw exposure's primary header as CRDS selects by it (NRCA1, F200W, SUB640)."""
    h = fits.Header()
    h.update(
        TELESCOP="JWST",
        INSTRUME="NIRCAM",
        DETECTOR="NRCA1",
        CHANNEL="SHORT",
        MODULE="A",
        FILTER="F200W",
        PUPIL="CLEAR",
        EXP_TYPE="NRC_IMAGE",
        READPATT="RAPID",
        SUBARRAY="SUB640",
        NGROUPS=5,
        NINTS=1,
        **{"DATE-OBS": "2023-01-01", "TIME-OBS": "00:00:00"},
    )
    fits.PrimaryHDU(header=h).writeto(path)
    return path


def test_crds_sync_brings_the_context_and_the_references_an_exposure_needs(tmp_path, monkeypatch):
    """`hlsp fetch --crds` through the crds client against a loopback CRDS server serving the
    synthetic context: every mapping of the context, and exactly the references the exposure
    selects (byte-identical to the server's), in the run's CRDS_PATH; a context the server does
    not know stops naming it; no server: a clear error in seconds."""
    from crds.core import utils

    from processing.archive import crds_sync
    from processing.errors import WorkFailed
    from processing.simulate.crds_context import write_crds_context
    from tests.processing.crds_server import CrdsServer

    for var in ("CRDS_PATH", "CRDS_SERVER_URL", "CRDS_MODE", "CRDS_CONTEXT"):
        monkeypatch.setenv(var, "")  # restored after the test: sync sets them for the crds client
    src = tmp_path / "server"
    write_crds_context(src, "jwst_9001.pmap", bands=["F200W"], dark_nframes=3, subarrays={"NRCA1": ["SUB640"]})
    exposure = _nircam_exposure(tmp_path / "jw09001001001_02101_00001_nrca1_uncal.fits")
    dest = tmp_path / "crds"
    try:
        with CrdsServer(src, "jwst_9001.pmap") as srv:
            done = crds_sync.sync("jwst_9001.pmap", dest, srv.url, [exposure])
            with pytest.raises(WorkFailed, match="CRDS context jwst_9002.pmap could not be synced"):
                crds_sync.sync("jwst_9002.pmap", tmp_path / "other", srv.url, [exposure])
        mappings = sorted(p.name for p in (src / "mappings" / "jwst").iterdir())
        assert sorted(p.name for p in (dest / "mappings" / "jwst").iterdir()) == mappings
        assert done["mappings"] == len(mappings)
        kinds = {"mask", "saturation", "superbias", "linearity", "dark", "gain", "readnoise", "distortion"}
        kinds |= {"filteroffset", "flat", "photom", "area"}
        assert {n.split("_")[2] for n in done["references"]} == kinds
        assert (
            all("nrca1" in n for n in done["references"])
            and "jwst_nircam_dark_9001_nrca1_sub640.fits" in done["references"]
        )
        got = sorted(p for p in (dest / "references").rglob("*") if p.is_file())
        assert sorted(p.name for p in got) == done["references"]
        for p in got:
            assert p.read_bytes() == next((src / "references").rglob(p.name)).read_bytes()
        assert done["bytes"] == sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    finally:
        utils.clear_function_caches()
    port = _closed_port()
    t0 = time.time()
    with pytest.raises(mast.ArchiveUnreachable, match="cannot reach the CRDS server at .* to sync context jwst_9001"):
        crds_sync.sync("jwst_9001.pmap", tmp_path / "x", f"http://127.0.0.1:{port}", [exposure])
    assert time.time() - t0 < 10


def test_fetch_crds_without_its_server_stops_naming_the_context(tmp_path):
    """`hlsp fetch --crds`: the exposures are fetched, then the CRDS server of the manifest
    cannot be reached: exit 1 in seconds, the server and the pinned context named."""
    port = _closed_port()
    manifest = tmp_path / "dr1.1.1.toml"
    parent = tmp_path / "dr1.1.0.toml"
    parent.write_text(
        (PHANGS / "dr1.1.0.toml")
        .read_text()
        .replace(
            'crds_mode = "remote"',
            f'crds_mode = "remote"\ncrds_server_url = "http://127.0.0.1:{port}"\ncrds_path = "crds"',
        )
    )
    manifest.write_text((PHANGS / "dr1.1.1.toml").read_text())
    obs, prods = jwst_program({"NGC3627": {"nircam": NIRCAM}})
    files = {}
    for p in prods:
        if p["productSubGroupDescription"] == "UNCAL":
            files[p["dataURI"]] = _fits_bytes(len(files))
            p["size"] = len(files[p["dataURI"]])
    with MastServer(obs, prods, files) as srv:
        t0 = time.time()
        proc = hlsp("fetch", str(manifest), "--server", srv.url, "--dest", str(tmp_path / "d"), "--crds", check_code=1)
    assert time.time() - t0 < 30  # the fetch itself included
    text = " ".join(proc.stderr.split())
    assert f"cannot reach the CRDS server at http://127.0.0.1:{port} to sync context jwst_1201.pmap" in text
