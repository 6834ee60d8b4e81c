"""Training state: EMA copies and resumable safetensors checkpoints.

A run directory holds ``model.safetensors`` (the slow-EMA weights, loadable with
``cm_core.load_denoiser(path)``; metadata: arch, kind, ``training_config`` JSON, ``step``) and
``state.safetensors`` (online, EMA and target weights plus the Adam moments, to resume).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.checkpoints import arch_meta, read_safetensors
from .config import TrainConfig

MODEL_FILE, STATE_FILE = "model.safetensors", "state.safetensors"


def frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A gradient-free deep copy (for EMA and target networks)."""
    return copy.deepcopy(net).requires_grad_(False).eval()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` (paper Alg. 2/3, line 'theta^-')."""
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)


def _cpu(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    """Write ``path.tmp``, flush it to disk, then rename it over ``path`` (atomic on POSIX and
    Windows): a process killed at any point leaves either the old or the new file, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_model(path: Path, net: torch.nn.Module, cfg: TrainConfig, step: int,
               extra_meta: dict[str, str] | None = None) -> None:
    """The release file: ``net``'s state_dict with arch/kind/config metadata."""
    meta = {**arch_meta(cfg.arch(), cfg.kind), "training_config": cfg.to_json(),
            "step": str(step), **(extra_meta or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(_cpu(net.state_dict()), path, meta)


def save_state(out: Path, cfg: TrainConfig, step: int, nets: dict[str, torch.nn.Module],
               opt: torch.optim.Optimizer, extra_meta: dict[str, str] | None = None) -> None:
    """Everything needed to resume after ``step`` completed steps (``extra_meta``: e.g. the
    fp16 grad-scaler state)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        tensors.update(_cpu(net.state_dict(), f"{name}."))
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v, dtype=torch.float32).reshape(-1).clone() \
                if k == "step" else v.detach().cpu().contiguous()
    _atomic_save(tensors, out / STATE_FILE, {"training_config": cfg.to_json(), "step": str(step),
                                             **(extra_meta or {})})


def load_state(out: Path, nets: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
               device: torch.device) -> int:
    """Restore ``nets`` and ``opt`` from ``out/state.safetensors``; returns the completed step."""
    path = out / STATE_FILE
    tensors, meta = read_safetensors(path)
    for name, net in nets.items():
        net.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items()
                             if k.startswith(name + ".")})
    sd = opt.state_dict()
    for i in range(len(sd["param_groups"][0]["params"])):
        if f"opt.{i}.exp_avg" in tensors:
            sd["state"][i] = {k: tensors[f"opt.{i}.{k}"].to(device) if k != "step"
                              else tensors[f"opt.{i}.{k}"].reshape(()).clone()
                              for k in ("step", "exp_avg", "exp_avg_sq")}
    opt.load_state_dict(sd)
    return int(meta["step"])


def state_meta(out: Path) -> dict[str, str]:
    """The metadata of ``out/state.safetensors`` (config JSON, step, scaler state), read without
    loading the tensors."""
    from safetensors import safe_open
    with safe_open(str(out / STATE_FILE), framework="pt") as f:
        return dict(f.metadata() or {})


def stored_config(out: Path) -> TrainConfig | None:
    """The config saved in ``out/state.safetensors``, if a resumable run is there."""
    path = out / STATE_FILE
    if not path.is_file():
        return None
    meta = state_meta(out)
    return TrainConfig.from_json(meta["training_config"])
