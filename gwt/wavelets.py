"""Wavelet helpers for GWT: validation, coefficient lengths, the Haar closed form and the
general multi-level transform (through ptwt).

Conventions (see docs/update_rule.md): the transform runs along the last dimension of a
gradient matrix ``(m, n)`` with orthonormal pywt filters; the boundary mode defaults to
``zero`` as in the released optimizer.
"""
from __future__ import annotations

import functools

import pywt
import torch
import torch.nn.functional as F

#: Boundary modes accepted by both pywt and ptwt.
BOUNDARY_MODES = ("zero", "constant", "reflect", "periodic", "symmetric")


@functools.lru_cache(maxsize=None)
def discrete_wavelets() -> tuple[str, ...]:
    return tuple(pywt.wavelist(kind="discrete"))


def check_wavelet(wavelet: str, key: str = "wavelet") -> str:
    """Return the wavelet name if pywt knows it as a discrete wavelet, else raise."""
    if not isinstance(wavelet, str) or wavelet not in discrete_wavelets():
        shown = ", ".join(discrete_wavelets()[:12])
        raise ValueError(
            f"{key}={wavelet!r} is not a discrete pywt wavelet; valid names include {shown}, ... "
            "(see pywt.wavelist(kind='discrete')), or None/level=0 for plain Adam"
        )
    return wavelet


def check_boundary(boundary: str, key: str = "boundary") -> str:
    if boundary not in BOUNDARY_MODES:
        raise ValueError(f"{key}={boundary!r} is not a boundary mode; valid: {', '.join(BOUNDARY_MODES)}")
    return boundary


def check_level(level, key: str = "level") -> int:
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"{key}={level!r} must be an int >= 0 (0 means plain Adam for the group)")
    return level


def is_haar_closed_form(wavelet: str, boundary: str, n: int, level: int) -> bool:
    """Haar rows use the closed form when padding cannot change the result."""
    return wavelet == "haar" and (boundary == "zero" or n % (2**level) == 0)


def approx_lengths(n: int, wavelet: str, level: int, boundary: str = "zero") -> list[int]:
    """Lengths of the approximation after each level: ``[len(A_1), ..., len(A_level)]``."""
    filter_len = pywt.Wavelet(wavelet).dec_len
    lengths, length = [], n
    for _ in range(level):
        length = pywt.dwt_coeff_len(length, filter_len, mode=boundary)
        lengths.append(length)
    return lengths


def approx_len(n: int, wavelet: str, level: int, boundary: str = "zero") -> int:
    return approx_lengths(n, wavelet, level, boundary)[-1] if level > 0 else n


def check_depth(shape: tuple[int, ...], wavelet: str, level: int, boundary: str, name: str = "") -> None:
    """Raise if some level of the transform would not shrink the approximation.

    A level that leaves the approximation as long as it was compresses nothing and only adds
    boundary effects, so it is almost certainly a configuration mistake.
    """
    n = shape[-1]
    if n < 1:
        raise ValueError(f"parameter {name or '?'} of shape {tuple(shape)} has rows of length {n}; a GWT group "
                         "needs rows of length >= 2: put it in a group with level=0")
    prev = n
    for k, length in enumerate(approx_lengths(n, wavelet, level, boundary), start=1):
        if length >= prev:
            valid = f"valid levels for it: 1..{k - 1}" if k > 1 else "exclude it from GWT groups"
            raise ValueError(
                f"level={level} is too deep for wavelet {wavelet!r} on parameter {name or '?'} of "
                f"shape {tuple(shape)}: level {k} does not shrink a row of length {prev}; {valid}"
            )
        prev = length


# ---------------------------------------------------------------------------------------------
# Haar closed form (docs/update_rule.md, "The Haar closed form"): one reshape-mean and one broadcast,
# whatever the level.


