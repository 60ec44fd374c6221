"""The benchmarks on a tiny budget: lightning_vs_torch.py, one run of each entry point and the stock peer, 2 epochs;
memory.py, one round."""

import re
import subprocess
import sys

from conftest import ROOT

ROWS = (
    "wall time, whole process",
    "start-up",
    "training time",
    "time per step",
    "steps per second",
    "step to step within an epoch",
    "epoch to epoch",
    "CPU time",
    "peak RSS",
    "import time, entry point",
    "import time, libraries",
)


def test_the_benchmark_prints_its_table_and_the_ratio_and_leaves_nothing_behind(tmp_path):
    script = ROOT / "benchmarks" / "lightning_vs_torch.py"
    args = ["--runs", "1", "--epochs", "2", "--", "--data.dataset.init_args.points_per_class=100"]
    result = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "threads: OMP_NUM_THREADS=1" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert [cell.strip() for cell in table[0].strip("|").split("|")][1:] == [
        "`python train.py fit`",
        "`python train_torch.py` (plain)",
        "`python train_fabric.py`",
        "stock Trainer",
        "Lightning / plain",
        "Fabric / plain",
        "stock / plain",
    ]
    assert set(table[1]) <= set("|-:")
    names = [row.split("|")[1].strip() for row in table[2:]]
    assert len(names) == len(ROWS) and all(name.startswith(prefix) for name, prefix in zip(names, ROWS, strict=True)), (
        names
    )
    for row in table[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert all(re.fullmatch(r"[\d.]+ \([\d.]+–[\d.]+\)", cell) for cell in cells[1:5]), row
        assert all(re.fullmatch(r"\d+\.\d\d", cell) for cell in cells[5:]), row
    assert "train/loss and val/loss equal in every run of all four: yes" in lines
    assert re.fullmatch(r"ratio stock/torch: \d+\.\d\d", lines[-3])
    assert re.fullmatch(r"ratio fabric/torch: \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"ratio lightning/torch: \d+\.\d\d", lines[-1])
    assert not any(tmp_path.iterdir())  # the runs logged to a temporary directory, since removed


def test_the_memory_benchmark_shows_fsdp2_holding_less_than_ddp(tmp_path):
    """benchmarks/memory.py on its network of 4096 units a layer (64 MiB a float32 copy), one round: each strategy's
    row, and the process that does not write the checkpoint holding less under FSDP2 than under DDP."""
    script = ROOT / "benchmarks" / "memory.py"
    result = subprocess.run(
        [sys.executable, str(script), "--rounds", "1"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.findall(r"^  (ddp|fsdp2) +(\d+) +(\d+)$", result.stdout, re.MULTILINE)
    rows = {name: (int(rank0), int(rank1)) for name, rank0, rank1 in found}
    assert set(rows) == {"ddp", "fsdp2"}, result.stdout
    assert rows["fsdp2"][1] < rows["ddp"][1], result.stdout
    assert re.search(r"^ratio fsdp2/ddp: rank 0 \d\.\d\d, rank 1 \d\.\d\d$", result.stdout, re.MULTILINE)
    assert not any(tmp_path.iterdir())


def test_the_stop_vote_benchmark_prints_both_times_and_their_ratio(tmp_path):
    """benchmarks/stop_vote.py, one short round: a time with the vote and one without, and their ratio."""
    script = ROOT / "benchmarks" / "stop_vote.py"
    command = [sys.executable, str(script), "--rounds", "1", "--epochs", "2"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"^  (with the vote|without it) +\d+\.\d{3} s$", result.stdout, re.MULTILINE) == [
        "with the vote",
        "without it",
    ], result.stdout
    assert re.search(r"^ratio with/without: \d\.\d\d \(median of 1 rounds\)$", result.stdout, re.MULTILINE)
    assert not any(tmp_path.iterdir())
