"""The training loop: config -> data, model, optimiser -> steps, logs, validation, checkpoints.

One path for every run: single process on CPU or GPU, or several processes under ``torchrun``
(DistributedDataParallel; gloo on CPU, NCCL on CUDA). Rank 0 alone writes logs and checkpoints.

Exact resumption: the order of samples depends only on (seed, epoch, position), every sample's augmentation only
on (seed, epoch, index), and the checkpoint holds the model, optimiser, scheduler, AMP scaler, step and every
rank's RNG states, so a run stopped at any checkpoint and resumed with the same number of processes ends with
the same weights as an uninterrupted one (on CPU; CUDA kernels are not all deterministic). With another number
of processes it goes on from the same step, epoch and weights, but not bit for bit: see :meth:`Trainer._resume`.

Host-device synchronisation: one small read per step. Before backward, every rank's loss and whether any rank
was asked to stop (Ctrl-C, SIGTERM) are summed across ranks in one tensor and read once: so a NaN or infinite
loss on any rank stops every rank at the same step, before its gradients reach the all-reduce or the weights,
and a stop request ends every rank after the same step. Loss terms for the logs are read at logging steps only;
the network input and the losses create no tensor from host data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import statistics
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from matting.config import Config
from matting.data.augment import make_augment_config
from matting.data.io import check_writable_dir
from matting.data.release import TestDataset, read_test_folder, read_training_release, split_validation
from matting.data.train_dataset import (
    CompositionDataset,
    ValidationDataset,
    pack_batch,
    unpack_batch,
    worker_init_fn,
)
from matting.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_torch_save,
    checkpoint_model_config,
    load_checkpoint,
    rank_rng_states,
    rng_state,
    set_rng_state,
    unwrap,
)
from matting.engine.evaluator import evaluate
from matting.engine.logger import FILE_ONLY, TensorBoardWriter, attach_log_file, text_logger
from matting.engine.predictor import Predictor
from matting.engine.run_dir import check_run_dir, move_aside
from matting.engine.runtime import DistInfo, cudnn_benchmark, init_distributed, resolve_device, seed_everything
from matting.engine.schedule import build_optimizer, build_scheduler
from matting.errors import MattingError, OutputError
from matting.losses import MattingLoss
from matting.models import convert_sync_batchnorm, make_input, model_from_config

#: A step whose loss is over this many times the median loss of the recent healthy steps is "exploding": no
#: checkpoint is saved from such a state (a NaN usually follows), so latest.pth stays one a run can go on from.
EXPLODING_FACTOR = 100.0
_LOSS_HISTORY = 100  # healthy steps in that median
_MIN_HISTORY = 5  # steps before any step is judged (the first losses of a run move a lot)
# What a checkpoint must hold to continue a run (convert_official writes weights and config only).
_RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "step", "epoch")
# Keys that decide which samples come next and how they look: changed on resume, the run goes on, not exactly.
_DATA_ORDER_KEYS = ("seed", "train.batch_size", "data.samples_per_epoch", "data.val_count", "data.preset",
                    "data.augment")


class TrainingDiverged(MattingError):
    """The loss became NaN or infinite; nothing was saved from the broken state."""


def _one_line(exc: Exception) -> Exception:
    """A user error raised in a data-loader worker arrives with the worker's traceback folded into its message;
    this gives back the one-line original (other exceptions, bugs, are returned unchanged)."""
    text = str(exc).strip()
    if not isinstance(exc, MattingError) or "\n" not in text:
        return exc
    last = text.splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return type(exc)(last.removeprefix(prefix))


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends only on (seed, epoch), split across ranks, that can start
    part-way through an epoch (for exact resumption without replaying the data).

    Each rank takes every ``world_size``-th index of the permutation, as DistributedSampler does; the tail that
    does not divide evenly is dropped so all ranks run the same number of steps.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        """Next iteration yields epoch ``epoch`` from this rank's ``start``-th index on."""
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.per_rank() * self.world_size]
        mine = order[self.rank :: self.world_size].tolist()
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)


