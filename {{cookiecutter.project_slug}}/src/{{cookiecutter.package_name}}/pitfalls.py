"""The pitfalls lab: every row of the essay's crib sheet, run and measured on the installed torch.

    python -m {{ cookiecutter.package_name }}.pitfalls
    python -m {{ cookiecutter.package_name }}.pitfalls --quick

The first runs the essay's experiment (about three minutes on one thread), the second a small spiral for
4 epochs (seconds), as the tests do.

Each row trains the essay's loop twice, from the same seed on the same data: as written, and with exactly one
line moved or left out. The lab prints a Markdown table of what the move changed, in numbers, whether the
essay's claim holds on this torch, and what keeps the mistake out of a Lightning run, and writes the table to
logs/pitfalls/pitfalls.md. tests/test_pitfalls.py asserts each symptom, and that the correct loop shows none.
"""

import argparse
import contextlib
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from {{ cookiecutter.package_name }}.data import EpochShuffle, SpiralDataModule
from {{ cookiecutter.package_name }}.model import MLP


@dataclass(frozen=True)
class Settings:
    points_per_class: int  # the spiral: 60% of the points train, 20% validate
    epochs: int  # also the cosine schedule's T_max
    clip: float  # clip_grad_norm_'s max_norm
    val_batch_size: int  # several validation batches, so that a graph kept per batch shows
    batch_size: int = 64
    hidden: int = 128
    lr: float = 1e-3
    dropout: float = 0.3  # for the rows about model.train() and model.eval()
    seed: int = 0


# The essay's experiment.
FULL = Settings(points_per_class=1000, epochs=100, clip=1.0, val_batch_size=100)
# For the tests: clipping at 0.05 bites in 4 epochs, where 1.0 would not.
QUICK = Settings(points_per_class=200, epochs=4, clip=0.05, val_batch_size=40)

# The places in `train`, in the order the loop passes them.
PLACES = (
    "before the optimiser",
    "after the optimiser",
    "at epoch start",
    "before the forward",
    "after the forward",
    "after loss.backward()",
    "after optimiser.step()",
    "after the batches",
    "before validation",
    "after validation",
)
# Where each movable line of the essay's loop sits. A row moves one of them: another place, or None to leave it out.
CORRECT = {
    "model.to(dtype)": "before the optimiser",
    "model.train()": "at epoch start",
    "optimiser.zero_grad()": "before the forward",
    "clip_grad_norm_()": "after loss.backward()",
    "scheduler.step()": "after the batches",
    "model.eval()": "before validation",
}


@dataclass
class Run:
    """What one run of `train` measured. Per-step series have one entry per optimiser step."""

    losses: Tensor  # training loss as logged, every step
    lrs: Tensor  # the learning rate each step used
    leftover: Tensor  # norm of the gradient already in .grad when loss.backward() ran (0: none)
    clip_saw: Tensor  # total norm that clip_grad_norm_ measured, each call
    applied: Tensor  # norm of the gradient that optimiser.step() applied
    train_mode: Tensor  # model.training at each training forward
    val_losses: Tensor  # every epoch
    val_accs: Tensor  # every epoch
    kept: Tensor  # (epochs, validation batches): tensors autograd keeps alive after each validation batch
    kept_bytes: Tensor  # (epochs, validation batches): the bytes of their storages
    logged_nodes: int  # autograd graph nodes reachable from what the loop logged, after training
    kept_after: int  # tensors autograd keeps alive after training
    params: dict[str, Tensor]  # the model's weights at the end
    change: float  # how far any weight moved from its initial value
    optimiser_has_model_params: bool  # whether the optimiser updates the model's own Parameter objects
    steps_per_epoch: int


class SavedTensors:
    """Counts the tensors autograd keeps for backward (torch.autograd.graph.saved_tensors_hooks).

    Each saved tensor goes into a box that only autograd's graph holds, so the box dies when the graph frees
    it: a count that does not depend on the allocator, the machine or the timing. The box holds the tensor
    detached: a saved output still pointing at its grad_fn would make a reference cycle, and the graph would
    then live until Python's garbage collector runs, not until autograd lets it go.
    """

    class Box:
        __slots__ = ("tensor", "__weakref__")

    def __init__(self):
        self.boxes = weakref.WeakSet()

    def pack(self, tensor: Tensor) -> "SavedTensors.Box":
        box = self.Box()
        box.tensor = tensor.detach()
        self.boxes.add(box)
        return box

    def unpack(self, box: "SavedTensors.Box") -> Tensor:
        return box.tensor

    def count(self) -> tuple[int, int]:
        """(tensors alive, bytes of their distinct storages)."""
        tensors = [box.tensor for box in self.boxes]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return len(tensors), sum(storages.values())


