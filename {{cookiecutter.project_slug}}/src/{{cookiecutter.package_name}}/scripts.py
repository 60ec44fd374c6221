"""What train.py, train_torch.py and train_fabric.py do around the call each is for: read configs/default.yaml and
the flags on top, refuse in one line what a rung would compute differently, go on from a checkpoint, keep the
run's config beside its logs, and say how a stop resumes (docs/interrupted_runs.md).

    CLI                     train.py: LightningCLI, on the module and DataModule it is given
    plain_run(args, doc)    train_torch.py: the data, the loop's settings and a PlainRun, for loop.fit
    fabric_run(args, doc)   train_fabric.py: the same with Fabric, for loop_fabric.fit
"""

import os
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import lightning
import torch
from jsonargparse import ActionConfigFile, Namespace
from lightning import Trainer
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from lightning.fabric.strategies import STRATEGY_REGISTRY as FABRIC_STRATEGIES
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from torch.utils.tensorboard import SummaryWriter

from {{ cookiecutter.package_name }}.boundary import BoundaryAnimation, DecisionBoundary
from {{ cookiecutter.package_name }}.data import DataError, SpiralDataModule
from {{ cookiecutter.package_name }}.machinery.checkpoints import CheckpointError, adopt_checkpoint, check_shapes, plain
from {{ cookiecutter.package_name }}.machinery.cli import (
    LightningParser,
    Parser,
    instantiate,
    listed,
    named,
    net_problem,
    normal_paths,
    plain_numbers,
    quiet,
    settings_problem,
)
from {{ cookiecutter.package_name }}.machinery.fabric_run import FabricRun
from {{ cookiecutter.package_name }}.machinery.loaders import launched_by_torchrun
from {{ cookiecutter.package_name }}.machinery.monitor import IMPLEMENTED, not_implemented
from {{ cookiecutter.package_name }}.machinery.plain_run import DEVICES, NoWriter, PlainRun, next_version, process_group
from {{ cookiecutter.package_name }}.machinery.sharding import FabricFSDP2, ShardingError
from {{ cookiecutter.package_name }}.machinery.stopping import NonFiniteLossError, StoppedBySignal, StopRequest, resume_command
from {{ cookiecutter.package_name }}.machinery.trackers import Track, Trackers, TrackersLogger, TrackingError
from {{ cookiecutter.package_name }}.metrics import metrics
from {{ cookiecutter.package_name }}.model import shard
from {{ cookiecutter.package_name }}.module import SpiralClassifier

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
# Fabric(strategy="fsdp2"): fabric.setup_module shards with model.py's shard() (Lightning's "fsdp2": sharding.py).
FABRIC_STRATEGIES.register("fsdp2", FabricFSDP2, description="FSDP2: every process one shard", parallelize_fn=shard)


def refuse(problem: str | None) -> None:
    """A problem found before anything is written: one line, exit 2, as the parsers' own errors."""
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


