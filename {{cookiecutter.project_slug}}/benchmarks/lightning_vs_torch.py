"""Time `python train.py fit` against `python train_torch.py`, `python train_fabric.py` and a stock Trainer: one
experiment, in fresh processes.

    python benchmarks/lightning_vs_torch.py                       # configs/default.yaml, 3 runs of each, 1 thread
    python benchmarks/lightning_vs_torch.py --runs 5 --epochs 20 --threads 2
    python benchmarks/lightning_vs_torch.py --threads torch        # as many threads as torch itself would take
    python benchmarks/lightning_vs_torch.py -- --data.dataset.init_args.points_per_class=100000 --data.batch_size=4096

The three entry points run exactly as a user types them, with the config they read by default, in alternation
with the peer, benchmarks/stock_trainer.py (Lightning, plain, Fabric, stock, Lightning, ...), so that a change in
the machine's load hits all alike. The peer is the same LightningModule and data in a Trainer with Lightning's
defaults: its TensorBoardLogger, its progress bar at every step, train/loss logged at every step, as a typical
Lightning template runs it. Flags after `--` go to all four. Each run writes its logs to a temporary directory, so
logs/ stays as it was. The threads torch may use are set for all through OMP_NUM_THREADS: 1 unless --threads says
otherwise, which is also what the scripts use when it is unset; `--threads torch` sets it to the number torch picks
by itself.

Training time is read from the TensorBoard event files the runs write: from the first train/loss event (after
step 0) to the last event (the last epoch's validation metrics and animation frame). It is the training loop
alone - every step after the first, every validation, frame and checkpoint in between - without the start-up
(imports, argument parsing, data), the first step, and what the process does after the last epoch. Whole-process
wall time is measured too, from start to exit, and the start-up: from the process's start to its first train/loss
event. All runs must log equal train/loss and val/loss series; the script checks that, and exits with 1 if they
differ.

The ratio lines, `ratio stock/torch: X.XX`, `ratio fabric/torch: X.XX` and last `ratio lightning/torch: X.XX`, are
the medians over the rounds of a run's training time divided by the plain loop's in the same round.
"""

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = {
    "lightning": ["train.py", "fit"],
    "torch": ["train_torch.py"],
    "fabric": ["train_fabric.py"],
    "stock": ["benchmarks/stock_trainer.py"],
}
COLUMNS = {
    "lightning": "`python train.py fit`",
    "torch": "`python train_torch.py` (plain)",
    "fabric": "`python train_fabric.py`",
    "stock": "stock Trainer",
}
RATIOS = ("lightning", "fabric", "stock")  # each against the plain loop
# What each side's process imports before it runs; the plain loop's own libraries, to compare with Lightning.
IMPORTS = {
    "lightning": ("import train", "import lightning"),
    "torch": ("import train_torch", "import torch, torchmetrics, tqdm, torch.utils.tensorboard"),
    "fabric": ("import train_fabric", "import lightning"),
    "stock": ("import benchmarks.stock_trainer", "import lightning"),
}
DEFAULT_THREADS = 1  # as train.py and train_torch.py when OMP_NUM_THREADS is unset; docs/performance.md


@dataclass
class Run:
    wall: float  # whole process, start to exit [s]
    startup: float  # process start to the first train/loss event [s]
    cpu: float  # user + system CPU time of the process [s]
    rss: float  # peak resident set size [MiB]
    train: float  # first train/loss event to the last event [s]
    steps: int  # train/loss events
    interval: float  # median time from one train/loss event to the next within an epoch [s]
    boundary: float  # median time from an epoch's last train/loss event to the next epoch's first, less `interval`
    losses: dict  # tag -> [(step, value)] of train/loss and val/loss


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)  # the entry points' default
    else:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def torch_default_threads() -> int:
    """The threads torch takes when OMP_NUM_THREADS is unset and nothing calls torch.set_num_threads."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    command = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    return int(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)


def threads_flag(value: str) -> int | str:
    return value if value == "torch" else int(value)


def read_events(run_dir: Path) -> tuple[list[float], dict[str, list[tuple[int, float, float]]]]:
    """(wall time of every summary event, tag -> [(step, value, wall time)] of the scalars) of one run."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    times, scalars = [], {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for value in event.summary.value:
                times.append(event.wall_time)
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value, event.wall_time))
    return times, scalars


