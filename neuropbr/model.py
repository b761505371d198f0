"""NeuroPBR generator and discriminator: three rendered views of a material -> albedo, roughness, metallic and
normal maps (the structure of MultiViewPBRGenerator in josephHelfenbein/NeuroPBR's training/train.py).

    views (B, 3 views, 3, H, W) in [0, 1]
      -> shared torchvision ResNet encoder per view (random init; --init loads local weights)
      -> skips [stem, layer1, layer2, layer3] averaged over the views (the reference; views that differ in light
         or viewpoint lose what differs) or, with skip_fusion "concat", concatenated and merged by a 1x1 conv;
         latent = layer4 of each view
      -> transformer fusion: attention over the tokens of all three views (B, 3*h*w, C) ("global", the reference)
         or over the three view tokens of each location ("local": the receptive field stays bounded, so tiled
         inference equals whole-image inference), then per location the three view tokens are concatenated ->
         Linear(3C -> C) -> LayerNorm
      -> U-Net decoder (bilinear x2, conv-BN-ReLU, concat skip, 2x conv-BN-ReLU per level); with input_skip the
         last conv also sees two 3x3 conv-BN-ReLU of the three views at full resolution
      -> four 1x1 heads: albedo (3, sigmoid), roughness (1, sigmoid), metallic (1, sigmoid), normal (3, unit length;
         or with normal_head "slope" 2 slopes (sx, sy) -> normalize(sx, sy, 1))

    PatchGAN(n_layers, ndf) judges the 8-channel stack of the four maps, patch by patch.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

MAPS = {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}


@dataclass
class ModelConfig:
    encoder: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101
    encoder_stride: int = 1  # conv1 stride: 1 = latent at H/16 (reference default), 2 = H/32, cheaper
    photometric: bool = False  # stacked: also feed log(luma of each view) - its mean over the views (3 channels,
    # albedo cancels: what the flash and the relief change from view to view)
    views_in: str = "shared"  # shared: the encoder runs on each view (reference) | stacked: once, on the
    # three registered views stacked as 9 channels (every layer compares them)
    use_transformer: bool = True  # False: fuse the views by concat + 1x1 conv
    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    decoder_min_ch: int = 32  # decoder width floor (reference: 64)
    attention: str = "global"  # global: all views' tokens attend to each other (reference) | local: per location
    skip_fusion: str = "mean"  # mean: skips averaged over the views (reference) | concat: the three views'
    # skips concatenated -> 1x1 conv-BN-ReLU (keeps what differs between views)
    normal_head: str = "vector"  # vector: 3 outputs, L2-normalised (reference) | slope: 2 outputs (sx, sy),
    # n = normalize(sx, sy, 1): z > 0 always, and no free length that grows
    # and shrinks the gradient of the tilt (a flat start learns slopes faster)
    input_skip: int = 0  # > 0: a full-resolution branch of two 3x3 convs of this width on the three
    # views, concatenated before the last conv (stride-2 encoders have no
    # full-resolution skip, and fine normals need pixel-level shading cues)


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """A torchvision ResNet cut into [stem, layer1, layer2, layer3] skips and the layer4 latent."""

    def __init__(self, name, stride=1, in_channels=3):
        super().__init__()
        if name not in ("resnet18", "resnet34", "resnet50", "resnet101"):
            raise ValueError(f"unknown encoder {name!r} (resnet18 | resnet34 | resnet50 | resnet101)")
        r = getattr(torchvision.models, name)(weights=None)
        r.conv1.stride = (stride, stride)
        if in_channels != 3:
            r.conv1 = nn.Conv2d(in_channels, 64, 7, stride, 3, bias=False)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu)
        self.pool, self.layer1, self.layer2, self.layer3, self.layer4 = (
            r.maxpool,
            r.layer1,
            r.layer2,
            r.layer3,
            r.layer4,
        )
        width = 4 if name in ("resnet50", "resnet101") else 1
        self.skip_channels = [64, 64 * width, 128 * width, 256 * width]
        self.latent_channels = 512 * width

    def forward(self, x):
        s0 = self.stem(x)
        s1 = self.layer1(self.pool(s0))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        return [s0, s1, s2, s3], self.layer4(s3)


class Block(nn.Module):
    """Pre-norm transformer block; attention written out (linear, q@kT, softmax, @v) so it exports to VGF."""

    def __init__(self, dim, heads, mlp_ratio, dropout):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):  # (B, N, C)
        B, N, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5, dim=-1)
        x = x + self.drop(self.proj((att @ v).transpose(1, 2).reshape(B, N, C)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Fusion(nn.Module):
    """(B, V, C, h, w) per-view latents -> (B, C, h, w): attention across all views' tokens (no positional or
    view embeddings, as the reference), then the V tokens of each location merged by Linear(VC -> C)."""

    def __init__(self, cin, cfg, views=3):
        super().__init__()
        dim = cfg.transformer_dim
        self.inp = nn.Conv2d(cin, dim, 1) if cin != dim else nn.Identity()
        self.use_transformer, self.local = cfg.use_transformer, cfg.attention == "local"
        if cfg.attention not in ("global", "local"):
            raise ValueError(f"unknown attention {cfg.attention!r} (global | local)")
        if cfg.use_transformer:
            self.blocks = nn.Sequential(
                *[Block(dim, cfg.transformer_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.transformer_depth)]
            )
            self.merge, self.norm = nn.Linear(views * dim, dim), nn.LayerNorm(dim)
        else:
            self.merge_conv = nn.Conv2d(views * dim, dim, 1)

    def forward(self, z):
        B, V = z.shape[:2]
        z = self.inp(z.flatten(0, 1))  # (B*V, C, h, w)
        C, h, w = z.shape[1:]
        if not self.use_transformer:
            return self.merge_conv(z.reshape(B, V * C, h, w))
        if self.local:  # (B * h * w, V, C): each location's V view tokens attend to each other
            t = self.blocks(z.reshape(B, V, C, h * w).permute(0, 3, 1, 2).reshape(B * h * w, V, C))
            t = t.reshape(B, h * w, V * C)
        else:
            t = z.reshape(B, V, C, h * w).permute(0, 1, 3, 2).reshape(B, V * h * w, C)
            t = self.blocks(t).reshape(B, V, h * w, C).permute(0, 2, 1, 3).reshape(B, h * w, V * C)
        return self.norm(self.merge(t)).transpose(1, 2).reshape(B, C, h, w)


class Up(nn.Module):
    """bilinear x2 -> conv-BN-ReLU -> concat skip -> 2x conv-BN-ReLU."""

    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.up = conv_bn_relu(cin, cout)
        self.fuse = nn.Sequential(conv_bn_relu(cout + cskip, cout), conv_bn_relu(cout, cout))

    def forward(self, x, skip):
        x = self.up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return self.fuse(torch.cat([x, skip], 1))


class Generator(nn.Module):
    def __init__(self, cfg=ModelConfig()):
        super().__init__()
        self.cfg = cfg
        if cfg.views_in not in ("shared", "stacked"):
            raise ValueError(f"unknown views_in {cfg.views_in!r} (shared | stacked)")
        self.stacked = cfg.views_in == "stacked"
        self.extra = 3 if cfg.photometric and self.stacked else 0
        self.encoder = Encoder(cfg.encoder, cfg.encoder_stride, 9 + self.extra if self.stacked else 3)
        self.fusion = Fusion(self.encoder.latent_channels, cfg, views=1 if self.stacked else 3)
        ups, cin = [], cfg.transformer_dim
        for cskip in reversed(self.encoder.skip_channels):
            cout = max(cskip // 2, cfg.decoder_min_ch)
            ups.append(Up(cin, cskip, cout))
            cin = cout
        self.ups = nn.ModuleList(ups)
        if cfg.skip_fusion not in ("mean", "concat"):
            raise ValueError(f"unknown skip_fusion {cfg.skip_fusion!r} (mean | concat)")
        self.skip_merge = (
            nn.ModuleList(
                [
                    nn.Sequential(nn.Conv2d(3 * c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
                    for c in self.encoder.skip_channels
                ]
            )
            if cfg.skip_fusion == "concat" and not self.stacked
            else None
        )
        w = cfg.input_skip
        self.skip0 = nn.Sequential(conv_bn_relu(9 + self.extra, w), conv_bn_relu(w, w)) if w else None  # the views
        self.final = conv_bn_relu(cin + w, cin)  # at input resolution
        if cfg.normal_head not in ("vector", "slope"):
            raise ValueError(f"unknown normal_head {cfg.normal_head!r} (vector | slope)")
        self.slope = cfg.normal_head == "slope"
        self.heads = nn.ModuleDict(
            {k: nn.Conv2d(cin, 2 if k == "normal" and self.slope else c, 1) for k, c in MAPS.items()}
        )

    def forward(self, views):
        """views (B, 3, 3, H, W) in [0, 1], H and W multiples of 16 (32 with encoder_stride 2) -> dict of maps."""
        B, V, _, H, W = views.shape
        x0 = ((views - 0.5) / 0.5).reshape(B, V * 3, H, W)
        if self.extra:
            luma = torch.log((views * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 1, 3, 1, 1)).sum(2) + 1 / 64)
            x0 = torch.cat([x0, (luma - luma.mean(1, keepdim=True)) * 4], 1)
        if self.stacked:  # one pass over the 9-channel stack
            skips, latent = self.encoder(x0)
            V = 1
        else:  # each view alone, then merged
            skips, latent = self.encoder(x0.reshape(B * V, 3, H, W))
            skips = [s.reshape(B, V, *s.shape[1:]) for s in skips]
            skips = (
                [m(s.flatten(1, 2)) for m, s in zip(self.skip_merge, skips)]
                if self.skip_merge
                else [s.mean(1) for s in skips]
            )
        x = self.fusion(latent.reshape(B, V, *latent.shape[1:]))
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        if x.shape[-2:] != (H, W):
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        x = self.final(torch.cat([x, self.skip0(x0)], 1) if self.skip0 else x)
        out = {k: torch.sigmoid(head(x)) for k, head in self.heads.items() if k != "normal"}
        n = self.heads["normal"](x)
        if self.slope:
            n = torch.cat([n, torch.ones_like(n[:, :1])], 1)
        out["normal"] = n * torch.rsqrt(n.pow(2).sum(1, keepdim=True) + 1e-12)  # F.normalize, in ops int8 VGF takes
        return out


def receptive_radius(gen):
    """How far (input pixels) an output pixel can see, from the layers themselves: every k x k convolution and
    pooling of the encoder's main path adds (k - 1) / 2 steps of its stride, each decoder level one coarse pixel
    for the bilinear x2 and its three 3x3 convolutions (a gradient probe of the cpu preset reaches 345 of 370).
    Tiles that carry this much context on each side (and start on multiples of stride(gen)) give exactly the whole
    image's result, for "local" attention (global sees all)."""
    r, jump = 0, 1
    for m in gen.encoder.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            if k > 1:  # 1x1 downsample branches run beside a 3x3 of the same stride
                r += (k - 1) // 2 * jump
                jump *= s
    for _ in gen.ups:
        r += jump  # bilinear x2 reads one coarse pixel around
        jump //= 2
        r += 3 * jump  # conv + 2 convs, 3x3, at this level
    return r + (jump if jump > 1 else 0) + 1  # the last x2 (stride 2) and the final 3x3