class CLI(LightningCLI):
    """LightningCLI with configs/default.yaml under every subcommand, errors in one line, the optimizer module.py's
    own (as loop.py's), and `--ckpt_path` (or `last`) going on in the checkpoint's run directory with its settings."""

    def __init__(self, model_class, datamodule_class, args: list[str] | None = None):
        quiet()
        try:
            super().__init__(
                model_class,
                datamodule_class,
                parser_kwargs={c: {"default_config_files": [str(DEFAULT_CONFIG)]} for c in self.subcommands()},
                parser_class=LightningParser,
                auto_configure_optimizers=False,
                args=args,
            )
            log_dir = self.trainer.log_dir  # under DDP, every process asks rank 0
            if self.trainer.is_global_zero and log_dir is not None:
                print(f"logs: {log_dir}")
        except (DataError, CheckpointError, NonFiniteLossError, TrackingError) as error:
            sys.exit(f"error: {error}")
        finally:
            # Under DDP: a process group left to the exit may abort the process from its threads.
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(DecisionBoundary, "boundary")
        parser.add_class_arguments(Track, "track")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        plain_numbers(self.config)
        subcommand = self.config.get("subcommand")
        config = normal_paths(self.config[subcommand] if subcommand else self.config)
        refuse(settings_problem(config))  # before LightningCLI seeds; the other rungs refuse the same
        self.resumed = None  # the checkpoint a fit goes on from, for the trackers
        logger = config.trainer.logger
        if not logger:
            self.save_config_callback = None  # no logs: no run directory to keep it in
        if not (isinstance(logger, Namespace) and logger.class_path.endswith("TensorBoardLogger")):
            logger = None  # another logger's directory is its own business
        # Before LightningCLI reads the checkpoint's model settings (a bad file: a traceback).
        try:
            checkpoint, run = self.check_checkpoint(subcommand, config, logger)
        except CheckpointError as error:
            sys.exit(f"error: {error}")
        if logger is not None:
            self.log_into(logger, subcommand, checkpoint, run)

    def check_checkpoint(self, subcommand: str, config: Namespace, logger: Namespace | None):
        """Resolve `last` and refuse a checkpoint this run cannot use; the checkpoint and its run directory (None,
        None without --ckpt_path)."""
        if not config.get("ckpt_path"):
            return None, None
        root = Path("logs/lightning")
        if logger is not None:
            root = Path(logger.init_args.save_dir, logger.init_args.name or "")
        fitting = subcommand == "fit"

        def settings(saved: dict) -> dict[str, dict]:
            """The model's and the data's settings, and for a fit the schedule's length."""
            schedule = (saved.get("lr_schedulers") or [{}])[0]
            return {
                "model": saved["hyper_parameters"],
                "data": saved.get("datamodule_hyper_parameters", {}),
                "trainer": {"max_epochs": schedule["T_max"]} if fitting and "T_max" in schedule else {},
            }

        saved = ("last.ckpt", ("state_dict", "hyper_parameters"), "a LightningModule (train.py)")
        defaults = self._parser(subcommand).get_defaults()
        if not fitting and config.ckpt_path == "last-if-any":
            raise CheckpointError(f"--ckpt_path last-if-any goes on with a fit; {subcommand} takes last or a path")
        # validate, test and predict take the data the checkpoint was trained on, or the data given.
        given_wins = () if fitting else ("data",)
        checkpoint, run = adopt_checkpoint(config, defaults, root, saved, settings, given_wins)
        if checkpoint is None:  # last-if-any, and none: a new run
            return None, None
        # Refused here, before a run directory is made, not when the Trainer loads it.
        model = self.model_class(**vars(instantiate(config.model)))
        check_shapes(checkpoint["state_dict"], model.state_dict(), config.ckpt_path)
        return checkpoint, run

    def log_into(self, logger: Namespace, subcommand: str, checkpoint, run: Path | None):
        """A fit resumed from a run's checkpoint goes on in that run's TensorBoard directory, the steps after the
        checkpoint logged anew. validate, test and predict of a run's checkpoint write into a directory of their own
        inside the run, version_N/<subcommand>, their numbers at the checkpoint's step: TensorBoard shows them beside
        the run's curves and leaves those as the fit wrote them. Without a run's checkpoint, they write into
        logs/lightning/evaluations."""
        if run is None and subcommand == "fit":
            return
        if subcommand != "fit":
            logger.init_args.version = "evaluations" if run is None else f"{run.name}/{subcommand}"
            if run is not None:  # where the fit logged the checkpoint's epoch's validation: its last step's index
                logger.init_args.at_step = max(checkpoint["global_step"] - 1, 0)
            # Its config.yaml is the latest evaluation's.
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
            return
        # A number, as the logger's own: the progress bar shows the last 4 characters of a name.
        number = run.name.removeprefix("version_")
        logger.init_args.version = int(number) if number.isdigit() else run.name
        logger.init_args.purge_step = checkpoint["global_step"]
        self.resumed = {"step": checkpoint["global_step"], "trackers": checkpoint.get("trackers", {})}
        # ModelCheckpoint warns that checkpoints/ is not empty: they are this run's own.
        not_empty = r"Checkpoint directory .* exists and is not empty"
        warnings.filterwarnings("ignore", not_empty, module="lightning.pytorch.callbacks.model_checkpoint")
        if (run / "config.yaml").is_file():
            self.save_config_callback = None  # the run keeps the config.yaml it started with

    def check_net(self) -> None:
        """Before fit, validate, test or predict: a network that cannot take the data, refused in one line before
        anything is written (the other rungs refuse the same)."""
        refuse(net_problem(self.model.net, self.datamodule.dataset, self.model.hparams.classes))

    before_validate = before_test = before_predict = check_net

    def before_fit(self) -> None:
        """check_net, and an EarlyStopping or ModelCheckpoint whose monitor the module does not log, refused before
        training (Lightning would find it missing at the first epoch's end)."""
        self.check_net()
        callbacks = self.trainer.callbacks
        logged = ["train/loss", *(["train/lr"] if any(isinstance(c, LearningRateMonitor) for c in callbacks) else [])]
        logged += once_an_epoch(self.model.hparams.classes)
        for callback in callbacks:
            if isinstance(callback, EarlyStopping) and not callback.strict:
                continue  # Lightning warns and goes on without it
            # A ModelCheckpoint's candidates also hold the epoch and the step.
            known = [*logged, "epoch", "step"] if isinstance(callback, ModelCheckpoint) else logged
            if isinstance(callback, (EarlyStopping, ModelCheckpoint)) and callback.monitor not in (None, *known):
                kind = type(callback).__name__
                refuse(f"trainer.callbacks: {kind}(monitor={callback.monitor!r}): it takes {', '.join(known)}")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer, without the callbacks of configs/default.yaml that its settings leave nothing to do (a
        progress bar, a learning-rate monitor without a logger, a checkpoint without checkpointing); a setting the
        Trainer refuses, in one line."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.trainer
        idle = {
            ProgressBar: trainer.enable_progress_bar is False,
            LearningRateMonitor: not trainer.logger,
            ModelCheckpoint: trainer.enable_checkpointing is False,
        }
        off = tuple(kind for kind, is_idle in idle.items() if is_idle)
        callbacks = [c for c in listed(trainer.callbacks) if not isinstance(c, off)]
        # A ModelCheckpoint with a monitor before the config's, which writes last.ckpt: last.ckpt then holds the best k
        # files' record as the epoch left it, and a resumed run goes on with them (the other loops save in this order).
        kwargs["callbacks"] = sorted(callbacks, key=lambda c: isinstance(c, ModelCheckpoint) and c.monitor is None)
        if config.track.to and self.subcommand == "fit":  # the trackers beside trainer.logger, in its run directory
            loggers = listed(trainer.logger)
            settings = params(self.config[self.subcommand])

            def open_trackers() -> Trackers:
                return config.track.open(Path(loggers[0].log_dir), loggers[0].save_dir, settings, self.resumed)

            kwargs["logger"] = [*loggers, TrackersLogger(open_trackers)]
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as error:
            refuse(f"trainer: {str(error).splitlines()[0]}")


