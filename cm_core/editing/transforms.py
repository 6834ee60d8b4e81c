"""The orthogonal transforms ``A`` of the zero-shot editors (paper Algorithm 4) and their replacements.

Each editor keeps part of the reference in a transformed space: colorization keeps the luminance axis
of an orthogonal colour basis, super-resolution keeps coefficient 0 (the mean) of each p x p patch in
an orthogonal patch basis (the original's ``obtain_orthogonal_matrix``); inpainting keeps pixels
(``keep_known`` in :mod:`cm_core.editing.editors`). ``*_replacement(q)`` build the
``(x0, reference) -> A^T [keep A reference + (1 - keep) A x0]`` functions that
:class:`cm_core.sampling.loop.Replacement` carries through the loop.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

LUMINANCE = (0.2989, 0.5870, 0.1140)


@functools.lru_cache(maxsize=16)
def _qr_basis(first: tuple[float, ...]) -> np.ndarray:
    """Orthogonal float64 matrix whose column 0 is ``first`` normalised (QR of the identity with
    column 0 replaced), negated if column 0 sums negative: the original's ``obtain_orthogonal_matrix``."""
    v = np.asarray(first, dtype=np.float64)
    v = v / np.linalg.norm(v)
    m = np.eye(len(v))
    m[:, 0] = v
    q = np.linalg.qr(m)[0]
    if np.sum(q[:, 0]) < 0:
        q = -q
    return q


def luminance_basis(device: torch.device | str = "cpu") -> torch.Tensor:
    """[3, 3] float32 orthogonal colour basis; column 0 = (0.2989, 0.5870, 0.1140) / norm."""
    return torch.from_numpy(_qr_basis(LUMINANCE)).to(device=device, dtype=torch.float32)


def patch_basis(patch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[p^2, p^2] float32 orthogonal basis of a flattened p x p patch; column 0 = constant 1/p."""
    return torch.from_numpy(_qr_basis((1.0,) * patch_size ** 2)).to(device=device, dtype=torch.float32)


def color_replacement(q: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(a, b) -> Q [(Q^T a) * keep + (Q^T b) * (1 - keep)]`` with keep = colour axis 0."""
    mask = torch.zeros(3, 1, 1, device=q.device, dtype=q.dtype)
    mask[0] = 1.0

    def replacement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ca = torch.einsum("bchw,cd->bdhw", a, q)
        cb = torch.einsum("bchw,cd->bdhw", b, q)
        return torch.einsum("bdhw,cd->bchw", ca * mask + cb * (1.0 - mask), q)
    return replacement


def check_patch_size(x: torch.Tensor, p: int) -> None:
    h, w = x.shape[-2:]
    if not isinstance(p, int) or p < 1 or h % p or w % p:
        ok = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
        raise ValueError(f"patch_size must be a positive integer dividing the image size {h}x{w}; "
                         f"got {p!r}. Valid sizes: {ok}")


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, (H/p)(W/p), p^2] in the original's patch order."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, p * p)


def _unpatchify(x: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_patchify`."""
    b, c = x.shape[:2]
    return x.reshape(b, c, h // p, w // p, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def patch_means(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H/p, W/p]: the mean of every non-overlapping p x p patch (a low-resolution image)."""
    check_patch_size(images, patch_size)
    return torch.nn.functional.avg_pool2d(images, patch_size)


def patch_replacement(q: torch.Tensor, p: int
                       ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(a, b) ->`` patches of ``a`` with coefficient 0 (the mean) of ``a`` and the rest of ``b``."""
    def replacement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        ca = torch.einsum("bcnd,de->bcne", _patchify(a, p), q)
        cb = torch.einsum("bcnd,de->bcne", _patchify(b, p), q)
        mix = torch.cat([ca[..., :1], cb[..., 1:]], dim=-1)
        return _unpatchify(torch.einsum("bcne,de->bcnd", mix, q), p, h, w)
    return replacement


def average_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """Every p x p patch replaced by its mean (the original's ``average_image_patches``)."""
    flat = _patchify(x, p)
    return _unpatchify(flat.mean(dim=-1, keepdim=True).expand_as(flat), p, *x.shape[-2:])


def keep_known(x0: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Inpainting's replacement: ``ref`` where ``keep`` is 1, ``x0`` where it is 0."""
    return ref * keep + x0 * (1 - keep)
