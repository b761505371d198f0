"""int8 quantization the way Arm ships models to its GPUs: PT2E post-training quantization (PTQ) with
ExecuTorch's Arm VGF quantizer, and an XNNPACK-quantizer path for CPU `.pte` files; the quantizer, capture and
train/eval switch that a use case's quantization-aware training builds on.

    from common import quant
    q = quant.ptq(net, (x,), calibration_batches)            # -> converted int8 graph (q/dq + int8 weights)
    q_cpu = quant.ptq(net, (x,), calibration_batches, backend="xnnpack")    # the same for a CPU .pte
    # then common.export.export_int8(q, q_cpu, (x,), out)

Arm's scheme (the QAT of Neural Super Sampling in arm/neural-graphics-model-gym): activations int8 per-tensor affine
[-128, 127]; weights int8 per-channel symmetric [-127, 127]; bias int32; and sigmoid outputs with *fixed* qparams,
scale 1/254 and zero point -127, so [0, 1] maps exactly onto [-127, 127] and a GPU can store them in an SNORM
texture and filter them with hardware. A quantized graph is a plain torch.fx GraphModule that runs in PyTorch
(fake-quant maths), so it can be evaluated with the fp32 pre/post-process around it before any export.
"""

import copy
import logging
import types

import torch

# torchao registers enums with pytree at import; torch >= 2.14 logs a deprecation warning for each
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402
from torchao.quantization.pt2e.quantizer import (  # noqa: E402
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    Quantizer,
    SharedQuantizationSpec,
)
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY  # noqa: E402

SIGMOID_SCALE, SIGMOID_ZERO_POINT = 1.0 / 254.0, -127  # int8 q in [-127, 127] <-> sigmoid in [0, 1] (SNORM)
SIGMOID_QSPEC = {  # per backend: Arm's SNORM mapping; XNNPACK's int8 sigmoid kernel only takes 1/256, -128
    "vgf": FixedQParamsQuantizationSpec(
        dtype=torch.int8,
        scale=SIGMOID_SCALE,
        zero_point=SIGMOID_ZERO_POINT,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
    ),
    "xnnpack": FixedQParamsQuantizationSpec(
        dtype=torch.int8,
        scale=1.0 / 256.0,
        zero_point=-128,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
    ),
}
BACKENDS = tuple(SIGMOID_QSPEC)


class FixedSigmoidQParams(Quantizer):
    """Wraps a quantizer and gives every sigmoid output fixed qparams (Arm's SNORM ones), read with the
    same qparams by its consumers; a sigmoid the inner quantizer leaves alone gets its input quantized too."""

    def __init__(self, inner, output_qspec, input_qspec):
        super().__init__()
        self.inner, self.output_qspec, self.input_qspec = inner, output_qspec, input_qspec

    def transform_for_annotation(self, model):
        return self.inner.transform_for_annotation(model)

    def annotate(self, model):
        model = self.inner.annotate(model)
        for node in model.graph.nodes:
            _drop_integer_edges(node)
            if node.target in PAD_OPS:
                _share_input_qparams(node)
        for node in model.graph.nodes:
            if node.target != torch.ops.aten.sigmoid.default:
                continue
            if Q_ANNOTATION_KEY not in node.meta:
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: self.input_qspec}, _annotated=True
                )
            node.meta[Q_ANNOTATION_KEY].output_qspec = self.output_qspec
            for user in node.users:
                wanted = user.meta.get(Q_ANNOTATION_KEY)
                if wanted is not None and node in wanted.input_qspec_map:
                    wanted.input_qspec_map[node] = SharedQuantizationSpec(node)
        return model

    def validate(self, model):
        # Arm's check reads the device of every input's meta["val"]; a size computed in the graph (a SymInt or
        # int node, from dynamic shapes) has none and fails it ("Could not get device from s22"). It skips
        # inputs without a "val", so sizes are hidden from it while it runs: every tensor input is still checked.
        scalar = (torch.SymInt, torch.SymFloat, int, float)
        sizes = {n: n.meta.pop("val") for n in model.graph.nodes if isinstance(n.meta.get("val"), scalar)}
        try:
            self.inner.validate(model)
        finally:
            for n, v in sizes.items():
                n.meta["val"] = v

    def prepare_obs_or_fq_callback(self, model, edge_or_node_to_obs_or_fq):
        self.inner.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)


PAD_OPS = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)


def _is_float(node):
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return not isinstance(val, torch.Tensor) or val.dtype.is_floating_point


