"""The pitfalls table's rows as data: what each row says before anything runs, and the page around the table.

pitfalls.py measures each row (its MEASURE functions give the measured and verdict cells) and renders the table;
tests/test_pitfalls.py checks docs/pitfalls.md's static cells against ROWS.
"""

import dataclasses
from typing import NamedTuple

from {{ cookiecutter.package_name }}.pitfalls_lab import N, Settings


class Row(NamedTuple):
    """What a row of the table says before anything runs. `{dropout}`, `{batch_size}`: the lab's Settings."""

    number: str
    line: str  # the line of the essay's loop
    moved: str  # where it goes instead
    claim: str  # what the essay says happens
    guard: str  # what keeps the mistake out of a Lightning run, and what would bring it back


DTYPE = "`model.to(torch.float64)`, a dtype change like `.half()`"
OVERWRITE = "`torch.__future__.set_overwrite_module_params_on_conversion(True)`"
DTYPE_CLAIM = "new Parameter objects are made and the optimizer updates the discarded ones"
DTYPE_GUARD = (
    "The Trainer converts and moves the model (`precision`, `accelerator`) before `configure_optimizers`. "
    "Back: converting it in a later hook, e.g. `self.double()` in `on_train_start`, with the flag on."
)
ZERO_GRAD_GUARD = (
    "`optimizer_zero_grad`, which the Trainer calls before each `backward`. Back: `Trainer(accumulate_grad_batches=N)` "
    "skips it on purpose (and divides the loss by N); manual optimization hands the line back to you."
)
CLIP_GUARD = (
    "`Trainer(gradient_clip_val=...)`: `configure_gradient_clipping` runs between `backward` and the step. "
    "Back: clipping yourself in `training_step` (before `backward`) or `on_train_batch_end` (after the step)."
)

