"""Remove what the answers switched off, then print the commands that come next.

Cookiecutter renders this file with Jinja and runs it inside the new project. Answers come in as JSON
inside raw strings, as in pre_gen_project.py (its docstring says why that is safe for any answer).
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
# fmt: on

if LICENSE == "none":
    Path("LICENSE").unlink()
if GITHUB_ACTIONS == "no":
    shutil.rmtree(".github")

# cookiecutter has moved into the template by now; the shell's PWD still says where the user typed the command.
project = os.path.join(OUTPUT_DIR, SLUG) if OUTPUT_DIR else os.getcwd()  # the hook runs in the project
where = os.path.relpath(project, os.environ["PWD"]) if "PWD" in os.environ else project
if where.startswith(".."):
    where = project

print(f"""
Created {where}. Next:

    cd {shlex.quote(where)}
    pip install -e ".[dev]"
    python train.py fit
    tensorboard --logdir logs
""")