def _drop_integer_edges(node):
    """Integer tensors (a game's action ids, a bucket index) are not activations: no observer on them."""
    a = node.meta.get(Q_ANNOTATION_KEY)
    if a is None:
        return
    a.input_qspec_map = {n: q for n, q in a.input_qspec_map.items() if _is_float(n)}
    if not _is_float(node):
        a.output_qspec = None


def _share_input_qparams(node):
    """A zero pad of a quantized tensor stays in its input's int8 grid (zero is exact in an affine grid). The
    XNNPACK quantizer leaves pads alone, and XNNPACK rejects a pad whose input is int8 and output is float."""
    inp = node.args[0]
    a = inp.meta.get(Q_ANNOTATION_KEY)
    if Q_ANNOTATION_KEY in node.meta or a is None or a.output_qspec is None or not _is_float(inp):
        return
    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map={inp: SharedQuantizationSpec(inp)},
        output_qspec=SharedQuantizationSpec((inp, node)),
        _annotated=True,
    )


def quantizer(backend="vgf", qat=False):
    """Arm's int8 scheme for `backend`: "vgf" (TOSA-1.0+INT, Arm GPUs) or "xnnpack" (CPU .pte)."""
    if backend == "vgf":
        from executorch.backends.arm.quantizer import VgfQuantizer, get_symmetric_quantization_config
        from executorch.backends.arm.vgf import VgfCompileSpec

        q = VgfQuantizer(VgfCompileSpec("TOSA-1.0+INT"))
    elif backend == "xnnpack":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        q = XNNPACKQuantizer()
    else:
        raise ValueError(f"unknown quantization backend {backend!r} (have: {', '.join(BACKENDS)})")
    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    q.set_global(config)
    return FixedSigmoidQParams(q, SIGMOID_QSPEC[backend], config.input_activation)


def capture(model, example_inputs, dynamic_shapes=None):
    """torch.export the model into the ATen graph PT2E quantizes. check_guards=False drops the `_guards_fn`
    module torch >= 2.9 inserts, which int8 layernorm/attention/avg_pool lowering rejects (measured: without it
    they fail with `call_module is not supported`).
    dynamic_shapes (torch.export's) keeps the graph usable at other batch sizes and resolutions, as
    training crops and full evaluation frames need."""
    return torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes).module(check_guards=False)


@torch.no_grad()
def ptq(model, example_inputs, calibration, backend="vgf", dynamic_shapes=None):
    """Post-training quantization: observe activation ranges on `calibration` (an iterable of input tuples),
    then convert. The fp32 model is left untouched. For "xnnpack" the biases are put on the int32 grid
    XNNPACK's kernels use (bias_on_int32_grid), so the graph computes what the `.pte` computes."""
    model = copy.deepcopy(model).eval()
    prepared = prepare_pt2e(capture(model, example_inputs, dynamic_shapes), quantizer(backend, qat=False))
    n = 0
    for inputs in calibration:
        prepared(*inputs)
        n += 1
    if n == 0:
        raise ValueError("PTQ needs at least one calibration batch")
    converted = convert_pt2e(prepared)
    return trainable(bias_on_int32_grid(converted) if backend == "xnnpack" else converted)


_DQ_TENSOR = torch.ops.quantized_decomposed.dequantize_per_tensor.default
_DQ_CHANNEL = torch.ops.quantized_decomposed.dequantize_per_channel.default
_WITH_BIAS = {
    torch.ops.aten.linear.default,
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
    torch.ops.aten.convolution.default,
}


