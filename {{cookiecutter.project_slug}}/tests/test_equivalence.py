"""The claim of this project: Lightning and the Fabric loop compute exactly what the plain loop computes.

The three real entry points, train.main (LightningCLI), train_torch.main (loop.fit) and train_fabric.main
(loop_fabric.fit), run here on the same flags. What they write to TensorBoard, the final weights, optimizer,
scheduler and GradScaler state must be identical: torch.equal, no tolerance. Each variation of the settings also
asserts, on the run it made, the property it is named for (several validation batches, a partial window, clipping
that bites...), so that none passes by doing nothing. Negative controls break one line of the plain loop, or of the
Fabric loop, and must be caught; tests/mutations.py breaks every line of both, one at a time.
"""

import math
import types
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Trainer
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

import train_fabric
import train_torch
from {{ cookiecutter.package_name }} import loop, loop_fabric
from {{ cookiecutter.package_name }}.data import SpiralDataModule, make_spiral

from conftest import (
    DROPOUT,
    FP16,
    QUIET,
    ROOT,
    SMALL,
    allow_fp16_on_cpu,
    differences,
    event_scalars,
    final_state,
    fit,
    mismatches,
    points,
    run,
    shut_down_workers,
    write_points,
)
from lab.edits import variant
from lab.mutations import MUTATIONS

TAGS = ("train/loss", "train/lr", "val/loss", "val/acc")  # what the essay's experiment logs, at least
DEFAULT = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())


SIDES = ("lightning", "torch", "fabric")


def train(tmp_path: Path, written, *flags: str, own: dict[str, list[str]] | None = None, sides=SIDES) -> dict:
    """Run each side's loop on the same flags, and each on its `own`: side -> what its main() returned."""
    args = [*QUIET, f"--trainer.logger.init_args.save_dir={tmp_path}", *flags]
    own = own or {}
    runs = {side: fit(side, [*args, *own.get(side, [])]) for side in sides}
    shut_down_workers()  # where the flags ask for persistent ones
    return runs


def trained_states(side: str, result) -> tuple[dict, dict, dict]:
    """The weights, optimizer state and scheduler state a side's main() ended with."""
    if side == "lightning":
        trainer = result.trainer
        optimizer, scheduler = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
        return result.model.net.state_dict(), optimizer.state_dict(), scheduler.state_dict()
    model, optimizer, scheduler = result
    return model.state_dict(), optimizer.state_dict(), scheduler.state_dict()


def outcome(side: str, runs: dict, written, tmp_path: Path) -> tuple[dict, dict]:
    """What a side's run ended with, for `mismatches`: the weights, optimizer and scheduler its main() returned and
    the GradScaler's state in its last checkpoint (under 16-mixed); and every scalar it wrote, yours too."""
    weights, optimizer, scheduler = trained_states(side, runs[side])
    scaler = final_state(side, tmp_path / side / "version_0")["scaler"]
    return {"weights": weights, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}, written[side]


def differing_from_plain(runs: dict, written, tmp_path: Path) -> list[str]:
    """Everything in which each side's run differs from the plain loop's, `<side>: <what>`; [] when all are
    identical."""
    plain = outcome("torch", runs, written, tmp_path)
    others = sorted(runs.keys() - {"torch"})
    return [f"{side}: {m}" for side in others for m in mismatches(outcome(side, runs, written, tmp_path), plain)]


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
    "dropout": [DROPOUT],
    "two persistent workers": ["--data.num_workers=2", "--data.persistent_workers=true"],
    "validation in several batches": ["--data.val_batch_size=50"],
    "no partial last batch": ["--data.batch_size=60"],
    "another seed": ["--seed_everything=1", "--data.seed=1"],
    "another learning rate": ["--model.lr=3e-3"],
    "a CSV file": points("{csv}", classes=4),
    "a CSV of 5 features": points("{csv5}", features=5),
    "clipping at 0.05": ["--trainer.gradient_clip_val=0.05"],
    "no clipping": ["--trainer.gradient_clip_val=null"],
    "bf16-mixed, with dropout": ["--trainer.precision=bf16-mixed", DROPOUT],
    # 6 batches an epoch: a window of 4, then a partial one of 2; clipping that bites.
    "accumulating 4, clipping at 0.05": ["--trainer.accumulate_grad_batches=4", "--trainer.gradient_clip_val=0.05"],
    "bf16-mixed, accumulating 4, dropout": [
        "--trainer.precision=bf16-mixed",
        "--trainer.accumulate_grad_batches=4",
        DROPOUT,
    ],
}


