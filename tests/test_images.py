"""User images and masks: modes, alpha, fitting, masks, bad uploads (cm_core.editing.pictures)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cm_core.editing import pictures as im
from cm_core.editing.pictures import ImageEditError

R = 32


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise_image(w: int, h: int, mode: str, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16), "I;16")
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32), "F")
    if mode == "P":
        return rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    return rgba.convert(mode)


MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr", "1", "I;16", "I", "F", "PA", "LAB",
         "HSV"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_becomes_rgb_in_range(mode):
    img = noise_image(45, 30, mode)
    fitted = im.prepare_image(img, R)
    assert fitted.mode == "RGB" and fitted.size == (R, R)
    x = im.image_to_tensor(fitted)
    assert x.shape == (1, 3, R, R) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1


def test_high_bit_depth_is_rescaled_not_clipped():
    a = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    rgb = np.asarray(im.to_rgb(Image.fromarray(a, "I;16")))
    assert rgb[0, :, 0].tolist() == [0, 100, 255]
    f = np.asarray(im.to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")))
    assert f[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_is_composited_on_white_or_the_given_background():
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255  # red, but the left half fully transparent
    a[:, 2:, 3] = 255
    img = Image.fromarray(a, "RGBA")
    rgb = np.asarray(im.to_rgb(img))
    assert (rgb[:, :2] == 255).all() and (rgb[:, 2:] == [255, 0, 0]).all()
    grey = np.asarray(im.to_rgb(img, (128, 128, 128)))
    assert (grey[:, :2] == 128).all()
    la = np.asarray(im.to_rgb(Image.fromarray(np.zeros((2, 2, 2), np.uint8), "LA")))
    assert (la == 255).all()
    p = Image.new("P", (2, 2), 0)
    p.putpalette([0, 0, 0, 10, 20, 30])
    p.info["transparency"] = 0
    assert (np.asarray(im.to_rgb(p)) == 255).all()


def test_fit_is_a_centre_crop_then_resize():
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, 20:40] = 200  # the centred 20x20 square
    out = im.prepare_image(Image.fromarray(a), 10)
    assert out.size == (10, 10) and (np.asarray(out) == 200).all()
    assert im.crop_box(60, 20) == (20, 0, 40, 20) and im.crop_box(7, 9) == (0, 1, 7, 8)
    one = im.prepare_image(Image.new("RGB", (1, 1), (10, 200, 30)), R)  # a 1x1 upload
    assert one.size == (R, R) and (np.asarray(one) == [10, 200, 30]).all()
    same = noise_image(R, R, "RGB")
    assert im.prepare_image(same, R).tobytes() == same.tobytes()


def test_tensor_round_trip_is_exact():
    img = noise_image(R, R, "RGB", 3)
    x = im.image_to_tensor(img)
    assert torch.equal(x, torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)[None])
    assert im.tensor_to_images(x)[0].tobytes() == img.tobytes()
    assert len(im.tensor_to_images(torch.zeros(3, 3, 4, 4))) == 3


def test_reads_bytes_paths_arrays_and_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    first = np.asarray(im.prepare_image(buf.getvalue(), 8))
    assert first[..., 0].min() > 200 and first[..., 2].max() < 50
    path = tmp_path / "a.png"
    noise_image(9, 7, "RGB").save(path)
    assert im.load_image(str(path)).size == (9, 7) and im.load_image(path).size == (9, 7)
    assert im.load_image(np.zeros((3, 5), bool)).size == (5, 3)
    assert im.load_image(np.ones((3, 5, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    jpg = png_bytes(noise_image(12, 6, "RGB"), "JPEG", exif=_exif_rotated())
    assert im.load_image(jpg).size == (6, 12)  # EXIF orientation applied


def _exif_rotated() -> bytes:
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90
    return ex.tobytes()


@pytest.mark.parametrize("bad, msg", [
    (b"not an image at all", "could not read"),
    (b"", "could not read"),
    (12, "expected an image"),
    (np.zeros((0, 4)), "must be"),
    (np.zeros((4, 4, 2)), "must be"),
    (np.full((2, 2), np.nan), "NaN"),
])
def test_non_images_are_clear_errors(bad, msg):
    with pytest.raises(ImageEditError, match=msg):
        im.prepare_image(bad, R)
    assert issubclass(ImageEditError, ValueError)


def test_truncated_file_and_decompression_bomb(monkeypatch):
    data = png_bytes(noise_image(64, 64, "RGB"))
    with pytest.raises(ImageEditError, match="damaged|could not read"):
        im.prepare_image(data[: len(data) // 2], R)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageEditError, match="too large"):
        im.prepare_image(png_bytes(noise_image(40, 40, "RGB")), R)  # over the limit: a warning
    with pytest.raises(ImageEditError, match="too large"):
        im.prepare_image(data, R)  # over twice the limit: Pillow's error


# --------------------------------------------------------------------- masks
def test_mask_sources():
    a = np.zeros((6, 8, 4), np.uint8)
    a[1:3, 2:5, 3] = 255  # painted strokes: alpha only (black paint)
    rgba = Image.fromarray(a, "RGBA")
    want = a[..., 3] > 0
    assert (im.mask_array(rgba) == want).all() and (im.mask_array(a) == want).all()
    assert (im.mask_array(torch.from_numpy(want)) == want).all()
    assert (im.mask_array(Image.fromarray(want.astype(np.uint8) * 7, "L")) == want).all()
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[want, 1] = 1  # any non-zero channel
    assert (im.mask_array(rgb) == want).all()
    keep = im.keep_mask(want)
    assert keep.shape == (1, 1, 6, 8) and torch.equal(keep[0, 0], torch.from_numpy(~want).float())


def test_an_image_editor_value_is_its_picture_and_the_union_of_its_layers():
    from cm_app import editor_values as ev
    a = np.zeros((6, 8, 4), np.uint8)
    a[1:3, 2:5, 3] = 255
    b = np.zeros_like(a)
    b[4, 0, 3] = 10
    photo, strokes = Image.new("RGB", (8, 6), (1, 2, 3)), Image.new("RGB", (8, 6), (9, 9, 9))
    editor = {"background": photo, "layers": [Image.fromarray(a, "RGBA"), Image.fromarray(b, "RGBA")],
              "composite": strokes}
    both = ev.painted_mask(editor)
    assert both.sum() == (a[..., 3] > 0).sum() + 1 and both[4, 0]
    assert ev.background(editor, "x") is photo and ev.painting(editor, "x") is strokes
    assert ev.background(photo, "x") is photo and ev.painted_mask(photo) is None  # an API client's image
    with pytest.raises(ImageEditError, match="no painted layer"):
        ev.painted_mask({"layers": []})
    with pytest.raises(ImageEditError, match="upload a photo first"):
        ev.background({"background": None, "layers": [], "composite": None}, "a photo")


def test_fit_mask_follows_the_image_crop():
    edit = np.zeros((20, 60), bool)
    edit[5, 25] = True  # inside the centred square: one pixel marks its whole model pixel
    fitted = im.fit_mask(edit, (60, 20), 10)
    assert fitted.shape == (10, 10) and fitted.sum() == 1 and fitted[2, 2]
    model_sized = np.zeros((10, 10), bool)
    assert im.fit_mask(model_sized, (60, 20), 10) is model_sized
    with pytest.raises(ImageEditError, match="mask is 7x5 but the image is 60x20"):
        im.fit_mask(np.zeros((5, 7), bool), (60, 20), 10)
    outside = np.zeros((20, 60), bool)
    outside[:, :10] = True  # cut away by the centre crop
    with pytest.raises(ImageEditError, match="empty"):
        im.prepare_mask(outside, (60, 20), 10)
    with pytest.raises(ImageEditError, match="empty"):
        im.prepare_mask(np.zeros((10, 10)), (10, 10), 10)
    with pytest.raises(ImageEditError, match="whole image"):
        im.prepare_mask(np.ones((20, 60)), (60, 20), 10)


# --------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None, database=None)
@given(w=st.integers(1, 70), h=st.integers(1, 70), mode=st.sampled_from(MODES),
       size=st.sampled_from([8, 16, 32]), seed=st.integers(0, 2 ** 16), fmt=st.sampled_from(["obj", "png"]))
def test_any_upload_fits_the_model(w, h, mode, size, seed, fmt):
    img = noise_image(w, h, mode, seed)
    encoded = {"CMYK": "JPEG", "YCbCr": "JPEG", "F": "TIFF", "PA": None, "LAB": None, "HSV": None}
    enc = encoded.get(mode, "PNG")
    src = img if fmt == "obj" or enc is None else png_bytes(img, enc)
    fitted = im.prepare_image(src, size)
    assert fitted.mode == "RGB" and fitted.size == (size, size)
    x = im.image_to_tensor(fitted)
    assert x.shape == (1, 3, size, size) and bool(torch.isfinite(x).all())
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    edit = np.random.default_rng(seed).random((h, w)) > 0.5
    m = im.fit_mask(edit, (w, h), size)
    assert m.shape == (size, size) and m.dtype == bool
    assert m.any() == edit[im.crop_box(w, h)[1]:im.crop_box(w, h)[3],
                           im.crop_box(w, h)[0]:im.crop_box(w, h)[2]].any()
