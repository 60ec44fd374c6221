"""Checkpoints that survive a kill, carry what decides the run's future, and are refused by name.

    python train.py fit --ckpt_path last        # go on with the newest logs/lightning/version_N/checkpoints/last.ckpt
    python train_torch.py --ckpt_path last      # the same for the plain loop: logs/torch/version_N/checkpoints/last.pt

- `atomic_save` (the plain loop) and `AtomicCheckpointIO` (Lightning's plugin point) write a checkpoint to a
  temporary file beside it, sync it to disk and rename it over the old one: a kill at any moment leaves the old
  checkpoint or the new one, never a torn file.
- `rng_state` / `set_rng_state`: torch's global random state, which dropout draws from; the three loops checkpoint it
  (Lightning through `ExactResume`, which the LightningModule inherits).
- `adopt_checkpoint`: the entry points' `--ckpt_path`: a missing, unreadable or foreign checkpoint, or one trained
  with other settings than the run asks for, is refused in one line; otherwise the run takes its settings.
"""

import inspect
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from jsonargparse import Namespace
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names it and says why."""


# --- writing ---


def atomic_save(checkpoint: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temporary file in `path`'s directory, fsync, then os.replace it over `path`.

    A rename within one file system is atomic, so a reader (or a kill at any moment) finds the old file or the new
    one. Lightning's default TorchCheckpointIO moves fsspec's temporary file from the system's temp directory,
    which is a copy when that is another file system, and never syncs it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_torn_writes(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # left only when torch.save or the rename failed
    if os.name == "posix":  # the rename itself reaches the disk with the directory
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def remove_torn_writes(path: Path) -> None:
    """Delete what a writer of `path` killed mid-write left: `.<name>.<pid>.tmp` of a process that is gone."""
    for torn in path.parent.glob(f".{path.name}.*.tmp"):
        pid = torn.name.removeprefix(f".{path.name}.").removesuffix(".tmp")
        if pid.isdigit() and not process_exists(int(pid)):
            torn.unlink(missing_ok=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, another user's
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with `atomic_save` for local paths (configs/default.yaml: trainer.plugins)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)


# --- what decides the future besides the weights ---


def rng_state() -> dict[str, Any]:
    """torch's global random state, where dropout draws its masks: the CPU's and, once CUDA is in use, each GPU's."""
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume:
    """What a LightningModule needs so that a resumed fit goes on exactly: the random state, and a refusal by name.

    `class SpiralClassifier(ExactResume, L.LightningModule)`: the hooks below, kept out of module.py's loop lines.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout draws from torch's global RNG: a resumed run needs its state to draw the same masks.
        checkpoint["rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before the weights are loaded: a checkpoint of another shape is refused by name, not by a traceback. (FSDP2's
        # ModelParallelStrategy has loaded them already, and taken them out; train.py checked their shapes first.)
        if "state_dict" in checkpoint:
            check_shapes(checkpoint["state_dict"], self.state_dict(), "the checkpoint")
        # Resuming a fit, not load_from_checkpoint() or a test: go on with the interrupted run's random numbers.
        if self._trainer is not None and self.trainer.state.fn == "fit" and "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])


# --- reading ---


def newest(root: Path, filename: str) -> Path:
    """What `--ckpt_path last` resumes: the checkpoint of the newest run, root/version_N with the highest N.

    A newest run without one (killed before its first epoch ended) is refused, not passed over for an older run."""
    runs = [run for run in root.glob("version_*") if run.name.removeprefix("version_").isdigit()]
    if not runs:
        raise CheckpointError(f"--ckpt_path last: there is no {root / 'version_*' / 'checkpoints' / filename}")
    run = max(runs, key=lambda run: int(run.name.removeprefix("version_")))
    if not (run / "checkpoints" / filename).is_file():
        raise CheckpointError(
            f"--ckpt_path last: the newest run, {run}, stopped before its first checkpoint; start it again without"
            " --ckpt_path, or name another run's checkpoint"
        )
    return run / "checkpoints" / filename


def run_directory(checkpoint: Path, root: Path) -> Path | None:
    """root/version_N when the checkpoint is root/version_N/checkpoints/<file>: the run it continues, else None."""
    if checkpoint.parent.name == "checkpoints" and checkpoint.resolve().parents[2] == root.resolve():
        return checkpoint.parent.parent
    return None


def read_checkpoint(path: Path, keys: tuple[str, ...], kind: str) -> dict[str, Any]:
    """The checkpoint at `path`, or CheckpointError saying in one line why it cannot be one of `kind`."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:  # torch.save writes a zip archive with a CRC-32 of each record, which torch.load does not check
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError):
        damaged = None  # not a whole zip archive: torch.load says what it is
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupt, its record {damaged} fails its CRC-32 check")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt? ({reason})") from None
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in keys):
        raise CheckpointError(f"{path}: not a checkpoint of {kind}")
    return checkpoint


