"""The typed run configuration: one dataclass, read from TOML tables and CLI flags, validated once here.

The core fields (model, data, epochs, ...) are this dataclass's own, documented by their ``help`` metadata.
Each technique declares its own keys (``options`` in ``leantrain/techniques/<name>.py``): they are RunConfig
keys too (``config.precision``), read and validated the same way, held in ``technique_options``. The CLI's
``train`` flags are generated from both, so a new option is added in one place. Below this edge, code trusts
a validated RunConfig.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from leantrain.errors import UsageError
from leantrain.options import Option
from leantrain.parallel.composition import check_parallel_mode
from leantrain.techniques import registry as techniques

LOADERS = ("tensor", "dataloader")
OPTIMIZERS = ("adam", "foreach-adam", "fused-adam", "auto-adam", "adamw", "sgd")
PIPELINE_SCHEDULES = ("gpipe", "1f1b")
BACKENDS = ("auto", "gloo", "nccl")
DDP_COMPRESSION = ("none", "bf16", "fp16")
NONFINITE = ("stop", "skip")
LOGGERS = ("tensorboard", "csv", "jsonl")  # leantrain/train/loggers.py
MAX_SEED = 2**32 - 1  # the data generators and per-rank seeds (seed * 100_003 + rank) must fit torch's 64 bits
MAX_AUTO_BATCH = 8192
MIN_STEPS_PER_EPOCH = 8  # batch_size auto never leaves an epoch fewer optimizer steps than this


def parallel_mode(parallel: str) -> str:
    """The mode a ``parallel`` value names (``dp2xpp2`` is a hybrid); the value itself when no mode takes it."""
    from leantrain.parallel.strategy import modes

    return next((name for name, cls in modes().items() if cls.accepts(parallel)), parallel)


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(init=False)
class RunConfig:
    model: str = _opt("mlp", "registered model, with options: NAME[:key=value,...]; your own class: "
                             "my_pkg.models:Net[:key=value,...]; third-party: timm:NAME / torchvision:NAME / "
                             "hf:MODEL_TYPE[:key=value,...] (fresh weights, never downloaded)")
    data: str = _opt("imagenet-sim", "registered data set, with options: NAME[:key=value,...]; your files: "
                                     "csv:path=F,target=COL / npy:x=X.npy,y=Y.npy / pt:path=F / imagefolder:path=DIR")
    init_from: str | None = _opt(None, "start from the weights of a leantrain model file (a .model.pt, or a run folder "
                                       "holding one) of the same model and vocabulary, not from a fresh initialisation; "
                                       "the optimizer starts afresh")
    epochs: int = _opt(5, "passes over the training split")
    batch_size: int | str = _opt(64, "samples per optimizer step (per worker); auto: the smallest power-of-two "
                                     "multiple of lr_batch within a tenth of the best samples/s timed here, lr scaled "
                                     "with it")
    lr_batch: int = _opt(64, "batch_size auto: the batch size lr is meant for; lr is scaled to the chosen batch "
                             "by its square root (Adam) or linearly (sgd)")
    eval_batch_size: int = _opt(1024, "samples per validation batch")
    lr: float = _opt(1e-3, "learning rate")
    optimizer: str = _opt(
        "adam", "optimizer (foreach-/fused-adam: the same Adam update in grouped or fused kernels; auto-adam: the "
        "fastest of the three, timed here)", OPTIMIZERS,
    )
    weight_decay: float = _opt(0.0, "weight decay")
    label_smoothing: float = _opt(0.0, "cross-entropy tasks: train against targets smoothed by this much (0.1 puts "
                                       "0.9 on the true class); validation losses stay unsmoothed")
    output_key: str | None = _opt(None, "a model returning a dict (a Hugging Face ModelOutput) or a tuple: the key, "
                                        "or the index, of the tensor the loss takes (logits, 0); default logits for hf: models")
    length_buckets: bool = _opt(False, "padded token sequences (seq2seq): batch samples of similar length together "
                                       "and trim each batch's padding; the batch order stays random")
    trim_padding: bool = _opt(False, "padded token sequences, a model that masks padding (seq2seq-transformer, dropout "
                                     "0): trim each batch to its longest row: the same batches and losses, less padding "
                                     "computed (the record's padding_trimmed says how much)")
    loader: str = _opt(
        "tensor", "batch source: device-resident tensor slices, or PyTorch's DataLoader (the seeds' recipe)", LOADERS
    )
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N (launched workers use cuda:LOCAL_RANK)")
    parallel: str = _opt(
        "none", "the parallel mode (one file each in leantrain/parallel/modes/; `leantrain list` shows them all): none "
        "(one process); ddp: DistributedDataParallel over the launched processes; mpi: seed 003's flat-buffer "
        "gradient Allreduce over mpi4py (mpirun); ensemble: a different model per worker, predictions combined; "
        "fsdp: parameters, gradients and optimizer state sharded per block (FSDP2); pipeline: the model's blocks "
        "split into one stage per worker; dpAxppB (e.g. dp2xpp2): A data-parallel replicas of a B-stage pipeline; "
        "batch_size is per worker (per pipeline replica under pipeline and dpAxppB)",
    )
    ddp_bucket_mb: float = _opt(25.0, "ddp: megabytes of gradients per all-reduce bucket (DDP's bucket_cap_mb)")
    ddp_static_graph: bool = _opt(False, "ddp: declare the graph static (DDP's static_graph: the same parameters "
                                         "get gradients every step)")
    ddp_grad_as_bucket_view: bool = _opt(True, "ddp: gradients as views into the all-reduce buckets (one copy "
                                               "less per step)")
    ddp_compress: str = _opt("none", "ddp: all-reduce the gradients in bf16 or fp16 (half the bytes; rounded to that "
                                     "type before averaging); none: in their own type", DDP_COMPRESSION)
    shard_optimizer: bool = _opt(False, "mpi: each rank keeps and updates 1/N of the optimizer's state (ZeRO stage "
                                        "1): gradients are still averaged whole, and the updated parameters are "
                                        "gathered after every step; fewer bytes and less update work per rank")
    microbatches: int = _opt(4, "pipeline, dpAxppB: micro-batches each batch is cut into (batch_size must be a "
                                "multiple)")
    schedule_pp: str = _opt("1f1b", "pipeline, dpAxppB: the pipeline schedule (torch.distributed.pipelining)",
                            PIPELINE_SCHEDULES)
    procs: str | int | None = _opt(None, "launch this many local worker processes (torch.distributed.run, or mpirun "
                                         "for mpi); auto (ddp): time 1 process x all cores against 1 process per "
                                         "core (under ddp, and mpi where installed), same global batch, and take the "
                                         "fastest; none: as launched, or one")
    members: str | None = _opt(None, "ensemble: one model per worker, NAME[:key=value,...],NAME...; "
                                     "none: --model on every worker, each from its own seed")
    backend: str = _opt("auto", "torch.distributed backend: auto (nccl on CUDA, gloo on CPU), gloo or nccl", BACKENDS)
    dist_timeout: float = _opt(300.0, "seconds a collective or the rendezvous may wait before every rank fails")
    seed: int = _opt(0, "seed for data, initialisation and batch order")
    target: float | None = _opt(None, "target validation metric (e.g. accuracy 0.7) for time-to-target")
    threads: str | int | None = _opt(
        None, "CPU threads for PyTorch: a count, auto (the CPUs other processes leave free), or none (PyTorch's choice)"
    )
    name: str = _opt("", "run name (default: derived from data, model, seed and a hash of the settings)")
    on_nonfinite: str = _opt("stop", "a non-finite loss or gradient: stop (keep the last good checkpoint), or skip "
                                     "the step and count it", NONFINITE)
    checkpoint_every: str | None = _opt(None, "also checkpoint mid-epoch every N optimizer steps (\"200\"), or every "
                                              "N seconds (\"300s\"); none: at epoch ends only")
    save_model: bool = _opt(False, "write <out>/<run>.model.pt at the end: weights, model and data specs, "
                                   "vocabulary (for leantrain evaluate / predict)")
    memory_check: bool = _opt(True, "before training, estimate the run's memory (parameters, gradients, optimizer "
                                    "state, activations from a dry step, data) and refuse if it exceeds what is free; "
                                    "false: skip the check")
    log: str | None = _opt(None, "step and epoch logs beside the record, comma-separated: tensorboard (event files; "
                                 "pip install 'leantrain[tensorboard]'), csv, jsonl; rank 0 only")
    # The registered techniques' keys -> values (precision, grad_clip, ...); read them as attributes.
    technique_options: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})

    def __init__(self, **values: Any):
        """Core fields and technique keys by name; a key not given takes its default. A typo is a TypeError."""
        for f in _core_fields():
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            object.__setattr__(self, f.name, values.pop(f.name, default))
        given = values.pop("technique_options", {})  # as dataclasses.replace passes them
        settings = {o.name: values.pop(o.name, given.get(o.name, o.default)) for o in techniques.options()}
        object.__setattr__(self, "technique_options", settings)
        if values:
            raise TypeError(f"RunConfig got unknown keys: {', '.join(values)}")

    def __getattr__(self, key: str) -> Any:
        # Only reached for names that are not core fields: a technique's key.
        settings = self.__dict__.get("technique_options", {})
        if key in settings:
            return settings[key]
        declared = next((o for o in techniques.options() if o.name == key), None)
        if declared is None:
            raise AttributeError(f"RunConfig has no key {key!r}")
        return declared.default  # registered after this config was made

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__.get("technique_options", {}):
            self.technique_options[key] = value
        else:
            object.__setattr__(self, key, value)

    @property
    def run_name(self) -> str:
        """The given name, or data-model-seed plus a hash of the settings that change results (run_identity)."""
        from leantrain.naming import derived_name

        return self.name or derived_name(self.data, self.model, self.seed, self.to_dict())

    @property
    def batch(self) -> int:
        """batch_size as a number: as given, or once ``batch_size = "auto"`` is chosen (leantrain.tuning)."""
        if not isinstance(self.batch_size, int):
            raise UsageError(f"batch_size {self.batch_size!r} has not been chosen yet (it is timed at the run's start)")
        return self.batch_size

    def batch_candidates(self, train_samples: int) -> list[int]:
        """What batch_size auto chooses among: ``lr_batch`` doubled while an epoch keeps ``MIN_STEPS_PER_EPOCH``
        steps, up to ``MAX_AUTO_BATCH``; a given batch_size alone."""
        if isinstance(self.batch_size, int):
            return [self.batch_size]
        cap = min(MAX_AUTO_BATCH, max(self.lr_batch, train_samples // MIN_STEPS_PER_EPOCH))
        sizes = [self.lr_batch]
        while sizes[-1] * 2 <= cap:
            sizes.append(sizes[-1] * 2)
        return sizes

    @property
    def padding_trimmed_by(self) -> str | None:
        """The setting that trims batches of padded sequences to their longest row (their widths then vary):
        length_buckets or trim_padding; None where neither is on."""
        return "length_buckets" if self.length_buckets else "trim_padding" if self.trim_padding else None

    @property
    def loggers(self) -> list[str]:
        """The ``log`` names, in the order given; empty without ``log``."""
        return [name.strip() for name in (self.log or "").split(",") if name.strip()]

    @property
    def checkpoint_interval(self) -> tuple[int | None, float | None]:
        """(steps, seconds) between mid-epoch checkpoints; (None, None): epoch ends only."""
        every = self.checkpoint_every
        if every is None:
            return None, None
        return (None, float(every[:-1])) if every.endswith("s") else (int(every), None)

    def to_dict(self) -> dict[str, Any]:
        """Flat: core fields, then technique keys, as TOML files and checkpoints write them."""
        return {**{f.name: getattr(self, f.name) for f in _core_fields()}, **self.technique_options}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> RunConfig:
        """Build from TOML/JSON values: unknown keys and wrong types are errors that say where they are."""
        known = {o.name: o for o in config_options()}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise UsageError(f"{where}: unknown key {key!r}; allowed: {', '.join(known)}")
            kwargs[key] = known[key].parse(value, where)
        return cls(**kwargs).validated(where)

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def validated(self, where: str = "config") -> RunConfig:
        """Check every value; raise UsageError naming the first bad one. Returns self for chaining."""
        from leantrain import models  # late: the registries import leantrain modules
        from leantrain.data.registry import DATASETS
        from leantrain.models import thirdparty
        from leantrain.registry import check_spec

        if isinstance(self.batch_size, str) and self.batch_size.isdigit():
            self.batch_size = int(self.batch_size)  # from the command line, a count arrives as text
        if isinstance(self.batch_size, str) and self.batch_size != "auto":
            raise UsageError(f"{where}: batch_size must be a positive integer or auto, got {self.batch_size!r}")
        if self.batch_size == "auto":
            self._validate_auto_batch(where)
        for name in ("epochs", "eval_batch_size", "lr_batch", *(["batch_size"] if self.batch_size != "auto" else [])):
            if getattr(self, name) <= 0:
                raise UsageError(f"{where}: {name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"{where}: lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UsageError(f"{where}: weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"{where}: label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("length_buckets", "trim_padding"):
            if getattr(self, name) and self.loader != "tensor":
                raise UsageError(f"{where}: {name} needs loader tensor, got loader {self.loader}")
        if isinstance(self.threads, str) and self.threads.isdigit():
            self.threads = int(self.threads)  # from the command line, a count arrives as text
        if self.threads is not None and self.threads != "auto" and not (isinstance(self.threads, int) and self.threads > 0):
            raise UsageError(f"{where}: threads must be a positive integer or auto, got {self.threads!r}")
        if isinstance(self.procs, str) and self.procs.isdigit():
            self.procs = int(self.procs)  # from the command line, a count arrives as text
        if isinstance(self.procs, str) and self.procs != "auto":
            raise UsageError(f"{where}: procs must be a positive integer or auto, got {self.procs!r}")
        if isinstance(self.procs, int) and self.procs <= 0:
            raise UsageError(f"{where}: procs must be a positive integer, got {self.procs}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"{where}: seed must be an integer in 0..{MAX_SEED}, got {_short(self.seed)}")
        if self.name:
            from leantrain.naming import check_name

            check_name(self.name, f"{where}: run name")
        if self.checkpoint_every is not None:
            self._validate_checkpoint_every(where)
        if self.init_from is not None:  # one file, one spelling: "./a.model.pt" is the run "a.model.pt" names
            if not str(self.init_from).strip():
                raise UsageError(f"{where}: init_from must name a model file (.model.pt) or a run folder holding one, "
                                 "got an empty path")
            self.init_from = os.path.normpath(self.init_from)
        self._validate_log(where)
        if not self.dist_timeout > 0:
            raise UsageError(f"{where}: dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        self._validate_techniques(where)
        self._validate_parallel(where)
        try:
            check_parallel_mode(techniques.from_config(self), parallel_mode(self.parallel))
        except UsageError as e:
            raise UsageError(f"{where}: {e}") from None
        for f in _core_fields():
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise UsageError(f"{where}: {f.name} {getattr(self, f.name)!r} is not one of: {', '.join(choices)}")
        device = resolve_device(self.device, where)
        if self.ddp_compress == "bf16" and device.type != "cuda":
            raise UsageError(f"{where}: ddp_compress bf16 needs CUDA (PyTorch's bf16 hook runs on NCCL only); "
                             "use fp16 on the CPU's gloo")
        if self.backend == "nccl" and device.type != "cuda":
            raise UsageError(f"{where}: backend nccl needs CUDA, but the device is {device}; use gloo or auto")
        check_spec(DATASETS, self.data, "seed")
        models.check(self.model)
        if self.output_key is None:  # a Hugging Face model's ModelOutput: the loss takes its logits
            self.output_key = thirdparty.default_output_key(self.model)
        return self

    def _validate_auto_batch(self, where: str) -> None:
        """batch_size auto is chosen at run start by timing; refused where a batch must be known before that."""
        if self.procs == "auto":
            raise UsageError(f"{where}: batch_size auto and procs auto each time the other's choice; fix one of them")

    def _validate_parallel(self, where: str) -> None:
        """The parallel mode's own rules (leantrain/parallel/modes/), after the ranges of its options."""
        from leantrain.parallel.strategy import strategy_for

        if not self.ddp_bucket_mb > 0:
            raise UsageError(f"{where}: ddp_bucket_mb must be > 0 megabytes, got {self.ddp_bucket_mb}")
        if self.microbatches <= 0:
            raise UsageError(f"{where}: microbatches must be a positive integer, got {self.microbatches}")
        strategy_for(self.parallel, where).check(self, where)

    def _validate_checkpoint_every(self, where: str) -> None:
        text = str(self.checkpoint_every).strip()
        number = text[:-1] if text.endswith("s") else text
        try:
            value = float(number) if text.endswith("s") else int(number)
        except ValueError:
            value = -1
        if not value > 0 or value != value or value == float("inf"):
            raise UsageError(f"{where}: checkpoint_every must be N (optimizer steps) or Ns (seconds), N > 0; "
                             f"got {self.checkpoint_every!r}")
        if text.endswith("s") and self.parallel != "none":
            raise UsageError(f"{where}: checkpoint_every in seconds is for one process (ranks must agree on when); "
                             "give a number of steps with --parallel")
        self.checkpoint_every = text

    def _validate_log(self, where: str) -> None:
        unknown = [name for name in self.loggers if name not in LOGGERS]
        if unknown:
            raise UsageError(f"{where}: log {unknown[0]!r} is not one of: {', '.join(LOGGERS)} (comma-separated)")
        if self.log is not None and not self.loggers:
            raise UsageError(f"{where}: log {self.log!r} names no logger; give some of: {', '.join(LOGGERS)}")
        import importlib.util

        if "tensorboard" in self.loggers and importlib.util.find_spec("tensorboard") is None:
            raise UsageError(f"{where}: log tensorboard needs the tensorboard package: "
                             "pip install 'leantrain[tensorboard]'")
        self.log = ",".join(dict.fromkeys(self.loggers)) or None  # one spelling: the record and a resume agree

    def _validate_techniques(self, where: str) -> None:
        """Each technique's keys by their own checks, then the technique's checks across keys."""
        for cls in techniques.techniques():
            for option in cls.options:
                setattr(self, option.name, option.validate(getattr(self, option.name), where))
            try:
                cls.check_config(self)
            except ValueError as e:
                raise UsageError(f"{where}: {e}") from None


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"


def resolve_device(device: str, where: str = "config") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"{where}: device {device!r} asked for, but CUDA is not available here; use cpu or auto")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UsageError(f"{where}: device {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device(device)
    raise UsageError(f"{where}: unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def _core_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunConfig) if not f.metadata.get("internal")]


def config_options() -> list[Option]:
    """Every key a RunConfig takes, core fields first, then each technique's: for TOML, CLI flags and help."""
    hints = typing.get_type_hints(RunConfig)
    core = [Option(f.name, hints[f.name], f.default, f.metadata["help"], f.metadata.get("choices")) for f in _core_fields()]
    clashes = {o.name for o in core} & {o.name for o in techniques.options()}
    if clashes:
        raise ValueError(f"technique keys {sorted(clashes)} clash with RunConfig's own fields")
    return core + techniques.options()
