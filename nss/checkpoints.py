"""NSS weights in and out: the project's checkpoint directories and Arm's Model Gym `.pt` checkpoints.

Every NSS command that takes a checkpoint (train.py --evaluate/--finetune, export.py, upscale.py) reads it with
`load`, which accepts either
  - a checkpoint directory of this project (model.safetensors + meta.json, see common/ckpt.py), or
  - an Arm Model Gym checkpoint file (`*.pt`, e.g. Hugging Face Arm/neural-super-sampling `nss_v1_high_fp32.pt`):
    `{"epoch", "model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict"}` as Model Gym's trainer
    saves it (core/trainer/trainer.py:497-505 of arm/neural-graphics-model-gym at ef328bf), read with
    `torch.load(weights_only=True)` (anything but tensors and plain containers is refused, never run) and mapped
    strictly onto nss/model.py's AutoEncoder.

Arm's keys (`usecases/nss/model/model_blocks_v1.py`): the 14 convs of AutoEncoderV1 in forward order are
`autoencoder.conv2d_0` .. `conv2d_11`, `autoencoder.kpn_params` (the KPN head, after conv2d_8) and
`autoencoder.temporal_params_out_conv` (the temporal head), each `<name>.conv2d.{weight,bias}`; ARM_NAMES below
pairs them with this project's module names. A 16-channel KPN head is a mid/low checkpoint; a 36-channel (high)
one loads into mid/low by pruning (nss/model.py prune_kpn), as Arm does.

Arm's QAT int8 checkpoints (`nss_v1_high_int8.pt`, `nss_v1_mid_low_int8.pt`) hold a traced graph's
`autoencoder._param_constantN` tensors and observers numbered by graph order, not by module: they are refused
with a message (use Arm's fp32 checkpoint and this project's `train.py --qat`).

    python nss/export.py --model-path nss_v1_high_fp32.pt --out runs/arm/export         # Arm's weights in
    python nss/export.py --model-path runs/nss/ckpt/best --arm-checkpoint runs/nss.pt   # Arm's layout out
"""

from pathlib import Path

import torch

from common import ckpt
from nss.model import prune_kpn

# the shipped weights (their README is the model card): the default of every command that takes a checkpoint
SHIPPED = Path(__file__).resolve().parent / "weights" / "nss_v1_high"

# (this project's module, Arm's module) in AutoEncoderV1's forward order
ARM_NAMES = [
    ("e0.0", "conv2d_0"),
    ("e0.2", "conv2d_1"),
    ("e1.0", "conv2d_2"),
    ("e1.2", "conv2d_3"),
    ("e2.0", "conv2d_4"),
    ("e2.2", "conv2d_5"),
    ("bottleneck.0", "conv2d_6"),
    ("up2.0", "conv2d_7"),
    ("d2.0", "conv2d_8"),
    ("kpn_head", "kpn_params"),
    ("up1.0", "conv2d_9"),
    ("d1.0", "conv2d_10"),
    ("d1.2", "conv2d_11"),
    ("temporal_head", "temporal_params_out_conv"),
]
TO_ARM = {f"{ours}.{p}": f"autoencoder.{arm}.conv2d.{p}" for ours, arm in ARM_NAMES for p in ("weight", "bias")}
FROM_ARM = {v: k for k, v in TO_ARM.items()}


def is_arm_checkpoint(path):
    """A file (Arm's `.pt`) rather than one of this project's checkpoint directories."""
    return Path(path).is_file()


