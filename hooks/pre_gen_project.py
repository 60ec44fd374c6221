"""Check every answer; bad ones stop the bake with one line each on stderr that says how to fix it.

The rules in `problems` run twice. First inside cookiecutter, from local_extensions.py, while it renders
its variables: that is before it creates the project directory, which matters because this hook runs
only after the directory exists, and cookiecutter then removes just the last part of it (a slug `a/b`
would leave `a/` behind; an empty slug or `.` would stop cookiecutter with a message that names no
answer). Then here, as the pre-gen hook, for `cookiecutter --replay`, which skips that rendering.

`normalised` gives a choice's canonical spelling (`mit` -> `MIT`, `y` -> `yes`); local_extensions.py applies it
to every answer before the checks, so that the spelling that lands in pyproject.toml and LICENSE is the
canonical one. Under `--replay` this hook sees the answers as the replay file holds them and refuses any other.

Cookiecutter renders this file with Jinja before running it. Each answer comes in as JSON inside a raw
string: Jinja's tojson escapes quotes, backslashes and apostrophes (as \\u0027) and writes no newline, so
no answer can end the string early, and json.loads gives back the exact text.
"""

import json
import keyword
import re
import sys
import unicodedata
from email.headerregistry import Address

from slugify import slugify  # python-slugify: cookiecutter's own `slugify` filter, which makes the default slug

# Imported by the generated project, its dependencies or its dev tools: a package of the same name would shadow
# them. The top-level modules of the distributions installed with the project's dependencies and dev extra
# (torch 2.13, lightning 2.6.6, tensorboard, ...: protobuf's `google`, grpcio's `grpc`, ...) and of cookiecutter.
DEPENDENCIES = set(
    "absl aiohappyeyeballs aiohttp aiosignal arrow attr attrs binaryornot certifi charset_normalizer click contourpy"
    " cookiecutter cycler dateutil docstring_parser filelock frozenlist fsspec functorch google grpc idna iniconfig"
    " isympy jinja2 jsonargparse kiwisolver lightning lightning_fabric lightning_utilities markdown markdown_it"
    " markupsafe matplotlib mdurl mpl_toolkits mpmath multidict networkx numpy packaging pip pluggy propcache py"
    " pygments pylab pyparsing pytest pytorch_lightning requests rich ruff setuptools slugify sympy tensorboard"
    " tensorboard_data_server text_unidecode torch torchgen torchmetrics tqdm typeshed_client typing_extensions"
    " tzdata urllib3 uv werkzeug yaml yarl".split()
)
# sys.stdlib_module_names leaves out the standard library's own `test` package and its frozen demo modules.
STDLIB = set(sys.stdlib_module_names) | {"test", "__hello__", "__phello__"}
# `python train.py` puts the project root first on sys.path, so `import train` would find train.py, not the package;
# the tests import conftest.py by that name, and the benchmark imports benchmarks/ as a namespace package.
SCRIPTS = {"train", "train_torch", "train_fabric", "conftest", "benchmarks"}
# Names become directories and files (<package>.egg-info, the wheel's name, ...): well within a file name's 255 bytes.
LONGEST = 100
LICENSES = ("MIT", "BSD-3-Clause", "Apache-2.0", "none")
TEXT_FIELDS = ("project_name", "project_slug", "package_name", "author_name", "author_email", "description")
# A directory name that is also a valid distribution name (PEP 508): no path separators, no `.` or `..`.
SLUG = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
# PEP 8: "short, all-lowercase names"; ASCII, because pip, setuptools and file systems disagree on the rest.
PACKAGE = re.compile(r"[a-z_][a-z0-9_]*")
# A dot-atom before the @ (no leading, trailing or double dots), DNS labels after it: what pip's build backend
# (email.headerregistry.Address, checked below too) accepts in the package's metadata.
ATOM, LABEL = r"[A-Za-z0-9%+_-]+", r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
EMAIL = re.compile(rf"{ATOM}(\.{ATOM})*@{LABEL}(\.{LABEL})+")


def package_problem(name: str) -> str | None:
    if keyword.iskeyword(name):
        return "is a Python keyword"
    if not name.isidentifier():
        return "is not a Python identifier (letters, digits and '_', not starting with a digit)"
    if not PACKAGE.fullmatch(name):
        return "is not a PEP 8 package name (lowercase ASCII letters, digits and '_')"
    if len(name) > LONGEST:
        return f"is longer than {LONGEST} characters"
    if name in STDLIB:
        return "would shadow the standard-library module of that name"
    if name in DEPENDENCIES:
        return "would shadow the package of that name that the project imports"
    if name in SCRIPTS:
        return (
            "is taken by the project's own files (train.py, train_torch.py, train_fabric.py, tests/conftest.py, "
            "benchmarks/)"
        )
    return None


