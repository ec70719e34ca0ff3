"""Release validation in a team's own CI (docs/ci.md): the pre-commit hooks, `hlsp check` of
several manifests, `hlsp validate`'s JSON summary, GitHub annotations and exit codes by class,
`hlsp plan --against`, and the recipes of docs/ci.md, parsed here and run on a synthetic
release by the end-to-end tests below."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tomli_w
import yaml

from processing.fileio import make_world_readable
from tests.conftest import MANIFESTS, REPO, hlsp, once, pipeline_fixture

TINY = REPO / "tests" / "data" / "tiny-release" / "v1p0"
CI_DOC = REPO / "docs" / "ci.md"
#: the one kind of command the recipe test does not run: installing this package from its git
#: URL (the test runs the checkout's own `hlsp` instead)
INSTALL = re.compile(r'^python -m pip install "hlsp-release @ git\+https://\S+"$')


@pytest.fixture
def tiny(tmp_path) -> Path:
    rel = tmp_path / "releases" / "synth-tiny" / "v1p0"
    shutil.copytree(TINY, rel)
    make_world_readable(rel)
    return rel


def _fits(rel: Path) -> Path:
    return next(p for p in sorted(rel.rglob("*_img.fits")))


def _damage(path: Path) -> None:
    """One byte of the data changed: the checksum no longer matches (the file is replaced,
    not edited: it may be a hard link to a shared fixture's)."""
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))
    path.chmod(0o644)


# --------------------------------------------------------------------------------------------
# hlsp validate for CI
# --------------------------------------------------------------------------------------------


def test_validate_json_summary_and_exit_code_of_a_valid_release(tiny):
    proc = hlsp("validate", str(tiny), "--no-fitsverify", "--no-strict", "--format", "json", check_code=0)
    s = json.loads(proc.stdout)
    assert s["valid"] is True and s["exit_code"] == 0 and s["failed"] == 0 and s["failures"] == []
    assert s["files"] == len([p for p in tiny.rglob("*") if p.is_file()]) and s["passed"] > 20
    # fitsverify turned off: listed as not run, one per FITS file, not a failure without --strict
    assert s["not_run"] == 2 and {e["check"] for e in s["not_run_checks"]} == {"fitsverify"}


def test_a_broken_rule_exits_1_with_an_annotation_and_a_json_entry_naming_the_file(tiny, tmp_path):
    bad = _fits(tiny)
    _damage(bad)
    rel = bad.relative_to(tiny).as_posix()
    proc = hlsp(
        "validate",
        str(tiny),
        "--no-fitsverify",
        "--no-strict",
        "--format",
        "github",
        "--json",
        str(tmp_path / "v.json"),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("::error ")]
    assert errors and all(f"file={tiny}/{rel}," in line for line in errors), proc.stdout
    assert any("title=hlsp validate%3A CHECKSUM/DATASUM" in line for line in errors), errors
    assert proc.stdout.splitlines()[-1].startswith(f"hlsp validate {tiny}: ") and "exit 1" in proc.stdout
    s = json.loads((tmp_path / "v.json").read_text())
    assert s["exit_code"] == 1 and s["valid"] is False
    assert s["failures"] and all(f["file"] == rel and f["class"] == "rule" for f in s["failures"]), s["failures"]
    # the JUnit report says the same
    hlsp("validate", str(tiny), "--no-fitsverify", "--no-strict", "--junit", str(tmp_path / "j.xml"), check_code=1)
    assert f'<testsuite name="{rel}"' in (tmp_path / "j.xml").read_text()


