"""Test captures of kinds nss/synth.py never renders, in Arm's NSS safetensors layout: layered 2D scenes.

nss/synth.py ray-casts 3D worlds; a model trained on them should still generalise to content it never saw.
This writes three short captures of such content, with every key (and convention) synth.py writes, so that
nss/evaluate.py can score a trained model against TAA on them:

  text.safetensors     a page of black-on-white text scrolling up, a column of coloured text lines on
                       translucent glass scrolling down over a static background, and a static HUD bar with
                       its own text on top: glyph strokes 1-2 high-res px thin (Pillow's default font)
  foliage.safetensors  branches of thin, partly transparent leaves in front of a bush of multi-octave noise in
                       front of a distant sky and hills; the camera trucks sideways (parallax: near layers move
                       faster) while the leaves sway with spatially varying motion, so layers disocclude
  pan_cut.safetensors  a fast pan (6 -> 12 high-res px/frame) over checkerboards, 1 px lines and rings, then
                       a camera cut to a diagonal 9 px/frame pan over bricks, zone plates and Siemens stars

Each scene is a stack of fronto-parallel layers (nss/layers.py renders them), each at a fixed view depth, with
premultiplied colour and alpha that are analytic functions of continuous position (textures are looked up
bilinearly), so the jittered low-res point samples and the 4x4 = 16 spp ground truth come from the same signal. A
layer's content is defined in rest coordinates q; at frame t a screen point p shows q = p - S_t(p), where the
shift S_t is the camera's translation (scaled by 1/depth), the layer's own drift and sums of travelling sine waves
(sway). Layers are composited front to back; the "visible" layer of a sample is the front-most one with
alpha >= 0.5 (the alpha-test rule), and depth and motion are that layer's. Motion is exact: the previous position
of p is the solution p' of p' - S_{t-1}(p') = q, found by fixed-point iteration (the sway is a contraction) and
checked on every frame.

    python nss/scenes.py --out data/scenes --size 256 256 --frames 24 --seed 0
    python nss/train.py --evaluate --model-path runs/nss/ckpt/best --data data/scenes --eval-data data/scenes \\
        --out runs/eval_scenes

Conventions are synth.py's (see its docstring): LR pixel (i, j) is sampled at LR coordinates (i + 0.5 + jy,
j + 0.5 + jx) with synth's Halton jitter; motion (y, x) in pixels of its own resolution points previous ->
current, is evaluated at unjittered pixel centres, and is zero on frame 0 and on camera-cut frames; depth is
forward-Z device depth of the jittered sample; the camera looks along +z with no rotation, and viewProj
follows its translation, so static layers reproject exactly with depth + viewProj.
"""

import argparse
import colorsys
import datetime
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from safetensors.torch import save_file

from common.log import progress as progress_bar
from nss.layers import Layer, Shot, Sway, focal_px, render_scene
from nss.synth import SCALE, preview
from nss.world import frac, hash01, sample_noise, tileable_noise

FONT_SIZE = 11  # Pillow's default (Aileron) at 11 px: strokes ~1 px, 14 px lines
LINE_H = 14
SCENES = ("text", "foliage", "pan_cut")


# ----------------------------------------------------------------------------------------------------------
# Textures and small helpers for content functions.


def wrap_pad(tex):
    """(C, Ht, Wt) -> (1, C, Ht + 1, Wt + 1) padded by one wrapped texel, for seamless tiling lookups."""
    return F.pad(tex[None], (0, 1, 0, 1), mode="circular")


def lookup(tex, y, x):
    """Bilinear, tiling lookup of a wrap_pad()ed texture at texel coordinates (y, x) (texel centres at i + 0.5),
    shapes (N,) -> (C, N)."""
    Ht, Wt = tex.shape[-2] - 1, tex.shape[-1] - 1
    grid = torch.stack([frac((x - 0.5) / Wt) * 2 - 1, frac((y - 0.5) / Ht) * 2 - 1], -1).view(1, 1, -1, 2)
    return F.grid_sample(tex, grid, mode="bilinear", align_corners=True)[0, :, 0]


