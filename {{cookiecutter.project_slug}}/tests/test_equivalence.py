"""The claim of this project: Lightning computes exactly what the plain loop computes.

Both real entry points, train.main (LightningCLI) and train_torch.main (loop.fit), run here on the same flags.
What they write to TensorBoard, the final weights, optimizer state and scheduler state must be identical:
torch.equal, no tolerance. Negative controls break one line of the plain loop and must be caught.
"""

import math
import re
import types
from pathlib import Path

import pytest
import torch

import train_torch
from {{ cookiecutter.package_name }} import loop
from {{ cookiecutter.package_name }}.data import SpiralDataModule, make_spiral

from conftest import QUIET, SMALL, differences, event_scalars, final_state, fit, run, shut_down_workers

TAGS = ("train/loss", "train/lr", "val/loss", "val/acc")


def train_both(tmp_path: Path, written, *flags: str):
    """Run both loops on the same flags; return (Lightning CLI, plain (model, optimizer, scheduler))."""
    args = [*QUIET, f"--trainer.logger.init_args.save_dir={tmp_path}", *flags]
    runs = fit("lightning", args), fit("torch", args)
    shut_down_workers()  # where the flags ask for persistent ones
    return runs


def series(written, side: str, tag: str) -> tuple[list[int], torch.Tensor]:
    steps, values = zip(*written[side][tag], strict=True)
    return list(steps), torch.tensor(values, dtype=torch.float64)


def mismatches(cli, plain, written) -> list[str]:
    """Everything that differs between the Lightning run and the plain run; [] when they are identical."""
    model, optimizer, scheduler = plain
    found = []
    for tag in TAGS:
        (lightning_steps, lightning_values), (plain_steps, plain_values) = (
            series(written, side, tag) for side in ("lightning", "torch")
        )
        if lightning_steps != plain_steps or not torch.equal(lightning_values, plain_values):
            found.append(tag)
    found += differences(cli.model.model.state_dict(), model.state_dict(), "weights")
    found += differences(cli.trainer.optimizers[0].state_dict(), optimizer.state_dict(), "optimizer")
    found += differences(
        cli.trainer.lr_scheduler_configs[0].scheduler.state_dict(), scheduler.state_dict(), "scheduler"
    )
    return found