def test_a_check_that_cannot_run_fails_strict_validation_with_exit_4(tiny):
    """fitsverify missing (a PATH without it) under --strict: the runner is at fault, not the release."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "COLUMNS": "400"}
    proc = hlsp("validate", str(tiny), "--strict", "--format", "json", env=env)
    s = json.loads(proc.stdout)
    assert proc.returncode == 4 and s["exit_code"] == 4, proc.stdout + proc.stderr
    assert {f["class"] for f in s["failures"]} == {"not run"} and {f["check"] for f in s["failures"]} == {"fitsverify"}
    # a broken rule is the more serious class
    _damage(_fits(tiny))
    assert hlsp("validate", str(tiny), "--strict", "--format", "json", env=env).returncode == 1


def test_a_failed_comparison_exits_3(tiny, tmp_path):
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("nothing to compare")
    proc = hlsp(
        "validate", str(tiny), "--no-fitsverify", "--no-strict", "--against", str(unrelated), "--format", "github"
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"::error file={tiny},title=hlsp validate%3A against notes (comparison)::" in proc.stdout
    assert "neither a release nor a folder of level-3 mosaics" in proc.stdout


def test_github_annotations_escape_what_would_end_the_command():
    from release.validate import Report

    r = Report(Path("/r"))
    r.add("a,b:c.fits", "odd: check", "line one\nline two 100%")
    line = r.github("rel")
    assert line == (
        "::error file=rel/a%2Cb%3Ac.fits,title=hlsp validate%3A odd%3A check::line one%0Aline two 100%25\n"
    ), line


def test_validate_refuses_an_unknown_format(tiny):
    proc = hlsp("validate", str(tiny), "--format", "yaml", check_code=2)
    assert "--format: 'yaml' is not one of text, json, github" in proc.stderr


# --------------------------------------------------------------------------------------------
# hlsp check of several manifests (as pre-commit passes them)
# --------------------------------------------------------------------------------------------


def _broken_manifest(path: Path) -> Path:
    data = tomllib.loads((MANIFESTS / "phangs-jwst" / "dr1.0.1.toml").read_text())
    data["pins"]["crds_context"] = "jwst_latest"  # not a pinned context
    path.write_text(tomli_w.dumps(data))
    return path


def test_check_takes_several_manifests_and_names_each_invalid_one(tmp_path):
    good = MANIFESTS / "phangs-jwst" / "dr1.0.1.toml"
    bad = _broken_manifest(tmp_path / "broken.toml")
    proc = hlsp("check", str(good), str(bad), str(MANIFESTS / "phangs-jwst" / "dr1.1.0.toml"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"OK {good}" in proc.stdout and "dr1.1.0.toml" in proc.stdout
    assert "broken.toml" in proc.stderr and "pins.crds_context" in proc.stderr
    assert "1 of 3 manifests are invalid" in proc.stderr
    hlsp("check", str(good), str(MANIFESTS / "phangs-jwst" / "dr1.1.0.toml"), check_code=0)


def test_plan_against_refuses_what_it_cannot_compare(tmp_path):
    proc = hlsp("plan", str(MANIFESTS / "demo" / "demo.toml"), "--format", "json", check_code=2)
    assert "give --against OLD_MANIFEST" in proc.stderr
    proc = hlsp("plan", str(MANIFESTS / "demo" / "demo.toml"), "--against-previous", check_code=2)
    assert "has no release.previous" in proc.stderr
    phangs = MANIFESTS / "phangs-jwst"
    proc = hlsp("plan", str(phangs / "dr1.1.0.toml"), "--against", str(phangs / "dr1.0.1.toml"), check_code=2)
    assert "data source 'mast'" in proc.stderr


def test_against_previous_finds_the_manifest_of_release_previous(tmp_path):
    from release.cli import _previous_manifest

    assert _previous_manifest(MANIFESTS / "demo" / "demo-1.1.0.toml") == MANIFESTS / "demo" / "demo.toml"
    assert _previous_manifest(MANIFESTS / "phangs-jwst" / "dr1.1.1.toml") == MANIFESTS / "phangs-jwst" / "dr1.1.0.toml"


# --------------------------------------------------------------------------------------------
# The pre-commit hooks and the recipes, as files
# --------------------------------------------------------------------------------------------


def test_the_pre_commit_hooks_check_manifests_and_nothing_else():
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert [h["id"] for h in hooks] == ["hlsp-check", "hlsp-check-system"]
    for h in hooks:
        assert h["entry"] == "hlsp check"
        files = re.compile(h["files"])
        assert files.search("manifests/demo/demo.toml") and files.search("survey/manifests/dr2.toml")
        assert not files.search("pyproject.toml") and not files.search("/".join(("manifests", "README.md")))
    assert {h["language"] for h in hooks} == {"python", "system"}


def recipes() -> dict[str, dict]:
    """The YAML blocks of docs/ci.md that name a file (``# file: PATH`` first), parsed."""
    text = CI_DOC.read_text()
    out = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        first = block.splitlines()[0]
        if first.startswith("# file: "):
            out[first.removeprefix("# file: ").strip()] = yaml.safe_load(block)
    return out


def commands(name: str, recipe: dict) -> list[dict]:
    """The shell commands of a recipe, in order: ``{"job", "step", "run", "env"}`` (the
    environment the recipe sets for it, values as written)."""
    out = []
    if name.startswith(".github/workflows/"):
        for job_name, job in recipe["jobs"].items():
            for i, step in enumerate(job["steps"]):
                if "run" in step:
                    env = {**recipe.get("env", {}), **job.get("env", {}), **step.get("env", {})}
                    out.append({"job": job_name, "step": step.get("name", str(i)), "run": step["run"], "env": env})
    elif name == ".gitlab-ci.yml":
        default = recipe.get("default", {})
        for job_name, job in recipe.items():
            if not isinstance(job, dict) or "script" not in job:
                continue
            env = {**recipe.get("variables", {}), **job.get("variables", {})}
            for part in ("before_script", "script"):
                lines = job.get(part, default.get(part, []) if part == "before_script" else [])
                for line in lines:
                    out.append({"job": job_name, "step": part, "run": line, "env": env})
    return out


def test_every_recipe_parses_and_only_its_install_step_is_not_run():
    found = recipes()
    assert set(found) == {
        ".pre-commit-config.yaml",
        ".github/workflows/hlsp-manifests.yml",
        ".github/workflows/hlsp-validate.yml",
        ".gitlab-ci.yml",
    }
    hook = found[".pre-commit-config.yaml"]["repos"][0]
    assert [h["id"] for h in hook["hooks"]] == ["hlsp-check"]
    shell = {name: commands(name, r) for name, r in found.items() if name != ".pre-commit-config.yaml"}
    for name, cmds in shell.items():
        installs = [c for c in cmds if INSTALL.match(c["run"].strip())]
        assert installs, name
        # what a test run skips is exactly the install line; everything else calls hlsp or the shell
        assert all(c["run"].strip().startswith("python -m pip install") for c in installs)
    used = " ".join(c["run"] for cmds in shell.values() for c in cmds)
    for needed in (
        "hlsp check manifests/*/*.toml",
        "--format markdown",
        "--format json",
        "--against-previous",
        "--strict --against",
        "--junit validate.xml",
        "--json validate.json",
        "--format github",
        "hlsp report",
    ):
        assert needed in used, needed
    # GitLab publishes the JUnit report; GitHub publishes it and keeps the artifacts even on failure
    assert found[".gitlab-ci.yml"]["validate-release"]["artifacts"]["reports"]["junit"] == "validate.xml"
    steps = found[".github/workflows/hlsp-validate.yml"]["jobs"]["validate"]["steps"]
    assert all(s.get("if") == "always()" for s in steps[3:]), steps


# --------------------------------------------------------------------------------------------
# End to end: pre-commit itself, and the recipes run on a synthetic release
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pre_commit_runs_the_hook_from_this_repository(tmp_path):
    """`pre-commit try-repo` builds the hook's environment from this repository (pip installs
    it with the pinned versions) and runs it on a team repository's manifests."""
    team = tmp_path / "team"
    (team / "manifests").mkdir(parents=True)
    shutil.copy(MANIFESTS / "phangs-jwst" / "dr1.0.1.toml", team / "manifests" / "dr1.0.1.toml")
    (team / "pyproject.toml").write_text("[project]\nname = 'not a manifest'\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=team, check=True)
    subprocess.run([*git, "add", "."], cwd=team, check=True)
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "PIP_CONSTRAINT": str(REPO / "constraints.txt"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def try_repo() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "hlsp-check", "--all-files"],
            cwd=team,
            env=env,
            capture_output=True,
            text=True,
        )

    good = try_repo()
    assert good.returncode == 0 and "hlsp check (release manifests)" in good.stdout, good.stdout + good.stderr
    assert "Passed" in good.stdout
    _broken_manifest(team / "manifests" / "dr1.1.0.toml")
    subprocess.run([*git, "add", "."], cwd=team, check=True)
    bad = try_repo()
    assert bad.returncode == 1 and "Failed" in bad.stdout, bad.stdout + bad.stderr
    assert "dr1.1.0.toml" in bad.stdout and "pins.crds_context" in bad.stdout
    assert "1 of 2 manifests are invalid" in bad.stdout


class _Api(BaseHTTPRequestHandler):
    """A loopback stand-in for the GitHub/GitLab API: records each POST, answers 201."""

    posts: list = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts.append({"path": self.path, "headers": dict(self.headers), "body": body.decode()})
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    _Api.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Api.posts
    server.shutdown()


def _expand(value, expressions: dict) -> str:
    """A recipe's value with GitHub's ``${{ expr }}`` replaced as the test's event says."""

    def one(m):
        return expressions[m.group(1).strip()]

    return re.sub(r"\$\{\{(.*?)\}\}", one, str(value))


def run_recipe(name: str, jobs: list[str], cwd: Path, expressions: dict, ci_env: dict, overrides: dict) -> dict:
    """Run the shell commands of ``jobs`` of recipe ``name`` in ``cwd`` as the CI system
    would: GitHub one ``bash -e`` per step, a step after a failure only when ``if: always()``;
    GitLab a job's ``script`` lines in one ``bash -eo pipefail``. The environment: the
    recipe's (GitHub ``${{ }}`` from ``expressions``), the CI system's own variables
    (``ci_env``), ``overrides`` for the values the recipe's comments say to change, and this
    checkout's hlsp first on PATH. Returns ``{job: exit code, "output": everything printed}``
    (a GitHub job's code is its first failing step's)."""
    recipe = recipes()[name]
    base = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "400",
        "CI": "true",
    }
    codes: dict[str, int] = {}
    if name.startswith(".github/"):
        for job_name in jobs:
            job = recipe["jobs"][job_name]
            code = 0
            for step in job["steps"]:
                if "run" not in step or INSTALL.match(step["run"].strip()):
                    continue
                if code and step.get("if") != "always()":
                    continue
                env = {**recipe.get("env", {}), **job.get("env", {}), **step.get("env", {})}
                env = {k: _expand(v, expressions) for k, v in env.items()}
                proc = subprocess.run(
                    ["bash", "-e", "-c", step["run"]],
                    cwd=cwd,
                    env={**base, **env, **ci_env, **overrides},
                    capture_output=True,
                    text=True,
                )
                codes[f"{job_name}: {step.get('name')}"] = proc.returncode
                codes["output"] = codes.get("output", "") + proc.stdout + proc.stderr
                code = code or proc.returncode
            codes[job_name] = code
    else:
        for job_name in jobs:
            job = recipe[job_name]
            env = {**recipe.get("variables", {}), **job.get("variables", {})}
            # what runs before is the default install line only (this checkout's hlsp instead)
            assert all(INSTALL.match(line) for line in job.get("before_script", recipe["default"]["before_script"]))
            lines = list(job["script"])
            proc = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", "\n".join(lines)],
                cwd=cwd,
                env={**base, **{k: str(v) for k, v in env.items()}, **ci_env, **overrides},
                capture_output=True,
                text=True,
            )
            codes[job_name] = proc.returncode
            codes["output"] = codes.get("output", "") + proc.stdout + proc.stderr
    return codes