def run(side: str, index: int, workdir: Path, threads: int | None, flags: list[str]) -> Run:
    save_dir = workdir / f"{side}-{index}"
    script, *subcommand = SIDES[side]
    command = [sys.executable, str(ROOT / script), *subcommand, f"--trainer.logger.init_args.save_dir={save_dir}"]
    output = workdir / f"{side}-{index}.out"
    with output.open("wb") as out:
        started = time.time()  # the event files' clock
        start = time.perf_counter()
        process = subprocess.Popen(
            [*command, *flags], cwd=workdir, env=child_env(threads), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = output.read_text(errors="replace")[-3000:]
        sys.exit(f"{' '.join(command)} failed with exit status {process.returncode}:\n{tail}")
    [run_dir] = (save_dir / side).glob("version_*")
    times, scalars = read_events(run_dir)
    loss = sorted(scalars.get("train/loss", []))
    if len(loss) < 2:
        sys.exit(f"{run_dir}: fewer than two train/loss events, nothing to time")
    first = min(wall_time for _, _, wall_time in loss)
    last_steps = {step for step, _, _ in scalars.get("val/loss", [])}  # each epoch's last step
    intervals = [(step, b - a) for (step, _, a), (_, _, b) in pairwise(loss)]
    interval = statistics.median([dt for step, dt in intervals if step not in last_steps] or [0.0])
    boundary = statistics.median([dt for step, dt in intervals if step in last_steps] or [interval]) - interval
    losses = {tag: [(step, value) for step, value, _ in scalars.get(tag, [])] for tag in ("train/loss", "val/loss")}
    return Run(
        wall=wall,
        startup=first - started,
        cpu=usage.ru_utime + usage.ru_stime,
        rss=usage.ru_maxrss / 1024,  # Linux reports KiB
        train=max(times) - first,
        steps=len(loss),
        interval=interval,
        boundary=boundary,
        losses=losses,
    )


def import_times(side: str, threads: int | None) -> list[float]:
    """Seconds a fresh interpreter, run in the project root, spends importing `side`'s entry point and, first, the
    libraries it imports: [entry point, libraries]."""
    entry, libraries = IMPORTS[side]
    timer = f"import time; t = time.perf_counter(); {libraries}; a = time.perf_counter() - t; {entry}; "
    timer += "print(time.perf_counter() - t, a)"
    result = subprocess.run(
        [sys.executable, "-c", timer], cwd=ROOT, env=child_env(threads), capture_output=True, text=True, check=True
    )
    return [float(seconds) for seconds in result.stdout.split()[-2:]]


def summary(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def ratio(a: list[float], b: list[float]) -> float:
    """The median of the rounds' ratios; nan where there is nothing to divide by (one epoch: no epoch boundary)."""
    ratios = [x / y for x, y in zip(a, b, strict=True) if y]
    return statistics.median(ratios) if ratios else math.nan


def table(runs: dict[str, list[Run]], imports: dict[str, list[list[float]]], n: int) -> str:
    rows = [
        ("wall time, whole process [s]", lambda r: r.wall, 2),
        ("start-up [s] (process start to first train/loss event)", lambda r: r.startup, 2),
        ("training time [s] (first train/loss event to last event)", lambda r: r.train, 2),
        ("time per step [ms] (training time / steps after the first)", lambda r: 1000 * r.train / (r.steps - 1), 3),
        ("steps per second", lambda r: (r.steps - 1) / r.train, 0),
        ("step to step within an epoch, median [ms]", lambda r: 1000 * r.interval, 3),
        ("epoch to epoch, extra, median [ms] (validation, frame, checkpoint)", lambda r: 1000 * r.boundary, 1),
        ("CPU time, user + system [s]", lambda r: r.cpu, 2),
        ("peak RSS [MiB]", lambda r: r.rss, 0),
    ]
    columns = " | ".join(COLUMNS[side] for side in SIDES)
    lines = [
        f"| median (min–max) of {n} runs | {columns} | Lightning / plain | Fabric / plain | stock / plain |",
        "|---|" + "---:|" * (len(SIDES) + len(RATIOS)),
    ]
    names = [
        "import time, entry point [s] (`import train` / `train_torch` / `train_fabric` / `benchmarks.stock_trainer`)",
        "import time, libraries [s] (`lightning` / torch, torchmetrics, tqdm, tensorboard / `lightning` / `lightning`)",
    ]
    columns = {side: list(zip(*imports[side], strict=True)) for side in SIDES}
    cells = [(name, {side: [get(r) for r in runs[side]] for side in SIDES}, digits) for name, get, digits in rows]
    cells += [(name, {side: columns[side][i] for side in SIDES}, 2) for i, name in enumerate(names)]
    for name, values, digits in cells:
        medians = " | ".join(summary(values[side], digits) for side in SIDES)
        ratios = " | ".join(f"{ratio(values[side], values['torch']):.2f}" for side in RATIOS)
        lines.append(f"| {name} | {medians} | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each entry point (default: 3)")
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs for all (default: the config's)")
    parser.add_argument(
        "--threads",
        type=threads_flag,
        default=DEFAULT_THREADS,
        help=f"OMP_NUM_THREADS for all (default: {DEFAULT_THREADS}); 0 leaves it unset, to the entry points' default;"
        " `torch`: torch's own default",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary logs and print where they are")
    args = parser.parse_args(argv)
    if args.runs < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--runs and --epochs must be positive")
    threads = torch_default_threads() if args.threads == "torch" else args.threads or None
    if args.epochs is not None:
        flags = [f"--trainer.max_epochs={args.epochs}", *flags]

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"torch {version('torch')}, lightning {version('lightning')}, {device}, {os.cpu_count()} CPUs, "
        f"threads: {f'OMP_NUM_THREADS={threads}' if threads else 'OMP_NUM_THREADS unset (entry point default)'}"
        f"{' (torch default)' if args.threads == 'torch' else ''}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"config: configs/default.yaml {' '.join(flags)}".rstrip())
    workdir = Path(tempfile.mkdtemp(prefix="lightning_vs_torch-"))
    runs = {side: [] for side in SIDES}
    imports = {side: [] for side in SIDES}
    try:
        for index in range(args.runs):
            for side in SIDES:
                result = run(side, index, workdir, threads, flags)
                runs[side].append(result)
                print(
                    f"run {index + 1}/{args.runs} {side:9}: {result.wall:6.2f} s whole, {result.train:6.2f} s training,"
                    f" {result.steps} steps",
                    flush=True,
                )
            for side in SIDES:
                imports[side].append(import_times(side, threads))
    finally:
        if args.keep:
            print(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    reference = runs["torch"][0].losses
    equal = all(r.losses == reference for side in SIDES for r in runs[side])
    training = {side: [r.train for r in runs[side]] for side in SIDES}
    print()
    print(table(runs, imports, args.runs))
    print()
    print(f"train/loss and val/loss equal in every run of all four: {'yes' if equal else 'NO'}")
    print(f"ratio stock/torch: {ratio(training['stock'], training['torch']):.2f}")
    print(f"ratio fabric/torch: {ratio(training['fabric'], training['torch']):.2f}")
    print(f"ratio lightning/torch: {ratio(training['lightning'], training['torch']):.2f}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
