"""The app-facing layer: a bounded model cache, the model table, and request functions.

Everything the Gradio app (``app.py``) computes goes through here, so the UI stays a thin shell
and every behaviour is testable without a browser. Request functions validate their parameters
and raise ``ValueError`` (or :class:`~cm_core.checkpoints.CheckpointError` /
:class:`~cm_core.registry.UnknownModelError`, both of which the app also shows as messages) with
a sentence a user can act on; they return PIL images and timings.

Environment: ``CM_MODEL_CACHE_SIZE`` (models kept loaded, default 2), ``CM_DEVICE`` (default CUDA >
MPS > CPU), ``CM_DTYPE`` (``float32`` default; ``float16``/``bfloat16`` on GPUs), ``CM_MAX_BATCH``
(largest batch per request, default 16), plus those of :mod:`cm_core.checkpoints`.
"""
from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .checkpoints import FETCH_CMD, CheckpointError, is_available, load_denoiser, local_path, pick_device
from .denoiser import Denoiser
from .generate import SampleSettings, labels_for, sample_batch, to_uint8
from .imagenet_classes import imagenet_class_index, imagenet_class_names
from .registry import DEFAULT_MODEL, IMAGENET64, LSUN256, REGISTRY, ModelSpec, get_spec
from .schedule import validate_ts

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], description)
USER_ERRORS = (ValueError, CheckpointError)  # UnknownModelError is a ValueError

# Parameter counts of the released architectures (float32 files are ~4 bytes per parameter).
_PARAMS = {IMAGENET64: 295_899_267, LSUN256: 526_304_771}
MAX_SEED = 2 ** 63 - 1
MAX_HEUN_STEPS = 200
MAX_TS_STEPS = 200  # network evaluations per image with explicit ts (the largest released grid has 201 points)


def default_model() -> str:
    """``$CM_DEFAULT_MODEL`` or the registry default (the embedded digits model)."""
    name = os.environ.get("CM_DEFAULT_MODEL", "").strip() or DEFAULT_MODEL
    get_spec(name)  # unknown name: a clear error at start-up
    return name


def max_batch() -> int:
    return max(1, int(os.environ.get("CM_MAX_BATCH", "16")))


# --------------------------------------------------------------------------- model cache
def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free_cuda_memory(device: torch.device) -> int | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


class ModelCache:
    """A bounded LRU of loaded :class:`Denoiser` s, aware of GPU memory.

    - at most ``capacity`` models (``$CM_MODEL_CACHE_SIZE``, default 2); the least recently used
      is evicted first;
    - before a load on CUDA, models are evicted until the free memory fits the new one (its file
      size, times a margin);
    - a CUDA out-of-memory error during a load or a run evicts every other model, empties the CUDA
      cache and retries once;
    - a load that fails is not cached (the next call tries again, e.g. after a fetch).
    """

    def __init__(self, capacity: int | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None,
                 loader: Callable[..., Denoiser] | None = None,
                 free_memory: Callable[[torch.device], int | None] = _free_cuda_memory) -> None:
        cap = capacity if capacity is not None else int(os.environ.get("CM_MODEL_CACHE_SIZE", "2"))
        if cap < 1:
            raise ValueError(f"CM_MODEL_CACHE_SIZE must be >= 1, got {cap}")
        self.capacity = cap
        self.device = pick_device(device or os.environ.get("CM_DEVICE") or None)
        self.dtype = dtype or _env_dtype(self.device)
        self._loader = loader or load_denoiser
        self._free_memory = free_memory
        self._models: OrderedDict[str, Denoiser] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # number of actual loads (for tests and the info line)

    def names(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._models)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
        self._empty_cuda()

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop every model but ``keep``; returns the evicted names."""
        with self._lock:
            gone = [n for n in self._models if n != keep]
            for n in gone:
                del self._models[n]
        self._empty_cuda()
        return gone

    def _empty_cuda(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _evict_oldest(self) -> None:
        name, _ = self._models.popitem(last=False)
        del _
        self._empty_cuda()

    def _make_room(self, spec: ModelSpec) -> None:
        while len(self._models) >= self.capacity:
            self._evict_oldest()
        free = self._free_memory(self.device)
        if free is None:
            return
        need = int(1.5 * (model_bytes(spec, on_disk_only=False) or 0)) or 1
        while self._models and free < need:
            self._evict_oldest()
            free = self._free_memory(self.device) or 0

    def get(self, name: str) -> tuple[ModelSpec, Denoiser]:
        """The spec and loaded denoiser of registry model ``name`` (loading it if needed)."""
        spec = get_spec(name)
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return spec, self._models[name]
            self._make_room(spec)
            try:
                den = self._load(spec)
            except Exception as e:  # noqa: BLE001 - OOM is retried once after evicting all
                if not _is_oom(e):
                    raise
                self.evict()
                den = self._load(spec)
            self._models[name] = den
            return spec, den

    def _load(self, spec: ModelSpec) -> Denoiser:
        den = self._loader(spec.name, device=self.device, dtype=self.dtype)
        self.loads += 1
        return den

    def run(self, name: str, fn: Callable[[ModelSpec, Denoiser], Any]) -> Any:
        """``fn(spec, den)``; on CUDA out-of-memory, evict the other models and retry once."""
        spec, den = self.get(name)
        try:
            return fn(spec, den)
        except Exception as e:  # noqa: BLE001
            if not _is_oom(e):
                raise
            self.evict(keep=name)
            try:
                return fn(spec, den)
            except Exception as e2:  # noqa: BLE001
                if _is_oom(e2):
                    self._empty_cuda()  # give the failed attempt's blocks back before the next request
                    raise ValueError(f"out of GPU memory running {name}: use a smaller batch size") from None
                raise


def _env_dtype(device: torch.device) -> torch.dtype:
    name = os.environ.get("CM_DTYPE", "float32")
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"CM_DTYPE must be float32, float16 or bfloat16, got {name!r}")
    return dt if device.type != "cpu" else torch.float32


_CACHE: ModelCache | None = None
_CACHE_LOCK = threading.Lock()


def cache() -> ModelCache:
    """The process-wide model cache (created on first use)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ModelCache()
        return _CACHE


