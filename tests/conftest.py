"""Bake the template as users do: the real `cookiecutter` program, from a git URL.

cookiecutter bakes what a git URL has committed, so the session first commits a copy of the working tree
(tracked files, and untracked ones that git does not ignore) to a scratch repository: the tests see
uncommitted edits, and never a file that .gitignore keeps out of a real clone.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The command-line program of this environment (next to its python), else the first on PATH.
COOKIECUTTER = str(Path(sys.executable).with_name("cookiecutter"))
if not Path(COOKIECUTTER).exists():
    COOKIECUTTER = shutil.which("cookiecutter")
# Every subprocess gets one thread: the baked project trains tiny models on the CPU, where torch's
# intra-op threads cost more in synchronisation than they save (much faster on a 2-core machine).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@dataclass
class Bake:
    result: subprocess.CompletedProcess
    output: Path  # the directory cookiecutter wrote into (`-o`)

    def project(self) -> Path:
        """The one directory the bake made."""
        assert self.result.returncode == 0, f"cookiecutter failed:\n{self.result.stdout}\n{self.result.stderr}"
        [project] = self.output.iterdir()
        return project


def run_project_tests(python: str, project: Path, *paths: str) -> None:
    """The baked project's own pytest (all of it, or `paths`) with `python`; it fails on a failing or absent test
    (pytest exits 5 when it collects none)."""
    tests = subprocess.run(
        [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *paths],
        cwd=project,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert tests.returncode == 0, tests.stdout[-6000:] + tests.stderr[-3000:]


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
