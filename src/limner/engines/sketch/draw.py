"""Drawing primitives for the sketch engine: a premultiplied float canvas and signed distance fields.

Every shape is a signed distance field (negative inside, in pixels) evaluated with NumPy over the
shape's bounding box only, so a small shape costs little on a large canvas. Coverage is
``clip(0.5 - d, 0, 1)``: edges are antialiased analytically, with no supersampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from limner.engines.sketch.words import RGB

F32 = NDArray[np.float32]
#: A signed distance field: (x, y) pixel offsets from a shape's centre -> distance in pixels.
Field = Callable[[F32, F32], F32]

#: Side of the tiles that `Canvas.draw` culls with; windows smaller than 4 tiles are drawn whole.
_TILE = 16


class Canvas:
    """RGB premultiplied by alpha, plus alpha, as float32 in 0..1; `over` composites one layer.

    Colour is planar, (3, h, w): NumPy's inner loops then run along rows. Interleaved (h, w, 3) arrays
    broadcast against an RGB triple run an inner loop of length 3 and are several times slower.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.rgb: F32 = np.zeros((3, height, width), np.float32)
        self.alpha: F32 = np.zeros((height, width), np.float32)
        #: Size of one layout unit in pixels: shapes are sized relative to the shorter side.
        self.unit = float(min(width, height))
        #: True while alpha is 1 everywhere, so that compositing can skip it.
        self.opaque = False

    def fill(self, rgb: F32, alpha: F32 | None = None) -> None:
        """Sets the whole canvas to planar `rgb` (3, h, w), premultiplied by `alpha` (None: opaque).
        Takes the arrays over (no copy) when they are float32 and C-contiguous: callers hand over
        fresh arrays."""
        if rgb.dtype == np.float32 and rgb.flags.c_contiguous and rgb.shape == self.rgb.shape:
            self.rgb = rgb
        else:
            self.rgb[...] = rgb
        if alpha is not None and alpha.dtype == np.float32 and alpha.flags.c_contiguous:
            self.alpha = alpha
        else:
            self.alpha[...] = 1.0 if alpha is None else alpha
        self.opaque = alpha is None

    def fill_rows(self, y0: int, y1: int, colour: RGB, opacity: float = 1.0) -> None:
        """Composites `colour` over whole rows y0..y1: the cheap path for big filled areas."""
        if y0 >= y1:
            return
        for c in range(3):
            plane = self.rgb[c, y0:y1]
            if opacity >= 1.0:
                plane[...] = colour[c]
            else:
                plane *= np.float32(1.0 - opacity)
                plane += np.float32(colour[c] * opacity)
        if not self.opaque:
            self.alpha[y0:y1] *= np.float32(1.0 - opacity)
            self.alpha[y0:y1] += np.float32(opacity)

    def window(self, cx: float, cy: float, rx: float, ry: float) -> tuple[int, int, F32, F32] | None:
        """The pixel box around (cx, cy) +- (rx, ry): (x0, y0, X, Y) with X a row and Y a column of pixel
        centres relative to (cx, cy); None when the box misses the canvas."""
        x0 = max(0, math.floor(cx - rx - 1))
        x1 = min(self.width, math.ceil(cx + rx + 1))
        y0 = max(0, math.floor(cy - ry - 1))
        y1 = min(self.height, math.ceil(cy + ry + 1))
        if x0 >= x1 or y0 >= y1:
            return None
        xs = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx)
        ys = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy)
        return x0, y0, xs[None, :], ys[:, None]

    def draw(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        field: Field,
        colour: RGB,
        opacity: float = 1.0,
        *,
        light: float = 0.0,
        outline: tuple[RGB, float, float] | None = None,
    ) -> None:
        """Composites the shape `field` (centred at (cx, cy), within +-(rx, ry)) in `colour`.

        The field is first evaluated at tile centres; tiles farther outside than their half diagonal
        are skipped, and each row of tiles is drawn over the span of tiles the shape touches. `light`
        shades the colour from the top left (a slope per pixel); `outline` is (colour, width, opacity).
        """
        win = self.window(cx, cy, rx, ry)
        if win is None:
            return
        x0, y0, x, y = win
        bh, bw = y.shape[0], x.shape[1]
        t = _TILE
        strips: list[tuple[int, int, int, int]] = []
        if bh * bw <= 4 * t * t:
            strips.append((0, bh, 0, bw))
        else:
            ntx, nty = -(-bw // t), -(-bh // t)
            xc = x[:, :1] + (np.arange(ntx, dtype=np.float32) * t + np.float32((t - 1) / 2))[None, :]
            yc = y[:1, :] + (np.arange(nty, dtype=np.float32) * t + np.float32((t - 1) / 2))[:, None]
            # Distance fields of unions and wobbly shapes are only near-exact: keep a 25 % margin.
            reach = 1.25 * t * 0.7072 + 1.5 + (outline[1] if outline else 0.0)
            hit = field(xc, yc) < reach
            for i in range(nty):
                cols = np.flatnonzero(hit[i])
                if cols.size == 0:
                    continue
                c0, c1, r0 = int(cols[0]) * t, min(bw, (int(cols[-1]) + 1) * t), i * t
                if strips and strips[-1][1] == r0 and strips[-1][2:] == (c0, c1):
                    strips[-1] = (strips[-1][0], min(bh, r0 + t), c0, c1)  # same span: grow the strip
                else:
                    strips.append((r0, min(bh, r0 + t), c0, c1))
        for r0, r1, c0, c1 in strips:
            xs, ys = x[:, c0:c1], y[r0:r1]
            sdf = field(xs, ys)
            shade = np.clip(1.0 - (xs + ys) * np.float32(light), 0.7, 1.25) if light else None
            self.over(x0 + c0, y0 + r0, sdf, colour, opacity, shade)
            if outline is not None:
                self.over(
                    x0 + c0, y0 + r0, np.abs(sdf) - np.float32(outline[1]), outline[0], opacity * outline[2]
                )

    def over(
        self, x0: int, y0: int, sdf: F32, colour: RGB, opacity: float = 1.0, shade: F32 | None = None
    ) -> None:
        """Composites `colour` (times `shade`, if given) where `sdf` (a window's field, in pixels) is
        inside, antialiased."""
        cov = np.float32(0.5) - sdf
        np.clip(cov, 0.0, 1.0, out=cov)
        if opacity != 1.0:
            cov *= np.float32(opacity)
        h, w = cov.shape
        for c in range(3):  # plane += (colour - plane) * cov
            plane = self.rgb[c, y0 : y0 + h, x0 : x0 + w]
            diff = (shade * np.float32(colour[c]) if shade is not None else np.float32(colour[c])) - plane
            diff *= cov
            plane += diff
        if not self.opaque:
            alpha = self.alpha[y0 : y0 + h, x0 : x0 + w]
            alpha += (1.0 - alpha) * cov

    def to_image(self, transparent: bool) -> Image.Image:
        """The canvas as an 8-bit image; consumes the canvas (its arrays are reused in place)."""
        rgb = self.rgb
        if transparent:
            rgb /= np.maximum(self.alpha, np.float32(1e-6))  # un-premultiply for straight-alpha PNGs
        bands = [Image.fromarray(to_u8(rgb[c], inplace=True), "L") for c in range(3)]
        if transparent:
            bands.append(Image.fromarray(to_u8(self.alpha, inplace=True), "L"))
            return Image.merge("RGBA", bands)
        return Image.merge("RGB", bands)


def planar(img: Image.Image) -> F32:
    """An 8-bit image as planar float32 in 0..1, (bands, h, w)."""
    data = np.asarray(img)
    if data.ndim == 2:
        data = data[..., None]
    out = np.empty((data.shape[2], data.shape[0], data.shape[1]), np.float32)
    for c in range(data.shape[2]):
        np.multiply(data[..., c], np.float32(1.0 / 255.0), out=out[c])
    return out


def to_u8(x: NDArray[np.floating[Any]], inplace: bool = False) -> NDArray[np.uint8]:
    """0..1 floats to 0..255 bytes, rounded; with `inplace` x is used as scratch space."""
    y = x if inplace else x.copy()
    y *= np.float32(255.0)
    y += np.float32(0.5)
    np.clip(y, 0.0, 255.0, out=y)
    return y.astype(np.uint8)


def rotate(x: F32, y: F32, angle: float) -> tuple[F32, F32]:
    """Coordinates in a frame turned by `angle` (radians)."""
    if angle == 0.0:
        return x, y
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return x * c + y * s, y * c - x * s


def sd_circle(x: F32, y: F32, r: float) -> F32:
    return np.sqrt(x * x + y * y) - np.float32(r)


def sd_box(x: F32, y: F32, bx: float, by: float, rounding: float = 0.0) -> F32:
    qx = np.abs(x) - np.float32(bx - rounding)
    qy = np.abs(y) - np.float32(by - rounding)
    ox, oy = np.maximum(qx, 0.0), np.maximum(qy, 0.0)
    return np.sqrt(ox * ox + oy * oy) + np.minimum(np.maximum(qx, qy), 0.0) - np.float32(rounding)


def sd_segment(x: F32, y: F32, ax: float, ay: float, bx: float, by: float, r: float) -> F32:
    """A capsule: the segment a-b thickened by r."""
    ex, ey = bx - ax, by - ay
    px, py = x - np.float32(ax), y - np.float32(ay)
    t = np.clip((px * ex + py * ey) / np.float32(ex * ex + ey * ey + 1e-12), 0.0, 1.0)
    dx, dy = px - t * np.float32(ex), py - t * np.float32(ey)
    return np.sqrt(dx * dx + dy * dy) - np.float32(r)


def sd_polygon(x: F32, y: F32, pts: Sequence[tuple[float, float]]) -> F32:
    """Exact signed distance to a simple polygon (after Inigo Quilez's sdPolygon)."""
    vx = [np.float32(p[0]) for p in pts]
    vy = [np.float32(p[1]) for p in pts]
    dx0, dy0 = x - vx[0], y - vy[0]
    d = dx0 * dx0 + dy0 * dy0
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    n = len(pts)
    for i in range(n):
        j = i - 1
        ex, ey = vx[j] - vx[i], vy[j] - vy[i]
        wx, wy = x - vx[i], y - vy[i]
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey + np.float32(1e-12)), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        d = np.minimum(d, bx * bx + by * by)
        c1 = y >= vy[i]
        c2 = y < vy[j]
        c3 = ex * wy > ey * wx
        inside ^= (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
    dist = np.sqrt(d)
    return np.where(inside, -dist, dist)


def sd_heart(x: F32, y: F32, size: float) -> F32:
    """A heart of height about `size`, centred (after Inigo Quilez's exact sdHeart)."""
    s = np.float32(size)
    px = np.abs(x) / s
    py = (np.float32(0.55) * s - y) / s  # y grows downwards on screen; the heart's tip points down
    upper = px + py > 1.0
    d_lobe = np.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - np.float32(math.sqrt(2.0) / 4.0)
    m = 0.5 * np.maximum(px + py, 0.0)
    d_low = np.sqrt(np.minimum(px * px + (py - 1.0) ** 2, (px - m) ** 2 + (py - m) ** 2)) * np.sign(px - py)
    return (np.where(upper, d_lobe, d_low) * s).astype(np.float32)


def smooth_noise(rng: np.random.Generator, cells_x: int, cells_y: int, channels: int = 1) -> F32:
    """A small grid of uniform noise in -1..1; `upscale` turns it into a smooth field of any size."""
    return rng.uniform(-1.0, 1.0, size=(channels, cells_y, cells_x)).astype(np.float32)


def _taps(src: int, dst: int, start: int, stop: int) -> tuple[NDArray[np.intp], NDArray[np.intp], F32]:
    """For bilinear resampling from `src` to `dst` samples (pixel centres aligned): for output samples
    start..stop, the two source indices of each and the weight of the second."""
    pos = (np.arange(start, stop, dtype=np.float32) + np.float32(0.5)) * np.float32(src / dst) - np.float32(
        0.5
    )
    np.clip(pos, 0.0, src - 1, out=pos)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def upscale(grid: F32, width: int, height: int, window: tuple[int, int, int, int] | None = None) -> F32:
    """Bilinear resampling of a (channels, gy, gx) grid to a fresh (channels, height, width) array, or
    only its `window` (x0, y0, x1, y1): separable, columns on the small grid first, then rows."""
    x0, y0, x1, y1 = window or (0, 0, width, height)
    c0, c1, fx = _taps(grid.shape[2], width, x0, x1)
    r0, r1, fy = _taps(grid.shape[1], height, y0, y1)
    cols = grid[:, :, c0] * (1.0 - fx) + grid[:, :, c1] * fx  # (channels, gy, x1 - x0)
    out = cols[:, r0, :] * (1.0 - fy)[:, None]
    out += cols[:, r1, :] * fy[:, None]
    return out


def shrink(arr: F32, cells: int = 16) -> F32:
    """Planar `arr` (bands, h, w) box-averaged down to about `cells` samples on its long side."""
    h, w = arr.shape[1:]
    scale = cells / max(w, h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = [Image.fromarray(band, "F").resize((sw, sh), Image.Resampling.BOX) for band in arr]
    return np.stack([np.asarray(band, np.float32) for band in resized])


def blur(arr: F32, cells: int = 16) -> F32:
    """The low frequencies of planar `arr`: shrunk to about `cells` on the long side and upscaled back."""
    return upscale(shrink(arr, cells), arr.shape[2], arr.shape[1])


def sd_star(x: F32, y: F32, r: float, n: int, m: float, angle: float = 0.0) -> F32:
    """An n-pointed star of outer radius r, one point up; m in [2, n] sets how deep its notches are
    (m = 2 is the regular n-gon). Constant work per pixel (after Inigo Quilez's sdStar)."""
    x, y = rotate(x, y, angle)
    an = math.pi / n
    en = math.pi / m
    acx, acy = math.cos(an), math.sin(an)
    ecx, ecy = math.cos(en), math.sin(en)
    px = np.abs(x)
    py = -y  # the field is built with y pointing up
    bn = np.mod(np.arctan2(px, py), np.float32(2 * an)) - np.float32(an)
    length = np.sqrt(px * px + py * py)
    qx = length * np.cos(bn) - np.float32(r * acx)
    qy = length * np.abs(np.sin(bn)) - np.float32(r * acy)
    t = np.clip(-(qx * ecx + qy * ecy), 0.0, r * acy / ecy)
    qx = qx + np.float32(ecx) * t
    qy = qy + np.float32(ecy) * t
    return (np.sqrt(qx * qx + qy * qy) * np.sign(qx)).astype(np.float32)
