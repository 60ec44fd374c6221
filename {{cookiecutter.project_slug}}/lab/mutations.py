"""The proof, checked for holes: each line of loop.fit() and loop_fabric.fit(), changed on one side only as a slip
of the hand would change it, must make a numerical test fail.

    python -m lab.mutations                # every mutation, one after another: half an hour on two cores
    python -m lab.mutations -k weight      # those whose name holds `weight`
    python -m lab.mutations --list         # their names, and why each listed as equivalent is

Each mutation edits one statement of fit() (a lab.edits `Edit`: its comments neither matched nor changed) in a copy
of the project in a temporary directory, and runs the tests that compare numbers there, in one process, to the first
failure: the equivalence tests; for a line that only a resumed run or DDP depends on, the resume or DDP tests.
"Caught": a test failed. A mutation that changes no number the tests compute (on the CPU, in one process) is listed
with the reason; it must survive, or the reason is wrong. The last line counts them; the exit code is 1 where a
mutation survived without a reason, a listed one was caught, a statement of either fit() has no mutation, or an edit
no longer applies. tests/test_mutations.py checks the mechanism on a few of them, and that every statement has one.
"""

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.edits import Edit, change, codes, dedent, edited, find, fit_function, leave, move

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = next(path.parent for path in (ROOT / "src").glob("*/loop.py"))
COPIED = shutil.ignore_patterns(".*", "logs", "checkpoints", "build", "__pycache__", "*.egg-info", "*.ckpt")

# The equivalence tests that compare numbers, in the order they run (the quickest to catch most come first).
EQUIVALENCE = (
    "tests/test_equivalence.py::test_variations_stay_identical",
    "tests/test_equivalence.py::test_a_model_with_batchnorm_stays_identical_buffers_included",
    "tests/test_equivalence.py::test_fp16_with_its_grad_scaler_accumulating_with_clipping_stays_identical",
    "tests/test_equivalence.py::test_fp16_steps_whose_gradients_overflow_are_skipped_alike",
    "tests/test_equivalence.py::test_points_of_5_features_train_a_model_of_5_inputs_in_each_loop",
)
# Lines that only DDP depends on: the three loops, each in two processes.
DDP = (
    "tests/test_ddp.py::test_lightning_ddp_the_plain_loop_under_torchrun_and_fabric_ddp_are_identical",
    "tests/test_ddp.py::test_accumulating_under_ddp_is_identical_and_needs_no_sync",
)
# Lines that only FSDP2 depends on: the three loops, each in two processes, with clipping that tells it from DDP.
FSDP2 = ("tests/test_fsdp2.py::test_the_three_loops_under_fsdp2_are_identical",)
# What a resumed run computes: a line that only a resumed run depends on is compared with the uninterrupted run.
RESUMING = (
    "tests/test_resume.py::test_a_signal_stops_after_the_batch_and_resuming_is_bit_identical",
    "tests/test_resume.py::test_a_signal_within_a_window_stops_at_its_end_and_resuming_is_bit_identical",
)


def statements(source: str) -> list[tuple[int, int]]:
    """The statements of fit(), but its docstring and `return`, each as the first and last of its lines (from 0); a
    statement that holds others, as the lines of its header."""
    fit = fit_function(source.splitlines())
    found = []

    def walk(body):
        for node in body:
            if isinstance(node, ast.Return) or (node is fit.body[0] and isinstance(node, ast.Expr)):
                continue
            inner = getattr(node, "body", None)
            found.append((node.lineno - 1, (inner[0].lineno - 2) if inner else node.end_lineno - 1))
            walk(inner or [])

    walk(fit.body)
    return found


@dataclass(frozen=True)
class Mutation:
    file: str  # loop.py or loop_fabric.py
    edit: Edit
    equivalent: str = ""  # why it changes no number the tests compute, where it does not
    tests: tuple[str, ...] = EQUIVALENCE

    def line(self, source: str) -> int:
        """The line (from 0) of the statement it changes; LookupError where its code is not there once."""
        return find(source.splitlines(), self.edit.line, self.edit.nth)

    def apply(self, source: str) -> str:
        """`source` with the statement changed; LookupError where its code is not there once."""
        mutated = edited(source, [self.edit])
        if mutated == source:
            raise LookupError("the edit changes nothing")
        return mutated