def graph_nodes(values: Iterable) -> int:
    """Autograd nodes reachable from the tensors among `values`: the graph they keep alive."""
    seen, todo = set(), [v.grad_fn for v in values if isinstance(v, Tensor) and v.grad_fn is not None]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += [child for child, _ in node.next_functions if child is not None]
    return len(seen)


def grad_norm(params: Iterable[Tensor]) -> float:
    """Total 2-norm of the gradients present; 0 when there are none."""
    norms = [p.grad.detach().double().norm() for p in params if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def number(value: Tensor | float) -> float:
    """A logged value as a float, without the warning a tensor that requires grad gives."""
    return value.detach().item() if isinstance(value, Tensor) else value


def train(
    s: Settings,
    move: dict[str, str | None] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    dropout: float = 0.0,
    no_grad: bool = True,
    log_item: bool = True,
    loader_generator: bool = True,
    validate_on: str = "loader",
) -> Run:
    """The essay's loop, as in loop.py; `move` puts lines of CORRECT at other PLACES (None: nowhere).

    The switches are the rest of the crib sheet: `no_grad=False` leaves `torch.no_grad()` out of validation;
    `log_item=False` logs `loss` instead of `loss.item()`; `loader_generator=False` shuffles the training
    DataLoader without a generator of its own; `validate_on="tensor"` validates on the whole validation tensor, as
    the essay does, instead of iterating a DataLoader, as Lightning does.
    """
    for line, place in (move or {}).items():
        if line not in CORRECT or place not in (*PLACES, None):
            raise ValueError(f"cannot put {line!r} {place!r}: the lines are {list(CORRECT)}, the places {PLACES}")
    places = {**CORRECT, **(move or {})}
    torch.manual_seed(s.seed)
    data = SpiralDataModule(
        points_per_class=s.points_per_class, batch_size=s.batch_size, val_batch_size=s.val_batch_size, seed=s.seed
    )
    data.setup("fit")
    if loader_generator:
        loader = data.train_dataloader()
    else:
        loader = DataLoader(data.train_set, batch_size=s.batch_size, shuffle=True)
    val_batches = data.val_dataloader() if validate_on == "loader" else [data.val_set.tensors]

    model = MLP(in_features=2, hidden=s.hidden, out_features=3, dropout=dropout)
    criterion = nn.CrossEntropyLoss()
    start = [p.detach().clone() for p in model.parameters()]
    # Lines that append to `record` or `kept` only measure; every other line is the essay's loop.
    record = {name: [] for name in ("lrs", "leftover", "clip_saw", "applied", "train_mode", "val_losses", "val_accs")}
    kept = []
    lines = {
        "model.to(dtype)": lambda: model.to(dtype),
        "model.train()": lambda: model.train(),
        "optimiser.zero_grad()": lambda: optimiser.zero_grad(),
        "clip_grad_norm_()": lambda: record["clip_saw"].append(
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=s.clip).item()
        ),
        "scheduler.step()": lambda: scheduler.step(),
        "model.eval()": lambda: model.eval(),
    }

    def at(place: str) -> None:
        """Run the movable lines that sit at this place."""
        for line, where in places.items():
            if where == place:
                lines[line]()

    saved = SavedTensors()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        at("before the optimiser")
        optimiser = torch.optim.Adam(model.parameters(), lr=s.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=s.epochs)
        at("after the optimiser")
        log = []  # what a training script keeps of each step's loss, to print or plot later
        for epoch in range(s.epochs):
            at("at epoch start")
            for X_batch, y_batch in loader:
                at("before the forward")
                record["train_mode"].append(model.training)
                logits = model(X_batch.to(dtype))
                loss = criterion(logits, y_batch)
                at("after the forward")
                record["leftover"].append(grad_norm(model.parameters()))
                loss.backward()
                at("after loss.backward()")
                record["applied"].append(grad_norm(optimiser.param_groups[0]["params"]))
                record["lrs"].append(optimiser.param_groups[0]["lr"])
                optimiser.step()
                at("after optimiser.step()")
                log.append(loss.item() if log_item else loss)
            at("after the batches")

            at("before validation")
            kept.append([])
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                val_loss, hits = 0.0, 0
                for X_val, y_val in val_batches:
                    val_logits = model(X_val.to(dtype))
                    # Summed over the batches: without no_grad, the sum holds every batch's graph.
                    val_loss = val_loss + criterion(val_logits, y_val) * len(y_val)
                    hits += (val_logits.argmax(dim=1) == y_val).sum().item()
                    kept[-1].append(saved.count())
            record["val_losses"].append(number(val_loss) / len(data.val_set))
            record["val_accs"].append(hits / len(data.val_set))
            at("after validation")
        kept_after = saved.count()[0]

    counts = torch.tensor(kept, dtype=torch.int64)  # (epochs, validation batches, 2)
    return Run(
        **{name: torch.tensor(values, dtype=torch.float64) for name, values in record.items() if name != "train_mode"},
        losses=torch.tensor([number(value) for value in log], dtype=torch.float64),
        train_mode=torch.tensor(record["train_mode"]),
        kept=counts[..., 0],
        kept_bytes=counts[..., 1],
        logged_nodes=graph_nodes(log),
        kept_after=kept_after,
        params={name: p.detach().clone() for name, p in model.state_dict().items()},
        change=max((p.detach().double() - p0.double()).abs().max().item() for p, p0 in zip(model.parameters(), start)),
        optimiser_has_model_params=all(
            a is b for a, b in zip(optimiser.param_groups[0]["params"], model.parameters(), strict=True)
        ),
        steps_per_epoch=len(loader),
    )


