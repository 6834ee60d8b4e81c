"""The built-in colour digits, image folders, and the digits quality classifier and Frechet distance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cm_core.evaluation.digits import digit_frechet_distance, shared_classifier
from cm_core.train.data import (
    digit_colours,
    digit_split,
    load_dataset,
    load_digits32,
    load_image_folder,
)


def test_digits_shapes_range_labels() -> None:
    ds = load_digits32("train")
    assert ds.images.shape == (1347, 3, 32, 32)
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.num_classes == 10 and set(ds.labels.tolist()) == set(range(10))
    assert len(load_digits32("heldout")) == 450 and len(load_digits32("all")) == 1797


def test_split_is_disjoint_and_complete() -> None:
    tr, ho = digit_split(1797, "train"), digit_split(1797, "heldout")
    assert not set(tr) & set(ho) and len(tr) + len(ho) == 1797


def test_deterministic_colours_and_recolor() -> None:
    a, b = load_digits32("train"), load_digits32("train")
    assert torch.equal(a.images, b.images)
    before = a.images.clone()
    a.recolor(1)
    assert not torch.equal(before, a.images)
    fg, bg = digit_colours(5)
    assert np.linalg.norm(fg - bg) >= 0.45


def test_images_are_coloured() -> None:
    x = load_digits32("heldout").images
    # the three channels differ: colour, not grey
    assert (x[:, 0] - x[:, 1]).abs().mean() > 0.05


def test_image_folder(tmp_path) -> None:
    from PIL import Image
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    ds = load_image_folder(tmp_path, 16)
    assert ds.images.shape == (3, 3, 16, 16) and ds.labels is None
    assert load_dataset(str(tmp_path), 16).images.shape[0] == 3
    with pytest.raises(ValueError):
        load_dataset(str(tmp_path / "missing"))


def test_classifier_recognises_real_digits() -> None:
    clf = shared_classifier()
    ds = load_digits32("train", epoch=7)
    assert (clf.predict(ds.images) == ds.labels.numpy()).mean() > 0.93
    noise = torch.rand(200, 3, 32, 32) * 2 - 1
    assert digit_frechet_distance(clf.features(noise), clf.features(ds.images)) > \
        5 * digit_frechet_distance(clf.features(load_digits32("heldout").images), clf.features(ds.images))
