"""Export to diffusers: the exported ConsistencyModelPipeline draws our images from the same noise."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import ConsistencyModelPipeline, UNet2DModel
from safetensors.torch import load_file

import cm_core
from cm_core import sampling
from cm_core.models.checkpoints import CheckpointError
from cm_core.models.export import export_pipeline, push_to_hub

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5


def _pipe_vs_ours(den, pipe, x_T: torch.Tensor, labels: torch.Tensor | None, ts: list[int], steps: int,
                  seed: int) -> tuple[float, float]:
    """Max abs difference in [0, 1] images: one-step, and multistep ``ts`` on ``steps`` (diffusers'
    ``timesteps`` are our ``ts`` without the final grid point, descending: 0,22,39 -> [22, 0])."""
    with torch.no_grad():
        one = sampling.onestep(den, x_T, labels)
        pipe_one = pipe(batch_size=len(x_T), class_labels=labels, latents=x_T / den.sigma_max,
                        output_type="pt").images
        multi = sampling.multistep(den, x_T, ts, steps, torch.Generator().manual_seed(seed), labels)
        pipe_multi = pipe(batch_size=len(x_T), class_labels=labels, latents=x_T / den.sigma_max,
                          timesteps=list(reversed(ts[:-1])),
                          generator=torch.Generator().manual_seed(seed), output_type="pt").images
    return (float((pipe_one - (one + 1) / 2).abs().max()),
            float((pipe_multi - (multi + 1) / 2).abs().max()))


def test_golden_cd_checkpoint_exports_to_an_equal_pipeline(golden, tmp_path):
    case = next(c for c in json.loads((golden / "cases.json").read_text()) if c["tag"] == "imagenet64_tiny_cd")
    src = tmp_path / "imagenet64_tiny_cd.pt"
    shutil.copy(golden / "imagenet64_tiny_cd.pt", src)
    out = export_pipeline(src, tmp_path / "pipe", arch=case["flags"], kind="cm", steps=case["steps"])
    for f in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json"):
        assert (out / f).is_file(), f
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["sigma_min"], sched["sigma_max"], sched["sigma_data"], sched["num_train_timesteps"]) == \
        (0.002, 80.0, 0.5, 40)
    assert json.loads((out / "unet" / "config.json").read_text())["num_class_embeds"] == 1000
    pipe = ConsistencyModelPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    den = cm_core.load_denoiser(src, arch=case["flags"], kind="cm", device="cpu")
    ref = load_file(str(golden / "imagenet64_tiny_cd.safetensors"))
    one, multi = _pipe_vs_ours(den, pipe, ref["x_T"], ref["class_labels"], case["ts"], case["steps"],
                               case["multistep_generator_seed"])
    print(f"\ngolden CD: pipeline vs ours, one-step {one:.2e}, multistep {multi:.2e}")
    assert one <= TOL and multi <= TOL
    # and the pipeline reproduces the original implementation's multistep draw
    pipe_ref = pipe(batch_size=len(ref["x_T"]), class_labels=ref["class_labels"], latents=ref["x_T"] / 80,
                    timesteps=[22, 0], generator=torch.Generator().manual_seed(case["multistep_generator_seed"]),
                    output_type="pt").images
    assert float((pipe_ref - (ref["multistep"] + 1) / 2).abs().max()) < 1e-4


def test_embedded_model_exports_to_an_equal_pipeline(tmp_path):
    out = export_pipeline("cd_digits32", tmp_path / "digits")
    pipe = ConsistencyModelPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    den = cm_core.load_denoiser("cd_digits32", device="cpu")
    assert pipe.unet.config.num_class_embeds == 10 and pipe.unet.config.sample_size == 32
    x_T = sampling.initial_noise((6, 3, 32, 32), torch.Generator().manual_seed(3))
    labels = torch.arange(6) % 10
    one, multi = _pipe_vs_ours(den, pipe, x_T, labels, [0, 22, 39], 40, seed=11)
    print(f"\ncd_digits32: pipeline vs ours, one-step {one:.2e}, multistep {multi:.2e}")
    assert one <= TOL and multi <= TOL


def test_edm_teacher_is_refused_naming_the_valid_models_or_exported_as_a_unet(tmp_path):
    with pytest.raises(CheckpointError, match="EDM teacher") as e:
        export_pipeline("edm_digits32", tmp_path / "edm")
    assert "cd_digits32" in str(e.value) and "--unet-only" in str(e.value)
    assert not (tmp_path / "edm").exists()
    out = export_pipeline("edm_digits32", tmp_path / "edm_unet", unet_only=True)
    unet = UNet2DModel.from_pretrained(str(out)).eval()
    den = cm_core.load_denoiser("edm_digits32", device="cpu")
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([10.0, 3.0]), torch.tensor([1, 7])
    with torch.no_grad():
        assert torch.equal(unet(x, t, class_labels=y).sample, den.net(x, t, class_labels=y).sample)
    assert json.loads((out / "config.json").read_text())["_cm_kind"] == "edm"


class _StandInHfApi:
    """Records the two Hub calls ``push_to_hub`` makes (no network here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id: str, **kw):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))
        assert (Path(kw["folder_path"]) / "model_index.json").is_file()  # the folder exists when uploaded
        return type("Info", (), {"commit_url": f"https://hub.invalid/{kw['repo_id']}/commit/1"})()


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path):
    out = export_pipeline("cd_digits32", tmp_path / "p")
    api = _StandInHfApi()
    url = push_to_hub(out, "me/cd-digits32", private=True, api=api)
    assert url.endswith("me/cd-digits32/commit/1")
    (c1, k1), (c2, k2) = api.calls
    assert c1 == "create_repo" and k1["repo_id"] == "me/cd-digits32" and k1["exist_ok"] and k1["private"]
    assert c2 == "upload_folder" and k2["repo_id"] == "me/cd-digits32" and k2["folder_path"] == str(out)
    assert k2["repo_type"] == "model"


def test_cli_export_and_its_errors(tmp_path):
    from run_cli import run_cli

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_cli("export", *args)
    r = run("ct_digits32", str(tmp_path / "ct"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ct" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    r = run("edm_digits32", str(tmp_path / "edm"))
    assert r.returncode != 0 and "EDM teacher" in r.stderr and "ct_digits32" in r.stderr
