"""What the stop vote costs under DDP: the plain loop under torchrun, two CPU processes, with and without it.

    python benchmarks/stop_vote.py                 # 40 epochs of configs/default.yaml, 5 rounds
    python benchmarks/stop_vote.py --epochs 100 --rounds 7

After every optimizer step the processes vote on whether any of them was asked to stop (`StopRequest.agreed` in
machinery/stopping.py): an all-reduce of one number over a gloo group, read at the next step. The second run of
each round leaves the vote out, each process reading its own signal alone, as a run in one process does (a run that
must never be stopped by a signal to one process). Rounds alternate the two, each run in a temporary directory with
one thread a process; rank 0's time in main(), start-up left out, is printed: medians, and the median of the
rounds' ratios.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# train_torch.py's main(), timed; without the vote when VOTE is 0.
TIMED = """
import os, sys, time
sys.path.insert(0, ROOT)
from {{ cookiecutter.package_name }}.machinery import script
from {{ cookiecutter.package_name }}.machinery.stopping import StopRequest
if os.environ["VOTE"] == "0":
    StopRequest.agreed = lambda self, wait=False: self.signal is not None
import train_torch
def main():
    start = time.perf_counter()
    train_torch.main()
    if os.environ["RANK"] == "0":
        print("seconds %.4f" % (time.perf_counter() - start), flush=True)
script.run(main)
""".replace("ROOT", repr(str(ROOT)))


def seconds(vote: bool, epochs: int) -> float:
    """Rank 0's time in train_torch.main(), with or without the vote."""
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "timed.py"
        script.write_text(TIMED)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
        flags = [f"--trainer.max_epochs={epochs}", "--boundary.every_n_epochs=0", "--trainer.enable_progress_bar=false"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "VOTE": str(int(vote))}
        done = subprocess.run([*command, *flags], cwd=directory, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"error: vote={vote}: {done.stderr.strip().splitlines()[-1:]}")
    [line] = [line for line in done.stdout.splitlines() if line.startswith("seconds ")]
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40, help="epochs of each run (default 40, 15 steps each)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each (default 5)")
    args = parser.parse_args()
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for vote in times:
            times[vote].append(seconds(vote, args.epochs))
    for vote, label in ((True, "with the vote"), (False, "without it")):
        print(f"  {label:<16}{statistics.median(times[vote]):>8.3f} s")
    ratio = statistics.median(a / b for a, b in zip(times[True], times[False], strict=True))
    print(f"ratio with/without: {ratio:.2f} (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