def batch_sizes(loader) -> list[int]:
    """The size of each batch of an epoch of `loader`."""
    return [len(y) for _, y in loader]


def partial_window(cli) -> bool:
    """An epoch's batches fill a window of accumulate_grad_batches and end in a shorter one."""
    batches, n = len(cli.trainer.train_dataloader), cli.trainer.accumulate_grad_batches
    return batches > n and batches % n != 0


def clipping_bites(cli, seen) -> bool:
    """A gradient's norm was above gradient_clip_val: the clipping changed it."""
    return max(seen.norms) > cli.trainer.gradient_clip_val


def another_split(cli) -> bool:
    """The DataModule's seed splits the points otherwise than the base's, seed 0."""
    data = cli.datamodule
    base = SpiralDataModule(data.dataset, data.hparams.val_fraction, data.hparams.test_fraction, seed=0)
    base.setup("fit")
    return not torch.equal(data.val_set.tensors[0], base.val_set.tensors[0])


# What each variation is named for, checked on the runs it made (the Lightning run's CLI: its Trainer, DataModule and
# network; and `seen`), so that a variation whose settings stop doing what its name says fails. Those that change
# the numbers are also in test_variations_change_the_run.
NAMED_FOR = {
    "dropout": lambda cli, seen: any(isinstance(m, nn.Dropout) and m.p > 0 for m in cli.model.net.modules()),
    "two persistent workers": lambda cli, seen: (
        (cli.trainer.train_dataloader.num_workers, cli.trainer.train_dataloader.persistent_workers) == (2, True)
    ),
    # Batches of unequal sizes, where a mean of the batch means is not the mean over the points.
    "validation in several batches": lambda cli, seen: len(set(batch_sizes(cli.datamodule.val_dataloader()))) > 1,
    "no partial last batch": lambda cli, seen: len(set(batch_sizes(cli.trainer.train_dataloader))) == 1,
    "another seed": lambda cli, seen: another_split(cli),
    "another learning rate": lambda cli, seen: cli.model.hparams.lr != DEFAULT["model"]["lr"],
    "a CSV file": lambda cli, seen: set(cli.datamodule.dataset.tensors[1].tolist()) == {0, 1, 2, 3},
    "a CSV of 5 features": lambda cli, seen: cli.datamodule.dataset.tensors[0].shape[1] == 5,
    "clipping at 0.05": clipping_bites,
    "no clipping": lambda cli, seen: seen.norms == [],
    "bf16-mixed, with dropout": lambda cli, seen: seen.dtypes == {torch.bfloat16},
    "accumulating 4, clipping at 0.05": lambda cli, seen: partial_window(cli) and clipping_bites(cli, seen),
    "bf16-mixed, accumulating 4, dropout": lambda cli, seen: partial_window(cli) and seen.dtypes == {torch.bfloat16},
}


@pytest.fixture
def seen(monkeypatch) -> types.SimpleNamespace:
    """What the runs computed that their logs do not show: the gradient norm each clipping found (every loop clips
    through torch.nn.utils.clip_grad_norm_) and the dtypes of the training forward's nn.Linear outputs."""
    seen = types.SimpleNamespace(norms=[], dtypes=set())
    clip = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(*args, **kwargs):
        norm = clip(*args, **kwargs)
        seen.norms.append(norm.item())
        return norm

    def forward_hook(module, inputs, output):
        if isinstance(module, nn.Linear) and torch.is_grad_enabled():
            seen.dtypes.add(output.dtype)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_grad_norm_)
    handle = register_module_forward_hook(forward_hook)
    yield seen
    handle.remove()


