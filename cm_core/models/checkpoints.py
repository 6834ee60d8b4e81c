"""Checkpoints: resolve a name or path, verify, convert, load into a :class:`Denoiser`.

Sources, all through :func:`load_denoiser`:
- a registry name (``cd_imagenet64_lpips``): the original ``.pt`` in the checkpoint directory
  (``$CM_CHECKPOINT_DIR``, default ``checkpoints/``), else its ``openai/diffusers-*`` Hub repo if it
  is in the local Hugging Face cache; embedded models load from ``checkpoints/embedded/``;
- an original ``.pt`` (``torch.save(model.state_dict())``), read with ``torch.load(weights_only=True)``
  so no pickled code ever runs, converted once and cached as ``<file>.diffusers.safetensors``;
- a ``.safetensors`` with original or diffusers keys (our own files carry arch and kind metadata);
- a diffusers folder (``save_pretrained``; a pipeline folder with ``unet/`` too) or a Hub repo id.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file, save_file

from .denoiser import Denoiser
from .network import build_unet, convert_state_dict, install_seeded_dropout, load_converted
from .registry import EMBEDDED_DIR, REGISTRY, ArchSpec, DataFile, ModelSpec, get_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_CMD = "bash checkpoints/fetch_checkpoints.sh"
# What a load of an ``openai/diffusers-*`` snapshot needs: the configs and one weights format.
HUB_CONFIGS = ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json")
HUB_WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit its architecture."""


def checkpoint_dir() -> Path:
    """Where original ``.pt`` files live: ``$CM_CHECKPOINT_DIR`` or ``<repo>/checkpoints``."""
    return Path(os.environ.get("CM_CHECKPOINT_DIR", REPO_ROOT / "checkpoints"))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else MPS, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def local_path(spec: ModelSpec | DataFile) -> Path:
    """Where the file of ``spec`` (a model, or a reference batch or the Inception weights) is or
    would be on disk."""
    if isinstance(spec, ModelSpec) and spec.embedded:
        return Path(os.environ.get("CM_EMBEDDED_DIR", EMBEDDED_DIR)) / str(spec.filename)
    return checkpoint_dir() / str(spec.filename)


