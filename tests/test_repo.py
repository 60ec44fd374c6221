"""The repository keeps its promises to itself: CI runs the README's test command; one install serves all tests."""

import re
import tomllib

from conftest import ROOT


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    (command,) = [line for line in readme_commands() if "pytest" in line]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_readme_bakes_the_template_without_prompts():
    (command,) = [line for line in readme_commands() if "cookiecutter " in line]
    assert "--no-input" in command and "python train.py fit" in command


def test_test_extra_installs_what_the_baked_project_needs(bake):
    baked = tomllib.loads((bake().project() / "pyproject.toml").read_text())["project"]
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert set(baked["dependencies"]) <= set(root)
    assert set(baked["optional-dependencies"]["track"] + baked["optional-dependencies"]["sweep"]) <= set(root)
    assert {"pytest", "ruff"} <= {re.split(r"[<>=\[ ]", requirement)[0] for requirement in root}
