"""The one trainer: any registered Task, on CPU, one GPU or many (accelerate), resumable exactly.

Vocabulary: a *step* is one optimizer update; it consumes ``grad_accum`` micro-batches of
``batch_size`` items on each of ``world_size`` processes. ``max_steps`` (when set) wins over ``epochs``.

What makes ``--resume`` exact (same weights as an uninterrupted run): checkpoints only happen at step
boundaries; they hold the optimizer, scheduler, grad scaler, every process's RNG states and the data
position; data order is a function of ``(seed, epoch)`` and every item's augmentation RNG a function of
``(seed, epoch, index)`` (see ``sampling``), and data loaders never draw from the global RNG.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from aligngemini.config import ConfigError, from_dict
from aligngemini.train import checkpoint as ckpt
from aligngemini.train.run_output import BRANCH_DIR, SUMMARY_NAME
from aligngemini.train.sampling import EVAL_EPOCH, EpochBatchSampler, SeededItems, item_seed
from aligngemini.train.task import Task, build_task

PRECISIONS = ("auto", "no", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """The recipe's ``train:`` section."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    decay_1d: bool = False  # weight decay on biases and norm scales (1-D tensors) too
    batch_size: int = 32  # per process, per micro-batch
    eval_batch_size: int | None = None  # default: batch_size
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; when set, epochs is ignored
    grad_accum: int = 1
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant (both after linear warmup)
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else no) | no | bf16 | fp16
    seed: int = 0
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    checkpoint_every: int = 0  # steps; 0: only at the end (and on Ctrl-C)
    keep_checkpoints: int = 2  # newest kept; 0 keeps all
    eval_every: int = 0  # steps; 0: at the end of each epoch
    log_every: int = 10  # steps
    max_grad_norm: float | None = 1.0  # None: no clipping
    # Training targets of the built-in BCE loss move from {0, 1} to {e/2, 1 - e/2}, which bounds how far the
    # logits are pushed (a head's scores then saturate less); validation loss stays against the true labels.
    label_smoothing: float = 0.0
    output_dir: str | None = None
    find_unused_parameters: bool = False  # DDP option, for models with branches unused in a step

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay", "eps", "min_lr_ratio", "label_smoothing"):
            setattr(self, name, _as_float(name, getattr(self, name)))
        if self.max_grad_norm is not None:
            self.max_grad_norm = _as_float("max_grad_norm", self.max_grad_norm)
        self.betas = [_as_float("betas", b) for b in self.betas]
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if len(self.betas) != 2:
            problems.append(f"betas must be two numbers, got {self.betas!r}")
        for name in ("batch_size", "grad_accum", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1")
        if self.max_steps is None and self.epochs < 1:
            problems.append("set epochs >= 1 or max_steps")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be >= 1")
        if self.lr <= 0:
            problems.append("lr must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if problems:
            raise ConfigError("recipe train: " + "; ".join(problems))


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)  # YAML reads "1e-4" (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"recipe train.{name}: {value!r} is not a number") from None


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    interrupted: bool
    checkpoint: Path | None
    val_metrics: dict[str, Any] | None
    summary_path: Path | None
    seconds: float


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate for the update with index ``step`` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def binary_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Validation metrics at p=0.5 (logit 0): counts, accuracy per class, balanced accuracy, ROC-AUC (None
    with one class), computed by the evaluation's own ``eval.metrics.binary_metrics``."""
    from aligngemini.eval.metrics import binary_metrics as eval_metrics

    fake = np.asarray(labels) >= 0.5
    logits = np.asarray(logits, dtype=np.float64)
    # AUC ranks the logits themselves (no sigmoid that could tie saturated scores)
    m = eval_metrics(fake.astype(np.int64), logits, decisions=logits >= 0.0)
    keys = ("n_fake", "n_real", "real_acc", "fake_acc", "balanced_acc", "auc")
    return {"n": int(fake.size), **{k: m[k] for k in keys}}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _loss_and_logits(
    out: Any, batch: dict[str, Any], label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's own ``loss`` when it returns a dict with one, else BCE-with-logits against ``label``
    (smoothed towards 1/2 by ``label_smoothing``)."""
    logits = out.get("logits") if isinstance(out, dict) else out
    if logits is not None:
        logits = logits.float()
        if logits.dim() == 2 and logits.shape[1] == 1:
            logits = logits[:, 0]
    if isinstance(out, dict) and out.get("loss") is not None:
        return out["loss"].float(), logits
    if logits is None:
        raise TypeError("the model returned a dict with neither 'loss' nor 'logits'")
    label = batch["label"].float().view(-1)
    if logits.shape != label.shape:
        raise ValueError(
            f"the model returned logits of shape {tuple(logits.shape)}; labels are {tuple(label.shape)}"
        )
    if label_smoothing:
        label = label * (1 - label_smoothing) + label_smoothing / 2
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, label), logits


def _label_ids(indices: list[int], n: int, rank: int, world: int, fallback: int) -> tuple[list[int], int]:
    """An id per validation label, equal for the same dataset item on any process, so the items that
    sharding pads in twice are counted once. Items may expand to several labels (a real/fake pair): ids
    are ``index * 64 + k``. When labels do not split evenly over items, unique negative ids (< -1) keep
    every label (no de-duplication for that batch)."""
    if indices and n % len(indices) == 0 and n // len(indices) <= 64:
        per = n // len(indices)
        return [i * 64 + k for i in indices for k in range(per)], fallback
    ids = [-(2 + rank + world * (fallback + j)) for j in range(n)]
    return ids, fallback + n


def _barrier(acc: Any) -> None:
    """``accelerator.wait_for_everyone()``, except that CPU processes (gloo) wait without naming a
    device: accelerate passes ``device_ids=[local rank]``, which on a machine with fewer GPUs than
    processes makes torch look for a CUDA device that does not exist (seen with torch 2.11)."""
    if acc.num_processes == 1:
        return
    if acc.device.type == "cpu":
        torch.distributed.barrier()
    else:
        acc.wait_for_everyone()


def _close_process_group() -> None:
    """Destroy the process group this run created (torchrun launches), so that a caller of ``fit()``
    can start another group. Left to interpreter shutdown, gloo's worker threads still hold work
    objects whose tensors need the GIL while Python is being torn down, and a worker aborts with
    SIGABRT ("terminate called without an active exception") after training has finished. Destroying
    does not free the group while a DistributedDataParallel reducer still refers to it (torch 2.14),
    so the ``train`` command's workers also skip interpreter teardown when they leave."""
    from accelerate.state import AcceleratorState

    torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunLog:
    """``metrics.jsonl`` (one JSON object per event) and TensorBoard scalars when tensorboard is installed."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.path = output_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop events a stopped run logged after the checkpoint it resumes from."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = _json_safe({"event": event, "time": round(time.time(), 3), **fields})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None and "step" in fields:
            for key, value in fields.items():
                if isinstance(value, (int, float)) and key != "step" and value is not None:
                    self.tb.add_scalar(f"{event}/{key}", value, fields["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class _Position:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` consumed on each process


class Trainer:
    """Train the Task a recipe names. ``fit()`` runs (or resumes) it and exports the branch.

    ``on_step(trainer, step)`` is called after every optimizer step (after logging, evaluation and
    checkpointing); it may call ``trainer.request_stop()``, as the Ctrl-C handler does.
    """

    def __init__(
        self,
        recipe: dict[str, Any],
        *,
        output_dir: str | Path | None = None,
        device: str | None = None,
        progress: bool = True,
        on_step: Callable[[Trainer, int], None] | None = None,
    ) -> None:
        if "task" not in recipe:
            raise ConfigError("recipe: no 'task:' key naming what to train (e.g. pixel, semantic-clip)")
        self.recipe = recipe
        self.config = from_dict(TrainConfig, recipe.get("train"), where="recipe train")
        out = output_dir if output_dir is not None else self.config.output_dir
        if out is None:
            raise ConfigError("recipe train.output_dir is not set; set it or pass --output DIR")
        self.output_dir = Path(out)
        if device not in (None, "cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got {device!r}")
        self.device_request = device
        self.progress = progress
        self.on_step = on_step
        self._stop_requested = False

    # ------------------------------------------------------------------------------------------ API

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and return from ``fit()``."""
        self._stop_requested = True

    def fit(self, resume: bool | str | Path | None = None) -> TrainResult:
        """Train to the end (or until stopped). ``resume``: True/"latest" for the newest checkpoint in
        the output directory, or a checkpoint directory."""
        owns_group = not torch.distributed.is_initialized()
        try:
            with self._signals():
                return self._fit(resume)
        finally:
            if owns_group and torch.distributed.is_initialized():
                _close_process_group()

    # ------------------------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """First Ctrl-C (or SIGTERM, as schedulers send before preempting) stops at the next step
        boundary with a checkpoint; a second Ctrl-C aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_requested = True
            print(
                f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                "(Ctrl-C again to abort without one)",
                file=sys.stderr,
            )

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _make_accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.config
        if self.device_request == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        use_cuda = self.device_request != "cpu" and torch.cuda.is_available()
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
        if precision == "fp16" and not use_cuda:
            raise ConfigError("recipe train.precision fp16 needs a CUDA device; use no or bf16")
        # accelerate keeps one process-wide state; a second run in the same process (tests, notebooks)
        # may ask for another precision or device, so start from a clean one.
        AcceleratorState._reset_state(reset_partial_state=not torch.distributed.is_initialized())
        return Accelerator(
            cpu=not use_cuda,
            mixed_precision=precision,
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)
            ],
        )

    def _fit(self, resume: bool | str | Path | None) -> TrainResult:
        cfg = self.config
        started = time.monotonic()
        # Imported before any seeding: an import that draws from a global RNG mid-run (sklearn.metrics
        # moves python's, for one) would make a run differ from one resumed after that point.
        from tqdm.auto import tqdm

        acc = self._make_accelerator()
        main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
        ckpt_root = self.output_dir / "checkpoints"

        resume_dir = self._resume_dir(resume, ckpt_root)
        if resume_dir is None and ckpt.latest_checkpoint(ckpt_root) is not None:
            raise ConfigError(
                f"{self.output_dir} already holds checkpoints of a run; continue it with --resume, "
                "or choose another --output"
            )
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "recipe.yaml").write_text(yaml.safe_dump(self.recipe, sort_keys=False))
        _barrier(acc)

        # Model, data, optimizer: identical on every process (DDP also broadcasts rank 0's weights).
        _seed_everything(cfg.seed)
        task = build_task(self.recipe)
        model = task.build_model()
        params = list(task.trainable_parameters(model))
        if not params:
            raise ValueError(f"task {self.recipe['task']!r} declared no trainable parameters")
        chosen = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        train_ds, val_ds = task.build_datasets()
        if val_ds is not None and len(val_ds) == 0:
            val_ds = None
        optimizer = self._make_optimizer(params)
        names = {id(p): n for n, p in model.named_parameters()}
        param_names = [names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]]

        sizing = EpochBatchSampler(
            len(train_ds), cfg.batch_size, seed=cfg.seed, epoch=0, drop_last=cfg.drop_last, num_replicas=world
        )
        micro_per_epoch = sizing.num_batches()
        if micro_per_epoch == 0:
            raise ConfigError(
                f"recipe train.batch_size {cfg.batch_size} x {world} process(es) is larger than the training "
                f"set ({len(train_ds)} items) with drop_last; lower the batch size"
            )
        steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
        total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio),
        )
        model, optimizer = acc.prepare(model, optimizer)
        raw_model = acc.unwrap_model(model)

        pos = _Position()
        elapsed_before, items_before = 0.0, 0
        log = RunLog(self.output_dir, enabled=main)
        if resume_dir is not None:
            pos, saved = self._restore(resume_dir, acc, raw_model, optimizer, scheduler, micro_per_epoch)
            elapsed_before, items_before = float(saved.get("elapsed_s", 0.0)), int(saved.get("items_seen", 0))
            log.truncate_after(pos.step)
            log.write("resume", step=pos.step, checkpoint=str(resume_dir))
        else:
            _seed_everything(cfg.seed + rank)  # model-side randomness (dropout) differs across processes
        log.write(
            "start",
            step=pos.step,
            total_steps=total_steps,
            world_size=world,
            precision=acc.mixed_precision,
            device=str(acc.device),
            train_items=len(train_ds),
            val_items=len(val_ds) if val_ds is not None else 0,
            global_batch=cfg.batch_size * cfg.grad_accum * world,
        )

        state = _RunState(acc, task, model, raw_model, optimizer, scheduler, param_names, log, pos)
        state.total_steps, state.micro_per_epoch = total_steps, micro_per_epoch
        state.elapsed_before, state.started = elapsed_before, started
        state.resumed_from, state.items_before = resume_dir, items_before
        if resume_dir is not None:
            state.last_checkpoint, state.last_checkpoint_step = resume_dir, pos.step
        bar = None
        if main and self.progress:
            bar = tqdm(
                total=total_steps,
                initial=pos.step,
                desc="train",
                unit="step",
                file=sys.stderr,
                mininterval=1.0,
            )
        try:
            interrupted = self._loop(state, train_ds, val_ds, bar)
        finally:
            if bar is not None:
                bar.close()
        if interrupted:
            path = state.last_checkpoint
            log.write("interrupted", step=pos.step, checkpoint=str(path))
            log.close()
            return TrainResult(self.output_dir, pos.step, True, path, state.last_val, None, state.elapsed())

        if state.last_eval_step != pos.step and val_ds is not None:
            self._evaluate(state, val_ds)
        if state.last_checkpoint_step != pos.step:
            self._save(state)
        agree = self._ranks_agree(state)
        export = None
        summary_path = self.output_dir / SUMMARY_NAME
        if main:
            raw_model.eval()
            (self.output_dir / BRANCH_DIR).mkdir(parents=True, exist_ok=True)
            export = task.export(raw_model, self.output_dir / BRANCH_DIR)
            summary = {
                "task": self.recipe["task"],
                "steps": pos.step,
                "epochs": round(pos.epoch + pos.batch_in_epoch / micro_per_epoch, 4),
                "samples_seen": state.samples_seen(),
                "seconds": round(state.elapsed(), 3),
                "world_size": world,
                "device": str(acc.device),
                "precision": acc.mixed_precision,
                "final_val": state.last_val,
                "ranks_agree": agree,
                "resumed_from": str(resume_dir) if resume_dir else None,
                "checkpoint": str(state.last_checkpoint),
                "branch_dir": str(self.output_dir / BRANCH_DIR),
                "export": export,
                "recipe": self.recipe,
            }
            ckpt.write_json(summary_path, _json_safe(summary))
            log.write("end", step=pos.step, seconds=round(state.elapsed(), 3), ranks_agree=agree)
        log.close()
        _barrier(acc)
        return TrainResult(
            self.output_dir,
            pos.step,
            False,
            state.last_checkpoint,
            state.last_val,
            summary_path,
            state.elapsed(),
        )

    def _resume_dir(self, resume: bool | str | Path | None, root: Path) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True or resume == "latest":
            found = ckpt.latest_checkpoint(root)
            if found is None:
                raise ConfigError(f"--resume: no checkpoint under {root}; start without --resume")
            return found
        path = Path(resume)
        if not (path / "trainer.json").is_file():
            latest = ckpt.latest_checkpoint(path / "checkpoints") or ckpt.latest_checkpoint(path)
            if latest is None:
                raise ConfigError(f"--resume {path}: not a checkpoint directory (no trainer.json)")
            path = latest
        return path

    def _make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.decay_1d or cfg.weight_decay == 0:
            groups = [{"params": params, "weight_decay": cfg.weight_decay}]
        else:
            groups = [
                {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
            ]
            groups = [g for g in groups if g["params"]]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)

    def _restore(
        self,
        directory: Path,
        acc: Any,
        raw_model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        micro_per_epoch: int,
    ) -> tuple[_Position, dict[str, Any]]:
        cfg = self.config
        cp = ckpt.read_checkpoint(directory, rank=acc.process_index)
        t = cp.trainer
        _warn_recipe_changes(t.get("recipe", {}), self.recipe, directory)
        if t["batch_in_epoch"] and (t["world_size"], t["batch_size"]) != (acc.num_processes, cfg.batch_size):
            raise ckpt.CheckpointError(
                f"{directory}: saved mid-epoch with {t['world_size']} process(es) x batch {t['batch_size']}; "
                f"resume with the same (now {acc.num_processes} x {cfg.batch_size}) to keep the data order"
            )
        if t["seed"] != cfg.seed:
            raise ckpt.CheckpointError(
                f"{directory}: written with seed {t['seed']}, the recipe now says {cfg.seed}"
            )
        ckpt.load_trainable_state(raw_model, cp.model, directory / "model.safetensors")
        if len(cp.param_names) != sum(len(g["params"]) for g in optimizer.param_groups):
            raise ckpt.CheckpointError(
                f"{directory}: optimizer state is for {len(cp.param_names)} parameters"
            )
        optimizer.load_state_dict(cp.optimizer)
        scheduler.load_state_dict(t["scheduler"])
        if t.get("scaler") and acc.scaler is not None:
            acc.scaler.load_state_dict(t["scaler"])
        if cp.rng is not None:
            ckpt.restore_rng(cp.rng)
        else:
            print(
                f"warning: {directory} has no RNG state for process {acc.process_index}; reseeding",
                file=sys.stderr,
            )
            _seed_everything(cfg.seed + acc.process_index + 7919 * t["step"])
        pos = _Position(step=t["step"], epoch=t["epoch"], batch_in_epoch=t["batch_in_epoch"])
        if pos.batch_in_epoch >= micro_per_epoch:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        return pos, t

    def _loader(
        self, task: Task, dataset: Dataset, sampler: EpochBatchSampler, epoch: int, pin: bool
    ) -> DataLoader:
        cfg = self.config
        g = torch.Generator()
        g.manual_seed(item_seed(cfg.seed, epoch, 2**32 - 2))  # the loader must not draw from the global RNG
        return DataLoader(
            SeededItems(dataset, cfg.seed, epoch),
            batch_sampler=sampler,
            collate_fn=task.collate,
            num_workers=cfg.num_workers,
            pin_memory=pin,
            generator=g,
        )

    def _loop(self, s: _RunState, train_ds: Dataset, val_ds: Dataset | None, bar: Any) -> bool:
        """Run steps until the end; True when stopped early (a checkpoint has been saved)."""
        cfg, acc, pos = self.config, s.acc, s.pos
        pin = acc.device.type == "cuda"
        s.model.train()
        while pos.step < s.total_steps:
            sampler = EpochBatchSampler(
                len(train_ds),
                cfg.batch_size,
                seed=cfg.seed,
                epoch=pos.epoch,
                shuffle=cfg.shuffle,
                drop_last=cfg.drop_last,
                num_replicas=acc.num_processes,
                rank=acc.process_index,
                start_batch=pos.batch_in_epoch,
            )
            batches = iter(self._loader(s.task, train_ds, sampler, pos.epoch, pin))
            while pos.batch_in_epoch < s.micro_per_epoch and pos.step < s.total_steps:
                n_micro = min(cfg.grad_accum, s.micro_per_epoch - pos.batch_in_epoch)
                for j in range(n_micro):
                    batch = _to_device(next(batches), acc.device)
                    sync = j == n_micro - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(s.model):
                        loss, _ = _loss_and_logits(s.model(batch), batch, cfg.label_smoothing)
                        acc.backward(loss / n_micro)
                    s.loss_sum += loss.detach()
                    s.loss_count += 1
                    s.items_local += int(batch["label"].shape[0])
                if cfg.max_grad_norm is not None:
                    s.grad_norm = acc.clip_grad_norm_(s.params(), cfg.max_grad_norm)
                s.lr_used = s.optimizer.param_groups[0]["lr"]
                s.optimizer.step()
                s.scheduler.step()
                s.optimizer.zero_grad(set_to_none=True)
                pos.step += 1
                pos.batch_in_epoch += n_micro
                epoch_done = pos.batch_in_epoch >= s.micro_per_epoch
                if epoch_done:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                self._after_step(s, val_ds, epoch_done, bar)
                if self._should_stop(acc):
                    if s.last_checkpoint_step != pos.step:
                        self._save(s)
                    return True
                if epoch_done:
                    break
        return False

    def _after_step(self, s: _RunState, val_ds: Dataset | None, epoch_done: bool, bar: Any) -> None:
        cfg, step = self.config, s.pos.step
        last = step == s.total_steps
        if step % cfg.log_every == 0 or last:
            self._log_train(s)
        if val_ds is not None and (
            (cfg.eval_every > 0 and step % cfg.eval_every == 0) or (cfg.eval_every == 0 and epoch_done)
        ):
            self._evaluate(s, val_ds)
        if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
            self._save(s)
        if bar is not None:
            bar.update(1)
            if s.last_train_loss is not None:
                bar.set_postfix(loss=f"{s.last_train_loss:.4f}", lr=f"{s.lr_used:.2e}")
        if self.on_step is not None:
            self.on_step(self, step)

    def _should_stop(self, acc: Any) -> bool:
        if acc.num_processes == 1:
            return self._stop_requested
        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=acc.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)  # every process stops at the same step

    def _log_train(self, s: _RunState) -> None:
        acc = s.acc
        stats = torch.stack(
            [s.loss_sum.float().to(acc.device), torch.tensor(float(s.loss_count), device=acc.device)]
        )
        stats = acc.reduce(stats, reduction="sum")
        loss = (stats[0] / stats[1]).item() if stats[1] > 0 else float("nan")
        now = time.monotonic()
        items = s.items_local * acc.num_processes
        rate = (items - s.items_at_log) / max(1e-9, now - s.time_at_log)
        s.items_at_log, s.time_at_log = items, now
        s.loss_sum, s.loss_count = torch.zeros((), device=acc.device), 0
        s.last_train_loss = loss
        fields: dict[str, Any] = {
            "step": s.pos.step,
            "epoch": round(s.pos.epoch + s.pos.batch_in_epoch / s.micro_per_epoch, 4),
            "loss": loss,
            "lr": s.lr_used,
            "items_per_s": round(rate, 2),
        }
        if s.grad_norm is not None:
            fields["grad_norm"] = float(s.grad_norm)
        s.log.write("train", **fields)

    @torch.no_grad()
    def _evaluate(self, s: _RunState, val_ds: Dataset) -> dict[str, Any]:
        cfg, acc = self.config, s.acc
        sampler = EpochBatchSampler(
            len(val_ds),
            cfg.eval_batch_size or cfg.batch_size,
            seed=cfg.seed,
            epoch=EVAL_EPOCH,
            shuffle=False,
            num_replicas=acc.num_processes,
            rank=acc.process_index,
        )
        batch_indices = list(sampler)
        s.model.eval()
        logits_all, labels_all, ids_all, losses, sizes = [], [], [], [], []
        own_loss, fallback = False, 0
        try:
            loader = self._loader(s.task, val_ds, sampler, EVAL_EPOCH, acc.device.type == "cuda")
            for indices, batch in zip(batch_indices, loader, strict=True):
                batch = _to_device(batch, acc.device)
                n = int(batch["label"].shape[0])
                out = s.model(batch)
                own_loss = own_loss or (isinstance(out, dict) and out.get("loss") is not None)
                loss, logits = _loss_and_logits(out, batch)
                losses.append(loss.detach() * n)
                sizes.append(n)
                if logits is not None:
                    logits_all.append(logits.detach().float().view(-1))
                    labels_all.append(batch["label"].float().view(-1))
                    ids, fallback = _label_ids(indices, n, acc.process_index, acc.num_processes, fallback)
                    ids_all.append(torch.tensor(ids, dtype=torch.int64, device=acc.device))
        finally:
            s.model.train()
        loss_stats = acc.reduce(
            torch.stack([torch.stack(losses).sum(), torch.tensor(float(sum(sizes)), device=acc.device)]),
            reduction="sum",
        )
        metrics: dict[str, Any] = {"loss": (loss_stats[0] / loss_stats[1]).item()}
        if logits_all:
            # Processes may hold different numbers of labels (items that expand to pairs): pad, gather, drop.
            ids = acc.gather(acc.pad_across_processes(torch.cat(ids_all), pad_index=-1)).cpu().numpy()
            logits = acc.gather(acc.pad_across_processes(torch.cat(logits_all))).cpu().numpy()
            labels = acc.gather(acc.pad_across_processes(torch.cat(labels_all))).cpu().numpy()
            real = ids != -1
            ids, logits, labels = ids[real], logits[real], labels[real]
            _, first = np.unique(ids, return_index=True)  # padding repeats a few items; count each once
            logits, labels = logits[first], labels[first]
            if not own_loss:  # recompute over unique items (the padded ones counted twice above)
                t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
                metrics["loss"] = torch.nn.functional.binary_cross_entropy_with_logits(
                    t_logits, t_labels
                ).item()
            metrics.update(binary_metrics(logits, labels))
        s.last_val = _json_safe(metrics)
        s.last_eval_step = s.pos.step
        s.log.write("eval", step=s.pos.step, **s.last_val)
        return s.last_val

    def _save(self, s: _RunState) -> Path:
        acc, pos = s.acc, s.pos
        root = self.output_dir / "checkpoints"
        final = root / ckpt.step_dir_name(pos.step)
        tmp = root / (final.name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier(acc)
        ckpt.write_rng(tmp, acc.process_index)
        if acc.is_main_process:
            trainer_state = {
                "step": pos.step,
                "epoch": pos.epoch,
                "batch_in_epoch": pos.batch_in_epoch,
                "seed": self.config.seed,
                "world_size": acc.num_processes,
                "batch_size": self.config.batch_size,
                "grad_accum": self.config.grad_accum,
                "total_steps": s.total_steps,
                "scheduler": _json_safe(s.scheduler.state_dict()),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "elapsed_s": s.elapsed(),
                "items_seen": s.samples_seen(),
                "recipe": self.recipe,
            }
            ckpt.write_model_and_optimizer(
                tmp, ckpt.trainable_state(s.raw_model), s.optimizer.state_dict(), s.param_names, trainer_state
            )
        _barrier(acc)
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            ckpt.prune_checkpoints(root, self.config.keep_checkpoints)
            s.log.write("checkpoint", step=pos.step, path=str(final))
        _barrier(acc)
        s.last_checkpoint, s.last_checkpoint_step = final, pos.step
        return final

    def _ranks_agree(self, s: _RunState) -> bool:
        """Whether every process ends with bit-identical trainable weights (DDP should guarantee it)."""
        acc = s.acc
        if acc.num_processes == 1:
            return True
        h = hashlib.sha256()
        for name, tensor in sorted(ckpt.trainable_state(s.raw_model).items()):
            h.update(name.encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        digest = torch.tensor(
            [int.from_bytes(h.digest()[:7], "little")], dtype=torch.int64, device=acc.device
        )
        return bool((acc.gather(digest) == digest).all().item())


class _RunState:
    """Everything one ``fit()`` carries between steps."""

    def __init__(
        self,
        acc: Any,
        task: Task,
        model: torch.nn.Module,
        raw_model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        param_names: list[str],
        log: RunLog,
        pos: _Position,
    ) -> None:
        self.acc, self.task, self.model, self.raw_model = acc, task, model, raw_model
        self.optimizer, self.scheduler, self.param_names, self.log, self.pos = (
            optimizer,
            scheduler,
            param_names,
            log,
            pos,
        )
        self.total_steps = 0
        self.micro_per_epoch = 1
        self.loss_sum = torch.zeros((), device=acc.device)
        self.loss_count = 0
        self.items_local = 0
        self.items_at_log = 0
        self.time_at_log = time.monotonic()
        self.grad_norm: torch.Tensor | None = None
        self.last_train_loss: float | None = None
        self.last_val: dict[str, Any] | None = None
        self.last_eval_step = -1
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step = -1
        self.elapsed_before = 0.0
        self.started = time.monotonic()
        self.resumed_from: Path | None = None
        self.items_before = 0
        self.lr_used = 0.0

    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started)

    def samples_seen(self) -> int:
        """Items consumed by all processes since step 0 (padding of the last batch included)."""
        return self.items_before + self.items_local * self.acc.num_processes


def _warn_recipe_changes(old: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    a, b = flat(old), flat(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "train.output_dir")
    if changed:
        print(f"warning: resuming {where} with recipe changes in {changed}", file=sys.stderr)


def train(
    recipe: dict[str, Any],
    *,
    output_dir: str | Path | None = None,
    device: str | None = None,
    resume: bool | str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Convenience wrapper: ``Trainer(recipe, ...).fit(resume)``."""
    return Trainer(recipe, output_dir=output_dir, device=device, progress=progress).fit(resume)


__all__ = ["TrainConfig", "TrainResult", "Trainer", "binary_metrics", "lr_factor", "train"]
