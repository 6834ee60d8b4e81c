"""The model table: what is on disk, sizes, how to fetch a model, and each model's description."""
from __future__ import annotations

from typing import Any

from ..models.checkpoints import FETCH_CMD, CheckpointError, is_available, local_path
from ..models.registry import REGISTRY, ModelSpec, get_spec
from .model_cache import cache
from .progress import Progress
from .sizes import human_size, model_bytes


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
    from ..models.download import fetch_original

    def on_bytes(done: int, total: int | None) -> None:
        if progress is not None:
            frac = done / total if total else 0.0
            progress(frac, f"{human_size(done)} of {human_size(total)}")
    return str(fetch_original(spec, progress=on_bytes, timeout=20.0))


def teacher_for(name: str) -> str:
    """The EDM teacher trained on the same data as ``name`` (for the side-by-side comparison)."""
    spec = get_spec(name)
    if spec.kind == "edm":
        return spec.name
    for s in REGISTRY.values():
        if s.kind == "edm" and s.dataset == spec.dataset and s.arch.image_size == spec.arch.image_size:
            return s.name
    raise ValueError(f"no EDM teacher in the registry for {name} ({spec.dataset})")