def haar_blocks(g: torch.Tensor, level: int) -> torch.Tensor:
    """View ``g`` (m, n) as (m, k, B) blocks of B = 2**level, zero-padding the tail."""
    block = 2**level
    pad = (-g.shape[-1]) % block
    if pad:
        g = F.pad(g, (0, pad))
    return g.reshape(g.shape[0], g.shape[-1] // block, block)  # (m, k, B); also for m = 0


def haar_approx(g: torch.Tensor, level: int) -> torch.Tensor:
    """Level-``level`` orthonormal Haar approximation ``A_l = 2**(l/2) * block_mean`` (m, k)."""
    return haar_blocks(g, level).mean(-1) * (2.0 ** (level / 2))


def haar_reconstruct(
    coarse: torch.Tensor, g: torch.Tensor, detail_scale: torch.Tensor | None, level: int
) -> torch.Tensor:
    """Inverse Haar transform of ``[coarse, D_l / s, ..., D_1 / s]`` where D are the details of ``g``.

    ``detail_scale`` (m, k) divides every detail coefficient of block j by ``s[:, j]`` (None: 1).
    Returns (m, n).
    """
    n = g.shape[-1]
    g3 = haar_blocks(g, level)  # (m, k, B)
    detail = g3 - g3.mean(-1, keepdim=True)
    if detail_scale is not None:
        detail = detail / detail_scale.unsqueeze(-1)
    out = detail + coarse.unsqueeze(-1) * (2.0 ** (-level / 2))
    return out.reshape(g.shape[0], g3.shape[1] * g3.shape[2])[:, :n]


# ---------------------------------------------------------------------------------------------
# General wavelets through ptwt (conv transform).


def dwt_general(g: torch.Tensor, wavelet: str, level: int, boundary: str) -> list[torch.Tensor]:
    """``[A_l, D_l, ..., D_1]`` of each row of ``g`` (m, n)."""
    import ptwt

    return ptwt.wavedec(g, wavelet, mode=boundary, level=level, axis=-1)


def align_to(scale: torch.Tensor, length: int, repeats: int) -> torch.Tensor:
    """Repeat each entry ``repeats`` times along the last dim and cut to ``length``."""
    return scale.repeat_interleave(repeats, dim=-1)[..., :length]


def general_reconstruct(
    coarse: torch.Tensor,
    coeffs: list[torch.Tensor],
    detail_scale: torch.Tensor | None,
    wavelet: str,
    n: int,
) -> torch.Tensor:
    """Inverse transform of ``[coarse, D_l / s_l, ..., D_1 / s_1]`` cut back to ``n``.

    ``coeffs`` is the output of :func:`dwt_general`; ``s_k`` is ``detail_scale`` aligned to
    ``D_k`` by repeating each entry ``2**(l-k)`` times and cutting the tail.
    """
    import ptwt

    details = coeffs[1:]
    if detail_scale is not None:
        # The general path may loop over levels: ptwt's own transform does, per level.
        details = [
            d / align_to(detail_scale, d.shape[-1], 2**i) for i, d in enumerate(details)
        ]
    return ptwt.waverec([coarse, *details], wavelet, axis=-1)[..., :n]


class RowTransform:
    """The level-``level`` transform of the rows of one (m, n) matrix, Haar closed form or ptwt.

    ``analyze(g)`` returns the approximation ``A_l`` and a context holding the details;
    ``synthesize(coarse, ctx, detail_div)`` inverts ``[coarse, D / detail_div]``, where
    ``detail_div`` is an approximation-shaped tensor (aligned to every detail level), a scalar
    tensor, or None.
    """

    def __init__(self, n: int, wavelet: str, level: int, boundary: str = "zero"):
        self.n, self.wavelet, self.level, self.boundary = n, wavelet, level, boundary
        self.closed_form = is_haar_closed_form(wavelet, boundary, n, level)

    def analyze(self, g: torch.Tensor):
        if self.closed_form:
            return haar_approx(g, self.level), g
        coeffs = dwt_general(g, self.wavelet, self.level, self.boundary)
        return coeffs[0], coeffs

    def synthesize(self, coarse: torch.Tensor, ctx, detail_div: torch.Tensor | None) -> torch.Tensor:
        if detail_div is not None and detail_div.dim() == 0:
            coarse = coarse * detail_div  # a scalar divides everything: details and coarse alike
            return self.synthesize(coarse, ctx, None) / detail_div
        if self.closed_form:
            return haar_reconstruct(coarse, ctx, detail_div, self.level)
        return general_reconstruct(coarse, ctx, detail_div, self.wavelet, self.n)