def fbm(noise, y, x, periods, weights, seed_offset=0.0):
    """Multi-octave sum of the tiling 1/f noise, octave o tiling every periods[o] px; offsets decorrelate them."""
    out = 0.0
    for o, (p, w) in enumerate(zip(periods, weights)):
        out = out + w * sample_noise(noise, x / p + 0.37 * o + seed_offset, y / p + 0.61 * o + seed_offset)
    return out


def rough_noise(rng, size=512, slope=0.7):
    """Tiling noise with a flat-ish spectrum (amplitude ~ 1/f^slope, vs tileable_noise's smooth 1/f^1.6), mean
    0.5 and std ~0.18, padded like tileable_noise for sample_noise: sampled at 2 texels per px it has detail down
    to half a pixel yet repeats only every size / 2 px."""
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy) * size, 1.0) ** slope
    amp[0, 0] = 0
    n = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.uniform(size=amp.shape)), s=(size, size))
    n = (0.5 + 0.18 * (n - n.mean()) / n.std()).clip(0, 1)
    return torch.from_numpy(np.pad(n, ((0, 1), (0, 1)), mode="wrap")).float()[None, None]


def rect(y0, x0, y1, x1):
    """Screen window [y0, y1) x [x0, x1) (high-res px) as a clip function."""
    return lambda y, x: ((y >= y0) & (y < y1) & (x >= x0) & (x < x1)).float()


def hsv(h, s, v, gain=1.0):
    return tuple(gain * c for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def col(rgb):
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1)


def smoothstep(a, b, x):
    t = ((x - a) / (b - a)).clamp(0, 1)
    return t * t * (3 - 2 * t)


# ----------------------------------------------------------------------------------------------------------
# Scene 1: text.


