"""Prism: a game frame's G-buffer (colour, depth, motion) -> a photoreal frame at 2x or 3x, in real time.

    encoder   6 -> w0 (h, w) -> w1 (h/2) -> w2 (h/4) -> w3 (h/8)        strided 3x3 convs + residual blocks
    bottleneck  N windowed transformer blocks (8x8 windows of tokens at h/8, pre-norm, MHSA + MLP)
              ConvGRU: the temporal state (w3 channels at h/8) streams from frame to frame; training detaches
              it every frame (no backpropagation through time), so it is an explicit input and output
    decoder   PixelShuffle 2x up + skip (concat) + residual block, back to (h, w)
    heads     2x and 3x, each conv -> 3*s*s channels -> PixelShuffle(s), added to the bilinear upsample of
              the input colour (the network learns the residual: relighting, detail, de-banding)

    model = build_model("fast")                       # fast | balanced | quality (the seed's 590K / 2.5M / 6.4M)
    state = model.initial_state(1, h, w)
    for color, depth, motion in frames:               # (1,3,h,w) sRGB [0,1], (1,1,h,w) [0,1], (1,2,h,w) pixels
        frame, state = model(color, depth, motion, state, scale=2)    # (1,3,2h,2w)

Frames of any size work: the input is padded to a multiple of 8 and the bottleneck to whole windows, and
the output cropped back. The windows do not shift between blocks (a shift is a roll, which the Arm backend
does not lower); the ConvGRU's 3x3 convs and the decoder mix neighbouring windows instead.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

MOTION_SCALE = 1 / 16  # motion vectors in pixels -> roughly [-1, 1] for typical game motion


@dataclass
class PrismConfig:
    widths: tuple = (16, 24, 48, 64)  # channels at h, h/2, h/4, h/8
    blocks: int = 2  # transformer blocks at the bottleneck
    heads: int = 2
    window: int = 8  # attention window (tokens) at h/8
    mlp_ratio: float = 2.0
    res_blocks: int = 1  # residual blocks per encoder/decoder level


MODELS = {  # the architectures train.py --model, export.py --preset and bench.py pick from
    # the seed (1080p, desktop GPU): fast 590K params / 2 blocks / ~3 ms, balanced 2.5M / 4 / ~12 ms,
    # quality 6.4M / 6 / ~20 ms
    "fast": PrismConfig(widths=(16, 24, 48, 64), blocks=2, heads=2),
    "balanced": PrismConfig(widths=(24, 48, 80, 128), blocks=4, heads=4),
    "quality": PrismConfig(widths=(32, 64, 128, 192), blocks=6, heads=6),
    "tiny": PrismConfig(widths=(8, 16, 16, 32), blocks=1, heads=2, mlp_ratio=1.0),
}
SEED_PARAMS = {"fast": 590_000, "balanced": 2_500_000, "quality": 6_400_000}


def conv(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1)


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1, self.conv2 = conv(ch, ch), conv(ch, ch)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class WindowBlock(nn.Module):
    """Pre-norm transformer block over non-overlapping window x window groups of tokens."""

    def __init__(self, dim, heads, window, mlp_ratio):
        super().__init__()
        self.heads, self.window = heads, window
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):  # (N, C, H, W), H and W multiples of the window
        N, C, H, W = x.shape
        k = self.window
        # (N, C, H, W) -> (N * windows, k*k tokens, C)
        t = x.reshape(N, C, H // k, k, W // k, k).permute(0, 2, 4, 3, 5, 1).reshape(-1, k * k, C)
        x = self.norm1(t)
        q, kk, v = (
            f(x).reshape(t.shape[0], k * k, self.heads, C // self.heads).transpose(1, 2)
            for f in (self.q, self.k, self.v)
        )
        # attention written out (not F.scaled_dot_product_attention): its decomposition adds NaN-row guards
        # (any/eq/where) that XNNPACK does not take, which split the CPU .pte into many small delegates
        a = (
            torch.softmax(q @ kk.transpose(-2, -1) * (C // self.heads) ** -0.5, dim=-1) @ v
        )  # (N*win, heads, k*k, C/heads)
        t = t + self.proj(a.transpose(1, 2).reshape(t.shape))
        t = t + self.mlp(self.norm2(t))
        return t.reshape(N, H // k, W // k, k, k, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, W)


class ConvGRU(nn.Module):
    """h' = (1 - z) * h + z * tanh(W [x, r * h]); z, r = sigmoid(W_zr [x, h]). Computed as h + z * (cand - h),
    the same blend: written with (1 - z) the int8 VGF lowering (ExecuTorch 1.5 Arm backend) mixes NHWC and NCHW
    shapes in the rescaled multiply and fails."""

    def __init__(self, ch):
        super().__init__()
        self.update = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.reset = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.cand = nn.Conv2d(2 * ch, ch, 3, padding=1)

    def forward(self, x, h):
        xh = torch.cat([x, h], 1)
        z, r = torch.sigmoid(self.update(xh)), torch.sigmoid(self.reset(xh))
        cand = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return h + z * (cand - h)


class Up(nn.Module):
    """PixelShuffle 2x up, concat the encoder's skip, fuse."""

    def __init__(self, cin, cskip, cout, res_blocks):
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(cin, cout * 4, 1), nn.PixelShuffle(2))
        self.fuse = conv(cout + cskip, cout)
        self.res = nn.Sequential(*[ResBlock(cout) for _ in range(res_blocks)])

    def forward(self, x, skip):
        return self.res(F.relu(self.fuse(torch.cat([self.up(x), skip], 1))))


