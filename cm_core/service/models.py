"""The model table: what is on disk, sizes, how to fetch a model, and each model's description."""
from __future__ import annotations

from typing import Any

from ..models.checkpoints import FETCH_CMD, CheckpointError, is_available, local_path
from ..models.hub_fetch import auto_fetch_enabled
from ..models.registry import REGISTRY, ModelSpec, get_spec
from .fetches import RETRY_AFTER_S, fetch_problem, start_fetch, wait_fetch
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
    return f"1 step; multistep ts {','.join(map(str, spec.ts))} on {spec.grid_size}"


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
        "auto_fetch": bool(spec.url) and auto_fetch_enabled(),
        "steps": spec.grid_size, "ts": list(spec.ts), "heun_steps": spec.heun_steps, "note": spec.note,
        "loaded": name in cache(),
    }


def model_state(spec: ModelSpec) -> tuple[int, str]:
    """(rank, words) of whether ``spec`` can run here: 0 "on disk", 1 "fetched on use" (a Space,
    ``CM_AUTO_FETCH=1``), 2 "needs a download: <size>" (press Fetch or run the fetch script)."""
    if is_available(spec):
        return 0, "on disk"
    if spec.url and auto_fetch_enabled():
        return 1, "fetched on use"
    return 2, f"needs a download: {human_size(model_bytes(spec, on_disk_only=False))}"


def runnable(name: str) -> bool:
    """Whether a request with ``name`` can run here now (on disk, or fetched on use)."""
    return model_state(get_spec(name))[0] < 2


def model_choices() -> list[tuple[str, str]]:
    """The model picker's (label, name) pairs: those that can run now first (on disk, then fetched
    on use, then those needing a download; registry order within each), each label with the
    model's method, resolution, size and state, e.g. ``cd_digits32 · CD-PH · 32 px · 5.5 MB · on disk``."""
    rows = []
    for i, spec in enumerate(REGISTRY.values()):
        rank, state = model_state(spec)
        size = "" if rank == 2 else f"{human_size(model_bytes(spec, on_disk_only=False))} · "  # 2: in the state
        rows.append((rank, i, f"{spec.name} · {spec.method} · {spec.resolution} px · {size}{state}", spec.name))
    return [(label, name) for _, _, label, name in sorted(rows)]


def model_markdown(name: str) -> str:
    i = model_info(name)
    lines = [f"**{i['name']}**: {i['method']} on {i['dataset']}, {i['resolution']}x{i['resolution']}, "
             f"{'class-conditional' if i['class_cond'] else 'unconditional'}, {i['size']}. "
             f"Default sampling: {sampling_summary(get_spec(name))}."]
    if i["available"]:
        lines.append(f"On disk: `{i['path']}`" + (" (loaded)" if i["loaded"] else ""))
    elif i["auto_fetch"]:
        lines.append(f"**Not downloaded yet**: it is fetched from the Hub on first use (~{i['size']}).")
    else:
        lines.append(f"**Not on disk.** Fetch it with `{i['fetch_command']}`"
                     + (" or the button below (needs internet)." if i["fetchable"] else "."))
    if i["note"]:
        lines.append(f"Note: {i['note']}")
    return "\n\n".join(lines)


def fetch_model(name: str, progress: Progress | None = None) -> str:
    """Download a released model (CD/CT: its diffusers Hub repo; EDM: the ``.pt``); returns where
    it now is. One download per model at a time (joined by whoever asks meanwhile), disk space
    checked first, within the fetch deadline (:mod:`.fetches`)."""
    spec = get_spec(name)
    _download(spec, progress)
    return where(spec)


def _download(spec: ModelSpec, progress: Progress | None) -> bool:
    if not (spec.url or spec.hub_repo) and not is_available(spec):
        raise CheckpointError(f"{spec.name} cannot be downloaded: {fetch_command(spec)}")
    if spec.embedded or is_available(spec):
        return False
    return wait_fetch(start_fetch(spec), progress)


def where(spec: ModelSpec) -> str:
    """The file or Hub snapshot folder a load of ``spec`` reads."""
    from ..models.checkpoints import resolve
    path = local_path(spec)
    return str(path if path.is_file() or spec.embedded else resolve(spec.name)[0])


def _needs_fetch(spec: ModelSpec) -> bool:
    return not spec.embedded and auto_fetch_enabled() and not is_available(spec)


def ensure_model(name: str, progress: Progress | None = None) -> bool:
    """Fetch ``name`` on first use where that is allowed (a Space, or ``CM_AUTO_FETCH=1``; see
    :func:`cm_core.models.hub_fetch.auto_fetch_enabled`); elsewhere a missing model stays missing and its
    load says how to fetch it. Returns whether a download happened."""
    spec = get_spec(name)
    return _download(spec, progress) if _needs_fetch(spec) else False


def start_download(name: str) -> None:
    """Where fetching on first use is allowed, start ``name``'s download without waiting for it
    (not again within :data:`~.fetches.RETRY_AFTER_S` of a failure, whose cause is reported)."""
    spec = get_spec(name)
    if _needs_fetch(spec):
        start_fetch(spec, retry_after=RETRY_AFTER_S)


def check_download(name: str) -> None:
    """Raise ``CheckpointError`` saying that ``name`` is being downloaded (with its progress) or why
    its download failed, when it is not on disk for one of these reasons; else do nothing."""
    spec = get_spec(name)
    problem = None if spec.embedded or is_available(spec) else fetch_problem(name)
    if problem is not None:
        raise CheckpointError(problem)


def teacher_for(name: str) -> str:
    """The EDM teacher trained on the same data as ``name`` (for the side-by-side comparison)."""
    spec = get_spec(name)
    if spec.kind == "edm":
        return spec.name
    for s in REGISTRY.values():
        if s.kind == "edm" and s.dataset == spec.dataset and s.arch.image_size == spec.arch.image_size:
            return s.name
    raise ValueError(f"no EDM teacher in the registry for {name} ({spec.dataset})")
