"""An Optuna study over a few of the config's settings, each trial a normal run of one of the three loops.

    python sweep.py                              # configs/sweep.yaml: its trials, its space, its loop
    python sweep.py --trials 40 --loop torch     # more trials, on the plain loop

Each trial runs the loop's script in a process of its own, with the config and the trial's values as flags, into
logs/sweep/<study>/trial_<N>/<loop>/version_0: its config.yaml repeats it exactly. Its value is the objective's last
value in the run's TensorBoard events. A trial that fails (a NaN stop, a refused value) is recorded as failed, with
the error's line, and the study goes on.

The study is kept in SQLite (logs/sweep.db). Killed or stopped, `python sweep.py` goes on: a trial left unfinished
resumes from its checkpoint (`--ckpt_path last-if-any`) and ends as it would have; one whose run an EarlyStopping
had ended takes that run's value. The sampler is seeded anew for
each trial from `seed` and the trial's number, and draws from the finished trials alone, whose values are the same
bit for bit: the study comes out the same, trial for trial, after a kill, and whichever loop runs it.
"""

import math
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPTS = {"lightning": ["train.py", "fit"], "torch": ["train_torch.py"], "fabric": ["train_fabric.py"]}


class Sweep:
    """configs/sweep.yaml: what to search, how, and with which loop."""

    def __init__(
        self,
        space: dict[str, dict[str, Any]],
        trials: int = 20,
        loop: Literal["lightning", "torch", "fabric"] = "lightning",
        args: list[str] | None = None,
        objective: str = "val/loss",
        direction: Literal["minimize", "maximize"] = "minimize",
        study: str = "sweep",
        storage: str = "sqlite:///logs/sweep.db",
        seed: int = 0,
    ):
        """
        Args:
            space: Config key (as its flag, without --) -> {low, high} for a float or an int, with `log: true` for a
                log scale, or {choices: [...]}.
            trials: How many trials the study ends with (the finished and failed count).
            loop: The loop that trains each trial: lightning (train.py fit), torch (train_torch.py), fabric.
            args: Flags every trial takes before its own values (a smaller run, another config).
            objective: The tag whose last value is the trial's.
            direction: minimize or maximize the objective.
            study: The study's name; its trials' runs go to logs/sweep/<study>/.
            storage: Where the study is kept: an SQLite file by default.
            seed: The sampler's seed.
        """
        self.space, self.trials, self.loop, self.args = space, trials, loop, args or []
        self.objective, self.direction, self.study, self.storage, self.seed = objective, direction, study, storage, seed

    def run(self, root: Path) -> Any:
        """Run the study's remaining trials with the project in `root`; the study."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line a trial is said here
        Path("logs").mkdir(exist_ok=True)
        with opened_storage(self.storage) as storage:
            study = optuna.create_study(
                study_name=self.study, storage=storage, direction=self.direction, load_if_exists=True
            )
            self._trials(study, root)
        return study

    def _trials(self, study, root: Path) -> None:
        """The unfinished trial of a killed sweep, then new ones up to `trials`; the best one said."""
        for frozen in study.get_trials(states=[optuna.trial.TrialState.RUNNING]):  # a killed sweep's, unfinished
            self._seed(study, frozen.number)
            # Optuna's Trial of a stored trial, by its id (FrozenTrial._trial_id: checked on optuna 4.0 and 5.1).
            self._trial(study, optuna.Trial(study, frozen._trial_id), root)
        while len(study.trials) < self.trials:
            self._seed(study, len(study.trials))
            self._trial(study, study.ask(), root)
        finished = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
        if finished:
            best = study.best_trial
            print(f"best: trial {best.number}: {self.objective} {best.value:.6g} ({best.user_attrs['run']})")

    def _seed(self, study, number: int) -> None:
        """The sampler of trial `number`: seeded from `seed` and the number, it draws the same values for it whether
        the trial is new or resumed."""
        study.sampler = optuna.samplers.TPESampler(seed=self.seed + number)

    def _trial(self, study, trial, root: Path) -> None:
        values = {key: suggest(trial, key, spec) for key, spec in self.space.items()}
        save_dir = Path("logs") / "sweep" / self.study / f"trial_{trial.number}"
        command = [sys.executable, str(root / SCRIPTS[self.loop][0]), *SCRIPTS[self.loop][1:], *self.args]
        command += [f"--{key}={value!r}" for key, value in values.items()]
        command += [f"--trainer.logger.init_args.save_dir={save_dir}", "--ckpt_path=last-if-any"]
        command += ["--trainer.enable_progress_bar=false"]
        shown = " ".join(f"{key}={value!r}" for key, value in values.items())
        if not stopped_early(newest(save_dir / self.loop)):  # else its run ended, and the sweep was killed after it
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                trial.set_user_attr("error", error)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                print(f"trial {trial.number}: {shown}: failed: {error}")
                return
        run_dir = newest(save_dir / self.loop)
        value = last_value(run_dir, self.objective)
        trial.set_user_attr("run", str(run_dir))
        study.tell(trial, value)
        print(f"trial {trial.number}: {shown}: {self.objective} {value:.6g} ({run_dir})")


@contextmanager
def opened_storage(url: str) -> Iterator[optuna.storages.RDBStorage]:
    """Optuna's storage at `url`, its database's connections closed afterwards, not left to the exit (Python 3.13
    warns of one left to the garbage collector)."""
    storage = optuna.storages.RDBStorage(url)
    try:
        yield storage
    finally:
        storage.remove_session()
        storage.engine.dispose()


def space_problem(space: dict[str, dict[str, Any]]) -> str | None:
    """The first entry of `space` that `suggest` cannot draw from, named; None if none. Checked before the study asks
    for a trial: a trial that fails to draw stays unfinished, and each later sweep would take it up again."""
    for key, spec in space.items():
        choices = set(spec) == {"choices"} and isinstance(spec["choices"], list) and len(spec["choices"]) > 0
        low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
        numbers = all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in (low, high))
        ranged = set(spec) <= {"low", "high", "log"} and numbers and low <= high and isinstance(log, bool)
        if not choices and not (ranged and (low > 0 or not log)):
            takes = "{low, high} (finite, low <= high; log: true with low > 0) or {choices: [...]}"
            return f"space: {key}: {spec}: it takes {takes}"
    return None


def suggest(trial, key: str, spec: dict[str, Any]):
    """The trial's value for `key`, drawn from `spec` as configs/sweep.yaml gives it."""
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(key, low, high, log=log)
    return trial.suggest_float(key, float(low), float(high), log=log)


