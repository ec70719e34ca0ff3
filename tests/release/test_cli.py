"""The `hlsp` command: help everywhere, exit codes, generated docs current, no import side effects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from release.cli import app, main
from release.schema_doc import (
    PLAN_DIFF_SCHEMA_FILE,
    REFERENCE_FILE,
    SCHEMA_FILE,
    plan_diff_schema_text,
    reference_text,
    schema_text,
)
from tests.conftest import MANIFESTS, REPO

COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main(["no-such-command"]) == 2
    assert main(["check"]) == 2  # missing argument


def test_generated_docs_are_current():
    """docs/ holds what `make schema` generates from the models; regenerate after a change."""
    assert (REPO / "docs" / SCHEMA_FILE).read_text() == schema_text()
    assert (REPO / "docs" / REFERENCE_FILE).read_text() == reference_text()
    assert (REPO / "docs" / PLAN_DIFF_SCHEMA_FILE).read_text() == plan_diff_schema_text()


def test_reference_documents_every_field():
    text = reference_text()
    for key in ("borrow_from", "crds_context", "convolved_fwhm_arcsec", "proposal_ids", "parent"):
        assert f"`{key}`" in text


def test_import_has_no_side_effects():
    code = (
        "import logging, os, sys; before = dict(os.environ); "
        "import release.cli, release.manifest, processing.parameters, processing.stages; "
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers; "
        "assert dict(os.environ) == before; "
        "assert 'jwst' not in sys.modules, 'jwst imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_plan_shows_patch_actions(capsys):
    assert main(["plan", str(MANIFESTS / "phangs-jwst" / "dr1.1.1.toml"), "--targets", "ngc3627"]) == 0
    out = capsys.readouterr().out
    assert out.count("regenerate") == 4 and out.count("carry over") == 4  # NIRCam only
    assert main(["plan", str(MANIFESTS / "phangs-jwst" / "dr1.1.1.toml"), "--targets", "ngc9999"]) == 2


def test_manifest_guide_example_validates(tmp_path):
    """The worked example of docs/manifest.md is a valid manifest (the docs stay true)."""
    import re

    text = (REPO / "docs" / "manifest.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "example.toml").write_text(example)
    assert main(["check", str(tmp_path / "example.toml")]) == 0


def test_simulate_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("finished work")
    assert main(["simulate", str(tmp_path / "a"), "--size", "huge"]) == 2
    assert main(["simulate", str(tmp_path / "b"), "--bands", "F200W,F999W"]) == 2
    assert main(["simulate", str(tmp_path / "full")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--size: 'huge'" in err and "'F999W'" in err and "is not an empty folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    assert (tmp_path / "full" / "keep.txt").read_text() == "finished work"


def test_the_demo_calls_every_command_with_real_values(tmp_path, monkeypatch):
    """`hlsp demo` calls the other commands' functions from Python: each gets a value for every
    parameter (an option left out would get typer's option object, not its default; an option
    added to a command later must not break the demo). The commands are recorded, not run."""
    import functools

    from typer.models import ParameterInfo

    import release.cli as cli

    calls = []

    def recorded(fn):
        @functools.wraps(fn)
        def record(*args, **kwargs):
            bad = [k for k, v in kwargs.items() if isinstance(v, ParameterInfo)]
            bad += [i for i, a in enumerate(args) if isinstance(a, ParameterInfo)]
            assert not bad, (fn.__name__, bad)
            calls.append(fn.__name__)

        return record

    for name in ("simulate", "run", "package", "validate", "report"):
        monkeypatch.setattr(cli, name, recorded(getattr(cli, name)))
    cli._call(cli.demo, outdir=tmp_path / "demo")
    assert calls == ["simulate"] + ["run", "package", "validate", "report"] * 3, calls
