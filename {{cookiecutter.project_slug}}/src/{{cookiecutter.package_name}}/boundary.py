"""The decision-boundary animation: the model's softmax confidence over the plane, one frame per epoch.

The three loops draw it the same way: `python train.py fit` through the DecisionBoundary callback, `python
train_torch.py` and `python train_fabric.py` through their run's `epoch_end` (a BoundaryAnimation). Each writes the
image tag `val/decision_boundary` to TensorBoard and `decision_boundary.gif` into its run directory. The `boundary:`
section of configs/default.yaml sets all three (every_n_epochs: 0 switches it off).
"""

import functools
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt, PositiveInt
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import Dataset

from {{ cookiecutter.package_name }}.machinery.loaders import drawing_from, stacked

# Okabe-Ito colours, distinguishable with the common colour-vision deficiencies.
PALETTE = torch.tensor(
    [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0), (240, 228, 66)],
    dtype=torch.float32,
)
WHITE = torch.ones(3) * 255
TITLE_HEIGHT = 18
TAG = "val/decision_boundary"


@torch.no_grad()
def render(model: nn.Module, X: Tensor, y: Tensor, resolution: int, scale: int, title: str) -> Image.Image:
    """The predicted class of every pixel, paler where the model is less sure, with the points (X, y) on top.

    The model sees a `resolution` x `resolution` grid; its probabilities are upsampled `scale` times, which
    costs far less than evaluating the model at every pixel and draws the same smooth regions.
    """
    device = next(model.parameters()).device
    low, high = X.min(dim=0).values, X.max(dim=0).values
    margin = torch.where(high > low, 0.1 * (high - low), 0.5)  # points on a line: a view one unit wide around it
    low, high = low - margin, high + margin
    xs = torch.linspace(low[0].item(), high[0].item(), resolution)
    ys = torch.linspace(high[1].item(), low[1].item(), resolution)  # image rows run top to bottom
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # (resolution², 2)
    probabilities = model(grid.to(device)).softmax(dim=1).cpu()  # (resolution², classes)
    probabilities = probabilities.T.reshape(1, -1, resolution, resolution)
    size = resolution * scale
    probabilities = F.interpolate(probabilities, size=(size, size), mode="bilinear", align_corners=True)[0]
    confidence, predicted = probabilities.max(dim=0)  # (size, size) each
    chance = 1 / probabilities.shape[0]
    strength = 0.15 + 0.6 * (confidence - chance) / (1 - chance)  # pale at chance, strong when certain
    pixels = WHITE + (PALETTE[predicted] - WHITE) * strength[..., None]  # (size, size, 3)

    # Each point: a 2x2 dot in a dark shade of its true class's colour.
    columns = ((X[:, 0] - low[0]) / (high[0] - low[0]) * (size - 2)).round().long()
    rows = ((high[1] - X[:, 1]) / (high[1] - low[1]) * (size - 2)).round().long()
    for dr in (0, 1):
        for dc in (0, 1):
            pixels[rows + dr, columns + dc] = PALETTE[y] * 0.55

    image = Image.new("RGB", (size, size + TITLE_HEIGHT), "white")
    image.paste(Image.fromarray(pixels.round().to(torch.uint8).numpy()), (0, TITLE_HEIGHT))
    ImageDraw.Draw(image).text((4, 2), title, fill=(40, 40, 40), font=font())
    return image


@functools.cache
def font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=12)


