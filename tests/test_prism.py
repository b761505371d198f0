"""Prism: shapes of every preset at both scales, parameter counts against the seed's, the GRU state streaming
without backpropagation through time, the GAN rule (only real video is "real"), the 50/50 batch mix, dataset
errors, training (loss falls, exact resume), evaluation against nearest/bilinear, and export matching eager."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from common import ckpt
from prism.dataset import DataError, PrismDataset, batches, write_index, write_sequence
from prism.model import MODELS, SEED_PARAMS, MultiScaleDiscriminator, build_model
from prism.train import PRESETS, gan_losses, stream_clip

ROOT = Path(__file__).resolve().parents[1]


def run(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from prism.synth import make_dataset

    root = tmp_path_factory.mktemp("prism_data")
    make_dataset(root, sequences=6, frames=4, size=32, seed=0, progress=False)
    return root


def _frame(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(n, 3, h, w, generator=g),
        torch.rand(n, 1, h, w, generator=g),
        torch.randn(n, 2, h, w, generator=g),
    )


@pytest.mark.parametrize("preset", ["fast", "balanced", "quality"])
def test_parameter_count_within_10_percent_of_the_seed(preset):
    n = sum(p.numel() for p in build_model(preset).parameters())
    assert abs(n / SEED_PARAMS[preset] - 1) <= 0.10, f"{preset}: {n:,} params vs the seed's {SEED_PARAMS[preset]:,}"


def test_presets_are_ordered_in_size():
    sizes = [sum(p.numel() for p in build_model(k).parameters()) for k in ("fast", "balanced", "quality")]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("preset", ["fast", "balanced", "quality"])
def test_shapes_for_both_scales_and_odd_sizes(preset):
    model = build_model(preset).eval()
    h, w = 36, 52  # not multiples of 8: padded inside, cropped back
    color, depth, motion = _frame(2, h, w)
    state = model.initial_state(2, h, w)
    with torch.no_grad():
        for s in (2, 3):
            frame, new_state = model(color, depth, motion, state, s)
            assert frame.shape == (2, 3, s * h, s * w)
            assert new_state.shape == state.shape == (2, MODELS[preset].widths[3], 5, 7)


def test_untrained_network_is_bilinear_upsampling():
    """The heads start at zero, so training starts from the bilinear baseline and learns the residual."""
    model = build_model("tiny")
    color, depth, motion = _frame(1, 16, 16)
    frame, _ = model(color, depth, motion, model.initial_state(1, 16, 16), 3)
    ref = torch.nn.functional.interpolate(color, scale_factor=3, mode="bilinear", align_corners=False)
    assert torch.allclose(frame, ref)


def _clip(T=2, B=2, h=16, w=16, s=2, real=(True, False)):
    color, depth, motion = _frame(B * T, h, w, seed=1)
    clip = {
        "color": color.view(B, T, 3, h, w).clone().requires_grad_(True),
        "depth": depth.view(B, T, 1, h, w),
        "motion_vectors": motion.view(B, T, 2, h, w),
        "ground_truth": torch.rand(B, T, 3, s * h, s * w),
        "is_real": torch.tensor(real).view(B, 1).expand(B, T),
        "scale": s,
    }
    return clip


def test_state_streams_and_carries_no_gradient_back_in_time():
    torch.manual_seed(0)
    model = build_model("tiny")
    for p in model.parameters():  # a network whose output depends on everything
        torch.nn.init.normal_(p, std=0.2)
    cfg = replace(PRESETS["tiny"], w_temporal=0.0)
    rt = type(
        "RT", (), {"device": torch.device("cpu"), "autocast": lambda self: torch.autocast("cpu", enabled=False)}
    )()
    clip = _clip()
    # the state carries information: frame 1 differs with frame 0's state vs a zero state
    x0 = [clip[k][:, 0].detach() for k in ("color", "depth", "motion_vectors")]
    x1 = [clip[k][:, 1].detach() for k in ("color", "depth", "motion_vectors")]
    with torch.no_grad():
        _, state = model(*x0, model.initial_state(2, 16, 16), 2)
        assert (model(*x1, state, 2)[0] - model(*x1, model.initial_state(2, 16, 16), 2)[0]).abs().max() > 1e-3
    # no BPTT: frame 1's loss sends no gradient into frame 0's input (only frame 0's own loss does)
    loss, _, _ = stream_clip(model, model, clip, rt, cfg)
    loss.backward()
    grad_two_frames = clip["color"].grad[:, 0].clone()
    one = {k: (v[:, :1].detach().requires_grad_(k == "color") if torch.is_tensor(v) else v) for k, v in clip.items()}
    loss1, _, _ = stream_clip(model, model, one, rt, cfg)
    loss1.backward()
    assert torch.allclose(grad_two_frames, one["color"].grad[:, 0] / 2, atol=1e-7)


def test_gan_step_shows_only_real_video_as_real():
    seen = []

    class Spy(MultiScaleDiscriminator):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    disc = Spy(scales=2, n_layers=2, ndf=4)
    gt, pred = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32, requires_grad=True)
    is_real = torch.tensor([True, False, True, False])
    d_loss, g_loss = gan_losses(disc, gt, pred, is_real)
    assert torch.equal(seen[0], gt[[0, 2]])  # "real": the real-video targets only
    assert all(not torch.equal(x[:1], gt[1:2]) for x in seen)  # a synthetic target is never shown at all
    assert torch.equal(seen[1], pred.detach()) and torch.equal(seen[2], pred.detach())
    g_loss.backward()
    assert pred.grad.abs().sum() > 0 and d_loss.item() > 0
    assert gan_losses(disc, gt, pred, torch.zeros(4, dtype=torch.bool)) == (None, None)


def _seq(root, name, T=4, h=16, w=16, s=2, real=False, seed=0):
    c, d, m = _frame(T, h, w, seed)
    write_sequence(
        root / name, color=c, depth=d, motion_vectors=m, ground_truth=torch.rand(T, 3, s * h, s * w), is_real=real
    )


def test_batches_are_one_scale_and_half_real_half_synthetic(tmp_path):
    for i in range(4):
        _seq(tmp_path, f"seq_{i:04d}.safetensors", s=2, real=i < 1, seed=i)  # 2x: 1 real, 3 synthetic sequences
        _seq(tmp_path, f"seq_{4 + i:04d}.safetensors", s=3, seed=10 + i)  # 3x: synthetic only
    write_index(tmp_path)
    ds = PrismDataset(tmp_path, clip_len=2)
    real = lambda i: ds.sequences[ds.clips[i][0]]["is_real"]  # noqa: E731
    kinds = set()
    for step in range(12):
        idx, _ = batches(ds, 4, step, seed=0)
        scales = {ds.scale_of(i) for i in idx}
        assert len(idx) == 4 and len(scales) == 1
        kinds.add(scales.pop())
        if ds.scale_of(idx[0]) == 2:
            assert sum(real(i) for i in idx) == 2  # 50/50 although only 1 of 4 sequences is real
    assert kinds == {2, 3}
    assert batches(ds, 4, 5, seed=0) == batches(ds, 4, 5, seed=0)


def test_dataset_errors_are_one_line(tmp_path):
    _seq(tmp_path, "seq_0000.safetensors")
    _seq(tmp_path, "seq_0001.safetensors", seed=1)
    with pytest.raises(DataError, match="index.json: missing"):
        PrismDataset(tmp_path)
    write_index(tmp_path)
    good = {k: v.clone() for k, v in load_file(str(tmp_path / "seq_0001.safetensors")).items()}
    cases = {
        "missing key 'depth'": {k: v for k, v in good.items() if k != "depth"},
        r"'ground_truth' has shape \[4, 3, 40, 40\]": dict(
            good, ground_truth=torch.zeros(4, 3, 40, 40, dtype=torch.float16)
        ),
        "'color' has dtype I32": dict(good, color=torch.zeros(4, 3, 16, 16, dtype=torch.int32)),
        "'motion_vectors' has shape": dict(good, motion_vectors=torch.zeros(4, 3, 16, 16, dtype=torch.float16)),
    }
    for message, tensors in cases.items():
        save_file(tensors, str(tmp_path / "seq_0001.safetensors"))
        with pytest.raises(DataError, match=message):
            PrismDataset(tmp_path)
    (tmp_path / "seq_0001.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DataError, match="seq_0001.safetensors: not a readable safetensors file"):
        PrismDataset(tmp_path)
    save_file(dict(good, depth=torch.full_like(good["depth"], float("nan"))), str(tmp_path / "seq_0001.safetensors"))
    with pytest.raises(DataError, match="'depth' has NaN or inf"):
        PrismDataset(tmp_path, clip_len=2)[2]
    index = json.loads((tmp_path / "index.json").read_text())
    index["sequences"][1]["file"] = "../../etc/passwd"
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="expected a .safetensors file inside"):
        PrismDataset(tmp_path)
    (tmp_path / "index.json").write_text("{")
    with pytest.raises(DataError, match="not a Prism index"):
        PrismDataset(tmp_path)
    r = run(["prism/train.py", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a Prism index" in r.stderr, r.stderr[-2000:]


def _train(data, out, *extra):
    return run(["prism/train.py", "--preset", "tiny", "--data", str(data), "--out", str(out), *extra])


def test_training_learns_and_beats_bilinear(data, tmp_path):
    r = _train(data, tmp_path, "--max-steps", "60", "--lr", "3e-3", "--w-gan", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    l1 = [row["l1"] for row in rows if row["split"] == "train"]
    assert sum(l1[-3:]) < 0.8 * sum(l1[:3]), l1
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    for key in ("2x", "3x"):
        assert res[key]["prism"]["psnr"] > res[key]["bilinear"]["psnr"], res[key]
    assert (tmp_path / "eval" / "grid_2x.png").stat().st_size > 0 and (
        tmp_path / "eval" / "grid_3x.png"
    ).stat().st_size > 0


def test_gan_training_on_real_video_and_exact_resume(tmp_path):
    """On data marked real (synth --as-real) the discriminator trains from gan_start_step; a run stopped half-way
    and resumed ends bit-identical to an uninterrupted one, discriminator included."""
    from prism.synth import make_dataset

    data, full, half = tmp_path / "data", tmp_path / "full", tmp_path / "half"
    make_dataset(data, sequences=6, frames=2, size=32, seed=3, as_real=True, progress=False)
    r = _train(data, full, "--max-steps", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("d_loss" in row and "g_adv" in row for row in rows), rows
    assert _train(data, half, "--max-steps", "6", "--stop-after", "3").returncode == 0
    assert _train(data, half, "--max-steps", "6", "--resume").returncode == 0
    a = ckpt.load(full / "ckpt" / "latest", with_state=False)[0]
    b = ckpt.load(half / "ckpt" / "latest", with_state=False)[0]
    assert a.keys() == b.keys() and any(k.startswith("disc.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_export_matches_eager(data, tmp_path):
    assert _train(data, tmp_path / "run", "--max-steps", "2", "--w-gan", "0").returncode == 0
    r = run(
        [
            "prism/export.py",
            "--model-path",
            str(tmp_path / "run" / "ckpt" / "latest"),
            "--data",
            str(data),
            "--scale",
            "3",
            "--out",
            str(tmp_path / "export"),
        ]
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert rep["pte_matches_eager"] and rep["vgf"]["delegated_fraction"] == 1.0 and rep["gflops_per_frame"] > 0
    assert rep["output_size"] == [96, 96]


def test_help_explains_every_flag():
    from prism.train import build_parser

    for action in build_parser()._actions:
        assert action.help and len(action.help) > 10, action.option_strings
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    assert {"--model", "--resume", "--amp", "--preset", "--out", "--max-steps", "--data", "--device"} <= flags
    for script in ("prism/export.py", "prism/synth.py", "prism/make_dataset.py"):
        r = run([script, "--help"])
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr


@pytest.mark.stress
def test_int8_export_for_arm_gpus(data, tmp_path):
    """--export-type ptq_int8: Arm's int8 scheme calibrated on the data's frames (with their GRU state); the .vgf
    computes what the TOSA reference computes and both stay within a step or two of PyTorch's int8 graph."""
    assert _train(data, tmp_path / "run", "--max-steps", "2", "--w-gan", "0").returncode == 0
    out = tmp_path / "int8"
    ckpt_dir = str(tmp_path / "run" / "ckpt" / "latest")
    argv = ["prism/export.py", "--model-path", ckpt_dir, "--data", str(data), "--export-type", "ptq_int8"]
    r = run([*argv, "--calibration-frames", "4", "--repeats", "1", "--out", str(out)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "export_report.json").read_text())
    c = rep["checks"]
    assert rep["export_type"] == "ptq_int8" and rep["pte_matches_eager"] and rep["vgf"]["delegated_fraction"] > 0.95
    assert c["tosa_p99_steps"] <= 1 and c["tosa_steps"] <= 4 and c["int8_vs_fp32_max_abs_error"] < 0.1
    assert c.get("vgf_vs_tosa_steps", 0) == 0  # when Vulkan is there, the .vgf equals the TOSA reference
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["export_type"] == "ptq_int8" and len(meta["inputs"]) == 4 and len(meta["outputs"]) == 2


