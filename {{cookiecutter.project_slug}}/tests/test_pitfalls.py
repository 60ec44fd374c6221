"""The pitfalls lab's evidence, asserted: each moved line shows its symptom, and the correct loop does not.

Every check runs on both loops, so each test fails if the symptom is gone or if the correct loop shows it too.
The runs are lab.runs.QUICK's (600 points, 4 epochs, clipping at 0.05 so that it bites), each variant trained once.
"""

import math
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.data import Spiral, SpiralDataModule
from {{ cookiecutter.package_name }}.model import MLP

from lab import pitfalls
from lab.edits import leave, move
from lab.pitfalls import INTRO, OUTRO, ROWS, cells
from lab.runs import FULL, QUICK, Lab, N, Run, Setup, equal_steps, graph_nodes, identical, train

ROOT = Path(__file__).resolve().parents[1]
S = QUICK


@pytest.fixture(scope="module")
def lab() -> Lab:
    return Lab(S)


def first_epoch(values: torch.Tensor, run: Run) -> torch.Tensor:
    return values[: run.steps_per_epoch]


def later_epochs(values: torch.Tensor, run: Run) -> torch.Tensor:
    return values[run.steps_per_epoch :]


# --- 1: model.to(dtype) after the optimizer ---


def test_a_dtype_change_after_the_optimizer_changes_nothing_by_default(lab):
    correct = lab.run(pitfalls.TO_FLOAT64, float64=True)
    late = lab.run(pitfalls.TO_FLOAT64, pitfalls.FLOAT64_LATE, float64=True)
    assert late.params["layers.0.weight"].dtype == torch.float64
    assert late.optimizer_has_model_params and correct.optimizer_has_model_params
    assert identical(correct, late)


def test_with_the_overwrite_flag_the_optimizer_updates_discarded_parameters(lab):
    correct = lab.run(pitfalls.TO_FLOAT64, float64=True, overwrite=True)
    late = lab.run(pitfalls.TO_FLOAT64, pitfalls.FLOAT64_LATE, float64=True, overwrite=True)
    assert correct.optimizer_has_model_params and correct.change > 0
    assert not late.optimizer_has_model_params and late.change == 0
    assert torch.equal(late.val_losses, late.val_losses[:1].expand(S.epochs))  # the model never changed
    assert not torch.__future__.get_overwrite_module_params_on_conversion()  # the lab restored torch's default


# --- 2: zero_grad left out, between backward and step, after step ---


def test_without_zero_grad_gradients_pile_up(lab):
    correct, left_out = lab.run(), lab.run(leave(pitfalls.ZERO_GRAD))
    assert not correct.leftover.any()  # .grad empty at every backward
    assert (left_out.leftover[1:] > 0).all()  # every backward after the first adds to what is there
    assert not torch.equal(correct.losses, left_out.losses)


def test_the_update_uses_the_sum_of_the_batches_gradients():
    """Without zero_grad, .grad after two backward passes is exactly the sum of the two batches' gradients."""
    torch.manual_seed(0)
    model, criterion = MLP(), torch.nn.CrossEntropyLoss()
    batches = [(torch.randn(8, 2), torch.randint(0, 3, (8,))) for _ in range(2)]
    alone = [torch.autograd.grad(criterion(model(X), y), model.parameters()) for X, y in batches]
    for X, y in batches:
        criterion(model(X), y).backward()
    assert all(torch.equal(p.grad, a + b) for p, a, b in zip(model.parameters(), *alone, strict=True))


def test_zero_grad_between_backward_and_step_stops_training(lab):
    correct, wiped = lab.run(), lab.run(move(pitfalls.ZERO_GRAD, after=pitfalls.BACKWARD))
    assert (correct.applied > 0).all() and correct.change > 0
    assert not wiped.applied.any() and wiped.change == 0


def test_zero_grad_after_step_is_harmless(lab):
    assert identical(lab.run(), lab.run(move(pitfalls.ZERO_GRAD, after=pitfalls.BATCH_END)))


# --- 3, 4: clip_grad_norm_ before backward, after step ---


def test_clipping_bites_in_the_correct_loop(lab):
    """So that 3 and 4 can fail: the correct loop's clipping changes the run."""
    correct, unclipped = lab.run(), lab.run(leave(pitfalls.CLIP))
    assert correct.clip_saw.max() > S.clip
    assert correct.applied.max() <= S.clip * (1 + 1e-4)
    assert not identical(correct, unclipped)