# The Trainer settings the plain and Fabric loops keep: the values each takes (ANY: every value the parser takes).
# Any other trainer setting at another value than configs/default.yaml's is refused by name, a setting that a new
# Lightning release adds too, until it is kept here; tests/test_every_option.py gives every trainer setting of the
# parsers a value of its own and checks that the three rungs compute the same numbers or that the loop refuses it.
ANY = None
KEPT = {
    # What the loops implement, as the Trainer does; settings_problem() checks the values.
    "accelerator": ANY,
    "max_epochs": ANY,
    "accumulate_grad_batches": ANY,
    "gradient_clip_val": ANY,
    "gradient_clip_algorithm": (None, "norm"),  # the essay clips the norm
    "precision": (None, 32, "32", "32-true", "bf16-mixed", "16-mixed"),
    "log_every_n_steps": ANY,  # train/loss at every n-th step, as Lightning logs it
    "deterministic": ANY,  # torch.use_deterministic_algorithms, as the Trainer sets it
    "benchmark": ANY,  # torch.backends.cudnn.benchmark, as the Trainer sets it
    "logger": ANY,  # parse() checks it is a TensorBoardLogger: where the loops log
    # What changes no number the loops compute.
    "min_epochs": ANY,  # they only hold back an early stop: refused beside an EarlyStopping (parse)
    "min_steps": ANY,
    "limit_test_batches": ANY,  # test and predict are train.py's alone
    "limit_predict_batches": ANY,
    "enable_checkpointing": ANY,  # the loops write last.pt all the same: Ctrl-C and --ckpt_path need it
    "enable_progress_bar": ANY,
    "enable_model_summary": ANY,
    "inference_mode": ANY,  # validation under inference_mode or no_grad: the same numbers
    "profiler": ANY,
    "detect_anomaly": ANY,
    "default_root_dir": ANY,
    "enable_autolog_hparams": ANY,
    "model_registry": ANY,
}
# What only Fabric takes (it goes to Fabric), or the plain loop only under torchrun (which decides them).
SEVERAL_PROCESSES = ("ddp", "fsdp2")  # the strategies the three loops implement: DDP, and FSDP2's sharded model
KEPT_BY_FABRIC = {"strategy": ("auto", *SEVERAL_PROCESSES), "devices": ANY, "num_nodes": ANY, "plugins": ANY}
KEPT_UNDER_TORCHRUN = {"strategy": ("auto", *SEVERAL_PROCESSES), "devices": ANY, "num_nodes": ANY}


