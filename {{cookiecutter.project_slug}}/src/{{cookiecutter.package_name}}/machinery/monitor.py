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

import torch
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


class EarlyStop:
    """EarlyStopping(monitor, min_delta, patience, mode): `update` after each validation says whether to stop."""

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, mode: str = "min", **_):
        self.monitor, self.patience, self.op = monitor, patience, OPS[mode]
        self.min_delta = min_delta if self.op is torch.gt else -min_delta  # EarlyStopping.__init__ flips it for min
        self.wait_count = 0
        self.best_score = torch.tensor(torch.inf if self.op is torch.lt else -torch.inf)  # float32, as Lightning's
        self.stopped_epoch = 0

    def update(self, values: dict[str, torch.Tensor], epoch: int) -> bool:
        current = values[self.monitor].squeeze()
        if not torch.isfinite(current):  # check_finite=True
            stop = True
        elif self.op(current - self.min_delta, self.best_score):
            self.best_score, self.wait_count = current, 0
            stop = False
        else:
            self.wait_count += 1
            stop = self.wait_count >= self.patience
        if stop:
            self.stopped_epoch = epoch
        return stop

    STATE = ("wait_count", "stopped_epoch", "best_score", "patience")  # EarlyStopping.state_dict's keys

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        for key in self.STATE:
            setattr(self, key, state[key])


class BestK:
    """ModelCheckpoint(monitor, mode, save_top_k=k): `update` after each validation names the file to write and the
    one to delete."""

    def __init__(self, monitor: str, mode: str = "min", save_top_k: int = 1, **_):
        self.monitor, self.mode, self.k = monitor, mode, save_top_k
        self.best_k_models: dict[str, torch.Tensor] = {}  # file name -> its value, in the order they were kept
        self.kth_best_model_path = ""

    def update(self, values: dict[str, torch.Tensor], epoch: int, step: int) -> tuple[str | None, str | None]:
        """(the checkpoint to write, the one to delete), each None for none."""
        current = values[self.monitor].squeeze()
        full = self.k != -1 and len(self.best_k_models) >= self.k
        if self.k == 0 or (full and not OPS[self.mode](current, self.best_k_models[self.kth_best_model_path])):
            return None, None
        dropped = None
        if full:  # ModelCheckpoint._update_best_and_save
            dropped = self.kth_best_model_path
            del self.best_k_models[dropped]
        if torch.isnan(current):  # kept as the worst value
            current = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
        name = f"epoch={epoch}-step={step}.pt"
        self.best_k_models[name] = current
        if self.k == -1 or len(self.best_k_models) == self.k:  # every file kept (-1), or k of them
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.get)
        return name, dropped

    def state_dict(self) -> dict:
        return {"best_k_models": dict(self.best_k_models), "kth_best_model_path": self.kth_best_model_path}

    def load_state_dict(self, state: dict) -> None:
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
