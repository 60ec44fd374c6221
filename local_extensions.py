"""The Jinja filters cookiecutter.json renders with: `check_typed` after each prompt, `check_answers` once all are
given (`__answers_checked`), and `package_name` for that answer's default.

They apply the rules of hooks/pre_gen_project.py inside cookiecutter, at the prompts and before
cookiecutter creates any directory (the hook itself runs only once the project directory exists; its
docstring says why that is too late). Cookiecutter imports this module because cookiecutter.json names
it in `_extensions`, with the template's root on sys.path.
"""

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

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


def typed() -> bool:
    """Whether the answers are being typed at cookiecutter's prompts: not --no-input, not a replay. Cookiecutter tells
    its filters neither, so this asks the prompting function up the stack."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "prompt_for_config":
            return not frame.f_locals.get("no_input", True)
        frame = frame.f_back
    return False


def stop(found: list[str]) -> None:
    if found:
        print("\n".join(found), file=sys.stderr)
        # SystemExit passes through Jinja and cookiecutter untouched: exit 1 with our lines only, nothing created.
        raise SystemExit(1)


@simple_filter
def check_typed(answers, key: str) -> str:
    """After each prompt (cookiecutter.json's `__typed_<key>`): a bad answer typed there is refused at once, before
    the next prompt. Answers given otherwise are all checked together by check_answers."""
    if typed():
        stop([line for line in load_rules().problems(dict(answers)) if line.startswith(f"error: {key} ")])
    return ""


# The functions that hold the answers given as key=value (or cruft's --extra-context; `cruft update`: the
# project's own answers), before cookiecutter drops those it does not know.
GIVEN_IN = ("cookiecutter", "generate_cookiecutter_context")


def given() -> dict:
    """The answers given as key=value or --extra-context; {} under --replay. Cookiecutter hands its filters only
    the known ones, so this asks up the stack."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name in GIVEN_IN and "extra_context" in frame.f_locals:
            return frame.f_locals["extra_context"] or {}
        frame = frame.f_back
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
    known = [key for key in answers if not key.startswith("_")]
    unknown = [
        f"error: {key} is not one of this template's answers ({', '.join(known)}); pass only those"
        for key in given()
        if key not in known and not key.startswith("_")  # cruft update passes the private ones back too
    ]
    stop(unknown + load_rules().problems(dict(answers)))
    return ""
