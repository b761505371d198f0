"""Export a Prism network (one scale, GRU state in and out) to a .vgf for Arm's ML extensions for Vulkan and a
.pte for CPUs, check both against PyTorch, and report its cost: parameters, FLOPs per frame, CPU ms.

    python prism/export.py --out runs/prism/export_shipped      # the shipped weights (prism/weights/prism_fast)
    python prism/export.py --model-path runs/prism/ckpt/best --out runs/prism/export            # 2x, data size
    python prism/export.py --model-path runs/prism/ckpt/best --scale 3 --out runs/prism/export_3x
    python prism/export.py --preset quality --size 540 960 --no-vgf --out runs/prism/cost  # untrained: cost
    python prism/export.py --model-path runs/prism/ckpt/best --export-type ptq_int8 --out runs/prism/export_int8
    python prism/export.py --model-path runs/prism_qat/ckpt/best --export-type qat_int8 --out runs/prism/export_qat
    python prism/export.py --model-path runs/prism/ckpt/latest --weights-out prism/weights/prism_fast  # what ships

Graph: forward(color (1,3,h,w), depth (1,1,h,w), motion_vectors (1,2,h,w), state (1,C,h/8,w/8))
-> (frame (1,3,s*h,s*w), new state). The engine feeds the state back each frame (zeros after a camera cut).
The check inputs are a held-out frame of the run's data (state after streaming the frames before it), or
random frames with --size. Writes model.vgf, model.tosa, model_vgf.pte, model.pte, export_report.json.
ptq_int8: Arm's int8 scheme (common/quant.py), calibrated on --calibration-frames frames of the data streamed
with their GRU state; the TOSA and VGF graphs take and return int8 tensors (scales in metadata.json) and are
checked in int8 output steps against the converted graph in PyTorch; with a checkpoint and its data, the
report's "heldout" scores PyTorch's int8 graph (what the .vgf computes, within a step) and the fp32 network on
the run's held-out sequences of the exported scale and size (train.py's split: val_sequences, seed 42).
A checkpoint without its run's data next to it (the shipped weights) is checked on built-in rooms it never saw
(HELDOUT_SEED), rendered into OUT/data, and "heldout" scores all of those.
qat_int8: a train.py --qat checkpoint (prism/quantize.py), its fake-quant graph converted to int8 at the export
size; the CPU .pte is XNNPACK's int8 (its own quantizer, calibrated as for ptq_int8) of the QAT-trained weights.
Needs Arm's model-converter on PATH for the .vgf (run.sh sets it).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from common import ckpt, quant
from common.export import export_fp32, export_int8, verdict
from common.runtime import fail
from prism.dataset import DataError, PrismDataset
from prism.evaluate import evaluate
from prism.model import MODELS, ExportPrism, Prism
from prism.quantize import load_qat

SHIPPED = Path(__file__).resolve().parent / "weights" / "prism_fast"
HELDOUT_SEED = 11337  # built-in rooms no shipped or demo run trains on (train.py renders from --seed 1337)


class Streamed(nn.Module):
    """A graph of ExportPrism's signature (color, depth, motion, state) -> (frame, state) behind Prism's streaming
    interface, for evaluate() (one scale: the graph's)."""

    def __init__(self, graph, model):
        super().__init__()
        self.graph, self.initial_state = graph, model.initial_state

    def forward(self, color, depth, motion, state, scale):
        return tuple(self.graph(color, depth, motion, state))


def heldout_quality(models, root, val_sequences, scale, hw):
    """PSNR / SSIM / tPSNR of each {name: model} (and bilinear) on the held-out sequences of train.py's split
    (val_sequences; None: every sequence of root) at this scale and LR size hw (a graph runs at the size it was
    captured at)."""
    val = PrismDataset(root, clip_len=1)
    val = val.split(val_sequences, seed=42)[1] if val_sequences else val
    val.sequences = [q for q in val.sequences if q["scale"] == scale and tuple(q["size"]) == tuple(hw)]
    if not val.sequences:
        return {"note": f"no held-out sequence at {scale}x and {hw[0]}x{hw[1]}"}
    res = {name: evaluate(m, val, "cpu")[f"{scale}x"] for name, m in models.items()}
    first = next(iter(res.values()))
    return {name: r["prism"] for name, r in res.items()} | {"bilinear": first["bilinear"], "frames": first["frames"]}


def streamed_inputs(model, data_root, scale, frames, sequences=None):
    """Up to `frames` graph inputs (color, depth, motion, state) from the data's (first `sequences`) sequences at
    this scale, each frame with the GRU state its sequence's frames before it left, in order."""
    from safetensors.torch import load_file

    seqs = [s for s in PrismDataset(data_root, clip_len=1).sequences if s["scale"] == scale]
    if not seqs:
        raise DataError(f"{data_root}: no sequence at {scale}x to check the export on")
    inputs = []
    for seq in seqs[:sequences]:
        data, state = load_file(str(seq["path"])), model.initial_state(1, *seq["size"])
        with torch.no_grad():
            for t in range(seq["frames"]):
                x = tuple(data[k][t : t + 1].float() for k in ("color", "depth", "motion_vectors"))
                inputs.append((*x, state))
                if len(inputs) == frames:
                    return inputs
                state = model(*x, state, scale)[1]
    return inputs


def check_inputs(model, data_root, scale, frames=3):
    """A real frame of the data's first sequence at this scale, with the GRU state of the frames before it."""
    seq = streamed_inputs(model, data_root, scale, frames, sequences=1)
    return seq[min(frames, len(seq)) - 1]


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-path", default=str(SHIPPED), help="checkpoint directory (default: the shipped weights)")
    p.add_argument("--weights-out", metavar="DIR", help="only write what ships into DIR: fp16 weights and meta.json")
    p.add_argument(
        "--preset",
        choices=sorted(MODELS),
        help="without --model-path: an untrained network of this "
        "architecture (prism/model.py MODELS; for cost and lowering only, its output is meaningless)",
    )
    p.add_argument(
        "--export-type",
        default="fp32",
        choices=["fp32", "ptq_int8", "qat_int8"],
        help="fp32 (TOSA-1.0+FP); ptq_int8 (Arm's int8 scheme, calibrated on real frames) or qat_int8 (a train.py "
        "--qat checkpoint, converted): TOSA-1.0+INT",
    )
    p.add_argument("--calibration-frames", type=int, default=8, help="ptq_int8: frames (with state) to calibrate on")
    p.add_argument("--scale", type=int, default=2, choices=[2, 3], help="upscaling factor of the exported graph")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size (random check frames); "
        "default: the size of the run's data, e.g. 540 960 for 1080p output at 2x",
    )
    p.add_argument("--data", help="dataset root for the check frame (default: the run's built-in data)")
    p.add_argument("--out", help="output folder (required unless --weights-out)")
    p.add_argument("--no-vgf", action="store_true", help="only the XNNPACK .pte")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of eager and .pte (median reported)")
    p.add_argument("--tolerance", type=float, default=None, help=".pte vs eager max-abs-error (default 1e-4)")
    args = p.parse_args()
    if args.preset:  # an untrained network: no checkpoint
        args.model_path = None
    if args.export_type == "qat_int8" and not args.model_path:
        fail("--export-type qat_int8 needs --model-path of a train.py --qat checkpoint")
    if not (args.out or args.weights_out):
        fail("--out DIR is required (or --weights-out DIR)")
    try:
        if args.weights_out:
            weights, _, meta = ckpt.load(args.model_path, with_state=False)
            model_w = {k: v for k, v in weights.items() if k.startswith("model.")}
            ckpt.save_fp16(args.weights_out, model_w, meta)
            return print(f"wrote {Path(args.weights_out) / 'model.safetensors'} (fp16, {len(model_w)} tensors)")
        qat = None
        if args.model_path:
            weights, _, meta = ckpt.load(args.model_path, with_state=False)
            kind = meta.get("model_type", "fp32")
            if (kind == "qat_int8") != (args.export_type == "qat_int8"):
                hint = "use --export-type qat_int8" if kind == "qat_int8" else "it needs a train.py --qat checkpoint"
                fail(f"{args.model_path}: a {kind} checkpoint cannot be exported as {args.export_type} ({hint})")
            if kind == "qat_int8":
                qat = load_qat(weights, meta)
                if qat.scale != args.scale:
                    fail(f"{args.model_path}: this QAT checkpoint is the {qat.scale}x graph (use --scale {qat.scale})")
                model = qat.fp32()  # the QAT-trained weights, for the check frames and the CPU .pte
            else:
                model = Prism(MODELS[meta["config"]["model"]])
                ckpt.load_into(model, weights, prefix="model")
        else:
            torch.manual_seed(0)
            model = Prism(MODELS[args.preset])
        model.eval()
        if args.size:
            h, w = args.size
            g = torch.Generator().manual_seed(0)
            x = (
                torch.rand(1, 3, h, w, generator=g),
                torch.rand(1, 1, h, w, generator=g),
                torch.randn(1, 2, h, w, generator=g) * 2,
                model.initial_state(1, h, w),
            )
        else:
            if not args.model_path:
                fail("--preset without a checkpoint needs --size H W")
            root = Path(args.data) if args.data else Path(args.model_path).resolve().parents[1] / "data"
            val_sequences = meta["config"]["val_sequences"] if (root / "index.json").exists() else None
            if not args.data and val_sequences is None:  # e.g. the shipped weights: rooms they never saw
                from prism.synth import make_dataset

                root = Path(args.out) / "data"
                make_dataset(root, sequences=4, frames=8, size=128, seed=HELDOUT_SEED, progress=False)
            x = check_inputs(model, root, args.scale)
    except (DataError, ckpt.CheckpointError) as e:
        fail(str(e))
    except KeyError as e:
        fail(f"{args.model_path}: not a Prism checkpoint (no {e} in meta.json)")
    net, out = ExportPrism(model, args.scale).eval(), Path(args.out)
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        net(*x)
    if args.export_type == "fp32":
        report = export_fp32(net, x, out, vgf=not args.no_vgf, repeats=args.repeats)
    else:  # calibrate on the data's frames; with --size (random check frames) on random frames of that size
        n = max(1, args.calibration_frames)
        calib = [x] * n if args.size else streamed_inputs(model, root, args.scale, n)
        pte_graph = quant.ptq(net, x, calib, backend="xnnpack")  # XNNPACK's own int8 sigmoid needs its own scheme
        if qat is None:
            vgf_graph = quant.ptq(net, x, calib, backend="vgf")
        else:
            try:
                vgf_graph = quant.convert(qat.graph_at(x))
            except ValueError as e:
                fail(f"--size: {e}")
        report = export_int8(
            vgf_graph,
            pte_graph,
            x,
            out,
            export_type=args.export_type,
            fp32_model=net,
            vgf=not args.no_vgf,
            repeats=args.repeats,
        )
        if args.model_path and not args.size:
            report["heldout"] = heldout_quality(
                {"fp32": model, args.export_type: Streamed(vgf_graph, model)},
                root,
                val_sequences,
                args.scale,
                x[0].shape[-2:],
            )
            print(f"held-out: {json.dumps(report['heldout'])}")
    h, w = x[0].shape[-2:]
    ok = verdict(
        report,
        out,
        args.tolerance,
        usecase="prism",
        preset=meta_name(model),
        scale=args.scale,
        input_size=[h, w],
        output_size=[args.scale * h, args.scale * w],
        params=sum(p.numel() for p in model.parameters()),
        gflops_per_frame=round(flops.get_total_flops() / 1e9, 3),
        trained=bool(args.model_path),
    )
    print(
        f"cost at {h}x{w} -> {args.scale * h}x{args.scale * w}: {report['params']:,} params, "
        f"{report['gflops_per_frame']} GFLOPs/frame, eager "
        f"{report['checks'].get('eager_ms', report['checks'].get('eager_int8_ms', 0)):.1f} ms, "
        f".pte {report['checks']['pte_ms']:.1f} ms"
        + (f", VGF delegated {report['vgf']['delegated_fraction']:.1%}" if "vgf" in report else "")
    )
    sys.exit(0 if ok else 1)


def meta_name(model):
    return next((k for k, v in MODELS.items() if v == model.cfg), "custom")


if __name__ == "__main__":
    main()
