"""Command line: ``python -m cm_core sample|train|models ...``.

Subcommands live beside the code they drive; this module only assembles them.
"""
from __future__ import annotations

import sys
import time

import click

from .models import registry


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cm-studio: OpenAI's consistency models, exactly and fast."""


@main.command("models")
@click.option("--check-fast", "check_fast", default=None, metavar="MODEL",
              help="check MODEL's fast-path variants against exact fp32 and say which path serves")
@click.option("--plan", "plan", default=None, metavar="MODEL",
              help="time MODEL's fast-path candidates on this machine, print each and the choice, "
                   "and store the plan for the app")
@click.option("--batch-sizes", default="1,16", show_default=True, help="with --check-fast or --plan: batches")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="with --check-fast: also compile (blocking; minutes on a CPU) and check the compiled variants")
@click.option("--device", default=None, help="with --check-fast or --plan: cuda, mps or cpu (default: best available)")
def models_cmd(check_fast: str | None, plan: str | None, batch_sizes: str, compile_: bool,
               device: str | None) -> None:
    """List registered models and whether each is on disk (or check or plan one's fast path)."""
    from .models.checkpoints import is_available
    sizes = _sizes(batch_sizes)
    if check_fast:
        _check_fast(check_fast, sizes, compile_, device)
        return
    if plan:
        _plan(plan, sizes, compile_, device)
        return
    for spec in registry.REGISTRY.values():
        mark = "on disk" if is_available(spec) else "missing"
        click.echo(f"{spec.name:24s} {spec.method:12s} {spec.dataset:22s} {spec.resolution:4d}px  {mark}")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"give batch sizes >= 1 separated by commas, e.g. 1,8; got {text[:40]!r}",
                                 param_hint="--batch-sizes")
    return sizes


def _load(name: str, device: str | None):  # noqa: ANN202 - a Denoiser
    from .models.checkpoints import CheckpointError, load_denoiser
    try:
        return load_denoiser(name, device=device)
    except (CheckpointError, registry.UnknownModelError, ValueError) as e:
        raise click.ClickException(str(e)) from None


def _plan(name: str, sizes: list[int], compile_: bool, device: str | None) -> None:
    """``models --plan``: every candidate's ms/img, max abs and PSNR per batch, and the choice."""
    from .accel.candidates import plan_denoiser
    from .accel.plan_cache import PlanCache, machine, plan_key
    den = _load(name, device)
    dev = next(den.parameters()).device
    m = machine(dev)
    click.echo(f"{name} on {m.get('gpu') or m.get('cpu')} ({dev.type}, {m['threads']} threads, torch {m['torch']}"
               + (f", oneDNN {m['onednn']})" if "onednn" in m else f", cuDNN {m.get('cudnn')})"))
    cache, plans = PlanCache(), []
    for n in sorted(sizes):
        t0 = time.perf_counter()
        plans.append(plan_denoiser(den, n, compile=compile_, smaller=plans))
        cache.put(plan_key(den.net, dev, n), plans[-1])
        click.echo(f"{plans[-1].table()}\n  planned in {time.perf_counter() - t0:.0f} s")
    click.echo(f"plans stored in {cache.path}")


def _check_fast(name: str, sizes: list[int], compile_: bool, device: str | None) -> None:
    """``models --check-fast``: each variant's max abs / PSNR vs fp32 and the path each batch gets."""
    from .accel.entry import optimize
    from .accel.verify import short_dtype
    den = _load(name, device)
    fast = optimize(den, compile=compile_, warm_buckets=tuple(sizes) if compile_ else ())
    fast.wait()
    click.echo(f"{name} on {fast.device}: fast dtype {short_dtype(fast.dtype)}, "
               f"channels_last {fast.channels_last}, compiled {fast.compiled_step is not None}")
    checks = fast.check_variants(tuple(sizes), compiled=compile_)
    for c in checks:
        click.echo(f"  {c.describe()}")
    if not checks:
        click.echo("  the fast path is the exact fp32 path here (no low-precision variant to check)")
    for n in sizes:
        click.echo(f"  batch {n}: serves {fast.describe_path(n)}")
    if fast.stats["compile_error"]:
        click.echo(f"  compile error: {fast.stats['compile_error']}")


@main.command("sample")
@click.option("--model", default=registry.DEFAULT_MODEL, show_default=True,
              help=f"registry name ({', '.join(registry.REGISTRY)})")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="load weights from this .pt/.safetensors/diffusers folder instead of the registry file")
@click.option("--num-evals", "--steps", "num_evals", type=int, default=1, show_default=True,
              help="consistency-model network evaluations (1 = one-step; --steps is the old name)")
@click.option("--ts", default=None, help="explicit step indices, e.g. 0,22,39 or 0,106,200/201, or noise "
              "levels, e.g. 'sigmas: 80, 40, 20, 10, 5' (overrides --num-evals)")
@click.option("--grid-size", "--grid-steps", "grid_size", type=int, default=None,
              help="points of the Karras grid for --ts (--grid-steps is the old name)")
