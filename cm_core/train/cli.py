"""``python -m cm_core train edm|cd|ct|ict|ect --data digits --out DIR [options]``, and
``python -m cm_core train plot RUN`` (a run's log.csv as a PNG)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from .config import TrainConfig

_DEFAULTS = TrainConfig()
_HELP = {
    "data": "'digits' (built-in colour digits) or a folder of images",
    "out": "run directory (model.safetensors, state.safetensors, log.csv)",
    "loss": "l2, pseudo_huber or lpips (CD/CT; LPIPS needs its weights offline)",
    "teacher": "CD: EDM teacher (registry name, released .pt, Hub repo or our .safetensors)",
    "ema": "decay of the slow EMA saved as the released weights",
    "target_ema": "CD: target-network decay mu",
    "num_scales": "CD: points of the Karras grid N",
    "start_scales": "CT: s0 of N(k)", "end_scales": "CT: s1 of N(k)", "start_ema": "CT: mu0 of mu(k)",
    "ict_p_mean": "iCT and ECT: mean of the lognormal over noise levels", "ict_p_std": "iCT and ECT: its std",
    "ect_double": "ECT: steps per stage (t - r halves each stage)", "ect_q": "ECT: q of r(t)",
    "ect_k": "ECT: k of r(t)", "ect_b": "ECT: b of r(t)", "ect_c": "ECT: pseudo-Huber c (0: L2 norm)",
    "ect_weighting": "ECT: snr_plus_k (1/t^2 + 1/sigma_data^2, ECT's), inverse_gap (1 / (t - r), iCT's) "
                     "or uniform",
    "ict_start_scales": "iCT: s0 of the doubling N(k)", "ict_end_scales": "iCT: s1 of the doubling N(k)",
    "init": "start from these network weights: a released .pt, a Hub repo id, a registry name "
            "or our .safetensors (fine-tuning; or an EDM teacher for ECT-style CT)",
    "sample_every": "write a fixed-seed sample grid (OUT/samples, TensorBoard) every N steps; 0: none",
    "threads": "torch CPU threads", "device": "cuda, mps or cpu (default: best available)",
    "batch_size": "global batch, split across processes and --grad-accum micro-batches",
    "rng": "position: draws seeded by each sample's global position (any world size gives the "
           "same run); step: the legacy one-generator-per-step scheme (one process only)",
    "grad_accum": "micro-batches per process per step", "workers": "DataLoader worker processes",
    "precision": "fp32, bf16 (autocast) or fp16 (autocast + grad scaler, as the original)",
    "grad_checkpoint": "recompute activations in the backward pass (less memory)",
    "optimizer": "adam or radam (the original's)", "ema_rates": "extra EMA decays, comma-separated",
    "ema_warmup": "EMA decay min(ema, (1+k)/(10+k)) instead of the fixed rate",
    "preset": "the paper's recipe for a released model (see --list-presets); flags override it",
}
_SKIP = {"method", "out", "data"}  # preset is an ordinary option


def _options(f):  # noqa: ANN001, ANN202 - click decorator plumbing
    for fl in reversed(fields(TrainConfig)):
        if fl.name in _SKIP:
            continue
        default = getattr(_DEFAULTS, fl.name)
        name = "--" + fl.name.replace("_", "-")
        if isinstance(default, bool):
            opt = click.option(f"{name}/--no-{fl.name.replace('_', '-')}", fl.name, default=None,
                               help=_HELP.get(fl.name))
        else:
            typ = {"int": int, "float": float}.get(str(fl.type).split(" ")[0], str)
            opt = click.option(name, fl.name, type=typ, default=None,
                               help=(_HELP.get(fl.name, "") + f" [default: {default}]").strip())
        f = opt(f)
    return f


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("method", type=click.Choice(["ct", "ict", "ect", "cd", "edm", "plot"]), required=False)
@click.argument("run", type=click.Path(), required=False)
@click.option("--data", default=None, help=_HELP["data"] + " [default: digits]")
@click.option("--out", default=None, type=click.Path(), help=_HELP["out"])
@click.option("--list-presets", is_flag=True, help="print the paper's recipes and exit")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="continue from OUT/state.safetensors when present")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_options
def train(method: str | None, run: str | None, data: str | None, out: str | None, list_presets: bool,
          resume: bool, quiet: bool, **kw) -> None:
    """Train an EDM teacher (edm), distil it (cd), train a consistency model directly (ct, or
    ict: improved consistency training) or tune a pretrained EDM network into one (ect, with --init).
    `train plot RUN` draws the run folder's log.csv as RUN/log.png.

    Under torchrun every process runs this command; --batch-size is the global batch.
    """
    from ..accel.distributed import rank_world
    from .loop import run_training
    from .losses import LpipsUnavailable
    from .presets import format_presets, preset_fields
    if list_presets:
        click.echo(format_presets())
        return
    if method == "plot" or run is not None:
        _plot(method, run)
        return
    if out is None:
        raise click.UsageError("--out DIR is required")
    try:
        base = preset_fields(kw["preset"]) if kw.get("preset") else {}
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if method and base and method != base["method"]:
        raise click.UsageError(f"--preset {kw['preset']} is a {base['method']} recipe, not {method}")
    method = method or base.get("method")
    if method is None:
        raise click.UsageError("give METHOD (edm, cd, ct, ict or ect) or --preset NAME")
    fields_ = {**base, **{k: v for k, v in kw.items() if v is not None},
               "method": method, "data": data or base.get("data", "digits"), "out": out}
    cfg = TrainConfig(**fields_)
    if method == "cd" and cfg.teacher is None:
        raise click.UsageError("cd needs --teacher (e.g. edm_digits32 or runs/edm/model.safetensors)")
    given = {*base, *(k for k, v in kw.items() if v is not None), "method", *(("data",) if data else ())}
    if resume and rank_world()[0] == 0:
        _warn_ignored(Path(out), {name: getattr(cfg, name) for name in given})
    try:
        res = run_training(cfg, resume=resume, progress=not quiet)
    except (LpipsUnavailable, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if rank_world()[0] == 0:
        click.echo(f"done: {res['step']} steps -> {res['model']}")


def _warn_ignored(out: Path, given: dict[str, object]) -> None:
    """A warning for each setting of this command that resuming ``out`` will not use."""
    from .loop import ignored_on_resume
    diff = ignored_on_resume(out, given)
    if diff:
        flag = {"method": "METHOD"}
        items = "; ".join(f"{flag.get(name, '--' + name.replace('_', '-'))} {new} (stored: {old})"
                          for name, (new, old) in diff.items())
        click.echo(f"warning: resuming {out} with the recipe it was started with, so these are not used: "
                   f"{items}. Start a new --out to change them.", err=True)


def _plot(method: str | None, run: str | None) -> None:
    """``train plot RUN``."""
    from .plot import plot_run
    if method != "plot" or run is None:
        raise click.UsageError("RUN is for `train plot RUN`; a training run takes its folder as --out DIR")
    try:
        click.echo(f"wrote {plot_run(run)}")
    except ValueError as e:
        raise click.ClickException(str(e)) from None
