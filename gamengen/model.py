"""GameNGen's denoiser: an action-conditioned latent diffusion U-Net that predicts the next frame's latent.

    model = Denoiser(MODELS["cpu"])
    v = model(x_t, t, context, actions, bucket)  # (B,4,16,20), (B,), (B,N,4,16,20), (B,N), (B,) -> (B,4,16,20)
    z = sample(model, context, actions)              # DDIM, 4 steps, CFG w=1.5 on the context -> next latent
    loss = training_loss(model, target, context, actions, valid)

Input: [noisy target latent || N context latents] concatenated in channels (4 * (N + 1) channels at 16x20),
as the paper does; a finer latent (the cpu autoencoder's 4x32x40) is first pixel-unshuffled by `patch` (2:
16 * (N + 1) channels at 16x20) and the output shuffled back, so the U-Net's cost does not depend on the
autoencoder's factor (train.py sets latent shape and patch from the latents it trains on). U-Net: three levels
(16x20, 8x10, 4x5), residual blocks conditioned by adaptive group norm (per-channel scale and shift from one
conditioning vector), self-attention at 8x10 and 4x5.

Conditioning vector = time embedding + context-noise bucket embedding + action embedding. Actions are summed
into the conditioning, not given as cross-attention tokens: N is 8 on CPU and the most recent actions are what
moves the next frame, so one learned embedding per (position, action), flattened and projected, carries all of
it (DIAMOND conditions on its actions the same way) at no attention cost, which matters for 20 FPS on a CPU;
every residual block sees it through the adaptive norm.

Diffusion: v-prediction (Salimans & Ho, as the paper) on a continuous cosine schedule, alpha = cos(pi t / 2),
sigma = sin(pi t / 2), t ~ U(0, 1). At t = 1 the input is pure noise and v = -x0, so the first of the few DDIM
steps is a direct prediction of the frame; with the cosine schedule the terminal SNR is exactly 0, which
avoids the few-step drift DIAMOND reports for DDPM with SD's schedule.

Context noise augmentation (paper 3.2.1): training adds level * N(0, 1) to the (real, not padded) context
latents with level ~ U(0, 0.7), in 10 buckets whose learned embedding joins the time embedding; at inference the
level is a knob (`ctx_noise`). Classifier-free guidance on the past frames only: training replaces ALL context
latents by zeros with p = 0.1 (actions stay); sampling mixes v = v_uncond + w (v_cond - v_uncond), w = 1.5, where
the unconditional branch has every context frame zeroed (`drop_context`; the open reproduction zeroed only the
first 16 of 64 there).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class DiffusionConfig:
    context: int = 8  # N past frames (and actions)
    latent_channels: int = 4
    latent_size: tuple = (16, 20)
    patch: int = 1  # the U-Net sees the latent pixel-unshuffled by this (2: a 4x32x40 latent as 16x16x20)
    channels: tuple = (32, 64, 128)  # per U-Net level (16x20, 8x10, 4x5)
    blocks: int = 1  # residual blocks per level (encoder; the decoder has blocks + 1)
    attention: tuple = (False, True, True)  # self-attention per level
    heads: int = 4
    cond_dim: int = 256
    action_dim: int = 32  # embedding per (position, action)
    n_actions: int = 8
    noise_buckets: int = 10
    max_ctx_noise: float = 0.7
    p_drop_context: float = 0.1
    guidance: float = 1.5
    sample_steps: int = 4


MODELS = {  # the denoiser architectures train.py diffusion --model and export.py --preset pick from
    "tiny": DiffusionConfig(context=2, channels=(16, 32), attention=(False, True), heads=2, cond_dim=32, action_dim=4),
    "cpu": DiffusionConfig(),
    "paper": DiffusionConfig(context=64, channels=(128, 256, 512), blocks=2, heads=8, cond_dim=512),
}


def alpha_sigma(t):
    return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def groups(c):
    return math.gcd(c, 32) if c >= 32 else max(1, c // 4)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, cond_dim):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups(cout), cout, affine=False), nn.Conv2d(cout, cout, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * cout)  # adaptive group norm: scale and shift per channel
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, c):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, 1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention(nn.Module):
    """Self-attention over the H*W positions (explicit matmul + softmax: lowers to TOSA/XNNPACK as is)."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads, self.norm = heads, nn.GroupNorm(groups(c), c)
        self.qkv, self.proj = nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (z.clone(memory_format=torch.contiguous_format) for z in qkv.unbind(1))  # same graph at any batch
        attn = torch.softmax(q.transpose(-1, -2) @ k * (C // self.heads) ** -0.5, -1)  # (B, h, HW, HW)
        out = (v @ attn.transpose(-1, -2)).reshape(B, C, H, W)
        return x + self.proj(out)


class Level(nn.Module):
    def __init__(self, cins, cout, cond_dim, attention, heads):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, cout, cond_dim) for c in cins)
        self.attn = nn.ModuleList(Attention(cout, heads) if attention else nn.Identity() for _ in cins)


