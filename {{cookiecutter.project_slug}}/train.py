"""Train, validate, test or predict with Lightning; configs/default.yaml holds the essay's experiment.

python train.py fit                                     # 100 epochs, logs to logs/lightning/version_N
python train.py fit --trainer.max_epochs 5 --model.lr 3e-3
python train.py fit --config configs/smoke.yaml         # default.yaml, then smoke.yaml on top
python train.py test --ckpt_path logs/lightning/version_0/checkpoints/last.ckpt
python train.py fit --print_config                      # every key, resolved
"""

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from {{ cookiecutter.package_name }}.boundary import DecisionBoundary
from {{ cookiecutter.package_name }}.data import DataError, SpiralDataModule
from {{ cookiecutter.package_name }}.module import SpiralClassifier

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.classes", "model.classes")
        parser.add_lightning_class_args(DecisionBoundary, "boundary")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Lightning takes 0 (train nothing) and -1 (forever); the cosine schedule needs T_max = max_epochs >= 1.
        max_epochs = config.trainer.max_epochs
        if not isinstance(max_epochs, int) or max_epochs < 1:
            print(f"error: trainer.max_epochs must be a positive integer, got {max_epochs!r}", file=sys.stderr)
            sys.exit(2)


def main(args: list[str] | None = None) -> CLI:
    try:
        return CLI(
            SpiralClassifier,
            SpiralDataModule,
            parser_kwargs={command: {"default_config_files": [str(DEFAULT_CONFIG)]} for command in SUBCOMMANDS},
            args=args,
        )
    except DataError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
