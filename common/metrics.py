"""Image quality metrics on tensors in [0, 1]: PSNR, SSIM (differentiable, usable as a loss), temporal PSNR,
and the angle error of normal maps."""

import torch
import torch.nn.functional as F


def psnr(pred, target, data_range=1.0):
    """Mean over the batch of per-image PSNR in dB. pred/target (N, C, H, W)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(data_range**2 / mse)).mean()


def _gaussian_window(size=11, sigma=1.5, device=None):
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred, target, data_range=1.0, size=11, sigma=1.5):
    """Mean SSIM (Wang et al. 2004, 11x11 Gaussian σ=1.5, valid region), differentiable. (N, C, H, W)."""
    pred, target = pred.float(), target.float()
    c = pred.shape[1]
    size = min(size, pred.shape[-1], pred.shape[-2])
    g = _gaussian_window(size, sigma, pred.device)
    wy = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    wx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, wy, groups=c), wx, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def temporal_psnr(pred, prev_pred, target, prev_target):
    """PSNR of frame differences (pred_t - pred_t-1 vs target_t - target_t-1); differences live in [-1, 1]."""
    return psnr(pred - prev_pred, target - prev_target, data_range=2.0)


def normal_angle_deg(pred, target):
    """Per-pixel angle in degrees between unit normal maps (N, 3, H, W) -> (N, H, W)."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=1).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))