def _names(keys, n=4):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def from_arm(state_dict, source="checkpoint"):
    """Arm's `model_state_dict` -> this project's AutoEncoder state dict (fp32). Strict: every one of Arm's 28
    keys, nothing else. Raises CheckpointError naming missing or unexpected keys."""
    if any("_param_constant" in k for k in state_dict):
        raise ckpt.CheckpointError(
            f"{source}: an Arm QAT int8 checkpoint (traced '_param_constantN' tensors, named by "
            f"graph order): not supported; load Arm's fp32 checkpoint (nss_v1_high_fp32.pt) "
            f"and quantize with train.py --qat or --model-type ptq_int8"
        )
    missing, unexpected = set(FROM_ARM) - set(state_dict), set(state_dict) - set(FROM_ARM)
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + (
            [f"unexpected {_names(unexpected)}"] if unexpected else []
        )
        raise ckpt.CheckpointError(f"{source}: not Arm's NSS v1 layout: {'; '.join(parts)}")
    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ckpt.CheckpointError(f"{source}: '{k}' is not a float tensor")
        if not torch.isfinite(v).all():
            raise ckpt.CheckpointError(f"{source}: '{k}' has NaN or inf values")
        out[FROM_ARM[k]] = v.detach().float().contiguous()
    return out


def to_arm(weights):
    """This project's AutoEncoder state dict -> Arm's `model_state_dict` (fp32)."""
    unknown = set(weights) - set(TO_ARM)
    if unknown:
        raise ckpt.CheckpointError(f"not an fp32 NSS AutoEncoder state dict: unexpected {_names(unknown)}")
    return {TO_ARM[k]: v.detach().float().cpu().contiguous() for k, v in weights.items()}


def read_arm(path):
    """Arm's `.pt` file -> (weights, meta) like `load`. meta says model_type fp32 and the KPN's quality."""
    sd = ckpt.read_state_dict(path)
    if "model_state_dict" in sd:
        sd = sd["model_state_dict"]
    if not isinstance(sd, dict):
        raise ckpt.CheckpointError(
            f"{path}: 'model_state_dict' holds a {type(sd).__name__}, expected a dict of tensors"
        )
    weights = from_arm(sd, source=str(path))
    kpn = weights["kpn_head.bias"].numel()
    if kpn not in (16, 36):
        raise ckpt.CheckpointError(f"{path}: KPN head has {kpn} channels, NSS v1 has 36 (high) or 16 (mid/low)")
    return weights, {
        "step": 0,
        "model_type": "fp32",
        "model": {"quality": "high" if kpn == 36 else "mid"},
        "source": f"Arm Model Gym checkpoint {Path(path).name}",
    }


def write_arm(path, weights, epoch=0):
    """Write `weights` as a Model Gym checkpoint file that Model Gym's `--finetune` (and its evaluate/export,
    which read `["model_state_dict"]` strictly) accept. No optimizer or scheduler state: a fresh start there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(
        {
            "epoch": int(epoch),
            "model_state_dict": to_arm(weights),
            "optimizer_state_dict": {},
            "lr_scheduler_state_dict": {},
        },
        tmp,
    )
    tmp.replace(path)
    return path


def load(path):
    """Weights and meta of an NSS checkpoint: a project checkpoint directory or an Arm `.pt` file.
    -> (weights dict, meta dict); raises CheckpointError with a one-line message naming the file."""
    if is_arm_checkpoint(path):
        return read_arm(path)
    weights, _, meta = ckpt.load(path, with_state=False)
    return weights, meta


def for_quality(weights, meta, quality=None):
    """Weights and NSS quality mode to build the model with: `quality` None keeps the checkpoint's; mid/low from
    a 36-channel (high) checkpoint prunes its KPN head as Arm does. -> (weights, quality)."""
    have = meta.get("model", {}).get("quality", "high")
    quality = quality or have
    kpn = weights["kpn_head.bias"].numel() if "kpn_head.bias" in weights else None
    if quality != "high" and kpn == 36:
        if meta.get("model_type", "fp32") != "fp32":
            raise ckpt.CheckpointError(
                f"a {meta['model_type']} high-quality checkpoint cannot be pruned to {quality}: "
                f"prune its fp32 weights, then quantize"
            )
        return prune_kpn(weights), quality
    if quality == "high" and kpn == 16:
        raise ckpt.CheckpointError(
            f"a {have}-quality checkpoint (16-channel KPN) cannot run as high quality: use --quality mid or low"
        )
    return weights, quality
