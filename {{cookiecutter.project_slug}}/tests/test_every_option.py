"""Every trainer setting that the entry points' parsers take, each given a value of its own: the three rungs compute
the same numbers, or the plain and Fabric loops refuse it in one line naming it, before anything is written; and
`train.py fit` takes it without a traceback. The settings come from the parsers (`--print_config`): one that a new
Lightning release adds fails test_every_trainer_setting_has_a_value_here until it has a value below.
"""

import json
import sys

import pytest
import torch
import yaml

import train
import train_fabric
import train_torch
from {{ cookiecutter.package_name }} import scripts

from conftest import QUIET, ROOT, differences, fit

SIDES = ("lightning", "torch", "fabric")
# 90 points: 54 to train on in batches of 16, 4 steps an epoch, 12 in all; 18 to validate on.
SETTINGS = [*QUIET, "--trainer.max_epochs=3", "--data.dataset.points_per_class=30", "--data.batch_size=16"]
SETTINGS += ["--boundary.every_n_epochs=0", "--trainer.enable_model_summary=false"]
CALLBACK = {"class_path": "lightning.pytorch.callbacks.EarlyStopping", "init_args": {"monitor": "val/loss"}}
PLUGIN = {
    "class_path": "lightning.pytorch.plugins.MixedPrecision",
    "init_args": {"precision": "bf16-mixed", "device": "cpu"},
}
# A value other than configs/default.yaml's for each setting ({tmp}: the test's directory).
VALUES = {
    "accelerator": "cpu",
    "precision": "bf16-mixed",
    "logger": "false",
    "callbacks+": json.dumps(CALLBACK),
    "fast_dev_run": "true",
    "max_epochs": "2",
    "min_epochs": "5",
    "max_steps": "4",
    "min_steps": "20",
    "max_time": "00:00:01:00",
    "limit_train_batches": "2",
    "limit_val_batches": "1",
    "limit_test_batches": "1",
    "limit_predict_batches": "1",
    "overfit_batches": "2",
    "val_check_interval": "0.5",
    "check_val_every_n_epoch": "2",
    "num_sanity_val_steps": "2",
    "log_every_n_steps": "3",
    "enable_checkpointing": "false",
    "enable_progress_bar": "true",
    "enable_model_summary": "true",
    "accumulate_grad_batches": "3",
    "gradient_clip_val": "0.01",
    "gradient_clip_algorithm": "value",
    "deterministic": "true",
    "benchmark": "true",
    "inference_mode": "false",
    "use_distributed_sampler": "false",
    "profiler": "simple",
    "detect_anomaly": "true",
    "barebones": "true",
    "plugins+": json.dumps(PLUGIN),
    "sync_batchnorm": "true",
    "reload_dataloaders_every_n_epochs": "1",
    "default_root_dir": "{tmp}/elsewhere",
    "enable_autolog_hparams": "false",
    "model_registry": "a-model",
}
# They start processes (tests/test_ddp.py): here only the plain loop's refusal of each outside torchrun is checked.
SEVERAL_PROCESSES = {"strategy": "ddp", "devices": "2", "num_nodes": "2"}


def trainer_settings(main, args: list[str], capsys) -> set[str]:
    """The trainer settings an entry point's parser takes, as its --print_config lists them."""
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    return set(yaml.safe_load(capsys.readouterr().out)["trainer"])


def test_every_trainer_setting_has_a_value_here(capsys):
    named = {key.rstrip("+") for key in [*VALUES, *SEVERAL_PROCESSES]}
    for main, args in ((train.main, ["fit"]), (train_torch.main, []), (train_fabric.main, [])):
        assert trainer_settings(main, args, capsys) == named


def test_the_configuration_page_says_why_for_each_setting_the_plain_loop_refuses(capsys):
    page = (ROOT / "docs" / "configuration.md").read_text()
    section = page.split("these are not in the plain loop")[1].split("\n## ")[0]  # the table and its paragraphs
    refused = trainer_settings(train_torch.main, [], capsys) - set(scripts.KEPT)
    assert refused and [key for key in sorted(refused) if f"`{key}`" not in section] == []


def trained(side: str, result) -> dict:
    """The weights and optimizer state a side's main() ended with."""
    if side == "lightning":
        return {"weights": result.model.net.state_dict(), "optimizer": result.trainer.optimizers[0].state_dict()}
    model, optimizer, _ = result
    return {"weights": model.state_dict(), "optimizer": optimizer.state_dict()}


@pytest.fixture
def torch_flags():
    """deterministic and benchmark set torch's global flags, in this process: back as they were after the test."""
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.benchmark = flags[1]


# Lightning's own word to the user, that overfit_batches turns the training loader's shuffling off.
@pytest.mark.filterwarnings("ignore:You requested to overfit but enabled train dataloader shuffling:UserWarning")
@pytest.mark.parametrize("key", sorted(VALUES))
def test_a_trainer_setting_gives_the_same_numbers_or_is_refused(
    key, tmp_path, monkeypatch, written, capsys, torch_flags
):
    monkeypatch.chdir(tmp_path)  # without a logger, Lightning checkpoints into ./checkpoints
    save_dir = [] if key == "logger" else [f"--trainer.logger.init_args.save_dir={tmp_path}"]
    args = [*SETTINGS, *save_dir, f"--trainer.{key}={VALUES[key].replace('{tmp}', str(tmp_path))}"]
    outcomes = {}
    for side in SIDES:
        try:
            outcomes[side] = fit(side, args)
        except SystemExit as refused:
            lines = capsys.readouterr().err.strip().splitlines()
            assert refused.code == 2 and len(lines) == 1 and f"trainer.{key.rstrip('+')}" in lines[0], (side, lines)
            assert not (tmp_path / side).exists(), f"{side} wrote before it refused"
            outcomes[side] = None
    assert not (tmp_path / "config.yaml").exists()  # a run's config.yaml goes beside its logs, or nowhere
    ran = [side for side in SIDES if outcomes[side] is not None]
    assert "lightning" in ran or key == "barebones"  # barebones turns off what configs/default.yaml sets up
    print(f"trainer.{key}: {', '.join(ran) or 'refused by all'}", file=sys.stderr)
    for side in ran[1:]:
        assert written[side] == written[ran[0]], (side, ran[0])  # every tag, step and value, as written
        assert differences(trained(side, outcomes[side]), trained(ran[0], outcomes[ran[0]]), side) == []


@pytest.mark.parametrize("key", sorted(SEVERAL_PROCESSES))
def test_the_plain_loop_refuses_a_setting_of_several_processes_outside_torchrun(key, capsys):
    with pytest.raises(SystemExit) as refused:
        train_torch.main([*SETTINGS, f"--trainer.{key}={SEVERAL_PROCESSES[key]}"])
    assert refused.value.code == 2 and f"trainer.{key}=" in capsys.readouterr().err
