"""Prism int8: quantization-aware training (QAT) of one scale of the network, and the int8 graphs exported from it.

    python prism/train.py --qat --finetune runs/prism/ckpt/best --out runs/prism_qat        # 2x (--qat-scale)
    python prism/train.py --out runs/prism_qat --evaluate --model-path runs/prism_qat/ckpt/best  # as real int8
    python prism/export.py --model-path runs/prism_qat/ckpt/best --export-type qat_int8 --out runs/prism/export_qat

A QAT model is `ExportPrism` (one scale: color, depth, motion, state -> frame, state) captured as a PT2E graph
with Arm's int8 scheme (common/quant.py: per-channel symmetric int8 weights, per-tensor affine int8 activations,
the GRU's sigmoids at Arm's fixed SNORM scale) as fake-quant. Its parameters are the fp32 weights of that scale;
the other scale's head is not in the graph and stays as it was.

Shapes are static (common/qat.py: Arm's quantizer passes cannot keep the transformer's sizes symbolic): QAT
trains the graph of the training batch (batch_size clips of crop x crop); evaluation at another size runs a
graph captured at that size with the trained state copied in. The transformer traces to other ops where its
h/8 x w/8 grid needs padding to whole windows, or where a batch holds a single window, so train and evaluate
at sizes alike in both (the cpu preset's 64x64 crops and 128x128 frames are).

A QAT checkpoint holds both views of the model: `model.*`, the full fp32 Prism with the QAT-trained weights
(for the CPU .pte, which XNNPACK's own quantizer calibrates), and `qat.*`, the graph's state (weights, observer
ranges and fake-quant scales). meta["qat"] = {"scale", "shape"}; meta["model_type"] = "qat_int8".
"""

import torch

from common.qat import Int8Model, QATModel
from prism.model import MODELS, ExportPrism, Prism


def example_inputs(model, n, h, w):
    """Zeros of the graph's input shapes (color, depth, motion, state) at batch n and input size h x w."""
    return (
        torch.zeros(n, 3, h, w),
        torch.zeros(n, 1, h, w),
        torch.zeros(n, 2, h, w),
        model.initial_state(n, h, w),
    )


class QATPrism(QATModel):
    """One scale of a Prism under int8 fake-quant (ExportPrism's graph, trained at batch_shape = (n, h, w)),
    behind Prism's streaming interface (forward(color, depth, motion, state, scale) -> (frame, state),
    initial_state), so train.py's loop and evaluate() run it unchanged."""

    def __init__(self, model, scale, batch_shape):
        super().__init__(model, lambda m: ExportPrism(m, scale), example_inputs(model, *batch_shape))
        self.scale, self.cfg, self.batch_shape = scale, model.cfg, tuple(batch_shape)

    def initial_state(self, n, h, w, device=None):
        return self._source[0].initial_state(n, h, w, device)

    def forward(self, color, depth, motion, state, scale=None):
        if scale not in (None, self.scale):
            raise ValueError(f"this QAT model is the {self.scale}x graph; asked for {scale}x")
        return super().forward(color, depth, motion, state)


class Int8Prism(Int8Model):
    """A QATPrism converted to real int8 (what the .vgf computes), behind the same streaming interface."""

    def __init__(self, qat):
        super().__init__(qat)
        self.scale, self.cfg = qat.scale, qat.cfg

    def initial_state(self, n, h, w, device=None):
        return self.qat.initial_state(n, h, w, device)

    def forward(self, color, depth, motion, state, scale=None):
        if scale not in (None, self.scale):
            raise ValueError(f"this int8 model is the {self.scale}x graph; asked for {scale}x")
        return super().forward(color, depth, motion, state)


def load_qat(weights, meta):
    """A QAT checkpoint's (weights, meta) -> its QATPrism (training shape, trained state loaded)."""
    model = Prism(MODELS[meta["config"]["model"]])
    return QATPrism(model, meta["qat"]["scale"], meta["qat"]["shape"]).load(weights)


def one_scale(dataset, scale):
    """The sequences of `dataset` at this scale, as a dataset of the same kind (QAT trains one scale)."""
    ids = [i for i, s in zip(dataset.ids, dataset.sequences) if s["scale"] == scale]
    if not ids:
        from prism.dataset import DataError

        raise DataError(f"{dataset.root}: no {scale}x sequence in this split for QAT at --qat-scale {scale}")
    return type(dataset)(dataset.root, dataset.clip_len, dataset.crop, dataset.seed, sequences=ids)
