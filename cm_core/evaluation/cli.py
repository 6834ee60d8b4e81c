"""``python -m cm_core eval SAMPLES.npz REF`` and ``python -m cm_core evaluate MODEL``."""
from __future__ import annotations

import json

import click

from ..models.registry import DIGITS_REFERENCE, REFERENCES, REGISTRY
from .evaluate import FEATURES

# bad input: ValueError covers SampleFileError and UnknownModelError, RuntimeError CheckpointError
_ERRORS = (ValueError, RuntimeError)
_REF_HELP = f"an .npz, or a fetched reference ({', '.join(REFERENCES)}) or {DIGITS_REFERENCE} (built in)"
_FEATURES_HELP = ("inception (its weights fetched with fetch --ref inception), digits (the built-in "
                  "digits classifier, 32px), or auto: inception when its weights are on disk, else digits")


def _report(result: dict | None) -> None:
    if result is not None:  # rank 0
        click.echo(json.dumps(result, indent=2))


@click.command("eval", help="FID, sFID, Inception Score, precision and recall of SAMPLES (.npz: arr_0 uint8 "
               "NHWC) against REFERENCE (" + _REF_HELP + "); prints them and writes SAMPLES.metrics.json. "
               "Runs under torchrun, features sharded across the processes.")
@click.argument("samples", type=click.Path())
@click.argument("reference")
@click.option("--features", type=click.Choice(FEATURES), default="auto", show_default=True, help=_FEATURES_HELP)
@click.option("--batch-size", type=int, default=100, show_default=True, help="images per network batch")
@click.option("--device", default=None, help="cuda, mps or cpu (default: best available)")
def eval_cmd(samples: str, reference: str, features: str, batch_size: int, device: str | None) -> None:
    from .evaluate import evaluate_files
    try:
        _report(evaluate_files(samples, reference, features, batch_size, device))
    except _ERRORS as e:
        raise click.ClickException(str(e)) from None


@click.command("evaluate", help="Sample MODEL (" + ", ".join(REGISTRY) + ") and evaluate the samples "
               "in one go; a killed run resumes where it stopped. Runs under torchrun.")
@click.argument("model")
@click.option("--num-samples", type=int, default=50_000, show_default=True)
@click.option("--num-evals", "--steps", "num_evals", type=int, default=1, show_default=True,
              help="consistency-model network evaluations (1 = one-step)")
@click.option("--ts", default=None, help="explicit step indices (0,22,39 or 0,106,200/201) or 'sigmas: 80, 5'")
@click.option("--grid-size", type=int, default=None, help="points of the Karras grid for --ts")
@click.option("--heun-steps", type=int, default=None, help="EDM teachers: Heun steps (default: the model's)")
@click.option("--seed", type=int, default=0, show_default=True, help="image i uses seed+i")
@click.option("--ref", "reference", default=None, help=f"reference: {_REF_HELP} (default: the model's dataset's)")
@click.option("--features", type=click.Choice(FEATURES), default="auto", show_default=True, help=_FEATURES_HELP)
@click.option("--out", default=None, help="run folder, resumed if it exists (default: evals/MODEL/SETTING)")
@click.option("--checkpoint", default=None, help="weights file or folder instead of the registry's")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default=None, help="cuda, mps or cpu (default: best available)")
def evaluate_cmd(model: str, num_samples: int, num_evals: int, ts: str | None, grid_size: int | None,
                 heun_steps: int | None, seed: int, reference: str | None, features: str, out: str | None,
                 checkpoint: str | None, batch_size: int, device: str | None) -> None:
    from ..models.registry import get_spec
    from ..sampling.cli import settings_from_options
    from .run_model import evaluate_model
    try:
        settings = settings_from_options(get_spec(model), num_evals, ts, grid_size, heun_steps, 0.0)
        _report(evaluate_model(model, settings, num_samples, out, reference, features, seed, batch_size,
                               device, checkpoint))
    except _ERRORS as e:
        raise click.ClickException(str(e)) from None
