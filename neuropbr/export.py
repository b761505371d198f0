"""Export the NeuroPBR generator (three views -> four maps) to a .vgf for Arm's ML extensions for Vulkan and a
.pte for CPUs, and check both against PyTorch on a real sample.

    python neuropbr/export.py --model-path runs/pbr/ckpt/best --out runs/pbr/export
    python neuropbr/export.py --model-path runs/pbr/ckpt/best --export-type ptq_int8 --out runs/pbr/export_int8
    python neuropbr/export.py --model-path runs/pbr_qat/ckpt/best --export-type qat_int8 --out runs/pbr/export_qat
    python neuropbr/export.py --model-path runs/pbr/ckpt/best --weights-out neuropbr/weights/neuropbr   # what ships

Input (1, 3 views, 3, S, S) in [0, 1] with S the checkpoint's image size; outputs albedo (1,3,S,S),
roughness, metallic (1,1,S,S), normal (1,3,S,S). Writes model.vgf, model.tosa, model_vgf.pte, model.pte,
export_report.json (+ metadata.json for int8). Needs Arm's model-converter on PATH (run.sh sets it).
An int8 export also scores PyTorch's int8 graph (what the .vgf computes, within a step) against the fp32
generator on held-out materials (--eval-data; default the run's OUT/heldout, else --eval-samples built-in
materials rendered from the held-out seed 1338 into OUT/heldout): report["heldout"].
qat_int8: a train.py --qat checkpoint (neuropbr/quantize.py), its fake-quant graph converted to int8; the CPU
.pte is XNNPACK's int8 (its own quantizer, calibrated as for ptq_int8) of the QAT-trained (BatchNorm-folded)
generator.
"""

import argparse
import json
import sys
from pathlib import Path

import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ckpt, quant
from common.export import export_fp32, export_int8, verdict
from common.runtime import fail
from neuropbr.dataset import DataError, PBRDataset
from neuropbr.evaluate import evaluate
from neuropbr.infer import SHIPPED, generator_from
from neuropbr.model import MAPS, ExportGenerator
from neuropbr.quantize import load_qat

HELDOUT_SEED = 1338  # the built-in held-out materials: train.py renders them from --seed (1337) + 1


