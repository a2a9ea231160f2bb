"""Tiny numpy rasterizer: signed-distance shapes with one-pixel anti-aliasing, painted onto float RGB.

Coordinates are in pixels, pixel centres at (x + 0.5, y + 0.5); colours are RGB floats in [0, 1].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (xx, yy), each [H, W] float32, read-only."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    xx.flags.writeable = False
    yy.flags.writeable = False
    return xx, yy


def coverage(sdf: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) -> pixel coverage in [0, 1] (box filter of one pixel)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def sdf_circle(xx, yy, cx: float, cy: float, r: float) -> np.ndarray:
    return np.hypot(xx - cx, yy - cy) - r


def sdf_ellipse(xx, yy, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate SDF of an axis-aligned ellipse (exact on the axes, good enough for AA)."""
    rx, ry = max(rx, 1e-3), max(ry, 1e-3)
    k = np.hypot((xx - cx) / rx, (yy - cy) / ry)
    return (k - 1.0) * min(rx, ry)


def sdf_box(xx, yy, cx: float, cy: float, hx: float, hy: float) -> np.ndarray:
    dx = np.abs(xx - cx) - hx
    dy = np.abs(yy - cy) - hy
    outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    return outside + np.minimum(np.maximum(dx, dy), 0)


def sdf_ring(xx, yy, cx: float, cy: float, r: float, thickness: float) -> np.ndarray:
    return np.abs(np.hypot(xx - cx, yy - cy) - (r - thickness / 2)) - thickness / 2


def sdf_polygon(xx, yy, pts: np.ndarray) -> np.ndarray:
    """SDF of a simple polygon pts [K, 2] (x, y): distance to the edges, negative inside (even-odd)."""
    p0 = np.asarray(pts, np.float32)[:, None, None, :]  # [K, 1, 1, 2]
    e = np.roll(p0, -1, axis=0) - p0
    px, py = xx[None] - p0[..., 0], yy[None] - p0[..., 1]  # [K, h, w]
    ex, ey = e[..., 0], e[..., 1]
    t = np.clip((px * ex + py * ey) / np.maximum(ex * ex + ey * ey, 1e-9), 0, 1)
    d = np.hypot(px - t * ex, py - t * ey).min(0)
    crosses = (py < 0) != (py < ey)  # the edge spans the pixel's row
    x_at = ex * py / np.where(ey == 0, 1e-9, ey)
    inside = (crosses & (px < x_at)).sum(0) % 2 == 1
    return np.where(inside, -d, d)


def star_points(cx: float, cy: float, r: float, n: int = 5, inner: float = 0.45, rot: float = 0.0) -> np.ndarray:
    """Vertices [2n, 2] of an n-pointed star, first point up when rot = 0."""
    ang = rot - np.pi / 2 + np.arange(2 * n) * np.pi / n
    rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)


def shape_sdf(shape: str, xx, yy, cx: float, cy: float, r: float, sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    """SDF of a named object shape of 'radius' r, stretched by (sx, sy)."""
    if shape == "ball":
        return sdf_ellipse(xx, yy, cx, cy, r * sx, r * sy)
    if shape == "box":
        return sdf_box(xx, yy, cx, cy, 0.85 * r * sx, 0.85 * r * sy)
    if shape == "ring":
        # Stretch by scaling coordinates (fine for the small squashes used).
        return sdf_ring(cx + (xx - cx) / sx, cy + (yy - cy) / sy, cx, cy, r, max(0.35 * r, 1.0))
    if shape == "star":
        pts = star_points(0.0, 0.0, 1.2 * r)
        pts = pts * np.array([sx, sy], np.float32) + np.array([cx, cy], np.float32)
        return sdf_polygon(xx, yy, pts)
    raise ValueError(f"unknown shape {shape!r}")


def paint(img: np.ndarray, cov: np.ndarray, colour, alpha: float = 1.0) -> None:
    """Alpha-blend colour over img [h, w, 3] in place with per-pixel coverage cov [h, w]."""
    a = (cov * alpha)[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, np.float32)


def paint_sdf(img: np.ndarray, sdf_fn, cx: float, cy: float, extent: float, colour, alpha: float = 1.0) -> None:
    """Paint the shape sdf_fn(xx, yy) -> [h, w], evaluated only on the window cx, cy +- extent (+1 px AA)."""
    h, w = img.shape[:2]
    x0, x1 = max(int(np.floor(cx - extent - 1)), 0), min(int(np.ceil(cx + extent + 1)), w)
    y0, y1 = max(int(np.floor(cy - extent - 1)), 0), min(int(np.ceil(cy + extent + 1)), h)
    if x0 >= x1 or y0 >= y1:
        return
    xx, yy = grid(h, w)
    win = (slice(y0, y1), slice(x0, x1))
    paint(img[win], coverage(sdf_fn(xx[win], yy[win])), colour, alpha)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
