"""Hostile but legal answers bake a working project; each invalid answer stops with one line and no directory."""

import json
import tomllib
import warnings

import pytest

HOSTILE = {
    "project_name": 'Ünïcödé "Spiral" \\ Tool\'s 🌀',
    "description": 'Say "hi" \\n isn\'t a newline; C:\\path\\ – ½ ✓ 🌀',
    "author_name": 'Zoë O\'Brien "the" \\ Dev',
}


@pytest.fixture(scope="session")
def hostile(bake):
    done = bake(*(f"{key}={value}" for key, value in HOSTILE.items()), "license=Apache-2.0")
    (project,) = done.output.iterdir()  # the slug is whatever slugify made of the name
    assert done.result.returncode == 0, done.result.stdout + done.result.stderr
    return project


def test_hostile_answers_round_trip_through_pyproject(hostile):
    metadata = tomllib.loads((hostile / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert metadata["name"] == hostile.name
    assert metadata["description"] == HOSTILE["description"]
    assert metadata["authors"] == [{"name": HOSTILE["author_name"], "email": "you@example.com"}]


def test_hostile_answers_appear_verbatim_in_readme_and_license(hostile):
    assert HOSTILE["project_name"] in (hostile / "README.md").read_text(encoding="utf-8")
    assert HOSTILE["author_name"] in (hostile / "LICENSE").read_text(encoding="utf-8")


def test_hostile_answers_keep_python_valid(hostile):
    # Warnings as errors: an answer pasted into a string literal can make an invalid escape (`\ `), which
    # Python 3.12 reports as a SyntaxWarning and a later version will refuse.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in sorted(hostile.rglob("*.py")):
            compile(path.read_text(encoding="utf-8"), str(path), "exec")


INVALID = [
    ("package_name=class", "package_name"),
    ("package_name=1abc", "package_name"),
    ("package_name=my-pkg", "package_name"),
    ("package_name=torch", "package_name"),
    ("package_name=lightning", "package_name"),
    ("package_name=json", "package_name"),
    ("package_name=os", "package_name"),
    ("package_name=train", "package_name"),
    ("project_slug=../evil", "project_slug"),
    ("project_slug=a/b", "project_slug"),
    ("project_slug=", "project_slug"),
    ("project_slug=.", "project_slug"),
    ("author_email=nope", "author_email"),
    ("author_email=a@b", "author_email"),
    ("project_name=two\nlines", "project_name"),
    ("author_name=", "author_name"),
]


@pytest.mark.parametrize(("answer", "field"), INVALID, ids=[answer for answer, _ in INVALID])
def test_invalid_answer_stops_with_one_line_and_leaves_nothing(bake, answer, field):
    done = bake(answer)
    stderr = done.result.stderr.strip()
    assert done.result.returncode != 0
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"error: {field} "), stderr
    assert f"pass {field}=" in stderr  # says how to fix it
    assert list(done.output.iterdir()) == []
    assert not (done.output.parent / "evil").exists()


def test_invalid_answer_does_not_create_the_output_directory(bake):
    done = bake("package_name=json", into="new/projects")  # cookiecutter would create both levels
    assert done.result.returncode != 0
    assert list(done.output.iterdir()) == []


def test_replay_is_checked_by_the_pre_gen_hook(bake, cookiecutter_home, tmp_path):
    """`--replay-file` skips the in-process check, so the pre-gen hook must stop a bad answer and clean up."""
    assert bake().result.returncode == 0  # writes the replay file
    replay = json.loads((cookiecutter_home / "replay" / "spiral-template.json").read_text())
    replay["cookiecutter"]["package_name"] = "json"
    bad = tmp_path / "bad-replay.json"
    bad.write_text(json.dumps(replay))
    # No --no-input with a replay; "yes": cookiecutter asks before it replaces its earlier clone of the template.
    done = bake(options=("--replay-file", str(bad)), stdin="yes\n")
    stderr = done.result.stderr.strip()
    assert done.result.returncode != 0
    assert stderr.splitlines() == [stderr] and stderr.startswith("error: package_name 'json' "), stderr
    assert list(done.output.iterdir()) == []