# Lines whose effect only the CPU or one process hides: what the test machines run. test_ddp.py and a GPU see them.
ON_THE_CPU = "on the CPU, the only device the tests train on, the tensors are there already"

L, F = "loop.py", "loop_fabric.py"
MUTATIONS = {
    # --- loop.fit(), line by line ---
    "seeded with another seed": Mutation(L, change("torch.manual_seed(hp.seed)", "torch.manual_seed(hp.seed + 1)")),
    "seeded after the model is built": Mutation(L, move("torch.manual_seed(hp.seed)", after="model = hp.net()")),
    "device: the CPU always": Mutation(L, change("device = run.device", 'device = torch.device("cpu")'), ON_THE_CPU),
    "data set up for another stage": Mutation(
        L, change('data.setup("fit")', 'data.setup("validate")'), "setup() splits the data alike for every stage"
    ),
    "the model built before the data is set up": Mutation(
        L,
        move("model = hp.net()", after="device = run.device"),
        "the DataModule shuffles and splits with generators of its own, not torch's global one",
    ),
    "training on the validation split": Mutation(L, change("data.train_dataloader()", "data.val_dataloader()")),
    "validating on the test split": Mutation(
        L, change("val_loader = data.val_dataloader()", "val_loader = data.test_dataloader()")
    ),
    "the model not moved to the device": Mutation(L, leave("model.to(device)"), ON_THE_CPU),
    "the model not sharded under fsdp2": Mutation(L, leave("shard(model, run.mesh())"), tests=FSDP2),
    "the model sharded after the optimizer is built": Mutation(
        L, move('if hp.strategy == "fsdp2":', after="optimizer = torch.optim.Adam("), tests=FSDP2
    ),
    "label smoothing": Mutation(L, change("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)")),
    "val_loss dropping the batch weights": Mutation(
        L, change('MeanMetric(nan_strategy=float("nan"))', 'MeanMetric(nan_strategy="disable")')
    ),
    "val metrics for 3 classes always": Mutation(L, change("metrics(hp.classes,", "metrics(3,")),
    "the essay's learning rate": Mutation(L, change("lr=hp.lr", "lr=1e-3")),
    "AdamW": Mutation(L, change("torch.optim.Adam(", "torch.optim.AdamW(")),
    "the essay's T_max": Mutation(L, change("T_max=hp.max_epochs", "T_max=100")),
    "autocast in bf16 whatever the precision": Mutation(L, change("AUTOCAST.get(hp.precision)", "torch.bfloat16")),
    "autocast off": Mutation(L, change("enabled=dtype is not None", "enabled=False")),
    "no GradScaler": Mutation(L, change('enabled=hp.precision == "16-mixed"', "enabled=False")),
    "N = 1": Mutation(L, change("N = hp.accumulate_grad_batches", "N = 1")),
    "the training loader distributed as the validation one": Mutation(
        L,
        change("run.distribute(model, loader, val_loader, hp.seed)", "run.distribute(model, loader, loader, hp.seed)"),
    ),
    "a resumed run starts at epoch 0": Mutation(
        L, change("start_epoch = run.start(", "start_epoch = 0 * run.start("), tests=RESUMING
    ),
    "one epoch short": Mutation(
        L, change("range(start_epoch, hp.max_epochs)", "range(start_epoch, hp.max_epochs - 1)")
    ),
    "a resumed epoch numbered from 0": Mutation(
        L, change("first = run.epoch_start(epoch)", "first = 0; run.epoch_start(epoch)"), tests=RESUMING
    ),
    "model.train() left out": Mutation(L, leave("model.train()")),
    "batches numbered from 0 after a resume": Mutation(
        L, change("enumerate(loader, first)", "enumerate(loader)"), tests=RESUMING
    ),
    "batches not moved to the device": Mutation(L, leave("X_batch, y_batch = X_batch.to(device)"), ON_THE_CPU),
    "the partial window not stepped": Mutation(L, change(" or batch_idx + 1 == len(loader)", "")),
    "a window's step one batch late": Mutation(L, change("(batch_idx + 1) % N == 0", "batch_idx % N == 0")),
    "zero_grad at every batch": Mutation(L, change("if batch_idx % N == 0:", "if True:")),
    "zero_grad at a window's last batch": Mutation(L, change("if batch_idx % N == 0:", "if (batch_idx + 1) % N == 0:")),
    "zero_grad left out": Mutation(L, leave("optimizer.zero_grad()")),
    "zero_grad to zeros": Mutation(
        L,
        change("optimizer.zero_grad()", "optimizer.zero_grad(set_to_none=False)"),
        "every parameter gets a gradient in every backward: zeros and None are added to alike, and Adam steps them",
    ),
    "zero_grad between backward and step": Mutation(L, move("if batch_idx % N == 0:", after="scaler.scale(loss / N)")),
    "no_sync the other way round": Mutation(L, change("run.no_sync(not steps)", "run.no_sync(steps)"), tests=DDP),
    "training forward outside autocast": Mutation(L, leave("with autocast:", nth=0)),
    "training forward on the unwrapped model": Mutation(
        L, change("logits = train_model(X_batch)", "logits = model(X_batch)"), tests=DDP
    ),
    "the loss outside autocast": Mutation(L, dedent("loss = criterion(logits, y_batch)")),
    "the loss not divided by N": Mutation(L, change("scaler.scale(loss / N)", "scaler.scale(loss)")),
    "backward without the scaler": Mutation(L, change("scaler.scale(loss / N).backward()", "(loss / N).backward()")),
    "the loss divided by N after scaling": Mutation(
        L,
        change("scaler.scale(loss / N).backward()", "(scaler.scale(loss) / N).backward()"),
        "the scale is a power of 2: multiplying by it before or after the division rounds alike",
    ),
    "a step at every batch": Mutation(L, change("if steps:", "if True:")),
    "unscale_ left out": Mutation(L, leave("scaler.unscale_(optimizer)")),
    "clip_grad_norm_ after the step": Mutation(
        L, move("if hp.gradient_clip_val is not None:", after="scaler.step(optimizer)")
    ),
    "clipping whether asked or not": Mutation(
        L, change("if hp.gradient_clip_val is not None:", "if hp.gradient_clip_val is not None or True:")
    ),
    "clipping at the essay's 1.0": Mutation(
        L, change("model.parameters(), hp.gradient_clip_val)", "model.parameters(), 1.0)")
    ),
    "clipping by value": Mutation(L, change("torch.nn.utils.clip_grad_norm_(", "torch.nn.utils.clip_grad_value_(")),
    "optimizer.step() past the scaler": Mutation(L, change("scaler.step(optimizer)", "optimizer.step()")),
    "scaler.update() left out": Mutation(L, leave("scaler.update()")),
    "train/loss divided by N": Mutation(L, change("run.batch_end(loss,", "run.batch_end(loss / N,")),
    "train/loss at every batch": Mutation(
        L, change("run.batch_end(loss, epoch, steps)", "run.batch_end(loss, epoch, True)")
    ),
    "scheduler.step() inside the batch loop": Mutation(L, move("scheduler.step()", after="scaler.step(optimizer)")),
    "scheduler.step() after the checkpoint": Mutation(
        L, move("scheduler.step()", after="run.epoch_end("), tests=RESUMING
    ),
    "model.eval() left out": Mutation(L, leave("model.eval()")),
    "validation with grad": Mutation(
        L, leave("with torch.no_grad():"), "no backward runs on the validation graph, and the metrics keep no grad"
    ),
    "validating on the training batches": Mutation(
        L, change("for X_val, y_val in val_loader:", "for X_val, y_val in loader:")
    ),
    "validation batches not moved to the device": Mutation(L, leave("X_val, y_val = X_val.to(device)"), ON_THE_CPU),
    "validation outside autocast": Mutation(L, leave("with autocast:", nth=1)),
    "validation on the DDP wrapper": Mutation(
        L,
        change("val_logits = model(X_val)", "val_logits = train_model(X_val)"),
        "in one process train_model is the model; under DDP its wrapper's forward without grad is the model's",
    ),
    "val_loss weight=1": Mutation(L, change("weight=len(y_val)", "weight=1")),
    "val metrics of the last batch alone": Mutation(L, dedent("val_metrics.update(val_logits, y_val)", levels=2)),
    "val metrics through forward": Mutation(
        L,
        change("val_metrics.update(val_logits, y_val)", "val_metrics(val_logits, y_val)"),
        "a metric's forward updates its epoch state as update() does, and returns the batch's value besides",
    ),
    "the checkpoint's epoch one ahead": Mutation(
        L, change("run.epoch_end(epoch,", "run.epoch_end(epoch + 1,"), tests=RESUMING
    ),
    # --- loop_fabric.fit(), line by line ---
    "fabric: seeded with another seed": Mutation(
        F, change("fabric.seed_everything(hp.seed)", "fabric.seed_everything(hp.seed + 1)")
    ),
    "fabric: seeded after the model is built": Mutation(
        F, move("fabric.seed_everything(hp.seed)", after="model = hp.net()")
    ),
    "fabric: device: the CPU always": Mutation(
        F, change("device = fabric.device", 'device = torch.device("cpu")'), ON_THE_CPU
    ),
    "fabric: the model built before the data is set up": Mutation(
        F,
        move("model = hp.net()", after="device = fabric.device"),
        "the DataModule shuffles and splits with generators of its own, not torch's global one",
    ),
    "fabric: data set up for another stage": Mutation(
        F, change('data.setup("fit")', 'data.setup("validate")'), "setup() splits the data alike for every stage"
    ),
    "fabric: training on the validation split": Mutation(F, change("data.train_dataloader()", "data.val_dataloader()")),
    "fabric: validating on the test split": Mutation(
        F, change("val_loader = data.val_dataloader()", "val_loader = data.test_dataloader()")
    ),
    "fabric: label smoothing": Mutation(F, change("nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)")),
    "fabric: val_loss dropping the batch weights": Mutation(
        F, change('MeanMetric(nan_strategy=float("nan"))', 'MeanMetric(nan_strategy="disable")')
    ),
    "fabric: val metrics for 3 classes always": Mutation(F, change("metrics(hp.classes,", "metrics(3,")),
    "fabric: the essay's learning rate": Mutation(F, change("lr=hp.lr", "lr=1e-3")),
    "fabric: the essay's T_max": Mutation(F, change("T_max=hp.max_epochs", "T_max=100")),
    "fabric: no GradScaler state in the checkpoint": Mutation(
        F, change("scaler = fabric.strategy.precision", "scaler = torch.amp.GradScaler(enabled=False)")
    ),
    "fabric: N = 1": Mutation(F, change("N = hp.accumulate_grad_batches", "N = 1")),
    "fabric: the model on the CPU": Mutation(
        F, change("fabric.setup_module(model)", "fabric.setup_module(model, move_to_device=False)"), ON_THE_CPU
    ),
    "fabric: the optimizer not set up": Mutation(F, leave("optimizer = fabric.setup_optimizers(optimizer)")),
    "fabric: no distributed samplers": Mutation(
        F,
        change(
            "fabric.setup_dataloaders(loader, val_loader)",
            "fabric.setup_dataloaders(loader, val_loader, use_distributed_sampler=False)",
        ),
        tests=DDP,
    ),
    "fabric: a resumed run starts at epoch 0": Mutation(
        F, change("start_epoch = run.start(", "start_epoch = 0 * run.start("), tests=RESUMING
    ),
    "fabric: one epoch short": Mutation(
        F, change("range(start_epoch, hp.max_epochs)", "range(start_epoch, hp.max_epochs - 1)")
    ),
    "fabric: a resumed epoch numbered from 0": Mutation(
        F, change("first = run.epoch_start(epoch)", "first = 0; run.epoch_start(epoch)"), tests=RESUMING
    ),
    "fabric: model.train() left out": Mutation(F, leave("model.train()")),
    "fabric: batches numbered from 0 after a resume": Mutation(
        F, change("enumerate(loader, first)", "enumerate(loader)"), tests=RESUMING
    ),
    "fabric: the partial window not stepped": Mutation(F, change(" or batch_idx + 1 == len(loader)", "")),
    "fabric: zero_grad at every batch": Mutation(F, change("if batch_idx % N == 0:", "if True:")),
    "fabric: zero_grad left out": Mutation(F, leave("optimizer.zero_grad()")),
    "fabric: no_backward_sync off": Mutation(
        F,
        change("enabled=not steps", "enabled=False"),
        tests=DDP,
    ),
    "fabric: forward past Fabric's wrapper": Mutation(
        F, change("logits = model(X_batch)", "logits = model.module(X_batch)")
    ),
    "fabric: the loss divided by N twice": Mutation(
        F, change("loss = criterion(logits, y_batch)", "loss = criterion(logits, y_batch) / N")
    ),
    "fabric: the loss not divided by N": Mutation(F, change("fabric.backward(loss / N)", "fabric.backward(loss)")),
    "fabric: backward past Fabric": Mutation(F, change("fabric.backward(loss / N)", "(loss / N).backward()")),
    "fabric: a step at every batch": Mutation(F, change("if steps:", "if True:")),
    "fabric: clip_gradients after the step": Mutation(
        F, move("if hp.gradient_clip_val is not None:", after="optimizer.step()")
    ),
    "fabric: clipping at the essay's 1.0": Mutation(F, change("max_norm=hp.gradient_clip_val,", "max_norm=1.0,")),
    "fabric: clipping by value": Mutation(
        F, change("max_norm=hp.gradient_clip_val,", "clip_val=hp.gradient_clip_val,")
    ),
    "fabric: clip_gradients raising on inf": Mutation(
        F, change("error_if_nonfinite=False,", "error_if_nonfinite=True,")
    ),
    "fabric: optimizer.step() past Fabric": Mutation(F, change("optimizer.step()", "optimizer.optimizer.step()")),
    "fabric: train/loss divided by N": Mutation(F, change("run.batch_end(loss,", "run.batch_end(loss / N,")),
    "fabric: scheduler.step() inside the batch loop": Mutation(F, move("scheduler.step()", after="optimizer.step()")),
    "fabric: model.eval() left out": Mutation(F, leave("model.eval()")),
    "fabric: validation with grad": Mutation(
        F, leave("with torch.no_grad():"), "no backward runs on the validation graph, and the metrics keep no grad"
    ),
    "fabric: validating on the training batches": Mutation(
        F, change("for X_val, y_val in val_loader:", "for X_val, y_val in loader:")
    ),
    "fabric: validation past Fabric's wrapper": Mutation(
        F, change("val_logits = model(X_val)", "val_logits = model.module(X_val)")
    ),
    "fabric: val_loss weight=1": Mutation(F, change("weight=len(y_val)", "weight=1")),
    "fabric: val metrics of the last batch alone": Mutation(
        F, dedent("val_metrics.update(val_logits, y_val)", levels=1)
    ),
    "fabric: the checkpoint's epoch one ahead": Mutation(
        F, change("run.epoch_end(epoch,", "run.epoch_end(epoch + 1,"), tests=RESUMING
    ),
}