def _team_repository(second_release, where: Path) -> tuple[Path, str]:
    """A team's manifests repository: release 1.0.0's manifest on the base commit; the pull
    request adds release 1.1.0's and edits 1.0.0's (a comment). Returns (folder, base sha)."""
    team = where / "team"
    (team / "manifests" / "synth").mkdir(parents=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    first = team / "manifests" / "synth" / "release.toml"
    shutil.copy(second_release["first"], first)
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=team, check=True)
    subprocess.run([*git, "add", "."], cwd=team, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "release 1.0.0"], cwd=team, check=True)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=team, check=True, capture_output=True, text=True)
    shutil.copy(second_release["manifest"], team / "manifests" / "synth" / "release-1.1.toml")
    first.write_text("# cut on 2026-12-01\n" + first.read_text())
    subprocess.run([*git, "add", "."], cwd=team, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "release 1.1.0"], cwd=team, check=True)
    return team, base.stdout.strip()


def _clean(checkout: Path) -> None:
    """What a validation job left in its checkout (a new job starts without it)."""
    for made in ("validate.json", "validate.xml", "report", "comparison"):
        path = checkout / made
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _releases_and_work(second_release, where: Path) -> tuple[Path, Path]:
    """The test's own linked copies of the releases root and the work folder (the recipes
    write reports and logs; a damaged file is replaced, not edited)."""
    from tests.conftest import linked_copy

    return (
        linked_copy(second_release["releases"], where / "releases"),
        linked_copy(second_release["workdir"], where / "work"),
    )


