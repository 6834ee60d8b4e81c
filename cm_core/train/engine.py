"""The data-parallel training loop (``rng="position"``), one process or many under ``torchrun``.

``cfg.batch_size`` is the global batch ``B``: each of ``W`` ranks computes ``B / W`` samples in
``grad_accum`` micro-batches of ``m``. The micro-batch loss is ``mean(d_j) * m W / B``, so DDP's
gradient average is the gradient of the global mean over ``B``. All randomness is per position
(:mod:`.rng`), so a run does not depend on ``W``, ``grad_accum`` or the loader's worker count up
to float reduction order. Rank 0 alone writes checkpoints and the log.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from ..accel.distributed import init_group, local_device, rank_world
from ..models.checkpoints import pick_device
from ..models.denoiser import Denoiser
from .common import Objective, StepLog, build_model, ema_decay, learning_rate, make_objective
from .config import TrainConfig
from .dropout import install_train_dropout, position_dropout
from .loader import PositionDataset, StepBatches, make_loader
from .parallel import barrier, broadcast_state, sum_across, wrap_ddp
from .rng import PositionRng
from .sources import open_source
from .state import (
    MODEL_FILE,
    STATE_FILE,
    ema_update,
    frozen_copy,
    load_state,
    save_model,
    save_state,
    state_meta,
)
from .watch import Watch


class Trainer:
    """Networks, optimizer, scaler and data of one run (see module docstring)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.rank, self.world = rank_world()
        self.device = local_device(pick_device(cfg.device))
        init_group(self.device)
        self.source = open_source(cfg.data, cfg.image_size, cfg.seed)
        _match_classes(cfg, self.source.num_classes)
        self.cfg, self.out = cfg, Path(cfg.out)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.device)
        install_train_dropout(self.model.net, cfg.dropout)
        self.objective: Objective = make_objective(cfg, self.model, self.device)
        self.ema = frozen_copy(self.model)
        self.emas = [frozen_copy(self.model) for _ in cfg.ema_rate_list()]
        if cfg.grad_checkpoint:
            self.model.net.enable_gradient_checkpointing()
        self.opt = _optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 20, growth_interval=1000,
                                           enabled=cfg.precision == "fp16")
        self.grad_norm = 0.0  # of the last step, before clipping
        self.nets = {"online": self.model, "ema": self.ema,
                     **{f"ema_{i}": e for i, e in enumerate(self.emas)}, **self.objective.extra}

    def resume(self) -> int:
        """Load ``out/state.safetensors`` on rank 0 and broadcast it; returns the completed step."""
        extra: dict[str, Any] = {"step": 0, "scaler": None}
        if self.rank == 0 and (self.out / STATE_FILE).is_file():
            extra["step"] = load_state(self.out, self.nets, self.opt, self.device)
            if "scaler_scale" in (meta := state_meta(self.out)):
                extra["scaler"] = (float(meta["scaler_scale"]), int(meta["scaler_growth"]))
        extra = broadcast_state(self.nets, self.opt, extra)
        if extra["scaler"] is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": extra["scaler"][0],
                                         "_growth_tracker": extra["scaler"][1]})
        return int(extra["step"])

    def checkpoint(self, step: int, seconds: float) -> None:
        """Rank 0: the released EMA file, one file per extra EMA rate, and the resumable state."""
        if self.rank != 0:
            return
        cfg, meta = self.cfg, {"train_seconds": f"{seconds:.1f}"}
        save_model(self.out / MODEL_FILE, self.ema.net, cfg, step, meta)
        for rate, e in zip(cfg.ema_rate_list(), self.emas):
            save_model(self.out / f"ema_{rate}.safetensors", e.net, cfg, step, meta)
        scaler = {}
        if self.scaler.is_enabled():
            sd = self.scaler.state_dict()
            scaler = {"scaler_scale": repr(float(sd["scale"])), "scaler_growth": str(sd["_growth_tracker"])}
        save_state(self.out, cfg, step, self.nets, self.opt, scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def step(self, ddp: torch.nn.Module, micro: list, step: int) -> float:
        """One optimisation step over this rank's micro-batches; returns the global mean loss."""
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for a, (x, labels, pos) in enumerate(micro):
            x = x.to(self.device, non_blocking=True)
            labels = labels.to(self.device) if cfg.class_cond else None
            sync = a == len(micro) - 1 or not hasattr(ddp, "no_sync")
            # the dropout keys stay set through backward: checkpointed blocks rerun the forward there
            with contextlib.nullcontext() if sync else ddp.no_sync(), \
                    position_dropout(self.model.net, cfg.seed, pos):
                with self.autocast():
                    mean = self.objective.loss(ddp, x, labels, PositionRng(cfg.seed, pos), step)
                self.scaler.scale(mean.float() * (len(pos) * self.world / cfg.batch_size)).backward()
            total += mean.detach().double() * len(pos)
        return self._apply(step, float(sum_across(total)) / cfg.batch_size)

    def _apply(self, step: int, loss: float) -> float:
        """Unscale, clip, step, and update the target and EMA networks (skipped on fp16 overflow)."""
        cfg = self.cfg
        self.scaler.unscale_(self.opt)
        # the norm is taken in every run (an infinite bound scales the gradients by exactly 1)
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
        before = self.scaler.get_scale() if self.scaler.is_enabled() else 0.0
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.scaler.is_enabled() and self.scaler.get_scale() < before:
            return loss  # inf/nan gradients: the step was skipped, as the original does
        self.objective.after_step(self.model, step)
        ema_update(self.ema, self.model, ema_decay(step, cfg) if cfg.ema_warmup else cfg.ema)
        for rate, e in zip(cfg.ema_rate_list(), self.emas):
            ema_update(e, self.model, rate)
        return loss


def _match_classes(cfg: TrainConfig, data_classes: int | None) -> None:
    """Class-conditional only with labelled data; labels must fit the model's class embedding."""
    cfg.class_cond = cfg.class_cond and data_classes is not None
    if cfg.class_cond and data_classes > cfg.num_classes:  # type: ignore[operator]
        raise ValueError(f"the data has {data_classes} classes but the model {cfg.num_classes}; "
                         f"pass --num-classes {data_classes}")


def _optimizer(cfg: TrainConfig, model: Denoiser) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[cfg.optimizer]
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def run_parallel(cfg: TrainConfig, resume: bool, progress: bool) -> dict:
    """Train ``cfg`` (already prepared for resuming) on this process's share; see
    :func:`cm_core.train.loop.run_training`."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tr = Trainer(cfg)
    if tr.rank == 0:
        tr.out.mkdir(parents=True, exist_ok=True)
    start = tr.resume() if resume else 0
    ddp = wrap_ddp(tr.model, tr.device)
    ds = PositionDataset(tr.source, cfg.seed)
    loader = make_loader(ds, StepBatches(start, cfg.steps, cfg.batch_size, tr.world, tr.rank,
                                         cfg.grad_accum), cfg.workers, tr.device.type == "cuda")
    losses = _loop(tr, ddp, iter(loader), start, progress and tr.rank == 0)
    barrier()
    return {"step": cfg.steps, "losses": losses, "model": str(tr.out / MODEL_FILE)}


def _loop(tr: Trainer, ddp: torch.nn.Module, batches, start: int, progress: bool) -> list[float]:
    cfg = tr.cfg
    log = StepLog(cfg, tr.out, start, progress, write=tr.rank == 0, desc=f"train {cfg.method} x{tr.world}")
    watch = Watch(cfg, tr.out, start, enabled=tr.rank == 0)
    for step in log:
        loss = tr.step(ddp, [next(batches) for _ in range(cfg.grad_accum)], step)
        now = log.record(step, loss, tr.objective)
        watch.scalars(step, {"train/loss": loss, "train/lr": learning_rate(step, cfg),
                             "train/grad_norm": tr.grad_norm, "train/images_per_s": log.images_per_s,
                             **{f"curriculum/{k}": v for k, v in log.curriculum.items()}})
        if watch.samples_due(step):
            watch.samples(step, tr.ema)
        if log.checkpoint_due(step):
            tr.checkpoint(step + 1, now - log.t0)
            watch.flush()
    log.close()
    watch.close()
    return log.losses
