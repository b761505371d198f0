"""Images: sRGB transfer, tensor <-> PNG, labelled comparison grids with zoomed crops, GIFs. Tensors are float
(C, H, W) or (N, C, H, W) in [0, 1] unless stated."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def srgb(x):
    """Linear [0,1] -> sRGB-encoded [0,1]."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-8) ** (1 / 2.4) - 0.055)


def to_uint8(chw):
    """(C, H, W) in [0, 1] (C = 1 or 3) -> (H, W, 3) uint8 array, rounded."""
    chw = chw.detach().float().cpu().clamp(0, 1)
    if chw.shape[0] == 1:
        chw = chw.expand(3, -1, -1)
    return (chw * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def save_png(chw, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(chw)).save(path)


def load_png(path):
    """PNG -> float (C, H, W) in [0, 1]."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def _resize_nearest(chw, h, w):
    return F.interpolate(chw[None].float(), size=(h, w), mode="nearest")[0]


def grid(rows, labels, path=None, crop=None, zoom=4, pad=4, label_h=14):
    """A comparison grid: `rows` is a list of lists of (C, H, W) images (resized to the first one's size,
    nearest); `labels` names the columns. With crop=(y, x, size), each row gets a second band of zoomed
    crops so aliasing and ghosting are visible. Returns the (3, H, W) grid, and writes it when `path`."""
    h, w = rows[0][0].shape[-2:]
    bands = []
    for row in rows:
        imgs = [_resize_nearest(im.float().cpu(), h, w).expand(3, -1, -1) for im in row]
        bands.append(imgs)
        if crop is not None:
            y, x, s = crop
            crop_h, crop_w = s * zoom * h // max(h, w), s * zoom * w // max(h, w)
            bands.append(
                [
                    _resize_nearest(im[:, y : y + s, x : x + s], crop_h if crop_h else s, crop_w if crop_w else s)
                    for im in imgs
                ]
            )
    cols = len(labels)
    col_w = w + pad
    heights = [b[0].shape[-2] for b in bands]
    canvas = Image.new("RGB", (cols * col_w + pad, label_h + sum(hh + pad for hh in heights) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(labels):
        draw.text((pad + c * col_w + 2, 2), name, fill=(240, 240, 240))
    y0 = label_h
    for band, bh in zip(bands, heights):
        for c, im in enumerate(band):
            canvas.paste(Image.fromarray(to_uint8(im)), (pad + c * col_w, y0))
        y0 += bh + pad
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).float() / 255


def save_gif(frames, path, fps=10):
    """frames: list of (C, H, W) in [0, 1]."""
    ims = [Image.fromarray(to_uint8(f)) for f in frames]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
