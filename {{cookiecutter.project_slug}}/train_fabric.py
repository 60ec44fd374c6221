"""Train with the Fabric loop, loop_fabric.py, on train.py's config: the same numbers, bit for bit.

    python train_fabric.py                    # configs/default.yaml, logs to logs/fabric/version_N
    python train_fabric.py --trainer.max_epochs 5 --model.lr 3e-3
    python train_fabric.py --config configs/smoke.yaml
    python train_fabric.py --ckpt_path last   # go on from the newest run's last.pt
    python train_fabric.py --trainer.strategy ddp --trainer.devices 2   # DDP: docs/ddp.md

trainer.accelerator, strategy, devices, num_nodes, precision and plugins go to Fabric; a setting the
Fabric loop would compute differently from train.py is refused in one line. Ctrl-C or SIGTERM
stops after the batch and prints the command that resumes the run exactly:
docs/interrupted_runs.md. The steps around loop_fabric.fit: src/{{ cookiecutter.package_name }}/scripts.py.
"""

if __name__ == "__main__":  # first: a Ctrl-C while the libraries load is one line, no traceback
    from {{ cookiecutter.package_name }}.machinery import script

    script.start()

from {{ cookiecutter.package_name }}.loop_fabric import fit
from {{ cookiecutter.package_name }}.scripts import fabric_run


def main(args: list[str] | None = None):
    """Train as configured; the model, optimizer and scheduler as they end."""
    with fabric_run(args, __doc__) as (data, hp, fabric, run):
        model, optimizer, scheduler = fit(data, hp, fabric, run)
    return model.module, optimizer, scheduler  # the network out of Fabric's wrapper


if __name__ == "__main__":
    script.run(main)