@pytest.mark.parametrize("name", VARIATIONS)
def test_variations_stay_identical(name, tmp_path, written, seen, csv_files):
    flags = [flag.format(**csv_files) for flag in VARIATIONS[name]]
    runs = train(tmp_path, written, *SMALL, *flags)
    assert differing_from_plain(runs, written, tmp_path) == []
    assert NAMED_FOR[name](runs["lightning"], seen), f"the runs are not what {name!r} says"


def test_val_loss_weighs_each_validation_batch_by_its_size(tmp_path, written):
    """The last epoch's val/loss, from the final weights: the mean of the batches' losses, each weighted by its size,
    as the essay's loss over all the validation points at once; not the mean of the batch means."""
    cli = fit(
        "lightning", [*QUIET, f"--trainer.logger.init_args.save_dir={tmp_path}", *SMALL, "--data.val_batch_size=50"]
    )
    model = cli.model.eval()
    with torch.no_grad():
        losses = [(model.criterion(model(X), y), len(y)) for X, y in cli.datamodule.val_dataloader()]
    weighted_sum, weight = torch.tensor(0.0), torch.tensor(0.0)
    for loss, size in losses:
        weighted_sum, weight = weighted_sum + loss * size, weight + size
    logged = torch.tensor(written["lightning"]["val/loss"][-1][1], dtype=torch.float32)
    assert torch.equal(logged, weighted_sum / weight)
    assert not torch.equal(logged, torch.stack([loss for loss, _ in losses]).mean())  # the batches are unequal


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
    assert differing_from_plain(runs, written, tmp_path) == []  # the state_dicts hold the buffers
    weights = trained_states("torch", runs["torch"])[0]
    assert weights["net.1.num_batches_tracked"] == 3 * 6  # every training batch, not a validation one
    assert not torch.equal(weights["net.1.running_mean"], torch.zeros(128))


def test_with_batchnorm_the_train_and_eval_modes_decide_the_numbers(tmp_path, written, monkeypatch):
    """No dropout: left out, `model.train()` leaves BatchNorm in eval mode after the first validation, normalising
    with its running statistics and updating them no more, as the hook map's row says."""
    monkeypatch.setattr(train_torch, "fit", variant(loop, (MUTATIONS["model.train() left out"].edit,)).fit)
    runs = train(tmp_path, written, *SMALL, BATCHNORM, sides=("lightning", "torch"))
    assert "lightning: scalars train/loss" in differing_from_plain(runs, written, tmp_path)
    assert trained_states("torch", runs["torch"])[0]["net.1.num_batches_tracked"] == 6  # the first epoch's alone


def test_fp16_with_its_grad_scaler_accumulating_with_clipping_stays_identical(tmp_path, written, monkeypatch):
    """16-mixed: autocast to float16, the loss scaled, the gradients unscaled before the clipping; the scaler's
    state (its scale, its growth tracker) is compared too."""
    allow_fp16_on_cpu(monkeypatch)
    flags = [*SMALL, *VARIATIONS["accumulating 4, clipping at 0.05"], DROPOUT]
    runs = train(tmp_path, written, *flags, own=FP16)
    assert runs["lightning"].trainer.precision == "16-mixed"
    assert differing_from_plain(runs, written, tmp_path) == []
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
    assert differing_from_plain(runs, written, tmp_path) == []
    scaler = final_state("torch", tmp_path / "torch" / "version_0")["scaler"]
    skipped = 20 - round(math.log2(scaler["scale"]))  # one halving each; no growth within 2000 steps
    # Steps skipped, and steps taken since the last skip (the tracker counts those alone).
    assert 0 < skipped < 3 * 6 and 0 < scaler["_growth_tracker"] <= 3 * 6 - skipped