class Denoiser(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C, ch, d = cfg.latent_channels * cfg.patch**2, cfg.channels, cfg.cond_dim
        self.time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.bucket = nn.Embedding(cfg.noise_buckets, d)
        self.action = nn.Embedding(cfg.context * cfg.n_actions, cfg.action_dim)  # one table row per (position, action)
        self.action_proj = nn.Sequential(nn.Linear(cfg.context * cfg.action_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.inp = nn.Conv2d(C * (cfg.context + 1), ch[0], 3, padding=1)
        self.down, self.downsample, self.up, self.upsample = (
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
            nn.ModuleList(),
        )
        skips = [ch[0]]
        for i, c in enumerate(ch):
            self.down.append(Level([skips[-1]] + [c] * (cfg.blocks - 1), c, d, cfg.attention[i], cfg.heads))
            skips += [c] * cfg.blocks
            if i < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, ch[i + 1], 3, stride=2, padding=1))
                skips.append(ch[i + 1])
        self.mid = Level([ch[-1], ch[-1]], ch[-1], d, True, cfg.heads)
        cur = ch[-1]
        for i in reversed(range(len(ch))):
            cins = []
            for _ in range(cfg.blocks + 1):
                cins.append(cur + skips.pop())
                cur = ch[i]
            self.up.append(Level(cins, ch[i], d, cfg.attention[i], cfg.heads))
            if i:
                self.upsample.append(nn.Conv2d(ch[i], ch[i - 1], 3, padding=1))
                cur = ch[i - 1]
        self.out_norm, self.out = nn.GroupNorm(groups(ch[0]), ch[0]), nn.Conv2d(ch[0], C, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("positions", torch.arange(cfg.context) * cfg.n_actions, persistent=False)

    def condition(self, t, actions, bucket):
        a = self.action(actions + self.positions).flatten(1)  # (B, N * action_dim)
        return self.time(timestep_embedding(t, self.cfg.cond_dim)) + self.bucket(bucket) + self.action_proj(a)

    def forward(self, x_t, t, context, actions, bucket):
        """x_t (B,C,H,W) noisy target, t (B,) in [0,1], context (B,N,C,H,W), actions (B,N) int, bucket (B,) int -> v."""
        c, p = self.condition(t, actions, bucket), self.cfg.patch
        if p > 1:  # space to depth: the U-Net's top level stays 16x20 whatever the autoencoder's factor
            x_t, context = (
                F.pixel_unshuffle(x_t, p),
                F.pixel_unshuffle(context.flatten(0, 1), p).unflatten(0, context.shape[:2]),
            )
        h = self.inp(torch.cat([x_t, context.flatten(1, 2)], 1))
        hs = [h]
        for i, level in enumerate(self.down):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, c))
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        for res, attn in zip(self.mid.res, self.mid.attn):
            h = attn(res(h, c))
        for j, level in enumerate(self.up):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], 1), c))
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        v = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(v, p) if p > 1 else v


def bucket_of(level, cfg):
    """Context noise level in [0, max] -> bucket index 0..noise_buckets-1 (equal widths)."""
    return (level / (cfg.max_ctx_noise / cfg.noise_buckets)).long().clamp(0, cfg.noise_buckets - 1)


def drop_context(context):
    """The unconditional branch of classifier-free guidance: every context frame zeroed (actions kept)."""
    return torch.zeros_like(context)


