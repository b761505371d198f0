"""Export a network with ExecuTorch to a VGF (Arm's ML extensions for Vulkan) and an XNNPACK `.pte`,
then check that each export computes what eager PyTorch computes.

    from common.export import export_fp32
    report = export_fp32(net, (x,), "runs/nss/export")    # net: tensors in, a tensor or a tuple out

    runs/nss/export/model.vgf           the standalone VGF (what a Vulkan app with the ML extensions loads)
                    model.tosa          the same graph as a TOSA flatbuffer (the input to model-converter)
                    model_vgf.pte       ExecuTorch program with the VGF delegate
                    model.pte           ExecuTorch program with the XNNPACK delegate, for CPUs
                    export_report.json  delegated fraction, max-abs-error of every check, timings

What runs where: `run_pte` runs model.pte in pip's ExecuTorch runtime; `run_tosa` runs model.tosa in the
TOSA reference model; `run_vgf` runs model.vgf with Arm's scenario runner on the ML emulation layer over
Mesa's lavapipe (Debian `mesa-vulkan-drivers libvulkan1`). model_vgf.pte needs a runtime built from source
with the VGF backend, so nothing here runs it. Arm's VGF backend calls `model-converter`, which it finds on
PATH: put the venv's bin first (run.sh does). Measured on 2 CPU cores for a 1x3x270x480 net: model.pte fp32
6.5 ms, int8 2.5 ms (eager 9-13 ms); model.tosa 230-290 ms; model.vgf 0.4-0.7 s per dispatch; fp32 errors < 3e-7.

int8: `export_int8` lowers PT2E-converted graphs (common/quant.py) with tosa_spec="TOSA-1.0+INT"; the TOSA
and VGF graphs take and return int8 tensors (the boundary quantize/dequantize stay outside, their qparams go
to metadata.json) and are checked in output quantization steps against the converted graph in PyTorch.
"""
import ctypes
import glob
import json
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("nanong")


def _numpy(x):
    return np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)


def _matched(outputs, reference):
    """outputs reordered to line up with reference. The TOSA reference model and the scenario runner may list a
    graph's outputs in another order than PyTorch: they are matched by shape (same shapes keep their order)."""
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} outputs, expected {len(reference)}")
    left, matched = list(outputs), []
    for r in reference:
        i = next((i for i, o in enumerate(left) if tuple(_numpy(o).shape) == tuple(_numpy(r).shape)), 0)
        matched.append(left.pop(i))
    return matched


def max_abs_error(outputs, reference):
    """Largest |a - b| over all outputs (tensors or arrays, any dtype, matched as _matched does), in float64."""
    return max(float(np.abs(_numpy(o).astype(np.float64) - _numpy(r).astype(np.float64)).max())
               for o, r in zip(_matched(outputs, reference), reference))


def step_errors(name, outputs, reference, steps=None):
    """{name_steps: max, name_p99_steps, name_mean_steps}: |outputs - reference| in int8 levels (steps: the size
    of one level per output; 1 for int8 arrays). Two int8 implementations requantize in their own arithmetic:
    a rounding tie that flips one level in a hidden layer can grow through later layers, so the tail is
    reported too (p99: 99% of output values are within it)."""
    steps = steps or [1.0] * len(reference)
    d = np.concatenate([np.abs(_numpy(o).astype(np.float64) - _numpy(r).astype(np.float64)).ravel() / s
                        for o, r, s in zip(_matched(outputs, reference), reference, steps)])
    return {f"{name}_steps": round(float(d.max()), 3), f"{name}_p99_steps": round(float(np.quantile(d, 0.99)), 3),
            f"{name}_mean_steps": round(float(d.mean()), 5)}


def _median_ms(fn, repeats):
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(times), 3)


def _delegation_report(edge):
    from executorch.devtools.backend_debug import get_delegation_info
    info = get_delegation_info(edge.exported_program().graph_module)
    # `getitem` nodes only unpack the delegate's output tuple: no work is left on the CPU for them.
    ops = {name: b for name, b in info.delegation_by_operator.items() if name != "getitem"}
    delegated = sum(b.delegated for b in ops.values())
    left = sum(b.non_delegated for b in ops.values())
    return {"delegated_fraction": round(delegated / max(delegated + left, 1), 4),
            "delegated_nodes": delegated, "non_delegated_nodes": left,
            "non_delegated_ops": sorted(name for name, b in ops.items() if b.non_delegated)}