@click.option("--heun-steps", type=int, default=None, help="EDM teachers: Heun steps (default: the model's)")
@click.option("--seed", type=int, default=0, show_default=True, help="image i uses seed+i")
@click.option("--class-label", type=int, default=None, help="class for every image (random if unset)")
@click.option("--n", "num", type=int, default=16, show_default=True, help="number of images")
@click.option("--num-samples", type=int, default=None, help="alias of --n for large .npz runs")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--dropout", type=float, default=0.0, show_default=True, help="Monte-Carlo dropout")
@click.option("--device", default=None, help="cuda, mps or cpu (default: best available)")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32")
@click.option("--out", type=click.Path(), default="grid.png", show_default=True,
              help=".png grid, or .npz in OpenAI's evaluation layout (arr_0 uint8 NHWC, arr_1 labels)")
@click.option("--fast/--no-fast", default=None, help="fast path: fp16, channels_last, CUDA graphs "
              "(default: on with CUDA, off elsewhere)")
@click.option("--compile/--no-compile", default=None, help="torch.compile in the fast path "
              "(default: on with CUDA; cached in $TORCHINDUCTOR_CACHE_DIR)")
def sample_cmd(**kw) -> None:
    """Generate images (one-step, multistep or Heun) to a PNG grid or an .npz file."""
    from .sampling.cli import run_sample_command
    try:
        run_sample_command(**kw)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None


@main.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--hub", is_flag=True, help="fetch the openai/diffusers-* Hub repo instead of the .pt")
@click.option("--ref", "refs", multiple=True, metavar="NAME",
              help=f"fetch an evaluation file instead: {', '.join([*registry.REFERENCES, 'inception'])} (repeatable)")
@click.option("--dir", "dest", type=click.Path(), default=None, help="target folder ($CM_CHECKPOINT_DIR)")
def fetch_cmd(names: tuple[str, ...], hub: bool, refs: tuple[str, ...], dest: str | None) -> None:
    """Download released checkpoints (NAMES, or 'all') or, with --ref, reference batches and the
    Inception weights: resumable, verified, atomic."""
    from .models.checkpoints import CheckpointError
    try:
        if refs:
            wanted = [registry.get_data_file(r) for r in refs]
        elif names and names != ("all",):
            wanted = [registry.get_spec(n) for n in names]
        else:
            wanted = [s for s in registry.REGISTRY.values() if not s.embedded]
    except registry.UnknownModelError as e:
        raise click.ClickException(str(e)) from None
    failed = []
    for spec in wanted:
        try:
            _fetch_one(spec, hub and not refs, dest)
        except CheckpointError as e:
            failed.append(spec.name)
            click.echo(f"error: {spec.name}: {e}", err=True)
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(wanted)} failed: {', '.join(failed)}")


def _fetch_one(spec: registry.ModelSpec | registry.DataFile, hub: bool, dest: str | None) -> None:
    """One checkpoint (its .pt, or its Hub repo with ``hub``) or evaluation file, with a progress bar."""
    from pathlib import Path

    from tqdm import tqdm

    from .models.checkpoints import CheckpointError
    from .models.download import describe, fetch_original
    from .models.hub_fetch import ensure_local
    if hub and isinstance(spec, registry.ModelSpec):
        if not spec.hub_repo:
            raise CheckpointError(f"{spec.name} has no diffusers Hub repo (EDM teachers are only "
                                  "published as original .pt files): fetch the .pt instead")
        ensure_local(spec)
        click.echo(f"{spec.name}: {spec.hub_repo} in the Hub cache")
        return
    with tqdm(desc=spec.name, unit="B", unit_scale=True, delay=1.0) as bar:

        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        path = fetch_original(spec, Path(dest) if dest else None, progress)
    if isinstance(spec, registry.DataFile) and spec.resolution:  # a reference batch: is it one?
        from .evaluation.samples import SampleFileError, open_batch
        try:
            open_batch(path, resolution=spec.resolution)
        except SampleFileError as e:
            path.unlink(missing_ok=True)
            raise CheckpointError(f"{e} (deleted; run {spec.fetch_command} again)") from None
    click.echo(describe(path))


@main.command("export")
@click.argument("model")
@click.argument("out", type=click.Path())
@click.option("--arch", "arch_json", default=None,
              help='original flags as JSON for a bare .pt, e.g. \'{"image_size": 64, ...}\'')
@click.option("--steps", type=int, default=None, help="scheduler grid (default: the model's, else 40)")
@click.option("--unet-only", is_flag=True, help="write just the UNet2DModel folder (also for EDM teachers)")
@click.option("--push-to-hub", "repo", default=None, help="then upload OUT to this Hub repo (needs a token)")
@click.option("--private", is_flag=True, help="create the Hub repo as private")
def export_cmd(model: str, out: str, arch_json: str | None, steps: int | None, unet_only: bool,
               repo: str | None, private: bool) -> None:
    """Write MODEL (registry name or file) as a diffusers ConsistencyModelPipeline folder OUT."""
    import json

    from .models.checkpoints import CheckpointError
    from .models.export import export_pipeline, push_to_hub
    try:
        path = export_pipeline(model, out, arch=json.loads(arch_json) if arch_json else None,
                               steps=steps, unet_only=unet_only)
        click.echo(f"wrote {path}")
        if repo:
            click.echo(f"uploaded to {repo}: {push_to_hub(path, repo, private=private)}")
    except (CheckpointError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from None


def _register_evaluation() -> None:
    from .evaluation.cli import eval_cmd, evaluate_cmd
    main.add_command(eval_cmd)
    main.add_command(evaluate_cmd)


def _register_optional() -> None:
    try:
        from .train.cli import train  # noqa: PLC0415
    except ImportError:
        return
    main.add_command(train)


_register_evaluation()
_register_optional()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