@pytest.mark.slow
def test_the_github_recipes_run_on_a_release_and_fail_a_damaged_one(second_release, api, tmp_path):
    from release.plan_diff import PlanDiff

    url, posts = api
    team, base = _team_repository(second_release, tmp_path)
    releases, work = _releases_and_work(second_release, tmp_path)
    expressions = {
        "github.event.pull_request.base.sha": base,
        "github.event.pull_request.number": "7",
        "github.token": "t0ken",
        "inputs.manifest": str(Path("manifests", "synth", "release-1.1.toml")),
        "inputs.release": "synth-jwst/v1p1",
        "inputs.previous": "synth-jwst/v1p0",
    }
    ci_env = {"GITHUB_API_URL": url, "GITHUB_REPOSITORY": "team/releases"}
    overrides = {"HLSP_RELEASES": str(releases), "HLSP_WORK": str(work)}

    # a pull request: the manifests check, then the plan, posted as a comment
    codes = run_recipe(".github/workflows/hlsp-manifests.yml", ["check", "plan"], team, expressions, ci_env, overrides)
    assert codes["check"] == 0 and codes["plan"] == 0, codes["output"]
    assert len(posts) == 1 and posts[0]["path"] == "/repos/team/releases/issues/7/comments", posts
    assert posts[0]["headers"]["Authorization"] == "Bearer t0ken"
    body = json.loads(posts[0]["body"])["body"]
    assert "`psf_matching/synth2/F770W` | changed | parameters: psf_matching.min_coverage 0.5 -> 0.9" in body
    assert "0 of " in body  # the edited 1.0.0 manifest: nothing reruns
    plan = PlanDiff.model_validate_json((team / "plan-release-1.1.json").read_text())
    assert [t.task for t in plan.tasks] == ["psf_matching/synth2/F770W"]
    assert not list(team.rglob(".base-*")), "the recipe leaves no base manifest behind"

    # the cut release validates, the reports are there
    run = team  # the job's checkout
    codes = run_recipe(".github/workflows/hlsp-validate.yml", ["validate"], run, expressions, ci_env, overrides)
    assert codes["validate"] == 0, codes["output"]
    assert json.loads((run / "validate.json").read_text())["valid"] is True
    assert "<testsuites" in (run / "validate.xml").read_text()
    assert (run / "report" / "index.html").is_file() and list((run / "comparison").glob("*.png"))
    assert "hlsp validate " in codes["output"] and ": valid;" in codes["output"]

    # a damaged file: the job fails with an annotation naming it, and the artifacts are still made
    bad = _fits(releases / "synth-jwst" / "v1p1")
    _damage(bad)
    _clean(run)
    codes = run_recipe(".github/workflows/hlsp-validate.yml", ["validate"], run, expressions, ci_env, overrides)
    assert codes["validate"] == 1, codes["output"]
    assert f"::error file={bad},title=hlsp validate%3A CHECKSUM/DATASUM" in codes["output"], codes["output"]
    summary = json.loads((run / "validate.json").read_text())
    rel = bad.relative_to(releases / "synth-jwst" / "v1p1").as_posix()
    assert summary["exit_code"] == 1 and {f["file"] for f in summary["failures"]} == {rel}
    assert (run / "report" / "index.html").is_file() and (run / "validate.xml").is_file()


