"""Export a network with ExecuTorch to a VGF (Arm's ML extensions for Vulkan) and an XNNPACK `.pte`,
then check that each export computes what eager PyTorch computes.

    from common.export import export_fp32
    report = export_fp32(net, (x,), "runs/net/export")    # net: tensors in, a tensor or a tuple out

    runs/net/export/model.vgf           the standalone VGF (what a Vulkan app with the ML extensions loads)
                    model.tosa          the same graph as a TOSA flatbuffer (the input to model-converter)
                    model_vgf.pte       ExecuTorch program with the VGF delegate
                    model.pte           ExecuTorch program with the XNNPACK delegate, for CPUs
                    export_report.json  delegated fraction, max-abs-error of every check, timings

The checks run model.pte, model.tosa and model.vgf where common/runtimes.py runs them. Arm's VGF backend calls
`model-converter`, which it finds on PATH: put the venv's bin first (run.sh does).

int8: `export_int8` lowers PT2E-converted graphs (common/quant.py) with tosa_spec="TOSA-1.0+INT"; the TOSA
and VGF graphs take and return int8 tensors (the boundary quantize/dequantize stay outside, their qparams go
to metadata.json) and are checked in output quantization steps against the converted graph in PyTorch.
"""

import glob
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from common.runtime import median_ms
from common.runtimes import load_pte, run_tosa, run_vgf, to_numpy, vulkan_unavailable_reason

log = logging.getLogger("nanong")


def _matched(outputs, reference):
    """outputs reordered to line up with reference. The TOSA reference model and the scenario runner may list a
    graph's outputs in another order than PyTorch: they are matched by shape (same shapes keep their order)."""
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} outputs, expected {len(reference)}")
    left, matched = list(outputs), []
    for r in reference:
        i = next((i for i, o in enumerate(left) if tuple(to_numpy(o).shape) == tuple(to_numpy(r).shape)), 0)
        matched.append(left.pop(i))
    return matched


def max_abs_error(outputs, reference):
    """Largest |a - b| over all outputs (tensors or arrays, any dtype, matched as _matched does), in float64."""
    return max(
        float(np.abs(to_numpy(o).astype(np.float64) - to_numpy(r).astype(np.float64)).max())
        for o, r in zip(_matched(outputs, reference), reference)
    )


def step_errors(name, outputs, reference, steps=None):
    """{name_steps: max, name_p99_steps, name_mean_steps}: |outputs - reference| in int8 levels (steps: the size
    of one level per output; 1 for int8 arrays). Two int8 implementations requantize in their own arithmetic:
    a rounding tie that flips one level in a hidden layer can grow through later layers, so the tail is
    reported too (p99: 99% of output values are within it)."""
    steps = steps or [1.0] * len(reference)
    d = np.concatenate(
        [
            np.abs(to_numpy(o).astype(np.float64) - to_numpy(r).astype(np.float64)).ravel() / s
            for o, r, s in zip(_matched(outputs, reference), reference, steps)
        ]
    )
    return {
        f"{name}_steps": round(float(d.max()), 3),
        f"{name}_p99_steps": round(float(np.quantile(d, 0.99)), 3),
        f"{name}_mean_steps": round(float(d.mean()), 5),
    }


def _delegation_report(edge):
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    # `getitem` nodes only unpack the delegate's output tuple: no work is left on the CPU for them.
    ops = {name: b for name, b in info.delegation_by_operator.items() if name != "getitem"}
    delegated = sum(b.delegated for b in ops.values())
    left = sum(b.non_delegated for b in ops.values())
    return {
        "delegated_fraction": round(delegated / max(delegated + left, 1), 4),
        "delegated_nodes": delegated,
        "non_delegated_nodes": left,
        "non_delegated_ops": sorted(name for name, b in ops.items() if b.non_delegated),
    }


def _delegate_inputs(edge):
    """The program inputs that feed the (first) delegate, in the order of its graph's inputs, which the standalone
    .vgf and .tosa take: each argument of the delegate call traced back through what stays on the CPU before it
    (an int64 -> int32 cast) to its placeholder's name."""
    graph = edge.exported_program().graph_module.graph
    call = next((n for n in graph.nodes if "call_delegate" in str(n.target)), None)
    names = []
    for a in call.args[1:] if call is not None else []:
        while isinstance(a, torch.fx.Node) and a.op != "placeholder" and a.args:
            a = a.args[0]
        names.append(getattr(a, "name", None))
    return names