def refused_trainer_setting(trainer: Namespace, default: Namespace, kept: dict) -> str | None:
    """The first trainer setting the loop would compute differently with, named; None if none."""
    for key, value in vars(trainer).items():
        allowed = kept.get(key, [default[key]])
        if key == "callbacks":  # their settings (a progress bar's refresh rate) are the Trainer's own business
            # beside an EarlyStopping and a ModelCheckpoint with a monitor, which parse() checks
            value = classes([callback for callback in listed(value) if callback not in monitored(value)])
            allowed = [classes(default[key])]
        if allowed is not ANY and value not in allowed:
            takes = "" if len(allowed) == 1 else f" (it takes {', '.join(map(repr, allowed))})"
            return f"trainer.{key}={value!r}{takes}"
    return None


def classes(callbacks) -> list[str]:
    """The class paths of a config's trainer.callbacks."""
    return [getattr(callback, "class_path", callback) for callback in listed(callbacks)]


def monitored(callbacks) -> list[Namespace]:
    """The EarlyStopping and the ModelCheckpoints with a monitor among a config's trainer.callbacks: what the plain and
    Fabric loops do themselves (machinery/monitor.py)."""
    found = [callback for callback in listed(callbacks) if getattr(callback, "class_path", None) in IMPLEMENTED]
    return [callback for callback in found if callback.init_args.get("monitor") is not None]


def monitored_problem(config: Namespace) -> str | None:
    """What the plain and Fabric loops would do otherwise than Lightning's EarlyStopping or a ModelCheckpoint with a
    monitor, named: an argument they do not implement, a monitor they do not log once an epoch."""
    trainer = config.trainer
    found = monitored(trainer.callbacks)
    kinds = [callback.class_path.rsplit(".", 1)[1] for callback in found]
    if len(set(kinds)) < len(kinds):
        return f"trainer.callbacks: {kinds}: one EarlyStopping and one ModelCheckpoint with a monitor at most"
    logged = once_an_epoch(config.model.classes)
    for callback, kind in zip(found, kinds, strict=True):
        problem = not_implemented(callback.class_path, vars(callback.init_args), logged)
        if problem is not None:
            return f"trainer.callbacks: {kind}({problem})"
    if "EarlyStopping" in kinds and (trainer.min_epochs or trainer.min_steps):
        return "trainer.min_epochs and min_steps beside an EarlyStopping"
    return None


def once_an_epoch(classes: int) -> list[str]:
    """What the three loops log at each epoch's end, after validation: the loss and metrics.py's metrics."""
    return ["val/loss", *metrics(classes, "val/")]


def params(config: Namespace) -> dict[str, str]:
    """A run's settings as a tracker's parameters (MLflow's), flat: the seed, the model's and the data's, the trainer's
    but its logger, callbacks and plugins; the same in the three loops."""
    not_settings = ("logger", "callbacks", "plugins")
    trainer = {key: value for key, value in vars(config.trainer).items() if key not in not_settings}
    settings = Namespace(
        seed_everything=config.seed_everything, model=config.model, data=config.data, trainer=Namespace(**trainer)
    )
    return {key.replace(".init_args", ""): str(plain(value)) for key, value in vars(settings.as_flat()).items()}


