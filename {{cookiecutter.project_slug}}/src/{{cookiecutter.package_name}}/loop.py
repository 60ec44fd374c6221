"""The essay's training loop in plain PyTorch, line for line beside the Lightning code in module.py.

    python train_torch.py        # fit() on configs/default.yaml, logs to logs/torch/version_N

Each line's comment names the Lightning hook or Trainer argument that does its work; where a line
is not the essay's, the comment above it shows the essay's, `# essay: loss.backward()`, and why
(hookmap.py makes the tables of docs/side_by_side.md from these lines and comments). With the
defaults (32-bit, accumulate_grad_batches=1) the precision and accumulation lines change no number:
autocast and the GradScaler are off, N is 1, and every batch ends in a step. `run` does
what the Trainer does around the loop: DDP, resuming, logging, checkpoints and stops
(machinery/plain_run.py). docs/side_by_side.md shows this file beside loop_fabric.py and module.py,
row by row.
"""

import torch
from torch import nn
from torchmetrics import MeanMetric

from {{ cookiecutter.package_name }}.data import SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.plain_run import PlainRun
from {{ cookiecutter.package_name }}.metrics import metrics
from {{ cookiecutter.package_name }}.model import shard

# The dtype autocast computes the forward in, per Trainer(precision=...); 32-bit: none.
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def fit(data: SpiralDataModule, hp, run: PlainRun):
    """Train `hp.net()` on `data` with `hp` (seed, net, classes, lr, max_epochs, gradient_clip_val,
    precision, accumulate_grad_batches: the config's values); return the model, optimizer and
    scheduler."""
    torch.manual_seed(hp.seed)  # seed_everything
    device = run.device  # Trainer(accelerator=...)

    # --- data ---
    # essay: dataset = TensorDataset(X_train, y_train)
    data.setup("fit")  # LightningDataModule.setup
    # essay: loader = DataLoader(dataset, batch_size=64, shuffle=True)
    loader = data.train_dataloader()  # LightningDataModule.train_dataloader
    val_loader = data.val_dataloader()  # LightningDataModule.val_dataloader

    # --- model, loss, metrics: LightningModule.__init__ ---
    # essay: model = MLP(in_features=2, hidden=128, out_features=3)
    model = hp.net()  # LightningModule(net=...): LightningCLI builds the config's model.net
    model.to(device)  # the Trainer, before configure_optimizers
    if hp.strategy == "fsdp2":  # Trainer(strategy="fsdp2"), under torchrun: FSDP2
        shard(model, run.mesh())  # configure_model: model.py's shard(); each keeps its shard
    criterion = nn.CrossEntropyLoss()
    val_loss = MeanMetric(nan_strategy=float("nan")).to(device)  # weighted by batch size; NaN stays
    val_metrics = metrics(hp.classes, "val/").to(device)  # metrics.py: val/acc, and yours

    # --- optimizer, scheduler: configure_optimizers ---
    # essay: optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.lr)
    # essay: scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=100)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.max_epochs)

    # --- precision, accumulation: Trainer(precision=..., accumulate_grad_batches=N) ---
    dtype = AUTOCAST.get(hp.precision)  # Trainer(precision=...)
    autocast = torch.autocast(device.type, dtype, enabled=dtype is not None)  # MixedPrecision
    scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "16-mixed")  # its scaler
    N = hp.accumulate_grad_batches  # Trainer(accumulate_grad_batches=N)

    # --- before the first batch: Trainer(strategy="ddp"), Trainer.fit(ckpt_path=...) ---
    train_model, loader, val_loader = run.distribute(model, loader, val_loader, hp.seed)
    start_epoch = run.start(model, optimizer, scheduler, scaler, data, loader)

    # --- loop ---
    # essay: for epoch in range(100):  (a resumed run starts later; a progress bar)
    for epoch in run.progress(range(start_epoch, hp.max_epochs)):  # Trainer(max_epochs=...)
        first = run.epoch_start(epoch)  # the fit loop: set_epoch, LearningRateMonitor
        model.train()  # the Trainer, after each validation (on_validation_model_train)
        # essay: for X_batch, y_batch in loader:  (numbered, from a resumed epoch's first)
        for batch_idx, (X_batch, y_batch) in enumerate(loader, first):  # the fit loop's batch_idx
            X_batch, y_batch = X_batch.to(device), y_batch.to(device)  # transfer_batch_to_device
            # A window of N batches, or the epoch's rest, ends in one step: _should_accumulate
            steps = (batch_idx + 1) % N == 0 or batch_idx + 1 == len(loader)
            if batch_idx % N == 0:  # a window's first batch
                # essay: optimiser.zero_grad()
                optimizer.zero_grad()  # optimizer_zero_grad
            with run.no_sync(not steps):  # DDP: gradients all-reduced in a window's last backward
                with autocast:  # the precision plugin, around training_step
                    # essay: logits = model(X_batch)  (under DDP, its wrapper)
                    logits = train_model(X_batch)  # training_step
                    loss = criterion(logits, y_batch)  # training_step
                # essay: loss.backward()  (a window of N batches: their mean; fp16: scaled)
                scaler.scale(loss / N).backward()  # backward: the closure's loss / N, scaled
            if steps:  # the fit loop: optimizer_step at a window's end
                scaler.unscale_(optimizer)  # MixedPrecision.optimizer_step, before the clipping
                if hp.gradient_clip_val is not None:  # Trainer(gradient_clip_val=...)
                    # essay: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                    # configure_gradient_clipping
                    torch.nn.utils.clip_grad_norm_(model.parameters(), hp.gradient_clip_val)
                # essay: optimiser.step()  (fp16: skipped if a gradient is inf)
                scaler.step(optimizer)  # optimizer_step
                scaler.update()  # MixedPrecision.optimizer_step
            run.batch_end(loss, epoch, steps)  # self.log("train/loss", loss); on_train_batch_end
        scheduler.step()  # lr_scheduler_step (interval "epoch")

        model.eval()  # the Trainer, before validation
        with torch.no_grad():  # the Trainer, around validation
            for X_val, y_val in val_loader:  # the validation loop, in batches
                X_val, y_val = X_val.to(device), y_val.to(device)  # transfer_batch_to_device
                with autocast:  # the precision plugin, around validation_step
                    val_logits = model(X_val)  # validation_step
                    # essay: val_loss = criterion(val_logits, y_val)  (over the batches)
                    # validation_step: the mean loss, each batch weighted by its size
                    val_loss.update(criterion(val_logits, y_val), weight=len(y_val))
                    val_metrics.update(val_logits, y_val)  # validation_step
        run.epoch_end(epoch, val_loss, val_metrics)  # self.log("val/..."), callbacks, checkpoint
    return model, optimizer, scheduler