@pytest.fixture(scope="module")
def data128(tmp_path_factory):
    """Frames of 128x128: at 64x64 crops and 128x128 frames the tiny network's attention sees several windows
    per batch, so the QAT graph of the training crops and that of whole frames are the same ops."""
    from prism.synth import make_dataset

    root = tmp_path_factory.mktemp("prism_data128")
    make_dataset(root, sequences=6, frames=4, size=128, seed=0, progress=False)
    return root


def test_qat_capture_maps_every_weight_back_to_prism():
    """The PT2E capture renames parameters; QATPrism maps each back to its Prism name, so the fp32 view holds
    the source weights exactly and, after training, the trained ones of its scale (reloading a checkpoint is
    pinned by the exact resume of the next test)."""
    from prism.quantize import QATPrism

    torch.manual_seed(0)
    model = build_model("tiny")
    for p in model.parameters():  # non-trivial heads (they start at zero)
        p.data.normal_(0, 0.05)
    qat = QATPrism(model, 2, (2, 64, 64))
    assert len(qat.names) == len(list(qat.graph.parameters())) == len(list(model.parameters())) - 2  # no 3x head
    view = qat.fp32().state_dict()
    assert all(torch.equal(view[k], v) for k, v in model.state_dict().items())
    opt = torch.optim.SGD(qat.parameters(), lr=0.1)
    x = _frame(2, 64, 64)
    for _ in range(2):
        frame, _ = qat(*x, qat.initial_state(2, 64, 64), 2)
        opt.zero_grad()
        frame.mean().backward()
        opt.step()
    trained = qat.fp32().state_dict()
    qat.eval()
    x = (*_frame(2, 64, 64, seed=1), qat.initial_state(2, 64, 64))
    with torch.no_grad():  # the fp32 view is the graph without its fake-quant: close to it, not equal
        a, b = qat(*x)[0], qat.fp32()(*x, 2)[0]
    assert 0 < (a - b).abs().max() < 0.1
    assert not torch.equal(trained["heads.2.0.weight"], view["heads.2.0.weight"])  # QAT moved the 2x head
    assert torch.equal(trained["heads.3.0.weight"], view["heads.3.0.weight"])  # and left the 3x one alone
    with pytest.raises(ValueError, match="2x graph"):
        qat(*x, 3)