def parse(args: list[str] | None, script: str, doc: str) -> tuple[Parser, Namespace]:
    """The plain or the Fabric loop's config (train.py's keys) and its parser; what the loop would compute
    differently from Lightning refused in one line."""
    fabric = script == "train_fabric.py"
    loop = "the Fabric loop" if fabric else "the plain loop"
    parser = Parser(default_config_files=[str(DEFAULT_CONFIG)], description=doc)
    parser.add_argument("--config", action=ActionConfigFile, help="A config file on top of configs/default.yaml.")
    parser.add_argument("--seed_everything", type=int, required=True)
    parser.add_class_arguments(SpiralClassifier, "model")
    parser.add_class_arguments(SpiralDataModule, "data")
    parser.add_class_arguments(Trainer, "trainer", fail_untyped=False, instantiate=False, sub_configs=True)
    parser.add_class_arguments(BoundaryAnimation, "boundary")
    parser.add_class_arguments(Track, "track")
    parser.add_argument(
        "--ckpt_path", type=str | None, default=None, help="last.pt to go on from, `last`, or `last-if-any`."
    )
    config = normal_paths(plain_numbers(parser.parse_args(args)))
    trainer = config.trainer
    if not fabric and not launched_by_torchrun() and trainer.strategy in SEVERAL_PROCESSES:
        command = f"torchrun --standalone --nproc_per_node 2 train_torch.py --trainer.strategy {trainer.strategy}"
        parser.error(f"trainer.strategy={trainer.strategy!r}: the plain loop runs it under torchrun: {command}")
    kept = {**KEPT, **(KEPT_BY_FABRIC if fabric else KEPT_UNDER_TORCHRUN if launched_by_torchrun() else {})}
    refused = refused_trainer_setting(trainer, plain_numbers(parser.get_defaults()).trainer, kept)
    refused = refused or monitored_problem(config)
    if refused is not None:
        parser.error(f"{refused} is not implemented by {loop}: docs/configuration.md says why; use train.py")
    problem = settings_problem(config)  # train.py refuses the same
    if problem is not None:
        parser.error(problem)
    if trainer.accelerator not in DEVICES:
        parser.error(f"trainer.accelerator={trainer.accelerator!r}: {loop} runs on one of {list(DEVICES)}")
    if not str(getattr(trainer.logger, "class_path", "")).endswith("TensorBoardLogger"):
        parser.error(f"{script} logs where trainer.logger, a TensorBoardLogger, does; the config has none")
    return parser, config


def prepare(parser: Parser, config: Namespace, root: Path) -> tuple[dict | None, Path, SpiralDataModule]:
    """The checkpoint to go on from (or None), the run directory and the data, set up; a bad checkpoint, data file
    or network is one line, before anything is written. config takes a resumed run's settings. Then torch's global
    flags, as the Trainer sets them."""
    try:
        resume, log_dir = None, next_version(root)
        if config.ckpt_path:
            keys = ("model", "optimizer", "scheduler", "scaler", "hparams")
            resume, log_dir = adopt_checkpoint(
                config,
                parser.get_defaults(),
                root,
                ("last.pt", keys, "the plain or the Fabric loop"),
                lambda saved: {**saved["hparams"], "trainer": {"max_epochs": saved["scheduler"]["T_max"]}},
            )
        net = instantiate(config.model.net)
        if resume is not None:
            check_shapes(resume["model"], net.state_dict(), config.ckpt_path)
        data = SpiralDataModule(**vars(instantiate(config.data)))
        data.setup("fit")
    except (DataError, CheckpointError) as error:
        sys.exit(f"error: {error}")
    refuse(net_problem(net, data.dataset, config.model.classes))
    set_torch_flags(config.trainer.deterministic, config.trainer.benchmark)
    return resume, log_dir or next_version(root), data


def keep_config(parser: Parser, config: Namespace, log_dir: Path, resume: dict | None) -> None:
    """The run directory and its config.yaml; a resumed run keeps the one it started with."""
    log_dir.mkdir(parents=True, exist_ok=resume is not None)
    if not (log_dir / "config.yaml").exists():
        parser.save(config, log_dir / "config.yaml")


def loop_settings(config: Namespace) -> Namespace:
    """What the loops read as `hp`: the seed, the model's settings (model.net as a function that makes the
    network), the trainer's that the loops implement."""
    return Namespace(
        seed=config.seed_everything,
        **{**vars(config.model), "net": partial(instantiate, config.model.net)},
        max_epochs=config.trainer.max_epochs,
        strategy=config.trainer.strategy,
        gradient_clip_val=config.trainer.gradient_clip_val,
        precision=config.trainer.precision,
        accumulate_grad_batches=config.trainer.accumulate_grad_batches,
    )


