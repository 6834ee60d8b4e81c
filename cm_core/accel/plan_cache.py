"""Where the planner's choices persist: :func:`plan_key` names a measurement, :class:`PlanCache`
keeps one JSON file of plans, written atomically.

A plan holds only for the machine and software it was measured on, so the key hashes everything
that changes which variant is fastest: the CPU's model string and flags (or the GPU's name and
compute capability), the torch, oneDNN and cuDNN versions, the thread count, the network's
architecture (its config and every parameter's name, shape and dtype; not the weights, which do
not change the speed) and the batch bucket. A cache file that cannot be read, or was written by
another version, is ignored with a log line and rewritten on the next plan.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import re
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from .background import BucketQueue
from .cpu import cpuinfo
from .planner import Plan

__all__ = ["CACHE_VERSION", "BackgroundPlanner", "PlanCache", "default_cache_path", "network_hash", "plan_key"]

log = logging.getLogger("cm_core.accel.planner")
CACHE_VERSION = 1


def default_cache_path() -> Path:
    """``$CM_PLAN_CACHE``, else ``~/.cache/cm-studio/plans.json``."""
    env = os.environ.get("CM_PLAN_CACHE", "").strip()
    return Path(env) if env else Path.home() / ".cache" / "cm-studio" / "plans.json"


@functools.lru_cache(maxsize=1)
def _onednn_version() -> str:
    m = re.search(r"(?:MKL-DNN|oneDNN) v([\w.]+)", torch.__config__.show())
    return m.group(1) if m else "none"


def machine(device: torch.device) -> dict:
    """What identifies the hardware and the kernels' software on ``device``."""
    soft = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return {**soft, "gpu": torch.cuda.get_device_name(idx),
                "capability": list(torch.cuda.get_device_capability(idx)),
                "cudnn": torch.backends.cudnn.version(), "cuda": torch.version.cuda}
    model, flags = cpuinfo()
    return {**soft, "device": device.type, "cpu": model or platform.processor() or platform.machine(),
            "flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
            "onednn": _onednn_version()}


def network_hash(net: torch.nn.Module) -> str:
    """A hash of the architecture: the config (when the network has one; its public keys) and every
    parameter's and buffer's name, shape and dtype. Equal for two checkpoints of one architecture,
    in any process."""
    h = hashlib.sha256()
    cfg = getattr(net, "config", None)
    if cfg is not None:  # diffusers' private keys (e.g. _use_default_values, a set's order) left out
        public = {k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}
        h.update(json.dumps(public, sort_keys=True, default=str).encode())
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:24]


def plan_key(net: torch.nn.Module, device: torch.device, bucket: int) -> str:
    """The cache key of a plan of ``net`` on ``device`` for batches of ``bucket`` images."""
    parts = {"machine": machine(device), "network": network_hash(net), "bucket": int(bucket)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class PlanCache:
    """Plans by key in one JSON file ``{"version": 1, "plans": {key: plan}}``. Reads are lazy;
    every write re-reads the file, adds the plan and replaces the file atomically (temporary file,
    fsync, rename), so a killed process never leaves a torn cache and two processes lose at most
    each other's newest plan. Thread-safe."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("plan cache %s is unreadable (%s); measuring again and rewriting it", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("plans"), dict):
            log.warning("plan cache %s is from another version or not a plan cache; rewriting it", self.path)
            return {}
        return data["plans"]

    def get(self, key: str) -> Plan | None:
        """The plan stored under ``key``, or None (absent, or an entry that does not parse)."""
        with self._lock:
            entry = self._read().get(key)
        if entry is None:
            return None
        try:
            return Plan.from_json(entry)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("plan cache %s: entry %s does not parse (%s); measuring again", self.path, key, e)
            return None

    def put(self, key: str, plan: Plan) -> None:
        """Store ``plan`` under ``key`` (atomic replace of the whole file)."""
        with self._lock:
            plans = self._read()
            plans[key] = plan.to_json()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                json.dump({"version": CACHE_VERSION, "plans": plans}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)


class BackgroundPlanner:
    """Plans batch buckets in a daemon thread while the caller keeps serving.

    :meth:`chosen` never waits: it answers the stored plan's choice, or None while the bucket is
    being planned (the caller serves with its default meanwhile), and queues the bucket the first
    time it is asked. ``plan(bucket)`` measures one bucket (:func:`~cm_core.accel.planner.make_plan`
    on its candidates); ``key(bucket)`` is its cache key. ``mode`` is :func:`~cm_core.accel.planner.plan_mode`'s:
    ``cached`` only reads the cache, ``off`` plans nothing. ``on_plan(bucket, plan)`` runs in the
    planner's thread before the plan is published (e.g. to build the chosen variant).
    """

    def __init__(self, plan: Callable[[int], Plan], key: Callable[[int], str],
                 cache: PlanCache | None = None, mode: str = "measure",
                 on_plan: Callable[[int, Plan], None] | None = None) -> None:
        self._plan, self._key, self.cache, self.mode = plan, key, cache, mode
        self._on_plan = on_plan
        self.plans: dict[int, Plan] = {}
        self.errors: dict[int, str] = {}
        self.jobs = BucketQueue(self._one, "cm-planner")

    def chosen(self, bucket: int) -> str | None:
        """The chosen candidate's name for ``bucket``, or None while it is not known yet."""
        plan = self.plans.get(bucket)
        if plan is not None:
            return plan.chosen
        if self.mode != "off":
            self.jobs.submit(bucket)
        return None

    def _one(self, bucket: int) -> None:
        """Plan ``bucket``: from the cache, else (``measure``) by measuring, then stored."""
        try:
            key = self._key(bucket)
            plan = self.cache.get(key) if self.cache is not None else None
            if plan is None and self.mode == "measure":
                plan = self._plan(bucket)
                log.info("plan for bucket %d:\n%s", bucket, plan.table())
                if self.cache is not None:
                    self.cache.put(key, plan)
            if plan is not None:
                if self._on_plan is not None:
                    self._on_plan(bucket, plan)
                self.plans[bucket] = plan
        except Exception as e:  # noqa: BLE001 - a failed plan leaves the default serving
            self.errors[bucket] = f"{type(e).__name__}: {e}"
            log.warning("planning bucket %d failed; the default path serves: %s", bucket, e)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued bucket is planned (CLI, tests); False on timeout."""
        return self.jobs.wait(timeout)
