"""The machinery that keeps the three loops exact and resumable; you should not need to open it to follow one.

loop.py, loop_fabric.py, module.py, data.py and scripts.py call it by name, each call in the loops commented with
its Lightning counterpart:

- loaders.py: the DataLoaders: shuffled with their own generator, able to stop between batches and go on.
- checkpoints.py: atomic writes, the random state in every checkpoint, `--ckpt_path` for the three entry points.
- stopping.py: Ctrl-C and SIGTERM after the batch, NaN losses at once; script.py: a second Ctrl-C at once, and the
  frame of the three scripts.
- logger.py: Lightning's TensorBoardLogger, flushing when the plain loop's SummaryWriter does.
- monitor.py: EarlyStopping and ModelCheckpoint(monitor=..., save_top_k=k) for the plain and Fabric loops, deciding
  as Lightning's callbacks do.
- trackers.py: a CSV file, MLflow and W&B beside TensorBoard (`track.to`), the same values from the three loops,
  resumed runs going on in the same file, MLflow and W&B runs.
- plain_run.py: what the Trainer does around the plain loop: DDP, resuming, logging, checkpoints, stops;
  fabric_run.py: the same around the Fabric loop, through Fabric's calls.
- cli.py: one-line errors, the settings every entry point refuses, a config's class_path made into its object.
- lightning_internals.py: each private name of Lightning (and jsonargparse) that they use, with the versions checked.
"""