def metadata_address(name: str, email: str) -> bool:
    """Whether the build backend can write `name <email>` into the package's metadata, as setuptools does."""
    try:
        str(Address(display_name=name, addr_spec=email))
    except (ValueError, IndexError):  # email's parser raises HeaderParseError or InvalidHeaderDefect, ValueErrors
        return False
    return True


def suggestion(answers: dict) -> str:
    """A package name made from the project's slug that passes package_problem, for the hint."""
    name = re.sub(r"[^a-z0-9_]", "_", str(answers.get("project_slug", "")).lower()) or "spiral_classifier"
    name = (f"pkg_{name}" if name[0].isdigit() else name)[: LONGEST - len("_pkg")]
    return name if package_problem(name) is None else f"{name}_pkg"


def slug_suggestion(answers: dict) -> str:
    """A slug made from the project's name as cookiecutter makes the default one, for the hint."""
    slug = slugify(str(answers.get("project_name", "")))
    return slug if SLUG.fullmatch(slug) and len(slug) <= LONGEST else "spiral-classifier"


# The choices' spellings, lowercase, and the canonical one each stands for.
SPELLINGS = {
    "license": {choice.lower(): choice for choice in LICENSES},
    "github_actions": {"yes": "yes", "y": "yes", "no": "no", "n": "no"},
}


def normalised(key: str, value):
    """A choice's canonical spelling for any case of it (`mit` -> `MIT`, `NONE` -> `none`, `Y` -> `yes`); any
    other answer as it is, for problems to refuse or pass."""
    if key in SPELLINGS and isinstance(value, str):
        return SPELLINGS[key].get(value.strip().lower(), value)
    return value


def refusal(key: str, what: str, passed: str, typed_hint: str, typed: bool) -> str:
    """One line: what is wrong with an answer, then how to fix it, in the words of where it was given: what to
    type at a prompt, or the key=value to pass on the command line."""
    return f"error: {key} {what}; " + (f"type {typed_hint}" if typed else f"pass {key}={passed}")


def problems(answers: dict, typed: bool = False) -> list[str]:
    """Everything wrong with the answers, one line each; [] when all is well. `typed`: the answers were typed at
    cookiecutter's prompts, so each line ends with what to type instead of the key=value to pass.

    Checks only the answers it is given: under `--replay` local_extensions.py may see a partial set.
    """
    found = []
    for key in TEXT_FIELDS:
        value = answers.get(key)
        # Control characters would break the TOML strings in pyproject.toml and the one-line metadata fields.
        if value is not None and any(unicodedata.category(c) == "Cc" for c in str(value)):
            what = f"{value!r} contains a control character (a newline, a tab, ...)"
            found.append(refusal(key, what, "<one line>", "one line of plain text", typed))
    for key in ("project_name", "author_name"):
        if key in answers and not str(answers[key]).strip():
            found.append(refusal(key, "is empty", "<text>", "some text", typed))
    if "project_slug" in answers:
        slug = str(answers["project_slug"])
        example = slug_suggestion(answers)
        if len(slug) > LONGEST:
            what = f"is longer than {LONGEST} characters"
            found.append(refusal("project_slug", what, "<a shorter name>", f"a shorter name, e.g. {example}", typed))
        elif not SLUG.fullmatch(slug):
            what = (
                f"{slug!r} is not a plain directory name (lowercase letters, digits, '.', '_', '-', starting and"
                " ending with a letter or digit)"
            )
            found.append(refusal("project_slug", what, f"<name>, e.g. {example}", f"a name such as {example}", typed))
    if "package_name" in answers:
        name = str(answers["package_name"])
        why = package_problem(name)
        if why:
            example = suggestion(answers)
            hints = f"<name>, e.g. {example}", f"a name such as {example}"
            found.append(refusal("package_name", f"{name!r} {why}", *hints, typed))
    if "author_email" in answers:
        email = str(answers["author_email"])
        if not EMAIL.fullmatch(email) or not metadata_address(str(answers.get("author_name", "")), email):
            what = f"{email!r} is not of the form name@example.com"
            found.append(refusal("author_email", what, "<address>", "an address of that form", typed))
    if "license" in answers and answers["license"] not in LICENSES:
        what = f"{answers['license']!r} is not one of {', '.join(LICENSES)}"
        found.append(refusal("license", what, "<one of them>", "one of them", typed))
    if "github_actions" in answers and answers["github_actions"] not in ("yes", "no"):
        what = f"{answers['github_actions']!r} is not yes or no"
        found.append(refusal("github_actions", what, "yes or no", "yes or no (y or n)", typed))
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
