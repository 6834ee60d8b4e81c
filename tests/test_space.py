"""A simulated Space: SPACE_ID set, an offline Hub cache in a temporary folder.

Repos are written in the real ``openai/diffusers-*`` layout, the way diffusers' conversion script
(scripts/convert_consistency_to_diffusers.py) writes them (``ConsistencyModelPipeline(unet,
CMStochasticIterativeScheduler(...)).save_pretrained``), at a tiny size. Fetches go through a
stand-in for the two Hub calls (no network here) that writes the cache as huggingface_hub does:
each file to a temporary name, renamed when complete.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

from cm_core.models import hub_fetch
from cm_core import service as S
from cm_core.service import fetches, model_cache
from cm_core.models.checkpoints import CheckpointError, is_available, load_denoiser
from cm_core.models.registry import get_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# IMAGENET_64_UNET_CONFIG of the conversion script, shrunk (2 levels, 32/64 channels, 1 block)
TINY_IMAGENET64_UNET = {
    "sample_size": 64, "in_channels": 3, "out_channels": 3, "layers_per_block": 1, "num_class_embeds": 1000,
    "block_out_channels": [32, 64], "attention_head_dim": 32,
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D"], "resnet_time_scale_shift": "scale_shift",
    "attn_norm_num_groups": 32, "upsample_type": "resnet", "downsample_type": "resnet",
}
NEEDED = {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
          "unet/diffusion_pytorch_model.safetensors"}


def write_pipeline(folder: Path, seed: int = 0) -> Path:
    """A tiny class-conditional CD pipeline folder in the released repos' layout."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY_IMAGENET64_UNET)
    sched = CMStochasticIterativeScheduler(num_train_timesteps=40, sigma_min=0.002, sigma_max=80.0)
    ConsistencyModelPipeline(unet=unet, scheduler=sched).save_pretrained(str(folder))
    return folder


def repo_dir(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def put_in_cache(cache: Path, repo: str, src: Path, files: set[str] | None = None) -> Path:
    """Copy ``src``'s files (or only ``files``) into ``cache`` as snapshot ``COMMIT`` of ``repo``."""
    snap = repo_dir(cache, repo) / "snapshots" / COMMIT
    for f in sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()):
        if files is None or f in files:
            (snap / f).parent.mkdir(parents=True, exist_ok=True)
            (snap / f).write_bytes((src / f).read_bytes())
    (repo_dir(cache, repo) / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir(cache, repo) / "refs" / "main").write_text(COMMIT)
    return snap


class StandInHub:
    """``hub_fetch.HubClient`` over a local folder per repo: lists files and sizes, and downloads one
    file at a time into the cache (``.incomplete`` then rename). ``fail_on`` cuts a download off
    halfway; ``delay`` slows each file down (for the lock test)."""

    def __init__(self, cache: Path, remote: dict[str, Path], fail_on: str | None = None,
                 delay: float = 0.0) -> None:
        self.cache, self.remote, self.fail_on, self.delay = cache, remote, fail_on, delay
        self.downloads: list[str] = []
        self._lock = threading.Lock()

    def files(self, repo: str) -> tuple[str, list[tuple[str, int | None]]]:
        src = self.remote[repo]
        return COMMIT, [(p.relative_to(src).as_posix(), p.stat().st_size) for p in src.rglob("*") if p.is_file()]

    def download(self, repo: str, filename: str, revision: str, on_bytes) -> Path:
        with self._lock:
            self.downloads.append(filename)
        data = (self.remote[repo] / filename).read_bytes()
        dest = repo_dir(self.cache, repo) / "snapshots" / revision / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = repo_dir(self.cache, repo) / "blobs" / f"{filename.replace('/', '_')}.incomplete"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        half = len(data) // 2
        with open(tmp, "wb") as f:
            f.write(data[:half])
            on_bytes(half)
            time.sleep(self.delay)
            if filename == self.fail_on:
                raise ConnectionError("connection reset by peer")
            f.write(data[half:])
            on_bytes(len(data) - half)
        os.replace(tmp, dest)
        (repo_dir(self.cache, repo) / "refs").mkdir(exist_ok=True)
        (repo_dir(self.cache, repo) / "refs" / "main").write_text(revision)
        return dest