def identical(a: Run, b: Run) -> bool:
    """Every training loss, validation loss and final weight equal, bit for bit."""
    same_params = a.params.keys() == b.params.keys() and all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    return torch.equal(a.losses, b.losses) and torch.equal(a.val_losses, b.val_losses) and same_params


def equal_steps(a: Tensor, b: Tensor) -> int:
    """How many steps two loss curves agree for, from the start."""
    different = (a != b).nonzero()
    return int(different[0]) if len(different) else len(a)


@contextlib.contextmanager
def overwrite_params_on_conversion(on: bool):
    """torch.__future__'s flag that makes .to()/.half() create new Parameter objects; restored afterwards."""
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(on)
    try:
        yield
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(before)


class Lab:
    """Runs each variant of `train` once: the rows share the correct loop's run, the unclipped one, ..."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.runs: dict[str, Run] = {}

    def run(self, move: dict[str, str | None] | None = None, *, overwrite: bool = False, **switches) -> Run:
        # Switches left at train's defaults do not make another run.
        changed = sorted((name, value) for name, value in switches.items() if value != train.__kwdefaults__[name])
        key = repr((move or None, overwrite, changed))
        if key not in self.runs:
            with overwrite_params_on_conversion(overwrite):
                self.runs[key] = train(self.s, move, **switches)
        return self.runs[key]


@dataclass
class Finding:
    """One row of the table."""

    number: str
    line: str
    moved: str
    measured: str  # "a → b": the correct loop → the loop with the line moved
    claim: str  # what the essay says happens
    verdict: str  # whether that holds here, and why
    guard: str  # what keeps the mistake out of a Lightning run, and what would bring it back


def arrow(correct: object, moved: object) -> str:
    """Correct → moved, numbers to 3 significant digits."""

    def show(value: object) -> str:
        return f"{float(value):.3g}" if isinstance(value, float | Tensor) else str(value)

    return f"{show(correct)} → {show(moved)}"


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def final(run: Run) -> str:
    return f"{run.val_losses[-1]:.3f} ({run.val_accs[-1]:.1%})"


def gap(correct: Run, moved: Run) -> str:
    """How long the loss curves agree, and the final validation loss (accuracy) of both."""
    steps, epochs = len(correct.losses), len(correct.val_losses)
    if identical(correct, moved):
        return f"all {steps} losses, {epochs} validation losses and the weights identical"
    return (
        f"losses equal for the first {equal_steps(correct.losses, moved.losses)} of {steps} steps "
        f"({correct.steps_per_epoch} per epoch); final validation loss (accuracy) {arrow(final(correct), final(moved))}"
    )


# --- the rows: each trains the correct loop and the loop with one line moved, and says what differed ---


def dtype_change(lab: Lab, overwrite: bool) -> Finding:
    # float64 stands in for .half(): both convert every Parameter. Adam cannot train float16 weights on the CPU
    # (its eps=1e-8 rounds to 0 in float16 and the weights turn NaN at the first step).
    correct = lab.run(dtype=torch.float64, overwrite=overwrite)
    moved = lab.run({"model.to(dtype)": "after the optimiser"}, dtype=torch.float64, overwrite=overwrite)
    flag = "with `torch.__future__.set_overwrite_module_params_on_conversion(True)`" if overwrite else "torch's default"
    measured = (
        f"optimiser holds the model's Parameters: "
        f"{arrow(yes(correct.optimiser_has_model_params), yes(moved.optimiser_has_model_params))}; "
        f"largest weight change {arrow(correct.change, moved.change)}; {gap(correct, moved)}"
    )
    if moved.optimiser_has_model_params and identical(correct, moved):
        verdict = f"**no**, with {flag}: `.to()` converts each Parameter in place, the run is the correct one"
    elif not moved.optimiser_has_model_params and moved.change == 0:
        verdict = f"**yes**, {flag}: new Parameters; the optimiser steps the old ones, the model never trains"
    else:
        verdict = "**partly**: see the numbers"
    return Finding(
        "1b" if overwrite else "1a",
        "`model.to(torch.float64)`, a dtype change like `.half()`",
        f"after the optimiser is built; {flag}",
        measured,
        "new Parameter objects are made and the optimiser updates the discarded ones",
        verdict,
        "The Trainer converts and moves the model (`precision`, `accelerator`) before `configure_optimizers`. "
        "Back: converting it in a later hook, e.g. `self.double()` in `on_train_start`, with the flag on.",
    )


def dtype_change_default(lab: Lab) -> Finding:
    """model.to(dtype) after the optimiser, torch's default"""
    return dtype_change(lab, overwrite=False)


