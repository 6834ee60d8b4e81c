"""Evaluating samples: batch files and their errors, reference statistics, the eval command on 1
and 2 gloo ranks, and the evaluate command's resumable sampling on the embedded digits model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cm_core.evaluation import evaluate as E
from cm_core.evaluation import metrics as M
from cm_core.evaluation import run_model
from cm_core.evaluation.features import Extractor
from cm_core.evaluation.samples import SampleFileError, open_batch
from cm_core.sampling.cli import settings_from_options
from cm_core.sampling.generate import SampleSettings
from cm_core.models.registry import get_spec
from run_cli import run_cli
from test_distributed import _free_port

ROOT = Path(__file__).resolve().parent.parent


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_batches_stream_in_file_order_with_labels(tmp_path):
    x, y = _images(7), np.arange(7)
    np.savez(tmp_path / "s.npz", x, y)
    b = open_batch(tmp_path / "s.npz")
    assert (b.count, b.resolution) == (7, 32) and np.array_equal(b.labels, y)
    assert np.array_equal(np.concatenate(list(b.batches(3))), x)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
    (lambda p: np.savez(p, images=_images(3)), "no arr_0"),
    (lambda p: np.savez(p, _images(3).astype(np.float32) / 127.5 - 1), "expected uint8"),
    (lambda p: np.savez(p, _images(3).transpose(0, 3, 1, 2)), "looks NCHW"),
    (lambda p: np.savez(p, np.zeros((0, 32, 32, 3), np.uint8)), "no images"),
    (lambda p: np.savez(p, _images(1)), "at least 2"),
    (lambda p: np.savez(p, _images(3), np.arange(2)), "arr_1"),
    (lambda p: np.savez(p, _images(3, size=64)), "the reference is 32x32"),
])
def test_bad_batch_files_are_clear_errors(tmp_path, make, message):
    p = tmp_path / "bad.npz"
    make(p)
    with pytest.raises(SampleFileError, match=message):
        open_batch(p, resolution=32)


def test_a_truncated_file_is_a_clear_error(tmp_path):
    p = tmp_path / "s.npz"
    with zipfile.ZipFile(p, "w") as zf, zf.open("arr_0.npy", "w") as f:  # header says 5, data has 3
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (5, 32, 32, 3)})
        f.write(_images(3).tobytes())
    with pytest.raises(SampleFileError, match="truncated"):
        open_batch(p)
    full = tmp_path / "full.npz"
    np.savez(full, _images(50))
    (tmp_path / "cut.npz").write_bytes(full.read_bytes()[:-20_000])
    with pytest.raises(SampleFileError, match="truncated"):
        open_batch(tmp_path / "cut.npz")


def _fake_extractor() -> Extractor:
    return Extractor("inception", (("pool", 4), ("spatial", 3), ("logits", 5)), lambda x: x)


def test_a_reference_with_precomputed_statistics_uses_them():
    rng = np.random.default_rng(1)
    samples, ref = rng.normal(size=(64, 12)), rng.normal(0.5, 1.0, size=(64, 12))
    mu, sigma = M.statistics(ref[:, :4] + 3.0)
    computed = E.compute_metrics(_fake_extractor(), samples, ref, {}, None)
    given = E.compute_metrics(_fake_extractor(), samples, ref, {"mu": mu, "sigma": sigma}, None)
    assert given["fid"] == pytest.approx(M.frechet_distance(*M.statistics(samples[:, :4]), mu, sigma))
    assert given["fid"] > computed["fid"] + 5 and given["sfid"] == computed["sfid"]
    assert computed["inception_score"] == pytest.approx(M.inception_score(E.softmax(samples[:, 7:])))


def test_eval_gives_the_same_numbers_on_1_and_2_gloo_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path))
    np.savez(tmp_path / "samples.npz", _images(9, seed=1), np.arange(9) % 10)
    np.savez(tmp_path / "ref.npz", _images(8, seed=2))
    one = E.evaluate_files(tmp_path / "samples.npz", tmp_path / "ref.npz", "digits", batch_size=2,
                           device="cpu", progress=False, write_json=False)
    assert set(one) >= {"fd", "score", "class_accuracy", "precision", "recall"}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "cm_core", "eval", str(tmp_path / "samples.npz"), str(tmp_path / "ref.npz"),
           "--features", "digits", "--batch-size", "2", "--device", "cpu"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "samples.metrics.json").read_text())
    assert two["num_samples"] == 9 and two["num_reference"] == 8
    for k in ("fd", "score", "class_accuracy", "precision", "recall"):
        assert two[k] == pytest.approx(one[k], rel=1e-9, abs=1e-12), k


def test_missing_weights_and_unknown_references_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path))
    np.savez(tmp_path / "s.npz", _images(4, size=64))
    np.savez(tmp_path / "r.npz", _images(4, size=64))
    res = run_cli("eval", str(tmp_path / "s.npz"), str(tmp_path / "r.npz"))
    assert res.returncode == 1 and "fetch --ref inception" in res.stderr
    res = run_cli("eval", str(tmp_path / "s.npz"), "imagenet")
    assert res.returncode == 1 and "imagenet64, bedroom256, cat256, digits32" in res.stderr
    res = run_cli("eval", str(tmp_path / "s.npz"), "imagenet64")
    assert res.returncode == 1 and "fetch --ref imagenet64" in res.stderr
    res = run_cli("eval", str(tmp_path / "s.npz"), "digits32")
    assert res.returncode == 1 and "reference is 32x32" in res.stderr
    res = run_cli("evaluate", "cd_digits32", "--num-samples", "1")
    assert res.returncode == 1 and "--num-samples must be >= 2" in res.stderr
    res = run_cli("evaluate", "cd_digits", "--num-samples", "8")
    assert res.returncode == 1 and "valid names" in res.stderr and "cd_digits32" in res.stderr
    res = run_cli("fetch", "--ref", "imagenet")
    assert res.returncode == 1 and "imagenet64, bedroom256, cat256, inception" in res.stderr


def test_evaluate_resumes_after_a_kill_and_matches_the_sample_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CM_CHECKPOINT_DIR", str(tmp_path))  # no Inception weights: digits features
    monkeypatch.setattr(run_model, "CHUNK", 16)
    settings = SampleSettings(num_evals=1)
    written = []
    real_write = run_model.write_samples

    def killed_after_two(out, arr, lab):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(out)
        real_write(out, arr, lab)

    monkeypatch.setattr(run_model, "write_samples", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_model.evaluate_model("cd_digits32", settings, 40, str(tmp_path / "run"), batch_size=8, device="cpu")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["part-00000.npz", "part-00001.npz"]
    monkeypatch.setattr(run_model, "write_samples", real_write)
    result = run_model.evaluate_model("cd_digits32", settings, 40, str(tmp_path / "run"), batch_size=8,
                                      device="cpu")
    assert result["features"] == "digits" and result["num_samples"] == 40 and result["network_evals"] == 1
    assert 0 <= result["class_accuracy"] <= 1 and result["fd"] > 0
    assert json.loads((tmp_path / "run" / "samples.metrics.json").read_text())["fd"] == result["fd"]
    res = run_cli("sample", "--model", "cd_digits32", "--num-samples", "40", "--batch-size", "8",
                  "--out", str(tmp_path / "direct.npz"), "--device", "cpu")
    assert res.returncode == 0
    direct, merged = np.load(tmp_path / "direct.npz"), np.load(tmp_path / "run" / "samples.npz")
    assert np.array_equal(direct["arr_0"], merged["arr_0"]) and np.array_equal(direct["arr_1"], merged["arr_1"])


def test_settings_name_the_run_folder_and_count_network_evaluations():
    cd, edm = get_spec("cd_digits32"), get_spec("edm_digits32")
    two = settings_from_options(cd, 2, None, None, None, 0.0)
    assert run_model.settings_label(cd, two) == "ts0-22-39of40" and two.evaluations(cd) == 2
    assert run_model.settings_label(cd, SampleSettings()) == "onestep" and SampleSettings().evaluations(cd) == 1
    assert run_model.settings_label(edm, SampleSettings()) == "heun18"
    assert SampleSettings().evaluations(edm) == 35
    sig = settings_from_options(cd, 1, "sigmas: 80, 5", None, None, 0.0)  # 80, 5, then sigma_min
    assert run_model.settings_label(cd, sig) == "sigmas80-5" and sig.evaluations(cd) == 2
