"""Fit, validate, test or predict with Lightning, module.py and data.py, on configs/default.yaml.

    python train.py fit                              # 100 epochs, logs to logs/lightning/version_N
    python train.py fit --trainer.max_epochs 5 --model.lr 3e-3
    python train.py fit --config configs/smoke.yaml  # default.yaml, then smoke.yaml on top
    python train.py fit --ckpt_path last             # go on from the newest run's last.ckpt
    python train.py test --ckpt_path last            # that checkpoint's test numbers
    python train.py fit --print_config               # every key, resolved

Ctrl-C or SIGTERM stops after the batch and prints the command that resumes the run exactly:
docs/interrupted_runs.md. The steps around LightningCLI: src/{{ cookiecutter.package_name }}/scripts.py.
"""

if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line, no traceback
    from {{ cookiecutter.package_name }}.machinery import script

    script.start()

from {{ cookiecutter.package_name }}.data import SpiralDataModule
from {{ cookiecutter.package_name }}.module import SpiralClassifier
from {{ cookiecutter.package_name }}.scripts import CLI


def main(args: list[str] | None = None) -> CLI:
    return CLI(SpiralClassifier, SpiralDataModule, args=args)


if __name__ == "__main__":
    script.run(main)
