"""The machinery that keeps both loops exact and resumable; you should not need to open it to follow the loop.

loop.py, module.py and data.py call it by name, each call commented with its Lightning counterpart:

- loaders.py: the DataLoaders: shuffled with their own generator, able to stop between batches and go on.
- checkpoints.py: atomic writes, the random state in every checkpoint, `--ckpt_path` for both entry points.
- stopping.py: Ctrl-C and SIGTERM after the batch, NaN losses at once; interrupt.py: a second Ctrl-C at once.
- logger.py: Lightning's TensorBoardLogger, flushing when the plain loop's SummaryWriter does.
- plain_run.py: what the Trainer does around the plain loop: DDP, resuming, logging, checkpoints, stops.
"""
