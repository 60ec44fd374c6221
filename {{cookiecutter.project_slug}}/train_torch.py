"""Train with the plain PyTorch loop, loop.py, on train.py's config: the same numbers, bit for bit.

    python train_torch.py                     # configs/default.yaml, logs to logs/torch/version_N
    python train_torch.py --trainer.max_epochs 5 --model.lr 3e-3
    python train_torch.py --config configs/smoke.yaml
    python train_torch.py --ckpt_path last    # go on from the newest run's last.pt
    torchrun --standalone --nproc_per_node 2 train_torch.py   # DDP: docs/ddp.md

A setting the plain loop would compute differently from train.py is refused in one line. Ctrl-C or
SIGTERM stops after the batch and prints the command that resumes the run exactly:
docs/interrupted_runs.md. The steps around loop.fit: src/{{ cookiecutter.package_name }}/scripts.py.
"""

if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line, no traceback
    from {{ cookiecutter.package_name }}.machinery import script

    script.start()

from {{ cookiecutter.package_name }}.loop import fit
from {{ cookiecutter.package_name }}.scripts import plain_run


def main(args: list[str] | None = None):
    """Train as configured; the model, optimizer and scheduler as they end."""
    with plain_run(args, __doc__) as (data, hp, run):
        return fit(data, hp, run)


if __name__ == "__main__":
    script.run(main)