def stride(gen):
    """The encoder's total downsampling: inputs are multiples of it, tiles start on multiples of it."""
    return 16 * gen.cfg.encoder_stride


class ExportGenerator(nn.Module):
    """The generator with tensor outputs (albedo, roughness, metallic, normal) for torch.export."""

    def __init__(self, gen):
        super().__init__()
        self.gen = gen

    def forward(self, views):
        out = self.gen(views)
        return tuple(out[k] for k in MAPS)


def stack_maps(maps):
    """dict of maps -> the (B, 8, H, W) tensor the discriminator sees (normals mapped to [0, 1] like the rest)."""
    return torch.cat([maps["albedo"], maps["roughness"], maps["metallic"], maps["normal"] * 0.5 + 0.5], 1)


class PatchGAN(nn.Module):
    """Configurable PatchGAN: 4x4/2 conv + LeakyReLU, n_layers-1 more 4x4/2 conv-BN-LReLU (ndf * min(2^n, 8)
    filters), a stride-1 4x4 conv-BN-LReLU, and a 4x4 conv to one logit per patch."""

    def __init__(self, n_layers=3, ndf=32, cin=8):
        super().__init__()
        layers = [nn.Conv2d(cin, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for n in range(1, n_layers):
            nxt = ndf * min(2**n, 8)
            layers += [nn.Conv2d(ch, nxt, 4, 2, 1, bias=False), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        nxt = ndf * min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ch, nxt, 4, 1, 1, bias=False),
            nn.BatchNorm2d(nxt),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(nxt, 1, 4, 1, 1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