def dtype_change_overwrite(lab: Lab) -> Finding:
    """model.to(dtype) after the optimiser, overwrite flag on"""
    return dtype_change(lab, overwrite=True)


ZERO_GRAD_GUARD = (
    "`optimizer_zero_grad`, which the Trainer calls before each `backward`. Back: `Trainer(accumulate_grad_batches=N)` "
    "skips it on purpose (and divides the loss by N); manual optimisation hands the line back to you."
)


def zero_grad_left_out(lab: Lab) -> Finding:
    """optimiser.zero_grad() left out"""
    correct, moved = lab.run(), lab.run({"optimiser.zero_grad()": None})
    later = moved.leftover[1:]  # every step after the first
    clipped = [int((run.clip_saw > lab.s.clip).sum()) for run in (correct, moved)]
    holds = f"holds earlier gradients on {int((later > 0).sum())} of {len(later)} later steps"
    measured = (
        f"`.grad` when `backward` runs: {arrow('empty', holds)} (norm {later.min():.2g}–{later.max():.2g}); "
        f"clipping bites on {arrow(*clipped)} of {len(correct.losses)} steps; {gap(correct, moved)}"
    )
    piles_up = bool((later > 0).all()) and not correct.leftover.any()
    return Finding(
        "2a",
        "`optimiser.zero_grad()`",
        "left out",
        measured,
        "gradients of several batches pile up; the update uses their sum",
        "**yes**: each `backward` adds to what `.grad` holds (clipping then scales the sum in place)"
        if piles_up
        else "**no**",
        ZERO_GRAD_GUARD,
    )