def lower_vgf(exported_program, out_dir, tosa_spec="TOSA-1.0+FP"):
    """Lower to the VGF delegate: writes out_dir/{model_vgf.pte, model.vgf, model.tosa}; returns a report."""
    from executorch.backends.arm.vgf import VgfCompileSpec, VgfPartitioner
    from executorch.exir import to_edge_transform_and_lower

    converter = os.environ.get("MODEL_CONVERTER_PATH") or shutil.which("model-converter")
    if not converter or not shutil.which(converter):
        raise RuntimeError(
            "Arm's model-converter was not found: put the venv's bin first on PATH "
            "(export PATH=$PWD/.venv/bin:$PATH, as run.sh does) or set MODEL_CONVERTER_PATH "
            "(pip install ai-ml-sdk-model-converter==0.11.0)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as dump:
        spec = VgfCompileSpec(tosa_spec).dump_intermediate_artifacts_to(dump)
        edge = to_edge_transform_and_lower(exported_program, partitioner=[VgfPartitioner(spec)])
        report = _delegation_report(edge)  # before to_executorch: its memory planning adds `alloc` nodes
        report["graph_inputs"] = _delegate_inputs(edge)
        (out_dir / "model_vgf.pte").write_bytes(edge.to_executorch().buffer)
        report["seconds"] = round(time.perf_counter() - t, 3)
        vgfs, tosas = glob.glob(f"{dump}/*.vgf"), glob.glob(f"{dump}/*.tosa")
        if len(vgfs) != 1 or len(tosas) != 1:
            raise RuntimeError(
                f"VGF lowering made {len(vgfs)} delegated graphs, expected 1: a standalone "
                f"model.vgf needs the whole network in one graph (left on the CPU: "
                f"{', '.join(report['non_delegated_ops']) or 'nothing'})"
            )
        # the backend's own names (output_tag0.tosa.vgf, output_tag0_TOSA-1.0+FP.tosa), as Arm's exporter leaves
        # them, and model.vgf / model.tosa linked to them
        for src, alias in ((vgfs[0], "model.vgf"), (tosas[0], "model.tosa")):
            shutil.copyfile(src, out_dir / Path(src).name)
            (out_dir / alias).unlink(missing_ok=True)
            (out_dir / alias).symlink_to(Path(src).name)
        report["files"] = [Path(vgfs[0]).name, Path(tosas[0]).name]
    report["io_shapes"] = vgf_io_shapes(out_dir / "model.vgf")
    return report


def vgf_io_shapes(vgf_path):
    """{"inputs": [shape...], "outputs": [shape...]} of a .vgf as vgf_dump reads it (-1 = a dynamic dimension),
    in binding order; None when vgf_dump is not on PATH."""
    if not shutil.which("vgf_dump"):
        return None
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["vgf_dump", "-i", str(vgf_path), "-o", f"{work}/dump.json"], check=True, capture_output=True)
        dump = json.loads(Path(f"{work}/dump.json").read_text())
    shape = {r["index"]: r["shape"] for r in dump["resources"]}
    seq = dump["model_sequence"]
    return {
        k: [shape[b["mrt_index"]] for b in sorted(seq[k], key=lambda b: b["binding"])] for k in ("inputs", "outputs")
    }


def lower_xnnpack(exported_program, path):
    """Lower to the XNNPACK delegate and write the CPU `.pte` to path; returns a report."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    t = time.perf_counter()
    edge = to_edge_transform_and_lower(exported_program, partitioner=[XnnpackPartitioner()])
    report = _delegation_report(edge)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(edge.to_executorch().buffer)
    report["seconds"] = round(time.perf_counter() - t, 3)
    return report


def _channels_last(inputs):
    """Inputs in channels-last memory (NCHW shape, NHWC strides): torch.export then gives the TOSA and VGF graphs
    NHWC tensors, the layout Arm's engines bind."""
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in inputs)


def _graph_layout(tensors, channels_last):
    """Tensors as a channels-last TOSA/VGF graph takes and returns them: NHWC arrays."""
    return [t.permute(0, 2, 3, 1) if channels_last and t.ndim == 4 else t for t in tensors]


