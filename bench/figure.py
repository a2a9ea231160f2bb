"""A README figure: one generated clip's frames as a strip with its waveform drawn under it (numpy + PNG).

    python -m bench.figure "a red ball bounces twice" --seed 1 -o docs/demo.png
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np

from harmony_rt.pipeline import Pipeline


def write_png(path: Path, img: np.ndarray) -> None:
    """uint8 [H, W, 3] -> PNG file (no imaging library needed)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def strip_with_waveform(frames: np.ndarray, audio: np.ndarray, scale: int = 2, wave_h: int = 64) -> np.ndarray:
    """frames uint8 [T, H, W, 3] side by side (upscaled), the waveform's envelope under them on the same time axis."""
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    strip = np.concatenate(list(big), axis=1)  # [H*s, T*W*s, 3]
    width = strip.shape[1]
    panel = np.full((wave_h, width, 3), 255, np.uint8)
    cols = np.array_split(audio, width)
    peak = max(1e-6, float(np.abs(audio).max()))
    mid = wave_h // 2
    for x, c in enumerate(cols):
        lo, hi = (float(c.min()), float(c.max())) if len(c) else (0.0, 0.0)
        y0, y1 = int(mid - hi / peak * (mid - 2)), int(mid - lo / peak * (mid - 2))
        panel[y0 : y1 + 1, x] = (40, 70, 160)
    panel[mid, :] = np.minimum(panel[mid, :], 200)
    for t in range(1, frames.shape[0]):  # frame boundaries
        panel[:, t * frames.shape[2] * scale] = (210, 210, 210)
    return np.concatenate([strip, panel], axis=0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--out", default="docs/demo.png")
    a = ap.parse_args(argv)
    clip = Pipeline.from_bundle(a.bundle).generate(a.prompt, seed=a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_png(Path(a.out), strip_with_waveform(clip.frames, clip.audio))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
