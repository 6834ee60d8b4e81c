"""Sampling: the Karras schedule and ``ts`` (:mod:`.schedule`), the one Algorithm-4 loop that every
sampler and editor runs (:mod:`.loop`; :mod:`.runner` runs it, as one CUDA graph where it can), the samplers (:mod:`.samplers`: one-step, multistep, Heun for
the EDM teachers) and generation with per-image seeds, batching and outputs (:mod:`.generate`)."""
from __future__ import annotations

from .loop import Callback, DenoiseFn, Replacement, predraw_noise, sigma_loop
from .runner import ProgressOnly, edit_loop, run_loop
from .samplers import heun, initial_noise, make_generators, multistep, onestep
from .schedule import karras_sigmas, parse_ts, pick_ts, ts_to_sigmas, validate_ts

__all__ = ["onestep", "multistep", "heun", "make_generators", "initial_noise", "edit_loop",
           "sigma_loop", "run_loop", "predraw_noise", "ProgressOnly", "Replacement", "Callback", "DenoiseFn", "karras_sigmas", "ts_to_sigmas",
           "parse_ts", "pick_ts", "validate_ts"]
