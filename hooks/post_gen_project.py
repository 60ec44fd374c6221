"""Remove what the answers switched off, then print the commands that come next.

Cookiecutter renders this file with Jinja and runs it inside the new project. Answers come in as JSON
inside raw strings, as in pre_gen_project.py (its docstring says why that is safe for any answer).

`cruft update` and `cruft diff` bake the template twice into temporary directories of their own, to diff the
two; those bakes run this hook too (its removals shape the diff) but print nothing: the directories are gone by
the time anyone could `cd` into them. local_extensions.py's `scratch_bake` tells them apart while cruft renders
this file.
"""

import json
import os
import shlex
import shutil
from pathlib import Path

# Single quotes, kept from the formatter: tojson's output is full of double quotes.
# fmt: off
SLUG = json.loads(r'{{ cookiecutter.project_slug | tojson }}')
LICENSE = json.loads(r'{{ cookiecutter.license | tojson }}')
GITHUB_ACTIONS = json.loads(r'{{ cookiecutter.github_actions | tojson }}')
OUTPUT_DIR = json.loads(r'{{ cookiecutter._output_dir | default("") | tojson }}')  # cruft does not set it
# A replay file keeps the `_extensions` of its day: one written before scratch_bake existed does not load it.
SCRATCH = json.loads(
    r'{% if "scratch_bake" is filter %}{{ cookiecutter | scratch_bake | tojson }}{% else %}false{% endif %}'
)
# fmt: on

if LICENSE == "none":
    Path("LICENSE").unlink()
if GITHUB_ACTIONS == "no":
    shutil.rmtree(".github")


def next_steps() -> str:
    # cookiecutter has moved into the template by now; the shell's PWD still says where the user typed the command.
    project = os.path.join(OUTPUT_DIR, SLUG) if OUTPUT_DIR else os.getcwd()  # the hook runs in the project
    where = os.path.relpath(project, os.environ["PWD"]) if "PWD" in os.environ else project
    if where.startswith(".."):
        where = project
    return f"""
Created {where}. Next:

    cd {shlex.quote(where)}
    pip install -e ".[dev]"
    python train.py fit
    tensorboard --logdir logs
"""


if not SCRATCH:
    print(next_steps())
