"""The default project, installed as its README says (`pip install -e ".[dev]"`), passes its own tests on the newest
Python it promises, as the newest cells of its CI run them (tests/test_floors.py: the oldest Python, at the floors).

A new environment of that Python, so nothing is shared with this one: torch first, as the project's CI installs it,
then the project, both within constraints.txt, the versions the equality claims are checked on. torch 2.13.0's CPU
build lies on this disk for Python 3.11 alone; for another Python pip takes PyPI's build of the same release with its
CUDA libraries (about 3 GB), and the tests run on the CPU.
"""

import subprocess

import pytest

from conftest import ENV, NEWEST_PYTHON, ROOT, python_interpreter, run_project_tests


@pytest.mark.slow
def test_baked_project_passes_its_own_test_suite_on_the_newest_python(bake, tmp_path, say):
    project = bake().project()
    say(f"installing the project on Python {NEWEST_PYTHON}, torch first (PyPI's build: about 3 GB)")
    venv = tmp_path / "venv"
    subprocess.run([python_interpreter(NEWEST_PYTHON), "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-c", str(ROOT / "constraints.txt")]

    torch = subprocess.run([*pip, "torch"], env=ENV, capture_output=True, text=True)
    assert torch.returncode == 0, torch.stdout[-3000:] + torch.stderr[-3000:]
    install = subprocess.run([*pip, "-e", f"{project}[dev]"], env=ENV, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed = next(line for line in install.stdout.splitlines() if line.startswith("Successfully installed"))
    names = {item.rsplit("-", 1)[0] for item in installed.split()[2:]}  # "pytorch-lightning-2.6.6": its name
    assert "spiral-classifier" in names and "torch" not in names, installed  # the torch installed first is kept

    run_project_tests(say, python, project)
