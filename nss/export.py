"""Export the NSS autoencoder (the only learned part; pre/post-process stay in the engine's shaders) for
Arm's ML extensions for Vulkan (.vgf via ExecuTorch's Arm VGF backend) and for CPUs (.pte via XNNPACK),
then check that the exports compute what PyTorch computes on a real pre-processed frame.

    python nss/export.py --model-path runs/nss/ckpt/best --out runs/nss/export
    python nss/export.py --model-path CKPT --data DIR/test --out OUT --size 544 960   # 540p network input
    python nss/export.py --model-path runs/nss/ckpt/best --export-type ptq_int8 --out runs/nss/export_ptq
    python nss/export.py --model-path runs/nss_qat/ckpt/latest --export-type qat_int8 --out runs/nss/export_qat
    python nss/export.py --model-path nss_v1_high_fp32.pt --data DIR --out OUT      # Arm's Model Gym weights
    python nss/export.py --model-path runs/nss/ckpt/best --arm-checkpoint runs/nss.pt   # for Model Gym --finetune

Writes, as Arm's exporter does: OUT/output_tag0.tosa.vgf (the VGF an engine binds; channels-last input
[-1, -1, -1, 12] with dynamic batch, height and width, multiples of 8 as the network needs, outputs
[-1, -1, -1, 36] KPN and [-1, -1, -1, 4] temporal parameters), output_tag0_TOSA-1.0+{FP,INT}.tosa and
nss-v1-{FP32,PTQ_INT8,QAT_INT8}-metadata.json ({} for fp32; for int8 the input/output scales and zero points,
SINT and SNORM forms); model.vgf and model.tosa link to them. Also model_vgf.pte (the VGF delegate in an
ExecuTorch program), model.pte (XNNPACK, for CPUs, at the first check size) and export_report.json.

The dynamic graph is checked at two sizes (the data's frame and one 8 x 16 pixels larger): TOSA's reference
model and Arm's scenario runner 0.11 only run static graphs (the dynamic .tosa fails the reference model's graph
validation; the runner refuses a -1 input dimension), so the same network is also lowered with static shapes at
each size into OUT/static/<H>x<W>/, and those TOSA, VGF (on the emulation layer) and .pte files are run against
PyTorch. --size H W exports one static channels-last graph of that size instead. Needs Arm's `model-converter`
on PATH (bash run.sh puts the venv's bin there).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from common import ckpt, quant
from common.export import export_fp32, export_int8, lower_vgf, verdict
from common.runtime import fail
from nss.checkpoints import SHIPPED, for_quality, write_arm
from nss.checkpoints import load as load_weights
from nss.dataset import DataError, list_captures, stream
from nss.model import NSS, NSSConfig, SubpixelNet
from nss.quantize import MODEL_TYPES, calibration_inputs, example_input, fp32_net, image_dims, network


def get_args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model-path",
        default=str(SHIPPED),
        help="checkpoint directory (e.g. runs/nss/ckpt/best) or an "
        "Arm Model Gym .pt (nss_v1_high_fp32.pt); default: the shipped weights, nss/weights/nss_v1_high",
    )
    p.add_argument(
        "--arm-checkpoint",
        metavar="FILE.pt",
        help="only write the checkpoint's fp32 weights in Arm Model "
        "Gym's checkpoint layout (its --finetune, evaluate and export read it) and exit",
    )
    p.add_argument(
        "--weights-out",
        metavar="DIR",
        help="only write the checkpoint's weights as fp16 safetensors into "
        "DIR (a checkpoint directory that --model-path and train.py --finetune/--evaluate accept) and exit",
    )
    p.add_argument(
        "--export-type",
        default="fp32",
        choices=MODEL_TYPES,
        help="fp32 (TOSA-1.0+FP); ptq_int8 (an fp32 checkpoint calibrated on real frames) or qat_int8 "
        "(a train.py --qat checkpoint): TOSA-1.0+INT, Arm's int8 scheme",
    )
    p.add_argument("--out", help="output folder for the exported files and export_report.json")
    p.add_argument(
        "--data", help="captures to take a real network input from (default: the run's built-in held-out data)"
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="a static export of this network input size, multiples of 8 (default: dynamic batch, H and W, "
        "checked at the data's low-res frame, padded, and at 8 x 16 pixels more)",
    )
    p.add_argument(
        "--quality",
        choices=["high", "mid", "low"],
        help="export the network of this Arm quality mode "
        "(default: the checkpoint's; a high checkpoint prunes its KPN head into mid/low as Arm does)",
    )
    p.add_argument("--no-vgf", action="store_true", help="skip the VGF (Arm) lowering; only the XNNPACK .pte")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help=".pte vs eager: max-abs-error allowed for fp32 (default 1e-4); for int8, int8 steps allowed on 99%% of "
        "output values (default 1; XNNPACK's requantization flips a rare rounding tie)",
    )
    p.add_argument(
        "--calibration-data", help="ptq_int8: captures to calibrate on (default: the run's built-in training data)"
    )
    p.add_argument("--calibration-frames", type=int, default=16, help="ptq_int8: real frames to calibrate on")
    return p.parse_args()


@torch.no_grad()
def real_network_input(model, data, frames=3):
    """Run the pre-process over the first frames of a capture (history warming up) -> (1, 12, h, w)."""
    state, x = None, None
    for t, (f, new_seq) in enumerate(stream(list_captures(data)[0])):
        if state is None or new_seq:
            state = model.init_state(f)
        out, state = model(f, state)
        x = out["net_input"]
        if t + 1 >= frames:
            break
    return x


def export_dynamic(export_static, lower_dynamic, example_inputs, check_inputs, out_dir):
    """A dynamic-shape export: lower_dynamic() (None: no VGF) writes the dynamic model.vgf / model.tosa into
    out_dir; TOSA's reference model and the scenario runner only run static graphs, so the same network is also
    exported with static shapes at each check size by export_static(inputs, dir) into out_dir/static/<H>x<W>/
    (every file and check of a static export), and out_dir/model.pte is the XNNPACK program of the first size
    (XNNPACK plans memory for the largest shape a dynamic program allows). The report: the first size's header,
    each size's checks, and over all sizes the worst of each error (the first size's other values). Writes and
    returns out_dir/export_report.json."""
    out_dir, start = Path(out_dir), time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    size = lambda inputs: "x".join(map(str, inputs[0].shape[-2:]))
    vgf = lower_dynamic() if lower_dynamic is not None else None
    sizes = {size(x): export_static(x, out_dir / "static" / size(x)) for x in (example_inputs, *check_inputs)}
    first, head = out_dir / "static" / size(example_inputs), sizes[size(example_inputs)]
    report = {
        k: head[k] for k in ("export_type", "input_shapes", "io_qparams", "channels_last", "versions") if k in head
    }
    report["dynamic"] = True
    if vgf is not None:
        report["vgf"] = vgf
    report["sizes"] = {k: {"input_shapes": r["input_shapes"], "checks": r.get("checks", {})} for k, r in sizes.items()}
    if (first / "metadata.json").exists():  # int8: the boundary qparams, the same at every size
        shutil.copyfile(first / "metadata.json", out_dir / "metadata.json")
    if (first / "model.pte").exists():
        shutil.copyfile(first / "model.pte", out_dir / "model.pte")
        report["xnnpack"] = head["xnnpack"]
    if any("checks" in r for r in sizes.values()):
        merged = {}
        for r in sizes.values():
            for k, v in r.get("checks", {}).items():
                worst = k.endswith(("_error", "_steps")) and k in merged and isinstance(v, (int, float))
                merged[k] = max(merged[k], v) if worst else merged.get(k, v)
        report["checks"] = merged
    report["total_seconds"] = round(time.perf_counter() - start, 3)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return report


def main():
    args = get_args()
    src = Path(args.model_path).resolve()
    run = src.parents[1] if src.is_dir() else src.parent  # a run's ckpt/<name> -> the run, for its data/
    try:
        weights, meta = load_weights(args.model_path)  # a checkpoint directory or an Arm .pt
        if args.arm_checkpoint:
            if meta.get("model_type", "fp32") != "fp32":
                fail(
                    f"{args.model_path}: --arm-checkpoint writes fp32 weights; this is a {meta['model_type']} "
                    "checkpoint"
                )
            print(
                f"wrote {write_arm(args.arm_checkpoint, weights, epoch=meta.get('step', 0))} (Arm Model Gym "
                "layout, fp32)"
            )
            return
        if args.weights_out:  # what ships: fp16 weights and the run's meta, no optimizer state
            out = Path(args.weights_out)
            ckpt.save_fp16(out, weights, meta)
            print(f"wrote {out / 'model.safetensors'} (fp16, {sum(v.numel() for v in weights.values()):,} values)")
            return
        if not args.out:
            fail("--out DIR is required (or --weights-out DIR)")
        weights, quality = for_quality(weights, meta, args.quality)  # a high checkpoint prunes into mid/low
        model = NSS(NSSConfig(**{**meta.get("model", {}), "quality": quality}))
        model.net = fp32 = fp32_net(weights)
        calibrate = lambda: calibration_inputs(
            model, Path(args.calibration_data or run / "data" / "train"), args.calibration_frames
        )
        calib = calibrate() if args.export_type == "ptq_int8" else None  # frames as the fp32 network sees them
        model.net, _ = network(weights, meta.get("model_type", "fp32"), args.export_type, calib, source=args.model_path)
        if args.export_type == "qat_int8":  # for the CPU .pte: through the int8 net
            calib = calibrate()
        model.eval()
        data = Path(args.data) if args.data else run / "data" / "test"
        x = real_network_input(model, data) if data.exists() else None
    except (ckpt.CheckpointError, DataError) as e:
        fail(str(e))
    if x is None:
        print(f"note: no data at {data}; checking with a synthetic input in [0, 1]")
        x = torch.rand(1, 12, *(args.size or (64, 64)))
    h, w = args.size or (x.shape[-2] + (-x.shape[-2]) % 8, x.shape[-1] + (-x.shape[-1]) % 8)
    if h % 8 or w % 8:
        fail(f"--size {h} {w}: both must be multiples of 8 (three stride-2 levels)")
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) if x.shape[-2:] != (h, w) else x
    x = x.contiguous()
    out = Path(args.out)
    if args.export_type == "fp32":
        cpu = SubpixelNet(model.net)
        export = lambda x, d: export_fp32(model.net, x, d, vgf=not args.no_vgf, channels_last=True, pte_model=cpu)
    else:
        # the CPU .pte: XNNPACK's own quantizer (its int8 sigmoid needs other qparams than Arm's SNORM ones),
        # calibrated on the same frames; for qat_int8 on the QAT-trained weights
        ex = example_input()
        pte_graph = quant.ptq(
            SubpixelNet(fp32), ex, [(c,) for c in calib], backend="xnnpack", dynamic_shapes=image_dims(ex)
        )
        export = lambda x, d: export_int8(
            model.net,
            pte_graph,
            x,
            d,
            export_type=args.export_type,
            fp32_model=fp32,
            vgf=not args.no_vgf,
            channels_last=True,
        )
    if args.size:
        report = export((x,), out)
    else:  # dynamic: Arm's dims (any batch, H and W multiples of 8), checked at a second size too
        spec = "TOSA-1.0+FP" if args.export_type == "fp32" else "TOSA-1.0+INT"
        # a batch of two: torch.export specialises a dimension of size 1; channels-last: NHWC graph tensors
        two = (torch.cat([x, x]).contiguous(memory_format=torch.channels_last),)
        lower = lambda: lower_vgf(torch.export.export(model.net, two, dynamic_shapes=image_dims((x,))), out, spec)
        checks = [(F.interpolate(x, size=(h + 8, w + 16), mode="bilinear"),)]
        report = export_dynamic(export, None if args.no_vgf else lower, (x,), checks, out)
    io = report.get("io_qparams", {})  # Arm's metadata file: {} for fp32
    (out / f"nss-v1-{args.export_type.upper()}-metadata.json").write_text(
        json.dumps({k: io[k] for k in ("inputs", "outputs") if k in io}, indent=4)
    )
    ok = verdict(report, out, args.tolerance, usecase="nss", input_shape=list(x.shape))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