def uncovered(file: str) -> list[str]:
    """The statements of `file`'s fit() that no mutation changes, by their first line's code."""
    source = (PACKAGE / file).read_text()
    code = codes(source.splitlines())
    changed = {mutation.line(source) for mutation in MUTATIONS.values() if mutation.file == file}
    return [code[first].strip() for first, last in statements(source) if not changed & set(range(first, last + 1))]


def copy_project(directory: Path) -> Path:
    """The project as it is, without its runs and caches, under `directory`."""
    return Path(shutil.copytree(ROOT, directory / ROOT.name, ignore=COPIED))


def tests_pass(project: Path, tests: tuple[str, ...], side: str = "") -> tuple[bool, str]:
    """Run `tests` in `project` (those of one side, `torch` or `fabric`, where given), in one process, to the first
    failure: whether all passed, and the first failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project / "src"), str(project)]), "COLUMNS": "300"}
    command = [sys.executable, "-m", "pytest", "-n", "0", "-x", "-q", "-p", "no:cacheprovider", "-rfE"]
    command += [f"--basetemp={project.parent / 'pytest'}", *tests, *(["-k", side] if side else [])]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    failed = [line for line in done.stdout.splitlines() if re.match(r"(FAILED|ERROR) ", line)]
    if done.returncode not in (0, 1) or (done.returncode == 1 and not failed):
        raise RuntimeError(f"pytest exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.returncode == 0, (failed[0][:200] if failed else "")


def check(mutation: Mutation, project: Path, tests: tuple[str, ...] | None = None) -> tuple[bool, str]:
    """Apply `mutation` to `project`'s copy of its file, run its tests (or `tests`), put the file back: whether a
    test failed, and which. The tests that compare a run with itself (RESUMING) run for the mutated loop alone."""
    path = PACKAGE.relative_to(ROOT) / mutation.file
    original = (project / path).read_text()
    (project / path).write_text(mutation.apply(original))
    side = ("fabric" if mutation.file == "loop_fabric.py" else "torch") if mutation.tests == RESUMING else ""
    try:
        passed, failure = tests_pass(project, tests or mutation.tests, side)
    finally:
        (project / path).write_text(original)
    return not passed, failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.mutations", description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="Only the mutations whose name holds this text.")
    parser.add_argument("--list", action="store_true", help="List the mutations and stop.")
    args = parser.parse_args(argv)
    chosen = {name: mutation for name, mutation in MUTATIONS.items() if args.k in name}
    if args.list:
        for name, mutation in chosen.items():
            print(f"{name}" + (f"  (equivalent: {mutation.equivalent})" if mutation.equivalent else ""))
        return 0
    started, caught_by = time.monotonic(), []  # the kind of failure each caught mutation made
    equivalent = 0
    wrong = [f"no mutation: {file} {code!r}" for file in ("loop.py", "loop_fabric.py") for code in uncovered(file)]
    with tempfile.TemporaryDirectory() as directory:
        project = copy_project(Path(directory))
        tests = tuple(dict.fromkeys(test for mutation in chosen.values() for test in mutation.tests))
        passed, failure = tests_pass(project, tests)  # as the project is: all must pass
        if not passed:
            print(f"the tests fail on the project as it is: {failure}")
            return 1
        for name, mutation in chosen.items():
            try:
                caught, failure = check(mutation, project)
            except LookupError as error:
                wrong.append(name)
                print(f"STALE     {name}: {error}", flush=True)
                continue
            if caught and not mutation.equivalent:
                caught_by.append("assertion" if re.search(r" - (AssertionError|assert )", failure) else "error")
                print(f"caught    {name}: {failure}", flush=True)
            elif not caught and mutation.equivalent:
                equivalent += 1
                print(f"survived  {name} (equivalent: {mutation.equivalent})", flush=True)
            else:
                wrong.append(name)
                said = f"caught, though listed as equivalent: {failure}" if caught else "survived: a gap in the tests"
                print(f"WRONG     {name}: {said}", flush=True)
    minutes = (time.monotonic() - started) / 60
    print(
        f"{len(chosen)} mutations tried in {minutes:.1f} minutes: {len(caught_by)} caught "
        f"({caught_by.count('assertion')} by an assertion, {caught_by.count('error')} by an error), {equivalent} "
        f"equivalent and surviving; {len(wrong)} wrong" + (": " + "; ".join(wrong) if wrong else "")
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