def _check_int8(vgf_graph, pte_graph, example_inputs, out_dir, io, fp32_model, repeats, xnnpack, channels_last, order):
    """Run each int8 artefact on example_inputs. Errors are in real units (max-abs) and in output
    quantization steps ("_steps": 1 = one int8 level); the reference is the converted PT2E graph in PyTorch.
    order: (the program's input names, the names the .vgf/.tosa take in their order, or None: not checked). The
    graph takes each quantized input as int8 (its boundary quantize done here) and each integer one as int32."""
    from common.quant import dequantize_output, io_qparams, quantize_input

    checks = {}
    with torch.no_grad():
        ref = list(vgf_graph(*example_inputs))
        checks["eager_int8_ms"] = round(median_ms(lambda: vgf_graph(*example_inputs), repeats, warmup=1), 3)
        if fp32_model is not None:
            fp = fp32_model(*example_inputs)
            fp = list(fp) if isinstance(fp, (tuple, list)) else [fp]
            checks["int8_vs_fp32_max_abs_error"] = max_abs_error(ref, fp)
    out_q = list(io["outputs"].values())
    if xnnpack:
        with torch.no_grad():
            pte_ref = list(pte_graph(*example_inputs))
        pte_out = list(io_qparams(pte_graph)["outputs"].values())
        steps_of = [q["SINT"]["scale"] for q in (pte_out or out_q)]  # one int8 level of each output
        forward = load_pte(out_dir / "model.pte")
        outputs = forward(example_inputs)
        checks.update(
            step_errors("pte", outputs, pte_ref, steps_of),
            pte_max_abs_error=max_abs_error(outputs, pte_ref),
            pte_ms=round(median_ms(lambda: forward(example_inputs), repeats, warmup=1), 3),
        )
    names, graph_inputs = order
    if graph_inputs is not None:
        qs = io["inputs"]
        by_name = {n: quantize_input(x, qs[n]) if n in qs else x.to(torch.int32) for n, x in zip(names, example_inputs)}
        inputs = _graph_layout([by_name[n] for n in graph_inputs], channels_last)
        ref = _graph_layout(ref, channels_last)
        ref_q = [quantize_input(r, q).numpy() for r, q in zip(ref, out_q)]

        def compare(name, outputs):
            checks.update(step_errors(name, outputs, ref_q))
            checks[f"{name}_max_abs_error"] = max_abs_error(
                [dequantize_output(o, q) for o, q in zip(_matched(outputs, ref_q), out_q)], ref
            )

        tosa, vgf_out = run_tosa_and_vgf(out_dir, inputs, checks, compare)
        if vgf_out is not None:
            checks["vgf_vs_tosa_steps"] = max_abs_error(vgf_out, tosa)
    return checks


def run_tosa_and_vgf(out_dir, inputs, checks, compare):
    """Run model.tosa in the TOSA reference model and model.vgf on the emulation layer (when Vulkan is
    there, else say why in checks); compare(name, outputs) records the errors. -> (tosa, vgf or None)."""
    t = time.perf_counter()
    tosa = run_tosa(out_dir / "model.tosa", inputs)
    compare("tosa", tosa)
    checks["tosa_seconds"] = round(time.perf_counter() - t, 3)
    reason, t = vulkan_unavailable_reason(), time.perf_counter()
    if reason:
        checks["vgf_skipped"] = reason
        return tosa, None
    with tempfile.TemporaryDirectory() as work:
        outputs = run_vgf(out_dir / "model.vgf", inputs, work)
    compare("vgf", outputs)
    checks["vgf_seconds"] = round(time.perf_counter() - t, 3)
    return tosa, outputs


_BOUNDARY = ("quantized_decomposed_quantize_per_tensor", "quantized_decomposed_dequantize_per_tensor")  # graph I/O
_INPUT_CAST = ("dim_order_ops__to_dim_order_copy",)  # int64 -> int32 of an integer input (the graph takes int32)


