"""The decision-boundary animation: the same pixels from the three loops, and no effect on training."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import TensorDataset

from {{ cookiecutter.package_name }}.boundary import PALETTE, TAG, BoundaryAnimation
from {{ cookiecutter.package_name }}.data import make_spiral
from {{ cookiecutter.package_name }}.model import MLP

from conftest import DROPOUT, QUIET, SMALL, fit, run

SIDES = ("lightning", "torch", "fabric")


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]


def image_steps(run_dir) -> list[int]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return [event.step for event in events.Images(TAG)]


def test_entry_points_write_pixel_identical_gifs_and_image_tags(tmp_path):
    for script, args in (("train.py", ["fit"]), ("train_torch.py", []), ("train_fabric.py", [])):
        result = run(script, *args, "--trainer.max_epochs=5", *QUIET, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "decision_boundary.gif" in result.stdout
    lightning, plain, fabric = (tmp_path / "logs" / side / "version_0" for side in SIDES)
    plain_frames = gif_frames(plain / "decision_boundary.gif")
    assert len(plain_frames) == 5
    for other in (lightning, fabric):
        frames = gif_frames(other / "decision_boundary.gif")
        assert len(frames) == 5 and all(np.array_equal(a, b) for a, b in zip(frames, plain_frames, strict=True))
        assert image_steps(other) == image_steps(plain)
    assert not np.array_equal(plain_frames[0], plain_frames[-1])  # the boundary moves
    assert image_steps(plain) == [29 * epoch - 1 for epoch in range(1, 6)]


@pytest.mark.parametrize("side", SIDES)
def test_switching_the_animation_off_changes_no_loss(side, tmp_path, written):
    """With dropout on, a stray draw from the global RNG or a wrong train/eval mode would show in the losses."""
    for every in (1, 0):
        args = [*QUIET, f"--trainer.logger.init_args.save_dir={tmp_path / str(every)}", *SMALL]
        fit(side, [*args, DROPOUT, f"--boundary.every_n_epochs={every}"])
    on, off = (tmp_path / str(every) / side / "version_0" for every in (1, 0))
    assert (on / "decision_boundary.gif").exists() and not (off / "decision_boundary.gif").exists()
    losses = torch.tensor([value for _, value in written[side]["train/loss"]])
    assert len(losses) == 2 * 3 * 6  # two runs of 3 epochs of 6 batches
    assert torch.equal(losses[:18], losses[18:])


def test_a_frame_leaves_mode_rng_and_weights_alone():
    torch.manual_seed(0)
    model = MLP(dropout=0.5).train()
    X, y = make_spiral(50, 3, 0.2, torch.Generator().manual_seed(0))
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng = torch.get_rng_state()
    image = BoundaryAnimation(resolution=16, scale=2).frame(model, TensorDataset(X, y), epoch=0, val_loss=0.5)
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    assert image.shape[1:] == (32, 3) and image.dtype == np.uint8


def test_every_n_epochs():
    animation = BoundaryAnimation(every_n_epochs=3)
    assert [epoch for epoch in range(10) if animation.wants(epoch)] == [2, 5, 8]
    assert not any(BoundaryAnimation(every_n_epochs=0).wants(epoch) for epoch in range(10))


# --- data the picture must draw, or say in one line why not, before training ---


@pytest.mark.parametrize("points", [[[0.5, 0.1], [0.5, 0.3]], [[0.2, 0.4], [0.6, 0.4]], [[0.5, 0.5]]])
def test_points_on_a_line_or_one_point_are_drawn(points):
    """A span of zero in x or y (one point, or points sharing a coordinate) is drawn, one unit wide around it."""
    X, y = torch.tensor(points), torch.arange(len(points))
    image = BoundaryAnimation(resolution=8, scale=2).frame(MLP(2, 4, 3), TensorDataset(X, y), epoch=0, val_loss=0.5)
    assert image.shape == (18 + 16, 16, 3)  # the title, then 8 grid points 2 pixels each
    for label in y:  # each point's dot, in a dark shade of its class's colour
        dark = (PALETTE[label] * 0.55).round().to(torch.uint8).numpy()
        assert np.all(image == dark, axis=-1).sum() == 4


@pytest.mark.parametrize("side", SIDES)
def test_one_point_per_class_trains_and_is_drawn(side, tmp_path):
    """Its validation points share their coordinates: the picture is drawn, one unit wide."""
    flags = ["--trainer.max_epochs=2", "--data.dataset.points_per_class=1"]
    fit(side, [*QUIET, *flags, f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert (tmp_path / side / "version_0" / "decision_boundary.gif").is_file()


@pytest.mark.parametrize("script, args", [("train.py", ["fit"]), ("train_torch.py", []), ("train_fabric.py", [])])
def test_more_classes_than_colours_switch_the_animation_off_in_one_line(script, args, tmp_path):
    """More than its seven colours: the animation is off, said in one line before training; the run trains."""
    flags = ["--trainer.max_epochs=2", "--data.dataset.points_per_class=30", "--data.dataset.classes=9"]
    flags += ["--model.classes=9", "--model.net.out_features=9"]
    result = run(script, *args, *QUIET, *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    off = "decision boundary: off, 9 classes are more than the 7 colours it tells apart"
    assert result.stderr.splitlines().count(off) == 1, result.stderr
    assert not list((tmp_path / "logs").glob("*/version_0/decision_boundary.gif"))