@pytest.fixture
def space(tmp_path, monkeypatch):
    """A Space's environment: SPACE_ID, an empty offline Hub cache, an empty checkpoint folder,
    a fresh CPU model cache. Returns the Hub cache folder."""
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("SPACE_ID", "someone/cm-studio")
    monkeypatch.delenv("CM_AUTO_FETCH", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(model_cache, "_CACHE", S.ModelCache(capacity=2, device="cpu"))
    monkeypatch.setattr(fetches, "_JOBS", {})  # no download state from another test
    return cache


@pytest.fixture(scope="module")
def remote(tmp_path_factory) -> Path:
    """The files of a released CD repo (plus what a fetch must skip: a second weights format, a card)."""
    src = write_pipeline(tmp_path_factory.mktemp("remote") / "cd_imagenet64_lpips", seed=1)
    (src / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not needed: the safetensors are enough")
    (src / "README.md").write_text("model card")
    return src


def _generates(name: str) -> None:
    r = S.generate(S.GenerateRequest(model=name, batch_size=2, class_label="random", seed=5))
    assert len(r.images) == 2 and all(im.size == (64, 64) for im in r.images)


def test_a_repo_in_the_hub_cache_is_available_and_generates(space, tmp_path):
    write_pipeline(tmp_path / "cd_l2")
    snap = put_in_cache(space, "openai/diffusers-cd_imagenet64_l2", tmp_path / "cd_l2")
    cfg = json.loads((snap / "unet" / "config.json").read_text())
    assert cfg["_class_name"] == "UNet2DModel" and cfg["num_class_embeds"] == 1000
    assert json.loads((snap / "model_index.json").read_text())["scheduler"][1] == "CMStochasticIterativeScheduler"
    spec = get_spec("cd_imagenet64_l2")
    assert is_available(spec)
    info = S.model_info("cd_imagenet64_l2")
    assert info["available"] and "On disk" in S.model_markdown("cd_imagenet64_l2")
    assert next(r for r in S.model_rows() if r[0] == "cd_imagenet64_l2")[1] == "yes"
    assert not S.ensure_model("cd_imagenet64_l2")  # nothing to download
    _generates("cd_imagenet64_l2")


def test_choosing_a_released_model_fetches_only_the_needed_files_with_progress(space, remote, monkeypatch):
    hub = StandInHub(space, {"openai/diffusers-cd_imagenet64_lpips": remote})
    monkeypatch.setattr(hub_fetch, "CLIENT", hub)
    assert S.model_info("cd_imagenet64_lpips")["auto_fetch"]
    assert "fetched from the Hub on first use" in S.model_markdown("cd_imagenet64_lpips")
    seen: list[tuple[float, str]] = []
    assert S.ensure_model("cd_imagenet64_lpips", lambda f, d: seen.append((f, d)))
    assert set(hub.downloads) == NEEDED and len(hub.downloads) == len(NEEDED)  # one weights format
    assert hub.downloads[-1] == "unet/diffusion_pytorch_model.safetensors"  # configs first
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(1.0) and "downloading" in seen[-1][1]
    assert S.model_info("cd_imagenet64_lpips")["available"]
    _generates("cd_imagenet64_lpips")
    assert not S.ensure_model("cd_imagenet64_lpips") and len(hub.downloads) == len(NEEDED)  # once


def test_a_fetch_cut_off_midway_leaves_nothing_that_looks_complete(space, remote, monkeypatch):
    repo = "openai/diffusers-cd_imagenet64_lpips"
    monkeypatch.setattr(hub_fetch, "CLIENT", StandInHub(space, {repo: remote},
                                                        fail_on="unet/diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="failed"):
        S.ensure_model("cd_imagenet64_lpips")
    snap = repo_dir(space, repo) / "snapshots" / COMMIT
    assert (snap / "unet" / "config.json").is_file()  # the configs arrived, the weights did not
    assert not (snap / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not is_available(get_spec("cd_imagenet64_lpips"))
    assert not S.model_info("cd_imagenet64_lpips")["available"]
    with pytest.raises(CheckpointError, match="not on disk"):
        load_denoiser("cd_imagenet64_lpips", device="cpu")
    hub = StandInHub(space, {repo: remote})  # choosing it again completes the fetch
    monkeypatch.setattr(hub_fetch, "CLIENT", hub)
    assert S.ensure_model("cd_imagenet64_lpips") and is_available(get_spec("cd_imagenet64_lpips"))


def test_two_visitors_choosing_the_same_model_download_it_once(space, remote, monkeypatch):
    hub = StandInHub(space, {"openai/diffusers-cd_imagenet64_lpips": remote}, delay=0.2)
    monkeypatch.setattr(hub_fetch, "CLIENT", hub)
    results: list[bool] = []
    seen: dict[int, list[tuple[float, str]]] = {i: [] for i in range(3)}

    def visit(i: int) -> None:
        results.append(S.ensure_model("cd_imagenet64_lpips", lambda f, d: seen[i].append((f, d))))
    threads = [threading.Thread(target=visit, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert results == [True, True, True]  # each waited for the one download
    assert sorted(hub.downloads) == sorted(NEEDED)
    for i in (1, 2):  # the later visitors see the first one's download move, not a frozen page
        moving = [f for f, d in seen[i] if "downloading cd_imagenet64_lpips" in d and 0 < f < 1]
        assert moving and seen[i][-1][0] == pytest.approx(1.0), seen[i]


def test_disk_space_is_checked_before_anything_is_written(space, remote, monkeypatch):
    hub = StandInHub(space, {"openai/diffusers-cd_imagenet64_lpips": remote})
    monkeypatch.setattr(hub_fetch, "CLIENT", hub)
    monkeypatch.setenv("CM_MIN_FREE_GB", "1e9")  # a disk that can never be free enough
    with pytest.raises(CheckpointError, match="not enough disk space") as e:
        S.ensure_model("cd_imagenet64_lpips")
    assert "CM_CHECKPOINT_DIR" in str(e.value) and hub.downloads == []


def test_an_edm_teacher_is_fetched_as_its_original_pt(space, monkeypatch):
    got: list[str] = []

    def stand_in_fetch(spec, progress=None, timeout=60.0):
        got.append(spec.name)
        path = Path(os.environ["CM_CHECKPOINT_DIR"]) / str(spec.filename)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        return path
    monkeypatch.setattr(hub_fetch, "fetch_original", stand_in_fetch)
    assert S.ensure_model("edm_imagenet64_ema") and got == ["edm_imagenet64_ema"]
    assert is_available(get_spec("edm_imagenet64_ema"))


def test_a_plain_machine_does_not_fetch_and_keeps_the_button(space, remote, monkeypatch):
    from cm_app import picker as P
    hub = StandInHub(space, {"openai/diffusers-cd_imagenet64_lpips": remote})
    monkeypatch.setattr(hub_fetch, "CLIENT", hub)
    monkeypatch.delenv("SPACE_ID")
    assert not hub_fetch.auto_fetch_enabled() and not S.ensure_model("cd_imagenet64_lpips")
    assert hub.downloads == [] and "fetch_checkpoints.sh" in S.model_markdown("cd_imagenet64_lpips")
    button = object()
    updates = P.model_updates("cd_imagenet64_lpips", [], [], *[object() for _ in range(6)], button)
    assert updates[button]["visible"] is True
    monkeypatch.setenv("CM_AUTO_FETCH", "1")  # allowed explicitly: fetched, button hidden
    assert S.model_markdown("cd_imagenet64_lpips").count("first use") == 1
    updates = P.model_updates("cd_imagenet64_lpips", [], [], *[object() for _ in range(6)], button)
    assert updates[button]["visible"] is False
    monkeypatch.setenv("SPACE_ID", "someone/cm-studio")
    monkeypatch.setenv("CM_AUTO_FETCH", "0")  # and a Space can turn it off
    assert not hub_fetch.auto_fetch_enabled()
    monkeypatch.setenv("CM_AUTO_FETCH", "sometimes")
    with pytest.raises(ValueError, match="CM_AUTO_FETCH"):
        hub_fetch.auto_fetch_enabled()


def _card() -> dict:
    import yaml
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_the_space_card_preloads_the_default_released_models_and_suits_zerogpu():
    from huggingface_hub import SpaceHardware
    from packaging.specifiers import SpecifierSet

    from cm_core.models.checkpoints import HUB_CONFIGS, HUB_WEIGHTS
    from cm_core.models.registry import REGISTRY
    card = _card()
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py"
    reqs = (Path(__file__).resolve().parent.parent / "requirements.txt").read_text().splitlines()
    gradio_req = next(r for r in reqs if r.startswith("gradio>") or r.startswith("gradio="))
    assert card["sdk_version"] in SpecifierSet(gradio_req.removeprefix("gradio"))  # ZeroGPU: Gradio 4+
    assert int(card["sdk_version"].split(".")[0]) >= 4
    assert str(card["python_version"]).startswith("3.10")  # the version ZeroGPU documents
    assert card["suggested_hardware"] in {h.value for h in SpaceHardware}
    hub_repos = {s.hub_repo for s in REGISTRY.values() if s.hub_repo}
    for entry in card["preload_from_hub"]:
        repo, files = entry.split()
        assert repo in hub_repos and repo in card["models"]
        assert files.split(",") == [*HUB_CONFIGS, HUB_WEIGHTS[0]]  # the configs and one weights format
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Hugging Face Spaces"):readme.index("### Paperspace")]
    for words in ("**CPU**", "**GPU**", "**ZeroGPU**", "spaces.GPU", "CM_AUTO_FETCH", "preload_from_hub"):
        assert words in section


def test_the_real_hub_client_offline_is_a_clear_error(space):
    with pytest.raises(CheckpointError, match="could not list openai/diffusers-ct_imagenet64"):
        S.ensure_model("ct_imagenet64")
    assert not is_available(get_spec("ct_imagenet64"))


def test_a_hub_error_with_an_empty_message_is_still_a_clear_error(space, remote, monkeypatch):
    """``TimeoutError()`` has no message: the error names its type instead of failing on it."""
    hub = StandInHub(space, {"openai/diffusers-cd_imagenet64_lpips": remote})

    def silent(*a, **k):
        raise TimeoutError()
    monkeypatch.setattr(hub, "download", silent)
    monkeypatch.setattr(hub_fetch, "CLIENT", hub)
    with pytest.raises(CheckpointError, match=r"download of .* failed \(TimeoutError\)"):
        S.ensure_model("cd_imagenet64_lpips")
    monkeypatch.setattr(hub, "files", silent)
    with pytest.raises(CheckpointError, match=r"could not list .* \(TimeoutError\)"):
        S.ensure_model("cd_imagenet64_lpips")


def test_a_download_past_its_deadline_is_a_clear_error_and_its_waiter_stops_in_time(space, remote, monkeypatch):
    monkeypatch.setenv("CM_FETCH_DEADLINE_S", "1")
    monkeypatch.setenv("CM_HUB_TIMEOUT_S", "1")
    hub = StandInHub(space, {"openai/diffusers-cd_imagenet64_lpips": remote}, delay=3.0)  # stalls halfway
    monkeypatch.setattr(hub_fetch, "CLIENT", hub)
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"did not finish within 1 s \(CM_FETCH_DEADLINE_S\)"):
        S.ensure_model("cd_imagenet64_lpips")
    assert time.perf_counter() - t < 2.5  # the deadline plus one connection timeout
    job = fetches._JOBS["cd_imagenet64_lpips"]
    assert job.done.wait(10) and "deadline" in job.error  # the download itself stopped at its deadline
    assert not is_available(get_spec("cd_imagenet64_lpips"))
    assert not list((space / "models--openai--diffusers-cd_imagenet64_lpips").rglob("snapshots/*/*/*.json"))


def test_waiting_for_another_download_of_the_model_ends_at_the_deadline(space):
    import time as _t
    with hub_fetch.model_lock("cd_imagenet64_lpips", space):
        done = []
        t = _t.monotonic()

        def second():
            try:
                with hub_fetch.model_lock("cd_imagenet64_lpips", space, deadline=_t.monotonic() + 0.5):
                    done.append("got it")
            except CheckpointError as e:
                done.append(str(e))
        th = threading.Thread(target=second)
        th.start()
        th.join(5)
    assert _t.monotonic() - t < 2 and "still running" in done[0]


def test_a_batch_reports_the_cause_of_a_failed_download_and_does_not_wait(space, monkeypatch):
    class Offline(hub_fetch.HubClient):
        def files(self, repo):
            raise ConnectionError("the Hub cannot be reached (name resolution failed)")
    monkeypatch.setattr(hub_fetch, "CLIENT", Offline())
    S.start_download("cd_imagenet64_lpips")
    fetches._JOBS["cd_imagenet64_lpips"].done.wait(5)
    with pytest.raises(CheckpointError, match="the Hub cannot be reached"):
        S.check_download("cd_imagenet64_lpips")
    S.start_download("cd_imagenet64_lpips")  # within the retry interval: the failure stands
    with pytest.raises(CheckpointError, match="the Hub cannot be reached"):
        S.check_download("cd_imagenet64_lpips")
    S.check_download("cd_digits32")  # embedded: nothing to say


def test_the_picker_orders_by_state_and_a_failed_fetch_is_a_message(space, remote, monkeypatch):
    """Runnable models first with their state in the label; picking one that needs a download only
    says so (the tabs keep the model in use); a failed Fetch is a message under the picker, and
    the registry table, the labels and the model in use are left as they were."""
    import gradio as gr

    from cm_app import picker as P
    from cm_core.models.checkpoints import CheckpointError
    monkeypatch.delenv("SPACE_ID")
    names = [n for _, n in S.model_choices()]
    states = [S.model_state(get_spec(n))[0] for n in names]
    assert states == sorted(states) and names[0] == "cd_digits32"
    assert S.model_choices()[-1][0].endswith("needs a download: 2.11 GB")
    md, fetch_btn, active = object(), object(), object()
    out = P.pick_model("cd_imagenet64_lpips", "ct_digits32", {}, md, fetch_btn, active)
    assert set(out) == {md, fetch_btn} and "The tabs keep using **ct_digits32**" in out[md]
    out = P.pick_model("no_such_model", "ct_digits32", {}, md, fetch_btn, active)
    assert set(out) == {md} and "unknown model" in out[md].lower()

    def offline(name, progress=None):
        raise CheckpointError("the Hub cannot be reached (offline)")
    monkeypatch.setattr(S, "fetch_model", offline)
    msg, *rest = P.fetch_in_page("cd_imagenet64_lpips")
    assert "Fetching cd_imagenet64_lpips failed" in msg and "offline" in msg
    assert all(isinstance(r, type(gr.skip())) for r in rest)
