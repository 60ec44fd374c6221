"""The `check_answers` and `package_name` Jinja filters: cookiecutter.json renders `__answers_checked` and the
default `package_name` with them.

It applies the rules of hooks/pre_gen_project.py inside cookiecutter, after the prompts and before
cookiecutter creates any directory (the hook itself runs only once the project directory exists; its
docstring says why that is too late). Cookiecutter imports this module because cookiecutter.json names
it in `_extensions`, with the template's root on sys.path.
"""

import importlib.util
import sys
from pathlib import Path

from cookiecutter.utils import simple_filter


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


@simple_filter
def check_answers(answers) -> str:
    found = load_rules().problems(dict(answers))
    if found:
        print("\n".join(found), file=sys.stderr)
        # SystemExit passes through Jinja and cookiecutter untouched: exit 1 with our line only, nothing created.
        raise SystemExit(1)
    return ""
