"""Arm's NSS v1 training loss (`loss_v1`, class LossV1), in plain PyTorch with an optional local-file LPIPS.

Reference: public GitHub repo arm/neural-graphics-model-gym at ef328bf, file
src/ng_model_gym/core/loss/losses.py ("losses.py" below). Defaults are Arm's (losses.py:45-119); the NSS template
config (usecases/nss/configs/nss_v1_template.json:50-56) sets temporal_reg_weight 0.7, alpha_reg_weight 1e-4,
temporal_reg_channels 1, min_weight 0.1, which equal those defaults.

total = mean_t[(1 - w_t) * temporal_t + w_t * spatial_t]           t = 1..T-1, w_t on the spatial side
      + filtered_weight     * L1(out_filtered, y)                   all frames               (losses.py:204)
      + first_frame_weight  * (L1 + lpips_weight * LPIPS)(out_filtered[0], y[0])          (losses.py:334-347)
      + theta_reg_weight    * masked mean (temporal_params[:, 1:, 0] - 1)^2                (losses.py:445-469)
      + alpha_reg_weight    * masked mean (temporal_params[:, 1:, 1] - 0)^2                (losses.py:471-495)
      + temporal_reg_weight * flicker(temporal_params[:, :, :1])                           (losses.py:497-561)
      + change_pred_weight  * change_prediction(output, y)                                 (losses.py:563-659)

  temporal_t   mean of exp(alpha * |dy - dy_hat|) - 1, d = frame t minus frame t-1 backward-warped by the HR
               motion of frame t (both for the prediction and for the ground truth)     (losses.py:268-290)
  spatial_t    L1(output_t, y_t) + lpips_weight * LPIPS(output_t, y_t)                  (losses.py:292-322)
  w_t          max_weight + (min_weight - max_weight) * (1 + cos(pi * t / (T-1))) / 2: early frames of a window
               (history still young) are judged mostly on temporal stability, late ones mostly on the image
               (losses.py:324-332); T=4 -> w = 0.3, 0.7, 0.9
  mask         theta/alpha/flicker use a low-res validity mask for frames 1..T-1: disocclusion_mask < 0.01 and
               not reset, nearest-resized to the temporal-param resolution           (losses.py:349-443)
  flicker      on the first `temporal_reg_channels` channels of temporal_params: for frames (t-1, t, t+1),
               d1 = p_t - warp(p_{t-1}), d2 = p_{t+1} - warp(p_t) with the HR motion resized to the param
               resolution; where d1, d2 flip sign and both exceed 0.02, penalise min(|d1|, |d2|)^2. Mask: centre
               and next frame valid; the first triple (frames 0, 1, 2) is always masked off, so T >= 4 is needed
               for any flicker signal (losses.py:552-555)
  change_pred  charbonnier sqrt((w * (y_hat_t - a))^2 + eps^2) averaged over every earlier prediction a of
               the window, recursively warped forward to frame t; w = exp(-|y_t - a| / 0.06), detached: the
               prediction may only change where the ground truth says the warped past is wrong. Its floor is
               eps = 1e-3 even for a perfect prediction (so a perfect prediction scores 0.7e-3, not 0)

Warping is Arm's DenseWarp "bilinear_oob_zero" (core/model/dense_warp_utils.py:30-97): the frame is sampled
bilinearly at pos - mv (motion in pixels, (y, x), previous -> current), zero outside the image.

Inputs, as the recurrent model stacks them over the window (Arm: usecases/nss/model/model_v1.py:113-164, 349-356):
    outs["output"]            (N, T, 3, H, W) tonemapped prediction in [0, 1]
    outs["out_filtered"]      (N, T, 3, H, W) tonemapped spatial-only KPN result
    outs["temporal_params"]   (N, T, 4, h, w) raw sigmoid outputs (ch 0 -> theta, ch 1 -> alpha), low res
    outs["disocclusion_mask"] (N, T, 1, h, w) optional; 1 = disoccluded (only channel 0 is read)
    outs["reset"]             (N, T) bool, optional; True on a frame whose history was reset. (Arm's
                              `reset_event` holds the previous sequence id and is 0 on reset: model_v1.py:413-440.)
    y                         (N, T, 3, H, W) tonemapped ground truth
    motion                    (N, T, 2, H, W) HR motion in HR pixels (frame 0's is never used)

LPIPS is off unless the user passes weights (`--lpips-weights FILE` in the trainer): with `lpips=None` every
LPIPS term is 0 and nothing is downloaded. `load_lpips(path)` builds the AlexNet variant (Arm's default
lpips_net "alex") from one local file; see `load_lpips` for the key names and `convert_lpips` to make that file.

Example (runs as is):
    import torch
    from nss.loss import LossConfig, loss_v1
    n, t, H, W = 1, 4, 32, 32
    y = torch.rand(n, t, 3, H, W)
    outs = {"output": y.clone().requires_grad_(), "out_filtered": y.clone(),
            "temporal_params": torch.rand(n, t, 4, H // 2, W // 2), "disocclusion_mask": torch.zeros(n, t, 1, 16, 16),
            "reset": torch.tensor([[True, False, False, False]])}
    total, terms = loss_v1(outs, y, torch.zeros(n, t, 2, H, W), LossConfig())
    total.backward(); print({k: round(v.item(), 5) for k, v in terms.items()})
Or: python nss/loss.py [--lpips-weights FILE]; python nss/loss.py --convert LIN_PTH ALEXNET_PTH OUT.safetensors
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import ckpt


@dataclass
class LossConfig:
    # Field names are Arm's loss_args keys, so LossConfig(**arm_config["train"]["loss_args"]) works.
    alpha: float = 4.0  # temporal term sharpness: exp(alpha * |dy - dy_hat|) - 1
    lpips_weight: float = 0.157  # LPIPS share of the spatial term (and of the first-frame term)
    lpips_net: str = "alex"  # LPIPS trunk; only "alex" is implemented here
    filtered_weight: float = 0.1  # L1 of out_filtered vs y over all frames (keeps the KPN anti-aliasing)
    min_weight: float = 0.1  # spatial weight w_t at the start of the cosine ramp (t -> 0)
    max_weight: float = 0.9  # spatial weight w_t at the last frame (t = T-1)
    theta_reg_weight: float = 0.02  # pull the history-trust parameter towards its target
    theta_reg_channel: int = 0  # temporal_params channel of theta (raw, before the sharpening)
    theta_reg_target: float = 1.0  # target of theta: trust the history
    alpha_reg_weight: float = 1e-4  # pull the accumulation parameter towards its target
    alpha_reg_channel: int = 1  # temporal_params channel of alpha
    alpha_reg_target: float = 0.0  # target of alpha: blend in as little of the current frame as possible
    temporal_reg_weight: float = 0.7  # flicker penalty on the temporal params
    temporal_reg_channels: int = 1  # how many leading temporal_params channels the flicker penalty sees
    flicker_threshold: float = 0.02  # both frame-to-frame changes must exceed this to count as a flip
    change_pred_weight: float = 0.7  # change-prediction (temporal consistency) penalty
    change_pred_sigma: float = 0.06  # w = exp(-|y_t - warped past| / sigma)
    change_pred_eps: float = 1e-3  # charbonnier epsilon (also the penalty's floor)
    change_pred_use_mask: bool = False  # also weight by (1 - disocclusion_mask) resized to high res
    change_pred_detach_w: bool = True  # no gradient through the weight w (it comes from the prediction too)
    change_pred_timesteps: int = 0  # frames used by the change-prediction penalty; 0 = the whole window
    first_frame_weight: float = 0.5  # (L1 + lpips_weight * LPIPS) of out_filtered[0] vs y[0]
    temporal_disocclusion_threshold: float = 0.01  # a low-res pixel is valid where disocclusion_mask < this
    temporal_mask_min_coverage: float = 0.5  # read but unused by Arm's LossV1 at ef328bf (config parity)
    temporal_mask_interp: str = "nearest"  # resize mode of the mask when its size differs from the params
    temporal_mask_use_abs_diff: bool = False  # read but unused by Arm's LossV1 at ef328bf (config parity)


# ----------------------------------------------------------------------------------------------------------
# helpers


def backward_warp(img, mv):
    """img (B, C, h, w) sampled at pos - mv, mv (B, 2, h, w) in pixels of img, (y, x); bilinear, zero outside."""
    h, w = img.shape[-2:]
    ys = torch.arange(h, device=img.device, dtype=img.dtype).view(1, h, 1) + 0.5  # pixel centres
    xs = torch.arange(w, device=img.device, dtype=img.dtype).view(1, 1, w) + 0.5
    py = ys - mv[:, 0].to(img.dtype)
    px = xs - mv[:, 1].to(img.dtype)
    grid = torch.stack([px / w * 2 - 1, py / h * 2 - 1], -1)  # (B, h, w, 2), (x, y)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def time_weights(t, cfg):
    """Spatial-vs-temporal weights w_t for t = 1..T-1 -> (T-1,) (losses.py:324-332)."""
    s = torch.arange(1, t, dtype=torch.float64) / (t - 1)
    w = cfg.max_weight + (cfg.min_weight - cfg.max_weight) * (1 + torch.cos(math.pi * s)) / 2
    return w.float()


def _resize(x, size, mode):
    """(B, C, h', w') -> (B, C, *size); nearest when the target has a 1-pixel side, as Arm does."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = "nearest" if min(size) <= 1 else mode
    return F.interpolate(x, size=size, mode=mode)