@functools.cache
def gif_palette() -> Image.Image:
    """The colours render() draws, in 256 entries: frames map onto it without costly per-frame quantizing."""
    classes, greys = len(PALETTE), 8
    strengths = torch.linspace(0.15, 0.75, (256 - classes - greys) // classes)
    shades = WHITE + (PALETTE[:, None] - WHITE) * strengths[:, None]  # (classes, levels, 3)
    grey = torch.linspace(40, 255, greys)[:, None].expand(greys, 3)
    colours = torch.cat([shades.reshape(-1, 3), PALETTE * 0.55, grey]).round().to(torch.uint8)
    palette = Image.new("P", (1, 1))
    palette.putpalette(colours.flatten().tolist())
    return palette


class BoundaryAnimation:
    """Collects frames every `every_n_epochs` epochs and writes them as a GIF."""

    def __init__(
        self,
        every_n_epochs: NonNegativeInt = 1,
        resolution: PositiveInt = 48,
        scale: PositiveInt = 4,
        frame_ms: PositiveInt = 80,
    ):
        """
        Args:
            every_n_epochs: Draw a frame after every n-th validation; 0 switches the animation off.
            resolution: Points per side of the grid the model is evaluated on; the cost grows with its square.
            scale: Pixels per grid point in the image.
            frame_ms: How long the GIF shows each frame.
        """
        super().__init__()
        self.every_n_epochs, self.resolution, self.scale, self.frame_ms = every_n_epochs, resolution, scale, frame_ms
        self.frames: list[Image.Image] = []

    def switch_off_if_undrawable(self, dataset: Dataset, say: bool = True) -> None:
        """Before training: for inputs other than points of 2 features, or more classes than colours, the
        animation is off, said in one line (`say`: by this process)."""
        if not self.every_n_epochs:
            return
        with drawing_from(0):  # a dataset that draws in __getitem__ leaves the run's random numbers alone
            shape = tuple(dataset[0][0].shape)
        if shape != (2,):
            reason = f"the inputs are of shape {shape}, and it draws the plane of points of 2 features"
        elif (classes := int(stacked(dataset)[1].max()) + 1) > len(PALETTE):
            reason = f"{classes} classes are more than the {len(PALETTE)} colours it tells apart"
        else:
            return
        if say:
            print(f"decision boundary: off, {reason}", file=sys.stderr)
        self.every_n_epochs = 0

    def wants(self, epoch: int) -> bool:
        """Whether to draw after `epoch` (counted from 0)."""
        return self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0

    def frame(self, model: nn.Module, points: Dataset, epoch: int, val_loss: float) -> np.ndarray:
        """Draw the model as it is now over `points`, leaving its train/eval mode and every RNG as they were;
        (H, W, 3) uint8."""
        was_training = model.training
        model.eval()
        X, y = stacked(points)
        image = render(model, X, y, self.resolution, self.scale, f"epoch {epoch + 1}   val loss {val_loss:.3f}")
        model.train(was_training)
        self.frames.append(image.quantize(palette=gif_palette(), dither=Image.Dither.NONE))
        return np.asarray(self.frames[-1].convert("RGB"))

    def draw(self, model: nn.Module, points: Dataset, epoch: int, val_loss: float, writer, step: int) -> None:
        """A frame, kept for the GIF and, with a `writer` (a SummaryWriter), logged as TAG at `step`: the step of
        the epoch's last optimizer step, where val/loss is logged too."""
        image = self.frame(model, points, epoch, val_loss)
        if writer is not None:
            writer.add_image(TAG, image, step, dataformats="HWC")

    def save(self, path: Path) -> Path | None:
        if not self.frames:
            return None
        self.frames[0].save(path, save_all=True, append_images=self.frames[1:], duration=self.frame_ms, loop=0)
        return path


class DecisionBoundary(BoundaryAnimation, L.Callback):
    """The animation for `python train.py fit`: a frame after each validation, the GIF when fit ends."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # the DataModule is set up by now
            self.switch_off_if_undrawable(trainer.datamodule.val_set, say=trainer.is_global_zero)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not self.wants(trainer.current_epoch):
            return
        if not trainer.is_global_zero and not isinstance(pl_module.net, FSDPModule):  # DDP: rank 0 draws alone
            return  # (a model FSDP2 shards computes its forward in every process together)
        val_loss = trainer.callback_metrics["val/loss"].item()
        writer = trainer.logger.experiment if trainer.logger is not None else None
        points, epoch = trainer.datamodule.val_set, trainer.current_epoch
        self.draw(pl_module.net, points, epoch, val_loss, writer, trainer.global_step - 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # under DDP, every process asks rank 0
        if log_dir is None:  # no logger (fast_dev_run too): no run directory for the GIF
            return
        path = Path(log_dir) / "decision_boundary.gif"
        if trainer.is_global_zero and self.save(path):
            print(f"decision boundary: {path}")
