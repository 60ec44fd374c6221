"""The pitfalls lab: every row of the essay's crib sheet, run and measured on the installed torch.

    python -m {{ cookiecutter.package_name }}.pitfalls
    python -m {{ cookiecutter.package_name }}.pitfalls --quick
    python -m {{ cookiecutter.package_name }}.pitfalls --out docs/pitfalls.md

The first runs the essay's experiment (about a minute on one thread), the second a small spiral for
4 epochs (seconds), as the tests do; the third writes docs/pitfalls.md from the essay's experiment.

Each row trains the essay's loop (pitfalls_lab.py) twice, from the same seed on the same data: as written, and
with exactly one line moved or left out. pitfalls_rows.ROWS holds what each row says before anything runs; the
function MEASURE holds for the row's number, what the move changed, in numbers, and whether the essay's claim
holds on this torch. The lab prints the table and writes the page docs/pitfalls.md shows to
logs/pitfalls/pitfalls.md. tests/test_pitfalls.py asserts each symptom, and that the correct loop shows none.
"""

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from {{ cookiecutter.package_name }}.machinery.loaders import EpochShuffle
from {{ cookiecutter.package_name }}.pitfalls_lab import (
    FULL,
    QUICK,
    Lab,
    N,
    Run,
    Settings,
    equal_steps,
    identical,
    shuffle_orders,
)
from {{ cookiecutter.package_name }}.pitfalls_rows import HEADER, INTRO, OVERWRITE, ROWS, cells


class Measured(NamedTuple):
    measured: str  # "a → b": the correct loop → the loop with the line moved
    verdict: str  # whether the claim holds here, and why


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


def over_max_norm(run: Run, s: Settings) -> int:
    """Steps that applied a gradient above max_norm (clip_grad_norm_ leaves it at max_norm or just under)."""
    return int((run.applied > s.clip * (1 + 1e-4)).sum())


def same_as_unclipped(correct: Run, moved: Run, unclipped: Run) -> str:
    return (
        f"the run without clipping, bit for bit: {arrow(*(yes(identical(run, unclipped)) for run in (correct, moved)))}"
    )


# --- what each row measures: the correct loop against the loop with the line moved ---

MEASURE: dict[str, Callable[[Lab], Measured]] = {}


def measures(number: str):
    def register(function: Callable[[Lab], Measured]) -> Callable[[Lab], Measured]:
        MEASURE[number] = function
        return function

    return register


def dtype_change(lab: Lab, overwrite: bool) -> Measured:
    # float64 stands in for .half(): both convert every Parameter. Adam cannot train float16 weights on the CPU
    # (its eps=1e-8 rounds to 0 in float16 and the weights turn NaN at the first step).
    correct = lab.run(dtype=torch.float64, overwrite=overwrite)
    moved = lab.run({"model.to(dtype)": "after the optimizer"}, dtype=torch.float64, overwrite=overwrite)
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


@measures("1a")
def dtype_change_default(lab: Lab) -> Measured:
    return dtype_change(lab, overwrite=False)


@measures("1b")
def dtype_change_overwrite(lab: Lab) -> Measured:
    return dtype_change(lab, overwrite=True)


