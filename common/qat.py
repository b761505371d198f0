"""Quantization-aware training on static-shape PT2E graphs, for networks that PT2E cannot capture with dynamic
shapes under Arm's quantizer: its passes (the LayerNorm decomposition, for one) write the sizes of a dynamic
graph as symbols the graph no longer defines. A graph then holds one set of input shapes, so:

    qat = QATModel(model, wrap, example_inputs)   # wrap(model): the module to capture (model itself, one head...)
    qat.train(); loss(qat(*batch)).backward()     # the graph of the example shapes is the one that trains
    qat.eval(); qat(*other_size)                  # a graph captured at these shapes, the trained state copied in
    int8 = Int8Model(qat)                         # converted to real int8 per shape (what the .vgf computes)
    qat.fp32()                                    # `model` with the QAT-trained weights (for an XNNPACK .pte)

The graphs at other shapes are the same ops, so their state_dict keys (observers, fake-quant scales, weights)
match one to one; where tracing at a size gives other ops (a reshape that needs a copy at one batch size and
not at another), loading the state fails and the caller gets a ValueError naming both shapes.

The capture renames parameters (`_param_constant7`): the map back to `model`'s names is found by capturing a
copy whose parameter i is filled with i + 1. A checkpoint holds `model.*` (the fp32 view) and `qat.*` (the
graph's state); `load` reads both back. Quantization itself is common/quant.py's (imported here only when a
graph is made, since torchao takes seconds to import).
"""

import copy
import types

import torch
import torch.nn as nn


def _shapes(inputs):
    return tuple(tuple(x.shape) for x in inputs)


