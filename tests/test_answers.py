"""Hostile but legal answers bake a working project; each invalid answer stops with one line and no directory."""

import json
import shutil
import tomllib
import warnings

import pytest

# Jinja's delimiters too: answers are text, not templates ({{ 1/0 }} would otherwise stop the bake with a traceback).
HOSTILE = {
    "project_name": 'Ünïcödé "Spiral" \\ Tool\'s 🌀 {{ 7*7 }}',
    "description": 'Say "hi" \\n isn\'t a newline; C:\\path\\ – ½ ✓ 🌀 {{ 1/0 }} {% endraw %} {% if %}',
    "author_name": 'Zoë O\'Brien "the" \\ Dev {# not a comment #}',
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
    ("package_name=train_fabric", "package_name"),
    ("package_name=test", "package_name"),  # the standard library's tests, which sys.stdlib_module_names leaves out
    ("package_name=google", "package_name"),  # protobuf's, which tensorboard imports
    ("package_name=conftest", "package_name"),
    ("package_name=benchmarks", "package_name"),
    ("package_name=" + "a" * 101, "package_name"),
    ("project_slug=" + "a" * 101, "project_slug"),
    ("project_name=" + "A" * 300, "project_slug"),  # its slug: a file name too long for most file systems
    ("project_slug=../evil", "project_slug"),
    ("project_slug=a/b", "project_slug"),
    ("project_slug=", "project_slug"),
    ("project_slug=.", "project_slug"),
    ("author_email=nope", "author_email"),
    ("author_email=a@b", "author_email"),
    ("author_email=a..b@example.com", "author_email"),  # the form, but not an address pip's backend can write
    ("author_email=.a@example.com", "author_email"),
    ("author_email=a@-b.example.com", "author_email"),
    ("project_name=two\nlines", "project_name"),
    ("author_name=", "author_name"),
    ("license=GPL", "license"),
    ("github_actions=maybe", "github_actions"),
]


@pytest.mark.parametrize(("answer", "field"), INVALID, ids=[answer[:40] for answer, _ in INVALID])
def test_invalid_answer_stops_with_one_line_and_leaves_nothing(bake, answer, field):
    done = bake(answer)
    stderr = done.result.stderr.strip()
    assert done.result.returncode != 0
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"error: {field} "), stderr
    assert f"pass {field}=" in stderr  # says how to fix it
    assert list(done.output.iterdir()) == []
    assert not (done.output.parent / "evil").exists()


def test_an_answer_the_template_does_not_ask_for_is_refused(bake):
    """A misspelt key would otherwise be dropped silently, and the default baked in its place."""
    done = bake("project_nmae=Moon")
    [line] = done.result.stderr.strip().splitlines()
    assert done.result.returncode != 0 and line.startswith("error: project_nmae is not one of this template's answers")
    assert list(done.output.iterdir()) == []


def test_every_invalid_answer_is_named_at_once(bake):
    done = bake("package_name=json", "author_email=nope", "license=GPL", "github_actions=maybe")
    lines = done.result.stderr.strip().splitlines()
    assert done.result.returncode != 0
    assert [line.split()[1] for line in lines] == ["package_name", "author_email", "license", "github_actions"], lines
    assert all(line.startswith("error: ") and " pass " in line for line in lines)
    assert list(done.output.iterdir()) == []


def typed(bake, cookiecutter_home, *lines: str, into: str = "."):
    """cookiecutter with `lines` typed at its prompts, in cookiecutter.json's order: name, slug, package, author,
    e-mail, description, license, CI; then stdin ends."""
    # Without its earlier clone of the template, cookiecutter asks nothing before the prompts.
    shutil.rmtree(cookiecutter_home / "clones", ignore_errors=True)
    return bake(options=(), stdin="".join(f"{line}\n" for line in lines), into=into)


def refused_once(done, answer: str) -> str:
    """The one line on stderr, which refuses `answer`; the bake went on and finished."""
    assert done.result.returncode == 0, done.result.stdout + done.result.stderr
    [line] = done.result.stderr.strip().splitlines()
    assert line.startswith("error: ") and repr(answer) in line, line
    assert " pass " not in line and "=<" not in line  # at a prompt there is nothing to pass as key=value
    return line


def test_a_bad_slug_typed_at_its_prompt_is_asked_for_again(bake, cookiecutter_home):
    done = typed(bake, cookiecutter_home, "Moon Classifier", "Moon Classifier!", "lunar-classifier", *[""] * 6)
    line = refused_once(done, "Moon Classifier!")
    assert line.startswith("error: project_slug ") and line.endswith("moon-classifier")  # the hint: from the name
    stdout = done.result.stdout
    assert stdout.count("[2/8] project_slug") == 2 and stdout.count("[3/8] package_name") == 1, stdout
    project = done.project()
    assert project.name == "lunar-classifier"
    assert tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"] == "lunar-classifier"
    # The next prompt's default is made from the answer that passed, not from the one refused.
    assert [path.name for path in (project / "src").iterdir()] == ["lunar_classifier"]


