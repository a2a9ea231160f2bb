"""Temporal tiling of the decoders: spans, blending, closeness to a full decode, and bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harmony_rt.errors import BundleError, HarmonyError
from harmony_rt.tiling import TileSize, Tiling, decode_chunks, decode_tiled, fade_in, tile_spans

# --------------------------------------------------------------------------------------------- pure numpy


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), size=st.integers(1, 60), overlap=st.integers(0, 30))
def test_tile_spans_cover_with_exact_neighbour_overlap(n, size, overlap):
    if size < max(1, 2 * overlap):
        with pytest.raises(HarmonyError):
            TileSize(size, overlap)
        return
    spans = tile_spans(n, TileSize(size, overlap))
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(0 < e - s <= size for s, e in spans)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 - s1 == overlap and e1 > e0 and e1 - s1 > overlap
    for (s0, e0), (s2, e2) in zip(spans, spans[2:]):
        assert e0 <= s2  # only neighbours overlap


def test_fade_in_is_a_monotone_ramp_with_one_sided_margins():
    w = fade_in(16)
    assert w.dtype == np.float32 and w.shape == (16,)
    assert np.all(np.diff(w) >= 0) and np.all(w[:4] == 0) and np.all(w[-4:] == 1)
    assert 0 < w[7] < 1
    assert fade_in(0).shape == (0,) and fade_in(1).tolist() == [0.5]


def _conv_decoder(radius: int, stride: int, seed: int = 0):
    """A convolutional 'decoder' [N, T, C] -> [N, T * stride]: zero-padded conv over +-radius latent frames,
    then nearest upsampling and a per-sample ramp (so outputs differ inside each latent frame)."""
    k = np.random.default_rng(seed).standard_normal((2 * radius + 1, 3)).astype(np.float32)

    def decode(z):
        n, t, c = z.shape
        zp = np.pad(z[..., :3], ((0, 0), (radius, radius), (0, 0)))
        y = sum((zp[:, i : i + t] * k[i]).sum(-1) for i in range(2 * radius + 1))  # [N, T]
        return np.repeat(y, stride, axis=1) * np.tile(np.linspace(0.5, 1.5, stride, dtype=np.float32), t)

    return decode


@pytest.mark.parametrize("radius,tile", [(0, TileSize(4, 1)), (1, TileSize(9, 4)), (2, TileSize(20, 8)),
                                         (3, TileSize(24, 12))])
def test_tiles_match_full_decode_when_the_overlap_covers_the_receptive_field(radius, tile):
    z = np.random.default_rng(1).standard_normal((2, 97, 3)).astype(np.float32)
    decode = _conv_decoder(radius, stride=5)
    full = decode(z)
    tiled = decode_tiled(decode, z, tile, axis=1, out_axis=1, stride=5)
    assert len(tile_spans(97, tile)) > 3
    assert tiled.shape == full.shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, full, atol=1e-5)


def test_too_small_an_overlap_shows_seams():
    z = np.random.default_rng(1).standard_normal((1, 97, 3)).astype(np.float32)
    decode = _conv_decoder(3, stride=5)
    tiled = decode_tiled(decode, z, TileSize(10, 2), axis=1, out_axis=1, stride=5)
    assert np.abs(tiled - decode(z)).max() > 1e-2


def test_chunks_stream_in_order_and_finish_maps_layout():
    z = np.random.default_rng(2).standard_normal((1, 2, 23, 3)).astype(np.float32)  # [B, C, F, X]

    def decode(t):  # [B, C, f, X] -> [B, C, 3 f, X]: no temporal mixing
        return np.repeat(np.tanh(t), 3, axis=2)

    tile = TileSize(6, 2)
    chunks = list(decode_chunks(decode, z, tile, axis=2, out_axis=2, stride=3))
    assert sum(c.shape[2] for c in chunks) == 69
    np.testing.assert_allclose(np.concatenate(chunks, axis=2), decode(z), atol=1e-6)
    out = decode_tiled(decode, z, tile, 2, 2, 3, finish=lambda x: x.transpose(0, 2, 1, 3).copy(), finish_axis=1)
    np.testing.assert_allclose(out, decode(z).transpose(0, 2, 1, 3), atol=1e-6)


def test_one_tile_is_one_call_on_the_whole_latent():
    calls = []
    z = np.ones((1, 8, 2), np.float32)
    out = decode_tiled(lambda t: calls.append(t.shape) or np.repeat(t[..., 0], 4, 1), z, TileSize(8, 2), 1, 1, 4)
    assert calls == [(1, 8, 2)] and out.shape == (1, 32)


def test_a_decoder_with_the_wrong_output_length_is_refused():
    z = np.ones((1, 30, 2), np.float32)
    with pytest.raises(BundleError, match="decoded 31 samples for 8 latent frames, expected 32"):
        decode_tiled(lambda t: np.ones((1, t.shape[1] * 4 - 1), np.float32), z, TileSize(8, 2), 1, 1, 4,
                     what="audio_decoder")


@pytest.mark.parametrize("size,overlap", [(3, 2), (0, 0), (4.0, 1), (True, 0), (4, -1)])
def test_bad_tile_sizes(size, overlap):
    with pytest.raises(HarmonyError):
        TileSize(size, overlap)


# --------------------------------------------------------------------------------------------- tiny bundle


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    from harmony_rt.pipeline import Pipeline

    return Pipeline.from_bundle(tiny_bundle, backend="ort", split="batched")


def test_tiled_decoders_on_the_tiny_bundle(pipe):
    """Video: the tiny decoder mixes nothing across latent frames, so tiles are bit-exact. Audio: the vocoder's
    receptive field is a few latent frames; with overlap 16 tiles equal the full decode to float rounding,
    with overlap 4 they are close, with no overlap the seams show."""
    g = pipe.geometry
    rng = np.random.default_rng(0)
    zv = rng.standard_normal((2, g.C_v, 37, g.H_lat, g.W_lat), dtype=np.float32)
    run_v = lambda z: pipe.backend.run("video_decoder", {"video_latent": z})["frames"]  # noqa: E731
    full_v = run_v(zv)
    tiled_v = decode_tiled(run_v, zv, TileSize(5, 2), axis=2, out_axis=2, stride=g.video_t_stride)
    assert np.array_equal(tiled_v, full_v)

    za = rng.standard_normal((2, 300, g.C_a), dtype=np.float32)
    run_a = lambda z: pipe.backend.run("audio_decoder", {"audio_latent": z})["waveform"]  # noqa: E731
    full_a = run_a(za)
    scale = np.abs(full_a).max()
    err = {ov: np.abs(decode_tiled(run_a, za, TileSize(64, ov), 1, 1, g.audio_hop) - full_a).max() / scale
           for ov in (16, 4, 0)}
    assert err[16] < 1e-5, err  # measured ~4e-8
    assert err[4] < 5e-2, err  # measured ~2.5e-2 (~8e-3 while the tiny run's audio autoencoder was collapsing)
    assert err[0] > 10 * err[4], err  # measured ~0.7: the overlap is what removes the seams


def test_generate_with_small_tiles_matches_untiled(pipe):
    ref = pipe.generate("a red ball bounces twice", steps=2, seed=5, seconds=2.0)
    pipe.tiling = Tiling(video=TileSize(3, 1), audio=TileSize(40, 16))  # 8 latent frames -> 4 video tiles
    try:
        got = pipe.generate("a red ball bounces twice", steps=2, seed=5, seconds=2.0)
    finally:
        del pipe.tiling  # back to the class default
    assert np.array_equal(got.frames, ref.frames)
    np.testing.assert_allclose(got.audio, ref.audio, atol=1e-5 * max(1e-3, np.abs(ref.audio).max()))


# --------------------------------------------------------------------------------------------- memory

_MEM_SCRIPT = r"""
import json, sys
import numpy as np
from harmony_rt.bundle import Bundle
from harmony_rt.backends.ort import OrtBackend
from harmony_rt.tiling import TileSize, decode_chunks