def _without_dropout(model):
    """Dropout(p=0) layers replaced by Identity, in place. torchao's train/eval switch of a PT2E graph
    (move_exported_model_to_train, torchao/quantization/pt2e/export_utils.py `_replace_dropout`) matches dropout
    with any p and writes it back with p=0.5, so a p=0 dropout would train at 0.5; other rates are refused."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                if child.p:
                    raise ValueError(f"QAT: {name} is Dropout(p={child.p}); the PT2E train switch would run it at 0.5")
                setattr(parent, name, nn.Identity())
    return model


def _floor_rsqrt_inputs(graph, eps=1e-5):
    """Under fake-quant a LayerNorm's variance (decomposed by Arm's quantizer: mean, squares, sum, + eps, rsqrt)
    is an int8 tensor: a token whose variance is below half a step of the batch's range reads 0, and rsqrt(0) is
    inf, which poisons the next observer's range, and near 0 rsqrt's gradient blows up every weight (a NaN loss
    from step 0). The fake-quant that feeds each rsqrt is floored at half its step (+ eps), the largest value
    that reads as 0, so those tokens are normalised by a bounded factor and pass no gradient back. In place.
    The int8 graph needs no floor: there rsqrt(0) saturates to the top of its int8 range."""
    modules = dict(graph.named_modules())

    def floored(self, x, forward):
        return torch.clamp(forward(self, x), min=self.scale.detach() / 2 + eps)

    for node in graph.graph.nodes:
        if node.target is torch.ops.aten.rsqrt.default and getattr(node.args[0], "op", None) == "call_module":
            fq = modules[node.args[0].target]
            fq.forward = types.MethodType(lambda self, x, f=type(fq).forward: floored(self, x, f), fq)
    return graph


def capture(model, wrap, example_inputs, backend="vgf"):
    """wrap(model) as a PT2E fake-quant graph at the shapes of example_inputs -> (graph, {graph param: model
    param name}); the graph's parameters hold model's values."""
    from common import quant

    marked = _without_dropout(copy.deepcopy(model).cpu().eval())
    with torch.no_grad():
        for i, p in enumerate(marked.parameters()):
            p.fill_(i + 1)
    graph = _floor_rsqrt_inputs(quant.prepare_qat(wrap(marked), tuple(x.cpu() for x in example_inputs), backend))
    index = {i + 1: name for i, (name, _) in enumerate(model.named_parameters())}
    source, names = dict(model.named_parameters()), {}
    with torch.no_grad():
        for gname, gp in graph.named_parameters():
            mark = gp.flatten()[0].item()
            mname = index.get(int(mark)) if mark == int(mark) else None
            if mname is None or gp.shape != source[mname].shape or not torch.all(gp == mark):
                raise RuntimeError(f"QAT capture: graph parameter {gname} matches no parameter of the model")
            names[gname] = mname
            gp.copy_(source[mname].detach().cpu())
    return graph, names


class QATModel(nn.Module):
    """`wrap(model)` under int8 fake-quant: forward(*inputs) -> the graph's outputs (a tuple)."""

    def __init__(self, model, wrap, example_inputs, backend="vgf"):
        super().__init__()
        self.shape, self.backend, self._wrap = _shapes(example_inputs), backend, wrap
        self.graph, self.names = capture(model, wrap, example_inputs, backend)
        self._source = [copy.deepcopy(model).cpu()]  # a list: not a sub-module (not trained, not in state_dict)
        self._others, self._stale = {}, True

    def train(self, mode=True):
        self._stale = True  # the trained graph moves on: graphs at other shapes reload before their next use
        return super().train(mode)

    def graph_at(self, inputs):
        """The fake-quant graph for inputs of these shapes, holding the trained state."""
        shape = _shapes(inputs)
        if shape == self.shape:
            return self.graph
        if shape not in self._others:
            zeros = [torch.zeros(s, dtype=x.dtype) for s, x in zip(shape, inputs)]
            self._others[shape] = capture(self._source[0], self._wrap, zeros, self.backend)[0]
            self._stale = True
        if self._stale:
            state = self.graph.state_dict()
            for other, g in self._others.items():
                try:
                    g.load_state_dict(state)
                except RuntimeError:
                    raise ValueError(
                        f"the QAT graph at input shapes {list(other)} traces to other ops than the trained one at "
                        f"{list(self.shape)}: train and run at shapes alike (batch and size)"
                    ) from None
                g.train(self.training)
            self._stale = False
        return self._others[shape].to(next(self.graph.parameters()).device)

    def forward(self, *inputs):
        return tuple(self.graph_at(inputs)(*inputs))

    def fp32(self):
        """`model` (as given) with the QAT-trained weights, fp32, on the CPU."""
        model = copy.deepcopy(self._source[0])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for gname, gp in self.graph.named_parameters():
                params[self.names[gname]].copy_(gp.detach().cpu())
        return model

    def checkpoint_weights(self):
        """{"model.*": the fp32 view, "qat.*": the graph's state}: what a QAT checkpoint stores."""
        weights = {f"model.{k}": v for k, v in self.fp32().state_dict().items()}
        return weights | {f"qat.{k}": v for k, v in self.graph.state_dict().items()}

    def load(self, weights):
        """checkpoint_weights() back: `model.*` into the model the graphs are made from, `qat.*` into the graph."""
        from common import ckpt

        ckpt.load_into(self._source[0], weights, prefix="model")
        ckpt.load_into(self.graph, weights, prefix="qat")
        self._stale = True
        return self


class Int8Model(nn.Module):
    """A QATModel converted to real int8 (what the .vgf computes, within an int8 step): one converted graph per
    set of input shapes, made on first use."""

    def __init__(self, qat):
        super().__init__()
        self.qat, self._graphs = qat.eval(), {}

    def train(self, mode=True):
        return super().train(False)  # an int8 graph has nothing to train

    def graph_at(self, inputs):
        from common import quant

        shape = _shapes(inputs)
        if shape not in self._graphs:
            self._graphs[shape] = quant.convert(self.qat.graph_at(inputs))
        return self._graphs[shape]

    def forward(self, *inputs):
        return tuple(self.graph_at(inputs)(*inputs))