def export_int8(
    vgf_graph,
    pte_graph,
    example_inputs,
    out_dir,
    *,
    export_type="int8",
    fp32_model=None,
    vgf=True,
    xnnpack=True,
    check=True,
    repeats=3,
    channels_last=False,
):
    """Int8 exports of converted PT2E graphs (common/quant.py): vgf_graph (Arm's VGF quantizer) -> model.vgf +
    model.tosa + model_vgf.pte with TOSA-1.0+INT, int8 tensors at the graph boundary; pte_graph (XNNPACK's
    quantizer) -> model.pte. Writes metadata.json (input/output scales and zero points, SINT and SNORM forms,
    for the engine that feeds the .vgf) and export_report.json; returns the report."""
    from common.quant import io_qparams

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example_inputs, start = tuple(example_inputs), time.perf_counter()
    io = io_qparams(vgf_graph)
    (out_dir / "metadata.json").write_text(json.dumps({"export_type": export_type, **io}, indent=2))
    report = {
        "export_type": export_type,
        "input_shapes": [list(x.shape) for x in example_inputs],
        "io_qparams": io,
        "channels_last": channels_last,
        "versions": {p: version(p) for p in ("torch", "executorch", "torchao")},
    }
    ex = _channels_last(example_inputs) if channels_last else example_inputs
    whole, names = vgf, None
    if vgf:
        program = torch.export.export(vgf_graph, ex)
        names = list(program.graph_signature.user_inputs)
        report["vgf"] = lower_vgf(program, out_dir, "TOSA-1.0+INT")
        left = [op for op in report["vgf"]["non_delegated_ops"] if not op.startswith(_BOUNDARY + _INPUT_CAST)]
        if not set(report["vgf"]["graph_inputs"]) <= set(names):
            left.append("inputs that are not the program's")
        if left:  # e.g. integer lookups before the network: model.vgf takes their results, not the graph's inputs
            whole = False
            report["vgf"]["note"] = (
                f"not delegated, run on the CPU by model_vgf.pte: {', '.join(left)}; the standalone model.vgf "
                "takes their results as inputs, so its TOSA/VGF check is skipped"
            )
    if xnnpack:
        report["xnnpack"] = lower_xnnpack(torch.export.export(pte_graph, example_inputs), out_dir / "model.pte")
    log.info("export: " + json.dumps({k: report[k] for k in ("vgf", "xnnpack") if k in report}))
    if check:
        graph_inputs = report["vgf"]["graph_inputs"] if whole else None
        report["checks"] = _check_int8(
            vgf_graph,
            pte_graph,
            example_inputs,
            out_dir,
            io,
            fp32_model,
            repeats,
            xnnpack,
            channels_last,
            (names, graph_inputs),
        )
        log.info("export: checks " + json.dumps(report["checks"]))
    report["total_seconds"] = round(time.perf_counter() - start, 3)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def export_fp32(
    model,
    example_inputs,
    out_dir,
    *,
    vgf=True,
    xnnpack=True,
    check=True,
    repeats=3,
    channels_last=False,
    pte_model=None,
):
    """torch.export -> VGF (+ TOSA) and XNNPACK files in out_dir; with check, run each on example_inputs and
    record its max-abs-error against eager PyTorch. Writes and returns out_dir/export_report.json.
    channels_last: the TOSA/VGF graphs take and return NHWC tensors. pte_model: another form of the same function
    to lower for XNNPACK (e.g. with ops XNNPACK lacks rewritten); model.pte is checked against `model`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, example_inputs, start = model.eval(), tuple(example_inputs), time.perf_counter()
    report = {
        "export_type": "fp32",
        "input_shapes": [list(x.shape) for x in example_inputs],
        "channels_last": channels_last,
        "versions": {p: version(p) for p in ("torch", "executorch")},
    }
    ex = _channels_last(example_inputs) if channels_last else example_inputs
    t = time.perf_counter()
    program = torch.export.export(model, ex)
    report["export_seconds"] = round(time.perf_counter() - t, 3)
    if vgf:
        report["vgf"] = lower_vgf(program, out_dir, "TOSA-1.0+FP")
    if xnnpack:  # the CPU program takes plain NCHW tensors
        same = pte_model is None and not channels_last
        cpu = program if same else torch.export.export((pte_model or model).eval(), example_inputs)
        report["xnnpack"] = lower_xnnpack(cpu, out_dir / "model.pte")
    log.info("export: " + json.dumps({k: report[k] for k in ("export_seconds", "vgf", "xnnpack") if k in report}))
    if check:
        with torch.no_grad():
            reference = model(*example_inputs)
            reference = list(reference) if isinstance(reference, (tuple, list)) else [reference]
            checks = {"eager_ms": round(median_ms(lambda: model(*example_inputs), repeats, warmup=1), 3)}
        if xnnpack:
            forward = load_pte(out_dir / "model.pte")
            checks["pte_max_abs_error"] = max_abs_error(forward(example_inputs), reference)
            checks["pte_ms"] = round(median_ms(lambda: forward(example_inputs), repeats, warmup=1), 3)
        if vgf:
            graph_ref = _graph_layout(reference, channels_last)
            run_tosa_and_vgf(
                out_dir,
                _graph_layout(example_inputs, channels_last),
                checks,
                lambda name, outputs: checks.update({f"{name}_max_abs_error": max_abs_error(outputs, graph_ref)}),
            )
        report["checks"] = checks
        log.info("export: checks " + json.dumps(checks))
    report["total_seconds"] = round(time.perf_counter() - start, 3)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def verdict(report, out_dir, tolerance=None, **extra):
    """The .pte-matches-eager decision every export.py prints: fp32 by max-abs-error (default 1e-4), int8 by
    int8 output steps on 99% of values (default 1). Adds it to the report, rewrites export_report.json, prints
    the checks and one PASS/FAIL line; returns True when it passes."""
    c = report["checks"]
    if report["export_type"] == "fp32":
        err, tol, unit = c["pte_max_abs_error"], tolerance or 1e-4, "max-abs-error"
    else:
        err, tol, unit = c["pte_p99_steps"], tolerance or 1.0, f"int8 steps on 99% of values (max {c['pte_steps']:g})"
    ok = err <= tol + 1e-6
    report.update(extra, tolerance=tol, pte_matches_eager=ok)
    (Path(out_dir) / "export_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k in ("checks", "vgf", "xnnpack")}, indent=1))
    print(f"{'PASS' if ok else 'FAIL'}: .pte vs eager {err:.3g} {unit} (tolerance {tol:g}); files in {out_dir}")
    return ok