class _WithEpoch(Sampler[tuple[int, int]]):
    """``(epoch, index)`` for each index of an :class:`EpochSampler`: persistent loader workers keep the copy of
    the dataset they started with, so the epoch travels with every index."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    best_value: float = math.inf
    best_step: int = -1
    epoch_start: int = 0  # the step at which the current data epoch started


class Trainer:
    """Builds everything a run needs from a :class:`Config` and runs it.

    Args:
        cfg: the validated config.
        resume: a checkpoint to continue from (exactly), or None to start fresh.
        progress: show a tqdm progress bar with ETA on rank 0.
        restart: start over in an output folder that holds an earlier run, moving that run aside (to
            ``<output_dir>.old-<time>``) when this one starts; without it such a folder is refused unless resuming
            from its own checkpoints (see :mod:`matting.engine.run_dir`).

    Nothing is written until :meth:`fit` starts the run: a run that fails to build leaves no file behind.
    """

    def __init__(
        self, cfg: Config, resume: str | Path | None = None, progress: bool = True, restart: bool = False
    ):
        self.cfg = cfg
        self.out_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        # First, so that a bad output folder or checkpoint is refused before anything is built or written.
        check_writable_dir(self.out_dir, "the run's outputs")
        checkpoint = load_checkpoint(resume, map_location="cpu") if resume is not None else None
        check_run_dir(self.out_dir, resume, restart)
        self.restart = restart
        self.dist: DistInfo = init_distributed(resolve_device(cfg.device))
        self.device = self._device()
        main = self.dist.is_main
        self.log = text_logger(enabled=main)  # to train.log once the run starts
        self.board = TensorBoardWriter(None)
        self.started = False
        self.progress = progress and main
        seed_everything(cfg.seed)

        self.model = self._build_model()
        self.optimizer = build_optimizer(unwrap(self.model), cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.criterion = MattingLoss(cfg.loss.weights)
        self.train_set, self.val_items, self.val_desc = self._build_data()
        self.test_items = self._build_test_set()
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, self.dist.rank, self.dist.world_size)
        self.per_rank_batch = self._per_rank_batch()
        self.steps_per_epoch = self._steps_per_epoch()
        self.state = TrainState()
        # Loss watch: recent healthy losses; whether the current state came from an exploding step; the step
        # latest.pth holds (None: not written by this run).
        self.losses: deque[float] = deque(maxlen=_LOSS_HISTORY)
        self.exploding, self.last_loss = False, math.nan
        self.saved_step: int | None = None
        # Since the last log: each step's loss (mean over ranks, read with the step's check) and loss terms
        # (on the device, read at the log). A stop request: the signal this process got, and whether every rank
        # agreed to stop after the current step.
        self.step_losses: list[float] = []
        self.step_terms: list[torch.Tensor] = []
        self.log_tic = time.perf_counter()
        self.stop_signal: int | None = None
        self.stop_agreed = False
        self.bar = None
        if checkpoint is not None:
            self._resume(checkpoint, resume)

    # ---------------------------------------------------------------------------------------------- set-up

    def _device(self) -> torch.device:
        device = resolve_device(self.cfg.device)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        return device

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.train.amp
        if amp == "none":
            return None
        if self.device.type != "cuda":
            self.log.warning("train.amp=%s ignored: mixed precision is used on CUDA only", amp)
            return None
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _per_rank_batch(self) -> int:
        bs, world = self.cfg.train.batch_size, self.dist.world_size
        if bs % world:
            raise MattingError(f"train.batch_size={bs} must be divisible by the number of processes ({world})")
        return bs // world

    def _steps_per_epoch(self) -> int:
        steps = self.sampler.per_rank() // self.per_rank_batch
        if steps == 0:
            raise MattingError(
                f"data: an epoch of {len(self.train_set)} samples is smaller than one batch per process "
                f"({self.per_rank_batch}); raise data.samples_per_epoch"
            )
        return steps

    def _build_model(self) -> nn.Module:
        model = model_from_config(self.cfg.model).to(self.device)
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dist.enabled:
            if self.cfg.train.sync_bn and self.device.type != "cuda":
                self.log.warning("train.sync_bn ignored on %s: SyncBatchNorm needs CUDA; each process normalises "
                                 "with its own batch", self.device)
            elif self.cfg.train.sync_bn:
                model = convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def _build_data(self):
        d = self.cfg.data
        release = read_training_release(d.dataset_dir, d.train_bg_dir, use_bg_list=d.use_bg_list)
        train_rel, val_rel = split_validation(release, d.val_count, self.cfg.seed)
        augment = make_augment_config(d.preset, **d.augment)
        train_set = CompositionDataset.from_release(
            train_rel, augment=augment, seed=self.cfg.seed, length=d.samples_per_epoch, cache=d.cache
        )
        val_items, val_desc = None, "no validation split (data.val_count = 0)"
        if d.val_count > 0:
            val_items = ValidationDataset.from_release(
                val_rel, seed=self.cfg.seed, bgs_per_fg=d.val_bgs_per_fg, max_side=d.val_max_side
            )
            val_desc = (
                f"validation split: {len(val_items)} composites of {len(val_rel.fg_paths)} training foregrounds "
                "held out from training"
            )
        return train_set, val_items, val_desc

    def _build_test_set(self):
        """The test set for ``train.test_every`` (None when off); a missing folder fails here, before training."""
        if self.cfg.train.test_every is None:
            return None
        return TestDataset(read_test_folder(self.cfg.data.test_dir))

    def _loader(self) -> DataLoader:
        """One loader for the whole run; its workers persist across epochs (the epoch travels with each index)."""
        workers = self.cfg.data.num_workers
        return DataLoader(
            self.train_set,
            batch_size=self.per_rank_batch,
            sampler=_WithEpoch(self.sampler),
            num_workers=workers,
            collate_fn=pack_batch,
            worker_init_fn=worker_init_fn if workers > 0 else None,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=workers > 0,
            # The loader draws its workers' base seed from this generator, not from the global RNG, which the
            # model's dropout consumes: otherwise creating the iterator on resume would shift the dropout masks.
            generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.state.epoch),
        )

    # ---------------------------------------------------------------------------------------------- checkpoints

    def _checkpoint(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": unwrap(self.model).state_dict(),
            "config": self.cfg.to_dict(),
            "step": self.state.step,
            "epoch": self.state.epoch,
            "epoch_start_step": self.state.epoch_start,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_states,
            "best": {
                "metric": self.cfg.train.best_metric, "value": self.state.best_value, "step": self.state.best_step
            },
        }

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states, by rank (called by every rank; the list matters on rank 0)."""
        own = rng_state(self.device)
        if not self.dist.enabled:
            return [own]
        states: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(states, own)
        return states

    def save(self, name: str = "latest.pth") -> Path | None:
        """Writes the current state to ``checkpoints/<name>`` (rank 0; every rank calls it, with its RNG states).
        A failed write is an OutputError saying what the file still holds."""
        path = self.ckpt_dir / name
        rng_states = self._rng_states()
        if self.dist.is_main:
            try:
                atomic_torch_save(self._checkpoint(rng_states), path)
            except OutputError as exc:
                held = (f"{name} still holds step {self.saved_step}" if name == "latest.pth" and
                        self.saved_step is not None else f"the previous {name}, if any, is unchanged")
                raise OutputError(f"{exc}; {held}") from None
        if name == "latest.pth":
            self.saved_step = self.state.step
        return path

    def _save_latest(self) -> bool:
        """Saves latest.pth unless the current state comes from an exploding loss; returns whether it did."""
        if not self.exploding:
            self.save()
            return True
        self.log.warning("step %d: loss %.4g is over %gx the median of the recent steps (%.4g); latest.pth not "
                         "saved (%s)", self.state.step, self.last_loss, EXPLODING_FACTOR,
                         statistics.median(self.losses), self._latest_text())
        return False

    def _latest_text(self) -> str:
        """What latest.pth holds, for messages."""
        latest = self.ckpt_dir / "latest.pth"
        if self.saved_step is not None:
            return f"last good checkpoint: {latest} (step {self.saved_step})"
        if latest.is_file():
            return f"{latest} was not written by this run"
        return "no checkpoint was saved"

    def _watch_loss(self, loss: float) -> None:
        """Marks the state exploding if ``loss`` is over EXPLODING_FACTOR x the median of recent healthy losses."""
        self.last_loss = loss
        self.exploding = (len(self.losses) >= _MIN_HISTORY
                          and loss > EXPLODING_FACTOR * statistics.median(self.losses))
        if not self.exploding:
            self.losses.append(loss)

    def _resume(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Restores the checkpoint's state; each rank takes its own RNG states.

        With another number of processes than the checkpoint's, training goes on from the same step, epoch,
        weights and optimiser state, but not bit for bit: the rest of the epoch is dealt to the processes
        differently, and ranks the checkpoint has no state for take rank 0's (logged as a warning).
        """
        # Keys added to the model section since the checkpoint was written take their defaults (head, init).
        old = checkpoint_model_config(ckpt, path)
        if old != self.cfg.model:
            raise MattingError(f"{path}: the checkpoint's model config {dataclasses.asdict(old)} differs from this "
                               f"config's {dataclasses.asdict(self.cfg.model)}")
        self._load_states(ckpt, path)
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        states = rank_rng_states(ckpt)
        rank = self.dist.rank
        set_rng_state(states[rank] if rank < len(states) else states[0], self.device)
        self._warn_changed_data_order(ckpt, path)
        if len(states) != self.dist.world_size:
            self.log.warning("%s was written by %d process(es), this run has %d: it goes on from step %d, not bit "
                             "for bit as an uninterrupted run would", path, len(states), self.dist.world_size,
                             ckpt["step"])
        if not self.restart and Path(path).resolve() == (self.ckpt_dir / "latest.pth").resolve():
            self.saved_step = ckpt["step"]
        best = ckpt.get("best") or {}
        self.state = TrainState(
            step=ckpt["step"], epoch=ckpt["epoch"],
            best_value=best.get("value", math.inf), best_step=best.get("step", -1),
            epoch_start=ckpt.get("epoch_start_step", ckpt["epoch"] * self.steps_per_epoch),
        )
        self.log.info("resumed from %s at step %d", path, self.state.step)

    def _warn_changed_data_order(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Warns when a key of _DATA_ORDER_KEYS differs from the checkpoint's config (an override on resume)."""

        def value(cfg: dict[str, Any], key: str) -> Any:
            for part in key.split("."):
                cfg = cfg.get(part, {}) if isinstance(cfg, dict) else {}
            return cfg

        old, new = ckpt.get("config") or {}, self.cfg.to_dict()
        changed = [key for key in _DATA_ORDER_KEYS if value(old, key) != value(new, key)]
        if changed:
            self.log.warning("%s: %s differ from the checkpoint's config: training goes on from step %d, but not "
                             "as an uninterrupted run would", path, ", ".join(changed), ckpt["step"])

    def _load_states(self, ckpt: dict[str, Any], path: str | Path) -> None:
        """Weights, optimiser and schedule from ``ckpt``; a file that cannot continue this run is a MattingError."""
        missing = [key for key in _RESUME_KEYS if key not in ckpt]
        if missing:
            raise MattingError(f"{path}: holds no {', '.join(missing)}, so training cannot resume from it (a "
                               "weights-only checkpoint, e.g. a converted official one: evaluate, infer and export "
                               "take it)")
        try:
            unwrap(self.model).load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise MattingError(f"{path}: its weights do not fit this network ({first})") from None
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:
            raise MattingError(f"{path}: its optimiser state does not fit this config's parameter groups ({exc}); "
                               "resume with the train.lr_groups the checkpoint was trained with") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])

    # ---------------------------------------------------------------------------------------------- one step

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from the current (epoch, position) onwards, across epoch boundaries, forever."""
        loader = self._loader()
        while True:
            done_in_epoch = min(max(self.state.step - self.state.epoch_start, 0), self.steps_per_epoch)
            self.sampler.set_position(self.state.epoch, done_in_epoch * self.per_rank_batch)
            yield from loader
            self.state.epoch += 1
            self.state.epoch_start = self.state.step

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The loader's batch (8-bit where exact, see ``pack_batch``) on the device, as the losses expect it."""
        out = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = unpack_batch(out)
        if self.cfg.train.channels_last:
            out = {k: v.contiguous(memory_format=torch.channels_last)
                   if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point() else v for k, v in out.items()}
        return out

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """One optimisation step. Returns (total loss, loss terms, prediction), all detached.

        Raises TrainingDiverged, on every rank, if the loss of any rank is not finite (nothing of the step is
        applied)."""
        self.model.train()
        x = make_input(batch["image"], batch["trimap"])
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with autocast:
            pred = self.model(x)
        total, terms = self.criterion(pred.float(), batch)
        self._check_step(total, terms)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if self.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        return total.detach(), {k: v.detach() for k, v in terms.items()}, pred.detach()

    def _check_step(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """The step's one read from the device, agreed by every rank: all losses finite, and whether to stop.

        One tensor of ``world_size + 1`` values is summed across ranks (before backward, so a rank that stops
        never leaves the others waiting in the gradient all-reduce): slot r holds rank r's loss (the other ranks
        add 0 there), the last slot the number of ranks asked to stop. Built on the device from the loss and a
        fill: nothing is copied from the host.
        """
        world = self.dist.world_size
        flags = torch.zeros(world + 1, device=total.device)
        flags[self.dist.rank] = total.detach().float()
        flags[world].fill_(float(self.stop_signal is not None))  # a fill: item assignment would copy a host tensor
        if self.dist.enabled:
            dist.all_reduce(flags)
        *losses, stops = flags.tolist()
        bad = [rank for rank, loss in enumerate(losses) if not math.isfinite(loss)]
        if bad:
            raise self._diverged(losses, bad, terms)
        self.stop_agreed = stops > 0
        self.step_losses.append(sum(losses) / world)
        self.step_terms.append(torch.stack([v.detach() for v in terms.values()]))
        self._watch_loss(self.step_losses[-1])

    def _diverged(self, losses: list[float], bad: list[int], terms: dict[str, torch.Tensor]) -> TrainingDiverged:
        """The one-line error every rank raises for a non-finite loss (the same text on every rank)."""
        if self.dist.enabled:
            where = f" on rank {', '.join(map(str, bad))} of {self.dist.world_size}"
        else:
            where = " (" + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items()) + ")"
        return TrainingDiverged(
            f"loss is {losses[bad[0]]} at step {self.state.step + 1}{where}; stopped without saving; "
            f"{self._latest_text()} (lower train.lr or set train.grad_clip)"
        )

    # ---------------------------------------------------------------------------------------------- around it

    def validate(self) -> dict[str, Any] | None:
        """Scores the validation split (rank 0) with the same code as the test evaluation."""
        return self._score(self.val_items)

    def _score(self, items) -> dict[str, Any] | None:
        """``evaluate``'s summary of ``items`` on rank 0 (None on the others, or when ``items`` is None).

        Full-size images of varying sizes: cuDNN's per-shape autotuning is off meanwhile. Under DDP or with a
        CUDA context the metric workers are spawned, not forked (``matting.engine.evaluator``).
        """
        if items is None:
            return None
        summary = None
        if self.dist.is_main:
            model = unwrap(self.model)
            # The layout the model trains in: validation must not convert the training model's weights.
            predictor = Predictor(model, self.device, channels_last=self.cfg.train.channels_last)
            with cudnn_benchmark(False):
                summary = evaluate(predictor, items, out_dir=None, progress=False, workers=self.cfg.eval.workers)
            model.train()
        if self.dist.enabled:
            dist.barrier(group=self.dist.wait_group)  # a long wait: not bound by NCCL's timeout (EVAL_WAIT)
        return summary

    def _report(self, summary: dict[str, Any], what: str, board_prefix: str) -> dict[str, float]:
        """Logs an evaluation's failures and means (``what`` says which set) and writes them to TensorBoard."""
        means = summary["mean"]
        if summary.get("failed"):
            self.log.warning("step %d: %d %s images failed: %s", self.state.step, summary["failed"], what,
                             "; ".join(f"{f['name']}: {f['error']}" for f in summary["failures"][:3]))
        scored = {k: means[k] for k in ("sad", "mse", "grad", "conn") if means.get(k) is not None}
        self.log.info("step %d %s: %s", self.state.step, what,
                      "  ".join(f"{k.upper()} {v:.4f}" for k, v in scored.items()) or "nothing scored")
        self.board.scalars({f"{board_prefix}/{k}": v for k, v in scored.items()}, self.state.step)
        return scored

    def _keep_if_best(self, summary: dict[str, Any] | None) -> None:
        """Reports a validation (rank 0) and saves best.pth if it improves on the best so far (every rank)."""
        value = None
        if summary is not None:
            value = self._report(summary, self.val_desc, "val").get(self.cfg.train.best_metric)
            if value is not None and not value < self.state.best_value:
                value = None
        if self.dist.enabled:
            shared = [value]
            dist.broadcast_object_list(shared, src=0)
            value = shared[0]
        if value is None:
            return
        self.state.best_value, self.state.best_step = value, self.state.step
        self.save("best.pth")
        self.log.info("new best validation %s %.4f at step %d -> best.pth", self.cfg.train.best_metric.upper(),
                      value, self.state.step)

    def _log_losses(self) -> None:
        """The losses since the last log, averaged (and over ranks): text log, progress bar, TensorBoard."""
        t, step = self.cfg.train, self.state.step
        terms = torch.stack(self.step_terms)
        if self.dist.enabled:
            dist.all_reduce(terms)
            terms /= self.dist.world_size
        n = len(self.step_losses)
        avg = {"total": sum(self.step_losses) / n}
        for name, column in zip(self.criterion.weights, zip(*terms.tolist())):
            avg[name] = sum(column) / n
        rate = n * t.batch_size / max(1e-9, time.perf_counter() - self.log_tic)
        lrs = {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.board.scalars({**{f"loss/{k}": v for k, v in avg.items()}, **lrs, "throughput/samples_per_s": rate},
                           step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{avg['total']:.4f}")
        self.log.info("step %d/%d loss %.5f (%s) lr %.3g %.1f samples/s", step, t.iterations, avg["total"],
                      ", ".join(f"{k} {v:.4f}" for k, v in avg.items() if k != "total"),
                      self.optimizer.param_groups[-1]["lr"], rate)
        self.step_losses, self.step_terms = [], []
        self.log_tic = time.perf_counter()

    def _after_step(self, batch: dict[str, Any], pred: torch.Tensor, last: int) -> None:
        """What is due after a step: log, image grid, validation, test-set curve, checkpoint, stop."""
        t, step = self.cfg.train, self.state.step
        if step % t.log_every == 0 or step == t.iterations:
            self._log_losses()
        if step % t.image_every == 0:
            self.board.image_grid("train/image_trimap_gt_pred_error", batch, pred, step)
        if self.val_items is not None and (step % t.val_every == 0 or step == t.iterations):
            self._keep_if_best(self.validate())
        if self.test_items is not None and step % t.test_every == 0:
            summary = self._score(self.test_items)
            if summary is not None:
                self._report(summary, f"TEST SET {self.cfg.data.test_dir} ({len(self.test_items)} images; "
                             "reported only, never used to pick best.pth)", "test_set")
        # Alone, a process stops after the step its signal came in; several stop after the step they agreed on.
        stopping = self.stop_agreed or (not self.dist.enabled and self.stop_signal is not None)
        saved = self._save_latest() if stopping or step % t.ckpt_every == 0 or step == last else False
        if stopping:
            self._stop_on_signal(saved)

    def _stop_on_signal(self, saved: bool) -> None:
        """Ends the run, saying whether latest.pth holds the last completed step (a consistent state)."""
        what = f"signal {self.stop_signal}" if self.stop_signal is not None else "a signal to another process"
        self.log.info("stopped by %s at step %d; %s (continue with --resume)", what, self.state.step,
                      f"saved {self.ckpt_dir / 'latest.pth'}" if saved else self._latest_text())
        raise KeyboardInterrupt

    def _next_batch(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, Any]:
        try:
            return self._to_device(next(batches))
        except Exception as exc:
            # Ctrl-C also reaches the loader's workers, which then die: that is the stop, not a crash. Several
            # processes may see it at different steps, so they cannot agree on a checkpoint: latest.pth stays.
            if self.stop_signal is None:
                raise _one_line(exc) from None
            saved = self.saved_step == self.state.step or (not self.dist.enabled and self._save_latest())
            self._stop_on_signal(saved)
            raise  # not reached: _stop_on_signal raises

    # ---------------------------------------------------------------------------------------------- the run

    def _start_run(self) -> None:
        """The run really starts: the earlier run is moved aside (restart), train.log and TensorBoard open.

        TensorBoard hides the events of steps after the resumed one that a killed process had already logged.
        """
        if self.dist.is_main:
            if not self.started:
                moved = move_aside(self.out_dir) if self.restart else None
                attach_log_file(self.log, self.out_dir / "train.log")
                if moved is not None:
                    self.log.info("moved the earlier run to %s (--restart)", moved)
            purge = self.state.step + 1 if self.state.step else None
            self.board = TensorBoardWriter(self.out_dir / "tb", purge_step=purge)
        self.started = True

    def _log_start(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.log.info("run '%s': %s, %d process(es) on %s, batch %d, %d iterations -> %s",
                      cfg.name, f"{cfg.model.encoder}+{cfg.model.upsampler}", self.dist.world_size, self.device,
                      t.batch_size, t.iterations, self.out_dir)
        self.log.info("training on %d foregrounds (%d samples/epoch); %s",
                      len(self.train_set.fg_paths), len(self.train_set), self.val_desc)
        self.log.info("learning rates (train.lr_groups): %s", "; ".join(
            f"{g['name']} {g['lr']:.3g} ({sum(p.numel() for p in g['params']):,} values)"
            for g in self.optimizer.param_groups))

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) and SIGTERM only note a stop request while the block runs."""
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread (e.g. inside some test runners): keep default handling
                pass
        try:
            yield
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _request_stop(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal handler signature
        self.stop_signal = signum

    def fit(self, until: int | None = None) -> TrainState:
        """Trains until ``train.iterations`` (or only up to step ``until``, saving latest.pth there, as if the
        run had been stopped); saves latest.pth (and best.pth) on the way and at the end.

        Ctrl-C (SIGINT) or SIGTERM stops after the current step and saves latest.pth, so ``--resume`` continues.
        """
        t = self.cfg.train
        self._start_run()
        self._log_start()
        last = t.iterations if until is None else min(until, t.iterations)
        # Redirected to a file (nohup, a cluster job), a bar redrawn every second fills the log: once a minute.
        self.bar = tqdm(total=t.iterations, initial=self.state.step, disable=not self.progress, dynamic_ncols=True,
                        desc="train", mininterval=1.0 if sys.stderr.isatty() else 60.0)
        self.log_tic = time.perf_counter()
        try:
            with self._stop_signals(), cudnn_benchmark(self.device.type == "cuda"):
                self._run(last)
        except MattingError as exc:  # the command line prints it; train.log must say why the run ended too
            self.log.error("error: %s", exc, extra=FILE_ONLY)
            raise
        except Exception:
            self.log.exception("crashed at step %d", self.state.step, extra=FILE_ONLY)
            raise
        finally:
            self.bar.close()
            self.board.close()
        self.log.info("done: %d steps; %s", self.state.step, self._latest_text().removeprefix("last good "))
        return self.state

    def _run(self, last: int) -> None:
        """The steps up to ``last``: batch, step, what is due after it."""
        batches = self._batches()
        try:
            while self.state.step < last:
                batch = self._next_batch(batches)
                _, _, pred = self.train_step(batch)
                self.state.step += 1
                self.bar.update(1)
                self._after_step(batch, pred, last)
        finally:
            batches.close()  # ends the loader's persistent workers