@measures("2a")
def zero_grad_left_out(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run({"optimizer.zero_grad()": None})
    later = moved.leftover[1:]  # every step after the first
    clipped = [int((run.clip_saw > lab.s.clip).sum()) for run in (correct, moved)]
    holds = f"holds earlier gradients on {int((later > 0).sum())} of {len(later)} later steps"
    return Measured(
        measured=f"`.grad` when `backward` runs: {arrow('empty', holds)} (norm {later.min():.2g}–{later.max():.2g}); "
        f"clipping bites on {arrow(*clipped)} of {len(correct.losses)} steps; {gap(correct, moved)}",
        verdict="**yes**: each `backward` adds to what `.grad` holds (clipping then scales the sum in place)"
        if bool((later > 0).all()) and not correct.leftover.any()
        else "**no**",
    )


@measures("2b")
def zero_grad_before_step(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run({"optimizer.zero_grad()": "after loss.backward()"})
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


@measures("2c")
def zero_grad_after_step(lab: Lab) -> Measured:
    return commutes(
        lab,
        line="optimizer.zero_grad()",
        place="after optimizer.step()",
        same="**no**: harmless, bit for bit the correct run",
        differs="**yes**: the numbers change",
    )


@measures("3")
def clip_before_backward(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run({"clip_grad_norm_()": "after the forward"})
    unclipped = lab.run({"clip_grad_norm_()": None})
    return Measured(
        measured=f"largest norm `clip_grad_norm_` saw {arrow(correct.clip_saw.max(), moved.clip_saw.max())}; "
        f"steps applying a gradient above max_norm {lab.s.clip:g}: "
        f"{arrow(over_max_norm(correct, lab.s), over_max_norm(moved, lab.s))} of {len(correct.losses)}; "
        f"{same_as_unclipped(correct, moved, unclipped)}",
        verdict="**yes**: it sees no gradient, the run equals one without clipping, bit for bit"
        if moved.clip_saw.max() == 0 and identical(moved, unclipped)
        else "**no**",
    )


@measures("4")
def clip_after_step(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run({"clip_grad_norm_()": "after optimizer.step()"})
    unclipped = lab.run({"clip_grad_norm_()": None})
    return Measured(
        measured=f"steps applying a gradient above max_norm {lab.s.clip:g}: "
        f"{arrow(over_max_norm(correct, lab.s), over_max_norm(moved, lab.s))} of {len(correct.losses)}; "
        f"{same_as_unclipped(correct, moved, unclipped)}",
        verdict="**yes**: the run equals one without clipping, bit for bit"
        if identical(moved, unclipped)
        else "**no**",
    )


@measures("5")
def scheduler_in_batch_loop(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run({"scheduler.step()": "after optimizer.step()"})
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


@measures("6")
def train_left_out(lab: Lab) -> Measured:
    correct = lab.run(dropout=lab.s.dropout)
    moved = lab.run({"model.train()": None}, dropout=lab.s.dropout)
    in_train_mode = [f"{run.train_mode.float().mean():.0%}" for run in (correct, moved)]
    steps = moved.steps_per_epoch
    eval_from_epoch_2 = bool(moved.train_mode[:steps].all()) and not moved.train_mode[steps:].any()
    return Measured(
        measured=f"training forwards in train mode: {arrow(*in_train_mode)}; {gap(correct, moved)}",
        verdict="**yes** for dropout: eval mode from epoch 2 on (this MLP has no BatchNorm)"
        if eval_from_epoch_2 and correct.train_mode.all()
        else "**no**",
    )


@measures("6b")
def eval_left_out(lab: Lab) -> Measured:
    correct = lab.run(dropout=lab.s.dropout)
    moved = lab.run({"model.eval()": None}, dropout=lab.s.dropout)
    shifts = equal_steps(correct.losses, moved.losses) == moved.steps_per_epoch
    after_epoch_1 = arrow(f"{correct.val_losses[0]:.4f}", f"{moved.val_losses[0]:.4f}")
    return Measured(
        measured=f"validation loss after epoch 1: {after_epoch_1}; {gap(correct, moved)}",
        verdict="dropout stays on in validation, and training changes from epoch 2: validation's dropout draws from "
        "the global RNG and shifts the training masks"
        if shifts and correct.val_losses[0] != moved.val_losses[0]
        else "no effect measured",
    )


@measures("7")
def no_grad_left_out(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run(no_grad=False)
    per_batch = ", ".join(str(int(n)) for n in moved.kept[0])
    grows = bool((moved.kept[:, 1:] > moved.kept[:, :-1]).all()) and correct.kept.max() == 0
    return Measured(
        measured="tensors autograd keeps alive after each validation batch: "
        f"{arrow(int(correct.kept.max()), per_batch)} "
        f"({moved.kept_bytes[0, -1] / 2**20:.2f} MiB at the end of validation; the next epoch's sum frees them); "
        f"{gap(correct, moved)}",
        verdict="**yes**: a graph per batch, kept as long as the summed loss is; the numbers do not change"
        if grows and identical(correct, moved)
        else "**no**",
    )


@measures("8")
def loss_logged(lab: Lab) -> Measured:
    correct, moved = lab.run(), lab.run(log_item=False)
    return Measured(
        measured="autograd nodes the log keeps alive after training: "
        f"{arrow(correct.logged_nodes, moved.logged_nodes)} "
        f"(about {moved.logged_nodes / len(moved.losses):.0f} per step); tensors saved for backward still alive: "
        f"{arrow(correct.kept_after, moved.kept_after)}; {gap(correct, moved)}",
        verdict="**yes**, its nodes, one graph per step; `backward` has already freed the activations they saved"
        if moved.logged_nodes > len(moved.losses) and correct.logged_nodes == 0
        else "**no**",
    )


@measures("9")
def shared_generator(lab: Lab) -> Measured:
    agree = {}
    for generator in (False, True):
        on_tensor = lab.run(loader_generator=generator, validate_on="tensor")
        on_loader = lab.run(loader_generator=generator, validate_on="loader")
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


@measures("9b")
def sampler_extra_draw(lab: Lab) -> Measured:
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


def commutes(
    lab: Lab,
    line: str,
    place: str,
    same: str = "a line you may move: nothing changes, bit for bit",
    differs: str = "**the numbers change**",
) -> Measured:
    """The correct loop against `line` at `place`: `same` when they are identical, bit for bit, else `differs`."""
    correct, moved = lab.run(), lab.run({line: place})
    return Measured(measured=gap(correct, moved), verdict=same if identical(correct, moved) else differs)


@measures("10a")
def scheduler_after_validation(lab: Lab) -> Measured:
    return commutes(lab, line="scheduler.step()", place="after validation")


@measures("10b")
def zero_grad_after_forward(lab: Lab) -> Measured:
    return commutes(lab, line="optimizer.zero_grad()", place="after the forward")


# --- accumulation and mixed precision ---


@measures("11a")
def loss_not_divided(lab: Lab) -> Measured:
    correct, moved = lab.run(accumulate=N), lab.run(accumulate=N, divide_loss=False)
    ratio = moved.clip_saw[0] / correct.clip_saw[0]
    clipped = [int((run.clip_saw > lab.s.clip).sum()) for run in (correct, moved)]
    return Measured(
        measured=f"gradient norm at the first step {arrow(correct.clip_saw[0], moved.clip_saw[0])} (×{ratio:.3g}); "
        f"clipping bites on {arrow(*clipped)} of {len(correct.losses)} steps; {gap(correct, moved)}",
        verdict=f"**yes**, ×{N} the gradient; but Adam divides each step by the gradient's own scale, so only "
        f"the clipping and Adam's eps see it (SGD's steps would be ×{N})"
        if ratio == N and not identical(correct, moved)
        else "**no**",
    )


@measures("11b")
def zero_grad_every_batch(lab: Lab) -> Measured:
    correct = lab.run(accumulate=N)
    moved = lab.run({"optimizer.zero_grad()": "before every forward"}, accumulate=N)
    held = [f"{int((run.leftover > 0).sum())} of {len(run.leftover)}" for run in (correct, moved)]
    return Measured(
        measured=f"batches whose `backward` adds to earlier batches' gradients: {arrow(*held)}; {gap(correct, moved)}",
        verdict="**yes**: each step applies its window's last batch alone, divided by N"
        if not moved.leftover.any() and correct.leftover.any()
        else "**no**",
    )


@measures("11c")
def scheduler_every_batch(lab: Lab) -> Measured:
    correct = lab.run({"scheduler.step()": "after optimizer.step()"}, accumulate=N, step_schedule=True)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        moved = lab.run({"scheduler.step()": "after every batch"}, accumulate=N, step_schedule=True)
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


@measures("11d")
def unscale_after_clipping(lab: Lab) -> Measured:
    correct = lab.run(fp16=True)
    moved = lab.run({"scaler.unscale_()": "before optimizer.step()"}, fp16=True)
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


@measures("11e")
def scaler_update_left_out(lab: Lab) -> Measured:
    correct = lab.run(fp16=True, init_scale=2.0**24)
    skipped = len(correct.losses) - correct.taken
    try:
        lab.run({"scaler.update()": None}, fp16=True, init_scale=2.0**24)
    except RuntimeError as error:
        return Measured(
            measured=f"with `update()`, {skipped} of {len(correct.losses)} steps skipped while the scale backs off "
            f"from 2²⁴ to {correct.scales.min():.0f}; without, the second step raises `RuntimeError: {error}`",
            verdict="**no**, not silent: the GradScaler refuses a second `unscale_` or `step` before `update()`",
        )
    return Measured(measured="no error", verdict="**yes**: see the numbers")


@measures("11f")
def no_sync_left_out(lab: Lab) -> Measured:
    (with_no_sync, synced), (without, unsynced) = lab.ddp()[True], lab.ddp()[False]
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
    return f"{INTRO}\n{table}\n"


def main(args: list[str] | None = None) -> list[Measured]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        measured.append(MEASURE[row.number](lab))
        print(f"{time.perf_counter() - row_start:.1f} s", flush=True)
    text = table(measured, settings)
    print(f"\n{text}\n")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(page(text))
    print(f"{len(measured)} rows in {time.perf_counter() - start:.0f} s; page written to {config.out}")
    return measured


if __name__ == "__main__":
    main()