def status(key):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

path, mode, F = sys.argv[1], sys.argv[2], int(sys.argv[3])
bundle = Bundle.load(path, verify=False)
be = OrtBackend(bundle, threads=1)
g = bundle.geometry
run = lambda z: be.run("video_decoder", {"video_latent": z})["frames"]
tile = TileSize(16, 2)
z = np.random.default_rng(0).standard_normal((1, g.C_v, F, g.H_lat, g.W_lat), dtype=np.float32)
for _ in decode_chunks(run, z[:, :, : 2 * tile.size], tile, 2, 2, g.video_t_stride):  # warm-up: one tile's arena
    pass
open("/proc/self/clear_refs", "w").write("5")  # reset this process's peak RSS (VmHWM) to its current RSS
base = status("VmRSS")
if mode == "tiled":
    n = sum(c.shape[2] for c in decode_chunks(run, z, tile, 2, 2, g.video_t_stride))  # chunks streamed, dropped
else:
    n = run(z).shape[2]
print(json.dumps({"growth": status("VmHWM") - base, "latent": z.nbytes, "frames": n}))
"""


def _decode_peak(bundle, mode: str, F: int) -> dict:
    r = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(bundle), mode, str(F)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0 and "clear_refs" in r.stderr:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tiled_decode_peak_memory_does_not_grow_with_clip_length(tiny_bundle):
    """Peak RSS of decoding only (VmHWM reset right before it; ru_maxrss cannot be reset and a child can
    inherit its parent's peak across exec), F vs 2F latent frames, output chunks streamed away. The full
    decode is the control that shows the measurement sees decoder memory."""
    F = 512
    tiled = [_decode_peak(tiny_bundle, "tiled", f) for f in (F, 2 * F)]
    full = [_decode_peak(tiny_bundle, "full", f) for f in (F // 4, F // 2)]
    assert tiled[0]["frames"] == F * 2 and tiled[1]["frames"] == 2 * F * 2  # video_t_stride = 2
    latent_2f = tiled[1]["latent"]
    assert tiled[1]["growth"] - tiled[0]["growth"] < latent_2f, (tiled, latent_2f)  # measured: ~0 (8-40 kB)
    assert tiled[1]["growth"] < latent_2f, tiled
    assert full[1]["growth"] - full[0]["growth"] > 20 * full[1]["latent"], full  # measured ~100 MB vs 256 kB
