"""NSS int8: load a checkpoint as the network of a given model type, and the real network inputs PTQ
calibrates on. Only the autoencoder is quantized (as Arm does); pre/post-process stay fp32 shaders.

    model_type  checkpoint   network
    fp32        fp32         the AutoEncoder
    ptq_int8    fp32         int8 graph, calibrated on real pre-processed frames (common/quant.ptq)
    qat_int8    qat_int8     the QAT graph (prepare_qat, trained by train.py --qat) converted to int8 (convert)

Used by train.py (--qat, --evaluate --model-type), export.py (--export-type) and upscale.py (--model-type).
"""

import torch

from common import ckpt
from nss.dataset import DataError, list_captures, stream
from nss.model import NSS, AutoEncoder, NSSConfig

MODEL_TYPES = ("fp32", "ptq_int8", "qat_int8")


def example_input(n=2, h=16, w=16):
    return (torch.rand(n, 12, h, w),)


def image_dims(example_inputs, multiple=8, max_side=4096):
    """dynamic_shapes (torch.export's) for image inputs (N, C, H, W): any batch, H and W multiples of `multiple`."""
    from torch.export import Dim

    n = Dim("batch", min=1, max=1024)
    h, w = Dim("h_blocks", min=1, max=max_side // multiple), Dim("w_blocks", min=1, max=max_side // multiple)
    return tuple({0: n, 2: multiple * h, 3: multiple * w} for _ in example_inputs)


def qat_net(net, backend="vgf"):
    """A fake-quant copy of the AutoEncoder, any batch and any H, W multiple of 8."""
    from common.quant import prepare_qat  # torchao: seconds to import, so only where int8 is asked for

    ex = example_input()
    return prepare_qat(net.cpu(), ex, backend, dynamic_shapes=image_dims(ex))


@torch.no_grad()
def calibration_inputs(model, data, frames=16, every=2):
    """Network inputs from running the fp32 NSS (history warming up) over the captures under `data`:
    `frames` of them in all, every `every`-th frame, spread over the captures. -> list of (1, 12, h, w)."""
    files = list_captures(data)
    per_file = max(1, -(-frames // len(files)))
    inputs = []
    model.eval()
    for path in files:
        state, taken = None, 0
        for t, (f, new_seq) in enumerate(stream(path)):
            if state is None or new_seq:
                state = model.init_state(f)
            out, state = model(f, state)
            if t % every == every - 1:
                inputs.append(out["net_input"])
                taken += 1
            if taken >= per_file or len(inputs) >= frames:
                break
        if len(inputs) >= frames:
            break
    return inputs


def fp32_net(weights):
    """The AutoEncoder with a checkpoint's fp32 weights; for a QAT checkpoint, its trained weights (the
    observer/fake-quant state, `activation_post_process_*`, is left out)."""
    net = AutoEncoder(kpn_ch=weights["kpn_head.bias"].shape[0])
    net.load_state_dict({k: v for k, v in weights.items() if not k.startswith("activation_post_process_")})
    return net.eval()


def network(weights, kind, model_type=None, calibration=None, backend="vgf", source="checkpoint"):
    """Checkpoint weights of `kind` (meta's model_type) -> (network for NSS.net, model_type).
    `calibration`: network inputs for ptq_int8; `source` names the checkpoint in errors."""
    model_type = model_type or kind
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r} (have: {', '.join(MODEL_TYPES)})")
    if (kind == "qat_int8") != (model_type == "qat_int8"):
        hint = "qat_int8 needs a train.py --qat checkpoint" if model_type == "qat_int8" else "use --model-type qat_int8"
        raise ckpt.CheckpointError(f"{source}: a {kind} checkpoint cannot be used as {model_type} ({hint})")
    from common import quant

    if kind == "qat_int8":
        net = qat_net(AutoEncoder(kpn_ch=weights["kpn_head.bias"].shape[0]), backend)
        ckpt.load_into(net, weights)
        return quant.convert(net), model_type
    net = fp32_net(weights)
    if model_type == "fp32":
        return net, model_type
    if not calibration:
        raise DataError("ptq_int8 needs calibration data (real captures)")
    ex = example_input()
    return quant.ptq(net, ex, [(x,) for x in calibration], backend, dynamic_shapes=image_dims(ex)), model_type


def inference_model(
    weights, meta, model_type=None, calibration_data=None, calibration_frames=16, source="checkpoint", quality=None
):
    """The NSS model to evaluate or run from a checkpoint's weights and meta (nss/checkpoints.load): its quality
    mode, or `quality` (a high checkpoint prunes into mid/low), and its network as `model_type` (default: the
    checkpoint's); ptq_int8 calibrates on `calibration_data` as the fp32 network sees it. -> (model, model_type)."""
    from nss.checkpoints import for_quality

    weights, quality = for_quality(weights, meta, quality)
    model = NSS(NSSConfig(**{**meta.get("model", {}), "quality": quality}))
    calib = None
    if model_type == "ptq_int8":
        model.net = fp32_net(weights)
        calib = calibration_inputs(model, calibration_data, calibration_frames)
    model.net, model_type = network(weights, meta.get("model_type", "fp32"), model_type, calib, source=source)
    return model, model_type
