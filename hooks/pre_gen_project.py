"""Check every answer; bad ones stop the bake with one line each on stderr that says how to fix it.

The rules in `problems` run twice. First inside cookiecutter, from local_extensions.py, while it renders
its variables: that is before it creates the project directory, which matters because this hook runs
only after the directory exists, and cookiecutter then removes just the last part of it (a slug `a/b`
would leave `a/` behind; an empty slug or `.` would stop cookiecutter with a message that names no
answer). Then here, as the pre-gen hook, for `cookiecutter --replay`, which skips that rendering.

Cookiecutter renders this file with Jinja before running it. Each answer comes in as JSON inside a raw
string: Jinja's tojson escapes quotes, backslashes and apostrophes (as \\u0027) and writes no newline, so
no answer can end the string early, and json.loads gives back the exact text.
"""

import json
import keyword
import re
import sys
import unicodedata

# Imported by the generated project or by its dev tools: a package of the same name would shadow them.
DEPENDENCIES = {
    "torch",
    "lightning",
    "pytorch_lightning",
    "lightning_fabric",
    "torchmetrics",
    "tensorboard",
    "jsonargparse",
    "matplotlib",
    "numpy",
    "pytest",
    "ruff",
}
# `python train.py` puts the project root first on sys.path, so `import train` would find train.py, not the package.
SCRIPTS = {"train", "train_torch"}
LICENSES = ("MIT", "BSD-3-Clause", "Apache-2.0", "none")
TEXT_FIELDS = ("project_name", "project_slug", "package_name", "author_name", "author_email", "description")
# A directory name that is also a valid distribution name (PEP 508): no path separators, no `.` or `..`.
SLUG = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
# PEP 8: "short, all-lowercase names"; ASCII, because pip, setuptools and file systems disagree on the rest.
PACKAGE = re.compile(r"[a-z_][a-z0-9_]*")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def package_problem(name: str) -> str | None:
    if keyword.iskeyword(name):
        return "is a Python keyword"
    if not name.isidentifier():
        return "is not a Python identifier (letters, digits and '_', not starting with a digit)"
    if not PACKAGE.fullmatch(name):
        return "is not a PEP 8 package name (lowercase ASCII letters, digits and '_')"
    if name in sys.stdlib_module_names:
        return "would shadow the standard-library module of that name"
    if name in DEPENDENCIES:
        return "would shadow the package of that name that the project imports"
    if name in SCRIPTS:
        return f"would be hidden by the project's own {name}.py"
    return None


def suggestion(answers: dict) -> str:
    """A package name made from the project's slug that passes package_problem, for the hint."""
    name = re.sub(r"[^a-z0-9_]", "_", str(answers.get("project_slug", "")).lower()) or "spiral_classifier"
    name = f"pkg_{name}" if name[0].isdigit() else name
    return name if package_problem(name) is None else f"{name}_pkg"


def problems(answers: dict) -> list[str]:
    """Everything wrong with the answers, one line each; [] when all is well.

    Checks only the answers it is given: under `--replay` local_extensions.py may see a partial set.
    """
    found = []
    for key in TEXT_FIELDS:
        value = answers.get(key)
        # Control characters would break the TOML strings in pyproject.toml and the one-line metadata fields.
        if value is not None and any(unicodedata.category(c) == "Cc" for c in str(value)):
            found.append(
                f"error: {key} {value!r} contains a control character (a newline, a tab, ...); pass {key}=<one line>"
            )
    for key in ("project_name", "author_name"):
        if key in answers and not str(answers[key]).strip():
            found.append(f"error: {key} is empty; pass {key}=<text>")
    if "project_slug" in answers:
        slug = str(answers["project_slug"])
        if not SLUG.fullmatch(slug):
            found.append(
                f"error: project_slug {slug!r} is not a plain directory name (lowercase letters, digits, '.', '_', '-',"
                " starting and ending with a letter or digit); pass project_slug=<name>, e.g. spiral-classifier"
            )
    if "package_name" in answers:
        name = str(answers["package_name"])
        why = package_problem(name)
        if why:
            found.append(f"error: package_name {name!r} {why}; pass package_name=<name>, e.g. {suggestion(answers)}")
    if "author_email" in answers:
        email = str(answers["author_email"])
        if not EMAIL.fullmatch(email):
            found.append(
                f"error: author_email {email!r} is not of the form name@example.com; pass author_email=<address>"
            )
    if "license" in answers and answers["license"] not in LICENSES:
        found.append(
            f"error: license {answers['license']!r} is not one of {', '.join(LICENSES)}; pass license=<one of them>"
        )
    if "github_actions" in answers and answers["github_actions"] not in ("yes", "no"):
        found.append(
            f"error: github_actions {answers['github_actions']!r} is not yes or no; pass github_actions=yes or no"
        )
    return found


def main() -> None:
    # Single quotes, kept from the formatter: tojson's output is full of double quotes.
    # fmt: off
    answers = {
        "project_name": json.loads(r'{{ cookiecutter.project_name | tojson }}'),
        "project_slug": json.loads(r'{{ cookiecutter.project_slug | tojson }}'),
        "package_name": json.loads(r'{{ cookiecutter.package_name | tojson }}'),
        "author_name": json.loads(r'{{ cookiecutter.author_name | tojson }}'),
        "author_email": json.loads(r'{{ cookiecutter.author_email | tojson }}'),
        "description": json.loads(r'{{ cookiecutter.description | tojson }}'),
        "license": json.loads(r'{{ cookiecutter.license | tojson }}'),
        "github_actions": json.loads(r'{{ cookiecutter.github_actions | tojson }}'),
    }
    # fmt: on
    found = problems(answers)
    if found:
        sys.exit("\n".join(found))  # prints the lines to stderr, exits 1; cookiecutter then removes the project


if __name__ == "__main__":
    main()