def warm_up(name: str | None = None) -> float:
    """Load ``name`` (the default model) and run one tiny sample; returns the seconds it took."""
    t0 = time.perf_counter()
    generate(GenerateRequest(model=name or default_model(), batch_size=1))
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- model table
def model_bytes(spec: ModelSpec, on_disk_only: bool = True) -> int | None:
    """Size of the model's file when on disk, else the registry's size or an estimate."""
    path = local_path(spec)
    if path.is_file():
        return path.stat().st_size
    if on_disk_only:
        return None
    if spec.size_bytes:
        return spec.size_bytes
    params = _PARAMS.get(spec.arch)
    return params * 4 if params else None


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}" if unit == "GB" else f"{n / div:.1f} {unit}"
    return f"{n} B"


def fetch_command(spec: ModelSpec) -> str:
    if spec.embedded:
        return "ships with the repository (checkpoints/embedded); retrain with the script in TRAINING.md"
    return f"{FETCH_CMD} {spec.name}"


TABLE_HEADERS = ["model", "on disk", "size", "kind", "dataset", "resolution", "classes", "default sampling",
                 "how to get it"]


def sampling_summary(spec: ModelSpec) -> str:
    if spec.kind == "edm":
        return f"Heun, {spec.heun_steps} steps ({2 * spec.heun_steps - 1} evaluations)"
    return f"1 step; multistep ts {','.join(map(str, spec.ts))} on {spec.steps}"


def model_rows() -> list[list[Any]]:
    """One row per registry model (released first, then embedded), columns :data:`TABLE_HEADERS`."""
    rows = []
    for spec in REGISTRY.values():
        here = is_available(spec)
        size = model_bytes(spec, on_disk_only=False)
        rows.append([
            spec.name, "yes" if here else "no", ("" if here else "~") + human_size(size) if size else "?",
            spec.method, spec.dataset, f"{spec.resolution}x{spec.resolution}",
            spec.arch.num_classes if spec.class_cond else "unconditional",
            sampling_summary(spec), "" if here else fetch_command(spec),
        ])
    return rows


def model_info(name: str) -> dict[str, Any]:
    """What the UI shows about one model."""
    spec = get_spec(name)
    here = is_available(spec)
    return {
        "name": spec.name, "available": here, "kind": spec.kind, "method": spec.method,
        "dataset": spec.dataset, "resolution": spec.resolution, "class_cond": spec.class_cond,
        "size": human_size(model_bytes(spec, on_disk_only=False)), "path": str(local_path(spec)),
        "fetch_command": None if here else fetch_command(spec), "fetchable": bool(spec.url),
        "steps": spec.steps, "ts": list(spec.ts), "heun_steps": spec.heun_steps, "note": spec.note,
        "loaded": name in cache(),
    }


def model_markdown(name: str) -> str:
    i = model_info(name)
    lines = [f"**{i['name']}**: {i['method']} on {i['dataset']}, {i['resolution']}x{i['resolution']}, "
             f"{'class-conditional' if i['class_cond'] else 'unconditional'}, {i['size']}. "
             f"Default sampling: {sampling_summary(get_spec(name))}."]
    if i["available"]:
        lines.append(f"On disk: `{i['path']}`" + (" (loaded)" if i["loaded"] else ""))
    else:
        lines.append(f"**Not on disk.** Fetch it with `{i['fetch_command']}`"
                     + (" or the button below (needs internet)." if i["fetchable"] else "."))
    if i["note"]:
        lines.append(f"Note: {i['note']}")
    return "\n\n".join(lines)


