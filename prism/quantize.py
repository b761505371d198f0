"""Prism int8: quantization-aware training (QAT) of one scale of the network, and the int8 graphs exported from it.

    python prism/train.py --qat --finetune runs/prism/ckpt/best --out runs/prism_qat        # 2x (--qat-scale)
    python prism/train.py --out runs/prism_qat --evaluate --model-path runs/prism_qat/ckpt/best  # as real int8
    python prism/export.py --model-path runs/prism_qat/ckpt/best --export-type qat_int8 --out runs/prism/export_qat

A QAT model is `ExportPrism` (one scale: color, depth, motion, state -> frame, state) captured as a PT2E graph
with Arm's int8 scheme (common/quant.py: per-channel symmetric int8 weights, per-tensor affine int8 activations,
the GRU's sigmoids at Arm's fixed SNORM scale) as fake-quant. Its parameters are the fp32 weights of that scale;
the other scale's head is not in the graph and stays as it was.

Shapes are static: Arm's quantizer passes (the LayerNorm decomposition of the transformer blocks) write the
sizes of a dynamic graph as symbols that the graph no longer defines, so a graph holds one (batch, h, w). QAT
trains the graph of the training batch (batch_size x crop x crop); evaluation at another size runs a graph
captured at that size with the same trained state, copied over (the graphs are the same ops at other sizes,
so their state_dict keys match one to one).

A QAT checkpoint holds both views of the model: `model.*`, the full fp32 Prism with the QAT-trained weights
(for the CPU .pte, which XNNPACK's own quantizer calibrates), and `qat.*`, the graph's state (weights, observer
ranges and fake-quant scales). meta["qat"] = {"scale", "shape"}; meta["model_type"] = "qat_int8".
"""

import copy

import torch
import torch.nn as nn

from prism.model import MODELS, ExportPrism, Prism


def example_inputs(model, n, h, w):
    """Zeros of the graph's input shapes (color, depth, motion, state) at batch n and input size h x w."""
    return (
        torch.zeros(n, 3, h, w),
        torch.zeros(n, 1, h, w),
        torch.zeros(n, 2, h, w),
        model.initial_state(n, h, w),
    )


def capture_qat(model, scale, shape):
    """ExportPrism(model, scale) as a PT2E fake-quant graph at shape (n, h, w) -> (graph, {graph param: Prism
    param}). The capture renames parameters (`_param_constant7`); the map is found by capturing a copy whose
    parameter i is filled with the value i + 1, then the real values are copied in."""
    from common import quant  # torchao: seconds to import, so only where int8 is asked for

    marked = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for i, p in enumerate(marked.parameters()):
            p.fill_(i + 1)
    graph = quant.prepare_qat(ExportPrism(marked, scale), example_inputs(model, *shape), "vgf")
    index = {i + 1: name for i, (name, _) in enumerate(model.named_parameters())}
    names, source = {}, dict(model.named_parameters())
    with torch.no_grad():
        for gname, gp in graph.named_parameters():
            mark = gp.flatten()[0].item()
            mname = index.get(int(mark)) if mark == int(mark) else None
            if mname is None or not torch.all(gp == mark) or gp.shape != source[mname].shape:
                raise RuntimeError(f"QAT capture: graph parameter {gname} matches no Prism parameter")
            names[gname] = mname
            gp.copy_(source[mname].detach().cpu())
    return graph, names