def test_clipping_before_backward_does_nothing(lab):
    early, unclipped = lab.run(move(pitfalls.CLIP, before=pitfalls.BACKWARD)), lab.run(leave(pitfalls.CLIP))
    assert not early.clip_saw.any()  # no gradient to see
    assert early.applied.max() > S.clip
    assert identical(early, unclipped)


def test_clipping_after_step_equals_no_clipping_bit_for_bit(lab):
    late, unclipped = lab.run(move(pitfalls.CLIP, after=pitfalls.STEP)), lab.run(leave(pitfalls.CLIP))
    assert late.clip_saw.max() > S.clip  # it did clip, too late
    assert identical(late, unclipped)


# --- 5: scheduler.step() inside the batch loop ---


def cosine(step: int) -> float:
    return S.lr * (1 + math.cos(math.pi * step / S.epochs)) / 2


def test_scheduler_step_in_the_batch_loop_decays_every_batch(lab):
    correct, per_batch = lab.run(), lab.run(move(pitfalls.SCHEDULER_STEP, after=pitfalls.UPDATE))
    epoch = torch.arange(len(correct.lrs)) // correct.steps_per_epoch
    expected_per_epoch = torch.tensor([cosine(e) for e in epoch.tolist()], dtype=torch.float64)
    expected_per_batch = torch.tensor([cosine(i) for i in range(len(correct.lrs))], dtype=torch.float64)
    assert torch.allclose(correct.lrs, expected_per_epoch)
    assert torch.allclose(per_batch.lrs, expected_per_batch, atol=1e-12)
    assert not torch.allclose(per_batch.lrs, expected_per_epoch)


# --- 6: model.train() left out; 6b: model.eval() left out ---


def test_without_model_train_training_goes_on_in_eval_mode(lab):
    correct = lab.run(dropout=S.dropout)
    left_out = lab.run(leave("model.train()"), dropout=S.dropout)
    assert correct.train_mode.all()
    assert first_epoch(left_out.train_mode, left_out).all() and not later_epochs(left_out.train_mode, left_out).any()
    assert torch.equal(first_epoch(correct.losses, correct), first_epoch(left_out.losses, left_out))
    assert not torch.equal(later_epochs(correct.losses, correct), later_epochs(left_out.losses, left_out))


def test_without_model_eval_validation_runs_dropout(lab):
    correct = lab.run(dropout=S.dropout)
    left_out = lab.run(leave("model.eval()"), dropout=S.dropout)
    assert correct.val_losses[0] != left_out.val_losses[0]
    assert torch.equal(first_epoch(correct.losses, correct), first_epoch(left_out.losses, left_out))


# --- 7: no_grad left out of validation; 8: logging loss instead of loss.item() ---


def test_without_no_grad_validation_keeps_a_graph_per_batch(lab):
    correct, left_out = lab.run(*pitfalls.SUMMED), lab.run(*pitfalls.SUMMED, leave(pitfalls.NO_GRAD))
    batches = left_out.kept.shape[1]
    assert batches >= 3
    assert not correct.kept.any()
    per_batch = left_out.kept[0, 0]
    assert per_batch > 0
    assert torch.equal(left_out.kept, per_batch * torch.arange(1, batches + 1).expand(S.epochs, batches))
    assert (left_out.kept_bytes[:, 1:] > left_out.kept_bytes[:, :-1]).all()
    assert identical(correct, left_out)  # memory only: not a number changes


def test_loop_py_without_no_grad_keeps_one_batchs_graph_at_a_time(lab):
    """loop.py's MeanMetric adds up without grad: only the last batch's logits hold a graph."""
    left_out = lab.run(leave(pitfalls.NO_GRAD))
    assert left_out.kept.min() > 0 and (left_out.kept == left_out.kept[0, 0]).all()
    assert identical(lab.run(), left_out)


def test_logging_the_loss_tensor_keeps_every_steps_graph(lab):
    correct, tensors = lab.run(), lab.run(log_tensors=True)
    assert correct.logged_nodes == 0
    assert tensors.logged_nodes > len(tensors.losses)  # several nodes for each step's graph
    assert correct.kept_after == tensors.kept_after == 0  # backward freed what the graphs saved
    assert identical(correct, tensors)


def test_graph_nodes_grow_with_the_steps_logged():
    x = torch.ones(3, requires_grad=True)
    logged = [(x * i).sum() for i in range(1, 6)]
    assert graph_nodes(logged[:1]) < graph_nodes(logged) and graph_nodes([1.0]) == 0