class Maps(nn.Module):
    """A graph with ExportGenerator's tuple outputs as the generator's {map: tensor}, for evaluate()."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, views):
        return dict(zip(MAPS, self.graph(views)))


def heldout_quality(models, root, size, samples):
    """evaluate() of each {name: generator-like} on the first `samples` held-out materials under root (input/,
    output/); rendered there from HELDOUT_SEED first when root holds none. -> {name: flat metrics, "samples": n}"""
    if not (root / "input").is_dir():
        from neuropbr.synth import make_dataset

        make_dataset(root, samples, size=size, seed=HELDOUT_SEED, progress=False)
    ds = PBRDataset(root / "input", root / "output", image_size=size)
    res = {k: evaluate(m, ds, None, "cpu", max_samples=samples, progress=False)["flat"] for k, m in models.items()}
    return res | {"samples": min(samples, len(ds))}


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-path", default=str(SHIPPED), help="checkpoint directory (default: the shipped weights)")
    p.add_argument(
        "--weights-out",
        metavar="DIR",
        help="only write the generator's weights as fp16 safetensors and the "
        "run's meta into DIR (no optimizer or discriminator state): the form the weights ship in",
    )
    p.add_argument(
        "--export-type",
        default="fp32",
        choices=["fp32", "ptq_int8", "qat_int8"],
        help="fp32 (TOSA-1.0+FP); ptq_int8 (Arm's int8 scheme, calibrated on real samples) or qat_int8 (a train.py "
        "--qat checkpoint, converted): TOSA-1.0+INT",
    )
    p.add_argument("--out", help="output folder (required unless --weights-out)")
    p.add_argument(
        "--data",
        help="dataset root (input/, output/) for the check sample and calibration "
        "(default: the run's built-in data; for the shipped weights a few built-in "
        "materials rendered into OUT/data)",
    )
    p.add_argument("--calibration-samples", type=int, default=8, help="ptq_int8: samples to calibrate on")
    p.add_argument(
        "--eval-data",
        help="ptq_int8: held-out dataset root (input/, output/) to score int8 against fp32 on (default: the run's "
        "OUT/heldout, else built-in held-out materials rendered into OUT/heldout)",
    )
    p.add_argument("--eval-samples", type=int, default=16, help="ptq_int8: held-out materials to score on")
    p.add_argument("--no-vgf", action="store_true", help="only the XNNPACK .pte")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help=".pte vs eager: fp32 max-abs-error (default 1e-4); int8 steps on 99%% of values (default 1)",
    )
    args = p.parse_args()
    try:
        if args.weights_out:
            weights, _, meta = ckpt.load(args.model_path, with_state=False)
            out = Path(args.weights_out)
            gen_w = {k: v for k, v in weights.items() if k.startswith("gen.")}
            ckpt.save_fp16(out, gen_w, meta)
            print(f"wrote {out / 'model.safetensors'} (fp16, {sum(v.numel() for v in gen_w.values()):,} values)")
            return
        if not args.out:
            fail("--out DIR is required (or --weights-out DIR)")
        weights, _, meta = ckpt.load(args.model_path, with_state=False)
        kind, qat = meta.get("model_type", "fp32"), None
        if (kind == "qat_int8") != (args.export_type == "qat_int8"):
            hint = "use --export-type qat_int8" if kind == "qat_int8" else "it needs a train.py --qat checkpoint"
            fail(f"{args.model_path}: a {kind} checkpoint cannot be exported as {args.export_type} ({hint})")
        if kind == "qat_int8":
            qat = load_qat(weights, meta)
            gen = qat.fp32()  # the QAT-trained weights (BatchNorms folded), for the CPU .pte and the fp32 row
        else:
            gen = generator_from(weights, meta)  # the checkpoint read above, not a second time
        size = meta["config"]["image_size"]
        root = Path(args.data) if args.data else Path(args.model_path).resolve().parents[1] / "data"
        if not args.data and not root.is_dir():  # e.g. the shipped weights: render a few built-in materials
            from neuropbr.synth import make_dataset

            root = Path(args.out) / "data"
            make_dataset(root, max(1, args.calibration_samples), size=size, seed=7, progress=False)
        ds = PBRDataset(root / "input", root / "output", image_size=size)
        samples = [ds[i]["views"][None] for i in range(min(len(ds), max(1, args.calibration_samples)))]
    except (DataError, ckpt.CheckpointError) as e:
        fail(str(e))
    except KeyError as e:
        fail(f"{args.model_path}: not a NeuroPBR checkpoint (no {e} in meta.json)")
    net, x, out = ExportGenerator(gen).eval(), samples[0], Path(args.out)
    if args.export_type == "fp32":
        report = export_fp32(net, (x,), out, vgf=not args.no_vgf)
    else:
        calib = [(s,) for s in samples]
        vgf_graph = quant.ptq(net, (x,), calib, backend="vgf") if qat is None else quant.convert(qat.graph_at((x,)))
        pte_graph = quant.ptq(net, (x,), calib, backend="xnnpack")  # XNNPACK's int8 sigmoid needs its own scheme
        report = export_int8(
            vgf_graph, pte_graph, (x,), out, export_type=args.export_type, fp32_model=net, vgf=not args.no_vgf
        )
        run_heldout = Path(args.model_path).resolve().parents[1] / "heldout"
        eval_root = Path(args.eval_data) if args.eval_data else run_heldout if run_heldout.is_dir() else out / "heldout"
        try:
            report["heldout"] = heldout_quality(
                {"fp32": gen, args.export_type: Maps(vgf_graph)}, eval_root, size, args.eval_samples
            )
        except DataError as e:
            fail(str(e))
        print(f"held-out ({eval_root}): {json.dumps(report['heldout'])}")
    ok = verdict(report, out, args.tolerance, usecase="neuropbr", input_shape=list(x.shape))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