def newest(runs: Path) -> Path | None:
    """The newest run directory in `runs` (a trial killed before its first checkpoint started a new one), or None."""
    return max(runs.glob("version_*"), key=lambda run: int(run.name.split("_")[1]), default=None)


def stopped_early(run_dir: Path | None) -> bool:
    """Whether the run in `run_dir` was ended by its EarlyStopping, as its last checkpoint says: going on from that
    checkpoint would train an epoch more (Trainer.should_stop is in no checkpoint, Lightning's neither), another
    value than the run's."""
    path = run_dir and next((run_dir / "checkpoints").glob("last.*"), None)
    if path is None:
        return False
    saved = torch.load(path, map_location="cpu", weights_only=True)
    # The plain and Fabric loops' state, or Lightning's, under the callback's state key
    states = [saved.get("early_stopping")]
    states += [state for key, state in saved.get("callbacks", {}).items() if key.startswith("EarlyStopping")]
    # Stopped: an epoch without improvement that used up the patience (0: the first such epoch)
    return any(state["wait_count"] >= max(state["patience"], 1) for state in states if state)


def last_value(run_dir: Path, tag: str) -> float:
    """The last value of `tag` in a run's TensorBoard events; a tag the run does not log stops the sweep, in one
    line."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    if tag not in tags:
        sys.exit(f"error: objective={tag!r}, which {run_dir} does not log; it logs {sorted(tags)}")
    return events.Scalars(tag)[-1].value