class Prism(nn.Module):
    def __init__(self, cfg: PrismConfig):
        super().__init__()
        self.cfg = cfg
        w0, w1, w2, w3 = cfg.widths
        rb = lambda c: [ResBlock(c) for _ in range(cfg.res_blocks)]  # noqa: E731
        self.stem = nn.Sequential(conv(6, w0), nn.ReLU(), *rb(w0))
        self.down1 = nn.Sequential(conv(w0, w1, 2), nn.ReLU(), *rb(w1))
        self.down2 = nn.Sequential(conv(w1, w2, 2), nn.ReLU(), *rb(w2))
        self.down3 = nn.Sequential(conv(w2, w3, 2), nn.ReLU(), *rb(w3))
        self.blocks = nn.Sequential(*[WindowBlock(w3, cfg.heads, cfg.window, cfg.mlp_ratio) for _ in range(cfg.blocks)])
        self.gru = ConvGRU(w3)
        self.up3, self.up2, self.up1 = (
            Up(w3, w2, w2, cfg.res_blocks),
            Up(w2, w1, w1, cfg.res_blocks),
            Up(w1, w0, w0, cfg.res_blocks),
        )
        self.heads = nn.ModuleDict({str(s): nn.Sequential(conv(w0, 3 * s * s), nn.PixelShuffle(s)) for s in (2, 3)})
        for head in self.heads.values():  # start as plain bilinear upsampling
            nn.init.zeros_(head[0].weight)
            nn.init.zeros_(head[0].bias)

    def state_shape(self, h, w):
        """GRU state (C, H, W) for h x w input frames."""
        return self.cfg.widths[3], -(-h // 8), -(-w // 8)

    def initial_state(self, n, h, w, device=None):
        return torch.zeros(n, *self.state_shape(h, w), device=device)

    def forward(self, color, depth, motion, state, scale=2):
        """(N,3,h,w), (N,1,h,w), (N,2,h,w), state (N,C,h/8,w/8) -> frame (N,3,s*h,s*w), new state."""
        h, w = color.shape[-2:]
        x = torch.cat([color * 2 - 1, depth * 2 - 1, motion * MOTION_SCALE], 1)
        ph, pw = -h % 8, -w % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        f0 = self.stem(x)  # (N, w0, H, W)
        f1 = self.down1(f0)  # (N, w1, H/2, W/2)
        f2 = self.down2(f1)  # (N, w2, H/4, W/4)
        f3 = self.down3(f2)  # (N, w3, H/8, W/8)
        k = self.cfg.window
        bh, bw = f3.shape[-2:]
        qh, qw = -bh % k, -bw % k
        t = F.pad(f3, (0, qw, 0, qh)) if qh or qw else f3
        t = self.blocks(t)[..., :bh, :bw]
        state = self.gru(t, state)
        d = self.up1(self.up2(self.up3(state, f2), f1), f0)  # (N, w0, H, W)
        residual = self.heads[str(scale)](d)[..., : scale * h, : scale * w]
        base = F.interpolate(color, scale_factor=scale, mode="bilinear", align_corners=False)
        return base + residual, state


class ExportPrism(nn.Module):
    """One scale, state in and out: forward(color, depth, motion, state) -> (frame, new state). The engine
    feeds the state back every frame (zeros on a camera cut)."""

    def __init__(self, model, scale):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, color, depth, motion, state):
        return self.model(color, depth, motion, state, self.scale)


def build_model(name="fast"):
    return Prism(MODELS[name])


# ---- discriminator ------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided 4x4 convs -> a map of real/fake logits, one per receptive-field patch."""

    def __init__(self, n_layers=3, ndf=32):
        super().__init__()
        layers, ch = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)], ndf
        for i in range(1, n_layers):
            nxt = min(ndf * 2**i, 8 * ndf)
            layers += [nn.Conv2d(ch, nxt, 4, 2, 1), nn.GroupNorm(min(8, nxt), nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        layers += [nn.Conv2d(ch, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x * 2 - 1)


class MultiScaleDiscriminator(nn.Module):
    """PatchGANs at full, 1/2 and 1/4 resolution (coarse ones judge global tone, the fine one texture)."""

    def __init__(self, scales=3, n_layers=3, ndf=32):
        super().__init__()
        self.discs = nn.ModuleList(PatchDiscriminator(n_layers, ndf) for _ in range(scales))

    def forward(self, x):
        """-> list of logit maps, one per scale."""
        out = []
        for i, d in enumerate(self.discs):
            out.append(d(F.avg_pool2d(x, 2**i) if i else x))
        return out