SECTIONS = ("model", "data")  # the config's settings a checkpoint keeps: hyper_parameters, datamodule_hyper_parameters


def run_settings(config: Namespace, data: SpiralDataModule, resume: dict | None, lead: bool) -> dict:
    """A PlainRun's (or FabricRun's) settings but its writer and device; `lead`: rank 0, or the only process, which
    alone draws the animation (under FSDP2 every process draws, the sharded model's forward needs them all)."""
    boundary = BoundaryAnimation(**config.boundary)
    boundary.switch_off_if_undrawable(data.val_set, say=lead)
    callbacks = {}  # the EarlyStop and BestK of the config's EarlyStopping and ModelCheckpoint(monitor=...)
    for callback in monitored(config.trainer.callbacks):
        field, kind, *_ = IMPLEMENTED[callback.class_path]
        callbacks[field] = kind(**vars(callback.init_args))
    return dict(
        # A function (data.augment) by its import path, as Lightning keeps it: torch.load(weights_only=True) reads it.
        hparams={section: {key: plain(value) for key, value in vars(config[section]).items()} for section in SECTIONS},
        log_every_n_steps=config.trainer.log_every_n_steps,
        progress_bar=lead and config.trainer.enable_progress_bar is not False,
        boundary=boundary if lead or config.trainer.strategy == "fsdp2" else None,
        **callbacks,
        resume=resume,
        resumed_from=resume and Path(config.ckpt_path).absolute(),
    )


def open_trackers(config: Namespace, log_dir: Path, resume: dict | None) -> Trackers:
    """The trackers of config's `track` for the plain or the Fabric loop's run in `log_dir`, going on from `resume`."""
    save_dir = config.trainer.logger.init_args.save_dir
    return Track(**config.track).open(log_dir, save_dir, params(config), resume)


def set_torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
    """torch's global flags as Trainer(deterministic=..., benchmark=...) sets them (its accelerator connector)."""
    if deterministic and benchmark is None:
        benchmark = False
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic is not None:
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what cuBLAS needs to be deterministic


@contextmanager
def stopping(script: str, log_dir: Path, lead: bool) -> Iterator[StopRequest]:
    """Around the training: Ctrl-C, SIGTERM and SIGUSR1 noted, to stop after the batch; what ends the run early said
    in one line, with the command that resumes it after a signal (by rank 0 alone, where several processes train)."""
    stop = StopRequest()
    previous = stop.listen()
    checkpoint = log_dir / "checkpoints" / "last.pt"
    try:
        yield stop
    # CheckpointError: a mid-epoch checkpoint of another number of processes. ShardingError: an optimizer built
    # before shard().
    # TrackingError: a checkpoint's MLflow run that its store does not have.
    except (NonFiniteLossError, CheckpointError, ShardingError, TrackingError) as error:
        sys.exit(f"error: {error}")
    except StoppedBySignal as stopped:
        if lead:
            where = f"step {stopped.step} (epoch {stopped.epoch})"
            command = resume_command(script, log_dir / "config.yaml", checkpoint)
            print(f"{stopped.signal.name}: saved {checkpoint} at {where}; resume with: {command}", file=sys.stderr)
        sys.exit(128 + stopped.signal)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report(run: PlainRun, log_dir: Path, lead: bool) -> None:
    """From rank 0, or the only process: the animation's file and where the logs are."""
    if not lead:
        return
    if run.boundary is not None and run.boundary.save(log_dir / "decision_boundary.gif"):
        print(f"decision boundary: {log_dir / 'decision_boundary.gif'}")
    print(f"logs: {log_dir}")