ACCUMULATING = f"accumulating {N} batches a step"
ROWS = (
    Row(
        number="1a",
        line=DTYPE,
        moved="after the optimizer is built; torch's default",
        claim=DTYPE_CLAIM,
        guard=DTYPE_GUARD,
    ),
    Row(
        number="1b",
        line=DTYPE,
        moved=f"after the optimizer is built; with {OVERWRITE}",
        claim=DTYPE_CLAIM,
        guard=DTYPE_GUARD,
    ),
    Row(
        number="2a",
        line="`optimizer.zero_grad()`",
        moved="left out",
        claim="gradients of several batches pile up; the update uses their sum",
        guard=ZERO_GRAD_GUARD,
    ),
    Row(
        number="2b",
        line="`optimizer.zero_grad()`",
        moved="between `loss.backward()` and `optimizer.step()`",
        claim="(“after `loss.backward()`”) gradients pile up",
        guard=ZERO_GRAD_GUARD,
    ),
    Row(
        number="2c",
        line="`optimizer.zero_grad()`",
        moved="after `optimizer.step()`, at the end of the batch",
        claim="(“after `loss.backward()`”, read as after the step) gradients pile up",
        guard=ZERO_GRAD_GUARD,
    ),
    Row(
        number="3",
        line="`clip_grad_norm_()`",
        moved="before `loss.backward()`",
        claim="there are no gradients yet; the call does nothing",
        guard=CLIP_GUARD,
    ),
    Row(
        number="4",
        line="`clip_grad_norm_()`",
        moved="after `optimizer.step()`",
        claim="clips gradients already applied; no effect",
        guard=CLIP_GUARD,
    ),
    Row(
        number="5",
        line="`scheduler.step()`",
        moved="inside the batch loop",
        claim="the LR decays `len(loader)` times per epoch instead of once",
        guard='`lr_scheduler_step` with `"interval": "epoch"` from `configure_optimizers`. Back: `"interval": "step"`.',
    ),
    Row(
        number="6",
        line="`model.train()`",
        moved="left out, after `model.eval()`; the MLP with dropout {dropout:g}",
        claim="dropout off, BatchNorm frozen, training goes on in eval mode",
        guard="Validation notes each submodule's mode before `eval()` and restores it after "
        "(`on_validation_model_train`); the Trainer warns about modules in eval mode when training starts. "
        "Back: overriding `on_validation_model_train` without calling `train()`.",
    ),
    Row(
        number="6b",
        line="`model.eval()`",
        moved="left out; the MLP with dropout {dropout:g}",
        claim="(not in the crib sheet)",
        guard="`on_validation_model_eval`, which the Trainer calls before validation. "
        "Back: overriding it without `eval()`.",
    ),
    Row(
        number="7",
        line="`with torch.no_grad():`",
        moved="left out of validation",
        claim="an autograd graph is built for every validation batch; memory grows",
        guard="During `fit` the Trainer validates under `torch.no_grad()` "
        "(`validate` and `test`: `torch.inference_mode()`). Back: `torch.enable_grad()` inside `validation_step`.",
    ),
    Row(
        number="8",
        line="logging `loss`",
        moved="instead of `loss.item()`",
        claim="the computation graph is kept alive",
        guard="`self.log` detaches what it keeps. Back: `self.log(..., enable_graph=True)`, or keeping `loss` "
        "yourself, e.g. in a list on the module.",
    ),
    Row(
        number="9",
        line="`loader = DataLoader(..., shuffle=True)`",
        moved="without a `generator` of its own, in a loop that validates on a DataLoader rather than a tensor",
        claim="(not in the essay)",
        guard="Lightning iterates a validation DataLoader every epoch; `SpiralDataModule.train_dataloader` shuffles "
        "with its own seeded generator. Back: `DataLoader(..., shuffle=True)` without `generator=`.",
    ),
    Row(
        number="9b",
        line="`loader = DataLoader(..., shuffle=True, generator=g)`",
        moved="a training set that the batch size divides (4 batches of {batch_size} points)",
        claim="(not in the essay)",
        guard="Lightning stops at `len(dataloader)`; `EpochShuffle` (machinery/loaders.py) draws each epoch's order "
        "when it starts. Back: `shuffle=True` with a training set that the batch size divides.",
    ),
    Row(
        number="10a",
        line="`scheduler.step()`",
        moved="after validation",
        claim="(its loop steps before validation)",
        guard="Lightning steps it on the last batch, before validation.",
    ),
    Row(
        number="10b",
        line="`optimizer.zero_grad()`",
        moved="after the forward",
        claim="(its loop clears before the forward)",
        guard="Lightning's own place: `optimizer_zero_grad` runs after `training_step`, just before `backward`.",
    ),
    Row(
        number="11a",
        line="`loss / N`",
        moved=f"left out: `loss` as it is, {ACCUMULATING}",
        claim="(not in the essay) N times the gradient: as if the learning rate were N times higher",
        guard="The closure divides the loss by `accumulate_grad_batches` (`ClosureResult`). "
        "Back: manual optimization, or a `backward` of your own.",
    ),
    Row(
        number="11b",
        line="`optimizer.zero_grad()`",
        moved=f"at every batch, {ACCUMULATING}",
        claim="(not in the essay) nothing accumulates",
        guard="The closure calls `optimizer_zero_grad` on a window's first batch alone. "
        "Back: `optimizer.zero_grad()` of your own in `training_step` or `on_train_batch_start`.",
    ),
    Row(
        number="11c",
        line="`scheduler.step()`, a schedule over the optimizer steps",
        moved=f"at every batch, {ACCUMULATING}",
        claim="(not in the essay) the schedule runs N times too fast",
        guard='An `"interval": "step"` scheduler steps with the optimizer: `update_lr_schedulers` skips the batches '
        "the fit loop accumulates. Back: stepping it yourself in `on_train_batch_end`.",
    ),
    Row(
        number="11d",
        line="`scaler.unscale_(optimizer)`",
        moved="after `clip_grad_norm_()`, fp16 with a GradScaler",
        claim="(not in the essay) the clipping sees the gradients times the loss scale",
        guard="`MixedPrecision.optimizer_step` unscales before `configure_gradient_clipping`. "
        "Back: clipping yourself in `on_after_backward` under `16-mixed`.",
    ),
    Row(
        number="11e",
        line="`scaler.update()`",
        moved="left out; fp16, the loss scale starting at 2²⁴, which overflows",
        claim="(not in the essay) the scale never backs off: every step is skipped",
        guard="`MixedPrecision.optimizer_step` updates the scaler after each step. "
        "Back: manual optimization with a GradScaler of your own.",
    ),
    Row(
        number="11f",
        line="`with model.no_sync():`",
        moved=f"left out of the batches before a window's last; DDP in 2 processes, {ACCUMULATING}",
        claim="(not in the essay) a gradient all-reduce at every batch",
        guard="`DDPStrategy.block_backward_sync` (`no_sync`) on the batches the fit loop accumulates. "
        "Back: manual optimization without `no_sync`.",
    ),
)


HEADER = (
    "| # | line | moved | measured | the essay says | on this torch | what guards it in Lightning |\n"
    "|---|---|---|---|---|---|---|"
)
INTRO = """\
# The pitfalls lab: what breaks if you move a line

The essay's crib sheet lists misplaced lines that raise no exception.
The lab
([`src/{{ cookiecutter.package_name }}/pitfalls.py`](../src/{{ cookiecutter.package_name }}/pitfalls.py))
runs each one: the essay's loop as written, and the same loop with exactly that line moved or left out, from the
same seed on the same data. It measures what changed and says whether the essay's claim holds on your torch.

```bash
# the essay's experiment, about a minute on one thread
python -m {{ cookiecutter.package_name }}.pitfalls
# a small spiral for 4 epochs, seconds
python -m {{ cookiecutter.package_name }}.pitfalls --quick
```

Both print the table and write this page to `logs/pitfalls/pitfalls.md`; `--out docs/pitfalls.md` writes it here.
`tests/test_pitfalls.py` asserts every symptom, and that the correct loop shows none of them. Memory is measured by
counting the tensors autograd keeps alive, not by timing or RSS. The table's first line names the torch, the
lightning and the settings of the run that wrote it.
"""


def cells(row: Row, s: Settings) -> tuple[str, str, str, str, str]:
    """The row's static cells (number, line, moved, claim, guard), with the settings filled in."""
    values = dataclasses.asdict(s)
    return row.number, *(text.format(**values) for text in (row.line, row.moved, row.claim, row.guard))