def zero_grad_before_step(lab: Lab) -> Finding:
    """optimiser.zero_grad() between loss.backward() and optimiser.step()"""
    correct, moved = lab.run(), lab.run({"optimiser.zero_grad()": "after loss.backward()"})
    measured = (
        f"mean gradient norm `optimiser.step()` applies {arrow(correct.applied.mean(), moved.applied.mean())}; "
        f"largest weight change {arrow(correct.change, moved.change)}; "
        f"final validation loss (accuracy) {arrow(final(correct), final(moved))}"
    )
    return Finding(
        "2b",
        "`optimiser.zero_grad()`",
        "between `loss.backward()` and `optimiser.step()`",
        measured,
        "(“after `loss.backward()`”) gradients pile up",
        "**no**, worse: `zero_grad()` sets `.grad` to None, Adam skips Parameters without one, the model never trains"
        if moved.change == 0 and not moved.applied.any()
        else "**no**",
        ZERO_GRAD_GUARD,
    )


def zero_grad_after_step(lab: Lab) -> Finding:
    """optimiser.zero_grad() after optimiser.step()"""
    correct, moved = lab.run(), lab.run({"optimiser.zero_grad()": "after optimiser.step()"})
    return Finding(
        "2c",
        "`optimiser.zero_grad()`",
        "after `optimiser.step()`, at the end of the batch",
        gap(correct, moved),
        "(“after `loss.backward()`”, read as after the step) gradients pile up",
        "**no**: harmless, bit for bit the correct run" if identical(correct, moved) else "**yes**: the numbers change",
        ZERO_GRAD_GUARD,
    )


CLIP_GUARD = (
    "`Trainer(gradient_clip_val=...)`: `configure_gradient_clipping` runs between `backward` and the step. "
    "Back: clipping yourself in `training_step` (before `backward`) or `on_train_batch_end` (after the step)."
)


def over_max_norm(run: Run, s: Settings) -> int:
    """Steps that applied a gradient above max_norm (clip_grad_norm_ leaves it at max_norm or just under)."""
    return int((run.applied > s.clip * (1 + 1e-4)).sum())


def clip_before_backward(lab: Lab) -> Finding:
    """clip_grad_norm_() before loss.backward()"""
    correct, moved = lab.run(), lab.run({"clip_grad_norm_()": "after the forward"})
    unclipped = lab.run({"clip_grad_norm_()": None})
    measured = (
        f"largest norm `clip_grad_norm_` saw {arrow(correct.clip_saw.max(), moved.clip_saw.max())}; "
        f"steps applying a gradient above max_norm {lab.s.clip:g}: "
        f"{arrow(over_max_norm(correct, lab.s), over_max_norm(moved, lab.s))} of {len(correct.losses)}; "
        f"the run without clipping, bit for bit: {arrow(*(yes(identical(run, unclipped)) for run in (correct, moved)))}"
    )
    return Finding(
        "3",
        "`clip_grad_norm_()`",
        "before `loss.backward()`",
        measured,
        "there are no gradients yet; the call does nothing",
        "**yes**: it sees no gradient, the run equals one without clipping, bit for bit"
        if moved.clip_saw.max() == 0 and identical(moved, unclipped)
        else "**no**",
        CLIP_GUARD,
    )


def clip_after_step(lab: Lab) -> Finding:
    """clip_grad_norm_() after optimiser.step()"""
    correct, moved = lab.run(), lab.run({"clip_grad_norm_()": "after optimiser.step()"})
    unclipped = lab.run({"clip_grad_norm_()": None})
    measured = (
        f"steps applying a gradient above max_norm {lab.s.clip:g}: "
        f"{arrow(over_max_norm(correct, lab.s), over_max_norm(moved, lab.s))} of {len(correct.losses)}; "
        f"the run without clipping, bit for bit: {arrow(*(yes(identical(run, unclipped)) for run in (correct, moved)))}"
    )
    return Finding(
        "4",
        "`clip_grad_norm_()`",
        "after `optimiser.step()`",
        measured,
        "clips gradients already applied; no effect",
        "**yes**: the run equals one without clipping, bit for bit" if identical(moved, unclipped) else "**no**",
        CLIP_GUARD,
    )


