"""The essay's training loop in plain PyTorch, line for line beside the Lightning code in module.py.

    python train_torch.py                # runs fit() on configs/default.yaml, logs to logs/torch/version_N

    python train_torch.py --ckpt_path last  # goes on with the newest logs/torch/version_N/checkpoints/last.pt

    torchrun --standalone --nproc_per_node 2 train_torch.py   # DDP: two processes, as Trainer(strategy="ddp")

The comment on each line names the Lightning hook or Trainer argument that does its work.
"""

from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from tqdm import trange

from {{ cookiecutter.package_name }}.boundary import TAG, BoundaryAnimation
from {{ cookiecutter.package_name }}.checkpoints import (
    NonFiniteLossError,
    StoppedBySignal,
    StopRequest,
    atomic_save,
    rng_state,
    set_rng_state,
)
from {{ cookiecutter.package_name }}.data import SpiralDataModule, distributed, with_sampler
from {{ cookiecutter.package_name }}.model import MLP


def fit(
    data: SpiralDataModule,
    *,
    seed: int,
    hidden: int,
    dropout: float,
    lr: float,
    max_epochs: int,
    gradient_clip_val: float | None,
    writer,
    device: torch.device | str = "cpu",
    progress_bar: bool = True,
    boundary: BoundaryAnimation | None = None,
    checkpoint: Path | None = None,
    resume: dict | None = None,
    stop: StopRequest | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Train an MLP on `data`; `writer.add_scalar` receives the same tags and steps as Lightning logs.

    `checkpoint` is written at the end of every epoch; `resume`, a checkpoint read back, goes on from its end.
    When `stop` notes a signal, the loop writes `checkpoint` after the batch, mid-epoch too, and raises StoppedBySignal.
    """
    torch.manual_seed(seed)  # seed_everything (LightningCLI: seed_everything)
    classes = data.hparams.classes

    # --- data ---
    data.setup("fit")  # LightningDataModule.setup
    loader = data.train_dataloader()  # LightningDataModule.train_dataloader
    val_loader = data.val_dataloader()  # LightningDataModule.val_dataloader

    # --- model, loss, optimiser ---
    model = MLP(in_features=2, hidden=hidden, out_features=classes, dropout=dropout)  # LightningModule.__init__
    model.to(device)  # Trainer(accelerator=...), before configure_optimizers
    criterion = nn.CrossEntropyLoss()  # LightningModule.__init__
    val_loss = MeanMetric().to(device)  # LightningModule.__init__
    val_acc = MulticlassAccuracy(classes, average="micro").to(device)  # LightningModule.__init__
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)  # configure_optimizers
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max_epochs)  # configure_optimizers

    # --- DDP: one of several processes, launched by torchrun (train_torch.py) ---
    train_model = model  # what training_step runs: the model, under DDP its wrapper
    if distributed():  # Trainer(strategy="ddp")
        torch.manual_seed(seed)  # setup_distributed: reset_seed() seeds each process again, after the model is made
        train_model = DistributedDataParallel(model)  # wraps the LightningModule: backward averages the gradients
        # use_distributed_sampler=True: both DataLoaders made anew, each process with its share of the points
        loader = with_sampler(loader, DistributedSampler(loader.dataset, shuffle=True, seed=seed))
        val_loader = with_sampler(val_loader, DistributedSampler(val_loader.dataset, shuffle=False, seed=seed))

    def save(epoch_to_go_on_in: int) -> None:  # ModelCheckpoint / GracefulStop -> Trainer.save_checkpoint
        atomic_save(  # through AtomicCheckpointIO (checkpoints.py)
            {
                "epoch": epoch_to_go_on_in,  # "epoch", "loops": where the fit loop goes on
                "step": step,  # "global_step"
                "model": model.state_dict(),  # "state_dict"
                "optimiser": optimiser.state_dict(),  # "optimizer_states"
                "scheduler": scheduler.state_dict(),  # "lr_schedulers"
                "data": data.state_dict(),  # LightningDataModule.state_dict
                "loader": loader.state_dict(),  # the fit loop's "combined_loader": the epoch's order and position
                "rng": rng_state(),  # LightningModule.on_save_checkpoint (module.py)
                "hparams": {  # "hyper_parameters", "datamodule_hyper_parameters"
                    "model": {"hidden": hidden, "dropout": dropout, "lr": lr, "classes": classes},
                    "data": dict(data.hparams),
                },
            },
            checkpoint,
        )
        writer.flush()  # GracefulStop.on_save_checkpoint: a killed run's curve has no gap up to its checkpoint

    # --- resume ---
    start_epoch, step, mid_epoch = 0, 0, False
    if resume is not None:  # Trainer.fit(ckpt_path=...), before training starts
        model.load_state_dict(resume["model"])  # the checkpoint's "state_dict"
        optimiser.load_state_dict(resume["optimiser"])  # its "optimizer_states"
        scheduler.load_state_dict(resume["scheduler"])  # its "lr_schedulers"
        data.load_state_dict(resume["data"])  # LightningDataModule.load_state_dict
        loader.load_state_dict(resume["loader"])  # the fit loop hands a stateful DataLoader its state
        set_rng_state(resume["rng"])  # LightningModule.on_load_checkpoint (module.py)
        start_epoch, step = resume["epoch"], resume["step"]  # the fit loop's progress
        mid_epoch = not resume["loader"]["epoch_done"]  # stopped by a signal within start_epoch

    # --- loop ---
    for epoch in trange(max_epochs, desc="fit", unit="epoch", disable=not progress_bar):  # Trainer(max_epochs=...)
        if epoch < start_epoch:  # resuming: the fit loop starts at the checkpoint's epoch
            continue
        if isinstance(loader.sampler, DistributedSampler):  # the fit loop, at each epoch's start
            loader.sampler.set_epoch(epoch)
        if not mid_epoch:  # the interrupted run logged it; resuming mid-epoch, Lightning skips on_train_epoch_start
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)  # LearningRateMonitor
        mid_epoch = False
        model.train()  # the Trainer restores it after each validation (on_validation_model_train)
        for X_batch, y_batch in loader:
            X_batch, y_batch = X_batch.to(device), y_batch.to(device)  # transfer_batch_to_device
            optimiser.zero_grad()  # optimizer_zero_grad
            logits = train_model(X_batch)  # training_step
            loss = criterion(logits, y_batch)  # training_step
            loss.backward()  # backward
            if gradient_clip_val is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), gradient_clip_val)  # configure_gradient_clipping
            optimiser.step()  # optimizer_step
            if not torch.isfinite(loss):  # StopOnNonFiniteLoss callback, on_train_batch_end
                raise NonFiniteLossError("train/loss", loss.item(), step, epoch)
            writer.add_scalar("train/loss", loss.item(), step)  # training_step: self.log("train/loss", loss)
            step += 1
            if stop is not None and stop.signal and loader.batches < len(loader):  # GracefulStop, on_train_batch_end
                if checkpoint is not None:
                    save(epoch)  # mid-epoch: the resumed run goes on with this epoch's next batch
                raise StoppedBySignal(stop.signal, step, epoch)
        scheduler.step()  # lr_scheduler_step (interval "epoch")

        model.eval()  # the Trainer, before validation
        with torch.no_grad():  # the Trainer, around validation
            for X_val, y_val in val_loader:
                X_val, y_val = X_val.to(device), y_val.to(device)  # transfer_batch_to_device
                val_logits = model(X_val)  # validation_step
                val_loss.update(criterion(val_logits, y_val), weight=len(y_val))  # validation_step
                val_acc.update(val_logits, y_val)  # validation_step
        # Lightning logs epoch metrics at the step of the epoch's last optimizer step.
        writer.add_scalar("val/loss", val_loss.compute().item(), step - 1)  # self.log("val/loss", ...)
        writer.add_scalar("val/acc", val_acc.compute().item(), step - 1)  # self.log("val/acc", ...)
        if not torch.isfinite(val_loss.compute()):  # StopOnNonFiniteLoss callback, on_validation_end
            raise NonFiniteLossError("val/loss", val_loss.compute().item(), step - 1, epoch)
        if boundary is not None and boundary.wants(epoch):  # DecisionBoundary callback, on_validation_end
            image = boundary.frame(model, *data.val_set.tensors, epoch, val_acc.compute().item())
            writer.add_image(TAG, image, step - 1, dataformats="HWC")
        val_loss.reset()  # the Trainer, at the end of each validation epoch
        val_acc.reset()  # the Trainer, at the end of each validation epoch
        if checkpoint is not None:  # ModelCheckpoint(save_last=True), on_train_epoch_end
            save(epoch + 1)
        if stop is not None and stop.signal:  # GracefulStop, on_train_epoch_end
            raise StoppedBySignal(stop.signal, step, epoch)
    return model, optimiser, scheduler
