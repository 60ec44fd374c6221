"""Peak memory per process, DDP against FSDP2: the plain loop under torchrun, two CPU processes, a wide MLP.

    python benchmarks/memory.py                       # hidden=4096: 16.8M parameters; 3 rounds
    python benchmarks/memory.py --hidden 8192 --rounds 5

Each process's peak resident memory (ru_maxrss) over a run of one epoch, less the same run's with a network of 2
hidden units: what the network adds, its weights, gradients and Adam's two moments, with the activations and what
FSDP2 gathers. DDP keeps all of it whole in every process; FSDP2 keeps each process's shard, and gathers a layer's
weights for that layer's forward and backward alone. At the epoch's end rank 0 gathers the whole model and optimizer
for the checkpoint (machinery/sharding.py): its peak shows that too. Rounds alternate the strategies, each run in a
temporary directory with one thread a process; the medians over the rounds are printed, in MiB.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run train_torch.py, then write this process's peak resident memory in KiB (Linux's unit): one write, which the other
# process's cannot cut in two.
MEASURED = """
import os, resource, runpy, sys
sys.argv[0] = SCRIPT
runpy.run_path(sys.argv[0], run_name="__main__")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
os.write(1, ("peak %s %d\\n" % (os.environ["RANK"], peak)).encode())
""".replace("SCRIPT", repr(str(ROOT / "train_torch.py")))
FLAGS = ["--trainer.max_epochs=1", "--data.dataset.points_per_class=100", "--boundary.every_n_epochs=0"]


def peaks(strategy: str, hidden: int) -> list[float]:
    """Each rank's peak resident memory, MiB, in a run of `strategy` with `hidden` units a layer."""
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "measured.py"
        script.write_text(MEASURED)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
        flags = [*FLAGS, f"--trainer.strategy={strategy}", f"--model.net.hidden={hidden}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run([*command, *flags], cwd=directory, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"error: {strategy}, hidden={hidden}: {done.stderr.strip().splitlines()[-1:]}")
    found = sorted(line.split()[1:] for line in done.stdout.splitlines() if line.startswith("peak "))
    return [int(kib) / 1024 for _, kib in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=4096, help="units in each hidden layer (default 4096)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each strategy (default 3)")
    args = parser.parse_args()
    parameters = 2 * args.hidden + args.hidden + args.hidden * args.hidden + args.hidden + 3 * args.hidden + 3
    print(
        f"MLP 2 -> {args.hidden} -> {args.hidden} -> 3: {parameters / 1e6:.1f}M parameters, "
        f"{4 * parameters / 2**20:.0f} MiB each of weights, gradients, Adam's two moments (float32)"
    )
    added = {"ddp": [], "fsdp2": []}
    for _ in range(args.rounds):
        for strategy in added:
            wide, narrow = peaks(strategy, args.hidden), peaks(strategy, 2)
            added[strategy].append([w - n for w, n in zip(wide, narrow, strict=True)])
    print("peak resident memory the network adds, MiB (median of runs):  rank 0   rank 1")
    for strategy, runs in added.items():
        ranks = [statistics.median(run[rank] for run in runs) for rank in (0, 1)]
        print(f"  {strategy:<60}{ranks[0]:>7.0f}  {ranks[1]:>7.0f}")
    ratio = [statistics.median(added["fsdp2"][i][r] / added["ddp"][i][r] for i in range(args.rounds)) for r in (0, 1)]
    print(f"ratio fsdp2/ddp: rank 0 {ratio[0]:.2f}, rank 1 {ratio[1]:.2f}")


if __name__ == "__main__":
    main()
