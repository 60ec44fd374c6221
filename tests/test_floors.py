"""A floor the generated project declares is a floor that is tested: its equivalence, resume and CLI tests pass with
the lowest version of every direct dependency its ranges allow (uv's `--resolution lowest-direct`).

torch comes from constraints.txt, the CPU build of 2.13.0 the equality claims are checked on (any other torch is a
download of several GB), and the project declares that version as its floor.
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

from conftest import ENV, ROOT, run_project_tests

UV = str(Path(sys.executable).with_name("uv"))
TORCH = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))


@pytest.mark.slow
def test_the_baked_project_passes_at_its_declared_floors(bake, tmp_path):
    project = bake().project()
    venv = tmp_path / "lowest"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # torch alone, from pip (its local CPU build); uv then resolves the rest, torch's own requirements too, at
    # their floors: a dependency installed with torch would be kept at its newest.
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", TORCH], env=ENV, check=True, capture_output=True)
    (tmp_path / "torch.txt").write_text(TORCH + "\n")
    install = subprocess.run(
        [UV, "pip", "install", "--python", python, "--resolution", "lowest-direct"]
        + ["-c", str(tmp_path / "torch.txt"), "-e", f"{project}[dev]"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([python, "-m", "pip", "list"], capture_output=True, text=True, check=True).stdout
    installed = {line.split()[0].lower(): line.split()[1] for line in listed.splitlines()[2:]}
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in [*metadata["dependencies"], *metadata["optional-dependencies"]["dev"]]:
        name, floor = re.fullmatch(r"([\w-]+)(?:\[\w+\])?>=([\w.]+)(?:,<\w+)?", requirement).groups()
        floors[name.lower()] = floor
    assert TORCH == f"torch=={floors.pop('torch')}.0"
    # What lowest-direct installed is each floor itself ("1.4" is 1.4.0), not a newer release.
    pairs = {name: (installed[name], floor) for name, floor in floors.items()}  # (installed, declared)
    assert {name: pair for name, pair in pairs.items() if Version(pair[0]) != Version(pair[1])} == {}
    run_project_tests(python, project, "tests/test_equivalence.py", "tests/test_resume.py", "tests/test_cli.py")