def training_loss(model, target, context, actions, valid=None, generator=None):
    """v-prediction MSE for one batch; context noise augmentation and context dropout included.
    target (B,C,H,W), context (B,N,C,H,W), actions (B,N), valid (B,N) bool (False = left padding, kept at zero)."""
    cfg, B = getattr(model, "module", model).cfg, target.shape[0]  # (model may be DDP-wrapped)
    dev = target.device
    rand = lambda *s: torch.rand(*s, generator=generator).to(dev)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=generator).to(dev)  # noqa: E731
    t, eps = rand(B), randn(*target.shape)
    a, s = (v.view(B, 1, 1, 1) for v in alpha_sigma(t))
    x_t, v_target = a * target + s * eps, a * eps - s * target
    level = rand(B) * cfg.max_ctx_noise
    noise = level.view(B, 1, 1, 1, 1) * randn(*context.shape)
    if valid is not None:
        noise = noise * valid[:, :, None, None, None]
    context = context + noise
    drop = (rand(B) < cfg.p_drop_context).view(B, 1, 1, 1, 1)
    context = torch.where(drop, drop_context(context), context)
    return F.mse_loss(model(x_t, t, context, actions, bucket_of(level, cfg)), v_target)


class DenoiseStep(nn.Module):
    """One guided DDIM step, t -> s (what sample() loops over and what export.py exports): the conditional and
    unconditional (all context zeroed) branches run as one batch of 2B; v = v_u + w (v_c - v_u)."""

    def __init__(self, model, guidance=1.5):
        super().__init__()
        self.model, self.guidance = model, guidance

    def forward(self, x, t, s, context, actions, bucket):
        """x (B,C,H,W), t and s (B,) with s < t, context (B,N,C,H,W), actions (B,N), bucket (B,) -> x at s."""
        if self.guidance != 1.0:
            v = self.model(
                torch.cat([x, x]),
                torch.cat([t, t]),
                torch.cat([context, drop_context(context)]),
                torch.cat([actions, actions]),
                torch.cat([bucket, bucket]),
            )
            v_c, v_u = v.chunk(2)
            v = v_u + self.guidance * (v_c - v_u)
        else:
            v = self.model(x, t, context, actions, bucket)
        a_t, s_t = (z.view(-1, 1, 1, 1) for z in alpha_sigma(t))
        a_s, s_s = (z.view(-1, 1, 1, 1) for z in alpha_sigma(s))
        # image first, per-sample factor second: ExecuTorch 1.5.1's Arm int8 lowering breaks `factor * v` where v
        # comes out of a conv (its permute propagation pass mixes NCHW and NHWC); `v * factor` lowers
        x0, eps = x * a_t - v * s_t, x * s_t + v * a_t
        return x0 * a_s + eps * s_s


@torch.no_grad()
def sample(model, context, actions, steps=None, guidance=None, ctx_noise=0.0, generator=None, noise=None, step=None):
    """Next latent from N context latents and N actions: DDIM from pure noise at t = 1 to t = 0 in `steps`
    (default 4) uniform steps, with context guidance w (default 1.5). ctx_noise adds that much Gaussian noise to
    the context and tells the model its bucket (the paper's inference knob). `step` replaces DenoiseStep(model,
    guidance) by a callable with its signature, e.g. the exported program (guidance baked in at export)."""
    cfg = model.cfg
    steps, guidance = steps or cfg.sample_steps, cfg.guidance if guidance is None else guidance
    B, dev = context.shape[0], context.device
    if ctx_noise:
        context = context + ctx_noise * torch.randn(context.shape, generator=generator).to(dev)
    bucket = bucket_of(torch.full((B,), float(ctx_noise), device=dev), cfg)
    x = (
        noise
        if noise is not None
        else torch.randn((B, cfg.latent_channels, *cfg.latent_size), generator=generator).to(dev)
    )
    step = step or DenoiseStep(model, guidance)
    ts = torch.linspace(1, 0, steps + 1, device=dev)
    for i in range(steps):
        x = step(x, ts[i].expand(B), ts[i + 1].expand(B), context, actions, bucket)
    return x
