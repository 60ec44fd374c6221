"""The claim of this project: Lightning and the Fabric loop compute exactly what the plain loop computes.

The three real entry points, train.main (LightningCLI), train_torch.main (loop.fit) and train_fabric.main
(loop_fabric.fit), run here on the same flags. What they write to TensorBoard, the final weights, optimizer,
scheduler and GradScaler state must be identical: torch.equal, no tolerance. Negative controls break one line of
the plain loop, or of the Fabric loop, and must be caught.
"""

import math
import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import train_fabric
import train_torch
from {{ cookiecutter.package_name }} import loop, loop_fabric
from {{ cookiecutter.package_name }}.data import Spiral, SpiralDataModule, make_spiral

from conftest import (
    FP16,
    QUIET,
    ROOT,
    SMALL,
    allow_fp16_on_cpu,
    differences,
    event_scalars,
    final_state,
    fit,
    points,
    run,
    shut_down_workers,
    write_points,
)

TAGS = ("train/loss", "train/lr", "val/loss", "val/acc")  # what the essay's experiment logs, at least


SIDES = ("lightning", "torch", "fabric")


def train(tmp_path: Path, written, *flags: str, own: dict[str, list[str]] | None = None, sides=SIDES) -> dict:
    """Run each side's loop on the same flags, and each on its `own`: side -> what its main() returned."""
    args = [*QUIET, f"--trainer.logger.init_args.save_dir={tmp_path}", *flags]
    own = own or {}
    runs = {side: fit(side, [*args, *own.get(side, [])]) for side in sides}
    shut_down_workers()  # where the flags ask for persistent ones
    return runs


def series(written, side: str, tag: str) -> tuple[list[int], torch.Tensor]:
    steps, values = zip(*written[side][tag], strict=True)
    return list(steps), torch.tensor(values, dtype=torch.float64)


def trained_states(side: str, result) -> tuple[dict, dict, dict]:
    """The weights, optimizer state and scheduler state a side's main() ended with."""
    if side == "lightning":
        trainer = result.trainer
        optimizer, scheduler = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
        return result.model.net.state_dict(), optimizer.state_dict(), scheduler.state_dict()
    model, optimizer, scheduler = result
    return model.state_dict(), optimizer.state_dict(), scheduler.state_dict()


def mismatches(runs: dict, written, tmp_path: Path) -> list[str]:
    """Everything that differs between each side's run and the plain loop's; [] when they are all identical."""
    found = []
    plain = trained_states("torch", runs["torch"])
    plain_scaler = final_state("torch", tmp_path / "torch" / "version_0")["scaler"]
    for side in runs.keys() - {"torch"}:
        if written[side].keys() != written["torch"].keys():  # every tag either side writes: yours too
            found.append(f"{side} tags {sorted(written[side])} != {sorted(written['torch'])}")
        for tag in written[side].keys() & written["torch"].keys():
            (steps, values), (plain_steps, plain_values) = (series(written, s, tag) for s in (side, "torch"))
            if steps != plain_steps or not torch.equal(values, plain_values):
                found.append(f"{side} {tag}")
        for name, state, plain_state in zip(
            ("weights", "optimizer", "scheduler"), trained_states(side, runs[side]), plain, strict=True
        ):
            found += differences(state, plain_state, f"{side} {name}")
        # From the final checkpoints: the GradScaler's state, under 16-mixed.
        scaler = final_state(side, tmp_path / side / "version_0")["scaler"]
        found += differences(scaler, plain_scaler, f"{side} scaler")
    return found


