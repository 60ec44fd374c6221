"""The pitfalls lab: every row of the essay's crib sheet, run and measured on the installed torch.

    python -m lab                            # the essay's experiment, from the project's root
    python -m lab --quick                    # a small spiral for 4 epochs, in seconds, as the tests run it
    python -m lab --out docs/pitfalls.md     # the essay's experiment, written to docs/pitfalls.md

Each row trains loop.fit (src/{{ cookiecutter.package_name }}/loop.py) twice, from the same seed on the same data: as written, and
with exactly one line moved, left out or changed in its source (edits.py). One function per row, in the crib sheet's
order, holds what the row says before anything runs (its `@pitfall` line), the variant it runs, and what it measures:
what the move changed, in numbers, and whether the essay's claim holds on this torch. The lab prints the table and
writes the page docs/pitfalls.md shows to logs/pitfalls/pitfalls.md. tests/test_pitfalls.py asserts each symptom,
and that the correct loop shows none.
"""

import argparse
import dataclasses
import time
import warnings
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from {{ cookiecutter.package_name }}.machinery.loaders import EpochShuffle

from lab.edits import Edit, add, change, leave, move
from lab.runs import FULL, QUICK, Lab, N, Run, Settings, equal_steps, identical


class Measured(NamedTuple):
    measured: str  # "a → b": the correct loop → the loop with the line moved
    verdict: str  # whether the claim holds here, and why


class Row(NamedTuple):
    """A row of the table. `{dropout}`, `{batch_size}` in its texts: the lab's Settings."""

    number: str
    line: str  # the line of the essay's loop
    moved: str  # where it goes instead
    claim: str  # what the essay says happens
    guard: str  # what keeps the mistake out of a Lightning run, and what would bring it back
    measure: Callable[[Lab], Measured]  # runs the correct loop and the variant


ROWS: list[Row] = []


def pitfall(cells: str):
    """The row's static cells as the page's table shows them, "number | line | moved | claim | guard", for the
    function that measures it."""

    def row(measure: Callable[[Lab], Measured]) -> Callable[[Lab], Measured]:
        ROWS.append(Row(*cells.split(" | "), measure=measure))
        return measure

    return row


def cells(row: Row, s: Settings) -> tuple[str, str, str, str, str]:
    """The row's static cells (number, line, moved, claim, guard), with the settings filled in."""
    values = dataclasses.asdict(s)
    return row.number, *(text.format(**values) for text in (row.line, row.moved, row.claim, row.guard))


# --- how the cells read ---


def arrow(correct: object, moved: object) -> str:
    """Correct → moved, numbers to 3 significant digits."""

    def show(value: object) -> str:
        return f"{float(value):.3g}" if isinstance(value, float | torch.Tensor) else str(value)

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


def bites(run: Run, s: Settings) -> int:
    """Steps whose gradient clip_grad_norm_ found above max_norm."""
    return int((run.clip_saw > s.clip).sum())


def over_max_norm(run: Run, s: Settings) -> int:
    """Steps that applied a gradient above max_norm (clip_grad_norm_ leaves it at max_norm or just under)."""
    return int((run.applied > s.clip * (1 + 1e-4)).sum())


def commutes(lab: Lab, variant: Edit, same: str = "a line you may move: nothing changes, bit for bit") -> Measured:
    """The correct loop against `variant`: `same` when they are identical, bit for bit."""
    correct, moved = lab.run(), lab.run(variant)
    return Measured(
        measured=gap(correct, moved), verdict=same if identical(correct, moved) else "**the numbers change**"
    )


# --- the rows: the line, where it goes, the essay's claim, the guard; then the variant and what it measures ---

# loop.py's lines that the rows move, by their code.
ZERO_GRAD = "optimizer.zero_grad()"
LOSS = "loss = criterion(logits, y_batch)"
BACKWARD = "scaler.scale(loss / N).backward()"
CLIP = "torch.nn.utils.clip_grad_norm_(model.parameters(), hp.gradient_clip_val)"
STEP, UPDATE, UNSCALE = "scaler.step(optimizer)", "scaler.update()", "scaler.unscale_(optimizer)"
SCHEDULER_STEP = "scheduler.step()"
BATCH_END = "run.batch_end(loss, epoch, steps)"
EPOCH_END = "run.epoch_end(epoch, val_loss, val_metrics)"

