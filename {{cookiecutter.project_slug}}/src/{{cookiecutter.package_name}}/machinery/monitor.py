"""EarlyStopping and ModelCheckpoint(monitor=..., save_top_k=k) for the plain and Fabric loops: Lightning's
decisions, at the same epochs, on the same numbers.

    python train_torch.py --trainer.callbacks+=EarlyStopping --trainer.callbacks.patience=3 \\
        --trainer.callbacks.monitor=val/loss

train.py runs Lightning's callbacks; the plain and Fabric loops read the same entries of `trainer.callbacks` and do
here what the callbacks do at an epoch's end (plain_run.py): `EarlyStop` keeps the best value and counts the epochs
without an improvement, as EarlyStopping._evaluate_stopping_criteria does, in the same float32 arithmetic; `BestK`
keeps the k best checkpoints, `epoch=E-step=S.pt`, as ModelCheckpoint._update_best_and_save does, ties included.
Their state goes into every checkpoint, so a resumed run goes on with the same counts and the same k files. What
they take: `IMPLEMENTED`; any other argument is refused by name (scripts.py).
"""

import inspect
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_prefixed_message, rank_zero_warn
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

OPS = {"min": torch.lt, "max": torch.gt}


def not_implemented(class_path: str, init_args: dict, logged: list[str]) -> str | None:
    """The first argument of a callback the loops would run otherwise than Lightning, as `name=value`; None if
    none. Its monitor must be one of the values `logged` at each epoch's end."""
    _, _, kind, implemented = IMPLEMENTED[class_path]
    defaults = {name: p.default for name, p in inspect.signature(kind).parameters.items()}
    for name, value in init_args.items():
        if name not in implemented and value != defaults.get(name):
            return f"{name}={value!r}"
    monitor = init_args.get("monitor")
    if monitor not in logged:
        return f"monitor={monitor!r} (the loops log {', '.join(logged)} once an epoch)"
    return None


def say(message: str, every_process: bool) -> None:
    """A line of verbose=True, to stderr, where Lightning's logger writes it: EarlyStopping's from every process, each
    with its rank where there are several; ModelCheckpoint's from rank 0 alone."""
    rank = dist.get_rank() if dist.is_initialized() and dist.get_world_size() > 1 else None
    if every_process:
        print(rank_prefixed_message(message, rank), file=sys.stderr)
    elif not rank:
        print(message, file=sys.stderr)


def same_key(callback, kind: str, state: dict) -> bool:
    """Whether a saved state is the callback's: Lightning keeps each callback's under its `state_key`, its monitor and
    mode, and one of another monitor or mode starts afresh, with a warning."""
    saved, own = (state["monitor"], state["mode"]), (callback.monitor, callback.mode)
    if saved != own:
        rank_zero_warn(
            f"the checkpoint holds the state of a {kind} of monitor={saved[0]!r}, mode={saved[1]!r}; this run's has"
            f" monitor={own[0]!r}, mode={own[1]!r}, and starts afresh, as Lightning's does"
        )
    return saved == own


class EarlyStop:
    """EarlyStopping(monitor, min_delta, patience, mode, verbose): `update` after each validation says whether to
    stop (with verbose, why, in Lightning's words)."""

    def __init__(
        self, monitor: str, min_delta: float = 0.0, patience: int = 3, mode: str = "min", verbose: bool = False, **_
    ):
        self.monitor, self.mode, self.patience, self.op, self.verbose = monitor, mode, patience, OPS[mode], verbose
        self.min_delta = min_delta if self.op is torch.gt else -min_delta  # EarlyStopping.__init__ flips it for min
        self.wait_count = 0
        self.best_score = torch.tensor(torch.inf if self.op is torch.lt else -torch.inf)  # float32, as Lightning's
        self.stopped_epoch = 0

    def update(self, values: dict[str, torch.Tensor], epoch: int) -> bool:
        current, best = values[self.monitor].squeeze(), self.best_score
        said = None  # EarlyStopping._evaluate_stopping_criteria's reason
        if not torch.isfinite(current):  # check_finite=True
            stop = True
            said = f"Monitored metric {self.monitor} = {current} is not finite. Previous best value was {best:.3f}."
        elif self.op(current - self.min_delta, best):
            self.best_score, self.wait_count = current, 0
            stop = False
            said = f"Metric {self.monitor} improved. New best score: {current:.3f}"
            if torch.isfinite(best):
                by = f"{abs(best - current):.3f} >= min_delta = {abs(self.min_delta)}"
                said = f"Metric {self.monitor} improved by {by}. New best score: {current:.3f}"
        else:
            self.wait_count += 1
            stop = self.wait_count >= self.patience
            if stop:
                last = f"the last {self.wait_count} records"
                said = f"Monitored metric {self.monitor} did not improve in {last}. Best score: {best:.3f}."
        if stop:
            self.stopped_epoch = epoch
            said += " Signaling Trainer to stop."
        if said is not None and self.verbose:
            say(said, every_process=True)
        return stop

    STATE = ("wait_count", "stopped_epoch", "best_score", "patience")  # EarlyStopping.state_dict's keys

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in (*self.STATE, "monitor", "mode")}

    def load_state_dict(self, state: dict) -> None:
        if same_key(self, "EarlyStopping", state):
            for key in self.STATE:
                setattr(self, key, state[key])


