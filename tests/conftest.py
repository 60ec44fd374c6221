"""Bake the template as users do: the real `cookiecutter` program, from a git URL.

cookiecutter bakes what a git URL has committed, so the session first commits a copy of the working tree
(tracked files, and untracked ones that git does not ignore) to a scratch repository: the tests see
uncommitted edits, and never a file that .gitignore keeps out of a real clone.
"""

import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
# The command-line program of this environment (next to its python), else the first on PATH.
COOKIECUTTER = str(Path(sys.executable).with_name("cookiecutter"))
if not Path(COOKIECUTTER).exists():
    COOKIECUTTER = shutil.which("cookiecutter")
# Every subprocess gets one thread: the baked project trains tiny models on the CPU, where torch's
# intra-op threads cost more in synchronisation than they save (much faster on a 2-core machine).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# The newest Python the generated project promises to run on: its CI's newest, and the one that
# tests/test_baked_suite.py runs its suite with (tests/test_floors.py: requires-python's oldest, at the floors).
NEWEST_PYTHON = "3.13"
# How the generated project's CI and tests/test_floors.py install each direct dependency at its declared floor.
FLOORS_RESOLUTION = "lowest-direct"


@dataclass
class Bake:
    result: subprocess.CompletedProcess
    output: Path  # the directory cookiecutter wrote into (`-o`)

    def project(self) -> Path:
        """The one directory the bake made."""
        assert self.result.returncode == 0, f"cookiecutter failed:\n{self.result.stdout}\n{self.result.stderr}"
        [project] = self.output.iterdir()
        return project


def oldest_python(project: Path) -> str:
    """The oldest Python 3 minor release ("3.10") that the project's requires-python admits."""
    requires = SpecifierSet(tomllib.loads((project / "pyproject.toml").read_text())["project"]["requires-python"])
    return next(f"3.{minor}" for minor in range(100) if f"3.{minor}" in requires)


def python_interpreter(version: str) -> str:
    """An interpreter of Python `version` ("3.10") to make a virtual environment with: pyenv's newest release of it,
    else `python3.10` on PATH. Each is asked for its version: a pyenv shim of a Python that is not selected exists
    but answers with an error. Where none is found the promise goes untested, so under CI (CI=true) the test fails;
    elsewhere it is skipped."""
    versions = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    # "3.10.13", not "3.10.13t" (free-threaded) nor "3.10-dev": the newest patch release first.
    releases = [path for path in versions.glob(f"{version}.*") if re.fullmatch(r"\d+\.\d+\.\d+", path.name)]
    releases.sort(key=lambda path: int(path.name.rsplit(".", 1)[1]), reverse=True)
    for candidate in [*(str(path / "bin" / "python") for path in releases), shutil.which(f"python{version}")]:
        if candidate is None:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except OSError:  # not executable after all
            continue
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    message = f"no Python {version} to test the generated project with: none in {versions}, none on PATH"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
def say(pytestconfig) -> Callable[[str], None]:
    """A line on the terminal at once, for a test that takes minutes: pytest shows a test's output only at its end."""
    plugins = pytestconfig.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")  # None in a pytest-xdist worker

    def line(text: str) -> None:
        if reporter is not None:
            with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
                reporter.write_line(f"  {text}")
                reporter.flush()

    return line


def run_project_tests(say: Callable[[str], None], python: str, project: Path, *paths: str) -> None:
    """The baked project's own pytest (all of it, or `paths`) with `python`, its progress said as it goes; it fails
    on a failing or absent test (pytest exits 5 when it collects none), or after 30 minutes."""
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *paths]
    say(f"{project.name}: pytest {' '.join(paths) or '(every test)'}")
    output = []
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with subprocess.Popen(command, cwd=project, env=ENV, **streams) as tests:  # its pipe closed with it
        deadline = threading.Timer(1800, tests.kill)
        deadline.start()
        for line in tests.stdout:
            output.append(line)
            if re.search(r"\[\s*\d+%\]$", line.rstrip()):  # a line of dots, and how far it has come
                say(line.rstrip())
        deadline.cancel()
    assert tests.returncode == 0, "".join(output)[-9000:]


@pytest.fixture(scope="session")
def template_url(tmp_path_factory) -> str:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    repo = tmp_path_factory.mktemp("template") / "spiral-template"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is still listed
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "user.name=template tests", "-c", "user.email=tests@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "working tree"], cwd=repo, check=True)
    # `git+`: cookiecutter takes a URL for git only when it says so or contains "git".
    return f"git+file://{repo}"


@pytest.fixture(scope="session")
def cookiecutter_home(tmp_path_factory) -> Path:
    """Where cookiecutter keeps its clones and replay files: not in the user's home directory."""
    home = tmp_path_factory.mktemp("cookiecutter-home")
    (home / "config.yaml").write_text(f"cookiecutters_dir: {home / 'clones'}\nreplay_dir: {home / 'replay'}\n")
    return home


@pytest.fixture(scope="session")
def bake(template_url, cookiecutter_home, tmp_path_factory):
    """bake("license=none", ...) runs `cookiecutter --no-input -o . <url> key=value...` in a new empty directory."""

    def run(*answers: str, options: tuple[str, ...] = ("--no-input",), stdin: str = "", into: str = ".") -> Bake:
        output = tmp_path_factory.mktemp("out")
        result = subprocess.run(
            [COOKIECUTTER, *options, "-o", into, template_url, *answers],
            cwd=output,
            # PWD as a shell sets it: the post-gen hook reads it to print `cd <slug>`.
            env={**ENV, "COOKIECUTTER_CONFIG": str(cookiecutter_home / "config.yaml"), "PWD": str(output)},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Bake(result, output)

    return run
