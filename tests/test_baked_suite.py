"""The default project, installed as its README says (`pip install -e ".[dev]"`), passes its own tests."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import ENV, run_project_tests


@pytest.mark.slow
def test_baked_project_passes_its_own_test_suite(bake, tmp_path):
    project = bake().project()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Give the new environment this one's packages (torch and the rest), so that pip installs only the project.
    # Not `venv --system-site-packages`: when this interpreter is itself a venv (.ci/run's), that option exposes
    # the base interpreter's site-packages, not this venv's. A .pth file that adds a site directory does.
    inner = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = sysconfig.get_path("purelib")
    (Path(inner) / "outer-site-packages.pth").write_text(f"import site; site.addsitedir({outer!r})\n")

    install = subprocess.run(
        [python, "-m", "pip", "install", "-e", f"{project}[dev]"], env=ENV, capture_output=True, text=True
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    installed = next(line for line in install.stdout.splitlines() if line.startswith("Successfully installed"))
    assert "spiral-classifier-" in installed and "torch-" not in installed, installed  # no second torch download

    run_project_tests(str(python), project)
