"""A project made with `cruft create` keeps up with the template: `cruft update` brings a later template commit,
and `cruft check` tells whether the project is behind. The answers are checked as with cookiecutter."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV

CRUFT = str(Path(sys.executable).with_name("cruft"))
GIT = ["git", "-c", "user.name=template tests", "-c", "user.email=tests@example.com", "-c", "commit.gpgsign=false"]


def cruft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CRUFT, *args], cwd=cwd, env={**ENV, "PWD": str(cwd)}, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def template(template_url, tmp_path) -> Path:
    """A clone of the session's git snapshot of the template, free to take later commits."""
    clone = tmp_path / "spiral-template"
    subprocess.run(["git", "clone", "-q", template_url.removeprefix("git+"), str(clone)], check=True)
    return clone


def commit(repo: Path, message: str) -> str:
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def test_cruft_create_then_update_brings_a_later_template_commit(template, tmp_path):
    made = cruft("create", "--no-input", str(template), cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "cd spiral-classifier" in [line.strip() for line in made.stdout.splitlines()]  # the hook's next commands
    project = tmp_path / "spiral-classifier"
    recorded = json.loads((project / ".cruft.json").read_text())
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=template, capture_output=True, text=True).stdout.strip()
    assert recorded["commit"] == first
    assert recorded["context"]["cookiecutter"]["package_name"] == "spiral_classifier"
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    commit(project, "from the template")
    assert cruft("check", cwd=project).returncode == 0

    page = Path("{{cookiecutter.project_slug}}") / "docs" / "ddp.md"
    (template / page).write_text((template / page).read_text() + "\nA line from a later template commit.\n")
    later = commit(template, "a later template commit")
    behind = cruft("check", cwd=project)
    assert behind.returncode != 0 and "out of date" in behind.stdout

    updated = cruft("update", "--skip-apply-ask", cwd=project)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    # cruft bakes both commits into temporary directories, gone by now: no next commands for them.
    assert "Created" not in updated.stdout and "cd " not in updated.stdout, updated.stdout
    assert (project / "docs" / "ddp.md").read_text().endswith("A line from a later template commit.\n")
    assert json.loads((project / ".cruft.json").read_text())["commit"] == later
    assert cruft("check", cwd=project).returncode == 0


def test_cruft_create_refuses_a_bad_answer_in_one_line_and_writes_nothing(template, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    refused = cruft("create", "--no-input", "--extra-context", '{"package_name": "json"}', str(template), cwd=out)
    assert refused.returncode != 0
    assert "error: package_name 'json' would shadow the standard-library module" in refused.stderr
    assert list(out.iterdir()) == []


def test_hostile_answers_stay_text_through_cruft_create_and_update(template, tmp_path):
    name = "Ünïcödé {{ 7*7 }} Tool"
    made = cruft(
        "create", "--no-input", "--extra-context", json.dumps({"project_name": name}), str(template), cwd=tmp_path
    )
    assert made.returncode == 0, made.stdout + made.stderr
    [project] = [path for path in tmp_path.iterdir() if path.name != template.name]
    assert name in (project / "README.md").read_text()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    commit(project, "from the template")
    (template / "LICENSE.extra").write_text("a later file at the template's root\n")  # not a project file
    commit(template, "a later template commit")
    updated = cruft("update", "--skip-apply-ask", cwd=project)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert name in (project / "README.md").read_text()  # rendered again from the answers, as text
    assert cruft("check", cwd=project).returncode == 0


def test_cruft_create_refuses_an_unknown_key(template, tmp_path):
    refused = cruft("create", "--no-input", "--extra-context", '{"licence": "MIT"}', str(template), cwd=tmp_path)
    assert refused.returncode != 0
    assert "error: licence is not one of this template's answers" in refused.stderr
    assert list(tmp_path.iterdir()) == [template]


def test_cruft_create_refuses_an_existing_project_directory_in_one_line(template, tmp_path):
    assert cruft("create", "--no-input", str(template), cwd=tmp_path).returncode == 0
    recorded = (tmp_path / "spiral-classifier" / ".cruft.json").read_text()
    again = cruft("create", "--no-input", str(template), cwd=tmp_path)
    assert again.returncode != 0
    [line] = again.stderr.strip().splitlines()  # not cookiecutter's OutputDirExistsException and its traceback
    assert line.startswith("error: spiral-classifier already exists; ") and "--overwrite-if-exists" in line, line
    assert (tmp_path / "spiral-classifier" / ".cruft.json").read_text() == recorded
    assert cruft("create", "--no-input", "--overwrite-if-exists", str(template), cwd=tmp_path).returncode == 0


def test_cruft_create_takes_a_license_in_any_case(template, tmp_path):
    made = cruft("create", "--no-input", "--extra-context", '{"license": "apache-2.0"}', str(template), cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    project = tmp_path / "spiral-classifier"
    assert json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]["license"] == "Apache-2.0"
    assert 'license = "Apache-2.0"' in (project / "pyproject.toml").read_text().splitlines()
    assert (project / "LICENSE").read_text().startswith("Apache License")
