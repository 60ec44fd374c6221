"""The Jinja filters cookiecutter.json renders with: `check_typed` after each prompt, `check_answers` once all are
given (`__answers_checked`), and `package_name` for that answer's default; `scratch_bake` for the post-gen hook.

They apply the rules of hooks/pre_gen_project.py inside cookiecutter, at the prompts and before
cookiecutter creates any directory (the hook itself runs only once the project directory exists; its
docstring says why that is too late). Cookiecutter imports this module because cookiecutter.json names
it in `_extensions`, with the template's root on sys.path.

Cookiecutter tells its filters only the answers. What else they need (whether the answers are typed, where
the project goes, whether cruft is baking a scratch copy) they read from the functions up the stack that
called them: cookiecutter's and cruft's, checked with cookiecutter 2.7.1 and cruft 2.16.0.
"""

import importlib.util
import inspect
import json
import os
import re
import sys
from pathlib import Path

from cookiecutter.prompt import read_user_variable, render_variable
from cookiecutter.utils import simple_filter
from jinja2.ext import Extension


def load_rules():
    # Not `import hooks.pre_gen_project`: `hooks` is a common name, and the hook is a script, not a package.
    spec = importlib.util.spec_from_file_location(
        "pre_gen_project", Path(__file__).parent / "hooks" / "pre_gen_project.py"
    )
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    return rules


@simple_filter
def package_name(slug) -> str:
    """The default package name: made from the slug so that it passes the package checks (`1abc` -> `pkg_1abc`,
    `json` -> `json_pkg`)."""
    return load_rules().suggestion({"project_slug": slug})


def frames():
    """The frames up the stack, innermost first."""
    frame = inspect.currentframe()
    while frame is not None:
        yield frame
        frame = frame.f_back


def where(frame) -> tuple[str, str]:
    return frame.f_globals.get("__name__", ""), frame.f_code.co_name


def prompting() -> dict | None:
    """The locals of cookiecutter's prompting function up the stack (its `no_input`, and what it asks with), or
    None: under --replay cookiecutter prompts for nothing."""
    for frame in frames():
        if where(frame) == ("cookiecutter.prompt", "prompt_for_config"):
            return frame.f_locals
    return None


def stop(found: list[str]) -> None:
    if found:
        print("\n".join(found), file=sys.stderr)
        # SystemExit passes through Jinja and cookiecutter untouched: exit 1 with our lines only, nothing created.
        raise SystemExit(1)


# The functions that bake the user's project, with the output_dir and overwrite_if_exists they bake it with.
DESTINATIONS = {("cookiecutter.main", "cookiecutter"), ("cruft._commands.create", "create")}
# The function with which `cruft update` and `cruft diff` bake the template's commits into temporary directories
# they delete afterwards, to diff them: copies no user will see, written over if they exist.
SCRATCH = ("cruft._commands.utils.generate", "_generate_output")


def existing(answers) -> str | None:
    """The project's directory, as the command named it, when it already exists and the command was not told to
    write into it (--overwrite-if-exists); cookiecutter would stop there with a message that names no answer,
    and cruft with a traceback."""
    slug = str(answers.get("project_slug", ""))
    for frame in frames():
        if where(frame) == SCRATCH:
            return None
        if where(frame) in DESTINATIONS:
            if frame.f_locals.get("overwrite_if_exists"):
                return None
            path = os.path.normpath(os.path.join(str(frame.f_locals["output_dir"]), slug))
            return path if os.path.exists(path) else None
    return None


def ask_again(asking: dict, answers, key: str) -> str:
    """Cookiecutter's prompt for `key` once more, as it first asked it: its text, its [n/N], its default."""
    default = render_variable(asking["env"], asking["context"]["cookiecutter"][key], answers)
    return read_user_variable(key, default, asking["prompts"], asking["prefix"])


@simple_filter
def check_typed(answers, key: str) -> str:
    """After each prompt (cookiecutter.json's `__typed_<key>`): a bad answer typed there is refused in one line and
    asked for again, until one passes; then the next prompt's default is made from it. Answers given otherwise
    are all checked together by check_answers.

    `answers` is the dict that cookiecutter fills as it prompts: what is written into it here is the answer
    from now on, for the later defaults and the project's files."""
    if key not in answers:
        return ""
    rules = load_rules()
    answers[key] = rules.normalised(key, answers[key])
    asking = prompting()
    if asking is None or asking.get("no_input", True):
        return ""
    while found := typed_problems(rules, answers, key):
        print("\n".join(found), file=sys.stderr, flush=True)
        try:
            answers[key] = rules.normalised(key, ask_again(asking, answers, key))
        except EOFError:  # no more input: the line above says what was wrong, nothing is written
            print(flush=True)  # ends the prompt's line
            raise SystemExit(1) from None
    return ""


def typed_problems(rules, answers, key: str) -> list[str]:
    found = [line for line in rules.problems(dict(answers), typed=True) if line.startswith(f"error: {key} ")]
    if key == "project_slug" and not found and (path := existing(answers)):
        found.append(f"error: {path} already exists; type another name")
    return found


# The functions that hold the answers given as key=value (or cruft's --extra-context; `cruft update`: the
# project's own answers), before cookiecutter drops those it does not know.
GIVEN_IN = ("cookiecutter", "generate_cookiecutter_context")


def given() -> dict:
    """The answers given as key=value or --extra-context; {} under --replay. Cookiecutter hands its filters only
    the known ones, so this asks up the stack."""
    for frame in frames():
        if frame.f_code.co_name in GIVEN_IN and "extra_context" in frame.f_locals:
            return frame.f_locals["extra_context"] or {}
    return {}


class AnswersAsText(Extension):
    """Answers are text. Cookiecutter renders every value with Jinja, answers given as key=value too, so that
    `{{ 7*7 }}` would become 49 and `{{ 1/0 }}` a traceback; each reaches Jinja through here first, and an answer
    that holds Jinja's delimiters is handed on as a raw block, which renders as the text it is."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        if name is not None or not JINJA.search(source) or source not in map(str, given().values()):
            return source  # a template's file, or one of cookiecutter.json's own values
        # A raw block ends at the first endraw tag: one inside the answer is written as a string expression.
        text = ENDRAW.sub(lambda tag: "{% endraw %}{{ " + json.dumps(tag.group()) + " }}{% raw %}", source)
        return "{% raw %}" + text + "{% endraw %}"


JINJA = re.compile(r"\{[{%#]")
ENDRAW = re.compile(r"\{%-?\s*endraw\s*-?%\}")


@simple_filter
def check_answers(answers) -> str:
    rules = load_rules()
    for key in rules.SPELLINGS:  # `license=mit` is MIT, as at the prompt
        if key in answers:
            answers[key] = rules.normalised(key, answers[key])
    known = [key for key in answers if not key.startswith("_")]
    unknown = [
        f"error: {key} is not one of this template's answers ({', '.join(known)}); pass only those"
        for key in given()
        if key not in known and not key.startswith("_")  # cruft update passes the private ones back too
    ]
    found = unknown + rules.problems(dict(answers))
    if not any(line.startswith("error: project_slug ") for line in found) and (path := existing(answers)):
        fix = "pass project_slug=<another name>, or --overwrite-if-exists to write into it"
        found.append(f"error: {path} already exists; {fix}")
    stop(found)
    return ""


@simple_filter
def scratch_bake(context) -> bool:
    """Whether the post-gen hook being rendered is for one of cruft's scratch copies, not the user's project."""
    return any(where(frame) == SCRATCH for frame in frames())