def _fp32_checkpoint(tmp_path):
    """A tiny fp32 checkpoint as train.py writes it (weights "model.*", meta), without running train.py."""
    torch.manual_seed(0)
    model = build_model("tiny")
    meta = {"step": 0, "config": {"model": "tiny"}, "model_type": "fp32"}
    return ckpt.save(tmp_path, "fp32", {f"model.{k}": v for k, v in model.state_dict().items()}, {}, meta)


def test_qat_fine_tune_resumes_exactly_and_evaluates_as_int8(data128, tmp_path):
    """--qat --finetune: one scale under Arm's int8 fake-quant; stopped and resumed it ends bit-identical; the
    report and --evaluate score the converted int8 graph; the wrong inputs give one-line errors."""
    base = ["--crop", "64"]
    fp32 = str(_fp32_checkpoint(tmp_path))
    r = _train(data128, tmp_path / "full", *base, "--qat", "--finetune", fp32)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "int8 (the QAT graph converted), 2x" in r.stderr + r.stdout
    res = json.loads((tmp_path / "full" / "eval" / "results.json").read_text())
    assert set(res) == {"2x", "score"} and res["2x"]["prism"]["psnr"] > res["2x"]["nearest"]["psnr"]
    assert _train(data128, tmp_path / "half", *base, "--qat", "--finetune", fp32, "--stop-after", "2").returncode == 0
    assert _train(data128, tmp_path / "half", *base, "--resume").returncode == 0  # a QAT run resumes as QAT
    a, _, meta = ckpt.load(tmp_path / "full" / "ckpt" / "latest", with_state=False)
    b = ckpt.load(tmp_path / "half" / "ckpt" / "latest", with_state=False)[0]
    assert meta["model_type"] == "qat_int8" and meta["step"] == PRESETS["tiny"].qat_steps
    assert meta["qat"] == {"scale": 2, "shape": [2, 64, 64]}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    qat = str(tmp_path / "full" / "ckpt" / "latest")
    r = _train(data128, tmp_path / "ev", *base, "--evaluate", "--model-path", qat)
    assert r.returncode == 0 and "| 2x | **Prism** |" in r.stderr + r.stdout, r.stderr[-2000:]
    r = _train(data128, tmp_path / "bad", *base, "--qat", "--finetune", qat)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--finetune takes an fp32" in r.stderr, r.stderr
    r = run(["prism/export.py", "--model-path", qat, "--export-type", "ptq_int8", "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and "use --export-type qat_int8" in r.stderr, r.stderr[-2000:]


@pytest.mark.stress
def test_qat_int8_export_for_arm_gpus(data128, tmp_path):
    """--export-type qat_int8: the QAT graph converted at the data's size; the .vgf is one delegate that computes
    what the TOSA reference computes, within a few int8 steps of PyTorch's int8 graph; held-out int8 vs fp32."""
    assert _train(data128, tmp_path / "fp32", "--max-steps", "4", "--w-gan", "0").returncode == 0
    fp32 = str(tmp_path / "fp32" / "ckpt" / "latest")
    qat = tmp_path / "qat"
    assert _train(data128, qat, "--crop", "64", "--qat", "--finetune", fp32, "--val-sequences", "2").returncode == 0
    out = tmp_path / "export"
    argv = ["prism/export.py", "--model-path", str(qat / "ckpt" / "latest"), "--data", str(data128)]
    r = run([*argv, "--export-type", "qat_int8", "--calibration-frames", "2", "--repeats", "1", "--out", str(out)])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "export_report.json").read_text())
    c = rep["checks"]
    assert rep["export_type"] == "qat_int8" and rep["pte_matches_eager"] and rep["vgf"]["delegated_fraction"] > 0.95
    assert c["tosa_p99_steps"] <= 1 and c["tosa_steps"] <= 8 and c.get("vgf_vs_tosa_steps", 0) == 0
    held = rep["heldout"]
    assert held["frames"] > 0 and abs(held["qat_int8"]["psnr"] - held["fp32"]["psnr"]) < 1.0, held


def test_the_shipped_weights_beat_bilinear_on_unseen_rooms(tmp_path):
    """prism/weights/prism_fast, the default of export.py and train.py --evaluate, streamed from a zero state
    through built-in rooms no training saw, at 2x and 3x: well above bilinear upsampling."""
    from prism.evaluate import evaluate_checkpoint
    from prism.synth import make_dataset
    from prism.train import SHIPPED

    make_dataset(tmp_path, sequences=2, frames=4, size=128, seed=4242, progress=False)
    res = evaluate_checkpoint(SHIPPED, PrismDataset(tmp_path, clip_len=1), "cpu")
    for key in ("2x", "3x"):
        assert res[key]["prism"]["psnr"] > res[key]["bilinear"]["psnr"] + 2, res[key]
        assert res[key]["prism"]["ssim"] > res[key]["bilinear"]["ssim"], res[key]