def valid_mask(outs, n, t, size, cfg, device):
    """Validity of frames 1..T-1 at the temporal-param resolution -> (N, T-1, 1, h, w) in {0, 1}
    (losses.py:349-443): not disoccluded (mask < threshold) and history not reset."""
    mask = torch.ones(n * (t - 1), 1, *size, device=device)
    disocc = outs.get("disocclusion_mask")
    if disocc is not None:
        if disocc.ndim == 4:  # (N, T, h, w) -> (N, T, 1, h, w)
            disocc = disocc.unsqueeze(2)
        if disocc.shape[:2] != (n, t):
            raise ValueError(f"disocclusion_mask must be (N={n}, T={t}, 1, h, w), got {tuple(disocc.shape)}")
        m = (disocc[:, 1:, :1].reshape(-1, 1, *disocc.shape[-2:]) < cfg.temporal_disocclusion_threshold).float()
        mask = _resize(m.to(device), size, cfg.temporal_mask_interp)
    reset = outs.get("reset")
    if reset is not None:
        if tuple(reset.shape) != (n, t):
            raise ValueError(f"reset must be (N={n}, T={t}) bool, got {tuple(reset.shape)}")
        keep = (~reset[:, 1:].bool()).float().reshape(-1, 1, 1, 1).to(device)
        mask = mask * keep
    return mask.view(n, t - 1, 1, *size)