@pytest.mark.slow
def test_the_gitlab_recipe_runs_on_a_release_and_fails_a_damaged_one(second_release, api, tmp_path):
    url, posts = api
    team, base = _team_repository(second_release, tmp_path)
    releases, work = _releases_and_work(second_release, tmp_path)
    ci_env = {
        "CI_PIPELINE_SOURCE": "merge_request_event",
        "CI_MERGE_REQUEST_DIFF_BASE_SHA": base,
        "CI_API_V4_URL": f"{url}/api/v4",
        "CI_PROJECT_ID": "42",
        "CI_MERGE_REQUEST_IID": "7",
        "HLSP_NOTE_TOKEN": "t0ken",
        "RELEASE": "synth-jwst/v1p1",
        "PREVIOUS": "synth-jwst/v1p0",
        "MANIFEST": str(team / "manifests" / "synth" / "release-1.1.toml"),
    }
    overrides = {"HLSP_RELEASES": str(releases), "HLSP_WORK": str(work)}
    codes = run_recipe(".gitlab-ci.yml", ["check-manifests", "plan-manifests"], team, {}, ci_env, overrides)
    assert codes["check-manifests"] == 0 and codes["plan-manifests"] == 0, codes["output"]
    assert len(posts) == 1 and posts[0]["path"] == "/api/v4/projects/42/merge_requests/7/notes", posts
    assert posts[0]["headers"]["PRIVATE-TOKEN"] == "t0ken"
    from urllib.parse import parse_qs

    note = parse_qs(posts[0]["body"])["body"][0]
    assert "`psf_matching/synth2/F770W` | changed" in note

    codes = run_recipe(".gitlab-ci.yml", ["validate-release"], team, {}, ci_env, overrides)
    assert codes["validate-release"] == 0, codes["output"]
    assert json.loads((team / "validate.json").read_text())["valid"] is True
    assert (team / "report" / "index.html").is_file()

    bad = _fits(releases / "synth-jwst" / "v1p1")
    _damage(bad)
    _clean(team)
    codes = run_recipe(".gitlab-ci.yml", ["validate-release"], team, {}, ci_env, overrides)
    assert codes["validate-release"] == 1, codes["output"]
    summary = json.loads((team / "validate.json").read_text())
    assert summary["exit_code"] == 1 and summary["failures"]
    assert "<failure" in (team / "validate.xml").read_text()
    assert (team / "report" / "index.html").is_file(), "the report is written although validation failed"