# Rows 1a, 1b: the model converted to float64 (and given float64 points) where loop.py moves it to its device.
TO_FLOAT64 = change("model.to(device)", "model.to(device, torch.float64)")
FLOAT64_LATE = move(
    "model.to(device, torch.float64)", after="optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)"
)
DTYPE = "`model.to(torch.float64)`, a dtype change like `.half()`"
OVERWRITE = "`torch.__future__.set_overwrite_module_params_on_conversion(True)`"
DTYPE_CLAIM = "new Parameter objects are made and the optimizer updates the discarded ones"
DTYPE_GUARD = (
    "The Trainer converts and moves the model (`precision`, `accelerator`) before `configure_optimizers`. "
    "Back: converting it in a later hook, e.g. `self.double()` in `on_train_start`, with the flag on."
)


def dtype_change(lab: Lab, overwrite: bool) -> Measured:
    # float64 stands in for .half(): both convert every Parameter. Adam cannot train float16 weights on the CPU
    # (its eps=1e-8 rounds to 0 in float16 and the weights turn NaN at the first step).
    correct = lab.run(TO_FLOAT64, float64=True, overwrite=overwrite)
    moved = lab.run(TO_FLOAT64, FLOAT64_LATE, float64=True, overwrite=overwrite)
    flag = f"with {OVERWRITE}" if overwrite else "torch's default"
    measured = (
        f"optimizer holds the model's Parameters: "
        f"{arrow(yes(correct.optimizer_has_model_params), yes(moved.optimizer_has_model_params))}; "
        f"largest weight change {arrow(correct.change, moved.change)}; {gap(correct, moved)}"
    )
    if moved.optimizer_has_model_params and identical(correct, moved):
        verdict = f"**no**, with {flag}: `.to()` converts each Parameter in place, the run is the correct one"
    elif not moved.optimizer_has_model_params and moved.change == 0:
        verdict = f"**yes**, {flag}: new Parameters; the optimizer steps the old ones, the model never trains"
    else:
        verdict = "**partly**: see the numbers"
    return Measured(measured=measured, verdict=verdict)


@pitfall(f"1a | {DTYPE} | after the optimizer is built; torch's default | {DTYPE_CLAIM} | {DTYPE_GUARD}")
def dtype_change_default(lab: Lab) -> Measured:
    return dtype_change(lab, overwrite=False)


@pitfall(f"1b | {DTYPE} | after the optimizer is built; with {OVERWRITE} | {DTYPE_CLAIM} | {DTYPE_GUARD}")
def dtype_change_overwrite(lab: Lab) -> Measured:
    return dtype_change(lab, overwrite=True)


ZERO_GRAD_GUARD = (
    "`optimizer_zero_grad`, which the Trainer calls before each `backward`. Back: `Trainer(accumulate_grad_batches=N)` "
    "skips it on purpose (and divides the loss by N); manual optimization hands the line back to you."
)