def _masked_mean(x, mask, eps=1e-6):
    return (x * mask).sum() / mask.sum().clamp_min(eps)


# ----------------------------------------------------------------------------------------------------------
# the terms


def temporal_term(pred, y, motion, alpha):
    """exp(alpha * |dy - dy_hat|) - 1 per step -> (T-1,) (losses.py:268-290); d = frame t - warp(frame t-1)."""
    n, t, c, h, w = pred.shape
    mv = motion[:, 1:].reshape(-1, 2, h, w)
    d_pred = pred[:, 1:].reshape(-1, c, h, w) - backward_warp(pred[:, :-1].reshape(-1, c, h, w), mv)
    d_true = y[:, 1:].reshape(-1, c, h, w) - backward_warp(y[:, :-1].reshape(-1, c, h, w), mv)
    err = torch.exp(alpha * (d_true - d_pred).abs()) - 1
    return err.view(n, t - 1, c, h, w).mean((0, 2, 3, 4))


def flicker_term(params, motion, mask, cfg):
    """Sign-flip penalty on the first cfg.temporal_reg_channels temporal params (losses.py:497-561).
    params (N, T, C, h, w), motion (N, T, 2, H, W) HR px, mask (N, T-1, 1, h, w) for frames 1..T-1."""
    n, t, c, h, w = params.shape
    ch = min(cfg.temporal_reg_channels, c)
    if t <= 2 or ch <= 0:
        return params.new_zeros(())
    H, W = motion.shape[-2:]
    # HR motion -> param resolution, in param pixels. Arm multiplies by a constant 0.5 (its 2x scale); the
    # per-axis size ratio is the same number at 2x and stays right at other scales.
    flow = F.interpolate(motion.reshape(-1, 2, H, W).float(), size=(h, w), mode="bilinear", align_corners=False)
    flow = flow * torch.tensor([h / H, w / W], device=flow.device).view(1, 2, 1, 1)
    flow = flow.view(n, t, 2, h, w)
    p = params[:, :, :ch]
    prev, cur, nxt = (p[:, a : t - 2 + a].reshape(-1, ch, h, w) for a in range(3))  # frames (k, k+1, k+2)
    d1 = cur - backward_warp(prev, flow[:, 1:-1].reshape(-1, 2, h, w))
    d2 = nxt - backward_warp(cur, flow[:, 2:].reshape(-1, 2, h, w))
    thr = cfg.flicker_threshold
    flip = (d1 * d2 < 0) & (d1.abs() > thr) & (d2.abs() > thr)
    flicker = torch.minimum(d1.abs(), d2.abs()) * flip
    # centre and next frame must both be valid; Arm also always drops the first triple (frames 0, 1, 2),
    # presumably because its first change, frame 0 -> 1, follows the reset that starts every window.
    centre = mask[:, 1:] * mask[:, :-1]  # (N, T-2, 1, h, w)
    centre = torch.cat([torch.zeros_like(centre[:, :1]), centre[:, 1:]], 1).reshape(-1, 1, h, w)
    return (flicker.pow(2) * centre).sum() / (centre.sum() * ch).clamp_min(1e-6)


