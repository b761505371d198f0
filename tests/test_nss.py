"""NSS end to end on tiny generated data: Arm's file format, clear errors, the model, training (loss falls,
exact resume, torchrun), evaluation against baselines and export."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nss.dataset import SPEC, DataError, NSSWindows, augment, read_capture, sequences
from nss.model import NSS

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
# every key of Arm's NSS safetensors layout (Model Gym's safetensors_writer.py) with its dtype and per-frame shape
ARM_KEYS = {
    "colour_linear": (torch.float16, (3, 8, 8)),
    "ground_truth_linear": (torch.float16, (3, 16, 16)),
    "depth": (torch.float32, (1, 8, 8)),
    "motion_lr": (torch.float16, (2, 8, 8)),
    "motion": (torch.float16, (2, 16, 16)),
    "jitter": (torch.float32, (2, 1, 1)),
    "X": (torch.float32, (1,)),
    "Y": (torch.float32, (1,)),
    "exposure": (torch.float32, (1,)),
    "render_size": (torch.int32, (2,)),
    "outDims": (torch.int32, (2,)),
    "TargetResolution": (torch.int32, (2,)),
    "EmulatedFramerate": (torch.float32, (1,)),
    "Samples": (torch.int32, (1,)),
    "viewProj": (torch.float32, (1, 4, 4)),
    "zNear": (torch.float32, (1,)),
    "zFar": (torch.float32, (1,)),
    "infinite_zFar": (torch.bool, (1,)),
    "ReverseZ": (torch.bool, (1,)),
    "FovX": (torch.float32, (1,)),
    "FovY": (torch.float32, (1,)),
    "scale": (torch.float32, (1,)),
    "seq": (torch.int64, (1,)),
    "img": (torch.int64, (1,)),
    "camera_cut": (torch.bool, (1,)),
    "depth_params": (torch.float32, (4,)),
}


def write_arm_file(path, frames=5, drop=(), cuts=(), **replace):
    g = torch.Generator().manual_seed(0)
    t = {}
    for k, (dt, shape) in ARM_KEYS.items():
        if dt.is_floating_point:
            t[k] = torch.rand((frames,) + shape, generator=g).to(dt)
        elif dt == torch.bool:
            t[k] = torch.zeros((frames,) + shape, dtype=dt)
        else:
            t[k] = torch.ones((frames,) + shape, dtype=dt)
    t["depth_params"] = torch.tensor([1.001, -0.1, 1.0, 1.0]).expand(frames, 4).contiguous()
    t["render_size"] = torch.tensor([8, 8], dtype=torch.int32).expand(frames, 2).contiguous()
    for c in cuts:
        t["camera_cut"][c] = True
    t.update(replace)
    for k in drop:
        del t[k]
    save_file(t, str(path), metadata={"Length": str(frames), "Created": "23-11-2026", "Version": "test"})
    return path


def run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, **kw)


def test_reads_arm_file_with_every_key(tmp_path):
    cap = read_capture(write_arm_file(tmp_path / "a.safetensors"))
    assert set(SPEC) <= set(cap)
    assert cap["colour_linear"].shape == (5, 3, 8, 8) and cap["ground_truth_linear"].shape == (5, 3, 16, 16)
    assert cap["motion_lr"].dtype == torch.float16 and cap["jitter"].shape == (5, 2, 1, 1)


def test_optional_keys_fall_back_like_arms_loader(tmp_path):
    cap = read_capture(write_arm_file(tmp_path / "a.safetensors", drop=("motion_lr", "exposure", "camera_cut")))
    assert cap["motion_lr"].shape == (5, 2, 8, 8) and torch.equal(cap["exposure"], torch.zeros(5, 1))
    assert not cap["camera_cut"].any()


def test_windows_never_cross_a_camera_cut(tmp_path):
    write_arm_file(tmp_path / "a.safetensors", frames=10, cuts=(4,))
    assert sequences(read_capture(tmp_path / "a.safetensors")["camera_cut"]) == [(0, 4), (4, 10)]
    ds = NSSWindows(tmp_path, frames=3, augment=False)
    assert sorted(ds.windows) == [(0, 0), (0, 1), (0, 4), (0, 5), (0, 6), (0, 7)]


@pytest.mark.parametrize(
    "case,match",
    [
        (dict(drop=("depth",)), "missing key 'depth'"),
        (dict(depth=torch.full((5, 1, 8, 8), float("nan"))), "'depth': contains NaN"),
        (dict(motion=torch.zeros(5, 2, 8, 8, dtype=torch.float16)), "'motion': shape"),
        (dict(colour_linear=torch.zeros(5, 3, 8, 8, dtype=torch.int32)), "'colour_linear': dtype"),
    ],
)
def test_bad_files_name_file_and_key(tmp_path, case, match):
    p = write_arm_file(tmp_path / "bad.safetensors", **case)
    with pytest.raises(DataError, match=match) as e:
        read_capture(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_truncated_file_names_the_key(tmp_path):
    p = write_arm_file(tmp_path / "t.safetensors")
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"key '.*': truncated"):
        read_capture(p)


def test_cli_bad_data_is_one_line_exit_2(tmp_path):
    write_arm_file(tmp_path / "bad.safetensors", drop=("depth",))
    r = run(["nss/train.py", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "tiny"], timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "missing key 'depth'" in r.stderr and "Traceback" not in r.stderr


def test_augmentation_keeps_motion_consistent(tmp_path):
    """Warping frame t-1 by the motion must still find frame t after flips and rotations."""
    from nss.model import pixel_centres, sample

    H = W = 16
    img = torch.rand(1, 3, H, W)
    prev, cur = img, torch.roll(img, shifts=(2, -3), dims=(2, 3))  # moved down 2, left 3
    mv = torch.tensor([2.0, -3.0]).view(1, 2, 1, 1).expand(1, 2, H, W)
    s = {
        "colour": torch.stack([prev, cur], 1)[0],
        "ground_truth": torch.stack([prev, cur], 1)[0],
        "depth": torch.zeros(2, 1, H, W),
        "motion_lr": mv.expand(2, 2, H, W).clone(),
        "motion": mv.expand(2, 2, H, W).clone(),
        "jitter": torch.zeros(2, 2, 1, 1),
        "exposure": torch.ones(2, 1, 1, 1),
        "depth_params": torch.zeros(2, 4, 1, 1),
        "render_size": torch.tensor([H / 2, W]).view(1, 2, 1, 1).expand(2, 2, 1, 1),
    }
    for seed in range(8):
        a = augment({k: v.clone() for k, v in s.items()}, torch.Generator().manual_seed(seed))
        warped, _ = sample(a["colour"][0:1], pixel_centres(1, H, W, "cpu") - a["motion"][1:2], (H, W), mode="nearest")
        inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
        assert torch.allclose(warped[inner], a["colour"][1:2][inner]), seed
        rotated = a["render_size"][0, :, 0, 0].tolist() == [W, H / 2]
        assert rotated or a["render_size"][0, :, 0, 0].tolist() == [H / 2, W], seed  # rot90 swaps (h, w)


def test_synth_writes_the_arm_layout(synth_data):
    f = sorted((synth_data / "train").glob("*.safetensors"))[0]
    cap = read_capture(f, keys=list(SPEC))
    from safetensors import safe_open

    with safe_open(str(f), "pt") as s:
        keys = set(s.keys())
    assert set(ARM_KEYS) <= keys
    assert cap["colour_linear"].shape[-2:] == (32, 32) and cap["ground_truth_linear"].shape[-2:] == (64, 64)


def _train(data, out, steps, extra=()):
    return run(
        [
            "nss/train.py",
            "--data",
            str(data),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--max-steps",
            str(steps),
            "--no-evaluate",
            "--seed",
            "5",
            *extra,
        ],
        timeout=600,
    )


def _losses(out):
    return [r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if r["split"] == "train"]


def test_loss_falls_and_exact_resume(synth_data, tmp_path):
    r = _train(synth_data, tmp_path / "full", 30)
    assert r.returncode == 0, r.stderr[-2000:]
    losses = _losses(tmp_path / "full")
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses
    r = _train(synth_data, tmp_path / "split", 30, ["--stop-after", "13"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = _train(synth_data, tmp_path / "split", 30, ["--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    from common.ckpt import load

    a = load(tmp_path / "full" / "ckpt" / "latest")[0]
    b = load(tmp_path / "split" / "ckpt" / "latest")[0]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    assert _losses(tmp_path / "split") == losses  # one row per step, no duplicates after resume


def test_torchrun_two_processes_only_rank0_writes(synth_data, tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "nss/train.py",
            "--data",
            str(synth_data),
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--max-steps",
            "4",
            "--no-evaluate",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "ckpt" / "latest" / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == ["ckpt", "metrics.jsonl", "output.log"]
    assert "x2" in (out / "output.log").read_text()  # both ranks took part
    assert (out / "output.log").read_text().count("resumed") == 0


def test_evaluate_beats_nothing_silly_and_writes_grid(synth_data, tmp_path):
    from nss.evaluate import evaluate

    res = evaluate(NSS(), synth_data / "test", "cpu", out_dir=tmp_path, progress=False)
    for m in ("bilinear", "bicubic", "taa", "nss"):
        assert 5 < res[m]["psnr"] < 60 and 0 < res[m]["ssim"] <= 1
    assert res["taa"]["psnr"] > res["bilinear"]["psnr"] - 1.0  # TAA accumulation is a real baseline
    assert (tmp_path / "comparison.png").exists() and json.loads((tmp_path / "results.json").read_text())["frames"] == 6


@pytest.mark.slow
def test_export_pte_matches_eager(synth_data, tmp_path):
    r = _train(synth_data, tmp_path / "run", 3)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "export"
    r = run(
        [
            "nss/export.py",
            "--model-path",
            str(tmp_path / "run" / "ckpt" / "latest"),
            "--data",
            str(synth_data / "test"),
            "--out",
            str(out),
        ],
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["pte_matches_eager"] and rep["checks"]["pte_max_abs_error"] <= 1e-4
    assert rep["input_shape"] == [1, 12, 32, 32]  # a real pre-processed frame of the test data
    assert (out / "model.vgf").stat().st_size > 0 and (out / "model.pte").stat().st_size > 0
    assert "PASS: .pte vs eager" in r.stdout and "max-abs-error" in r.stdout
    # as Arm's exporter: channels-last, dynamic batch, H and W; its file names and an empty fp32 metadata file
    assert rep["vgf"]["io_shapes"] == {"inputs": [[-1, -1, -1, 12]], "outputs": [[-1, -1, -1, 36], [-1, -1, -1, 4]]}
    assert (out / "output_tag0.tosa.vgf").is_file() and (out / "output_tag0_TOSA-1.0+FP.tosa").is_file()
    assert json.loads((out / "nss-v1-FP32-metadata.json").read_text()) == {}
    assert list(rep["sizes"]) == ["32x32", "40x48"]  # checked at two sizes, each in full
    for size in rep["sizes"].values():
        c = size["checks"]
        assert c["pte_max_abs_error"] < 1e-4 and c["tosa_max_abs_error"] < 1e-4, c
        assert c.get("vgf_max_abs_error", 0) < 1e-4 and ("vgf_max_abs_error" in c or "vgf_skipped" in c), c
    static = json.loads((out / "static" / "40x48" / "export_report.json").read_text())
    assert static["vgf"]["io_shapes"] == {"inputs": [[1, 40, 48, 12]], "outputs": [[1, 10, 12, 36], [1, 40, 48, 4]]}


def _fp32_then_qat(data, tmp_path):
    """10 fp32 steps, then 12 QAT steps fine-tuned from them -> (fp32 run, QAT run)."""
    fp, qat = tmp_path / "fp", tmp_path / "qat"
    assert (r := _train(data, fp, 10)).returncode == 0, r.stderr[-2000:]
    qat_args = ["--qat", "--finetune", str(fp / "ckpt" / "latest")]
    assert (r := _train(data, qat, 12, qat_args)).returncode == 0, r.stderr[-2000:]
    return fp, qat


@pytest.mark.slow
def test_qat_resumes_exactly_evaluates_as_int8_and_is_not_fp32(synth_data, tmp_path):
    fp, qat = _fp32_then_qat(synth_data, tmp_path)
    q = ["--qat", "--finetune", str(fp / "ckpt" / "latest")]
    assert json.loads((qat / "ckpt" / "latest" / "meta.json").read_text())["model_type"] == "qat_int8"
    assert (r := _train(synth_data, tmp_path / "split", 12, q + ["--stop-after", "5"])).returncode == 0, r.stderr[
        -2000:
    ]
    assert (r := _train(synth_data, tmp_path / "split", 12, ["--resume"])).returncode == 0, r.stderr[
        -2000:
    ]  # QAT run detected
    from common.ckpt import load

    a, b = load(qat / "ckpt" / "latest")[0], load(tmp_path / "split" / "ckpt" / "latest")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed QAT run differs"
    assert any("activation_post_process" in k for k in a)  # observer state is checkpointed
    # evaluated as what ships (converted to real int8), and the same fp32 weights quantized after training
    for ck, kind in ((qat, "qat_int8"), (fp, "ptq_int8")):
        argv = ["nss/train.py", "--evaluate", "--model-path", str(ck / "ckpt" / "latest"), "--model-type", kind]
        argv += ["--data", str(synth_data), "--eval-data", str(synth_data / "test"), "--out", str(tmp_path / kind)]
        assert (r := run(argv)).returncode == 0, r.stderr[-2000:]
        res = json.loads((tmp_path / kind / "eval" / "results.json").read_text())
        assert res["model_type"] == kind and math.isfinite(res["nss"]["psnr"]) and res["nss"]["psnr"] > 10, res
    r = run(
        [
            "nss/export.py",
            "--model-path",
            str(qat / "ckpt" / "latest"),
            "--export-type",
            "fp32",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert r.returncode == 2 and "qat_int8" in r.stderr  # a QAT checkpoint is not fp32


@pytest.mark.stress
def test_qat_int8_export_is_dynamic_and_checked_at_two_sizes(synth_data, tmp_path):
    _, qat = _fp32_then_qat(synth_data, tmp_path)
    for kind, ck in (("qat_int8", qat),):  # ptq_int8 lowers through the same export_int8 (test_common_quant)
        out = tmp_path / f"export_{kind}"
        r = run(
            [
                "nss/export.py",
                "--model-path",
                str(ck / "ckpt" / "latest"),
                "--export-type",
                kind,
                "--data",
                str(synth_data / "test"),
                "--calibration-data",
                str(synth_data / "train"),
                "--out",
                str(out),
            ],
            timeout=600,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        rep = json.loads((out / "export_report.json").read_text())
        assert rep["pte_matches_eager"] and rep["export_type"] == kind
        c = rep["checks"]  # TOSA reference vs the int8 graph
        assert c["tosa_p99_steps"] <= 1 and c["tosa_mean_steps"] < 0.05, c
        assert set(json.loads((out / "metadata.json").read_text())) == {"export_type", "inputs", "outputs"}
        arm_meta = json.loads((out / f"nss-v1-{kind.upper()}-metadata.json").read_text())
        assert set(arm_meta) == {"inputs", "outputs"} and set(arm_meta["inputs"]["x"]) == {"SINT", "SNORM"}
        assert rep["vgf"]["io_shapes"]["inputs"] == [[-1, -1, -1, 12]] and len(rep["sizes"]) == 2
        for name in ("model.vgf", "model.tosa", "model.pte"):
            assert (out / name).stat().st_size > 0


@pytest.mark.stress
def test_bench_quick(tmp_path):
    """`bash run.sh bench nss --quick`: every kind of row, from this run, with sane values."""
    res = tmp_path / "results"
    r = run(["nss/bench.py", "--quick", "--work", str(tmp_path / "work"), "--results", str(res)], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((res / "results.json").read_text())
    keys = {"usecase", "metric", "variant", "value", "unit", "higher_is_better", "baselines", "command"}
    assert rows and all(set(row) == keys and math.isfinite(row["value"]) for row in rows)
    got = {(row["metric"], row["variant"]): row for row in rows}
    for v in ("fp32", "ptq_int8", "qat_int8"):
        for m in ("psnr", "ssim", "tpsnr"):
            assert set(got[m, v]["baselines"]) - {"goal"} == {"bilinear", "bicubic", "taa"}
        assert "goal" in got["psnr", v]["baselines"]
        assert got["psnr", v]["value"] > got["psnr", v]["baselines"]["bicubic"]  # even 30 steps beat bicubic
    # Timings depend on machine load (the other test worker runs meanwhile), so only their consistency is
    # asserted: share_of_peak is FLOPs / time / the matmul peak of this same run, never a bound on speed.
    flops, peak = got["flops_per_frame", "fp32"]["value"] * 1e9, got["matmul_peak", "fp32 cpu"]["value"] * 1e9
    for v in ("eager_fp32", "eager_bf16", "pte_xnnpack_fp32", "pte_xnnpack_int8"):
        ms = got["ms_per_frame", v]["value"]
        assert ms > 0 and math.isclose(got["share_of_peak", v]["value"], 100 * flops / (ms * 1e-3) / peak, rel_tol=1e-3)
    assert got["pte_max_abs_error", "pte_xnnpack_fp32"]["value"] < 1e-3
    assert {v for m, v in got if m == "psnr_drop_vs_fp32"} == {"ptq_int8", "qat_int8"}
    assert got["flops_per_frame", "fp32"]["value"] > 0.5  # GFLOP of the 136x240 network input (11.8 at 544x960)
    assert 0 <= got["data_loading_share", "fp32"]["value"] < 100 and got["peak_rss", "train.py"]["value"] > 100
    assert {"data", "forward", "backward", "optimizer"} <= {v for m, v in got if m == "step_ms"}
    assert (
        got["train_frames_per_s", "torchrun x2"]["baselines"]["1 process"] > 0
        and got["ddp_speedup", "2 vs 1 process"]["value"] > 0
    )
    md = (res / "results.md").read_text()
    assert "bash run.sh bench nss --quick" in md and "| psnr ↑ | qat_int8 |" in md


def test_help_explains_every_flag():
    r = run(["nss/train.py", "--help"], timeout=60)
    assert r.returncode == 0
    import re

    flags = set(re.findall(r"(--[a-z][a-z-]+)", r.stdout))
    for flag in (
        "--data",
        "--preset",
        "--out",
        "--max-steps",
        "--device",
        "--resume",
        "--finetune",
        "--no-evaluate",
        "--evaluate",
        "--model-path",
        "--recurrent-samples",
        "--log-level",
        "--profile",
        "--amp",
        "--qat",
        "--model-type",
    ):
        assert flag in flags
    from nss.train import build_parser

    for action in build_parser()._actions:
        assert action.help and len(action.help) > 10, f"flag without explanation: {action.option_strings}"


def test_shipped_weights_load_everywhere_and_beat_bilinear(synth_data, tmp_path):
    """nss/weights/nss_v1_high is an fp16 checkpoint directory that --evaluate, --finetune and export.py take."""
    from common.ckpt import load
    from nss.checkpoints import SHIPPED
    from nss.evaluate import evaluate
    from nss.quantize import fp32_net

    weights, _, meta = load(SHIPPED, with_state=False)
    assert all(v.dtype == torch.float16 for v in weights.values()) and meta["model"]["quality"] == "high"
    model = NSS()
    model.net = fp32_net(weights)
    res = evaluate(model, synth_data / "test", "cpu", methods=["bilinear", "nss"], progress=False)
    assert res["nss"]["psnr"] > res["bilinear"]["psnr"] + 1.0, res  # trained, not random weights
    r = _train(synth_data, tmp_path / "ft", 2, ["--finetune", str(SHIPPED)])
    assert r.returncode == 0 and "fine-tuning from" in (tmp_path / "ft" / "output.log").read_text(), r.stderr[-2000:]


def test_subpixel_net_is_the_autoencoder_and_xnnpack_takes_all_of_it():
    """The CPU form of the network (every nearest upsample folded into the conv after it) computes the same
    outputs, and XNNPACK delegates the whole graph (the AutoEncoder itself leaves its three upsamples out)."""
    import torch.export

    from common.ckpt import load
    from common.export import lower_xnnpack, max_abs_error
    from nss.checkpoints import SHIPPED
    from nss.model import SubpixelNet
    from nss.quantize import fp32_net

    net = fp32_net({k: v.float() for k, v in load(SHIPPED, with_state=False)[0].items()})  # trained weights
    cpu = SubpixelNet(net).eval()
    with torch.no_grad():
        for shape in ((2, 12, 16, 24), (1, 12, 40, 8)):
            x = torch.rand(*shape)
            assert max_abs_error(list(cpu(x)), list(net(x))) < 1e-5, shape
    x = torch.rand(1, 12, 16, 16)
    assert lower_xnnpack(torch.export.export(cpu, (x,)), Path("/dev/null"))["non_delegated_ops"] == []
    assert lower_xnnpack(torch.export.export(net, (x,)), Path("/dev/null"))["non_delegated_ops"] == [
        "aten_upsample_nearest2d_vec"
    ]


def test_karis_pair_as_arm():
    """Arm's Karis tonemap pair (nss/post_process.py) and the dataset tonemapper (nss/evaluate.py)."""
    from nss.post_process import inverse_karis, karis

    # forward: negatives -> 0, then / (1 + max) = / 4: (0, 0.125, 0.75); the inverse undoes it
    x = torch.tensor([-1.0, 0.5, 3.0]).view(1, 3, 1, 1)
    assert karis(x).flatten().tolist() == pytest.approx([0.0, 0.125, 0.75])
    assert inverse_karis(karis(x)).flatten().tolist() == pytest.approx([0.0, 0.5, 3.0])
    # the inverse's input is capped at K(65504) = 1 - 2^-16 in float32, so even 1 - 1e-7 (the post-process's own
    # clamp, which alone would invert to ~8.4e6) comes back as 65535
    assert inverse_karis(torch.full((1, 3, 1, 1), 1 - 1e-7)).flatten().tolist() == [65535.0] * 3


def test_tonemaps_invert():
    from nss.evaluate import reinhard
    from nss.post_process import inverse_karis, karis

    x = torch.rand(2, 3, 5, 5) * 10
    assert torch.allclose(inverse_karis(karis(x)), x, rtol=1e-4, atol=1e-4)
    assert reinhard(torch.tensor(1.0)) == 0.5
