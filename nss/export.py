"""Export the NSS autoencoder (the only learned part; pre/post-process stay in the engine's shaders) for
Arm's ML extensions for Vulkan (.vgf via ExecuTorch's Arm VGF backend) and for CPUs (.pte via XNNPACK),
then check that the exports compute what PyTorch computes on a real pre-processed frame.

    python nss/export.py --model-path runs/nss/ckpt/best --out runs/nss/export
    python nss/export.py --model-path CKPT --data DIR/test --out OUT --size 544 960   # 540p network input

Writes OUT/model.vgf, model.tosa, model_vgf.pte, model.pte and export_report.json. Needs Arm's
`model-converter` on PATH (bash run.sh puts the venv's bin there).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from common import ckpt
from common.export import export_fp32
from common.runtime import fail
from nss.dataset import DataError, list_captures, stream
from nss.model import NSS, NSSConfig


def get_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="checkpoint directory (e.g. runs/nss/ckpt/best)")
    p.add_argument("--export-type", default="fp32", choices=["fp32"], help="fp32 (TOSA-1.0+FP); int8 comes with common/quant.py")
    p.add_argument("--out", required=True, help="output folder for the exported files and export_report.json")
    p.add_argument("--data", help="captures to take a real network input from (default: the run's built-in held-out data)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="network input size, multiples of 8 (default: the data's low-res frame, padded)")
    p.add_argument("--no-vgf", action="store_true", help="skip the VGF (Arm) lowering; only the XNNPACK .pte")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max-abs-error allowed between the .pte and eager")
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


def main():
    args = get_args()
    try:
        weights, _, meta = ckpt.load(args.model_path, with_state=False)
        model = NSS(NSSConfig(**meta.get("model", {})))
        model.net.load_state_dict(weights)
        model.eval()
        data = Path(args.data) if args.data else Path(args.model_path).resolve().parents[1] / "data" / "test"
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
    report = export_fp32(model.net, (x.contiguous(),), Path(args.out), vgf=not args.no_vgf)
    err = report["checks"]["pte_max_abs_error"]
    ok = err <= args.tolerance
    report.update(usecase="nss", export_type=args.export_type, input_shape=list(x.shape), tolerance=args.tolerance, pte_matches_eager=ok)
    (Path(args.out) / "export_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k in ("checks", "vgf", "xnnpack")}, indent=1))
    print(f"{'PASS' if ok else 'FAIL'}: .pte vs eager max-abs-error {err:.2e} (tolerance {args.tolerance:.0e}); files in {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