def change_pred_term(pred, y, motion, cfg, disocc=None):
    """Charbonnier of the change against every earlier prediction warped to frame t, weighted by how wrong the
    ground truth says that warped past is (losses.py:563-659). pred, y (N, T, C, H, W), motion (N, T, 2, H, W)."""
    n, t, c, h, w = pred.shape
    steps = t if cfg.change_pred_timesteps <= 0 else min(cfg.change_pred_timesteps, t)
    if steps <= 1:
        return pred.new_zeros(())
    valid = None
    if cfg.change_pred_use_mask and disocc is not None:  # soft 1 - disocclusion, at high res
        d = disocc if disocc.ndim == 5 else disocc.unsqueeze(2)
        d = d[:, :steps, :1]
        d = F.interpolate(d.reshape(-1, 1, *d.shape[-2:]), size=(h, w), mode="nearest")
        valid = 1 - d.view(n, steps, 1, h, w)
    total, count, past = pred.new_zeros(()), 0, []
    for s in range(1, steps):
        mv = motion[:, s]
        past = [backward_warp(a, mv) for a in past]  # older predictions, one more hop each
        past.append(backward_warp(pred[:, s - 1], mv))
        for a in past:
            wgt = torch.exp(-(y[:, s] - a).abs() / cfg.change_pred_sigma)
            if cfg.change_pred_detach_w:
                wgt = wgt.detach()
            if valid is not None:
                wgt = wgt * valid[:, s]
            total = total + torch.sqrt((wgt * (pred[:, s] - a)).pow(2) + cfg.change_pred_eps**2).mean()
            count += 1
    return total / count


# ----------------------------------------------------------------------------------------------------------
# the loss