def test_a_bad_license_typed_at_its_prompt_is_asked_for_again(bake, cookiecutter_home):
    done = typed(bake, cookiecutter_home, *[""] * 6, "apache", "apache-2.0", "")
    line = refused_once(done, "apache")
    assert line.startswith("error: license ")
    [prompt, *_] = [text for text in done.result.stdout.split("[") if text.startswith("7/8] license")]
    assert all(choice in prompt for choice in ("MIT", "BSD-3-Clause", "Apache-2.0", "none"))  # it offers them
    project = done.project()
    assert tomllib.loads((project / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert (project / "LICENSE").read_text().startswith("Apache License")


def test_a_bad_yes_or_no_typed_at_its_prompt_is_asked_for_again(bake, cookiecutter_home):
    done = typed(bake, cookiecutter_home, *[""] * 7, "maybe", "n")
    line = refused_once(done, "maybe")
    assert line.startswith("error: github_actions ")
    assert not (done.project() / ".github").exists()


# What each spelling stands for: the license's SPDX name in pyproject.toml (None: no license), whether CI is baked.
SPELLINGS = [
    ("license", "mit", "MIT"),
    ("license", "bsd-3-clause", "BSD-3-Clause"),
    ("license", "APACHE-2.0", "Apache-2.0"),
    ("license", "NONE", None),
    ("github_actions", "y", True),
    ("github_actions", "Y", True),
    ("github_actions", "YES", True),
    ("github_actions", "n", False),
    ("github_actions", "No", False),
]


def baked_as(project, key: str):
    if key == "license":
        license = tomllib.loads((project / "pyproject.toml").read_text())["project"].get("license")
        assert (project / "LICENSE").exists() == (license is not None)
        return license
    return (project / ".github" / "workflows" / "ci.yml").is_file()


@pytest.mark.parametrize(("key", "spelling", "meaning"), SPELLINGS, ids=[f"{k}={s}" for k, s, _ in SPELLINGS])
def test_a_choice_is_taken_in_any_case_at_its_prompt(bake, cookiecutter_home, key, spelling, meaning):
    lines = [""] * 8
    lines[6 if key == "license" else 7] = spelling
    done = typed(bake, cookiecutter_home, *lines)
    assert done.result.returncode == 0 and done.result.stderr == "", done.result.stderr
    assert baked_as(done.project(), key) == meaning


@pytest.mark.parametrize(("key", "spelling", "meaning"), SPELLINGS, ids=[f"{k}={s}" for k, s, _ in SPELLINGS])
def test_a_choice_is_taken_in_any_case_as_key_value(bake, cookiecutter_home, key, spelling, meaning):
    done = bake(f"{key}={spelling}")
    assert done.result.returncode == 0 and done.result.stderr == "", done.result.stderr
    assert baked_as(done.project(), key) == meaning
    # What is recorded is the canonical spelling, the one the project's files were made from.
    replay = json.loads((cookiecutter_home / "replay" / "spiral-template.json").read_text())["cookiecutter"]
    assert replay[key] == {True: "yes", False: "no", None: "none"}.get(meaning, meaning)


def test_stdin_ending_after_a_bad_answer_stops_with_its_line_and_leaves_nothing(bake, cookiecutter_home):
    done = typed(bake, cookiecutter_home, "Moon", "Bad/Slug")  # then no more input
    assert done.result.returncode == 1
    [line] = done.result.stderr.strip().splitlines()  # no traceback, no "Aborted!"
    assert line.startswith("error: project_slug 'Bad/Slug' ")
    assert "Traceback" not in done.result.stdout and "[3/8]" not in done.result.stdout  # not the next prompt
    assert list(done.output.iterdir()) == []


def test_an_existing_project_directory_is_refused_in_one_line(bake, tmp_path):
    (tmp_path / "spiral-classifier").mkdir()
    (tmp_path / "spiral-classifier" / "notes.txt").write_text("mine\n")
    done = bake(into=str(tmp_path))
    assert done.result.returncode != 0
    [line] = done.result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'spiral-classifier'} already exists; ")
    assert "pass project_slug=" in line and "--overwrite-if-exists" in line  # the two ways out
    assert done.result.stdout.strip() == ""  # cookiecutter's own message, which names no answer, never comes
    assert [path.name for path in tmp_path.iterdir()] == ["spiral-classifier"]
    assert [path.name for path in (tmp_path / "spiral-classifier").iterdir()] == ["notes.txt"]


def test_overwrite_if_exists_still_writes_into_an_existing_directory(bake, tmp_path):
    (tmp_path / "spiral-classifier").mkdir()
    done = bake(options=("--no-input", "--overwrite-if-exists"), into=str(tmp_path))
    assert done.result.returncode == 0, done.result.stderr
    assert (tmp_path / "spiral-classifier" / "pyproject.toml").is_file()


def test_an_existing_project_directory_typed_at_the_prompt_is_asked_for_again(bake, cookiecutter_home, tmp_path):
    (tmp_path / "spiral-classifier").mkdir()
    done = typed(bake, cookiecutter_home, "", "", "second-classifier", *[""] * 6, into=str(tmp_path))
    assert done.result.returncode == 0, done.result.stdout + done.result.stderr
    [line] = done.result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'spiral-classifier'} already exists; ") and " pass " not in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["second-classifier", "spiral-classifier"]
    assert list((tmp_path / "spiral-classifier").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "package"), [("1abc", "pkg_1abc"), ("json", "json_pkg"), ("My.Project-2", "my_project_2")]
)
def test_the_default_package_name_passes_the_checks(bake, name, package):
    project = bake(f"project_name={name}").project()
    assert [path.name for path in (project / "src").iterdir()] == [package]


def test_the_hint_suggests_a_package_name_made_from_the_project(bake):
    done = bake("project_name=Moon Classifier", "package_name=json")
    assert done.result.stderr.strip().endswith("pass package_name=<name>, e.g. moon_classifier")


def test_the_hint_suggests_a_slug_made_from_the_name(bake):
    done = bake("project_name=Moon Classifier", "project_slug=Moon Classifier!")
    assert done.result.stderr.strip().endswith("pass project_slug=<name>, e.g. moon-classifier")


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
