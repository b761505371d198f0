"""The CUDA paths, on a machine with a GPU (`bash run.sh gpucheck`); skipped where there is none, as on CI.

Every use case's tiny preset trains with `--device cuda --amp auto` (fp16 autocast with a GradScaler): its loss is
finite and falls, it checkpoints, `--resume` continues it, and export.py turns the CUDA-trained checkpoint into a
CPU `.pte` that matches eager. Also: `--profile memory` writes a CUDA memory snapshot (PyTorch's memory_viz reads
it), DDP with nccl when the machine has two GPUs, and `bash run.sh bench nss --quick --device cuda`.
"""

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import ckpt

DEVICE = os.environ.get("NANONG_TEST_DEVICE", "cuda")  # =cpu: dry-run the training tests here, without a GPU
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device (bash run.sh gpucheck on a GPU)"
)
cuda_only = pytest.mark.skipif(DEVICE != "cuda", reason="a CUDA feature")

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
CUDA = ["--device", DEVICE, "--amp", "auto", "--log-level", "quiet"]
STEPS = 40


def run(args, timeout=900):
    cmd = [sys.executable, *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def nss_data(root):
    from nss.synth import make_dataset

    make_dataset(root / "train", 2, 8, (64, 64), seed=1, progress=False)
    make_dataset(root / "test", 1, 6, (64, 64), seed=99, progress=False)
    return root, root / "test"


def neuropbr_data(root):
    from neuropbr.synth import make_dataset

    make_dataset(root, 10, size=64, seed=1, progress=False)
    return root, root


def prism_data(root):
    from prism.synth import make_dataset

    make_dataset(root, sequences=6, frames=4, size=32, seed=0, progress=False)
    return root, root


def gamengen_data(root):
    pytest.importorskip("vizdoom", reason="GameNGen needs vizdoom (gamengen/requirements.txt)")
    from gamengen import train
    from gamengen.collect import collect
    from tests.conftest import run_main

    index = collect(root / "doom", 400, seed=3, shard_steps=100, progress=False)
    for e, v in index["episodes"].items():
        v["split"] = "heldout" if int(e) % 2 else "train"
    (root / "doom" / "index.json").write_text(json.dumps(index))
    run_main(train.main, "ae", "--data", root / "doom", "--out", root / "ae", "--preset", "tiny", "--steps", 4)
    run_main(train.main, "encode", "--data", root / "doom", "--ckpt", root / "ae/ckpt/latest", "--out", root / "l")
    return root / "l", root / "l"


# use case -> (data maker -> (train data, export data), train.py's argv before the common flags,
#              export.py's argv before --model-path CKPT --data DIR)
USE_CASES = {
    "nss": (nss_data, ["nss/train.py", "--no-evaluate"], ["nss/export.py", "--no-vgf"]),
    "neuropbr": (neuropbr_data, ["neuropbr/train.py", "--epochs", "100"], ["neuropbr/export.py", "--no-vgf"]),
    "prism": (prism_data, ["prism/train.py", "--w-gan", "0"], ["prism/export.py", "--no-vgf", "--repeats", "1"]),
    "gamengen": (
        gamengen_data,
        ["gamengen/train.py", "diffusion"],
        ["gamengen/export.py", "--no-vgf", "--repeats", "1"],
    ),  # fmt: skip
}


def train_losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("name", USE_CASES)
def test_tiny_preset_trains_resumes_and_exports_on_cuda(name, tmp_path):
    make, train, export = USE_CASES[name]
    data, export_data = make(tmp_path / "data")
    out = tmp_path / "run"
    argv = [*train, "--data", data, "--out", out, "--preset", "tiny", *CUDA, "--log-every", "1", "--save-every", "0"]
    run([*argv, "--max-steps", STEPS, "--stop-after", STEPS // 2])
    run([*argv, "--max-steps", STEPS, "--resume"])
    losses = train_losses(out)
    assert len(losses) >= STEPS - 2 and all(math.isfinite(v) for v in losses), losses
    assert sum(losses[-5:]) < sum(losses[:5]), losses  # it learns under fp16 autocast + GradScaler
    _, state, meta = ckpt.load(out / "ckpt" / "latest")
    assert meta["step"] == STEPS, meta
    assert DEVICE != "cuda" or state["scaler"]["scale"] > 0, state["scaler"]  # fp16 loss scale kept by --resume
    run([*export, "--model-path", out / "ckpt" / "latest", "--data", export_data, "--out", tmp_path / "export"])
    reports = [*(tmp_path / "export").glob("export_report.json"), *(tmp_path / "export").glob("*/export_report.json")]
    assert reports and all(json.loads(p.read_text())["pte_matches_eager"] for p in reports)


@cuda_only
def test_profile_memory_writes_a_snapshot_memory_viz_reads(tmp_path):
    data, _ = nss_data(tmp_path / "data")
    out = tmp_path / "run"
    run(["nss/train.py", "--data", data, "--out", out, "--preset", "tiny", *CUDA, "--max-steps", 8, "--no-evaluate"])
    run(["nss/train.py", "--data", data, "--out", out, "--preset", "tiny", *CUDA, "--max-steps", 8, "--no-evaluate",
         "--profile", "memory", "--resume"])  # fmt: skip
    snap = pickle.loads((out / "cuda_memory.pickle").read_bytes())
    assert snap["segments"] and snap["device_traces"], list(snap)  # what pytorch.org/memory_viz draws


@cuda_only
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over nccl needs two GPUs")
def test_ddp_with_nccl_on_two_gpus(tmp_path):
    data, _ = nss_data(tmp_path / "data")
    out = tmp_path / "run"
    run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "nss/train.py", "--data", data,
         "--out", out, "--preset", "tiny", *CUDA, "--max-steps", 8, "--no-evaluate"])  # fmt: skip
    assert "x2" in (out / "output.log").read_text() and ckpt.load(out / "ckpt" / "latest")[2]["step"] == 8


@cuda_only
def test_bench_nss_quick_on_cuda(tmp_path):
    res = tmp_path / "results"
    run(["nss/bench.py", "--quick", "--device", "cuda", "--work", tmp_path / "work", "--results", res], timeout=1800)
    rows = json.loads((res / "results.json").read_text())
    assert rows and all(math.isfinite(r["value"]) for r in rows)
    print((res / "results.md").read_text())  # the figures, for the report (pytest -s)