def lower_vgf(exported_program, out_dir, tosa_spec="TOSA-1.0+FP"):
    """Lower to the VGF delegate: writes out_dir/{model_vgf.pte, model.vgf, model.tosa}; returns a report."""
    from executorch.backends.arm.vgf import VgfCompileSpec, VgfPartitioner
    from executorch.exir import to_edge_transform_and_lower
    converter = os.environ.get("MODEL_CONVERTER_PATH") or shutil.which("model-converter")
    if not converter or not shutil.which(converter):
        raise RuntimeError("Arm's model-converter was not found: put the venv's bin first on PATH "
                           "(export PATH=$PWD/.venv/bin:$PATH, as run.sh does) or set MODEL_CONVERTER_PATH "
                           "(pip install ai-ml-sdk-model-converter==0.11.0)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as dump:
        spec = VgfCompileSpec(tosa_spec).dump_intermediate_artifacts_to(dump)
        edge = to_edge_transform_and_lower(exported_program, partitioner=[VgfPartitioner(spec)])
        report = _delegation_report(edge)  # before to_executorch: its memory planning adds `alloc` nodes
        (out_dir / "model_vgf.pte").write_bytes(edge.to_executorch().buffer)
        report["seconds"] = round(time.perf_counter() - t, 3)
        vgfs, tosas = glob.glob(f"{dump}/*.vgf"), glob.glob(f"{dump}/*.tosa")
        if len(vgfs) != 1 or len(tosas) != 1:
            raise RuntimeError(f"VGF lowering made {len(vgfs)} delegated graphs, expected 1: a standalone "
                               f"model.vgf needs the whole network in one graph (left on the CPU: "
                               f"{', '.join(report['non_delegated_ops']) or 'nothing'})")
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
    return {k: [shape[b["mrt_index"]] for b in sorted(seq[k], key=lambda b: b["binding"])] for k in ("inputs", "outputs")}


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


def load_pte(path):
    """Load a `.pte` in ExecuTorch's runtime; returns forward(inputs: list[Tensor]) -> list[Tensor]."""
    from executorch.runtime import Runtime
    method = Runtime.get().load_program(str(path)).load_method("forward")
    # Outputs may live in the program's planned memory, which the next call overwrites: copy them out.
    return lambda inputs: [o.clone() for o in method.execute([torch.as_tensor(x).contiguous() for x in inputs])]


def run_pte(path, inputs):
    return load_pte(path)(inputs)


def run_tosa(tosa_path, inputs):
    """Run a `.tosa` flatbuffer in the TOSA reference model (inputs in graph order, dtypes kept)."""
    import tosa_reference_model
    outputs, status = tosa_reference_model.run(Path(tosa_path).read_bytes(), [_numpy(x) for x in inputs],
                                               initialize_variable_tensor_from_numpy=True)
    if status != tosa_reference_model.GraphStatus.TOSA_VALID:
        raise RuntimeError(f"{tosa_path}: TOSA reference model returned {status}")
    return outputs


def vulkan_unavailable_reason():
    """None when run_vgf can run here, else why not (and what to install)."""
    if not (shutil.which("scenario_runner") and shutil.which("vgf_dump")):
        return ("scenario_runner/vgf_dump not on PATH (pip install ai-ml-sdk-scenario-runner "
                "ai-ml-sdk-vgf-library; venv bin on PATH)")
    try:
        import emulation_layer  # noqa: F401
    except ImportError:
        return "Arm's ML emulation layer is missing (pip install ai-ml-emulation-layer-for-vulkan)"
    try:
        ctypes.CDLL("libvulkan.so.1")
    except OSError:
        return "no Vulkan loader libvulkan.so.1 (apt-get install libvulkan1 mesa-vulkan-drivers)"
    drivers = glob.glob("/usr/share/vulkan/icd.d/*.json") + glob.glob("/etc/vulkan/icd.d/*.json")
    if not drivers and not (os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES")):
        return "no Vulkan driver (apt-get install mesa-vulkan-drivers for the lavapipe CPU driver)"
    return None


def _emulation_env(work_dir):
    """Environment that loads Arm's Graph and Tensor emulation layers, in that order."""
    from emulation_layer.cli import get_deploy_paths
    deploy = get_deploy_paths()
    # Debian 12's loader ignores the order in VK_INSTANCE_LAYERS; one folder per layer fixes it
    # (else: "ML Emulation Layer for Vulkan requires extension: VK_ARM_tensors").
    folders = []
    for name in ("Graph", "Tensor"):
        folder = Path(work_dir) / f"layer_{name.lower()}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(deploy["VK_LAYER_PATH"]) / f"VkLayer_{name}.json", folder)
        folders.append(str(folder))
    env = dict(os.environ, VK_LAYER_PATH=":".join(folders),
               VK_INSTANCE_LAYERS="VK_LAYER_ML_Graph_Emulation:VK_LAYER_ML_Tensor_Emulation")
    env["LD_LIBRARY_PATH"] = ":".join(filter(None, [deploy["LD_LIBRARY_PATH"], env.get("LD_LIBRARY_PATH")]))
    return env


def run_vgf(vgf_path, inputs, work_dir):
    """Run a `.vgf` with Arm's scenario runner on the emulation layer; None when Vulkan is unavailable
    (see vulkan_unavailable_reason). Arrays keep their dtype (int8 graphs take VK_FORMAT_R8_SINT)."""
    if vulkan_unavailable_reason():
        return None
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    template = work / "scenario_template.json"
    subprocess.run(["vgf_dump", "-i", str(vgf_path), "--scenario-template", "-o", str(template)],
                   check=True, capture_output=True)
    scenario = json.loads(template.read_text())
    outputs = {}
    for resource in scenario["resources"]:
        if "graph" in resource:
            resource["graph"]["src"] = str(Path(vgf_path).resolve())
        tensor = resource.get("tensor", {})
        if tensor.get("src", "").startswith("TEMPLATE_PATH_TENSOR_INPUT_"):
            x = _numpy(inputs[int(tensor["src"].rsplit("_", 1)[1])])
            if list(x.shape) != tensor["dims"]:
                raise ValueError(f"{vgf_path}: input {tensor['uid']} has shape {tensor['dims']}, got {list(x.shape)}")
            tensor["src"] = str(work / f"{tensor['uid']}.npy")
            np.save(tensor["src"], x)
        if tensor.get("dst", "").startswith("TEMPLATE_PATH_TENSOR_OUTPUT_"):
            outputs[int(tensor["dst"].rsplit("_", 1)[1])] = tensor["dst"] = str(work / f"{tensor['uid']}.npy")
    # vgf_dump 0.11 still writes the deprecated name of the command.
    scenario["commands"] = [{("dispatch_vgf" if k == "dispatch_graph" else k): v for k, v in c.items()}
                            for c in scenario["commands"]]
    (work / "scenario.json").write_text(json.dumps(scenario, indent=1))
    run = subprocess.run(["scenario_runner", "--scenario", str(work / "scenario.json"), "--output", str(work)],
                         env=_emulation_env(work), capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"scenario_runner failed on {vgf_path} (exit {run.returncode}):\n"
                           f"{(run.stdout + run.stderr)[-2000:]}")
    return [np.load(outputs[i]) for i in sorted(outputs)]


def _channels_last(inputs):
    """Inputs in channels-last memory (NCHW shape, NHWC strides): torch.export then gives the TOSA and VGF graphs
    NHWC tensors, the layout Arm's engines bind."""
    return tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in inputs)


def _graph_layout(tensors, channels_last):
    """Tensors as a channels-last TOSA/VGF graph takes and returns them: NHWC arrays."""
    return [t.permute(0, 2, 3, 1) if channels_last and t.ndim == 4 else t for t in tensors]


def _batch2(inputs, channels_last):
    """A batch of two of each input: torch.export specialises a dimension of size 1, so a dynamic batch needs >= 2."""
    two = tuple(torch.cat([x, x]) for x in inputs)
    return _channels_last(two) if channels_last else two


def _size_name(inputs):
    return "x".join(map(str, inputs[0].shape[-2:]))


def _merge_checks(per_size):
    """One checks dict over several input sizes: errors and steps are the worst size's, the rest the first's."""
    merged = {}
    for checks in per_size.values():
        for k, v in checks.items():
            worst = k.endswith(("_error", "_steps")) and k in merged and isinstance(v, (int, float))
            merged[k] = max(merged[k], v) if worst else merged.get(k, v)
    return merged


def _dynamic(export_static, lower_dynamic, example_inputs, check_inputs, out_dir):
    """A dynamic-shape export: lower_dynamic() writes the dynamic model.vgf / model.tosa into out_dir; TOSA's
    reference model and the scenario runner only run static graphs, so the same network is also lowered with
    static shapes at each check size (out_dir/static/<H>x<W>/, every file and check of a static export), and
    out_dir/model.pte is the XNNPACK program of the first size (XNNPACK plans memory for the largest shape a
    dynamic program allows). -> report."""
    report = {"dynamic": True}
    if lower_dynamic is not None:
        report["vgf"] = lower_dynamic()
    sizes = {_size_name(x): export_static(x, out_dir / "static" / _size_name(x)) for x in (example_inputs, *check_inputs)}
    report["sizes"] = {k: {"input_shapes": r["input_shapes"], "checks": r.get("checks", {})} for k, r in sizes.items()}
    first = out_dir / "static" / _size_name(example_inputs)
    if (first / "model.pte").exists():
        shutil.copyfile(first / "model.pte", out_dir / "model.pte")
        report["xnnpack"] = sizes[_size_name(example_inputs)]["xnnpack"]
    if any("checks" in r for r in sizes.values()):
        report["checks"] = _merge_checks({k: r["checks"] for k, r in sizes.items()})
    return report


def _check_int8(vgf_graph, pte_graph, example_inputs, out_dir, io, fp32_model, repeats, vgf, xnnpack, channels_last=False):
    """Run each int8 artefact on example_inputs. Errors are in real units (max-abs) and in output
    quantization steps ("_steps": 1 = one int8 level); the reference is the converted PT2E graph in PyTorch."""
    from common.quant import dequantize_output, io_qparams, quantize_input
    checks = {}
    with torch.no_grad():
        ref = list(vgf_graph(*example_inputs))
        checks["eager_int8_ms"] = _median_ms(lambda: vgf_graph(*example_inputs), repeats)
        if fp32_model is not None:
            fp = fp32_model(*example_inputs)
            fp = list(fp) if isinstance(fp, (tuple, list)) else [fp]
            checks["int8_vs_fp32_max_abs_error"] = max_abs_error(ref, fp)
    out_q = list(io["outputs"].values())
    if xnnpack:
        with torch.no_grad():
            pte_ref = list(pte_graph(*example_inputs))
        pte_out = list(io_qparams(pte_graph)["outputs"].values())
        steps_of = [q["SINT"]["scale"] for q in (pte_out or out_q)]    # one int8 level of each output
        forward = load_pte(out_dir / "model.pte")
        outputs = forward(example_inputs)
        checks.update(step_errors("pte", outputs, pte_ref, steps_of), pte_max_abs_error=max_abs_error(outputs, pte_ref),
                      pte_ms=_median_ms(lambda: forward(example_inputs), repeats))
    if vgf:
        inputs = _graph_layout([quantize_input(x, q) for x, q in zip(example_inputs, io["inputs"].values())], channels_last)
        ref = _graph_layout(ref, channels_last)
        ref_q = [quantize_input(r, q).numpy() for r, q in zip(ref, out_q)]

        def compare(name, outputs):
            checks.update(step_errors(name, outputs, ref_q))
            checks[f"{name}_max_abs_error"] = max_abs_error([dequantize_output(o, q) for o, q in zip(_matched(outputs, ref_q), out_q)], ref)
        tosa, vgf_out = _run_tosa_and_vgf(out_dir, inputs, checks, compare)
        if vgf_out is not None:
            checks["vgf_vs_tosa_steps"] = max_abs_error(vgf_out, tosa)
    return checks


def _run_tosa_and_vgf(out_dir, inputs, checks, compare):
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


def export_int8(vgf_graph, pte_graph, example_inputs, out_dir, *, export_type="int8", fp32_model=None, vgf=True,
                xnnpack=True, check=True, repeats=3, channels_last=False, dynamic_shapes=None, check_inputs=()):
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
    report = {"export_type": export_type, "input_shapes": [list(x.shape) for x in example_inputs], "io_qparams": io,
              "channels_last": channels_last, "versions": {p: version(p) for p in ("torch", "executorch", "torchao")}}
    ex = _channels_last(example_inputs) if channels_last else example_inputs
    if dynamic_shapes is not None:
        static = lambda x, d: export_int8(vgf_graph, pte_graph, x, d, export_type=export_type, fp32_model=fp32_model,
                                          vgf=vgf, xnnpack=xnnpack, check=check, repeats=repeats, channels_last=channels_last)
        two = _batch2(example_inputs, channels_last)
        lower = lambda: lower_vgf(torch.export.export(vgf_graph, two, dynamic_shapes=dynamic_shapes), out_dir, "TOSA-1.0+INT")
        report.update(_dynamic(static, lower if vgf else None, example_inputs, check_inputs, out_dir))
    else:
        if vgf:
            report["vgf"] = lower_vgf(torch.export.export(vgf_graph, ex), out_dir, "TOSA-1.0+INT")
        if xnnpack:
            report["xnnpack"] = lower_xnnpack(torch.export.export(pte_graph, example_inputs), out_dir / "model.pte")
        log.info("export: " + json.dumps({k: report[k] for k in ("vgf", "xnnpack") if k in report}))
        if check:
            report["checks"] = _check_int8(vgf_graph, pte_graph, example_inputs, out_dir, io, fp32_model, repeats, vgf,
                                           xnnpack, channels_last)
            log.info("export: checks " + json.dumps(report["checks"]))
    report["total_seconds"] = round(time.perf_counter() - start, 3)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def export_fp32(model, example_inputs, out_dir, *, vgf=True, xnnpack=True, check=True, repeats=3, channels_last=False,
                dynamic_shapes=None, check_inputs=(), pte_model=None):
    """torch.export -> VGF (+ TOSA) and XNNPACK files in out_dir; with check, run each on example_inputs and
    record its max-abs-error against eager PyTorch. Writes and returns out_dir/export_report.json.
    channels_last: the TOSA/VGF graphs take and return NHWC tensors. dynamic_shapes (torch.export's, e.g.
    common.quant.image_dims): model.vgf with those dimensions dynamic, checked through static lowerings at the
    example size and at each of check_inputs (see _dynamic). pte_model: another form of the same function to lower
    for XNNPACK (e.g. with ops XNNPACK lacks rewritten); model.pte is checked against `model`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, example_inputs, start = model.eval(), tuple(example_inputs), time.perf_counter()
    report = {"export_type": "fp32", "input_shapes": [list(x.shape) for x in example_inputs],
              "channels_last": channels_last, "versions": {p: version(p) for p in ("torch", "executorch")}}
    ex = _channels_last(example_inputs) if channels_last else example_inputs
    if dynamic_shapes is not None:
        static = lambda x, d: export_fp32(model, x, d, vgf=vgf, xnnpack=xnnpack, check=check, repeats=repeats,
                                          channels_last=channels_last, pte_model=pte_model)
        two = _batch2(example_inputs, channels_last)
        lower = lambda: lower_vgf(torch.export.export(model, two, dynamic_shapes=dynamic_shapes), out_dir, "TOSA-1.0+FP")
        report.update(_dynamic(static, lower if vgf else None, example_inputs, check_inputs, out_dir))
        report["total_seconds"] = round(time.perf_counter() - start, 3)
        (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
        return report
    t = time.perf_counter()
    program = torch.export.export(model, ex)
    report["export_seconds"] = round(time.perf_counter() - t, 3)
    if vgf:
        report["vgf"] = lower_vgf(program, out_dir, "TOSA-1.0+FP")
    if xnnpack:   # the CPU program takes plain NCHW tensors
        same = pte_model is None and not channels_last
        cpu = program if same else torch.export.export((pte_model or model).eval(), example_inputs)
        report["xnnpack"] = lower_xnnpack(cpu, out_dir / "model.pte")
    log.info("export: " + json.dumps({k: report[k] for k in ("export_seconds", "vgf", "xnnpack") if k in report}))
    if check:
        with torch.no_grad():
            reference = model(*example_inputs)
            reference = list(reference) if isinstance(reference, (tuple, list)) else [reference]
            checks = {"eager_ms": _median_ms(lambda: model(*example_inputs), repeats)}
        if xnnpack:
            forward = load_pte(out_dir / "model.pte")
            checks["pte_max_abs_error"] = max_abs_error(forward(example_inputs), reference)
            checks["pte_ms"] = _median_ms(lambda: forward(example_inputs), repeats)
        if vgf:
            graph_ref = _graph_layout(reference, channels_last)
            _run_tosa_and_vgf(out_dir, _graph_layout(example_inputs, channels_last), checks,
                              lambda name, outputs: checks.update({f"{name}_max_abs_error": max_abs_error(outputs, graph_ref)}))
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