def scheduler_in_batch_loop(lab: Lab) -> Finding:
    """scheduler.step() inside the batch loop"""
    correct, moved = lab.run(), lab.run({"scheduler.step()": "after optimiser.step()"})
    steps, epochs = correct.steps_per_epoch, min(5, lab.s.epochs)

    def trace(run: Run) -> str:
        return "[" + ", ".join(f"{lr:.2e}" for lr in run.lrs[::steps][:epochs]) + "]"

    changes = [int((run.lrs[1:steps] != run.lrs[: steps - 1]).sum()) for run in (correct, moved)]
    zero = (moved.lrs < 1e-9 * lab.s.lr).nonzero()
    measured = (
        f"LR at the start of epochs 1–{epochs}: {arrow(trace(correct), trace(moved))}; "
        f"LR changes within epoch 1: {arrow(*changes)}"
        + (f"; it reaches 0 at step {int(zero[0])} and climbs again (period 2·T_max)" if len(zero) else "")
        + f"; final validation loss (accuracy) {arrow(final(correct), final(moved))}"
    )
    return Finding(
        "5",
        "`scheduler.step()`",
        "inside the batch loop",
        measured,
        "the LR decays `len(loader)` times per epoch instead of once",
        f"**yes**: {steps} decays per epoch, so T_max={lab.s.epochs} runs out in {lab.s.epochs / steps:.1f} epochs"
        if changes == [0, steps - 1]
        else "**no**",
        '`lr_scheduler_step` with `"interval": "epoch"` from `configure_optimizers`. Back: `"interval": "step"`.',
    )


def train_left_out(lab: Lab) -> Finding:
    """model.train() left out, with dropout"""
    correct = lab.run(dropout=lab.s.dropout)
    moved = lab.run({"model.train()": None}, dropout=lab.s.dropout)
    steps = moved.steps_per_epoch
    measured = (
        f"training forwards in train mode: "
        f"{arrow(f'{correct.train_mode.float().mean():.0%}', f'{moved.train_mode.float().mean():.0%}')}; "
        f"{gap(correct, moved)}"
    )
    eval_from_epoch_2 = bool(moved.train_mode[:steps].all()) and not moved.train_mode[steps:].any()
    return Finding(
        "6",
        "`model.train()`",
        f"left out, after `model.eval()`; the MLP with dropout {lab.s.dropout:g}",
        measured,
        "dropout off, BatchNorm frozen, training goes on in eval mode",
        "**yes** for dropout: eval mode from epoch 2 on (this MLP has no BatchNorm)"
        if eval_from_epoch_2 and correct.train_mode.all()
        else "**no**",
        "Validation notes each submodule's mode before `eval()` and restores it after (`on_validation_model_train`); "
        "the Trainer warns about modules in eval mode when training starts. "
        "Back: overriding `on_validation_model_train` without calling `train()`.",
    )


def eval_left_out(lab: Lab) -> Finding:
    """model.eval() left out, with dropout"""
    correct = lab.run(dropout=lab.s.dropout)
    moved = lab.run({"model.eval()": None}, dropout=lab.s.dropout)
    measured = (
        f"validation loss after epoch 1: {arrow(f'{correct.val_losses[0]:.4f}', f'{moved.val_losses[0]:.4f}')}; "
        f"{gap(correct, moved)}"
    )
    shifts = equal_steps(correct.losses, moved.losses) == moved.steps_per_epoch
    return Finding(
        "6b",
        "`model.eval()`",
        f"left out; the MLP with dropout {lab.s.dropout:g}",
        measured,
        "(not in the crib sheet)",
        "dropout stays on in validation, and training changes from epoch 2: validation's dropout draws from the "
        "global RNG and shifts the training masks"
        if shifts and correct.val_losses[0] != moved.val_losses[0]
        else "no effect measured",
        "`on_validation_model_eval`, which the Trainer calls before validation. Back: overriding it without `eval()`.",
    )


def no_grad_left_out(lab: Lab) -> Finding:
    """torch.no_grad() left out of validation"""
    correct, moved = lab.run(), lab.run(no_grad=False)
    per_batch = ", ".join(str(int(n)) for n in moved.kept[0])
    measured = (
        f"tensors autograd keeps alive after each validation batch: {arrow(int(correct.kept.max()), per_batch)} "
        f"({moved.kept_bytes[0, -1] / 2**20:.2f} MiB at the end of validation; the next epoch's sum frees them); "
        f"{gap(correct, moved)}"
    )
    grows = bool((moved.kept[:, 1:] > moved.kept[:, :-1]).all()) and correct.kept.max() == 0
    return Finding(
        "7",
        "`with torch.no_grad():`",
        "left out of validation",
        measured,
        "an autograd graph is built for every validation batch; memory grows",
        "**yes**: a graph per batch, kept as long as the summed loss is; the numbers do not change"
        if grows and identical(correct, moved)
        else "**no**",
        "During `fit` the Trainer validates under `torch.no_grad()` (`validate` and `test`: `torch.inference_mode()`). "
        "Back: `torch.enable_grad()` inside `validation_step`.",
    )