def random_line(rng, font, width):
    """Random words filling up to `width` px (some lines end early like a paragraph's last line)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    limit = width * (rng.uniform(0.3, 0.7) if rng.uniform() < 0.2 else 1.0)
    words = []
    for _ in range(200):
        n = int(rng.integers(1, 10))
        word = "".join(rng.choice(list(letters), n))
        r = rng.uniform()
        word = word.capitalize() if r < 0.15 else str(rng.integers(0, 10000)) if r < 0.22 else word
        word += rng.choice([",", ".", ";", ""], p=[0.08, 0.06, 0.02, 0.84])
        while word and font.getlength(" ".join(words + [word])) > limit:
            if words:  # the line is full
                return " ".join(words)
            word = word[:-1]  # a narrow column: shorten the first word until it fits
        if not word:
            break
        words.append(word)
    return " ".join(words)


def text_mask(rng, width, lines, margin=2):
    """`lines` lines of random text rendered once with Pillow -> coverage (1, lines * LINE_H, width) in [0, 1],
    tiling in y (texel = 1 high-res px). A blank margin each side keeps the x wrap-around empty."""
    font = ImageFont.load_default(size=FONT_SIZE)
    width = max(width, 2 * margin + 4)  # tiny test frames: a column may be narrower than that
    im = Image.new("L", (width, lines * LINE_H))
    draw = ImageDraw.Draw(im)
    for i in range(lines):
        draw.text((margin, i * LINE_H), random_line(rng, font, width - 2 * margin), fill=255, font=font)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)[None]


def text_scene(rng, size, frames):
    H, W = size
    bar = min(LINE_H + 4, H // 4)
    # HUD: a static, mostly opaque dark bar with bright text, nearest to the camera
    hud_tex = wrap_pad(text_mask(rng, W, 1))
    panel = col((0.02, 0.025, 0.03))

    def hud(qy, qx):
        m = lookup(hud_tex, qy - 2, qx)[0]
        alpha = m + (1 - m) * 0.85
        return m * 1.6 + (1 - m) * 0.85 * panel, alpha

    # column A: a page (opaque paper, black ink) scrolling up inside a window
    ax0, ax1 = int(0.04 * W), int(0.56 * W)
    lines = max(8, -(-(H + 2 * LINE_H) // LINE_H))
    page_tex = wrap_pad(text_mask(rng, ax1 - ax0, lines))
    paper, ink = col((0.82, 0.80, 0.74)), col((0.012, 0.012, 0.015))

    def page(qy, qx):
        m = lookup(page_tex, qy, qx - ax0)[0]
        return paper + (ink - paper) * m, torch.ones_like(m)

    # column B: coloured lines of text on a translucent dark glass panel (alpha 0.7) scrolling down with them:
    # the panel is the visible layer everywhere in its window (its motion is the scroll), yet the static
    # background grid shows through it (ghosting bait). Fully transparent gaps would give antialiased glyph
    # edges (alpha < 0.5) the background's zero motion, i.e. no usable motion for 1-2 px strokes at all.
    bx0, bx1 = int(0.60 * W), int(0.97 * W)
    colour_tex = wrap_pad(text_mask(rng, bx1 - bx0, lines))
    palette = [
        (1.0, 0.12, 0.08),
        (0.1, 0.9, 0.2),
        (0.25, 0.4, 1.6),
        (1.3, 1.0, 0.1),
        (0.1, 1.1, 1.2),
        (1.2, 0.15, 1.1),
        (2.0, 2.0, 2.0),
        (0.9, 0.45, 0.05),
    ]
    glass = col((0.01, 0.012, 0.02))
    line_rgb = torch.tensor([palette[i] for i in rng.integers(0, len(palette), lines)], dtype=torch.float32).T

    def coloured(qy, qx):
        m = lookup(colour_tex, qy, qx - bx0)[0]
        line = torch.floor(qy / LINE_H).long().remainder(lines)
        return line_rgb[:, line] * m + (1 - m) * 0.7 * glass, m + (1 - m) * 0.7

    # background: a static dark gradient with a faint 1 px grid (seen through column B's glass)
    base_a, base_b = col((0.05, 0.07, 0.12)), col((0.12, 0.10, 0.16))

    def background(qy, qx):
        g = ((frac(qy / 32) < 1 / 32) | (frac(qx / 32) < 1 / 32)).float()
        rgb = base_a + (base_b - base_a) * (qy / H).clamp(0, 1) + 0.08 * g
        return rgb, torch.ones_like(qy)

    layers = [
        Layer("hud", 1.0, hud, clip=rect(0, 0, bar, W)),
        Layer("page", 3.0, page, drift=(-2.5, 0.0), clip=rect(bar + 4, ax0, H - 4, ax1)),
        Layer("credits", 2.5, coloured, drift=(3.5, 0.0), clip=rect(bar + 4, bx0, H - 4, bx1)),
        Layer("background", 10.0, background),
    ]
    return [Shot(0, layers)]


# ----------------------------------------------------------------------------------------------------------
# Scene 2: foliage.


def leaf_texture(rng, H, W, k=4):
    """Tiling RGBA texture of thin branches with leaves -> (1, 4, 2H + 1, 2W + 1) premultiplied, texel = 0.5
    high-res px. Drawn with Pillow at k px per high-res px (leaf ids in an int image, every shape also at the
    wrapped offsets it crosses into), then box-filtered 2x for antialiased alpha."""
    Hd, Wd = H * k, W * k
    ids = Image.new("I", (Wd, Hd))
    draw = ImageDraw.Draw(ids)
    colours = [(0.0, 0.0, 0.0)]

    def put(shape, pts, rgb, width=0):
        colours.append(rgb)
        pts = np.asarray(pts) * k
        lo, hi = pts.min(0), pts.max(0)
        for oy in (-Hd, 0, Hd):
            for ox in (-Wd, 0, Wd):
                if hi[0] + ox < 0 or lo[0] + ox > Wd or hi[1] + oy < 0 or lo[1] + oy > Hd:
                    continue
                p = [(float(x + ox), float(y + oy)) for x, y in pts]
                if shape == "line":
                    draw.line(p, fill=len(colours) - 1, width=width)
                else:
                    draw.polygon(p, fill=len(colours) - 1)

    branches = max(3, int(0.35 * H * W / 300))  # ~35 % coverage: each branch covers ~300 px^2
    hue = rng.uniform(0.22, 0.33)
    for _ in range(branches):
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        a, bend, length = rng.uniform(0, 2 * math.pi), rng.normal(0, 0.02), rng.uniform(40, 110)
        stem = [(x, y)]
        side, next_leaf, s = 1, rng.uniform(2, 5), 0.0
        while s < length:
            s += 2.0
            a += bend * 2.0
            x, y = x + 2.0 * math.cos(a), y + 2.0 * math.sin(a)
            stem.append((x, y))
            if s >= next_leaf:  # a lens-shaped leaf, alternating sides of the stem
                next_leaf += rng.uniform(3, 6)
                side = -side
                b = a + side * rng.uniform(0.5, 1.2)
                ll, lw = rng.uniform(5, 12), rng.uniform(1.5, 4.0)
                d, n = np.array([math.cos(b), math.sin(b)]), np.array([-math.sin(b), math.cos(b)])
                ts = np.linspace(0, 1, 7)
                half = 0.5 * lw * np.sin(np.pi * ts)
                pts = [(x, y) + d * ll * t + n * w for t, w in zip(ts, half)]
                pts += [(x, y) + d * ll * t - n * w for t, w in zip(ts[::-1], half[::-1])]
                gain = rng.uniform(2.0, 4.0) if rng.uniform() < 0.12 else 1.0  # sunlit leaves: HDR sparkles
                rgb = hsv(hue + rng.normal(0, 0.04), rng.uniform(0.5, 0.9), rng.uniform(0.12, 0.55), gain)
                put("polygon", pts, rgb)
        put("line", stem, hsv(0.08, 0.5, rng.uniform(0.08, 0.2)), width=k)  # stems 1 high-res px wide
    idx = np.asarray(ids, dtype=np.int64)
    table = np.array(colours, dtype=np.float32)
    rgba = np.concatenate([table[idx], (idx > 0)[..., None].astype(np.float32)], -1)  # premultiplied: id 0 = 0
    rgba = rgba.reshape(2 * H, k // 2, 2 * W, k // 2, 4).mean((1, 3))
    return wrap_pad(torch.from_numpy(rgba).permute(2, 0, 1).contiguous())


def foliage_scene(rng, size, frames):
    H, W = size
    f = focal_px(H)
    # 256-texel noise tiles: even the sub-pixel octaves repeat only every 60+ px, so no visible lattice
    shape_noise, colour_noise = tileable_noise(rng, 256), tileable_noise(rng, 256)
    rough = rough_noise(rng)  # the high-frequency octave: sub-pixel detail, no lattice
    leaves = leaf_texture(rng, H, W)
    z_front, z_bush, z_far = 2.5, 8.0, 40.0
    truck = 4.0 * z_front / f  # camera speed (world / frame): the front layer moves 4 px/frame
    eye = lambda t: np.array([truck * t, 0.012 * math.sin(0.15 * t), 0.0])

    def front(qy, qx):
        tex = lookup(leaves, qy * 2, qx * 2)
        k = 0.4 + 1.2 * sample_noise(rough, qx / 173 + 0.3, qy / 173)  # fine texture inside the leaves
        return tex[:3] * k, tex[3]

    bush_rgb = (col(hsv(0.30, 0.8, 0.03)), col(hsv(0.22, 0.7, 0.30)))

    def bush(qy, qx):
        n = fbm(shape_noise, qy, qx, (512, 163), (0.5, 0.3)) + 0.2 * sample_noise(rough, qx / 256, qy / 256)
        alpha = smoothstep(0.47, 0.53, n + 0.5 * (qy / H - 0.65))  # denser towards the ground
        shade = 0.5 * sample_noise(colour_noise, qx / 211, qy / 211) + 0.5 * sample_noise(rough, qy / 211, qx / 211)
        rgb = bush_rgb[0] + (bush_rgb[1] - bush_rgb[0]) * smoothstep(0.3, 0.7, shade)
        return rgb * alpha, alpha

    sky_top, sky_low, hill_rgb = col((0.25, 0.45, 1.1)), col((1.1, 1.2, 1.4)), col((0.08, 0.14, 0.16))

    def far(qy, qx):
        ridge = H * (0.42 + 0.25 * (sample_noise(shape_noise, qx / 300, torch.full_like(qx, 0.77)) - 0.5))
        sky = sky_top + (sky_low - sky_top) * (qy / H).clamp(0, 1)
        hills = hill_rgb * (0.6 + 0.8 * sample_noise(colour_noise, qx / 250, qy / 250 + 0.3))
        return torch.where(qy > ridge, hills, sky), torch.ones_like(qy)

    # sway gradients (sum of |amp| |wave|) ~0.41 and ~0.09 < 1: the previous-position solve contracts fast
    layers = [
        Layer(
            "leaves",
            z_front,
            front,
            sway=[
                Sway((0.8, 2.5), (2 * math.pi / 70, 2 * math.pi / 110), 0.35),
                Sway((0.3, 0.8), (-2 * math.pi / 60, 2 * math.pi / 60), 0.6, 1.0),
            ],
        ),
        Layer("bush", z_bush, bush, sway=[Sway((0.3, 1.0), (2 * math.pi / 90, 2 * math.pi / 150), 0.25, 2.0)]),
        Layer("sky", z_far, far),
    ]
    return [Shot(0, layers, eye)]


# ----------------------------------------------------------------------------------------------------------
# Scene 3: fast pan with a camera cut.


def panel_kind(py, px, salt, n):
    return (hash01(py + salt, px) * n).long().clamp_max(n - 1)


def pan_texture_a(rng):
    """64 px panels, each a checkerboard (4 px cells), 1 px lines at some angle, or 4 px rings; 2 px grout."""
    cell = 64.0
    palette = torch.tensor(
        [
            [
                hsv(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.02, 0.15)),
                hsv(rng.uniform(), rng.uniform(0.0, 0.6), rng.uniform(0.5, 1.0), rng.uniform(1.0, 2.5)),
            ]
            for _ in range(8)
        ],
        dtype=torch.float32,
    )  # (8, 2, 3): dark, bright
    grout = torch.tensor([0.3, 0.3, 0.28])

    def content(qy, qx):
        py, px = torch.floor(qy / cell), torch.floor(qx / cell)
        ly, lx = qy - (py + 0.5) * cell, qx - (px + 0.5) * cell
        kind = panel_kind(py, px, 0, 3)
        theta = hash01(py + 17, px) * math.pi
        checker = torch.remainder(torch.floor(ly / 4) + torch.floor(lx / 4), 2.0)
        lines = (frac((lx * torch.cos(theta) + ly * torch.sin(theta)) / 5) < 0.2).float()
        rings = (frac(torch.hypot(ly, lx) / 4) < 0.3).float()
        w = torch.where(kind == 0, checker, torch.where(kind == 1, lines, rings))
        c = palette[panel_kind(py, px, 5, 8)]
        rgb = c[:, 0] + (c[:, 1] - c[:, 0]) * w[:, None]
        rgb = torch.where(((ly.abs() > cell / 2 - 2) | (lx.abs() > cell / 2 - 2))[:, None], grout, rgb)
        return rgb.T, torch.ones_like(qy)

    return content


def pan_texture_b(rng):
    """96 px cells of zone plates (up to the high-res Nyquist rate at the edge), bricks with 1 px mortar, or
    36-spoke Siemens stars: a different look, so the cut really changes the content."""
    cell = 96.0
    palette = torch.tensor(
        [
            [
                hsv(rng.uniform(), rng.uniform(0.3, 0.9), rng.uniform(0.03, 0.2)),
                hsv(rng.uniform(), rng.uniform(0.0, 0.5), rng.uniform(0.6, 1.0), rng.uniform(1.0, 2.0)),
            ]
            for _ in range(8)
        ],
        dtype=torch.float32,
    )

    def content(qy, qx):
        py, px = torch.floor(qy / cell), torch.floor(qx / cell)
        ly, lx = qy - (py + 0.5) * cell, qx - (px + 0.5) * cell
        kind = panel_kind(py, px, 3, 3)
        zone = 0.5 + 0.5 * torch.cos(math.pi / 96 * (ly * ly + lx * lx))  # local rate r / 96 cycles/px
        row = torch.floor(qy / 5)
        u = qx / 12 + 0.5 * torch.remainder(row, 2.0)
        bricks = ((frac(u) > 1 / 12) & (frac(qy / 5) > 1 / 5)).float() * (0.5 + 0.5 * hash01(row, torch.floor(u)))
        star = (frac(torch.atan2(ly, lx) * 36 / (2 * math.pi)) < 0.5).float()
        w = torch.where(kind == 0, zone, torch.where(kind == 1, bricks, star))
        c = palette[panel_kind(py, px, 11, 8)]
        return (c[:, 0] + (c[:, 1] - c[:, 0]) * w[:, None]).T, torch.ones_like(qy)

    return content


def pan_cut_scene(rng, size, frames):
    H, W = size
    f = focal_px(H)
    cut = frames // 2 if frames >= 2 else frames
    z_a, z_b = 5.0, 3.0
    n = max(cut - 1, 1)
    a = math.radians(rng.uniform(-15, 15))  # mostly horizontal, speed ramping 6 -> 12 px/frame

    def eye_a(t):  # screen shift s(t) = 6 t + 3 t^2 / n px along (sin a, cos a)
        s = 6 * t + 3 * t * t / n
        return np.array([-s * math.cos(a) * z_a / f, s * math.sin(a) * z_a / f, 0.0])

    b = math.radians(rng.uniform(20, 70)) + rng.choice([0.0, math.pi])  # diagonal, 9 px/frame

    def eye_b(t):
        s = 9.0 * (t - cut) + 40.0  # starts somewhere else on the new texture
        return np.array([-s * math.cos(b) * z_b / f, s * math.sin(b) * z_b / f, 0.0])

    shots = [Shot(0, [Layer("panels", z_a, pan_texture_a(rng))], eye_a)]
    if cut < frames:
        shots.append(Shot(cut, [Layer("charts", z_b, pan_texture_b(rng))], eye_b))
    return shots


BUILDERS = {"text": text_scene, "foliage": foliage_scene, "pan_cut": pan_cut_scene}


def build(name, size, frames, seed):
    """The shots of scene `name` (one of SCENES) for a seed; every scene has its own random stream."""
    rng = np.random.default_rng([seed, SCENES.index(name)])
    return BUILDERS[name](rng, size, frames)


def make_scenes(out_dir, size=(256, 256), frames=24, seed=0, progress=True):
    """Write OUT/{text,foliage,pan_cut}.safetensors of `frames` frames at high res `size` = (H, W), both even
    (low res = size / 2) -> the written paths."""
    H, W = size
    if H % SCALE or W % SCALE or H < 2 or W < 2 or frames < 1:
        raise ValueError(f"size {H}x{W}, frames {frames}: height and width must be even and positive, frames >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.date.today().strftime("%d-%m-%Y")
    paths = []
    with progress_bar(total=len(SCENES) * frames, unit="frame", desc="scenes", disable=not progress) as bar:
        for name in SCENES:
            tensors = render_scene(
                build(name, (H, W), frames, seed), frames, (H, W), f"nanoNG-scenes/{name}/{seed}", on_frame=bar.update
            )
            path = out_dir / f"{name}.safetensors"
            tmp = path.with_name(path.name + ".tmp")
            meta = {"Length": str(frames), "Created": created, "Version": "nanoNG-scenes"}
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, path)  # never leave a half-written capture behind
            paths.append(path)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder for text/foliage/pan_cut.safetensors (created)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(256, 256),
        metavar=("H", "W"),
        help="ground-truth (high) resolution, both even; the input is H/2 x W/2",
    )
    p.add_argument("--frames", type=int, default=24, help="frames per capture (the pan cuts at frames // 2)")
    p.add_argument("--seed", type=int, default=0, help="random text, leaves, palettes and pan directions")
    p.add_argument("--no-preview", action="store_true", help="skip the OUT/<scene>.png strips of a few frames")
    args = p.parse_args(argv)
    H, W = args.size
    if H % 2 or W % 2 or H < 2 or W < 2 or args.frames < 1 or args.seed < 0:
        p.error("--size must be two even positive numbers; --frames >= 1; --seed >= 0")
    t0 = time.time()
    paths = make_scenes(args.out, (H, W), args.frames, args.seed)
    print(f"wrote {len(paths)} captures to {args.out} in {time.time() - t0:.1f} s")
    if not args.no_preview:
        for path in paths:
            preview(path, path.with_suffix(".png"))
        print(f"previews: {', '.join(str(q.with_suffix('.png')) for q in paths)}")


if __name__ == "__main__":
    main()
