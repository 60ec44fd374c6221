"""The plain loop of loop.py with Lightning Fabric doing what it takes over, line for line.

    python train_fabric.py       # fit() on configs/default.yaml, logs to logs/fabric/version_N

The loop stays yours: every line is loop.py's but those marked `Fabric:`, which name the line of
loop.py they replace. Fabric takes over the device, DDP, mixed precision and the backward;
train_fabric.py sets Fabric(precision=..., strategy=...). The lines of loop.py with none here are
done inside Fabric's calls: `model.to(device)` and the batches' `.to(device)` in the setup calls,
autocast in the model's forward, the GradScaler's unscale_ and update in clip_gradients and the
optimizer's step. `run` does what the Trainer does around the loop, as in loop.py, with Fabric's
logger and fabric.save and fabric.load (machinery/fabric_run.py). docs/side_by_side.md shows the
three loops row by row.
"""

import torch
from lightning.fabric import Fabric
from torch import nn
from torchmetrics import MeanMetric

from {{ cookiecutter.package_name }}.data import SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.fabric_run import FabricRun
from {{ cookiecutter.package_name }}.metrics import metrics


def fit(data: SpiralDataModule, hp, fabric: Fabric, run: FabricRun):
    """Train `hp.net()` on `data` with `hp` (loop.fit's) and `fabric`; return the model,
    optimizer and scheduler, as Fabric wraps them."""
    fabric.seed_everything(hp.seed)  # Fabric: torch.manual_seed(hp.seed); seed_everything
    device = fabric.device  # Fabric: run.device; Trainer(accelerator=...)

    # --- data ---
    data.setup("fit")  # LightningDataModule.setup
    loader = data.train_dataloader()  # LightningDataModule.train_dataloader
    val_loader = data.val_dataloader()  # LightningDataModule.val_dataloader

    # --- model, loss, metrics: LightningModule.__init__ ---
    model = hp.net()  # the network the config's model.net names: the MLP, or yours
    model = fabric.setup_module(model)  # Fabric: model.to(device), shard(...) (fsdp2), the DDP wrap
    criterion = nn.CrossEntropyLoss()
    val_loss = MeanMetric(nan_strategy=float("nan")).to(device)  # weighted by batch size; NaN stays
    val_metrics = metrics(hp.classes, "val/").to(device)  # metrics.py: val/acc, and yours

    # --- optimizer, scheduler: configure_optimizers ---
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.max_epochs)

    # --- precision, accumulation: Fabric(precision=...); Trainer(accumulate_grad_batches=N) ---
    scaler = fabric.strategy.precision  # Fabric: the GradScaler, in its precision plugin (16-mixed)
    N = hp.accumulate_grad_batches  # Trainer(accumulate_grad_batches=N)

    # --- before the first batch: Fabric(strategy="ddp"), Trainer.fit(ckpt_path=...) ---
    optimizer = fabric.setup_optimizers(optimizer)  # Fabric: its steps in its precision plugin
    loader, val_loader = fabric.setup_dataloaders(loader, val_loader)  # Fabric: DistributedSamplers
    start_epoch = run.start(model, optimizer, scheduler, scaler, data, loader)

    # --- loop ---
    for epoch in run.progress(range(start_epoch, hp.max_epochs)):  # Trainer(max_epochs=...)
        first = run.epoch_start(epoch)  # the fit loop: LearningRateMonitor
        model.train()  # the Trainer, after each validation (on_validation_model_train)
        for batch_idx, (X_batch, y_batch) in enumerate(loader, first):  # on the device: Fabric
            # A window of N batches, or the epoch's rest, ends in one step: _should_accumulate
            steps = (batch_idx + 1) % N == 0 or batch_idx + 1 == len(loader)
            if batch_idx % N == 0:  # a window's first batch
                optimizer.zero_grad()  # optimizer_zero_grad
            with fabric.no_backward_sync(model, enabled=not steps):  # Fabric: run.no_sync(...)
                logits = model(X_batch)  # training_step; in autocast: Fabric
                loss = criterion(logits, y_batch)  # training_step
                fabric.backward(loss / N)  # Fabric: scaler.scale(loss / N).backward(); backward
            if steps:  # the fit loop: optimizer_step at a window's end
                if hp.gradient_clip_val is not None:  # configure_gradient_clipping
                    fabric.clip_gradients(  # Fabric: scaler.unscale_, clip_grad_norm_
                        model,
                        optimizer,
                        max_norm=hp.gradient_clip_val,
                        error_if_nonfinite=False,  # as the Trainer: fp16's scaler skips such a step
                    )
                optimizer.step()  # Fabric: scaler.step(optimizer), scaler.update(); optimizer_step
            run.batch_end(loss, epoch, steps)  # self.log("train/loss", loss); on_train_batch_end
        scheduler.step()  # lr_scheduler_step (interval "epoch")

        model.eval()  # the Trainer, before validation
        with torch.no_grad():  # the Trainer, around validation
            for X_val, y_val in val_loader:  # on the device: Fabric
                val_logits = model(X_val)  # validation_step; in autocast: Fabric
                val_loss.update(criterion(val_logits, y_val), weight=len(y_val))
                val_metrics.update(val_logits, y_val)  # validation_step
        run.epoch_end(epoch, val_loss, val_metrics)  # self.log("val/..."), callbacks, checkpoint
    return model, optimizer, scheduler