def fetch_model(name: str, progress: Progress | None = None) -> str:
    """Download a released checkpoint into the checkpoint directory; returns its path."""
    spec = get_spec(name)
    if is_available(spec):
        return str(local_path(spec))
    if not spec.url:
        raise CheckpointError(f"{name} cannot be downloaded: {fetch_command(spec)}")
    from .download import fetch_original

    def on_bytes(done: int, total: int | None) -> None:
        if progress is not None:
            frac = done / total if total else 0.0
            progress(frac, f"{human_size(done)} of {human_size(total)}")
    return str(fetch_original(spec, progress=on_bytes, timeout=20.0))


# --------------------------------------------------------------------------- classes
def class_names(spec: ModelSpec) -> tuple[str, ...]:
    """Human-readable class names of a class-conditional model ((): unconditional)."""
    if not spec.class_cond:
        return ()
    if spec.class_names:
        return spec.class_names
    if spec.arch.num_classes == 1000:
        return imagenet_class_names()
    return tuple(str(i) for i in range(spec.arch.num_classes))


RANDOM_CLASS = "random"


def class_choices(spec: ModelSpec) -> list[str]:
    """Dropdown entries: ``random`` then ``"<index>: <name>"`` ([] for unconditional models)."""
    names = class_names(spec)
    if not names:
        return []
    return [RANDOM_CLASS] + [f"{i}: {n}" if n != str(i) else str(i) for i, n in enumerate(names)]


