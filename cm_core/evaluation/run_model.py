"""``evaluate MODEL``: sample a model in resumable chunks, then evaluate the samples.

Samples go to ``<out>/part-00000.npz`` ... (``CHUNK`` images each, written atomically), so a killed
run resumes at the first missing chunk; once all exist they are merged into ``<out>/samples.npz``
(streamed, never the whole array in memory) and evaluated as :func:`.evaluate.evaluate_files` does.
Image ``i`` has seed ``seed + i``, as ``python -m cm_core sample`` gives it, and under ``torchrun``
rank ``r`` samples the images ``i % world == r`` of each chunk: the samples and the numbers do not
depend on the number of processes.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..accel.distributed import gather_strided, init_group, local_device, rank_world
from ..models.checkpoints import load_denoiser, pick_device
from ..models.files import atomic_path
from ..models.registry import ModelSpec, get_spec, reference_for
from ..sampling.generate import SampleSettings, sample_shard, write_samples
from .evaluate import evaluate_files, metrics_path, write_json_atomic
from .samples import SampleFileError, open_batch

CHUNK = 1000  # images per part file


def settings_label(spec: ModelSpec, settings: SampleSettings) -> str:
    """A folder name for a sampling setting: ``heun18``, ``onestep``, ``ts0-22-39of40``, ``sigmas80-5``."""
    if spec.kind == "edm":
        return f"heun{settings.heun_steps or spec.heun_steps}"
    if settings.sigmas is not None:  # the evaluated levels (the final sigma_min is implied)
        return "sigmas" + "-".join(f"{s:g}" for s in settings.sigmas[:-1])
    plan = settings.resolved_ts(spec)
    return "onestep" if plan is None else "ts" + "-".join(map(str, plan[0])) + f"of{plan[1]}"


def _complete(path: Path, count: int) -> bool:
    try:
        return open_batch(path, min_count=1).count == count
    except SampleFileError:
        return False


def _missing_chunks(out: Path, total: int, chunk: int, rank: int, world: int) -> list[int]:
    """Chunks not yet on disk, as rank 0 sees them (broadcast, so no filesystem is assumed shared)."""
    todo = [c for c in range(-(-total // chunk)) if not _complete(out / f"part-{c:05d}.npz",
                                                                  min(chunk, total - c * chunk))]
    if world > 1:
        import torch.distributed as dist
        box = [todo]
        dist.broadcast_object_list(box, src=0)
        todo = box[0]
    return todo


def sample_chunks(den, spec: ModelSpec, settings: SampleSettings, seed: int, total: int,  # noqa: ANN001
                  batch_size: int, out: Path, class_label: int | None = None, chunk: int = CHUNK) -> list[Path]:
    """Sample the chunks of ``out`` that are missing; rank 0 writes each as it completes."""
    rank, world = rank_world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    for c in _missing_chunks(out, total, chunk, rank, world):
        lo, hi = c * chunk, min(total, (c + 1) * chunk)
        if rank == 0:
            print(f"chunk {c + 1} of {-(-total // chunk)}: images {lo}..{hi - 1}")
        imgs, labs = sample_shard(den, spec, seed, range(lo + rank, hi, world), settings, class_label,
                                  batch_size, progress=rank == 0)
        arr, lab = gather_strided(imgs, labs, hi - lo, rank, world)
        if rank == 0:
            write_samples(str(out / f"part-{c:05d}.npz"), arr, lab)
    return [out / f"part-{c:05d}.npz" for c in range(-(-total // chunk))]


def merge_parts(parts: list[Path], dest: Path) -> Path:
    """Concatenate part files into one ``.npz`` (arr_0, arr_1), streamed, then renamed into place."""
    batches = [open_batch(p, min_count=1) for p in parts]
    total, r = sum(b.count for b in batches), batches[0].resolution
    with atomic_path(dest) as tmp:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                         "shape": (total, r, r, 3)})
                for b in batches:
                    for x in b.batches(CHUNK):
                        f.write(np.ascontiguousarray(x).tobytes())
            labels = [b.labels if b.labels is not None else np.zeros(b.count, np.int64) for b in batches]
            with zf.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, np.concatenate(labels).astype(np.int64))
    return dest


def evaluate_model(model: str, settings: SampleSettings, num_samples: int, out: str | None = None,
                   reference: str | None = None, features: str = "auto", seed: int = 0,
                   batch_size: int = 64, device: str | None = None, checkpoint: str | None = None,
                   class_label: int | None = None) -> dict | None:
    """Sample ``num_samples`` images of ``model`` (resuming in ``out``) and evaluate them against
    ``reference`` (default: the model's dataset's reference batch); the metrics dict on rank 0."""
    spec = get_spec(model)
    if num_samples < 2 or batch_size < 1:
        raise ValueError(f"--num-samples must be >= 2 and --batch-size >= 1, got {num_samples} and {batch_size}")
    ref = reference or reference_for(spec)
    if ref is None:
        raise ValueError(f"{model} has no reference batch in the registry; give one with --ref FILE.npz")
    folder = Path(out or Path("evals") / model / settings_label(spec, settings))
    samples = folder / "samples.npz"
    rank, world = rank_world()
    dev = local_device(pick_device(device))
    init_group(dev)
    if not _complete(samples, num_samples):
        den = load_denoiser(checkpoint or model, arch=spec.arch, kind=spec.kind, device=dev)
        if dev.type == "cuda":  # the fast path, as the sample command takes it there
            from ..accel.entry import optimize
            den = optimize(den, warm_buckets=(batch_size,))
        parts = sample_chunks(den, spec, settings, seed, num_samples, batch_size, folder, class_label, CHUNK)
        if rank == 0:
            merge_parts(parts, samples)
            for p in parts:
                p.unlink(missing_ok=True)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    result = evaluate_files(samples, ref, features, device=device, write_json=False)
    if result is not None:
        result = {"model": model, "setting": settings_label(spec, settings),
                  "network_evals": settings.evaluations(spec), "seed": seed, **result}
        write_json_atomic(metrics_path(samples), result)
    return result