def loss_logged(lab: Lab) -> Finding:
    """logging loss instead of loss.item()"""
    correct, moved = lab.run(), lab.run(log_item=False)
    measured = (
        f"autograd nodes the log keeps alive after training: {arrow(correct.logged_nodes, moved.logged_nodes)} "
        f"(about {moved.logged_nodes / len(moved.losses):.0f} per step); tensors saved for backward still alive: "
        f"{arrow(correct.kept_after, moved.kept_after)}; {gap(correct, moved)}"
    )
    return Finding(
        "8",
        "logging `loss`",
        "instead of `loss.item()`",
        measured,
        "the computation graph is kept alive",
        "**yes**, its nodes, one graph per step; `backward` has already freed the activations they saved"
        if moved.logged_nodes > len(moved.losses) and correct.logged_nodes == 0
        else "**no**",
        "`self.log` detaches what it keeps. Back: `self.log(..., enable_graph=True)`, or keeping `loss` yourself, "
        "e.g. in a list on the module.",
    )


def shared_generator(lab: Lab) -> Finding:
    """the training DataLoader without its own generator, validating on a DataLoader"""
    agree = {}
    for generator in (False, True):
        on_tensor = lab.run(loader_generator=generator, validate_on="tensor")
        on_loader = lab.run(loader_generator=generator, validate_on="loader")
        agree[generator] = equal_steps(on_tensor.losses, on_loader.losses)
    steps, total = on_tensor.steps_per_epoch, len(on_tensor.losses)
    return Finding(
        "9",
        "`loader = DataLoader(..., shuffle=True)`",
        "without a `generator` of its own, in a loop that validates on a DataLoader rather than a tensor",
        f"losses equal between the two loops: without a generator {agree[False]} of {total} steps "
        f"(epoch 1 has {steps}); with `SpiralDataModule`'s seeded generator {agree[True]} of {total}",
        "(not in the essay)",
        "the shuffle order shifts from epoch 2: each `iter()` of a DataLoader, the validation one too, "
        "draws a number from torch's global RNG"
        if agree[False] == steps and agree[True] == total
        else "not reproduced",
        "Lightning iterates a validation DataLoader every epoch; `SpiralDataModule.train_dataloader` shuffles with its "
        "own seeded generator. Back: `DataLoader(..., shuffle=True)` without `generator=`.",
    )


def shuffle_orders(loader: DataLoader, epochs: int, stop_at_len: bool) -> list[Tensor]:
    """Each epoch's order, read by a `for` loop or, as Lightning does, by stopping after len(loader) batches."""
    return [torch.cat(list(islice(loader, len(loader)) if stop_at_len else loader)) for _ in range(epochs)]


def sampler_extra_draw(lab: Lab) -> Finding:
    """RandomSampler iterated past its end, training set a multiple of the batch size"""
    points, batch, epochs = 4 * lab.s.batch_size, lab.s.batch_size, 3
    same = {}
    for kind in ("shuffle=True", "EpochShuffle"):
        orders = []
        for stop_at_len in (False, True):
            generator = torch.Generator().manual_seed(lab.s.seed)
            if kind == "EpochShuffle":
                # As SpiralDataModule.train_dataloader builds it.
                sampler = EpochShuffle(points, generator)
                loader = DataLoader(torch.arange(points), batch, sampler=sampler, generator=generator)
            else:
                loader = DataLoader(torch.arange(points), batch, shuffle=True, generator=generator)
            orders.append(shuffle_orders(loader, epochs, stop_at_len))
        same[kind] = [torch.equal(a, b) for a, b in zip(*orders)]
    measured = "; ".join(
        f"`{kind}`: " + ", ".join(f"epoch {e} {'same' if s else 'differs'}" for e, s in enumerate(flags, start=1))
        for kind, flags in same.items()
    )
    return Finding(
        "9b",
        "`loader = DataLoader(..., shuffle=True, generator=g)`",
        f"a training set that the batch size divides ({points} points, batch {batch})",
        f"order read by a `for` loop vs stopping at `len(loader)`: {measured}",
        "(not in the essay)",
        "`RandomSampler` draws one more permutation when asked for an index past its last; a `for` loop asks, "
        "Lightning does not, so every later epoch shuffles differently"
        if same == {"shuffle=True": [True] + [False] * (epochs - 1), "EpochShuffle": [True] * epochs}
        else "not reproduced",
        "Lightning stops at `len(dataloader)`; `EpochShuffle` (data.py) draws each epoch's order when it starts. "
        "Back: `shuffle=True` with a training set that the batch size divides.",
    )