def parse_class(spec: ModelSpec, value: Any) -> int | None:
    """A class label from ``None``/``"random"``/``-1``, an index (``207``, ``"207"``,
    ``"207: Golden Retriever"``) or a name (``"golden retriever"``); None = random per image."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", RANDOM_CLASS)):
        return None
    names = class_names(spec)
    if not names:
        return None  # unconditional: a class choice has no effect
    n = len(names)
    if isinstance(value, bool):
        raise ValueError(f"class must be an index in [0, {n - 1}] or a name, got {value!r}")
    if isinstance(value, (int, float)):
        if int(value) != value:
            raise ValueError(f"class index must be an integer, got {value}")
        idx = int(value)
    else:
        head = str(value).split(":", 1)[0].strip()
        if head.lstrip("-").isdigit():
            idx = int(head)
        elif n == 1000:
            idx = imagenet_class_index(str(value))
        else:
            matches = [i for i, nm in enumerate(names) if nm.lower() == str(value).strip().lower()]
            if not matches:
                raise ValueError(f"unknown class {value!r} for {spec.name}; use an index in [0, {n - 1}]")
            idx = matches[0]
    if idx == -1:
        return None
    if not 0 <= idx < n:
        raise ValueError(f"class index must be in [0, {n - 1}] for {spec.name} (or 'random'), got {idx}")
    return idx


# --------------------------------------------------------------------------- generation
def parse_ts(text: str | Sequence[int] | None, grid: int) -> tuple[tuple[int, ...] | None, int]:
    """Explicit step indices: ``"0,22,39"`` (on the model's grid) or ``"0,106,200/201"``."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None, grid
    if not isinstance(text, str):
        ts = tuple(int(t) for t in text)
    else:
        body, _, g = text.replace(" ", "").partition("/")
        try:
            ts = tuple(int(t) for t in body.split(",") if t)
            grid = int(g) if g else grid
        except ValueError:
            raise ValueError(f"ts must be comma-separated integers like 0,22,39 (optionally /<grid "
                             f"points>, e.g. 0,106,200/201); got {text!r}") from None
    if len(ts) - 1 > MAX_TS_STEPS:  # a long custom grid would let one request run for hours
        raise ValueError(f"ts has {len(ts) - 1} steps; at most {MAX_TS_STEPS} network evaluations "
                         "per image are allowed")
    validate_ts(ts, grid)
    return ts, grid


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if f != f or f in (float("inf"), float("-inf")):  # int() of these raises an unclear error
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if f != int(f):
        raise ValueError(f"{name} must be an integer, got {value}")
    if not lo <= int(f) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {int(f)}")
    return int(f)


@dataclass(frozen=True)
class GenerateRequest:
    """One generate call: ``batch_size`` images with per-image seeds ``seed, seed+1, ...``.

    ``steps``: consistency-model evaluations (1 = one-step); ``ts``: explicit indices for experts
    (overrides ``steps``); ``heun_steps``: Heun steps for EDM teachers (``2n-1`` evaluations);
    ``class_label``: index, name or ``"random"``; ``None`` values take the registry defaults.
    """

    model: str = DEFAULT_MODEL
    steps: int = 1
    ts: str | None = None
    seed: int = 0
    batch_size: int = 4
    dropout: float = 0.0
    class_label: Any = None
    heun_steps: int | None = None


@dataclass(frozen=True)
class Plan:
    spec: ModelSpec
    settings: SampleSettings
    seeds: tuple[int, ...]
    class_label: int | None
    evaluations: int
    description: str


def plan(req: GenerateRequest) -> Plan:
    """Validate a request into what to run; ``ValueError`` with a clear message otherwise."""
    spec = get_spec(str(req.model))
    n = _int("batch size", req.batch_size, 1, max_batch())
    seed = _int("seed", req.seed, 0, MAX_SEED - n)
    try:
        dropout = float(req.dropout or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"dropout must be a number in [0, 0.9], got {req.dropout!r}") from None
    if not 0.0 <= dropout <= 0.9:
        raise ValueError(f"dropout must be in [0, 0.9], got {dropout}")
    label = parse_class(spec, req.class_label)
    if spec.kind == "edm":
        hs = _int("Heun steps", req.heun_steps if req.heun_steps not in (None, "") else spec.heun_steps,
                  2, MAX_HEUN_STEPS)
        settings = SampleSettings(steps=hs, dropout=dropout)
        evals, desc = 2 * hs - 1, f"Heun sampler, {hs} steps = {2 * hs - 1} network evaluations"
    else:
        ts, grid = parse_ts(req.ts, spec.steps)
        if ts is not None:
            settings = SampleSettings(ts=ts, grid_steps=grid, dropout=dropout)
            evals, desc = len(ts) - 1, f"multistep, ts {','.join(map(str, ts))} on a {grid}-point grid"
        else:
            steps = _int("steps", req.steps if req.steps not in (None, "") else 1, 1, spec.steps - 1)
            settings = SampleSettings(steps=steps, dropout=dropout)
            resolved = settings.resolved_ts(spec)
            evals = steps
            desc = ("one-step generation" if resolved is None else
                    f"{steps}-step, ts {','.join(map(str, resolved[0]))} on a {resolved[1]}-point grid")
    return Plan(spec, settings, tuple(range(seed, seed + n)), label, evals, desc)


@dataclass
class GenerateResult:
    images: list[Image.Image]
    captions: list[str]
    seconds: float
    load_seconds: float
    evaluations: int
    description: str
    batched_with: int = 1  # requests that ran in the same forward batch
    extra: dict = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        s = (f"{len(self.images)} image(s) in {self.seconds:.3f} s = {self.images_per_second:.1f} images/s "
             f"({self.description}; {self.evaluations} network evaluation(s) per image)")
        if self.load_seconds > 0.01:
            s += f"; model loaded in {self.load_seconds:.2f} s"
        if self.batched_with > 1:
            s += f"; batched with {self.batched_with - 1} other request(s)"
        return s


def _progress_callback(progress: Progress | None, total_label: str) -> Callable[[dict], None] | None:
    if progress is None:
        return None

    def cb(d: dict) -> None:
        progress((d["i"] + 1) / d["n"], f"{total_label} {d['i'] + 1}/{d['n']} (sigma {d['sigma']:.3g})")
    return cb


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] NCHW tensor -> RGB PIL images."""
    return [Image.fromarray(a) for a in to_uint8(images)]


def _captions(spec: ModelSpec, seeds: Sequence[int], labels: torch.Tensor | None) -> list[str]:
    names = class_names(spec)
    out = []
    for i, s in enumerate(seeds):
        c = f"seed {s}"
        if labels is not None:
            k = int(labels[i])
            c += f", class {k}" + (f" ({names[k]})" if names and names[k] != str(k) else "")
        out.append(c)
    return out


def _loaded(name: str) -> tuple[ModelSpec, Denoiser, float]:
    t0 = time.perf_counter()
    already = name in cache()
    spec, den = cache().get(name)
    return spec, den, 0.0 if already else time.perf_counter() - t0


def generate(req: GenerateRequest, progress: Progress | None = None) -> GenerateResult:
    """Sample one request (one-step, multistep or Heun for EDM teachers)."""
    return generate_many([req], progress)[0]


def generate_many(reqs: Sequence[GenerateRequest], progress: Progress | None = None
                  ) -> list[GenerateResult]:
    """Sample several requests, running those with the same model and settings as one batch.

    Used for Gradio's ``batch=True``: concurrent requests become one forward pass per group.
    Every request is validated first, so a bad one fails before any work is done.
    """
    plans = [plan(r) for r in reqs]
    groups: OrderedDict[tuple, list[int]] = OrderedDict()
    for i, p in enumerate(plans):
        groups.setdefault((p.spec.name, p.settings), []).append(i)
    results: list[GenerateResult | None] = [None] * len(reqs)
    for (name, settings), idx in groups.items():
        spec, _, load_s = _loaded(name)
        seeds = [s for i in idx for s in plans[i].seeds]
        labels = [labels_for(spec, plans[i].seeds, plans[i].class_label) for i in idx]
        lab = torch.cat(labels) if spec.class_cond else None  # type: ignore[arg-type]
        cb = _progress_callback(progress, "Heun step" if spec.kind == "edm" else "step")

        def run(spec: ModelSpec, den: Denoiser) -> torch.Tensor:
            t = time.perf_counter()
            out = sample_batch(den, spec, seeds, settings, lab, cb)
            if out.is_cuda:
                torch.cuda.synchronize()
            return out, time.perf_counter() - t
        images, secs = cache().run(name, run)
        pil = to_pil(images)
        k = 0
        for i in idx:
            m = len(plans[i].seeds)
            results[i] = GenerateResult(pil[k:k + m], _captions(spec, plans[i].seeds, lab[k:k + m] if lab is not None else None),
                                        secs, load_s, plans[i].evaluations, plans[i].description,
                                        batched_with=len(idx), extra={"seeds": list(plans[i].seeds)})
            k += m
    return results  # type: ignore[return-value]


def teacher_for(name: str) -> str:
    """The EDM teacher trained on the same data as ``name`` (for the side-by-side comparison)."""
    spec = get_spec(name)
    if spec.kind == "edm":
        return spec.name
    for s in REGISTRY.values():
        if s.kind == "edm" and s.dataset == spec.dataset and s.arch.image_size == spec.arch.image_size:
            return s.name
    raise ValueError(f"no EDM teacher in the registry for {name} ({spec.dataset})")


def compare_with_teacher(req: GenerateRequest, progress: Progress | None = None) -> GenerateResult:
    """The same seeds and classes on the EDM teacher of ``req.model``, with its Heun sampler."""
    teacher = teacher_for(str(req.model))
    treq = GenerateRequest(model=teacher, seed=req.seed, batch_size=req.batch_size,
                           dropout=0.0, class_label=req.class_label, heun_steps=req.heun_steps)
    return generate(treq, progress)


def noise_for_seed(spec: ModelSpec, seed: int, device: torch.device | None = None) -> torch.Tensor:
    """The initial noise ``x_T`` [1, 3, R, R] of per-image seed ``seed`` (as in :func:`generate`)."""
    from .sampling import initial_noise, make_generators
    r = spec.resolution
    return initial_noise((1, 3, r, r), make_generators(seed, 1, device or "cpu"), spec.sigma_max,
                         device=device or "cpu")


def image_array(img: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)


# --------------------------------------------------------------------------- app settings
def _env_int(name: str, default: int, lo: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        v = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    return max(lo, v)


def concurrency() -> int:
    """Model-running events at a time (one shared group): ``$CM_CONCURRENCY``, default 1."""
    return _env_int("CM_CONCURRENCY", 1)


def queue_size() -> int:
    """Largest number of waiting requests: ``$CM_QUEUE_SIZE``, default 64."""
    return _env_int("CM_QUEUE_SIZE", 64)


def max_batched_requests() -> int:
    """Concurrent generate requests merged into one batch: ``$CM_BATCH_REQUESTS``, default 8."""
    return _env_int("CM_BATCH_REQUESTS", 8)


def cache_examples() -> bool:
    """Cache the examples' outputs (lazily, on first use): ``$CM_CACHE_EXAMPLES``, default on."""
    return os.environ.get("CM_CACHE_EXAMPLES", "1").lower() not in ("0", "false", "no")