class BestK:
    """ModelCheckpoint(monitor, mode, save_top_k=k, verbose): `update` after each validation names the file to write
    and the one to delete (with verbose, says which, in Lightning's words)."""

    def __init__(self, monitor: str, mode: str = "min", save_top_k: int = 1, verbose: bool = False, **_):
        self.monitor, self.mode, self.k, self.verbose = monitor, mode, save_top_k, verbose
        self.best_k_models: dict[str, torch.Tensor] = {}  # file name -> its value, in the order they were kept
        self.kth_best_model_path = ""
        self.dirpath: Path | None = None  # where the files go: rank 0's checkpoints/, set as the run starts

    def update(self, values: dict[str, torch.Tensor], epoch: int, step: int) -> tuple[str | None, str | None]:
        """(the checkpoint to write, the one to delete), each None for none."""
        if self.k == 0:
            return None, None
        current = values[self.monitor].squeeze()
        at = f"Epoch {epoch:d}, global step {step:d}: {self.monitor!r}"  # what verbose says, in Lightning's words
        # ModelCheckpoint.check_monitor_top_k
        if self.k != -1 and len(self.best_k_models) >= self.k:
            if not OPS[self.mode](current, self.best_k_models[self.kth_best_model_path]):
                if self.verbose:
                    say(f"{at} was not in top {self.k}", every_process=False)
                return None, None
        # ModelCheckpoint._update_best_and_save (more than k files, from a run with a larger k: none dropped)
        k = len(self.best_k_models) + 1 if self.k == -1 else self.k
        dropped = None
        if len(self.best_k_models) == k:
            dropped = self.kth_best_model_path
            del self.best_k_models[dropped]
        if torch.isnan(current):  # kept as the worst value
            current = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
        name = self._name(epoch, step, dropped)
        self.best_k_models[name] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get)
        if self.verbose and self.dirpath is not None:  # rank 0's, which says it
            best = (min if self.mode == "min" else max)(self.best_k_models.values())
            saving = f"saving model to {str(self.dirpath / name)!r} as top {k}"
            say(f"{at} reached {current:0.5f} (best {best:0.5f}), {saving}", every_process=False)
        return name, dropped

    def _name(self, epoch: int, step: int, dropped: str | None) -> str:
        """epoch=E-step=S.pt; where a file of that name is there and stays (a run resumed from an earlier
        checkpoint wrote it), epoch=E-step=S-v1.pt, -v2, ...: ModelCheckpoint(enable_version_counter=True)."""
        name, version = f"epoch={epoch}-step={step}.pt", 1
        while self.dirpath is not None and (self.dirpath / name).exists() and name != dropped:
            name, version = f"epoch={epoch}-step={step}-v{version}.pt", version + 1
        return name

    def state_dict(self) -> dict:
        kept = {"best_k_models": dict(self.best_k_models), "kth_best_model_path": self.kth_best_model_path}
        return {**kept, "monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        if same_key(self, "ModelCheckpoint", state):
            self.best_k_models, self.kth_best_model_path = dict(state["best_k_models"]), state["kth_best_model_path"]


# The callbacks the loops implement, by class path: the PlainRun field that holds each, its class here (made from the
# callback's init_args), Lightning's class, and the arguments the loops take, the others at Lightning's defaults. A
# ModelCheckpoint counts with a monitor: configs/default.yaml's own, without one, writes last.pt.
IMPLEMENTED = {
    "lightning.pytorch.callbacks.EarlyStopping": (
        "early_stop",
        EarlyStop,
        EarlyStopping,
        ("monitor", "min_delta", "patience", "mode", "verbose"),
    ),
    "lightning.pytorch.callbacks.ModelCheckpoint": (
        "best",
        BestK,
        ModelCheckpoint,
        ("monitor", "mode", "save_top_k", "verbose"),
    ),
}