def loss_v1(outs, y, motion, cfg=None, lpips=None):
    """Arm's NSS v1 loss -> (total, terms). terms holds each term unweighted (detached, for logging) plus
    "spatial_temporal" (the w_t blend) and "total". See the module docstring for the inputs."""
    cfg = cfg or LossConfig()
    pred, filt, params = outs["output"], outs["out_filtered"], outs["temporal_params"]
    if pred.ndim != 5 or pred.shape[1] < 2:
        raise ValueError(f"output must be (N, T>1, C, H, W), got {tuple(pred.shape)}")
    n, t, c, h, w = pred.shape
    if y.shape != pred.shape or filt.shape != pred.shape:
        raise ValueError(
            f"y {tuple(y.shape)} and out_filtered {tuple(filt.shape)} must match output {tuple(pred.shape)}"
        )
    if tuple(motion.shape) != (n, t, 2, h, w):
        raise ValueError(f"motion must be (N, T, 2, H, W) = {(n, t, 2, h, w)} (high res), got {tuple(motion.shape)}")
    if params.ndim != 5 or params.shape[:2] != (n, t):
        raise ValueError(f"temporal_params must be (N={n}, T={t}, C, h, w), got {tuple(params.shape)}")
    use_lpips = lpips is not None and cfg.lpips_weight != 0
    zero = pred.new_zeros(())

    # spatial <-> temporal blend over frames 1..T-1
    temporal = temporal_term(pred, y, motion, cfg.alpha)  # (T-1,)
    l1 = (pred[:, 1:] - y[:, 1:]).abs().mean((0, 2, 3, 4))  # (T-1,)
    if use_lpips:  # (N*(T-1),) -> (T-1,)
        lp = lpips(pred[:, 1:].reshape(-1, c, h, w), y[:, 1:].reshape(-1, c, h, w)).view(n, t - 1).mean(0)
    else:
        lp = torch.zeros_like(l1)
    wt = time_weights(t, cfg).to(pred.device)
    spatial_temporal = ((1 - wt) * temporal + wt * (l1 + cfg.lpips_weight * lp)).mean()

    filtered = (filt - y).abs().mean()
    first_lp = lpips(filt[:, 0], y[:, 0]).mean() if use_lpips else zero
    first_frame = (filt[:, 0] - y[:, 0]).abs().mean() + cfg.lpips_weight * first_lp

    # regularisers on the low-res temporal params, frames 1..T-1, valid pixels only
    size = tuple(params.shape[-2:])
    mask = valid_mask(outs, n, t, size, cfg, params.device)
    theta_reg = alpha_reg = flicker = change = zero
    if cfg.theta_reg_weight > 0 and 0 <= cfg.theta_reg_channel < params.shape[2]:
        k = cfg.theta_reg_channel
        theta_reg = _masked_mean((params[:, 1:, k : k + 1] - cfg.theta_reg_target).pow(2), mask)
    if cfg.alpha_reg_weight > 0 and 0 <= cfg.alpha_reg_channel < params.shape[2]:
        k = cfg.alpha_reg_channel
        alpha_reg = _masked_mean((params[:, 1:, k : k + 1] - cfg.alpha_reg_target).pow(2), mask)
    if cfg.temporal_reg_weight > 0:
        flicker = flicker_term(params, motion, mask, cfg)
    if cfg.change_pred_weight > 0:
        change = change_pred_term(pred, y, motion, cfg, outs.get("disocclusion_mask"))

    total = (
        spatial_temporal
        + cfg.filtered_weight * filtered
        + cfg.first_frame_weight * first_frame
        + cfg.theta_reg_weight * theta_reg
        + cfg.alpha_reg_weight * alpha_reg
        + cfg.temporal_reg_weight * flicker
        + cfg.change_pred_weight * change
    )
    terms = {
        "temporal": temporal.mean(),
        "spatial_l1": l1.mean(),
        "lpips": lp.mean(),
        "spatial_temporal": spatial_temporal,
        "filtered": filtered,
        "first_frame": first_frame,
        "theta_reg": theta_reg,
        "alpha_reg": alpha_reg,
        "flicker": flicker,
        "change_pred": change,
        "total": total,
    }
    return total, {k: v.detach() for k, v in terms.items()}


# ----------------------------------------------------------------------------------------------------------
# LPIPS (AlexNet, v0.1), from a local file only


class LPIPS(nn.Module):
    """LPIPS distance of the `lpips` package (net="alex", version 0.1, spatial=False), inputs in [0, 1]
    (its normalize=True). Frozen; images need >= 32 px per side. forward(a, b): (B, 3, H, W) x2 -> (B,)."""

    channels = (64, 192, 384, 256, 256)  # channels of relu1..relu5
    taps = (1, 4, 7, 9, 11)  # indices of those ReLUs in torchvision's alexnet().features

    def __init__(self):
        super().__init__()
        from torchvision.models import alexnet

        self.features = alexnet(weights=None).features[:12]  # conv1 .. relu5 (keys features.0-11)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in self.channels)
        # lpips' ScalingLayer: ImageNet-ish statistics of [-1, 1] inputs
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, a, b):
        x = torch.cat([a, b]) * 2 - 1  # [0, 1] -> [-1, 1]
        x = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        dist = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                fa, fb = x.chunk(2)
                fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit length over channels
                fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                lin = self.lins[self.taps.index(i)]
                dist = dist + lin((fa - fb).pow(2)).mean((2, 3))  # (B, 1)
        return dist.flatten()