# --- 9: the global RNG and the validation DataLoader; 9b: RandomSampler's extra permutation ---


def test_a_validation_dataloader_shifts_a_generatorless_shuffle_from_epoch_2(lab):
    on_tensor, on_loader = lab.run(pitfalls.ESSAY_LOADER, pitfalls.ON_TENSOR), lab.run(pitfalls.ESSAY_LOADER)
    assert torch.equal(first_epoch(on_tensor.losses, on_tensor), first_epoch(on_loader.losses, on_loader))
    assert equal_steps(on_tensor.losses, on_loader.losses) == on_tensor.steps_per_epoch


def test_its_own_generator_makes_the_two_loops_identical(lab):
    assert torch.equal(lab.run(pitfalls.ON_TENSOR).losses, lab.run().losses)


def test_random_sampler_past_its_end_shuffles_later_epochs_differently():
    def loader():
        return torch.utils.data.DataLoader(
            torch.arange(128), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
        )

    plain, stopped = (pitfalls.shuffle_orders(loader(), 3, stop_at_len) for stop_at_len in (False, True))
    assert [torch.equal(a, b) for a, b in zip(plain, stopped, strict=True)] == [True, False, False]


def test_the_projects_training_loader_agrees_either_way():
    def loader():
        data = SpiralDataModule(Spiral(points_per_class=100), batch_size=60)
        data.setup("fit")
        assert len(data.train_set) % 60 == 0
        return data.train_dataloader()

    def order(stop_at_len: bool) -> list[torch.Tensor]:
        dl = loader()
        return [torch.cat([X for X, _ in (islice(dl, len(dl)) if stop_at_len else dl)]) for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(order(False), order(True), strict=True))


# --- 10: lines that commute ---


@pytest.mark.parametrize(
    "variant", [move(pitfalls.SCHEDULER_STEP, before=pitfalls.EPOCH_END), move(pitfalls.ZERO_GRAD, after=pitfalls.LOSS)]
)
def test_lines_you_may_move_change_nothing(lab, variant):
    assert identical(lab.run(), lab.run(variant))


# --- 11: accumulation and mixed precision ---


def test_a_loss_not_divided_by_n_gives_n_times_the_gradient(lab):
    correct, undivided = lab.run(accumulate=N), lab.run(pitfalls.NOT_DIVIDED, accumulate=N)
    assert undivided.clip_saw[0] == N * correct.clip_saw[0]  # dividing by a power of two is exact
    assert not identical(correct, undivided)


def test_zero_grad_at_every_batch_accumulates_nothing(lab):
    correct, every = lab.run(accumulate=N), lab.run(pitfalls.ZERO_GRAD_EVERY_BATCH, accumulate=N)
    per_epoch = len(correct.train_mode) // S.epochs  # batches; a window's later ones add to its earlier ones
    first = torch.tensor([i % per_epoch % N == 0 for i in range(len(correct.leftover))])
    assert (correct.leftover[~first] > 0).all() and not correct.leftover[first].any()
    assert not every.leftover.any()
    assert not identical(correct, every)


def test_a_step_schedule_stepped_at_every_batch_runs_out_early(lab):
    correct = lab.run(pitfalls.OVER_STEPS, move(pitfalls.SCHEDULER_STEP, after=pitfalls.UPDATE), accumulate=N)
    with pytest.warns(UserWarning, match=r"lr_scheduler.step\(\)` before `optimizer.step\(\)"):
        every = train(
            S, (pitfalls.OVER_STEPS, move(pitfalls.SCHEDULER_STEP, after=pitfalls.BATCH_END)), Setup(accumulate=N)
        )
    assert int(correct.lrs.argmin()) == len(correct.lrs) - 1  # the schedule's end at the run's
    assert int(every.lrs.argmin()) < len(every.lrs) // 2


def test_clipping_before_unscale_clips_the_scaled_gradients(lab):
    correct, late = lab.run(fp16=True), lab.run(move(pitfalls.UNSCALE, before=pitfalls.STEP), fp16=True)
    assert correct.clip_saw.max() < 10 and late.clip_saw.min() > 2**10  # the gradients times 2**16
    assert torch.allclose(correct.applied, torch.full_like(correct.applied, S.clip), rtol=1e-4)  # it bites
    assert late.applied.max() <= S.clip / 2**16 * (1 + 1e-4)