@contextmanager
def plain_run(args: list[str] | None, doc: str) -> Iterator[tuple[SpiralDataModule, Namespace, PlainRun]]:
    """train_torch.py's data, settings and run for loop.fit(data, hp, run), in logs/torch/version_N. Under torchrun,
    rank 0 alone logs and writes checkpoints, as Lightning's loggers (rank_zero_only) and Trainer.save_checkpoint
    (strategy.is_global_zero) do."""
    parser, config = parse(args, "train_torch.py", doc)
    root = Path(config.trainer.logger.init_args.save_dir) / "torch"
    resume, log_dir, data = prepare(parser, config, root)
    lead = int(os.environ.get("RANK", 0)) == 0
    if lead:
        keep_config(parser, config, log_dir, resume)
    settings = run_settings(config, data, resume, lead)
    with stopping("train_torch.py", log_dir, lead) as stop:
        # purge_step: TensorBoard drops what an interrupted run logged after its checkpoint; this run logs it anew.
        writing = SummaryWriter(log_dir, purge_step=resume and resume["step"]) if lead else nullcontext(NoWriter())
        trackers = open_trackers(config, log_dir, resume) if lead else Trackers()  # CSV, MLflow: rank 0 logs
        with process_group(config.trainer.accelerator) as device, writing as writer, trackers:
            checkpoint = log_dir / "checkpoints" / "last.pt" if lead else None
            run = PlainRun(
                writer=writer, trackers=trackers, device=device, checkpoint=checkpoint, stop=stop, **settings
            )
            yield data, loop_settings(config), run
    report(run, log_dir, lead)


def plugin(spec: Namespace):
    """A trainer.plugins entry of the config as the object it names; a Trainer's precision plugin as Fabric's of the
    same name (MixedPrecision: Fabric's)."""
    if issubclass(named(spec.class_path), lightning.pytorch.plugins.Precision):
        spec = spec.clone()
        spec.class_path = f"lightning.fabric.plugins.{spec.class_path.rsplit('.', 1)[1]}"
    return instantiate(spec)


@contextmanager
def fabric_run(args: list[str] | None, doc: str) -> Iterator[tuple[SpiralDataModule, Namespace, Fabric, FabricRun]]:
    """train_fabric.py's data, settings, Fabric and run for loop_fabric.fit(data, hp, fabric, run), in
    logs/fabric/version_N: trainer.accelerator, strategy, devices, num_nodes, precision and plugins go to Fabric.
    Under DDP, Fabric launches the other processes, each running train_fabric.py; under torchrun it joins those
    torchrun started. Rank 0 alone logs and writes checkpoints."""
    quiet()
    parser, config = parse(args, "train_fabric.py", doc)
    trainer = config.trainer
    root = Path(trainer.logger.init_args.save_dir) / "fabric"
    resume, log_dir, data = prepare(parser, config, root)
    # purge_step: as plain_run's.
    logger = TensorBoardLogger(root, name="", version=log_dir.name, purge_step=resume and resume["step"])
    tracked = TrackersLogger(partial(open_trackers, config, log_dir, resume))  # CSV, MLflow: opened on rank 0
    strategy, devices, num_nodes = trainer.strategy, trainer.devices, trainer.num_nodes
    if launched_by_torchrun():  # the processes torchrun started
        strategy, devices = "ddp" if strategy == "auto" else strategy, int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = int(os.environ["WORLD_SIZE"]) // devices
    fabric = Fabric(
        accelerator=trainer.accelerator,
        strategy=strategy,
        devices=devices,
        num_nodes=num_nodes,
        precision=trainer.precision,
        plugins=[plugin(spec) for spec in listed(trainer.plugins)],
        loggers=[logger, tracked],
    )
    fabric.launch()  # DDP: starts the other processes, each running train_fabric.py up to here
    lead = fabric.is_global_zero  # the others' log_dir (maybe another) is unused
    if lead:
        keep_config(parser, config, log_dir, resume)
    settings = run_settings(config, data, resume, lead)
    with stopping("train_fabric.py", log_dir, lead) as stop, tracked.trackers as trackers:
        run = FabricRun(
            writer=logger.experiment,  # rank 0's SummaryWriter; on the others, a stand-in
            trackers=trackers,  # what `tracked` logs to: flushed and kept in the checkpoint by the run
            device=fabric.device,
            checkpoint=log_dir / "checkpoints" / "last.pt",  # fabric.save writes it from rank 0
            stop=stop,
            fabric=fabric,
            resume_path=config.ckpt_path and Path(config.ckpt_path),
            **settings,
        )
        try:
            yield data, loop_settings(config), fabric, run
        finally:
            logger.finalize("success")  # closes the event file
    report(run, log_dir, lead)