def _canonical(sd):
    """Key names of the `lpips` package (a saved lpips.LPIPS state_dict, or its weights/v0.1/alex.pth) ->
    ours; our own names pass through."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith("scaling_layer."):
            continue  # constants, fixed here
        if parts[0] == "net" and parts[1].startswith("slice"):  # net.slice2.3.weight -> features.3.weight
            k = ".".join(["features"] + parts[2:])
        elif parts[0].startswith("lin") and parts[0][3:].isdigit():  # lin2.model.1.weight -> lins.2.weight
            k = f"lins.{parts[0][3:]}.{parts[-1]}"
        elif parts[0] == "lins" and "model" in parts:  # its ModuleList alias lins.2.model.1.weight
            k = f"lins.{parts[1]}.{parts[-1]}"
        out[k] = v
    return out


def load_lpips(path, device="cpu"):
    """LPIPS (AlexNet) from ONE local file: a .safetensors or a weights-only torch .pth state dict with
        features.{0,3,6,8,10}.{weight,bias}   torchvision alexnet().features conv weights (ImageNet-trained)
        lins.{0..4}.weight                    the LPIPS linear layers, shapes (1, C, 1, 1), C = 64,192,384,256,256
    The `lpips` package's names are accepted too: net.sliceK.I.*, linK.model.1.weight, lins.K.model.1.weight (so
    torch.save(lpips.LPIPS(net="alex").state_dict(), "lpips_alex.pth") works as is). To build the file from
    the lpips package's weights/v0.1/alex.pth (lin layers only) and torchvision's ImageNet AlexNet checkpoint
    (alexnet-owt-7be5be79.pth), on a machine that has them: python nss/loss.py --convert alex.pth \\
    alexnet-owt-7be5be79.pth lpips_alex.safetensors (see convert_lpips). Nothing is ever downloaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights file not found: {path}")
    try:
        sd = ckpt.read_state_dict(path)
    except ckpt.CheckpointError as e:
        raise ValueError(
            f"cannot read LPIPS weights {path}: expected a .safetensors file or a weights-only torch state dict ({e})"
        ) from None
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"LPIPS weights {path}: expected a flat dict of tensors")
    net = LPIPS()
    sd = _canonical(sd)
    want = net.state_dict()
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    bad = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in want.items() if k in sd and sd[k].shape != v.shape
    ]
    if missing or extra or bad:
        raise ValueError(
            f"LPIPS weights {path} do not match AlexNet-LPIPS: missing {missing}, unexpected {extra}, "
            f"wrong shapes {bad}"
        )
    net.load_state_dict(sd)
    return net.to(device)


def convert_lpips(lin_path, alexnet_path, out_path):
    """Merge the lpips package's alex.pth (lin0..lin4) and a torchvision AlexNet state dict (features.* [and
    classifier.*, dropped]) into one safetensors file for load_lpips."""
    from safetensors.torch import save_file

    lin = torch.load(lin_path, map_location="cpu", weights_only=True)
    alex = torch.load(alexnet_path, map_location="cpu", weights_only=True)
    sd = {k: v for k, v in _canonical(lin).items() if k.startswith("lins.")}
    sd.update({k: v for k, v in alex.items() if k.startswith("features.")})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_path))
    load_lpips(out_path)  # fail now, not at training time
    return out_path


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="NSS v1 loss demo / LPIPS weight conversion")
    ap.add_argument("--lpips-weights", help="LPIPS file for load_lpips (default: LPIPS terms off)")
    ap.add_argument("--convert", nargs=3, metavar=("LIN_PTH", "ALEXNET_PTH", "OUT"), help="write an LPIPS file")
    args = ap.parse_args()
    if args.convert:
        print("wrote", convert_lpips(*args.convert))
    else:
        torch.manual_seed(0)
        n, t, H, W = 1, 4, 64, 64
        y = torch.rand(n, t, 3, H, W)
        outs = {
            "output": (y + 0.05 * torch.randn_like(y)).clamp(0, 1).requires_grad_(),
            "out_filtered": (y + 0.1 * torch.randn_like(y)).clamp(0, 1),
            "temporal_params": torch.rand(n, t, 4, H // 2, W // 2, requires_grad=True),
            "disocclusion_mask": torch.zeros(n, t, 1, H // 2, W // 2),
            "reset": torch.zeros(n, t, dtype=torch.bool),
        }
        lp = load_lpips(args.lpips_weights) if args.lpips_weights else None
        total, terms = loss_v1(outs, y, torch.zeros(n, t, 2, H, W), LossConfig(), lpips=lp)
        total.backward()
        print({k: round(v.item(), 5) for k, v in terms.items()})
