"""Temporal tiling of the decoders, so decoding a long clip needs memory for one tile, not for the clip.

The latent is cut along its time axis into tiles of `size` latent frames that overlap their neighbour by
`overlap` frames; each tile is decoded on its own and neighbours are cross-faded in output space (pixels /
samples) across the overlap: the first and last quarter of the overlap take one tile only (so the
artificial edge of a tile, where its convolutions see zero padding, is left out), the middle half blends
linearly. Every tile but the last has `size` frames; the last is shorter, never shorter than overlap + 1.
A decoder whose receptive field is shorter than a quarter of the overlap (in latent frames) gives the full
decode's numbers up to float rounding; wider ones differ slightly near the seams (tests measure it).

`decode_chunks` yields finished output chunks in order (stream them to a writer for clips of any length);
`decode_tiled` assembles them into one array. One tile = one decoder call on the whole latent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .errors import BundleError, HarmonyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSize:
    """Tile length and overlap in latent frames (size >= 2 * overlap, so only neighbours overlap)."""

    size: int
    overlap: int

    def __post_init__(self):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.size, self.overlap))
        if not ok or self.overlap < 0 or self.size < max(1, 2 * self.overlap):
            raise HarmonyError(
                f"tile size must be an integer >= max(1, 2 x overlap), got size {self.size!r}, overlap {self.overlap!r}"
            )


@dataclass(frozen=True)
class Tiling:
    """Decoder tiles of a pipeline. Defaults: clips up to 16 video latent frames and 1024 audio latent
    frames (tens of seconds for the shipped geometries) decode in one call, exactly as without tiling."""

    video: TileSize = TileSize(16, 2)
    audio: TileSize = TileSize(1024, 32)


def tile_spans(n: int, tile: TileSize) -> list[tuple[int, int]]:
    """[start, end) latent-frame spans covering [0, n); consecutive spans share exactly `tile.overlap` frames."""
    if n <= tile.size:
        return [(0, n)]
    step = tile.size - tile.overlap
    spans = [(0, tile.size)]
    while spans[-1][1] < n:
        start = spans[-1][0] + step
        spans.append((start, min(start + tile.size, n)))
    return spans


def _take(x: np.ndarray, axis: int, start: int, stop: int | None) -> np.ndarray:
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop)
    return x[tuple(idx)]


def fade_in(length: int) -> np.ndarray:
    """Weight of the later tile across an overlap of `length` output samples: 0 for the first quarter,
    linear over the middle half, 1 for the last quarter (the earlier tile gets 1 - this). float32 [length]."""
    margin = length // 4
    ramp = max(1, length - 2 * margin)
    j = np.arange(length, dtype=np.float64)
    return np.clip((j - margin + 0.5) / ramp, 0.0, 1.0).astype(np.float32)


def decode_chunks(
    decode: Callable[[np.ndarray], np.ndarray],
    z: np.ndarray,
    tile: TileSize,
    axis: int,
    out_axis: int,
    stride: int,
    what: str = "decoder",
) -> Iterator[np.ndarray]:
    """Decode latent `z` tile by tile along `axis`; yield finished output chunks along `out_axis`, in order.

    `decode(z_tile)` must return `stride` output samples per latent frame along `out_axis`; each chunk is a
    fresh array (float32, the decoder's layout). Peak memory: two tiles' outputs, whatever the clip length.
    """
    n = z.shape[axis]
    spans = tile_spans(n, tile)
    if len(spans) > 1:
        log.debug("%s: %d latent frames in %d tiles of %d (overlap %d)", what, n, len(spans), tile.size, tile.overlap)
    L = tile.overlap * stride
    w = fade_in(L)
    carry = None  # the previous tile's output over the coming overlap
    for k, (s, e) in enumerate(spans):
        y = decode(np.ascontiguousarray(_take(z, axis, s, e)))
        if y.shape[out_axis] != (e - s) * stride:
            raise BundleError(
                f"{what}: decoded {y.shape[out_axis]} samples for {e - s} latent frames, expected {(e - s) * stride} "
                f"({stride} per latent frame, from the manifest's geometry)"
            )
        if carry is not None:
            head = _take(y, out_axis, 0, L)
            ww = w.reshape([L if d == out_axis else 1 for d in range(y.ndim)])
            yield carry + ww * (head - carry)
            y = _take(y, out_axis, L, None)
        if k == len(spans) - 1 or L == 0:
            yield y
        else:
            keep = y.shape[out_axis] - L
            yield _take(y, out_axis, 0, keep)
            carry = _take(y, out_axis, keep, None).copy()


def decode_tiled(
    decode: Callable[[np.ndarray], np.ndarray],
    z: np.ndarray,
    tile: TileSize,
    axis: int,
    out_axis: int,
    stride: int,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
    finish_axis: int | None = None,
    what: str = "decoder",
) -> np.ndarray:
    """`decode_chunks` assembled into one array; `finish` maps each chunk to its final form (e.g. float ->
    uint8 frames, time on `finish_axis`) before it is stored, so only the finished output grows with length."""
    finish = finish or (lambda x: x)
    finish_axis = out_axis if finish_axis is None else finish_axis
    total = z.shape[axis] * stride
    out = None
    pos = 0
    for chunk in decode_chunks(decode, z, tile, axis, out_axis, stride, what):
        done = finish(chunk)
        if out is None:
            if len(tile_spans(z.shape[axis], tile)) == 1:
                return done
            shape = list(done.shape)
            shape[finish_axis] = total
            out = np.empty(shape, done.dtype)
        m = done.shape[finish_axis]
        idx = [slice(None)] * out.ndim
        idx[finish_axis] = slice(pos, pos + m)
        out[tuple(idx)] = done
        pos += m
    return out