@pitfall(
    "2a | `optimizer.zero_grad()` | left out | "
    f"gradients of several batches pile up; the update uses their sum | {ZERO_GRAD_GUARD}"
)
def zero_grad_left_out(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run(leave(ZERO_GRAD))
    later = moved.leftover[1:]  # every step after the first
    holds = f"holds earlier gradients on {int((later > 0).sum())} of {len(later)} later steps"
    return Measured(
        measured=f"`.grad` when `backward` runs: {arrow('empty', holds)} (norm {later.min():.2g}–{later.max():.2g}); "
        f"clipping bites on {arrow(bites(correct, lab.s), bites(moved, lab.s))} of {len(correct.losses)} steps; "
        f"{gap(correct, moved)}",
        verdict="**yes**: each `backward` adds to what `.grad` holds (clipping then scales the sum in place)"
        if bool((later > 0).all()) and not correct.leftover.any()
        else "**no**",
    )


@pitfall(
    "2b | `optimizer.zero_grad()` | between `loss.backward()` and `optimizer.step()` | "
    f"(“after `loss.backward()`”) gradients pile up | {ZERO_GRAD_GUARD}"
)
def zero_grad_before_step(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run(move(ZERO_GRAD, after=BACKWARD))
    applied = arrow(correct.applied.mean(), moved.applied.mean())
    return Measured(
        measured=f"mean gradient norm `optimizer.step()` applies {applied}; "
        f"largest weight change {arrow(correct.change, moved.change)}; "
        f"final validation loss (accuracy) {arrow(final(correct), final(moved))}",
        verdict="**no**, worse: `zero_grad()` sets `.grad` to None, Adam skips Parameters without one, "
        "the model never trains"
        if moved.change == 0 and not moved.applied.any()
        else "**no**",
    )


@pitfall(
    "2c | `optimizer.zero_grad()` | after `optimizer.step()`, at the end of the batch | "
    f"(“after `loss.backward()`”, read as after the step) gradients pile up | {ZERO_GRAD_GUARD}"
)
def zero_grad_after_step(lab: Lab) -> Measured:
    return commutes(lab, move(ZERO_GRAD, after=BATCH_END), same="**no**: harmless, bit for bit the correct run")


CLIPPING = "`clip_grad_norm_()`"
CLIP_GUARD = (
    "`Trainer(gradient_clip_val=...)`: `configure_gradient_clipping` runs between `backward` and the step. "
    "Back: clipping yourself in `training_step` (before `backward`) or `on_train_batch_end` (after the step)."
)


def against_unclipped(lab: Lab, correct: Run, moved: Run) -> str:
    unclipped = lab.run(leave(CLIP))
    same = arrow(*(yes(identical(run, unclipped)) for run in (correct, moved)))
    over = arrow(over_max_norm(correct, lab.s), over_max_norm(moved, lab.s))
    return (
        f"steps applying a gradient above max_norm {lab.s.clip:g}: {over} of {len(correct.losses)}; "
        f"the run without clipping, bit for bit: {same}"
    )


@pitfall(
    f"3 | {CLIPPING} | before `loss.backward()` | there are no gradients yet; the call does nothing | {CLIP_GUARD}"
)
def clip_before_backward(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run(move(CLIP, before=BACKWARD))
    return Measured(
        measured=f"largest norm `clip_grad_norm_` saw {arrow(correct.clip_saw.max(), moved.clip_saw.max())}; "
        f"{against_unclipped(lab, correct, moved)}",
        verdict="**yes**: it sees no gradient, the run equals one without clipping, bit for bit"
        if moved.clip_saw.max() == 0 and identical(moved, lab.run(leave(CLIP)))
        else "**no**",
    )


@pitfall(f"4 | {CLIPPING} | after `optimizer.step()` | clips gradients already applied; no effect | {CLIP_GUARD}")
def clip_after_step(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run(move(CLIP, after=STEP))
    return Measured(
        measured=against_unclipped(lab, correct, moved),
        verdict="**yes**: the run equals one without clipping, bit for bit"
        if identical(moved, lab.run(leave(CLIP)))
        else "**no**",
    )


@pitfall(
    "5 | `scheduler.step()` | inside the batch loop | "
    "the LR decays `len(loader)` times per epoch instead of once | "
    '`lr_scheduler_step` with `"interval": "epoch"` from `configure_optimizers`. Back: `"interval": "step"`.'
)
def scheduler_in_batch_loop(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run(move(SCHEDULER_STEP, after=UPDATE))
    steps, epochs = correct.steps_per_epoch, min(5, lab.s.epochs)

    def trace(run: Run) -> str:
        return "[" + ", ".join(f"{lr:.2e}" for lr in run.lrs[::steps][:epochs]) + "]"

    changes = [int((run.lrs[1:steps] != run.lrs[: steps - 1]).sum()) for run in (correct, moved)]
    zero = (moved.lrs < 1e-9 * lab.s.lr).nonzero()
    return Measured(
        measured=f"LR at the start of epochs 1–{epochs}: {arrow(trace(correct), trace(moved))}; "
        f"LR changes within epoch 1: {arrow(*changes)}"
        + (f"; it reaches 0 at step {int(zero[0])} and climbs again (period 2·T_max)" if len(zero) else "")
        + f"; final validation loss (accuracy) {arrow(final(correct), final(moved))}",
        verdict=f"**yes**: {steps} decays per epoch, so T_max={lab.s.epochs} runs out in "
        f"{lab.s.epochs / steps:.1f} epochs"
        if changes == [0, steps - 1]
        else "**no**",
    )


@pitfall(
    "6 | `model.train()` | left out, after `model.eval()`; the MLP with dropout {dropout:g} | "
    "dropout off, BatchNorm frozen, training goes on in eval mode | "
    "Validation notes each submodule's mode before `eval()` and restores it after "
    "(`on_validation_model_train`); the Trainer warns about modules in eval mode when training starts. Back: "
    "overriding `on_validation_model_train` without calling `train()`."
)
def train_left_out(lab: Lab) -> Measured:
    correct, moved = lab.run(dropout=lab.s.dropout), lab.run(leave("model.train()"), dropout=lab.s.dropout)
    in_train_mode = [f"{run.train_mode.float().mean():.0%}" for run in (correct, moved)]
    batches = len(moved.train_mode) // lab.s.epochs
    eval_from_epoch_2 = bool(moved.train_mode[:batches].all()) and not moved.train_mode[batches:].any()
    return Measured(
        measured=f"training forwards in train mode: {arrow(*in_train_mode)}; {gap(correct, moved)}",
        verdict="**yes** for dropout: eval mode from epoch 2 on (this MLP has no BatchNorm)"
        if eval_from_epoch_2 and correct.train_mode.all()
        else "**no**",
    )


@pitfall(
    "6b | `model.eval()` | left out; the MLP with dropout {dropout:g} | (not in the crib sheet) | "
    "`on_validation_model_eval`, which the Trainer calls before validation. Back: overriding it without "
    "`eval()`."
)
def eval_left_out(lab: Lab) -> Measured:
    correct, moved = lab.run(dropout=lab.s.dropout), lab.run(leave("model.eval()"), dropout=lab.s.dropout)
    shifts = equal_steps(correct.losses, moved.losses) == moved.steps_per_epoch
    after_epoch_1 = arrow(f"{correct.val_losses[0]:.4f}", f"{moved.val_losses[0]:.4f}")
    return Measured(
        measured=f"validation loss after epoch 1: {after_epoch_1}; {gap(correct, moved)}",
        verdict="dropout stays on in validation, and training changes from epoch 2: validation's dropout draws from "
        "the global RNG and shifts the training masks"
        if shifts and correct.val_losses[0] != moved.val_losses[0]
        else "no effect measured",
    )


# Row 7: loop.py's MeanMetric adds up the validation loss without grad; the essay's loop adds it up itself.
SUMMED = (
    add("val_total = 0.0", before="for X_val, y_val in val_loader:"),
    add(
        "val_total = val_total + criterion(val_logits, y_val) * len(y_val)",
        after="val_loss.update(criterion(val_logits, y_val), weight=len(y_val))",
    ),
)
NO_GRAD, NO_SYNC = "with torch.no_grad():", "with run.no_sync(not steps):"


@pitfall(
    "7 | `with torch.no_grad():` | "
    "left out of validation, which sums the loss over its batches (`val_total + loss * len(y)`) | "
    "an autograd graph is built for every validation batch; memory grows | "
    "During `fit` the Trainer validates under `torch.no_grad()` (`validate` and `test`: "
    "`torch.inference_mode()`). Back: `torch.enable_grad()` inside `validation_step`."
)
def no_grad_left_out(lab: Lab) -> Measured:
    correct, moved = lab.run(*SUMMED), lab.run(*SUMMED, leave(NO_GRAD))
    metric_alone = lab.run(leave(NO_GRAD))  # loop.py as it is, without the sum
    per_batch = ", ".join(str(int(n)) for n in moved.kept[0])
    grows = bool((moved.kept[:, 1:] > moved.kept[:, :-1]).all()) and correct.kept.max() == 0
    return Measured(
        measured="tensors autograd keeps alive after each validation batch: "
        f"{arrow(int(correct.kept.max()), per_batch)} "
        f"({moved.kept_bytes[0, -1] / 2**20:.2f} MiB at the end of validation; the next epoch's sum frees them; "
        f"with loop.py's `MeanMetric` and no sum: at most {int(metric_alone.kept.max())}, one batch's); "
        f"{gap(correct, moved)}",
        verdict="**yes**: a graph per batch, kept as long as the summed loss is; the numbers do not change"
        if grows and identical(correct, moved)
        else "**no**",
    )


@pitfall(
    "8 | logging `loss` | instead of `loss.item()` | the computation graph is kept alive | "
    "`self.log` detaches what it keeps. Back: `self.log(..., enable_graph=True)`, or keeping `loss` "
    "yourself, e.g. in a list on the module."
)
def loss_logged(lab: Lab) -> Measured:
    # Not an edit of loop.fit: it hands `loss` to `run.batch_end`, and what is kept of it is the run's line
    # (PlainRun logs `loss.item()`); this run keeps the tensor.
    correct, moved = lab.run(), lab.run(log_tensors=True)
    return Measured(
        measured="autograd nodes the log keeps alive after training: "
        f"{arrow(correct.logged_nodes, moved.logged_nodes)} "
        f"(about {moved.logged_nodes / len(moved.losses):.0f} per step); tensors saved for backward still alive: "
        f"{arrow(correct.kept_after, moved.kept_after)}; {gap(correct, moved)}",
        verdict="**yes**, its nodes, one graph per step; `backward` has already freed the activations they saved"
        if moved.logged_nodes > len(moved.losses) and correct.logged_nodes == 0
        else "**no**",
    )


# Row 9: the essay's DataLoader, shuffled from torch's global RNG, and the essay's validation on the whole tensor.
ESSAY_LOADER = change(
    "loader = data.train_dataloader()",
    "loader = torch.utils.data.DataLoader(data.train_set, data.hparams.batch_size, shuffle=True)",
)
ON_TENSOR = change("val_loader = data.val_dataloader()", "val_loader = [data.val_set.tensors]")


@pitfall(
    "9 | `loader = DataLoader(..., shuffle=True)` | "
    "without a `generator` of its own, in a loop that validates on a DataLoader rather than a tensor | "
    "(not in the essay) | "
    "Lightning iterates a validation DataLoader every epoch; `SpiralDataModule.train_dataloader` shuffles "
    "with its own seeded generator. Back: `DataLoader(..., shuffle=True)` without `generator=`."
)
def shared_generator(lab: Lab) -> Measured:
    agree = {}
    for generator, loader in ((False, (ESSAY_LOADER,)), (True, ())):
        on_tensor, on_loader = lab.run(*loader, ON_TENSOR), lab.run(*loader)
        agree[generator] = equal_steps(on_tensor.losses, on_loader.losses)
    steps, total = on_tensor.steps_per_epoch, len(on_tensor.losses)
    return Measured(
        measured=f"losses equal between the two loops: without a generator {agree[False]} of {total} steps "
        f"(epoch 1 has {steps}); with `SpiralDataModule`'s seeded generator {agree[True]} of {total}",
        verdict="the shuffle order shifts from epoch 2: each `iter()` of a DataLoader, the validation one too, "
        "draws a number from torch's global RNG"
        if agree[False] == steps and agree[True] == total
        else "not reproduced",
    )


def shuffle_orders(loader: DataLoader, epochs: int, stop_at_len: bool) -> list[torch.Tensor]:
    """Each epoch's order, read by a `for` loop or, as Lightning does, by stopping after len(loader) batches."""
    return [torch.cat(list(islice(loader, len(loader)) if stop_at_len else loader)) for _ in range(epochs)]


@pitfall(
    "9b | `loader = DataLoader(..., shuffle=True, generator=g)` | "
    "a training set that the batch size divides (4 batches of {batch_size} points) | (not in the essay) | "
    "Lightning stops at `len(dataloader)`; `EpochShuffle` (machinery/loaders.py) draws each epoch's order "
    "when it starts. Back: `shuffle=True` with a training set that the batch size divides."
)
def sampler_extra_draw(lab: Lab) -> Measured:
    # Not an edit of loop.fit: the pitfall is the sampler's alone, seen by reading a DataLoader with no training.
    points, batch, epochs = 4 * lab.s.batch_size, lab.s.batch_size, 3
    same = {}
    for kind in ("shuffle=True", "EpochShuffle"):
        orders = []
        for stop_at_len in (False, True):
            generator = torch.Generator().manual_seed(lab.s.seed)
            if kind == "EpochShuffle":  # as SpiralDataModule.train_dataloader builds it
                sampler = EpochShuffle(points, generator)
                loader = DataLoader(torch.arange(points), batch, sampler=sampler, generator=generator)
            else:
                loader = DataLoader(torch.arange(points), batch, shuffle=True, generator=generator)
            orders.append(shuffle_orders(loader, epochs, stop_at_len))
        same[kind] = [torch.equal(a, b) for a, b in zip(*orders, strict=True)]
    measured = "; ".join(
        f"`{kind}`: " + ", ".join(f"epoch {e} {'same' if s else 'differs'}" for e, s in enumerate(flags, start=1))
        for kind, flags in same.items()
    )
    return Measured(
        measured=f"order read by a `for` loop vs stopping at `len(loader)`: {measured}",
        verdict="`RandomSampler` draws one more permutation when asked for an index past its last; a `for` loop asks, "
        "Lightning does not, so every later epoch shuffles differently"
        if same == {"shuffle=True": [True] + [False] * (epochs - 1), "EpochShuffle": [True] * epochs}
        else "not reproduced",
    )


@pitfall(
    "10a | `scheduler.step()` | after validation | (its loop steps before validation) | "
    "Lightning steps it on the last batch, before validation."
)
def scheduler_after_validation(lab: Lab) -> Measured:
    return commutes(lab, move(SCHEDULER_STEP, before=EPOCH_END))


@pitfall(
    "10b | `optimizer.zero_grad()` | after the forward | (its loop clears before the forward) | "
    "Lightning's own place: `optimizer_zero_grad` runs after `training_step`, just before `backward`."
)
def zero_grad_after_forward(lab: Lab) -> Measured:
    return commutes(lab, move(ZERO_GRAD, after=LOSS))


# --- accumulation and mixed precision ---

ACCUMULATING = f"accumulating {N} batches a step"
NOT_DIVIDED = change(BACKWARD, "scaler.scale(loss).backward()")
ZERO_GRAD_EVERY_BATCH = move(ZERO_GRAD, before="if batch_idx % N == 0:")


@pitfall(
    f"11a | `loss / N` | left out: `loss` as it is, {ACCUMULATING} | "
    "(not in the essay) N times the gradient: as if the learning rate were N times higher | "
    "The closure divides the loss by `accumulate_grad_batches` (`ClosureResult`). Back: manual optimization, "
    "or a `backward` of your own."
)
def loss_not_divided(lab: Lab) -> Measured:
    correct = lab.run(accumulate=N)
    moved = lab.run(NOT_DIVIDED, accumulate=N)
    ratio = moved.clip_saw[0] / correct.clip_saw[0]
    return Measured(
        measured=f"gradient norm at the first step {arrow(correct.clip_saw[0], moved.clip_saw[0])} (×{ratio:.3g}); "
        f"clipping bites on {arrow(bites(correct, lab.s), bites(moved, lab.s))} of {len(correct.losses)} steps; "
        f"{gap(correct, moved)}",
        verdict=f"**yes**, ×{N} the gradient; but Adam divides each step by the gradient's own scale, so only "
        f"the clipping and Adam's eps see it (SGD's steps would be ×{N})"
        if ratio == N and not identical(correct, moved)
        else "**no**",
    )


@pitfall(
    f"11b | `optimizer.zero_grad()` | at every batch, {ACCUMULATING} | "
    "(not in the essay) nothing accumulates | "
    "The closure calls `optimizer_zero_grad` on a window's first batch alone. Back: `optimizer.zero_grad()` "
    "of your own in `training_step` or `on_train_batch_start`."
)
def zero_grad_every_batch(lab: Lab) -> Measured:
    correct = lab.run(accumulate=N)
    moved = lab.run(ZERO_GRAD_EVERY_BATCH, accumulate=N)
    held = [f"{int((run.leftover > 0).sum())} of {len(run.leftover)}" for run in (correct, moved)]
    return Measured(
        measured=f"batches whose `backward` adds to earlier batches' gradients: {arrow(*held)}; {gap(correct, moved)}",
        verdict="**yes**: each step applies its window's last batch alone, divided by N"
        if not moved.leftover.any() and correct.leftover.any()
        else "**no**",
    )


# Row 11c: a cosine schedule over the optimizer steps, stepped with the optimizer (Lightning's "interval": "step").
OVER_STEPS = change(
    "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.max_epochs)",
    "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR("
    "optimizer, T_max=hp.max_epochs * -(-len(loader) // hp.accumulate_grad_batches))",
)


@pitfall(
    f"11c | `scheduler.step()`, a schedule over the optimizer steps | at every batch, {ACCUMULATING} | "
    "(not in the essay) the schedule runs N times too fast | "
    'An `"interval": "step"` scheduler steps with the optimizer: `update_lr_schedulers` skips the batches '
    "the fit loop accumulates. Back: stepping it yourself in `on_train_batch_end`."
)
def scheduler_every_batch(lab: Lab) -> Measured:
    correct = lab.run(OVER_STEPS, move(SCHEDULER_STEP, after=UPDATE), accumulate=N)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        moved = lab.run(OVER_STEPS, move(SCHEDULER_STEP, after=BATCH_END), accumulate=N)
    said = [str(w.message).split(". ")[0] for w in warned]
    steps = len(correct.lrs)
    lowest = [int(run.lrs.argmin()) for run in (correct, moved)]
    return Measured(
        measured=f"the learning rate's lowest point, at step {arrow(*lowest)} of {steps}; "
        f"torch warned {len(said)} time{'' if len(said) == 1 else 's'}{f' (“{said[0]}”)' if said else ''}; "
        f"final validation loss (accuracy) {arrow(final(correct), final(moved))}",
        verdict=f"**yes**: {len(moved.train_mode) / steps:.3g} scheduler steps per optimizer step; it reaches its "
        "end long before the run does, and climbs again (period 2·T_max)"
        if lowest[1] < lowest[0]
        else "**no**",
    )


@pitfall(
    "11d | `scaler.unscale_(optimizer)` | after `clip_grad_norm_()`, fp16 with a GradScaler | "
    "(not in the essay) the clipping sees the gradients times the loss scale | "
    "`MixedPrecision.optimizer_step` unscales before `configure_gradient_clipping`. Back: clipping yourself "
    "in `on_after_backward` under `16-mixed`."
)
def unscale_after_clipping(lab: Lab) -> Measured:
    correct, moved = lab.run(fp16=True), lab.run(move(UNSCALE, before=STEP), fp16=True)
    saw = [run.clip_saw[run.clip_saw.isfinite()].max() for run in (correct, moved)]
    applied = [run.applied[run.applied.isfinite()] for run in (correct, moved)]
    skipped = [len(run.losses) - run.taken for run in (correct, moved)]
    return Measured(
        measured=f"largest finite norm `clip_grad_norm_` saw {arrow(*saw)}; steps the scaler "
        f"skipped (an inf gradient) {arrow(*skipped)} of {len(correct.losses)}; mean norm of the gradient a step "
        f"applied {arrow(applied[0].mean(), applied[1].mean())}; {gap(correct, moved)}",
        verdict="**yes**: it cuts the scaled gradient to max_norm, and unscaled the step applies max_norm / 2¹⁶; "
        "Adam's normalisation hides most of it"
        if applied[1].max() <= lab.s.clip / 2**16 * (1 + 1e-4) < applied[0].max()
        else "**no**",
    )


# Row 11e: a loss scale that overflows at once, so that the scaler has to back off.
SCALE_2_24 = change(
    'scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "16-mixed")',
    'scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "16-mixed", init_scale=2.0**24)',
)


@pitfall(
    "11e | `scaler.update()` | left out; fp16, the loss scale starting at 2²⁴, which overflows | "
    "(not in the essay) the scale never backs off: every step is skipped | "
    "`MixedPrecision.optimizer_step` updates the scaler after each step. Back: manual optimization with a "
    "GradScaler of your own."
)
def scaler_update_left_out(lab: Lab) -> Measured:
    correct = lab.run(SCALE_2_24, fp16=True)
    skipped = len(correct.losses) - correct.taken
    try:
        lab.run(SCALE_2_24, leave(UPDATE), fp16=True)
    except RuntimeError as error:
        return Measured(
            measured=f"with `update()`, {skipped} of {len(correct.losses)} steps skipped while the scale backs off "
            f"from 2²⁴ to {correct.scales.min():.0f}; without, the second step raises `RuntimeError: {error}`",
            verdict="**no**, not silent: the GradScaler refuses a second `unscale_` or `step` before `update()`",
        )
    return Measured(measured="no error", verdict="**yes**: see the numbers")


@pitfall(
    "11f | `with model.no_sync():` | "
    f"left out of the batches before a window's last; DDP in 2 processes, {ACCUMULATING} | "
    "(not in the essay) a gradient all-reduce at every batch | "
    "`DDPStrategy.block_backward_sync` (`no_sync`) on the batches the fit loop accumulates. Back: manual "
    "optimization without `no_sync`."
)
def no_sync_left_out(lab: Lab) -> Measured:
    (with_no_sync, synced), (without, unsynced) = lab.ddp((), (leave(NO_SYNC),))
    changed = sum(int((synced[k] != unsynced[k]).sum()) for k in synced)
    weights = sum(t.numel() for t in synced.values())
    largest = max((synced[k].double() - unsynced[k].double()).abs().max().item() for k in synced)
    return Measured(
        measured=f"gradient all-reduces in each process: {arrow(with_no_sync, without)}; final weights that differ: "
        f"{changed} of {weights}, by up to {largest:.2g}",
        verdict="**yes**, and the bits change: each batch's gradients are averaged over the processes, then added "
        "up, where `no_sync` adds them up and averages once"
        if without > with_no_sync and changed
        else "**partly**: see the numbers",
    )


# --- the table and the page ---

HEADER = (
    "| # | line | moved | measured | the essay says | on this torch | what guards it in Lightning |\n"
    "|---|---|---|---|---|---|---|"
)
INTRO = """\
# The pitfalls lab: what breaks if you move a line

The essay's crib sheet lists misplaced lines that raise no exception.
The lab ([`lab/pitfalls.py`](../lab/pitfalls.py)), beside the package rather than in it, runs each one:
`loop.fit` ([`loop.py`](../src/{{ cookiecutter.package_name }}/loop.py)) as written, and the same function with exactly that line
moved, left out or changed in its source, from the same seed on the same data. It measures what changed and says
whether the essay's claim holds on your torch.

```bash
# from the project's root: the essay's experiment, about two minutes on one thread
python -m lab
# a small spiral for 4 epochs, seconds
python -m lab --quick
```

Both print the table and write this page to `logs/pitfalls/pitfalls.md`; `--out docs/pitfalls.md` writes it here.
`tests/test_pitfalls.py` asserts every symptom, and that the correct loop shows none of them. Memory is measured by
counting the tensors autograd keeps alive, not by timing or RSS. The table's first line names the torch, the
lightning and the settings of the run that wrote it.
"""
OUTRO = """
Measured for this page: a second run repeats every number bit for bit, and rows 2a, 11d and 11f repeat on 2 threads
too, so nothing unseeded moves them; the numbers depend on the CPU instead: with MKL held to AVX2 instructions
(`MKL_ENABLE_INSTRUCTIONS=AVX2`) rows 2a and 11f come out different, and an earlier run on another machine gave
other numbers in most rows, with the same verdicts.
"""


def described(s: Settings) -> str:
    """The settings line of the table, after the versions."""
    return (
        f"{3 * s.points_per_class} spiral points, {s.epochs} epochs, batch {s.batch_size}, Adam {s.lr:g}, "
        f"cosine T_max={s.epochs}, clip max_norm {s.clip:g}, validation in batches of {s.val_batch_size}. "
        "“a → b”: the correct loop → the loop with the line moved."
    )


def table(measured: list[Measured], s: Settings) -> str:
    lines = [f"torch {torch.__version__}, lightning {L.__version__}; {described(s)}", "", HEADER]
    for row, m in zip(ROWS, measured, strict=True):
        number, line, moved, claim, guard = cells(row, s)
        lines.append(f"| {number} | {line} | {moved} | {m.measured} | {claim} | {m.verdict} | {guard} |")
    return "\n".join(lines)


def page(table: str) -> str:
    return f"{INTRO}\n{table}\n{OUTRO}"


def main(args: list[str] | None = None) -> list[Measured]:
    parser = argparse.ArgumentParser(
        prog="python -m lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small spiral for 4 epochs, in seconds")
    parser.add_argument("--out", type=Path, default=Path("logs/pitfalls/pitfalls.md"), help="where the page goes")
    config = parser.parse_args(args)
    # This model trains faster on one thread than on several, and one thread keeps every run repeatable.
    torch.set_num_threads(1)
    settings = QUICK if config.quick else FULL
    print(f"pitfalls lab: torch {torch.__version__} on {torch.get_num_threads()} thread; {settings}")
    lab, measured, start = Lab(settings), [], time.perf_counter()
    for i, row in enumerate(ROWS, start=1):
        number, line, moved, *_ = cells(row, settings)
        print(f"[{i:2}/{len(ROWS)}] {number}: {line} {moved} ...".replace("`", ""), end=" ", flush=True)
        row_start = time.perf_counter()
        measured.append(row.measure(lab))
        print(f"{time.perf_counter() - row_start:.1f} s", flush=True)
    text = table(measured, settings)
    print(f"\n{text}\n")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(page(text))
    print(f"{len(measured)} rows in {time.perf_counter() - start:.0f} s; page written to {config.out}")
    return measured