def test_without_scaler_update_the_grad_scaler_refuses_the_next_step(lab):
    correct = lab.run(pitfalls.SCALE_2_24, fp16=True)
    assert 0 < correct.taken < len(correct.losses) and correct.scales[-1] < 2**24  # overflows, then backs off
    with pytest.raises(RuntimeError, match=r"unscale_\(\) is being called after step\(\)"):
        train(S, (pitfalls.SCALE_2_24, leave(pitfalls.UPDATE)), Setup(fp16=True))


def test_without_no_sync_every_batch_all_reduces_and_the_bits_change(lab):
    (with_no_sync, synced), (without, unsynced) = lab.ddp((), (leave(pitfalls.NO_SYNC),))
    batches = math.ceil(3 * S.points_per_class * 0.6 / 2 / S.batch_size)  # each process's share of an epoch
    assert (with_no_sync, without) == (S.epochs * math.ceil(batches / N), S.epochs * batches)
    assert any(not torch.equal(synced[k], unsynced[k]) for k in synced)


# --- the lab itself ---


def test_an_edit_finds_its_line_by_code_whatever_its_comments_say():
    lines = ["def fit():", "    # essay: a = 0", "    a = 1  # one comment", "    b = 2  # another", "    return a"]
    assert move("a = 1", after="b = 2").apply(lines)[1:4] == [
        "    # essay: a = 0",
        "    b = 2  # another",
        "    a = 1  # one comment",
    ]
    with pytest.raises(LookupError, match="an edit names one"):
        leave("a = 0").apply(lines)  # in a comment alone


def test_a_misspelt_line_is_refused():
    with pytest.raises(LookupError, match="an edit names one"):
        train(S, (move(pitfalls.CLIP, after="loss.backward()"),))


EXPECTED = {
    "1a": "**no**",
    "1b": "**yes**",
    "2a": "**yes**",
    "2b": "**no**",
    "2c": "**no**",
    "3": "**yes**",
    "4": "**yes**",
    "5": "**yes**",
    "6": "**yes**",
    "6b": "dropout stays on",
    "7": "**yes**",
    "8": "**yes**",
    "9": "the shuffle order shifts",
    "9b": "`RandomSampler` draws",
    "10a": "a line you may move",
    "10b": "a line you may move",
    "11a": "**yes**",
    "11b": "**yes**",
    "11c": "**yes**",
    "11d": "**yes**",
    "11e": "**no**, not silent",
    "11f": "**yes**, and the bits change",
}


def test_every_row_reports_what_was_measured(lab):
    assert [row.number for row in ROWS] == list(EXPECTED)
    verdicts = {row.number: row.measure(lab).verdict for row in ROWS}
    assert {number: verdict[: len(EXPECTED[number])] for number, verdict in verdicts.items()} == EXPECTED


def test_the_lab_runs_as_a_module(tmp_path):
    out = tmp_path / "logs" / "pitfalls" / "pitfalls.md"
    result = subprocess.run(
        [sys.executable, "-m", "lab", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    written = out.read_text()
    assert written.startswith(INTRO) and written.endswith(OUTRO)
    table = written.removeprefix(INTRO).removesuffix(OUTRO)
    assert table.strip() in result.stdout and str(out) in result.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(EXPECTED)
    lines = ["model.to", "zero_grad", "clip_grad_norm_", "scheduler.step", "model.train", "no_grad", "loss.item()"]
    for line in [*lines, "loss / N", "scaler.unscale_", "scaler.update", "no_sync"]:
        assert line in table


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of a Markdown table in `text`, the header and its rule left out."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| # |")]
    return [row.removeprefix("| ").removesuffix(" |").split(" | ") for row in rows]


def test_the_docs_page_says_what_the_rows_say():
    """docs/pitfalls.md is the page the lab writes: its intro, and the static cells of every row, in order."""
    text = (ROOT / "docs" / "pitfalls.md").read_text()
    table = text.removeprefix(INTRO).removesuffix(OUTRO).strip("\n")
    assert text == pitfalls.page(table)
    assert table.splitlines()[0].split("; ", 1)[1] == pitfalls.described(FULL)
    rows = table_rows(text)
    assert all(len(row) == 7 for row in rows)
    static = [(number, line, moved, claim, guard) for number, line, moved, _, claim, _, guard in rows]
    assert static == [cells(row, FULL) for row in ROWS]
