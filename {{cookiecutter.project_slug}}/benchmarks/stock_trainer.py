"""The benchmark's peer: this project's LightningModule and data in a stock Trainer, as typical templates run them.

    python benchmarks/stock_trainer.py                                    # logs to logs/stock/version_N
    python benchmarks/stock_trainer.py --trainer.max_epochs=5 --data.dataset.init_args.points_per_class=100

The experiment's values (seed, model, data, and the trainer's plain settings: max_epochs, gradient_clip_val,
log_every_n_steps=1, ...) come from configs/default.yaml, with `--section.key=value` flags on top. Everything
else is Lightning's default: its TensorBoardLogger (flushed after every logged step, an `epoch` scalar at every
step), its progress bar redrawn at every step, its ModelCheckpoint and ModelSummary. Of this project's callbacks it
keeps DecisionBoundary alone, so that it draws the frames the other two draw. It computes the same numbers as
`python train.py fit`; benchmarks/lightning_vs_torch.py checks that.
"""

import os
import sys
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from {{ cookiecutter.package_name }}.boundary import DecisionBoundary
from {{ cookiecutter.package_name }}.data import SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.cli import instantiate
from {{ cookiecutter.package_name }}.module import SpiralClassifier

ROOT = Path(__file__).resolve().parents[1]
NOT_STOCK = ("logger", "callbacks", "plugins")  # the trainer settings of this project's, left out


def configure(flags: list[str]) -> dict:
    """configs/default.yaml with `--section.key=value` flags applied."""
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    for flag in flags:
        key, equals, value = flag.removeprefix("--").partition("=")
        if not (flag.startswith("--") and equals):
            sys.exit(f"error: expected --section.key=value, got {flag!r}")
        *sections, name = key.split(".")
        target = config
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = yaml.safe_load(value)
    return config


def main(flags: list[str]) -> None:
    config = configure(flags)
    trainer_settings = {key: value for key, value in config["trainer"].items() if key not in NOT_STOCK}
    save_dir = config["trainer"]["logger"]["init_args"]["save_dir"]
    L.seed_everything(config["seed_everything"], verbose=False)
    data = SpiralDataModule(**vars(instantiate(config["data"])))
    model = SpiralClassifier(**vars(instantiate(config["model"])))
    logger = TensorBoardLogger(save_dir, name="stock")
    trainer = L.Trainer(**trainer_settings, logger=logger, callbacks=[DecisionBoundary(**config["boundary"])])
    trainer.fit(model, data)


if __name__ == "__main__":
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as train.py and train_torch.py
    main(sys.argv[1:])
