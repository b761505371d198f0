"""Where exported programs run (common/export.py writes them): an XNNPACK `.pte` in pip's ExecuTorch runtime,
a `.tosa` in the TOSA reference model, a `.vgf` with Arm's scenario runner on the ML emulation layer for Vulkan
over Mesa's lavapipe (Debian `mesa-vulkan-drivers libvulkan1`).

    from common.runtimes import load_pte, run_tosa, run_vgf
    forward = load_pte("runs/net/export/model.pte")    # forward([x]) -> [outputs]
    outputs = run_vgf("runs/net/export/model.vgf", [x], "runs/tmp")   # None when Vulkan is unavailable here

model_vgf.pte needs a runtime built from source with the VGF backend, so nothing here runs it.
"""

import ctypes
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch


def to_numpy(x):
    """A tensor or array as a contiguous numpy array (on the CPU, detached)."""
    return np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)


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

    outputs, status = tosa_reference_model.run(
        Path(tosa_path).read_bytes(), [to_numpy(x) for x in inputs], initialize_variable_tensor_from_numpy=True
    )
    if status != tosa_reference_model.GraphStatus.TOSA_VALID:
        raise RuntimeError(f"{tosa_path}: TOSA reference model returned {status}")
    return outputs


def vulkan_unavailable_reason():
    """None when run_vgf can run here, else why not (and what to install)."""
    if not (shutil.which("scenario_runner") and shutil.which("vgf_dump")):
        return (
            "scenario_runner/vgf_dump not on PATH (pip install ai-ml-sdk-scenario-runner "
            "ai-ml-sdk-vgf-library; venv bin on PATH)"
        )
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
    env = dict(
        os.environ,
        VK_LAYER_PATH=":".join(folders),
        VK_INSTANCE_LAYERS="VK_LAYER_ML_Graph_Emulation:VK_LAYER_ML_Tensor_Emulation",
    )
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
    subprocess.run(
        ["vgf_dump", "-i", str(vgf_path), "--scenario-template", "-o", str(template)], check=True, capture_output=True
    )
    scenario = json.loads(template.read_text())
    outputs = {}
    for resource in scenario["resources"]:
        if "graph" in resource:
            resource["graph"]["src"] = str(Path(vgf_path).resolve())
        tensor = resource.get("tensor", {})
        if tensor.get("src", "").startswith("TEMPLATE_PATH_TENSOR_INPUT_"):
            x = to_numpy(inputs[int(tensor["src"].rsplit("_", 1)[1])])
            if list(x.shape) != tensor["dims"]:
                raise ValueError(f"{vgf_path}: input {tensor['uid']} has shape {tensor['dims']}, got {list(x.shape)}")
            tensor["src"] = str(work / f"{tensor['uid']}.npy")
            np.save(tensor["src"], x)
        if tensor.get("dst", "").startswith("TEMPLATE_PATH_TENSOR_OUTPUT_"):
            outputs[int(tensor["dst"].rsplit("_", 1)[1])] = tensor["dst"] = str(work / f"{tensor['uid']}.npy")
    # vgf_dump 0.11 still writes the deprecated name of the command.
    scenario["commands"] = [
        {("dispatch_vgf" if k == "dispatch_graph" else k): v for k, v in c.items()} for c in scenario["commands"]
    ]
    (work / "scenario.json").write_text(json.dumps(scenario, indent=1))
    run = subprocess.run(
        ["scenario_runner", "--scenario", str(work / "scenario.json"), "--output", str(work)],
        env=_emulation_env(work),
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise RuntimeError(
            f"scenario_runner failed on {vgf_path} (exit {run.returncode}):\n{(run.stdout + run.stderr)[-2000:]}"
        )
    return [np.load(outputs[i]) for i in sorted(outputs)]