class Built(Exception):
    """Raised where train.py would start training, with the DataModule it built."""


def test_the_small_runs_end_on_a_partial_batch(tmp_path, monkeypatch):
    """So the base of VARIATIONS covers a last batch smaller than the rest ("no partial last batch" has none: its
    test checks that): SMALL's DataModule, as train.py builds it, nothing trained."""

    def start(trainer, *args, datamodule, **kwargs):
        raise Built(datamodule)

    monkeypatch.setattr(Trainer, "fit", start)
    with pytest.raises(Built) as built:
        fit("lightning", [*QUIET, f"--trainer.logger.init_args.save_dir={tmp_path}", *SMALL])
    data = built.value.args[0]
    data.setup("fit")
    sizes = batch_sizes(data.train_dataloader())
    assert len(sizes) > 1 and sizes[-1] < sizes[0]


ACCUMULATING = ["--trainer.accumulate_grad_batches=4"]
# Negative controls: mutations of lab/mutations.py, each on settings where it changes the numbers. A plain loop's is
# compared with Lightning's run, a Fabric loop's with the plain loop's.
BREAKAGES = {
    "scheduler.step() inside the batch loop": [],
    # At max_norm 1.0 clipping bites on 17 of the default run's 2900 steps and on none of these small runs.
    "clip_grad_norm_ after the step": VARIATIONS["clipping at 0.05"],
    "zero_grad between backward and step": [],
    "model.train() left out": [DROPOUT],
    # Adam divides by the gradient's own scale: N times the gradient changes its steps only through eps.
    "the loss not divided by N": ACCUMULATING,
    "a step at every batch": ACCUMULATING,
    "zero_grad at every batch": ACCUMULATING,
    "the partial window not stepped": ACCUMULATING,
    "autocast off": ["--trainer.precision=bf16-mixed"],
    "fabric: clip_gradients after the step": VARIATIONS["clipping at 0.05"],
    "fabric: model.train() left out": [DROPOUT],
    "fabric: the loss not divided by N": ACCUMULATING,
    "fabric: the partial window not stepped": ACCUMULATING,
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_a_single_broken_line_is_caught(name, tmp_path, written, monkeypatch):
    mutation = MUTATIONS[name]
    if mutation.file == "loop.py":
        entry, original, other = train_torch, loop, "lightning"
    else:
        entry, original, other = train_fabric, loop_fabric, "fabric"
    monkeypatch.setattr(entry, "fit", variant(original, (mutation.edit,)).fit)
    runs = train(tmp_path, written, *SMALL, *BREAKAGES[name], sides=(other, "torch"))
    assert f"{other}: scalars train/loss" in differing_from_plain(runs, written, tmp_path)


# Each variation that should change the numbers, and the run it should differ from: SMALL's, or the variation it adds
# one setting to.
CHANGES = {
    "dropout": "base",
    "no partial last batch": "base",
    "another seed": "base",
    "another learning rate": "base",
    "a CSV file": "base",
    "a CSV of 5 features": "base",
    "clipping at 0.05": "base",
    "bf16-mixed, with dropout": "dropout",  # autocast computes in bfloat16
}


def test_variations_change_the_run(tmp_path, written, csv_files):
    """Each variation that should change the numbers does, so none of them passes by doing nothing."""
    losses = {}
    for name in ["base", *CHANGES]:
        flags = [flag.format(**csv_files) for flag in VARIATIONS.get(name, [])]
        run_dir = tmp_path / name.replace(" ", "_")
        fit("torch", [*QUIET, f"--trainer.logger.init_args.save_dir={run_dir}", *SMALL, *flags])
        losses[name] = [value for _, value in written["torch"].pop("train/loss")]
    for name, other in CHANGES.items():
        assert losses[name] != losses[other], name
