"""NeuroPBR generator and discriminator: three rendered views of a material -> albedo, roughness, metallic and
normal maps (the structure of MultiViewPBRGenerator in josephHelfenbein/NeuroPBR's training/train.py).

    views (B, 3 views, 3, H, W) in [0, 1]
      -> shared torchvision ResNet encoder per view (random init; --init loads local weights)
      -> skips [stem, layer1, layer2, layer3] averaged over the views; latent = layer4 of each view
      -> transformer fusion over the tokens of all three views (B, 3*h*w, C), then per location the three view
         tokens are concatenated -> Linear(3C -> C) -> LayerNorm
      -> U-Net decoder (bilinear x2, conv-BN-ReLU, concat skip, 2x conv-BN-ReLU per level)
      -> four 1x1 heads: albedo (3, sigmoid), roughness (1, sigmoid), metallic (1, sigmoid), normal (3, unit length)

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
    encoder: str = "resnet18"        # resnet18 | resnet34 | resnet50 | resnet101
    encoder_stride: int = 1          # conv1 stride: 1 = latent at H/16 (reference default), 2 = H/32, cheaper
    use_transformer: bool = True     # False: fuse the views by concat + 1x1 conv
    transformer_dim: int = 256
    transformer_depth: int = 2
    transformer_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    decoder_min_ch: int = 32         # decoder width floor (reference: 64)


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """A torchvision ResNet cut into [stem, layer1, layer2, layer3] skips and the layer4 latent."""

    def __init__(self, name, stride=1):
        super().__init__()
        if name not in ("resnet18", "resnet34", "resnet50", "resnet101"):
            raise ValueError(f"unknown encoder {name!r} (resnet18 | resnet34 | resnet50 | resnet101)")
        r = getattr(torchvision.models, name)(weights=None)
        r.conv1.stride = (stride, stride)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu)
        self.pool, self.layer1, self.layer2, self.layer3, self.layer4 = r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4
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
        self.use_transformer = cfg.use_transformer
        if cfg.use_transformer:
            self.blocks = nn.Sequential(*[Block(dim, cfg.transformer_heads, cfg.mlp_ratio, cfg.dropout)
                                          for _ in range(cfg.transformer_depth)])
            self.merge, self.norm = nn.Linear(views * dim, dim), nn.LayerNorm(dim)
        else:
            self.merge_conv = nn.Conv2d(views * dim, dim, 1)

    def forward(self, z):
        B, V = z.shape[:2]
        z = self.inp(z.flatten(0, 1))                                   # (B*V, C, h, w)
        C, h, w = z.shape[1:]
        if not self.use_transformer:
            return self.merge_conv(z.reshape(B, V * C, h, w))
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
        self.encoder = Encoder(cfg.encoder, cfg.encoder_stride)
        self.fusion = Fusion(self.encoder.latent_channels, cfg)
        ups, cin = [], cfg.transformer_dim
        for cskip in reversed(self.encoder.skip_channels):
            cout = max(cskip // 2, cfg.decoder_min_ch)
            ups.append(Up(cin, cskip, cout))
            cin = cout
        self.ups = nn.ModuleList(ups)
        self.final = conv_bn_relu(cin, cin)   # at input resolution (after a last x2 when conv1 has stride 2)
        self.heads = nn.ModuleDict({k: nn.Conv2d(cin, c, 1) for k, c in MAPS.items()})

    def forward(self, views):
        """views (B, 3, 3, H, W) in [0, 1], H and W multiples of 16 (32 with encoder_stride 2) -> dict of maps."""
        B, V, _, H, W = views.shape
        skips, latent = self.encoder(((views - 0.5) / 0.5).flatten(0, 1))
        skips = [s.reshape(B, V, *s.shape[1:]).mean(1) for s in skips]      # view-averaged skips
        x = self.fusion(latent.reshape(B, V, *latent.shape[1:]))
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        if x.shape[-2:] != (H, W):
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        x = self.final(x)
        out = {k: torch.sigmoid(head(x)) for k, head in self.heads.items() if k != "normal"}
        n = self.heads["normal"](x)
        out["normal"] = n * torch.rsqrt(n.pow(2).sum(1, keepdim=True) + 1e-12)   # F.normalize, in ops int8 VGF takes
        return out


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
            nxt = ndf * min(2 ** n, 8)
            layers += [nn.Conv2d(ch, nxt, 4, 2, 1, bias=False), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        nxt = ndf * min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ch, nxt, 4, 1, 1, bias=False), nn.BatchNorm2d(nxt), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(nxt, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