def commutes(lab: Lab, number: str, line: str, place: str, claim: str, lightning: str) -> Finding:
    correct, moved = lab.run(), lab.run({line: place})
    return Finding(
        number,
        f"`{line}`",
        place,
        gap(correct, moved),
        claim,
        "a line you may move: nothing changes, bit for bit" if identical(correct, moved) else "**the numbers change**",
        lightning,
    )


def scheduler_after_validation(lab: Lab) -> Finding:
    """scheduler.step() after validation instead of before"""
    return commutes(
        lab,
        "10a",
        "scheduler.step()",
        "after validation",
        "(its loop steps before validation)",
        "Lightning steps it on the last batch, before validation.",
    )


def zero_grad_after_forward(lab: Lab) -> Finding:
    """optimiser.zero_grad() after the forward, before loss.backward()"""
    return commutes(
        lab,
        "10b",
        "optimiser.zero_grad()",
        "after the forward",
        "(its loop clears before the forward)",
        "Lightning's own place: `optimizer_zero_grad` runs after `training_step`, just before `backward`.",
    )


ROWS: tuple[Callable[[Lab], Finding], ...] = (
    dtype_change_default,
    dtype_change_overwrite,
    zero_grad_left_out,
    zero_grad_before_step,
    zero_grad_after_step,
    clip_before_backward,
    clip_after_step,
    scheduler_in_batch_loop,
    train_left_out,
    eval_left_out,
    no_grad_left_out,
    loss_logged,
    shared_generator,
    sampler_extra_draw,
    scheduler_after_validation,
    zero_grad_after_forward,
)


def markdown(findings: list[Finding], s: Settings) -> str:
    lines = [
        f"torch {torch.__version__}, lightning {L.__version__}; {3 * s.points_per_class} spiral points, "
        f"{s.epochs} epochs, batch {s.batch_size}, Adam {s.lr:g}, cosine T_max={s.epochs}, clip max_norm {s.clip:g}, "
        f"validation in batches of {s.val_batch_size}. “a → b”: the correct loop → the loop with the line moved.",
        "",
        "| # | line | moved | measured | the essay says | on this torch | what guards it in Lightning |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {f.number} | {f.line} | {f.moved} | {f.measured} | {f.claim} | {f.verdict} | {f.guard} |" for f in findings
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> list[Finding]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small spiral for 4 epochs, in seconds")
    parser.add_argument("--out", type=Path, default=Path("logs/pitfalls/pitfalls.md"), help="where the table goes")
    config = parser.parse_args(args)
    # This model trains faster on one thread than on several, and one thread keeps every run repeatable.
    torch.set_num_threads(1)
    settings = QUICK if config.quick else FULL
    print(f"pitfalls lab: torch {torch.__version__} on {torch.get_num_threads()} thread; {settings}")
    lab, findings, start = Lab(settings), [], time.perf_counter()
    for i, row in enumerate(ROWS, start=1):
        print(f"[{i:2}/{len(ROWS)}] {row.__doc__} ...", end=" ", flush=True)
        row_start = time.perf_counter()
        findings.append(row(lab))
        print(f"{time.perf_counter() - row_start:.1f} s", flush=True)
    table = markdown(findings, settings)
    print(f"\n{table}\n")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(table + "\n")
    print(f"{len(findings)} rows in {time.perf_counter() - start:.0f} s; table written to {config.out}")
    return findings


if __name__ == "__main__":
    main()