def _constant(graph_module, node):
    """The tensor behind a get_attr node (None for anything else)."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = graph_module
    for part in node.target.split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def bias_on_int32_grid(graph_module):
    """Round the fp32 bias of every conv/linear with int8 input and weights onto the int32 grid
    (scale = input scale x weight scale, per output channel) that XNNPACK stores it on.

    XNNPACK's lowering quantizes such a bias itself (executorch/backends/xnnpack/operators/quant_params.py,
    QuantParams.from_bias: int32, scale = weight scale * input scale), while the converted PT2E graph adds it
    in fp32: up to half an int32 step apart, which flips the int8 rounding of a few outputs. Where an input
    scale is coarse next to the output's (e.g. a skip connection sharing a concat's qparams), that flips ~0.1%
    of a layer's outputs, and the flips spread through the layers after it. Rounded the way XNNPACK rounds
    (round(b * (1 / s)) in fp32), the bias lowers to the same int32 values, so the `.pte` is unchanged and
    the graph now matches it. In place; returns graph_module."""
    for node in graph_module.graph.nodes:
        if node.target not in _WITH_BIAS or len(node.args) < 3:
            continue
        x, w, b = node.args[:3]
        bias = _constant(graph_module, b)
        if bias is None or len(b.users) != 1 or not bias.is_floating_point():
            continue
        if getattr(x, "target", None) != _DQ_TENSOR or getattr(w, "target", None) not in (_DQ_TENSOR, _DQ_CHANNEL):
            continue
        in_scale = x.args[1] if not isinstance(x.args[1], torch.fx.Node) else _constant(graph_module, x.args[1])
        w_scale = w.args[1] if not isinstance(w.args[1], torch.fx.Node) else _constant(graph_module, w.args[1])
        if in_scale is None or w_scale is None:
            continue
        scale = torch.as_tensor(w_scale, dtype=torch.float32).flatten() * float(in_scale)
        if scale.numel() not in (1, bias.numel()):
            continue
        q = torch.clamp(torch.round(bias.detach().float() * (1.0 / scale)), -(2**31), 2**31 - 1)
        bias.data.copy_((q * scale).to(bias.dtype))
    return graph_module


def prepare_qat(model, example_inputs, backend="vgf", dynamic_shapes=None):
    """Quantization-aware training with this scheme: a copy of the model as a graph with observers and fake-quant
    on weights and activations. Train it with the usual loop (its parameters are the fp32 weights), then
    `convert`. Rebuilt from the same model class, it loads a saved state_dict exactly (ckpt.load_into)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    graph = capture(copy.deepcopy(model).train(), example_inputs, dynamic_shapes)
    return trainable(prepare_qat_pt2e(graph, quantizer(backend, qat=True)))


def convert(qat_graph):
    """QAT graph -> int8 graph (the trained fake-quant scales become the real ones). Leaves qat_graph as is."""
    return trainable(convert_pt2e(train_mode(copy.deepcopy(qat_graph), False)))


def train_mode(graph_module, training=True):
    """model.train()/eval() for PT2E graphs. Like Arm's QAT, observers update their ranges only in training;
    in eval the fake-quant uses the frozen scales."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer

    (move_exported_model_to_train if training else move_exported_model_to_eval)(graph_module)
    graph_module.apply(enable_observer if training else disable_observer)
    graph_module.training = training
    return graph_module


def trainable(graph_module):
    """Let .train()/.eval() work on a PT2E graph (exported graphs refuse them), so it can sit inside a normal
    nn.Module (as a sub-module of a model) and follow that module's train/eval calls."""
    graph_module.train = types.MethodType(lambda self, mode=True: train_mode(self, mode), graph_module)
    graph_module.eval = types.MethodType(lambda self: train_mode(self, False), graph_module)
    return graph_module


def quantize_input(x, qparams):
    """float -> the int8 tensor an int8 TOSA/VGF graph takes (its boundary quantize, done by the caller)."""
    s, z = qparams["SINT"]["scale"], qparams["SINT"]["zero_point"]
    return torch.clamp(torch.round(x / s) + z, -128, 127).to(torch.int8)


def dequantize_output(q, qparams):
    s, z = qparams["SINT"]["scale"], qparams["SINT"]["zero_point"]
    return (torch.as_tensor(q).to(torch.float32) - z) * s


def io_qparams(graph_module):
    """Scale and zero point of the graph's quantized inputs and outputs: the boundary quantize nodes fed by
    placeholders and the dequantize nodes feeding the output, in graph order. Each entry gives the SINT form
    (int8 texture: real = scale * (q - zero_point)) and, as Arm's exporter writes, the SNORM form for a
    normalized texture that reads q / 127: real = scale' * (v - zero_point') with scale' = scale / (2/254) and
    zero_point' = zero_point * (2/254)."""
    quantize = {torch.ops.quantized_decomposed.quantize_per_tensor.default}
    dequantize = {torch.ops.quantized_decomposed.dequantize_per_tensor.default}

    def forms(node):
        scale, zero_point = float(node.args[1]), int(node.args[2])
        return {
            "SINT": {"scale": scale, "zero_point": zero_point},
            "SNORM": {"scale": scale / (2 / 254), "zero_point": zero_point * (2 / 254)},
        }

    inputs, outputs = {}, {}
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            users = [u for u in node.users if u.target in quantize]
            if users:
                inputs[node.name] = forms(users[0])
        if node.op == "output":
            for i, arg in enumerate(node.args[0]):
                if getattr(arg, "target", None) in dequantize:
                    outputs[f"output_{i}"] = forms(arg)
    return {"inputs": inputs, "outputs": outputs}