# Settings a checkpoint does not decide: how the data is loaded.
NOT_ADOPTED = {"model": (), "data": ("num_workers", "pin_memory"), "trainer": ()}


def adopt_checkpoint(
    config,
    defaults,
    root: Path,
    read: tuple[str, tuple[str, ...], str],
    settings: Callable[[dict[str, Any]], dict[str, dict[str, Any]]],
    given_wins: tuple[str, ...] = (),
) -> tuple[dict[str, Any] | None, Path | None]:
    """`--ckpt_path` for the three entry points: the checkpoint, and the run directory under `root` it continues.

    `last` becomes the newest `root/version_*/checkpoints/<file>`, and so does `last-if-any` where there is one (a
    job that the cluster starts again runs the same command); else it becomes None, a new run, and so do the
    returned checkpoint and run directory. `read` is (file name, keys it must hold, what it is) and
    `settings(checkpoint)` the model, data and trainer settings it was trained with. A setting still at its
    default (configs/default.yaml) takes the checkpoint's value, as LightningCLI does for the model's; one set to
    something else by a flag or a config file contradicts the checkpoint, and the checkpoint is refused by name, but
    in the sections of `given_wins` (an evaluation's data: a checkpoint may be tested on other data).
    """
    filename, keys, kind = read
    if config.ckpt_path in ("last", "last-if-any"):
        try:
            config.ckpt_path = str(newest(root, filename))
        except CheckpointError:
            if config.ckpt_path == "last":
                raise
            config.ckpt_path = None  # a job's first start, or one killed before its first checkpoint: a new run
            return None, None
    path = Path(config.ckpt_path)
    checkpoint = read_checkpoint(path, keys, kind)
    conflicts = []
    for section, saved in settings(checkpoint).items():
        for key, value in saved.items():
            if key.startswith("_") or key in NOT_ADOPTED[section] or key not in config[section]:
                continue
            current, default = (plain(settings[section][key]) for settings in (config, defaults))
            if current == value:
                continue
            if current != default and section not in given_wins:
                conflicts += [
                    f"{name}={now!r} (the checkpoint's: {was!r})"
                    for name, now, was in differing(f"{section}.{key}", current, value)
                ]
            elif current == default:  # a network or dataset, {class_path, init_args}, as the parser holds it
                config[section][key] = as_parsed(value)
    run = run_directory(path, root)
    if conflicts:
        config_file = run / "config.yaml" if run is not None else None
        own = f"; --config {config_file} gives the run's own" if config_file and config_file.is_file() else ""
        raise CheckpointError(f"{path} was trained with other settings: {', '.join(conflicts)}{own}")
    return checkpoint, run


def plain(value: Any) -> Any:
    """A setting as a checkpoint keeps it: a network's or dataset's Namespace as a dict, a function (data.augment)
    as its import path."""
    if inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value.as_dict() if isinstance(value, Namespace) else value


def differing(name: str, current: Any, saved: Any) -> list[tuple[str, Any, Any]]:
    """(name, current, saved) of each setting that differs, into a network's or dataset's init_args:
    model.net.hidden, not all of model.net."""
    paths = [value.get("class_path") if isinstance(value, dict) else value for value in (current, saved)]
    if not isinstance(current, dict) or paths[0] != paths[1]:
        return [] if current == saved else [(name, current, saved)]
    now, was = current.get("init_args", {}), saved.get("init_args", {})
    return [found for key in {**was, **now} for found in differing(f"{name}.{key}", now.get(key), was.get(key))]


def as_parsed(value: Any) -> Any:
    """A setting read back from a checkpoint as the parser holds it: a dict as a Namespace."""
    if isinstance(value, dict):
        return Namespace(**{key: as_parsed(item) for key, item in value.items()})
    return value


def check_shapes(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], checkpoint: str) -> None:
    """CheckpointError naming the first parameters whose shapes in `saved` are not those of `expected`."""
    if differences := shape_differences(saved, expected):
        raise CheckpointError(f"{checkpoint} holds a model of another shape: {', '.join(differences[:3])}")


def shape_differences(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """The parameters whose shapes differ between a checkpoint's state_dict and a model's."""
    return [
        f"{name} {tuple(tensor.shape)} (this model's: {tuple(expected[name].shape)})"
        for name, tensor in saved.items()
        if name in expected and tensor.shape != expected[name].shape
    ] + [f"{name} (missing)" for name in expected if name not in saved]
