"""``python -m cm_core train edm|cd|ct --data digits --out DIR [options]``."""
from __future__ import annotations

from dataclasses import fields

import click

from .config import TrainConfig

_DEFAULTS = TrainConfig()
_HELP = {
    "data": "'digits' (built-in colour digits) or a folder of images",
    "out": "run directory (model.safetensors, state.safetensors, log.csv)",
    "loss": "l2, pseudo_huber or lpips (CD/CT; LPIPS needs its weights offline)",
    "teacher": "CD: EDM teacher (registry name or .safetensors path)",
    "ema": "decay of the slow EMA saved as the released weights",
    "target_ema": "CD: target-network decay mu",
    "num_scales": "CD: points of the Karras grid N",
    "start_scales": "CT: s0 of N(k)", "end_scales": "CT: s1 of N(k)", "start_ema": "CT: mu0 of mu(k)",
    "init": "start from these network weights (e.g. an EDM teacher; ECT-style CT)",
    "threads": "torch CPU threads", "device": "cuda, mps or cpu (default: best available)",
}
_SKIP = {"method", "out", "data"}


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
@click.argument("method", type=click.Choice(["ct", "cd", "edm"]))
@click.option("--data", default="digits", show_default=True, help=_HELP["data"])
@click.option("--out", required=True, type=click.Path(), help=_HELP["out"])
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="continue from OUT/state.safetensors when present")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_options
def train(method: str, data: str, out: str, resume: bool, quiet: bool, **kw) -> None:
    """Train an EDM teacher (edm), distil it (cd) or train a consistency model directly (ct)."""
    from .loop import run_training
    from .losses import LpipsUnavailable
    cfg = TrainConfig(method=method, data=data, out=out,
                      **{k: v for k, v in kw.items() if v is not None})
    if method == "cd" and cfg.teacher is None:
        raise click.UsageError("cd needs --teacher (e.g. edm_digits32 or runs/edm/model.safetensors)")
    try:
        res = run_training(cfg, resume=resume, progress=not quiet)
    except (LpipsUnavailable, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"done: {res['step']} steps -> {res['model']}")