def configure_torch_threads() -> int:
    """Intra-op threads on CPU: ``$CM_TORCH_THREADS``, else half the cores (at most 8).

    Small models gain little from many threads, and on a shared machine a thread per core makes
    every thread wait for the slowest (measured: 2 threads on a busy 2-core VM run the 32 px
    model 2x to 50x slower than 1)."""
    n = _env_int("CM_TORCH_THREADS", max(1, min(8, (os.cpu_count() or 2) // 2)))
    torch.set_num_threads(n)
    return n


def example_files(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """Example inputs for the editing tabs, rendered once from the built-in held-out digits.

    ``digit`` (32 px colour digit), ``big`` (the same at 128 px), ``grey``, ``lowres`` (8 px),
    ``noisy``, ``strokes`` (a flat-colour blocky painting) and ``mask`` (an RGBA layer with the
    right half painted, as the image editor sends it). Written to ``folder`` (default: a
    ``cm-studio-examples`` folder in the temp dir)."""
    import tempfile
    from pathlib import Path

    from .data import load_digits32
    out = Path(folder or Path(tempfile.gettempdir()) / "cm-studio-examples")
    names = ("digit", "big", "grey", "lowres", "noisy", "strokes", "mask")
    files = {n: str(out / f"{n}.png") for n in names}
    if all(Path(f).is_file() for f in files.values()):
        return files
    out.mkdir(parents=True, exist_ok=True)
    ds = load_digits32("heldout")
    x = ds.images[3:4] if hasattr(ds, "images") else ds[3][0][None]
    digit = to_pil(x)[0]
    digit.save(files["digit"])
    digit.resize((128, 128), Image.Resampling.BICUBIC).save(files["big"])
    digit.convert("L").convert("RGB").save(files["grey"])
    digit.resize((8, 8), Image.Resampling.BOX).save(files["lowres"])
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(digit, np.float32) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(files["noisy"])
    digit.resize((6, 6), Image.Resampling.BOX).quantize(3).convert("RGB").resize(
        (32, 32), Image.Resampling.NEAREST).save(files["strokes"])
    mask = np.zeros((32, 32, 4), np.uint8)
    mask[:, 16:] = (255, 0, 255, 255)
    Image.fromarray(mask, "RGBA").save(files["mask"])
    return files


# --------------------------------------------------------------------------- editing
@dataclass
class EditResult:
    input: Image.Image       # the upload as fitted to the model (square, model resolution)
    reference: Image.Image   # what the model was actually constrained to
    output: Image.Image
    seconds: float
    description: str

    def summary(self) -> str:
        return f"{self.description}: {self.seconds:.3f} s"


@dataclass
class InterpolationResult:
    frames: list[Image.Image]
    captions: list[str]
    gif_path: str
    seconds: float
    description: str

    def summary(self) -> str:
        return (f"{len(self.frames)} frames in {self.seconds:.3f} s = "
                f"{len(self.frames) / max(self.seconds, 1e-9):.1f} frames/s ({self.description})")


def _editor_image(value: Any, what: str) -> Any:
    """The picture of an upload or of a Gradio ImageEditor value (its background / composite)."""
    if value is None:
        raise ValueError(f"no image: upload {what} first")
    if isinstance(value, dict):
        img = value.get("background")
        if img is None:
            img = value.get("composite")
        if img is None:
            raise ValueError(f"no image: upload {what} first (the editor is empty)")
        return img
    return value


def _schedule(spec: ModelSpec, steps: Any, ts: Any) -> dict[str, Any]:
    """Keyword arguments (num_steps / ts / steps) for the edit wrappers, validated."""
    if spec.kind != "cm":
        raise ValueError(f"{spec.name} is an EDM teacher: editing needs a consistency model "
                         f"(a cd_* or ct_* model)")
    tsv, grid = parse_ts(ts, spec.steps)
    if tsv is not None:
        return {"ts": tsv, "steps": grid}
    return {"num_steps": _int("steps", steps if steps not in (None, "") else 2, 1, spec.steps - 1)}


def _describe(kw: dict[str, Any]) -> str:
    if "ts" in kw:
        return f"ts {','.join(map(str, kw['ts']))} on a {kw['steps']}-point grid"
    return f"{kw['num_steps']} step(s)"


def _run_edit(model: str, fn: Callable[[ModelSpec, Denoiser, Callable | None], tuple],
              progress: Progress | None, label: str) -> tuple[Any, float]:
    cb = _progress_callback(progress, label)

    def run(spec: ModelSpec, den: Denoiser) -> tuple[Any, float]:
        t = time.perf_counter()
        with torch.no_grad():
            res = fn(spec, den, cb)
        return res, time.perf_counter() - t
    get_spec(str(model))
    return cache().run(str(model), run)


def _fitted(spec: ModelSpec, image: Any) -> Image.Image:
    from .images import prepare_image
    return prepare_image(image, spec.resolution)


def colorize(model: str, image: Any, *, steps: Any = 2, ts: Any = None, seed: Any = 0,
             class_label: Any = None, progress: Progress | None = None) -> EditResult:
    """Colorize an image (its luminance is kept)."""
    from .edit_images import colorize_image
    spec = get_spec(str(model))
    img = _editor_image(image, "an image to colorize")
    kw, sd, lab = _schedule(spec, steps, ts), _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    (out, ref), secs = _run_edit(model, lambda s, d, cb: colorize_image(
        d, s, img, seed=sd, class_label=lab, callback=cb, **kw), progress, "colorize step")
    return EditResult(_fitted(spec, img), ref, out, secs, f"colorized with {_describe(kw)}")


def inpaint(model: str, editor: Any, *, mask: Any = None, steps: Any = 2, ts: Any = None,
            seed: Any = 0, class_label: Any = None, progress: Progress | None = None) -> EditResult:
    """Regenerate the painted region. ``editor``: a Gradio ImageEditor value (background + painted
    layers) or an image, with ``mask`` (non-zero / non-transparent = regenerate there)."""
    from .edit_images import inpaint_image
    spec = get_spec(str(model))
    img = _editor_image(editor, "an image to inpaint")
    m = mask if mask is not None else editor
    if not isinstance(m, dict) and m is editor:
        raise ValueError("no mask: paint over the region to regenerate with the brush")
    kw, sd, lab = _schedule(spec, steps, ts), _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    (out, ref), secs = _run_edit(model, lambda s, d, cb: inpaint_image(
        d, s, img, m, seed=sd, class_label=lab, callback=cb, **kw), progress, "inpaint step")
    shown = _editor_image({"background": editor.get("composite"), "composite": None}, "") \
        if isinstance(editor, dict) and editor.get("composite") is not None else img
    return EditResult(_fitted(spec, shown), ref, out, secs, f"inpainted with {_describe(kw)}")


def super_resolve(model: str, image: Any, *, low_res: bool = False, patch_size: Any = 4,
                  steps: Any = 2, ts: Any = None, seed: Any = 0, class_label: Any = None,
                  progress: Progress | None = None) -> EditResult:
    """Super-resolution by ``patch_size``: a high-resolution upload is downsampled to
    (size / p)^2 first; a low-resolution one is used as the low-resolution input directly."""
    from .edit_images import super_resolve_image
    spec = get_spec(str(model))
    img = _editor_image(image, "an image to super-resolve")
    p = _int("patch factor", patch_size, 1, spec.resolution)
    if spec.resolution % p:
        raise ValueError(f"the patch factor must divide the model size {spec.resolution}, got {p}")
    kw, sd, lab = _schedule(spec, steps, ts), _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    (out, ref), secs = _run_edit(model, lambda s, d, cb: super_resolve_image(
        d, s, img, patch_size=p, seed=sd, class_label=lab, callback=cb, **kw), progress, "super-resolution step")
    from .images import load_image, to_rgb
    shown = to_rgb(load_image(img)) if low_res else _fitted(spec, img).resize(
        (spec.resolution // p,) * 2, Image.Resampling.BOX)
    low = shown.resize((spec.resolution,) * 2, Image.Resampling.NEAREST) if shown.size[0] != spec.resolution else shown
    return EditResult(low, ref, out, secs, f"x{p} super-resolution ({spec.resolution // p} px -> "
                      f"{spec.resolution} px) with {_describe(kw)}")


def denoise(model: str, image: Any, *, noise_level: Any = 40, add_noise: bool = True,
            steps: Any = 1, seed: Any = 0, class_label: Any = None,
            progress: Progress | None = None) -> EditResult:
    """Denoise an image whose noise std is ``noise_level`` grey levels (0 and not ``add_noise``:
    estimate it). With ``add_noise``, that much Gaussian noise (from ``seed``) is added first."""
    from .edit_images import denoise_image
    spec = get_spec(str(model))
    img = _editor_image(image, "an image to denoise")
    try:
        level = float(noise_level)
    except (TypeError, ValueError):
        raise ValueError(f"noise level must be a number of grey levels, got {noise_level!r}") from None
    if not 0 <= level <= 255:
        raise ValueError(f"noise level must be in [0, 255] grey levels, got {level}")
    n = _int("steps", steps, 1, 16)
    sd, lab = _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    _schedule(spec, 1, None)  # EDM check
    fitted = _fitted(spec, img)
    noisy = fitted
    if add_noise and level > 0:
        rng = np.random.default_rng(sd)
        a = np.asarray(fitted, np.float32) + rng.normal(0.0, level, (spec.resolution, spec.resolution, 3))
        noisy = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    std = None if (level == 0 and not add_noise) else level
    (out, ref), secs = _run_edit(model, lambda s, d, cb: denoise_image(
        d, s, noisy, noise_std=std, num_steps=n, seed=sd, class_label=lab, callback=cb),
        progress, "denoise step")
    what = "estimated noise" if std is None else f"noise std {level:g}/255"
    return EditResult(fitted, ref, out, secs, f"denoised ({what}, {n} step(s))")


def stroke_guided(model: str, editor: Any, *, sigma: Any = 4.0, steps: Any = 2, seed: Any = 0,
                  class_label: Any = None, progress: Progress | None = None) -> EditResult:
    """SDEdit: a rough painting plus noise of level ``sigma`` (0.1-80; larger follows the strokes
    less), then ``steps`` consistency steps."""
    from .edit_images import stroke_image
    spec = get_spec(str(model))
    if isinstance(editor, dict):
        img = editor.get("composite") if editor.get("composite") is not None else editor.get("background")
        if img is None:
            raise ValueError("no painting: paint strokes or upload a rough painting first")
    else:
        img = _editor_image(editor, "a rough painting")
    try:
        sg = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a number, got {sigma!r}") from None
    if not 0.01 <= sg <= spec.sigma_max:
        raise ValueError(f"sigma must be in [0.01, {spec.sigma_max:g}], got {sg}")
    n = _int("steps", steps, 1, 16)
    sd, lab = _int("seed", seed, 0, MAX_SEED), parse_class(spec, class_label)
    _schedule(spec, 1, None)
    (out, ref), secs = _run_edit(model, lambda s, d, cb: stroke_image(
        d, s, img, sigma=sg, num_steps=n, seed=sd, class_label=lab, callback=cb), progress, "step")
    return EditResult(_fitted(spec, img), ref, out, secs, f"stroke-guided (SDEdit) from sigma {sg:g}, {n} step(s)")


def _gif(frames: Sequence[Image.Image], seconds_per_frame: float = 0.12) -> str:
    import tempfile
    fd, path = tempfile.mkstemp(prefix="cm-interp-", suffix=".gif")
    os.close(fd)
    big = [f.resize((max(128, f.width), max(128, f.height)), Image.Resampling.NEAREST) for f in frames]
    seq = big + big[-2:0:-1]  # ping-pong
    seq[0].save(path, save_all=True, append_images=seq[1:], duration=int(seconds_per_frame * 1000), loop=0)
    return path


def interpolate(model: str, *, mode: str = "seeds", seed_a: Any = 0, seed_b: Any = 1,
                image_a: Any = None, image_b: Any = None, frames: Any = 8, steps: Any = 1,
                ts: Any = None, class_label: Any = None, sigma: float = 4.0,
                progress: Progress | None = None) -> InterpolationResult:
    """Frames between two seeds' samples (slerp of their noises, paper Figure 6) or between two
    images' noises (each image noised to ``sigma`` with shared noise, then the same schedule)."""
    spec = get_spec(str(model))
    k = _int("frames", frames, 2, 64)
    kw, lab = _schedule(spec, steps, ts), parse_class(spec, class_label)
    if mode == "seeds":
        from .edit_images import interpolate_images
        a, b = _int("seed A", seed_a, 0, MAX_SEED), _int("seed B", seed_b, 0, MAX_SEED)
        outs, secs = _run_edit(model, lambda s, d, cb: interpolate_images(
            d, s, a, b, num_frames=k, class_label=lab, callback=cb, **kw), progress, "step")
        desc = f"seeds {a} -> {b}, {_describe(kw)} per frame"
    elif mode == "images":
        ia = _editor_image(image_a, "image A")
        ib = _editor_image(image_b, "image B")
        xa, xb = _fitted(spec, ia), _fitted(spec, ib)
        outs, secs = _run_edit(model, lambda s, d, cb: _interp_images(
            d, s, xa, xb, k, lab, kw.get("num_steps", 2), sigma, cb), progress, "step")
        desc = f"two images noised to sigma {sigma:g}, {kw.get('num_steps', 2)} step(s) per frame"
    else:
        raise ValueError(f"mode must be 'seeds' or 'images', got {mode!r}")
    alphas = np.linspace(0, 1, k)
    return InterpolationResult(outs, [f"alpha {x:.2f}" for x in alphas], _gif(outs), secs, desc)


def _interp_images(den: Denoiser, spec: ModelSpec, xa: Image.Image, xb: Image.Image, k: int,
                   label: int | None, num_steps: int, sigma: float, cb: Callable | None
                   ) -> list[Image.Image]:
    """Frame j: ``lerp(x_a, x_b, a_j) + sigma * slerp(e_a, e_b, a_j)``, then ``num_steps`` steps."""
    from . import editing
    from .images import image_to_tensor, tensor_to_images
    from .sampling import make_generators
    from .schedule import karras_sigmas
    dev = next(den.parameters()).device
    ta, tb = image_to_tensor(xa).to(dev), image_to_tensor(xb).to(dev)
    g = make_generators(0, 2, dev)
    ea = torch.randn(ta.shape, generator=g[0], device=dev)
    eb = torch.randn(tb.shape, generator=g[1], device=dev)
    alphas = np.linspace(0.0, 1.0, k)
    x = torch.cat([(1 - a) * ta + a * tb + sigma * editing.slerp(ea, eb, float(a)) for a in alphas])
    sig = karras_sigmas(num_steps + 1, den.sigma_min, min(sigma, den.sigma_max), append_zero=False)
    labels = None if not spec.class_cond else torch.full(
        (k,), label if label is not None else 0, dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    out = editing.sigma_loop(den, x, sig, gen, None, labels, callback=cb).clamp(-1, 1)
    return tensor_to_images(out)


MAX_STEPS = max(s.steps for s in REGISTRY.values()) - 1  # the largest grid's step count