def test_the_entry_points_with_no_flags_are_identical_for_all_100_epochs(tmp_path):
    """`python train.py fit` and `python train_torch.py`, exactly as a user types them: every TensorBoard series,
    the final weights, optimizer state and scheduler state."""
    for script, args in (("train.py", ["fit"]), ("train_torch.py", [])):
        result = run(script, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    runs = {side: tmp_path / "logs" / side / "version_0" for side in ("lightning", "torch")}
    lightning, plain = (event_scalars(directory) for directory in runs.values())
    # The same tags: machinery/logger.py leaves out the `epoch` scalar Lightning adds to every step.
    assert set(lightning) == set(plain) and set(TAGS) <= set(plain)
    for tag in plain:
        assert [step for step, _ in lightning[tag]] == [step for step, _ in plain[tag]], tag
        assert torch.equal(torch.tensor([v for _, v in lightning[tag]]), torch.tensor([v for _, v in plain[tag]])), tag
    assert [step for step, _ in plain["train/loss"]] == list(range(100 * math.ceil(1800 / 64)))  # every step, from 0
    assert len(plain["val/loss"]) == len(plain["train/lr"]) == 100
    assert differences(*(final_state(side, directory) for side, directory in runs.items())) == []


@pytest.fixture(scope="module")
def spiral_csv(tmp_path_factory) -> Path:
    """A user's file: a four-armed spiral, with a header."""
    X, y = make_spiral(150, 4, 0.1, torch.Generator().manual_seed(7))
    path = tmp_path_factory.mktemp("data") / "points.csv"
    rows = [f"{x1!r},{x2!r},{label}" for (x1, x2), label in zip(X.tolist(), y.tolist(), strict=True)]
    path.write_text("\n".join(["x1,x2,label", *rows]) + "\n")
    return path


VARIATIONS = {
    "dropout": ["--model.dropout=0.3"],
    "two persistent workers": ["--data.num_workers=2", "--data.persistent_workers=true"],
    "validation in several batches": ["--data.val_batch_size=50"],
    "no partial last batch": ["--data.batch_size=60"],
    "another seed": ["--seed_everything=1", "--data.seed=1"],
    "a CSV file": ["--data.path={csv}", "--data.classes=4"],
    "clipping at 0.05": ["--trainer.gradient_clip_val=0.05"],
    "no clipping": ["--trainer.gradient_clip_val=null"],
}


@pytest.mark.parametrize("name", VARIATIONS)
def test_variations_stay_identical(name, tmp_path, written, spiral_csv):
    flags = [flag.format(csv=spiral_csv) for flag in VARIATIONS[name]]
    cli, plain = train_both(tmp_path, written, *SMALL, *flags)
    assert mismatches(cli, plain, written) == []


def test_the_small_runs_end_on_a_partial_batch():
    """So the base of VARIATIONS covers a last batch smaller than the rest, and "no partial" changes that."""
    data = SpiralDataModule(points_per_class=200)
    data.setup("fit")
    assert len(data.train_set) % 64 != 0
    assert len(data.train_set) % 60 == 0


def broken_fit(line: str, after: str | None):
    """loop.fit with one line (and the block under it) moved after another line, or deleted when `after` is None."""
    lines = Path(loop.__file__).read_text().splitlines()
    [start] = [i for i, text in enumerate(lines) if text.strip().startswith(line)]
    indent = re.match(r"\s*", lines[start]).group()
    end = start + 1
    while end < len(lines) and lines[end].startswith(indent + " "):
        end += 1
    block, rest = lines[start:end], lines[:start] + lines[end:]
    if after is not None:
        [target] = [i for i, text in enumerate(rest) if text.strip().startswith(after)]
        new_indent = re.match(r"\s*", rest[target]).group()
        rest[target + 1 : target + 1] = [new_indent + text[len(indent) :] for text in block]
    module = types.ModuleType("broken_loop")
    exec(compile("\n".join(rest), "broken_loop.py", "exec"), module.__dict__)
    return module.fit


BREAKAGES = {
    "scheduler.step() inside the batch loop": ("scheduler.step()", "optimizer.step()", []),
    # At max_norm 1.0 clipping bites on 17 of the default run's 2900 steps and on none of these small runs.
    "clip_grad_norm_ after step": (
        "if hp.gradient_clip_val is not None:",
        "optimizer.step()",
        VARIATIONS["clipping at 0.05"],
    ),
    "zero_grad between backward and step": ("optimizer.zero_grad()", "loss.backward()", []),
    "model.train() left out, with dropout": ("model.train()", None, ["--model.dropout=0.3"]),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_a_single_broken_line_is_caught(name, tmp_path, written, monkeypatch):
    line, after, flags = BREAKAGES[name]
    monkeypatch.setattr(train_torch, "fit", broken_fit(line, after))
    cli, plain = train_both(tmp_path, written, *SMALL, *flags)
    assert "train/loss" in mismatches(cli, plain, written)


def test_variations_change_the_run(tmp_path, written, spiral_csv):
    """Each variation that should change the numbers does, so none of them passes by doing nothing."""
    losses = {}
    for name in ["base", "dropout", "no partial last batch", "another seed", "a CSV file", "clipping at 0.05"]:
        flags = [flag.format(csv=spiral_csv) for flag in VARIATIONS.get(name, [])]
        run_dir = tmp_path / name.replace(" ", "_")
        fit("torch", [*QUIET, f"--trainer.logger.init_args.save_dir={run_dir}", *SMALL, *flags])
        losses[name] = [value for _, value in written["torch"].pop("train/loss")]
    for name, values in losses.items():
        assert name == "base" or values != losses["base"], name
