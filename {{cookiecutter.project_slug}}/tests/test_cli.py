"""The entry points as a user runs them: `python train.py fit|validate|test|predict`, `python train_torch.py` and
`python train_fabric.py`.

One tiny fit (configs/smoke.yaml under conftest's TINY) is shared by the module; validate, test and predict start
from its last.ckpt. Bad config values run in this process through the same main() the scripts call (a subprocess
each would cost seconds of imports).
"""

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

import train
import train_fabric
import train_torch
from {{ cookiecutter.package_name }}.data import SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.cli import instantiate
from {{ cookiecutter.package_name }}.module import SpiralClassifier

from conftest import (
    LIGHTNING,
    QUIET,
    ROOT,
    TINY,
    TINY_EPOCHS,
    TINY_STEPS_PER_EPOCH,
    event_scalars,
    points,
    run,
    write_points,
)

# Where validate, test and predict of a checkpoint that is no run's of logs/lightning write.
EVALUATIONS = Path("logs") / "lightning" / "evaluations"
# The config file a user tries first, checked here under TINY's flags.
SMOKE = f"--config={ROOT / 'configs' / 'smoke.yaml'}"
POINTS = [(0.5, -0.25, 0), (-1.0, 2.0, 1), (3.0, 0.125, 2), (0.0, 0.0, 1), (1e-3, -4e2, 0), (0.3, 0.3, 2), (2, 1, 0)]