def test_the_entry_points_with_no_flags_are_identical_for_all_100_epochs(tmp_path):
    """`python train.py fit`, `python train_torch.py` and `python train_fabric.py`, exactly as a user types them:
    every TensorBoard series, the final weights, optimizer state and scheduler state."""
    for script, args in (("train.py", ["fit"]), ("train_torch.py", []), ("train_fabric.py", [])):
        result = run(script, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    runs = {side: tmp_path / "logs" / side / "version_0" for side in ("lightning", "torch", "fabric")}
    scalars = {side: event_scalars(directory) for side, directory in runs.items()}
    plain = scalars["torch"]
    assert set(TAGS) <= set(plain)
    assert [step for step, _ in plain["train/loss"]] == list(range(100 * math.ceil(1800 / 64)))  # every step, from 0
    assert len(plain["val/loss"]) == len(plain["train/lr"]) == 100
    states = {side: final_state(side, directory) for side, directory in runs.items()}
    for side in ("lightning", "fabric"):
        # The same tags: machinery/logger.py leaves out the `epoch` scalar Lightning adds to every step.
        assert set(scalars[side]) == set(plain), side
        for tag in plain:
            steps, values = zip(*scalars[side][tag], strict=True)
            plain_steps, plain_values = zip(*plain[tag], strict=True)
            assert steps == plain_steps and torch.equal(torch.tensor(values), torch.tensor(plain_values)), (side, tag)
        assert differences(states[side], states["torch"]) == [], side


def test_the_documented_mixed_precision_and_accumulation_commands_write_equal_series(tmp_path):
    """The three commands of docs/configuration.md's "Mixed precision and gradient accumulation", as written there,
    on a small spiral: equal event files."""
    page = (ROOT / "docs" / "configuration.md").read_text().splitlines()
    commands = [line.split() for line in page if line.startswith("python") and "--trainer.precision bf16-mixed" in line]
    scripts = [["python", f"{script}.py"] for script in ("train", "train_torch", "train_fabric")]
    assert [command[:2] for command in commands] == scripts
    for _, script, *args in commands:
        result = run(script, *args, *SMALL, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    lightning, plain, fabric = (event_scalars(tmp_path / "logs" / side / "version_0") for side in SIDES)
    assert lightning == plain == fabric and set(TAGS) <= set(plain)
    assert len(plain["train/loss"]) == 3 * 2  # 3 epochs of 6 batches, windows of 3


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory) -> dict[str, Path]:
    """A user's files: a four-armed spiral; and points of 5 features, the spiral's 2 and 3 more made from them."""
    directory = tmp_path_factory.mktemp("data")
    X, y = make_spiral(150, 4, 0.1, torch.Generator().manual_seed(7))
    X5, y5 = make_spiral(200, 3, 0.2, torch.Generator().manual_seed(8))
    X5 = torch.cat([X5, X5[:, :1] * X5[:, 1:], X5.sin()], dim=1)
    return {"csv": write_points(directory / "points.csv", X, y), "csv5": write_points(directory / "five.csv", X5, y5)}


VARIATIONS = {
    "dropout": ["--model.net.dropout=0.3"],
    "two persistent workers": ["--data.num_workers=2", "--data.persistent_workers=true"],
    "validation in several batches": ["--data.val_batch_size=50"],
    "no partial last batch": ["--data.batch_size=60"],
    "another seed": ["--seed_everything=1", "--data.seed=1"],
    "a CSV file": points("{csv}", classes=4),
    "a CSV of 5 features": points("{csv5}", features=5),
    "clipping at 0.05": ["--trainer.gradient_clip_val=0.05"],
    "no clipping": ["--trainer.gradient_clip_val=null"],
    "bf16-mixed, with dropout": ["--trainer.precision=bf16-mixed", "--model.net.dropout=0.3"],
    # 6 batches an epoch: a window of 4, then a partial one of 2; clipping that bites.
    "accumulating 4, clipping at 0.05": ["--trainer.accumulate_grad_batches=4", "--trainer.gradient_clip_val=0.05"],
    "bf16-mixed, accumulating 4, dropout": [
        "--trainer.precision=bf16-mixed",
        "--trainer.accumulate_grad_batches=4",
        "--model.net.dropout=0.3",
    ],
}


@pytest.mark.parametrize("name", VARIATIONS)
def test_variations_stay_identical(name, tmp_path, written, csv_files):
    flags = [flag.format(**csv_files) for flag in VARIATIONS[name]]
    runs = train(tmp_path, written, *SMALL, *flags)
    assert mismatches(runs, written, tmp_path) == []


def test_points_of_5_features_train_a_model_of_5_inputs_in_each_loop(tmp_path, written, csv_files):
    """model.net's in_features is what all three build; a checkpoint keeps it."""
    runs = train(tmp_path, written, "--trainer.max_epochs=1", *points(csv_files["csv5"], features=5))
    assert runs["lightning"].model.hparams.net["init_args"]["in_features"] == 5
    for side, result in runs.items():
        assert trained_states(side, result)[0]["layers.0.weight"].shape == (128, 5), side
    assert final_state("fabric", tmp_path / "fabric" / "version_0")["model"]["layers.0.weight"].shape == (128, 5)


class BatchNormMLP(nn.Module):
    """A network of your own, named as model.net: MLP's signature, a BatchNorm after the first layer, whose running
    mean and variance are buffers that training updates and validation uses."""

    def __init__(self, in_features: int = 2, hidden: int = 128, out_features: int = 3, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


BATCHNORM = "--model.net=test_equivalence.BatchNormMLP"  # its init_args, MLP's, carry over


@pytest.mark.parametrize("name", ["dropout", "bf16-mixed, accumulating 4, dropout", "validation in several batches"])
def test_a_model_with_batchnorm_stays_identical_buffers_included(name, tmp_path, written):
    runs = train(tmp_path, written, *SMALL, BATCHNORM, *VARIATIONS[name])
    assert mismatches(runs, written, tmp_path) == []  # the state_dicts hold the buffers
    weights = trained_states("torch", runs["torch"])[0]
    assert weights["net.1.num_batches_tracked"] == 3 * 6  # every training batch, not a validation one
    assert not torch.equal(weights["net.1.running_mean"], torch.zeros(128))


def test_with_batchnorm_the_train_and_eval_modes_decide_the_numbers(tmp_path, written, monkeypatch):
    """No dropout: left out, `model.train()` leaves BatchNorm in eval mode after the first validation, normalising
    with its running statistics and updating them no more, as the hook map's row says."""
    monkeypatch.setattr(train_torch, "fit", broken_fit(moved("model.train()", None)))
    runs = train(tmp_path, written, *SMALL, BATCHNORM, sides=("lightning", "torch"))
    assert "lightning train/loss" in mismatches(runs, written, tmp_path)
    assert trained_states("torch", runs["torch"])[0]["net.1.num_batches_tracked"] == 6  # the first epoch's alone


def test_fp16_with_its_grad_scaler_accumulating_with_clipping_stays_identical(tmp_path, written, monkeypatch):
    """16-mixed: autocast to float16, the loss scaled, the gradients unscaled before the clipping; the scaler's
    state (its scale, its growth tracker) is compared too."""
    allow_fp16_on_cpu(monkeypatch)
    flags = [*SMALL, *VARIATIONS["accumulating 4, clipping at 0.05"], "--model.net.dropout=0.3"]
    runs = train(tmp_path, written, *flags, own=FP16)
    assert runs["lightning"].trainer.precision == "16-mixed"
    assert mismatches(runs, written, tmp_path) == []
    # The scaler took part, counting its unskipped steps: not {} == {}, as 32-bit or bf16 runs compare.
    assert final_state("torch", tmp_path / "torch" / "version_0")["scaler"]["_growth_tracker"] > 0


def test_fp16_steps_whose_gradients_overflow_are_skipped_alike(tmp_path, written, monkeypatch):
    """A loss scale too large for float16: the first step's gradients (and some later) are inf, and each loop's
    GradScaler skips those steps and halves its scale, alike in the three (the Fabric loop's clip_gradients told not
    to raise)."""
    allow_fp16_on_cpu(monkeypatch)
    init = torch.amp.GradScaler.__init__

    def too_large(scaler, *args, **kwargs):
        init(scaler, *args, **{**kwargs, "init_scale": 2.0**20})

    monkeypatch.setattr(torch.amp.GradScaler, "__init__", too_large)
    runs = train(tmp_path, written, *SMALL, own=FP16)
    assert mismatches(runs, written, tmp_path) == []
    scaler = final_state("torch", tmp_path / "torch" / "version_0")["scaler"]
    skipped = 20 - round(math.log2(scaler["scale"]))  # one halving each; no growth within 2000 steps
    # Steps skipped, and steps taken since the last skip (the tracker counts those alone).
    assert 0 < skipped < 3 * 6 and 0 < scaler["_growth_tracker"] <= 3 * 6 - skipped


def test_the_small_runs_end_on_a_partial_batch():
    """So the base of VARIATIONS covers a last batch smaller than the rest, and "no partial" changes that."""
    data = SpiralDataModule(Spiral(points_per_class=200))
    data.setup("fit")
    assert len(data.train_set) % 64 != 0
    assert len(data.train_set) % 60 == 0


def moved(line: str, after: str | None):
    """A loop's source with one line (and the block under it) moved after another line, or deleted when `after` is
    None."""

    def edit(source: str) -> str:
        lines = source.splitlines()
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
        return "\n".join(rest)

    return edit


def replaced(old: str, new: str):
    """A loop's source with `old`, which occurs once, replaced by `new`."""

    def edit(source: str) -> str:
        assert source.count(old) == 1, old
        return source.replace(old, new)

    return edit


def broken_fit(edit, original=loop):
    """fit() from the source of `original`, loop.py or loop_fabric.py, changed by `edit`."""
    module = types.ModuleType("broken_loop")
    exec(compile(edit(Path(original.__file__).read_text()), "broken_loop.py", "exec"), module.__dict__)
    return module.fit


ACCUMULATING = ["--trainer.accumulate_grad_batches=4"]
BREAKAGES = {
    "scheduler.step() inside the batch loop": (moved("scheduler.step()", "scaler.step(optimizer)"), []),
    # At max_norm 1.0 clipping bites on 17 of the default run's 2900 steps and on none of these small runs.
    "clip_grad_norm_ after step": (
        moved("if hp.gradient_clip_val is not None:", "scaler.step(optimizer)"),
        VARIATIONS["clipping at 0.05"],
    ),
    "zero_grad between backward and step": (moved("if batch_idx % N == 0:", "scaler.scale(loss / N)"), []),
    "model.train() left out, with dropout": (moved("model.train()", None), ["--model.net.dropout=0.3"]),
    # Adam divides by the gradient's own scale: N times the gradient changes its steps only through eps.
    "the loss not divided by N": (replaced("scaler.scale(loss / N)", "scaler.scale(loss)"), ACCUMULATING),
    "a step at every batch": (replaced("if steps:  #", "if True:  #"), ACCUMULATING),
    "zero_grad at every batch": (replaced("if batch_idx % N == 0:", "if True:"), ACCUMULATING),
    "the partial window not stepped": (replaced(" or batch_idx + 1 == len(loader)", ""), ACCUMULATING),
    "autocast left out": (replaced("enabled=dtype is not None", "enabled=False"), ["--trainer.precision=bf16-mixed"]),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_a_single_broken_line_is_caught(name, tmp_path, written, monkeypatch):
    edit, flags = BREAKAGES[name]
    monkeypatch.setattr(train_torch, "fit", broken_fit(edit))
    runs = train(tmp_path, written, *SMALL, *flags, sides=("lightning", "torch"))
    assert "lightning train/loss" in mismatches(runs, written, tmp_path)


FABRIC_BREAKAGES = {
    "clip_gradients after the step": (
        moved("if hp.gradient_clip_val is not None:", "optimizer.step()"),
        VARIATIONS["clipping at 0.05"],
    ),
    "model.train() left out, with dropout": (moved("model.train()", None), ["--model.net.dropout=0.3"]),
    "fabric.backward without / N": (replaced("fabric.backward(loss / N)", "fabric.backward(loss)"), ACCUMULATING),
    "the partial window not stepped": (replaced(" or batch_idx + 1 == len(loader)", ""), ACCUMULATING),
}


@pytest.mark.parametrize("name", FABRIC_BREAKAGES)
def test_a_single_broken_line_of_the_fabric_loop_is_caught(name, tmp_path, written, monkeypatch):
    edit, flags = FABRIC_BREAKAGES[name]
    monkeypatch.setattr(train_fabric, "fit", broken_fit(edit, loop_fabric))
    runs = train(tmp_path, written, *SMALL, *flags, sides=("torch", "fabric"))
    assert "fabric train/loss" in mismatches(runs, written, tmp_path)


def test_variations_change_the_run(tmp_path, written, csv_files):
    """Each variation that should change the numbers does, so none of them passes by doing nothing."""
    losses = {}
    names = ["base", "dropout", "no partial last batch", "another seed", "a CSV file", "a CSV of 5 features"]
    for name in [*names, "clipping at 0.05"]:
        flags = [flag.format(**csv_files) for flag in VARIATIONS.get(name, [])]
        run_dir = tmp_path / name.replace(" ", "_")
        fit("torch", [*QUIET, f"--trainer.logger.init_args.save_dir={run_dir}", *SMALL, *flags])
        losses[name] = [value for _, value in written["torch"].pop("train/loss")]
    for name, values in losses.items():
        assert name == "base" or values != losses["base"], name