class QATPrism(nn.Module):
    """One scale of a Prism under int8 fake-quant, behind Prism's streaming interface (forward(color, depth,
    motion, state, scale) -> (frame, state), initial_state): train.py's loop and evaluate() run it unchanged.
    `graph` (the training shape) is what trains; other shapes get their own graph, synced on each eval()."""

    def __init__(self, model, scale, shape):
        super().__init__()
        self.scale, self.shape, self.cfg = scale, tuple(shape), model.cfg
        self.graph, self.names = capture_qat(model, scale, self.shape)
        self._fp32 = [copy.deepcopy(model).cpu()]  # a list: not a sub-module (not trained, not in state_dict)
        self._others, self._stale = {}, True

    def initial_state(self, n, h, w, device=None):
        return self._fp32[0].initial_state(n, h, w, device)

    def train(self, mode=True):
        self._stale = True  # the trained graph moves on: copies at other shapes reload before their next use
        return super().train(mode)

    def graph_at(self, n, h, w):
        """The fake-quant graph at batch n, input h x w, holding the trained state."""
        if (n, h, w) == self.shape:
            return self.graph
        if (n, h, w) not in self._others:
            self._others[(n, h, w)] = capture_qat(self._fp32[0], self.scale, (n, h, w))[0]
            self._stale = True
        if self._stale:
            for size, g in self._others.items():
                try:
                    g.load_state_dict(self.graph.state_dict())
                except RuntimeError:
                    raise ValueError(self._mismatch(size)) from None
                g.train(self.training)
            self._stale = False
        return self._others[(n, h, w)].to(next(self.graph.parameters()).device)

    def _mismatch(self, size):
        return (
            f"the QAT graph at {'x'.join(map(str, size))} (batch x h x w) has other ops than the trained one at "
            f"{'x'.join(map(str, self.shape))}: the transformer traces differently where h/8 or w/8 is not a "
            f"multiple of its window (padding) and where a batch holds a single window; train (--crop, "
            "--batch-size) and evaluate at sizes alike in both"
        )

    def forward(self, color, depth, motion, state, scale=None):
        if scale not in (None, self.scale):
            raise ValueError(f"this QAT model is the {self.scale}x graph; asked for {scale}x")
        return tuple(self.graph_at(color.shape[0], *color.shape[-2:])(color, depth, motion, state))

    def fp32(self):
        """The full fp32 Prism with the QAT-trained weights of this scale."""
        model = copy.deepcopy(self._fp32[0])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for gname, gp in self.graph.named_parameters():
                params[self.names[gname]].copy_(gp.detach().cpu())
        return model

    def load(self, weights):
        """The weights of a QAT checkpoint (checkpoint_weights): `model.*` into the fp32 Prism the graph was
        captured from (the other scale's head lives only there), `qat.*` into the graph."""
        from common import ckpt

        ckpt.load_into(self._fp32[0], weights, prefix="model")
        ckpt.load_into(self.graph, weights, prefix="qat")
        self._stale = True
        return self

    def checkpoint_weights(self):
        """{"model.*": fp32 view, "qat.*": graph state}: what a QAT checkpoint stores."""
        weights = {f"model.{k}": v for k, v in self.fp32().state_dict().items()}
        return weights | {f"qat.{k}": v for k, v in self.graph.state_dict().items()}


class Int8Prism(nn.Module):
    """A QATPrism converted to real int8 (what the .vgf computes), behind the streaming interface: one converted
    graph per input shape, made on first use."""

    def __init__(self, qat):
        super().__init__()
        self.qat, self.scale, self.cfg, self._graphs = qat.eval(), qat.scale, qat.cfg, {}

    def initial_state(self, n, h, w, device=None):
        return self.qat.initial_state(n, h, w, device)

    def train(self, mode=True):
        return super().train(False)  # an int8 graph has nothing to train

    def graph_at(self, n, h, w):
        from common import quant

        if (n, h, w) not in self._graphs:
            self._graphs[(n, h, w)] = quant.convert(self.qat.graph_at(n, h, w))
        return self._graphs[(n, h, w)]

    def forward(self, color, depth, motion, state, scale=None):
        if scale not in (None, self.scale):
            raise ValueError(f"this int8 model is the {self.scale}x graph; asked for {scale}x")
        return tuple(self.graph_at(color.shape[0], *color.shape[-2:])(color, depth, motion, state))


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
