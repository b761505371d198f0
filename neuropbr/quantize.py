"""NeuroPBR int8: quantization-aware training (QAT) of the generator, and the int8 graphs exported from it.

    python neuropbr/train.py --qat --finetune neuropbr/weights/neuropbr --out runs/pbr_qat
    python neuropbr/train.py --evaluate --model-path runs/pbr_qat/ckpt/best --out runs/pbr_qat    # as real int8
    python neuropbr/export.py --model-path runs/pbr_qat/ckpt/best --export-type qat_int8 --out runs/pbr/export_qat

The generator's BatchNorms are folded into the convolutions before them first (their running statistics,
as in eval mode; `fold_batchnorm`), so the QAT graph is convolutions, ReLUs, the transformer and the heads:
left in, the PT2E capture keeps 35 BatchNorms unfolded after convert (the attention's softmax and the ResNet's
in-place adds stop the fold), which splits the VGF into 31 graphs, and the training-mode BatchNorm in front of
the fusion's LayerNorm drives its fake-quantized variance to a NaN at step 0. Freezing BatchNorm statistics
for QAT is the usual practice anyway.

QAT uses common/qat.py: Arm's int8 scheme (common/quant.py) as fake-quant on a static-shape graph of the
training batch (batch_size x 3 views x image_size²), evaluation at batch 1 on a graph of that shape with the
trained state. A QAT checkpoint holds `model.*` (the folded generator with the QAT-trained weights, fp32) and
`qat.*` (the graph's state); meta["model_type"] = "qat_int8", meta["qat"] = {"shape": [batch, size]}.
"""

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from common.qat import Int8Model, QATModel
from neuropbr.model import MAPS, ExportGenerator, Generator, ModelConfig


def fold_batchnorm(gen):
    """A copy of `gen` with every BatchNorm2d folded into the Conv2d before it: neighbours in an nn.Sequential,
    and a block's convN / bnN pairs (torchvision's ResNet blocks). Each BatchNorm becomes an Identity; the
    output is the eval-mode output, to float rounding."""
    gen = copy.deepcopy(gen).eval()
    for parent in list(gen.modules()):
        kids = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(kids)
            pairs = zip(names, names[1:])
        else:
            pairs = ((k, "bn" + k[4:]) for k in kids if k.startswith("conv"))
        for conv, bn in list(pairs):
            if isinstance(kids.get(conv), nn.Conv2d) and isinstance(kids.get(bn), nn.BatchNorm2d):
                setattr(parent, conv, fuse_conv_bn_eval(kids[conv], kids[bn]))
                setattr(parent, bn, nn.Identity())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in gen.modules())
    if left:
        raise RuntimeError(f"fold_batchnorm: {left} BatchNorm2d without a Conv2d before them")
    return gen


class QATGenerator(QATModel):
    """The generator, BatchNorms folded, under int8 fake-quant at batch_shape = (batch, image size); its
    forward(views) gives the generator's {map: tensor}, so train.py's loop and evaluate() run it unchanged."""

    def __init__(self, gen, batch_shape):
        n, size = batch_shape
        super().__init__(fold_batchnorm(gen), ExportGenerator, (torch.zeros(n, 3, 3, size, size),))
        self.cfg, self.batch_shape = gen.cfg, (n, size)

    def forward(self, views):
        return dict(zip(MAPS, super().forward(views)))


class Int8Generator(Int8Model):
    """A QATGenerator converted to real int8 (what the .vgf computes), with the generator's {map: tensor}."""

    def __init__(self, qat):
        super().__init__(qat)
        self.cfg = qat.cfg

    def forward(self, views):
        return dict(zip(MAPS, super().forward(views)))


def load_qat(weights, meta):
    """A QAT checkpoint's (weights, meta) -> its QATGenerator (training shape, trained state loaded)."""
    gen = Generator(ModelConfig(**meta["model"]))
    return QATGenerator(gen, meta["qat"]["shape"]).load(weights)
