"""Bake a covering set of answers; check what each one gives, lint it, and look for Jinja left behind."""

import datetime
import itertools
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from conftest import ENV, FLOORS_RESOLUTION, NEWEST_PYTHON, oldest_python

# Each license once, each github_actions choice twice; the first is the no-answer default. One package name
# sorts before the tests' `conftest` and `train`, so import order cannot depend on the default name.
COMBINATIONS = [
    {},
    {"license": "BSD-3-Clause", "github_actions": "no"},
    {"license": "Apache-2.0", "github_actions": "yes"},
    {"license": "none", "github_actions": "no", "project_name": "Aardvark"},
]
LICENSE_FIRST_LINES = {"MIT": "MIT License", "BSD-3-Clause": "BSD 3-Clause License", "Apache-2.0": "Apache License"}
# In file names every delimiter is a leftover. In file contents only the opening ones are, and a
# `cookiecutter.<name>` that a malformed tag left as text: a lone `}}` is a nested dict literal in Python, and
# `%}` ends an f-string field such as f"{acc:.1%}". `${{` opens a GitHub Actions expression in the workflow.
JINJA_IN_NAME = re.compile(r"\{\{|\}\}|\{%|%\}|cookiecutter")
JINJA_IN_TEXT = re.compile(r"(?<!\$)\{\{|\{%|\{#|cookiecutter\.\w")


@pytest.fixture(scope="session", params=COMBINATIONS, ids=lambda answers: "-".join(answers.values()) or "defaults")
def baked(request, bake):
    answers = {"license": "MIT", "github_actions": "yes", **request.param}
    return answers, bake(*(f"{key}={value}" for key, value in request.param.items())).project()


def test_defaults_give_spiral_classifier(bake):
    done = bake()
    project = done.project()
    assert [path.name for path in done.output.iterdir()] == ["spiral-classifier"]
    assert (project / "src" / "spiral_classifier" / "__init__.py").is_file()
    assert "from spiral_classifier." in (project / "train.py").read_text()
    assert (project / "LICENSE").read_text().startswith("MIT License")
    assert (project / ".github" / "workflows" / "ci.yml").is_file()


def test_post_gen_hook_prints_the_next_commands(bake):
    stdout = bake().result.stdout
    next_commands = [
        "cd spiral-classifier",
        'pip install -e ".[dev]"',
        "python train.py fit",
        "tensorboard --logdir logs",
    ]
    found = [line.strip() for line in stdout.splitlines() if line.strip() in next_commands]
    assert found == next_commands, stdout


def test_answers_switch_files_on_and_off(baked):
    answers, project = baked
    license_file = project / "LICENSE"
    workflow = project / ".github" / "workflows" / "ci.yml"
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    if answers["license"] == "none":
        assert not license_file.exists()
        assert "license" not in metadata
    else:
        text = license_file.read_text()
        assert text.startswith(LICENSE_FIRST_LINES[answers["license"]])
        assert f"{datetime.date.today().year}" in text and "Your Name" in text
        assert metadata["license"] == answers["license"]
    if answers["github_actions"] == "no":
        assert not (project / ".github").exists()
    else:
        steps = workflow.read_text()
        for command in [
            "download.pytorch.org/whl/cpu",
            'pip install -e ".[dev]"',
            "ruff check .",
            "ruff format --check .",
            "pytest",
        ]:
            assert command in steps


def matrix_jobs(matrix: dict) -> list[dict]:
    """The jobs of a GitHub Actions matrix: each combination of its lists, less those an `exclude` entry matches,
    each extended by the keys of the `include` entries that agree with it on the lists' keys; an `include` entry that
    agrees with none is a job of its own."""
    lists = {key: values for key, values in matrix.items() if key not in ("include", "exclude")}
    jobs = [dict(zip(lists, values, strict=True)) for values in itertools.product(*lists.values())]
    jobs = [job for job in jobs if not any(entry.items() <= job.items() for entry in matrix.get("exclude", []))]
    for entry in matrix.get("include", []):
        agreeing = [job for job in jobs if all(job[key] == value for key, value in entry.items() if key in lists)]
        for job in agreeing:
            job.update({key: value for key, value in entry.items() if key not in lists})
        if not agreeing:
            jobs.append(dict(entry))
    return jobs


def test_ci_tests_the_oldest_and_the_newest_python_at_the_newest_versions_and_at_the_floors(bake):
    project = bake().project()
    oldest = oldest_python(project)
    assert NEWEST_PYTHON in SpecifierSet(
        tomllib.loads((project / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    [job] = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())["jobs"].values()
    jobs = matrix_jobs(job.get("strategy", {}).get("matrix", {}))  # no matrix: one job, with no keys
    # A Python version unquoted in YAML is a float (3.10 is 3.1): the comparison is with the text.
    cells = {(str(cell.get("python")), str(cell.get("versions"))): cell.get("resolution") for cell in jobs}
    wanted = {(python, versions) for python in (oldest, NEWEST_PYTHON) for versions in ("newest", "floors")}
    assert wanted <= cells.keys(), f"ci.yml's matrix has {sorted(cells)}, not all of {sorted(wanted)}"
    # The floors as tests/test_floors.py installs them; the newest, uv's default.
    resolutions = {"floors": FLOORS_RESOLUTION, "newest": "highest"}
    assert {cell: cells[cell] for cell in wanted} == {cell: resolutions[cell[1]] for cell in wanted}
    # The matrix reaches the job: its Python, and both installs (torch first, then the project).
    steps = job["steps"]
    [setup] = [step for step in steps if step.get("uses", "").startswith("actions/setup-python@")]
    assert setup["with"]["python-version"] == "${{ matrix.python }}"
    installs = [step["run"] for step in steps if "uv pip install" in step.get("run", "")]
    assert len(installs) == 2 and all("--resolution ${{ matrix.resolution }}" in run for run in installs), installs


BINARY = {".gif"}  # copied as they are (cookiecutter.json's _copy_without_render)


def test_no_jinja_left_in_names_or_files(baked):
    _, project = baked
    leftovers = []
    for path in sorted(project.rglob("*")):
        relative = path.relative_to(project)
        if JINJA_IN_NAME.search(str(relative)):
            leftovers.append(f"{relative}: in the name")
        if path.is_file() and path.suffix not in BINARY:
            for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
                if JINJA_IN_TEXT.search(line):
                    leftovers.append(f"{relative}:{number}: {line.strip()}")
    assert not leftovers, "\n".join(leftovers)


def test_pyproject_metadata(baked):
    _, project = baked
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert metadata["name"] == project.name
    assert metadata["authors"] == [{"name": "Your Name", "email": "you@example.com"}]
    assert "dev" in metadata["optional-dependencies"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(baked, command):
    _, project = baked
    # cwd=project: ruff reads the baked pyproject.toml, the configuration users and their CI get.
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", "."],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
