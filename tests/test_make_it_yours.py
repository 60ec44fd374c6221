"""Each recipe of the baked project's docs/make_it_yours.md, applied to a fresh bake as its page says, keeps the
three loops bit-identical: tests/recipe_checks.py runs them in the baked project with its own test helpers.

The page marks each recipe's parts with `<!-- recipe NAME: write PATH -->` (the code block under it is the file),
`<!-- recipe NAME: edit PATH [PATH ...] -->` (a diff: its `-` lines become its `+` lines, `@@` between hunks) and
`<!-- recipe NAME: run -->` (the commands). Negative controls apply a recipe to one loop alone, or run the loops with
the per-sample draws unpinned, and must be caught.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV, ROOT

MARKER = re.compile(r"<!-- recipe (\w+): (write|edit|run)([^\n]*?) -->\n```\w*\n(.*?)```", re.DOTALL)
TINY = ["--trainer.max_epochs=3", "--trainer.enable_model_summary=false"]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"]  # one process: they time kills


def recipe(project: Path, name: str) -> list[tuple[str, list[str], str]]:
    """The parts of recipe `name` on the project's page: (what, paths, the code block)."""
    page = (project / "docs" / "make_it_yours.md").read_text()
    parts = [(what, paths.split(), block) for found, what, paths, block in MARKER.findall(page) if found == name]
    assert parts, f"no recipe {name!r} in docs/make_it_yours.md"
    return parts


def hunks(diff: str) -> list[tuple[str, str]]:
    """(old, new) text of each hunk of a diff block."""
    found = []
    for hunk in diff.split("@@\n"):
        lines = hunk.splitlines()
        old = [line[1:] for line in lines if line[:1] in (" ", "-")]
        new = [line[1:] for line in lines if line[:1] in (" ", "+")]
        found.append(("\n".join(old) + "\n", "\n".join(new) + "\n"))
    return found


def apply(project: Path, name: str, only: str | None = None) -> list[str]:
    """Apply recipe `name` to `project` (its edits to the file `only`, when given); the flags of its commands."""
    flags = None
    for what, paths, block in recipe(project, name):
        if what == "write":
            [path] = paths
            (project / path).write_text(block)
        elif what == "edit":
            for path in paths:
                if only is not None and path != only:
                    continue
                text = (project / path).read_text()
                for old, new in hunks(block):
                    assert text.count(old) == 1, f"{path}: the recipe's lines are not there once:\n{old}"
                    text = text.replace(old, new)
                (project / path).write_text(text)
        else:
            commands = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("python ")]
            scripts = [command[1] for command in commands[:3]]
            assert scripts == ["train.py", "train_torch.py", "train_fabric.py"], scripts
            assert commands[1][2:] == commands[2][2:] == commands[0][3:], "the three loops on the same flags"
            flags = commands[1][2:]
    assert flags is not None, f"recipe {name!r} has no commands"
    return flags


@pytest.fixture(scope="module")
def baked(bake) -> Path:
    return bake().project()


def checked(baked: Path, tmp_path: Path, name: str, *, only=None, resume=False, unpin=False, select="") -> str:
    """A copy of the baked project with recipe `name` applied (its edits to the file `only`; `unpin`: the training
    samples' draws left to the workers' streams); what its recipe checks (those `select` names) print, and whether
    they passed."""
    project = tmp_path / baked.name
    shutil.copytree(baked, project)
    flags = apply(project, name, only)
    if unpin:
        loaders = project / "src" / "spiral_classifier" / "machinery" / "loaders.py"
        pinned = "seeded=tensors is None"
        assert loaders.read_text().count(pinned) == 1
        loaders.write_text(loaders.read_text().replace(pinned, "seeded=False"))
    shutil.copy(ROOT / "tests" / "recipe_checks.py", project / "tests" / "test_recipe.py")
    settings = {"RECIPE_FLAGS": json.dumps([*flags, *TINY]), "RECIPE_RESUME": "1" if resume else ""}
    result = subprocess.run(
        [*PYTEST, "-k", select, "tests/test_recipe.py"],
        cwd=project,
        env={**ENV, "PYTHONPATH": str(project / "src"), **settings},
        capture_output=True,
        text=True,
        timeout=900,
    )
    return result.returncode, result.stdout[-6000:] + result.stderr[-3000:]


def test_the_digits_a_cnn_with_batchnorm_and_augmentation_in_two_workers(baked, tmp_path):
    """The three loops equal; stopped mid-epoch (SIGTERM) or killed (SIGKILL), Lightning and the plain loop go on to
    the uninterrupted run's end."""
    code, said = checked(baked, tmp_path, "digits", resume=True)
    assert code == 0 and re.search(r"\b5 passed\b", said), said


@pytest.mark.parametrize("name", ["metric", "optimizer"])
def test_a_metric_and_an_optimizer_of_your_own(name, baked, tmp_path):
    code, said = checked(baked, tmp_path, name)
    assert code == 0 and re.search(r"\b1 passed\b", said), said


def test_your_csv_of_points(baked, tmp_path):
    """The page's config for a file of 5 features and 5 classes, on such a my.csv in the project."""
    lines = [",".join(f"{(i * 7 + j) % 11 / 3:.3f}" for j in range(5)) + f",{i % 5}" for i in range(200)]
    (baked / "my.csv").write_text("a,b,c,d,e,label\n" + "\n".join(lines) + "\n")
    try:
        code, said = checked(baked, tmp_path, "points")
    finally:
        (baked / "my.csv").unlink()
    assert code == 0 and re.search(r"\b1 passed\b", said), said


# --- negative controls: what the checks must catch ---


def test_an_optimizer_changed_in_one_loop_alone_is_caught(baked, tmp_path):
    code, said = checked(baked, tmp_path, "optimizer", only="src/spiral_classifier/loop.py")
    assert code == 1 and "1 failed" in said, said


def test_augmentation_drawn_from_the_workers_streams_is_caught(baked, tmp_path):
    """With the per-sample seeds off, a run stopped mid-epoch goes on drawing other shifts than the uninterrupted
    run: the checks must fail there (the three loops still agree with each other)."""
    code, said = checked(baked, tmp_path, "digits", resume=True, unpin=True, select="stopped_mid_epoch or three_loops")
    assert code == 1 and "2 failed, 1 passed" in said, said