def is_available(spec: ModelSpec) -> bool:
    """Whether the model can load without a download (file on disk or Hub repo in the local cache)."""
    return local_path(spec).is_file() or _hub_cached(spec.hub_repo) is not None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, spec: ModelSpec | DataFile) -> None:
    """Check size and sha256 (or the sha256 prefix a file name carries) where the registry records them."""
    again = spec.fetch_command if isinstance(spec, DataFile) else f"{FETCH_CMD} {spec.name}"
    if spec.size_bytes is not None and path.stat().st_size != spec.size_bytes:
        raise CheckpointError(f"{path}: size {path.stat().st_size} bytes, expected {spec.size_bytes}; "
                              f"the file is truncated or wrong: delete it and run {again}")
    want = spec.sha256 or (spec.sha256_prefix if isinstance(spec, DataFile) else None)
    if want is not None and not sha256_file(path).startswith(want):
        raise CheckpointError(f"{path}: sha256 mismatch; delete it and run {again}")


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (some errors, e.g. EOFError, have an empty message)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def read_original(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an original ``.pt``, refusing anything that would unpickle code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: refused to load: the file contains pickled objects other than "
                              f"tensors (it could run code); only plain state_dict files are accepted "
                              f"({first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (empty, truncated or corrupt: "
                              f"{first_line(e)}); re-download it with {FETCH_CMD}") from None
    for key in ("state_dict", "model", "ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict of tensors, got {type(obj).__name__}")
    return obj


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file, with a clear error when it is damaged."""
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorsError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated, corrupt or a header "
                              f"that lies about sizes): {str(e)[:200]}; re-create or re-download it") from None


def _cache_path(src: Path) -> Path:
    target = src.with_name(src.name + ".diffusers.safetensors")
    if os.access(src.parent, os.W_OK):
        return target
    cache = Path(os.environ.get("CM_CACHE_DIR", Path.home() / ".cache" / "cm-studio"))
    return cache / (hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:12] + "-" + target.name)


def arch_meta(arch: ArchSpec, kind: str) -> dict[str, str]:
    """safetensors metadata that makes a file self-describing."""
    from dataclasses import asdict
    return {"format": "cm-studio", "cm_arch": json.dumps(asdict(arch)), "cm_kind": kind}


def arch_from_meta(meta: dict[str, str]) -> ArchSpec | None:
    if "cm_arch" not in meta:
        return None
    d = json.loads(meta["cm_arch"])
    return ArchSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def converted_weights(src: Path, arch: ArchSpec, kind: str) -> dict[str, torch.Tensor]:
    """diffusers-keyed weights of an original ``.pt``, converted once and cached as safetensors."""
    cache = _cache_path(src)
    stamp = f"{src.stat().st_size}:{src.stat().st_mtime_ns}"
    if cache.is_file():
        try:
            sd, meta = read_safetensors(cache)
            if meta.get("source_stamp") == stamp:
                return sd
        except CheckpointError:
            pass
    sd = convert_state_dict(read_original(src), arch)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp),
                  metadata={**arch_meta(arch, kind), "source_stamp": stamp})
        os.replace(tmp, cache)
    except OSError:
        pass  # read-only everywhere: convert again next time
    return sd


def hub_complete(folder: Path) -> bool:
    """Whether a diffusers pipeline snapshot has everything a load needs (configs and weights):
    a snapshot whose fetch was cut off midway lacks some, and does not count as on disk."""
    return (all((folder / f).is_file() for f in HUB_CONFIGS[1:])
            and any((folder / w).is_file() for w in HUB_WEIGHTS))


def _hub_cached(repo: str | None) -> Path | None:
    if not repo:
        return None
    try:
        from huggingface_hub import snapshot_download
        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache, or hub unavailable
        return None
    return path if hub_complete(path) else None


def _as_arch(arch: ArchSpec | dict | None) -> ArchSpec | None:
    if arch is None or isinstance(arch, ArchSpec):
        return arch
    return ArchSpec.from_flags(arch)


def _diffusers_net(folder: Path) -> tuple[torch.nn.Module, dict]:
    """A ``UNet2DModel`` from a diffusers folder (model or pipeline) and the scheduler config."""
    from diffusers import UNet2DModel
    sub = "unet" if (folder / "unet" / "config.json").is_file() else None
    if not (folder / (sub or ".") / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a diffusers model folder (no config.json or unet/config.json)")
    try:
        net = UNet2DModel.from_pretrained(str(folder), subfolder=sub)
    except Exception as e:  # noqa: BLE001 - diffusers raises many kinds
        raise CheckpointError(f"{folder}: could not load the diffusers UNet: {str(e)[:300]}") from None
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
    return net, sched


def _from_diffusers(folder: Path, kind: str | None, name: str) -> Denoiser:
    net, sched = _diffusers_net(folder)
    cfg = net.config
    install_seeded_dropout(net)
    return Denoiser(net.eval(), kind=kind or "cm", sigma_min=float(sched.get("sigma_min", 0.002)),
                    sigma_max=float(sched.get("sigma_max", 80.0)),
                    sigma_data=float(sched.get("sigma_data", 0.5)),
                    num_classes=cfg.num_class_embeds, image_size=cfg.sample_size, name=name)


def _weights_for(path: Path, arch: ArchSpec | None, kind: str | None
                 ) -> tuple[dict[str, torch.Tensor], ArchSpec, str]:
    """Runtime (diffusers-keyed) weights, arch and kind of a ``.pt`` or ``.safetensors`` file."""
    if path.suffix == ".safetensors":
        sd, meta = read_safetensors(path)
        arch = arch or arch_from_meta(meta)
        kind = kind or meta.get("cm_kind")
        if arch is None:
            raise CheckpointError(f"{path}: no architecture recorded in the file; pass arch=<flags>")
        if any(k.startswith(("input_blocks.", "middle_block.")) for k in sd):
            sd = _convert(sd, arch, path)
        return sd, arch, kind or "cm"
    if arch is None:
        raise CheckpointError(f"{path}: an original .pt does not record its architecture: pass arch=<flags> "
                              f"or name the file after a registry model ({', '.join(REGISTRY)})")
    try:
        return converted_weights(path, arch, kind or "cm"), arch, kind or "cm"
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _convert(sd: dict[str, torch.Tensor], arch: ArchSpec, path: Path) -> dict[str, torch.Tensor]:
    try:
        return convert_state_dict(sd, arch)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _spec_for_path(path: Path) -> ModelSpec | None:
    stem = path.name.split(".")[0]
    return REGISTRY.get(stem)


def _missing(spec: ModelSpec) -> CheckpointError:
    where = local_path(spec)
    hub = f" or its Hub repo {spec.hub_repo}" if spec.hub_repo else ""
    return CheckpointError(f"model {spec.name!r} is not on disk (looked for {where}{hub}); "
                           f"fetch it with: {FETCH_CMD} {spec.name}")


def resolve(source: str | os.PathLike) -> tuple[Path | None, ModelSpec | None, str | None]:
    """(local path, registry spec, Hub repo id) for a name, a path or a repo id."""
    src = str(source)
    if src in REGISTRY:
        spec = get_spec(src)
        path = local_path(spec)
        if path.is_file():
            return path, spec, None
        cached = _hub_cached(spec.hub_repo)
        if cached is not None:
            return cached, spec, spec.hub_repo
        raise _missing(spec)
    path = Path(src).expanduser()
    if path.exists():
        return path, _spec_for_path(path), None
    if src.count("/") == 1 and not src.startswith((".", "/")):
        return None, None, src
    raise CheckpointError(f"{src!r} is neither a registry model ({', '.join(REGISTRY)}), "
                          "an existing file or folder, nor a Hub repo id (owner/name)")


def _hub_download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo, allow_patterns=["*.json", "unet/*", "*.safetensors"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth...
        raise CheckpointError(f"could not get Hub repo {repo!r}: {first_line(e)} "
                              "(offline? set HF_HUB_OFFLINE=0 and check the network, or pass a local path)") from None


def load_denoiser(source: str | os.PathLike, arch: ArchSpec | dict | None = None,
                  kind: str | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype = torch.float32, dropout: float = 0.0) -> Denoiser:
    """Load a consistency model or EDM teacher as a :class:`Denoiser` (eval mode).

    ``source``: registry name, ``.pt`` / ``.safetensors`` path, diffusers folder or Hub repo id.
    ``arch``: original flags (dict) or :class:`ArchSpec`; taken from the registry or the file's
    metadata when omitted. ``kind``: ``"cm"`` or ``"edm"``. ``device``: default CUDA > MPS > CPU.
    """
    path, spec, repo = resolve(source)
    arch = _as_arch(arch) or (spec.arch if spec else None)
    kind = kind or (spec.kind if spec else None)
    name = spec.name if spec else str(source)
    if spec is not None and path is not None and path.is_file():
        verify(path, spec)
    if repo is not None and path is None:
        path = _hub_download(repo)
    assert path is not None
    if path.is_dir():
        den = _from_diffusers(path, kind, name)
    else:
        sd, arch, kind = _weights_for(path, arch, kind)
        net = build_unet(arch)
        try:
            load_converted(net, sd, str(path))
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        den = Denoiser(net, kind=kind, sigma_min=spec.sigma_min if spec else 0.002,  # type: ignore[arg-type]
                       sigma_max=spec.sigma_max if spec else 80.0,
                       sigma_data=spec.sigma_data if spec else 0.5,
                       num_classes=arch.num_classes if arch.class_cond else None,
                       image_size=arch.image_size, name=name)
    den.dropout = dropout
    return den.to(device=pick_device(device), dtype=dtype).eval()
