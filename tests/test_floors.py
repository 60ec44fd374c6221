"""A floor the generated project declares is a floor that is tested: on the oldest Python its requires-python admits,
its equivalence, resume, CLI, Lightning-internals, trackers, early-stopping and sweep tests pass with the lowest
version of every direct dependency its ranges allow (uv's `--resolution lowest-direct`), as the floors cells of its CI
install them.

torch comes from constraints.txt: 2.13.0, the release the equality claims are checked on, which the project declares
as its floor. Its CPU build lies on this disk for Python 3.11 alone; on the oldest Python pip takes PyPI's build of
the same release, whose CUDA libraries (about 3 GB) uv then installs as torch's requirements. The tests run on the CPU.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from conftest import ENV, FLOORS_RESOLUTION, ROOT, oldest_python, python_interpreter, run_project_tests

UV = str(Path(sys.executable).with_name("uv"))
TORCH = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))


@pytest.mark.slow
def test_the_baked_project_passes_at_its_declared_floors_on_its_oldest_python(bake, tmp_path, say):
    project = bake().project()
    venv = tmp_path / "lowest"
    oldest = oldest_python(project)
    say(f"installing the project at its floors on Python {oldest}, {TORCH} first (PyPI's build: about 3 GB)")
    subprocess.run([python_interpreter(oldest), "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # torch alone, from pip (which looks on this disk); uv then resolves the rest, torch's own requirements too,
    # the direct ones at their floors: a dependency installed with torch would be kept at its newest.
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", TORCH], env=ENV, check=True, capture_output=True)
    (tmp_path / "torch.txt").write_text(TORCH + "\n")
    install = subprocess.run(
        # Wheels only, as in the project's CI: a floor must install without a build from source.
        [UV, "pip", "install", "--python", python, "--resolution", FLOORS_RESOLUTION, "--only-binary", ":all:"]
        + ["-c", str(tmp_path / "torch.txt"), "-e", f"{project}[dev]"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([python, "-m", "pip", "list"], capture_output=True, text=True, check=True).stdout
    installed = {line.split()[0].lower(): line.split()[1] for line in listed.splitlines()[2:]}
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    floors, extras = {}, metadata["optional-dependencies"]
    for requirement in [*metadata["dependencies"], *extras["track"], *extras["sweep"], *extras["dev"]]:
        if requirement.startswith(f"{metadata['name']}["):  # dev takes [track,sweep]: their floors are listed above
            continue
        name, floor = re.fullmatch(r"([\w-]+)(?:\[\w+\])?>=([\w.]+)(?:,<\w+)?", requirement).groups()
        floors[name.lower()] = floor
    assert TORCH == f"torch=={floors.pop('torch')}.0"
    # What lowest-direct installed is each floor itself ("1.4" is 1.4.0), not a newer release.
    pairs = {name: (installed[name], floor) for name, floor in floors.items()}  # (installed, declared)
    assert {name: pair for name, pair in pairs.items() if Version(pair[0]) != Version(pair[1])} == {}
    # test_lightning_internals: the private Lightning names the machinery uses are there at the floor release too.
    tests = ["test_equivalence.py", "test_resume.py", "test_cli.py", "test_lightning_internals.py"]
    tests += ["test_trackers.py", "test_early_stopping.py", "test_sweep.py"]
    run_project_tests(say, python, project, *(f"tests/{name}" for name in tests))
