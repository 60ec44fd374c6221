"""Search a few of the config's settings with Optuna, each trial a normal run of one of the three loops.

    python sweep.py                              # configs/sweep.yaml: 20 trials of train.py fit
    python sweep.py --trials 40 --loop torch     # 40 in all, on the plain loop
    python sweep.py                              # after Ctrl-C or a kill: goes on where it stopped

Each trial's run is in logs/sweep/<study>/trial_<N>/, with its config.yaml; the study in logs/sweep.db. A failed
trial is recorded as failed and the study goes on. How trials resume and why the study comes out the same:
src/{{ cookiecutter.package_name }}/machinery/sweeping.py.
"""

if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line, no traceback
    from {{ cookiecutter.package_name }}.machinery import script

    script.start()

import sys
from pathlib import Path

from jsonargparse import ActionConfigFile

from {{ cookiecutter.package_name }}.machinery.cli import Parser, importable

ROOT = Path(__file__).resolve().parent


def main(args: list[str] | None = None):
    """Run the study's remaining trials; the study."""
    if not importable("optuna"):
        sys.exit('error: optuna is not installed; pip install -e ".[sweep]"')
    from {{ cookiecutter.package_name }}.machinery.sweeping import Sweep, space_problem

    parser = Parser(default_config_files=[str(ROOT / "configs" / "sweep.yaml")], description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="A config file on top of configs/sweep.yaml.")
    parser.add_class_arguments(Sweep, as_positional=False)
    config = parser.parse_args(args)
    problem = space_problem(config.space)
    if problem is not None:
        parser.error(problem)
    settings = config.as_dict()
    for key in ("config", "__default_config__"):  # the config files read, not settings
        settings.pop(key, None)
    return Sweep(**settings).run(ROOT)


if __name__ == "__main__":
    script.run(main)