def succeeded(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def last_line(result) -> str:
    """The one line a failed run says why in: the last of stderr, and the only one that starts with error:."""
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr[-3000:]
    return lines[-1]


def saved_data(run_dir: Path) -> SpiralDataModule:
    """The data a run used, rebuilt from the config.yaml it saved, set up."""
    data = SpiralDataModule(**vars(instantiate(yaml.safe_load((run_dir / "config.yaml").read_text())["data"])))
    data.setup("test")
    return data


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """The run directory of one tiny `python train.py fit`, logs/lightning/version_0."""
    cwd = tmp_path_factory.mktemp("fit")
    succeeded(run("train.py", "fit", SMOKE, *LIGHTNING, *TINY, cwd=cwd))
    return cwd / "logs" / "lightning" / "version_0"


@pytest.fixture(scope="module")
def checkpoint(fitted) -> Path:
    return fitted / "checkpoints" / "last.ckpt"


def test_fit_logs_every_step_and_every_epoch(fitted):
    scalars = event_scalars(fitted)
    steps = [step for step, _ in scalars["train/loss"]]
    assert steps == list(range(TINY_EPOCHS * TINY_STEPS_PER_EPOCH))  # every optimizer step, from 0
    assert all(math.isfinite(loss) for _, loss in scalars["train/loss"])
    epoch_ends = [TINY_STEPS_PER_EPOCH * (epoch + 1) - 1 for epoch in range(TINY_EPOCHS)]
    assert [step for step, _ in scalars["val/loss"]] == epoch_ends
    assert [step for step, _ in scalars["val/acc"]] == epoch_ends
    assert all(0 <= acc <= 1 for _, acc in scalars["val/acc"])
    # The learning rate of each epoch, at its first step: cosine annealing from 1e-3 to 0 over the run's epochs.
    assert [step for step, _ in scalars["train/lr"]] == [TINY_STEPS_PER_EPOCH * epoch for epoch in range(TINY_EPOCHS)]
    cosine = [1e-3 * (1 + math.cos(math.pi * epoch / TINY_EPOCHS)) / 2 for epoch in range(TINY_EPOCHS)]
    assert [lr for _, lr in scalars["train/lr"]] == pytest.approx(cosine)


def test_fit_keeps_its_config_hyperparameters_and_checkpoints(fitted, checkpoint):
    config = yaml.safe_load((fitted / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == TINY_EPOCHS
    assert config["data"]["dataset"]["init_args"]["points_per_class"] == 50 and config["data"]["batch_size"] == 32
    assert config["model"]["lr"] == 1e-3 and config["seed_everything"] == 0
    hparams = yaml.safe_load((fitted / "hparams.yaml").read_text())
    net, dataset = hparams["net"]["init_args"], hparams["dataset"]["init_args"]
    assert (hparams["lr"], net["hidden"], net["dropout"], dataset["points_per_class"], hparams["batch_size"]) == (
        1e-3,
        128,
        0.0,
        50,
        32,
    )
    # Lightning resumes with torch.load(weights_only=True): everything in the checkpoint must survive it.
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["global_step"]) == (TINY_EPOCHS - 1, TINY_EPOCHS * TINY_STEPS_PER_EPOCH)


def test_a_second_fit_from_the_saved_config_is_version_1_and_the_same_run(fitted):
    cwd = fitted.parents[2]
    succeeded(run("train.py", "fit", f"--config={fitted / 'config.yaml'}", cwd=cwd))
    again = cwd / "logs" / "lightning" / "version_1"
    assert (again / "checkpoints" / "last.ckpt").is_file() and (again / "config.yaml").is_file()
    first, second = event_scalars(fitted), event_scalars(again)
    assert second == first


def test_validate_from_the_checkpoint_gives_the_last_epochs_val_loss(fitted, checkpoint, tmp_path):
    succeeded(run("train.py", "validate", *TINY, f"--ckpt_path={checkpoint}", cwd=tmp_path))
    scalars = event_scalars(tmp_path / EVALUATIONS)
    [(_, val_loss)] = scalars["val/loss"]
    [(_, val_acc)] = scalars["val/acc"]
    fit = event_scalars(fitted)
    assert (val_loss, val_acc) == (fit["val/loss"][-1][1], fit["val/acc"][-1][1])


def test_test_from_the_checkpoint_scores_the_test_split(checkpoint, tmp_path):
    succeeded(run("train.py", "test", *TINY, f"--ckpt_path={checkpoint}", cwd=tmp_path))
    run_dir = tmp_path / EVALUATIONS
    scalars = event_scalars(run_dir)
    [(_, test_loss)] = scalars["test/loss"]
    [(_, test_acc)] = scalars["test/acc"]
    model = SpiralClassifier.load_from_checkpoint(checkpoint).eval()
    X, y = saved_data(run_dir).test_set.tensors
    with torch.no_grad():
        logits = model(X)
    assert test_loss == pytest.approx(model.criterion(logits, y).item(), rel=1e-6)
    assert test_acc == pytest.approx((logits.argmax(dim=1) == y).float().mean().item(), abs=1e-6)


def test_evaluating_a_runs_checkpoint_writes_into_that_run(fitted, tmp_path):
    """validate, test and predict of a run's own checkpoint: its metrics and predictions.csv in the run they belong
    to, each in its own directory there (tests/test_evaluations.py: the fit's curves stay as they were), and nothing
    said but the results."""
    shutil.copytree(fitted, tmp_path / "logs" / "lightning" / "version_0")
    before = sorted(path.name for path in (tmp_path / "logs" / "lightning").iterdir())
    run_dir = tmp_path / "logs" / "lightning" / "version_0"
    for subcommand in ("validate", "test", "predict"):
        result = succeeded(run("train.py", subcommand, *TINY, "--ckpt_path=last", cwd=tmp_path))
        assert "warn" not in result.stderr.lower(), result.stderr
        assert result.stdout.strip().splitlines()[-1] == f"logs: logs/lightning/version_0/{subcommand}"
        assert (run_dir / subcommand / "config.yaml").is_file()
    assert sorted(path.name for path in (tmp_path / "logs" / "lightning").iterdir()) == before
    assert {"val/loss", "val/acc"} == event_scalars(run_dir / "validate").keys()
    assert {"test/loss", "test/acc"} == event_scalars(run_dir / "test").keys()
    assert (run_dir / "predict" / "predictions.csv").is_file()
    assert (run_dir / "config.yaml").read_text() == (fitted / "config.yaml").read_text()  # the fit's own


def read_predictions(result, cwd: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The path the run printed -> points (N, 2), labels (N,) and probabilities (N, classes) it wrote."""
    [path] = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("predictions: ")]
    assert (cwd / path).is_file() and (cwd / path).parent == cwd / EVALUATIONS
    with (cwd / path).open(newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == ["x1", "x2", "label", "p0", "p1", "p2", "predicted"]
    table = torch.tensor([[float(cell) for cell in row] for row in rows], dtype=torch.float64)
    probabilities = table[:, 3:6]
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(rows), dtype=torch.float64), atol=1e-5)
    assert torch.equal(table[:, 6].long(), probabilities.argmax(dim=1))
    return table[:, :2].float(), table[:, 2].long(), probabilities


def test_predict_writes_every_points_probabilities(checkpoint, tmp_path):
    result = run("train.py", "predict", *TINY, f"--ckpt_path={checkpoint}", cwd=tmp_path)
    X, y, probabilities = read_predictions(succeeded(result), tmp_path)
    dataset = saved_data(tmp_path / EVALUATIONS).dataset
    assert torch.equal(X, dataset.tensors[0]) and torch.equal(y, dataset.tensors[1])  # one row per point, in order
    with torch.no_grad():
        expected = SpiralClassifier.load_from_checkpoint(checkpoint).eval()(X).softmax(dim=1)
    assert torch.allclose(probabilities, expected.double(), atol=1e-6)


def test_predict_on_a_csv_file_predicts_every_point_of_it(checkpoint, tmp_path):
    (tmp_path / "mine.csv").write_text("x1,x2,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in POINTS))
    result = run("train.py", "predict", *TINY, f"--ckpt_path={checkpoint}", *points("mine.csv"), cwd=tmp_path)
    X, y, _ = read_predictions(succeeded(result), tmp_path)
    assert torch.equal(X, torch.tensor([p[:2] for p in POINTS], dtype=torch.float32))
    assert y.tolist() == [p[2] for p in POINTS]


def test_the_plain_loop_writes_the_same_tags_and_values(fitted, tmp_path):
    stdout = succeeded(run("train_torch.py", SMOKE, *TINY, cwd=tmp_path)).stdout
    run_dir = tmp_path / "logs" / "torch" / "version_0"
    assert f"logs: {Path('logs') / 'torch' / 'version_0'}" in stdout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == TINY_EPOCHS
    assert config["data"]["dataset"]["init_args"]["points_per_class"] == 50
    plain, lightning = event_scalars(run_dir), event_scalars(fitted)
    assert plain == lightning


def test_the_csv_recipe_works_as_written_on_points_of_5_features(tmp_path):
    """docs/make_it_yours.md's CSV recipe as written: its configs/mine.yaml, then its commands in their order, on a
    my.csv of 5 features and 5 classes. The three fits write equal series and say in one line that the animation is
    off; predict writes every point's row."""
    page = (ROOT / "docs" / "make_it_yours.md").read_text()
    config = page.split("<!-- recipe points: write configs/mine.yaml -->\n```yaml\n")[1].split("```")[0]
    block = page.split("<!-- recipe points: run -->\n```bash\n")[1].split("```")[0]
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("python ")]
    assert [command[1] for command in commands] == ["train.py", "train_torch.py", "train_fabric.py", "train.py"]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text(config)
    generator = torch.Generator().manual_seed(3)
    X, y = torch.randn(300, 5, generator=generator), torch.arange(300) % 5
    X[:, 0] += y  # something to learn
    write_points(tmp_path / "my.csv", X, y)
    for _, script, *args in commands:
        result = succeeded(run(script, *args, *QUIET, "--trainer.max_epochs=5", cwd=tmp_path))
        if "predict" not in args:
            assert "decision boundary: off, the inputs are of shape (5,)" in result.stderr
    scalars = [event_scalars(tmp_path / "logs" / side / "version_0") for side in ("lightning", "torch", "fabric")]
    assert scalars[0] == scalars[1] == scalars[2] and len(scalars[0]["val/acc"]) == 5
    with (tmp_path / "logs" / "lightning" / "version_0" / "predict" / "predictions.csv").open(newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == [*(f"x{i}" for i in range(1, 6)), "label", *(f"p{k}" for k in range(5)), "predicted"]
    assert [[float(cell) for cell in row[:5]] for row in rows] == X.tolist()  # every point, in the file's order


# --- bad input: refused before training, by name, with nothing written under logs/ ---

BAD_FILES = {
    "missing": (None, "error: bad.csv: no such file"),
    "nan": (
        "x1,x2,label\n0.1,0.2,0\nnan,0.5,1\n",
        "error: bad.csv:3: coordinates must be finite in float32, found nan,0.5",
    ),
    "label": (
        "0.1,0.2,0\n0.3,0.4,1\n\n0.5,0.6,3\n",
        "error: bad.csv:4: label 3 is outside 0..2 (data.dataset.classes=3)",
    ),
}


@pytest.mark.parametrize("script, name", [("train.py", "missing"), ("train.py", "nan"), ("train_torch.py", "label")])
def test_a_bad_data_file_is_one_line_naming_file_and_line(tmp_path, script, name):
    text, message = BAD_FILES[name]
    if text is not None:
        (tmp_path / "bad.csv").write_text(text)
    subcommand = ["fit"] if script == "train.py" else []
    result = run(script, *subcommand, *TINY, *points("bad.csv"), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert last_line(result) == message
    assert not (tmp_path / "logs").exists()


MLP_PATH, SPIRAL = "'{{ cookiecutter.package_name }}.model.MLP'", "'{{ cookiecutter.package_name }}.data.Spiral'"
BAD_VALUES = {
    "batch_size 0": (["--data.batch_size", "0"], "data.batch_size"),
    "batch_size not a number": (["--data.batch_size=many"], "data.batch_size"),
    "lr 0": (["--model.lr", "0"], "model.lr"),
    "lr -1": (["--model.lr", "-1"], "model.lr"),
    "hidden 0": (
        ["--model.net.hidden=0"],
        f'"model.net": Problem with given class_path {MLP_PATH}: Parser key "hidden"',
    ),
    "dropout 1": (["--model.net.dropout=1.0"], 'Parser key "dropout"'),
    "dropout -0.1": (["--model.net.dropout=-0.1"], 'Parser key "dropout"'),
    "another optimizer": (["--optimizer=SGD"], "--optimizer"),  # the optimizer is module.py's and loop.py's
    "val_fraction 1.5": (["--data.val_fraction=1.5"], "data.val_fraction"),
    "val_fraction 0": (["--data.val_fraction=0"], "data.val_fraction"),
    "test_fraction 1": (["--data.test_fraction=1"], "data.test_fraction"),
    "fractions summing to 1": (["--data.val_fraction=0.5", "--data.test_fraction=0.5"], "data.val_fraction + data."),
    "fractions summing over 1": (["--data.val_fraction=0.7", "--data.test_fraction=0.4"], "data.val_fraction + data."),
    "noise -1": (
        ["--data.dataset.noise=-1"],
        f'"data.dataset": Problem with given class_path {SPIRAL}: Parser key "noise"',
    ),
    "max_epochs 0": (["--trainer.max_epochs", "0"], "trainer.max_epochs"),
    "max_epochs -1": (["--trainer.max_epochs=-1"], "trainer.max_epochs"),
    # Values Lightning takes and the plain loop would treat otherwise: Lightning skips clipping at 0 and below.
    "gradient_clip_val 0": (["--trainer.gradient_clip_val=0"], "trainer.gradient_clip_val"),
    "gradient_clip_val -1": (["--trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    "gradient_clip_val inf": (["--trainer.gradient_clip_val=inf"], "trainer.gradient_clip_val"),
    # Finite in the config, infinite in float32: a NaN loss at the first step, after the run's directory exists.
    "lr inf": (["--model.lr=inf"], "model.lr"),
    "lr 1e39": (["--model.lr=1e39"], "model.lr"),
    "noise 1e39": (["--data.dataset.noise=1e39"], "data.dataset.noise"),
    "seed -1": (["--seed_everything=-1"], "seed_everything"),
    "seed 2**32": ([f"--seed_everything={2**32}"], "seed_everything"),
    "persistent_workers without workers": (["--data.persistent_workers=true"], "data.persistent_workers"),
    "accumulate_grad_batches 0": (["--trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
    "an unknown key": (["--model.nope", "1"], "model.nope"),
    # Lightning refuses a ModelCheckpoint beside it; train.py drops configs/default.yaml's own, which writes last.ckpt.
    "no checkpoints, and the best k": (
        [
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.monitor=val/loss",
        ],
        "trainer.enable_checkpointing=False beside a ModelCheckpoint with a monitor",
    ),
    # Lightning refuses them as it makes the callback, with a traceback; the loops would fail on them later.
    "an EarlyStopping's mode": (
        ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/acc", "--trainer.callbacks.mode=foo"],
        "EarlyStopping(mode='foo')",
    ),
    "save_top_k -2": (
        [
            "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.monitor=val/loss",
            "--trainer.callbacks.save_top_k=-2",
        ],
        "ModelCheckpoint(save_top_k=-2)",
    ),
}
if not torch.cuda.is_available():
    BAD_VALUES["a GPU where there is none"] = (["--trainer.accelerator=gpu"], "trainer.accelerator")
# Lightning would warn and train in bf16-mixed; the plain loop would train in fp16.
BAD_VALUES["16-mixed on the CPU"] = (["--trainer.precision=16-mixed", "--trainer.accelerator=cpu"], "16-mixed")
# Lightning's ModelParallelStrategy has no GradScaler (the plain loop, out of torchrun, says to run it there).
BAD_VALUES["16-mixed under fsdp2"] = (["--trainer.precision=16-mixed", "--trainer.strategy=fsdp2"], "strategy='fsdp2'")
# One value each just inside what BAD_VALUES is just outside, given the same way.
GOOD_VALUES = [
    *["--data.batch_size", "1", "--model.lr", "1e-9", "--model.net.hidden=1", "--model.net.dropout=0.99"],
    *["--data.val_fraction=0.49", "--data.test_fraction=0.49", "--data.dataset.noise=0", "--trainer.max_epochs", "1"],
    *["--data.num_workers=1", "--data.persistent_workers=true"],
    *["--trainer.gradient_clip_val=1e-9", "--model.lr=3e38", "--data.dataset.noise=3e38"],
    f"--seed_everything={2**32 - 1}",
    *["--trainer.accumulate_grad_batches=1", "--trainer.precision=bf16-mixed"],
]
MAINS = {
    "train.py fit": lambda args: train.main(["fit", *args]),
    "train_torch.py": train_torch.main,
    "train_fabric.py": train_fabric.main,
}


class Started(Exception):
    """Raised where training would start."""


@pytest.fixture
def no_training(tmp_path, monkeypatch) -> None:
    """Run in tmp_path; where an entry point would start training, raise Started instead."""

    def start(*args, **kwargs):
        raise Started

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "fit", start)
    monkeypatch.setattr(train_torch, "fit", start)
    monkeypatch.setattr(train_fabric, "fit", start)


@pytest.mark.parametrize("entry", MAINS)
@pytest.mark.parametrize("name", BAD_VALUES)
def test_a_bad_config_value_is_refused_by_name(name, entry, tmp_path, no_training, capsys):
    flags, parameter = BAD_VALUES[name]
    with pytest.raises(SystemExit) as stop:
        MAINS[entry]([*TINY, *flags])
    assert stop.value.code not in (0, None)
    said = capsys.readouterr().err + (stop.value.code if isinstance(stop.value.code, str) else "")
    [line] = said.strip().splitlines()  # the error alone: no page of usage before it
    assert line.startswith("error:") and parameter in line, said
    assert not (tmp_path / "logs").exists()


def test_a_strategy_the_fabric_loop_does_not_run_is_refused_by_name(tmp_path, no_training, capsys):
    with pytest.raises(SystemExit) as stop:
        train_fabric.main([*TINY, "--trainer.strategy=fsdp"])
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: trainer.strategy='fsdp' (it takes 'auto', 'ddp', 'fsdp2') is not implemented by")
    with pytest.raises(Started):  # the negative control (ddp would start processes: tests/test_ddp.py)
        train_fabric.main([*TINY, "--trainer.strategy=auto"])


def test_last_if_any_is_for_a_fit_alone(tmp_path, no_training, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["test", *TINY, "--ckpt_path=last-if-any"])
    assert stop.value.code == "error: --ckpt_path last-if-any goes on with a fit; test takes last or a path"
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_the_plain_loop_says_that_its_processes_are_torchruns(strategy, tmp_path, no_training, capsys):
    with pytest.raises(SystemExit) as stop:
        train_torch.main([*TINY, f"--trainer.strategy={strategy}"])
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    command = f"torchrun --standalone --nproc_per_node 2 train_torch.py --trainer.strategy {strategy}"
    assert line.startswith(f"error: trainer.strategy='{strategy}': the plain loop runs it under torchrun: {command}")


@pytest.mark.parametrize("command", [["train.py", "fit"], ["train_torch.py"], ["train_fabric.py"]])
def test_a_bad_value_is_one_line_and_exit_2_from_the_command_line(command, tmp_path):
    """One of jsonargparse's refusals and one of settings_problem's (in this process, for all: BAD_VALUES)."""
    flag, said = ("--data.batch_size=0", 'error: Parser key "data.batch_size":')
    if command[0] != "train.py":
        flag, said = ("--trainer.gradient_clip_val=0", "error: trainer.gradient_clip_val must be positive")
    result = run(*command, flag, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(said), result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_run_says_what_it_did_and_nothing_else(tmp_path):
    """No third-party tips, deprecations or info lines about absent hardware; the result and where it went."""
    result = run("train.py", "fit", *LIGHTNING, *TINY, "--boundary.every_n_epochs=1", cwd=tmp_path)
    succeeded(result)
    said = (result.stdout + result.stderr).strip().splitlines()  # Lightning's line on stderr, ours on stdout
    assert sorted(said) == [
        f"`Trainer.fit` stopped: `max_epochs={TINY_EPOCHS}` reached.",
        "decision boundary: logs/lightning/version_0/decision_boundary.gif",
        "logs: logs/lightning/version_0",
    ]  # sorted


def test_the_fabric_loop_says_what_it_did_and_nothing_else(tmp_path):
    result = run("train_fabric.py", *TINY, "--boundary.every_n_epochs=1", cwd=tmp_path)
    succeeded(result)
    assert result.stderr == ""
    assert result.stdout.strip().splitlines() == [
        "decision boundary: logs/fabric/version_0/decision_boundary.gif",
        "logs: logs/fabric/version_0",
    ]


@pytest.mark.parametrize("entry", MAINS)
def test_the_good_values_next_to_the_bad_ones_reach_training(entry, no_training):
    """The negative control: the values above fail because of what they are, not because of how they are given."""
    with pytest.raises(Started):
        MAINS[entry]([*TINY, *GOOD_VALUES])


# --- the progress bar: default.yaml's refreshes every 10 steps; --trainer.enable_progress_bar false removes it ---


def test_fit_with_enable_progress_bar_false_runs_without_a_bar(tmp_path):
    """The Trainer refuses enable_progress_bar=False beside default.yaml's TQDMProgressBar unless train.py drops it."""
    flags = [flag for flag in TINY if flag not in QUIET]
    result = succeeded(
        run("train.py", "fit", *LIGHTNING, *flags, "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    )
    assert "Epoch 0" not in result.stderr
    assert (tmp_path / "logs" / "lightning" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("flags, refresh_rate", [([], 10), (["--trainer.enable_progress_bar", "false"], None)])
def test_the_default_progress_bar_refreshes_every_10_steps(flags, refresh_rate, tmp_path, monkeypatch):
    trainers = []

    def start(self, *args, **kwargs):
        trainers.append(self)
        raise Started

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "fit", start)
    with pytest.raises(Started):
        train.main(["fit", *flags])  # configs/default.yaml alone
    [trainer] = trainers
    bars = [callback for callback in trainer.callbacks if isinstance(callback, TQDMProgressBar)]
    if refresh_rate is None:
        assert trainer.progress_bar_callback is None and bars == []
    else:
        assert bars == [trainer.progress_bar_callback] and trainer.progress_bar_callback.refresh_rate == refresh_rate


@pytest.mark.parametrize("entry", MAINS)
def test_a_config_file_that_is_not_utf8_is_named_in_one_line(entry, tmp_path, no_training, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("model:\n  hidden: 64  # größer\n".encode("latin-1"))
    with pytest.raises(SystemExit) as stop:
        MAINS[entry]([*TINY, f"--config={config}"])
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {config}: not UTF-8 text ("), line
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("command", [["train.py", "fit"], ["train_torch.py"], ["train_fabric.py"]])
def test_logs_that_is_a_file_is_named_in_one_line_and_left_alone(command, tmp_path):
    (tmp_path / "logs").write_text("my notes\n")
    result = run(*command, *TINY, cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "logs" in line and line.endswith(": Not a directory"), line
    assert (tmp_path / "logs").read_text() == "my notes\n" and [p.name for p in tmp_path.iterdir()] == ["logs"]
