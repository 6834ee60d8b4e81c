"""The training loop shared by EDM, CD and CT: Adam with warm-up, gradient clipping, a slow EMA
for the released weights, per-step seeded randomness (so a resumed run draws what an unbroken run
would), periodic resumable checkpoints and a tqdm bar with loss and images/s.

:func:`run_training` hands ``--rng position`` runs (the default) to :mod:`cm_core.train.engine`; the
single-process ``--rng step`` loop here is kept only to reproduce the shipped embedded models
bit-exactly (``checkpoints/embedded/TRAINING.md``)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ..accel.distributed import rank_world
from ..models.checkpoints import pick_device
from ..models.denoiser import Denoiser
from .common import Objective, StepLog, build_model, ema_decay, learning_rate, make_objective
from .config import TrainConfig
from .data import ImageDataset, load_dataset
from .rng import StepRng
from .state import (
    MODEL_FILE,
    ema_update,
    frozen_copy,
    load_state,
    save_model,
    save_state,
    stored_config,
)


def _epoch_of(step: int, cfg: TrainConfig, ds: ImageDataset) -> int:
    return step * cfg.batch_size // max(len(ds), 1)


#: what a resumed run takes from its command; none of them changes the result
RESUME_MAY_CHANGE = ("steps", "device", "threads", "save_every", "sample_every", "out", "workers", "grad_accum")


def _prepare(cfg: TrainConfig, resume: bool) -> TrainConfig:
    """Resuming takes the stored config, but for the fields of :data:`RESUME_MAY_CHANGE`."""
    stored = stored_config(Path(cfg.out)) if resume else None
    if stored is None:
        cfg.check()
        return cfg
    return replace(stored, **{name: getattr(cfg, name) for name in RESUME_MAY_CHANGE})


def ignored_on_resume(out: Path, given: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    """The settings in ``given`` (field name: value, as a command passed them) that a resumed run
    in ``out`` will not use, because its stored config has another value: {name: (given,
    stored)}. Empty when ``out`` holds no resumable run."""
    stored = stored_config(out)
    if stored is None:
        return {}
    def same(a: object, b: object) -> bool:  # JSON gives lists where a config holds tuples
        return tuple(a) == tuple(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b
    return {name: (value, getattr(stored, name)) for name, value in given.items()
            if name not in RESUME_MAY_CHANGE and hasattr(stored, name) and not same(value, getattr(stored, name))}


def train_step(model: Denoiser, objective: Objective, opt: torch.optim.Optimizer,
               ds: ImageDataset, cfg: TrainConfig, step: int, device: torch.device) -> float:
    """One optimisation step; all randomness from a generator seeded by ``(seed, step)``."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    x, labels = ds.batch(cfg.batch_size, g)
    rng = StepRng(g, cfg.batch_size)
    x = x.to(device)
    labels = labels.to(device) if (labels is not None and cfg.class_cond) else None
    for group in opt.param_groups:
        group["lr"] = learning_rate(step, cfg)
    loss = objective.loss(model, x, labels, rng, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    objective.after_step(model, step)
    return float(loss.detach())


def _checkpoint(out: Path, cfg: TrainConfig, step: int, model: Denoiser, ema: torch.nn.Module,
                objective: Objective, opt: torch.optim.Optimizer, seconds: float) -> None:
    save_model(out / MODEL_FILE, ema.net, cfg, step, {"train_seconds": f"{seconds:.1f}"})
    save_state(out, cfg, step, {"online": model, "ema": ema, **objective.extra}, opt)


def run_training(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` into ``cfg.out`` (resuming from its state file when ``resume``).

    Returns ``{"step", "losses" (per step), "seconds", "model"}``; writes ``model.safetensors``,
    ``state.safetensors`` and ``log.csv`` (step, loss, lr, images/s).
    """
    cfg = _prepare(cfg, resume)
    if cfg.rng == "position":
        from .engine import run_parallel
        return run_parallel(cfg, resume, progress)
    if rank_world()[1] > 1:
        raise ValueError("this run uses the legacy --rng step (one generator per step), which "
                         "cannot be split across processes; start a new run with --rng position")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.data, cfg.image_size, cfg.seed)
    cfg.class_cond = cfg.class_cond and ds.labels is not None
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, device)
    objective = make_objective(cfg, model, device)
    ema = frozen_copy(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = 0
    if resume and (out / "state.safetensors").is_file():
        start = load_state(out, {"online": model, "ema": ema, **objective.extra}, opt, device)
    losses = _loop(model, objective, opt, ema, ds, cfg, start, device, out, progress)
    return {"step": cfg.steps, "losses": losses, "model": str(out / MODEL_FILE)}


def _loop(model: Denoiser, objective: Objective, opt: torch.optim.Optimizer, ema: torch.nn.Module,
          ds: ImageDataset, cfg: TrainConfig, start: int, device: torch.device, out: Path,
          progress: bool) -> list[float]:
    """Steps ``start .. cfg.steps - 1`` with logging and checkpoints."""
    epoch = _epoch_of(start, cfg, ds)
    ds.recolor(epoch)
    log = StepLog(cfg, out, start, progress)
    for step in log:
        if _epoch_of(step, cfg, ds) != epoch:
            epoch = _epoch_of(step, cfg, ds)
            ds.recolor(epoch)
        loss = train_step(model, objective, opt, ds, cfg, step, device)
        ema_update(ema, model, ema_decay(step, cfg))
        now = log.record(step, loss, objective)
        if log.checkpoint_due(step):
            _checkpoint(out, cfg, step + 1, model, ema, objective, opt, now - log.t0)
    log.close()
    return log.losses