@pipeline_fixture(scope="session")
def demo_manifests(tmp_path_factory) -> Path:
    """The demo's three manifests, beside the synthetic program they name (``hlsp simulate``
    into ``demo-output/program`` two folders up, as in the repository): their graphs and keys
    are the demo's own."""
    from processing.simulate.generate import simulate_program

    def build(root: Path) -> Path:
        simulate_program(root / "demo-output" / "program", size="demo", seed=1)
        shutil.copytree(MANIFESTS / "demo", root / "manifests" / "demo")
        return root / "manifests" / "demo"

    return once(tmp_path_factory, "demo-manifests", build)


def test_plan_against_lists_what_the_demo_s_second_release_changes(demo_manifests):
    """demo-1.1.0.toml against demo.toml: F1000W anchoring (n_bins) and F2100W PSF matching
    (min_coverage) change, and F1000W PSF matching through its input; nothing else."""
    from release.plan_diff import PlanDiff

    new, old = demo_manifests / "demo-1.1.0.toml", demo_manifests / "demo.toml"
    plan = PlanDiff.model_validate_json(
        hlsp("plan", str(new), "--against", str(old), "--format", "json", check_code=0).stdout
    )
    assert [(t.task, t.reasons) for t in plan.tasks] == [
        ("anchoring/synth1/F1000W", ["parameters: anchoring.n_bins 15 -> 12"]),
        ("anchoring/synth2/F1000W", ["parameters: anchoring.n_bins 15 -> 12"]),
        ("psf_matching/synth1/F1000W", ["inputs: anchoring/synth1/F1000W"]),
        ("psf_matching/synth1/F2100W", ["parameters: psf_matching.min_coverage 0.5 -> 0.7"]),
        ("psf_matching/synth2/F1000W", ["inputs: anchoring/synth2/F1000W"]),
        ("psf_matching/synth2/F2100W", ["parameters: psf_matching.min_coverage 0.5 -> 0.7"]),
    ]
    assert plan.summary.tasks == 160 and plan.summary.changed == 6 and plan.summary.new == plan.summary.removed == 0
    expected = sorted(
        [
            f"{t}_f1000w_v1p1_{p}"
            for t in ("synth1", "synth2")
            for p in ("img.fits", "img-preview.png", "tweakback.tar.gz")
        ]
        + [
            f"{t}_{b}_v1p1_img-gauss{g}as.fits"
            for t in ("synth1", "synth2")
            for b in ("f1000w", "f2100w")
            for g in ("0p85", "0p90", "1p00")
        ]
        + [f"{t}_multi_v1p1_{p}.ecsv" for t in ("synth1", "synth2") for p in ("anchoring", "psf-matching")]
    )
    assert sorted(f.file.split("_", 4)[4] for f in plan.files) == expected
    assert {f.status for f in plan.files} == {"changed"} and plan.summary.files_unchanged == 42
    assert [c.key for c in plan.manifest_changes] == [
        "parameters.band.F1000W.anchoring.n_bins",
        "parameters.band.F2100W.psf_matching.min_coverage",
    ]
    md = hlsp("plan", str(new), "--against", str(old), "--format", "markdown", check_code=0).stdout
    assert "**6 of 160 tasks rerun**" in md and "**22 release files change**" in md
    assert "| `anchoring/synth1/F1000W` | changed | parameters: anchoring.n_bins 15 -> 12 |" in md

    # the patch 1.1.1 against its parent: what it regenerates, the rest carried (not removed)
    patch = PlanDiff.model_validate_json(
        hlsp(
            "plan", str(demo_manifests / "demo-1.1.1.toml"), "--against-previous", "--format", "json", check_code=0
        ).stdout
    )
    assert patch.against.version == "1.1.0" and patch.summary.removed == 0 and patch.summary.tasks == 160
    assert {t.task.split("/")[0] for t in patch.tasks} == {"astrometry", "anchoring", "psf_matching"}
    assert {(t.target, t.band) for t in patch.tasks} == {("synth2", "F200W"), ("synth2", "F300M")}
    assert all("_v1p1p1_" in f.file and f.target == "synth2" for f in patch.files)
