"""NeuroPBR end to end on tiny built-in data: the model, training with and without the GAN (loss falls), exact
resume, evaluation against the baselines, inference on a PNG folder, export, and clear CLI errors.
(The data layout and its rules: test_neuropbr_data.py; the renderer: test_neuropbr_synth.py.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuropbr.model import Generator, ModelConfig, PatchGAN, stack_maps

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def run(args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from neuropbr.synth import make_dataset

    root = tmp_path_factory.mktemp("pbr") / "data"
    make_dataset(root, 10, size=64, seed=1, progress=False)
    return root


def test_generator_and_discriminator_shapes():
    for cfg in (
        ModelConfig(encoder_stride=2, transformer_dim=32, transformer_heads=2, transformer_depth=1),
        ModelConfig(encoder_stride=2, use_transformer=False, transformer_dim=32),
    ):
        out = Generator(cfg)(torch.rand(2, 3, 3, 64, 64))
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "albedo": (2, 3, 64, 64),
            "roughness": (2, 1, 64, 64),
            "metallic": (2, 1, 64, 64),
            "normal": (2, 3, 64, 64),
        }
        assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, 64, 64), atol=1e-4)
        assert 0 <= out["albedo"].min() and out["albedo"].max() <= 1
    assert PatchGAN(3, 8)(stack_maps(out)).shape == (2, 1, 6, 6)


def _train(data, out, extra=()):
    return run(["neuropbr/train.py", "--data", str(data), "--out", str(out), "--preset", "tiny", "--seed", "3", *extra])


def _losses(out, key="l1"):
    return [r[key] for r in map(json.loads, open(out / "metrics.jsonl")) if r["split"] == "train"]


def test_train_without_gan_loss_falls_and_beats_baselines(data, tmp_path):
    out = tmp_path / "nogan"
    r = _train(data, out, ["--no-gan", "--epochs", "6"])
    assert r.returncode == 0, r.stderr[-3000:]
    l1 = _losses(out)
    assert sum(l1[-3:]) / 3 < 0.8 * sum(l1[:3]) / 3, l1
    res = json.loads((out / "eval" / "results.json").read_text())
    for method in ("model", "mean_material", "view_average"):
        r = res[method]
        assert 0 < r["albedo"]["psnr"] < 60 and 0 <= r["roughness"]["mae"] <= 1 and 0 <= r["normal"]["angle_p95"] <= 180
    assert list((out / "eval").glob("sample_*.png"))


def test_train_with_gan_and_exact_resume(data, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    r = _train(data, full)  # tiny: GAN from epoch 1 of 2
    assert r.returncode == 0, r.stderr[-3000:]
    assert any("d_loss" in row for row in map(json.loads, open(full / "metrics.jsonl")))
    assert _train(data, split, ["--stop-after", "5"]).returncode == 0
    r = _train(data, split, ["--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    from common.ckpt import load

    a, b = load(full / "ckpt" / "latest")[0], load(split / "ckpt" / "latest")[0]
    assert any(k.startswith("disc.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    assert _losses(split) == _losses(full)


@pytest.mark.slow
def test_infer_on_a_png_folder_and_export(data, tmp_path):
    out = tmp_path / "run"
    assert _train(data, out, ["--no-gan", "--max-steps", "2"]).returncode == 0
    views = tmp_path / "views"
    shutil.copytree(next((data / "input").glob("*/sample_*")), views)
    r = run(
        [
            "neuropbr/infer.py",
            "--checkpoint",
            str(out / "ckpt" / "latest"),
            "--input-dir",
            str(views),
            "--out",
            str(tmp_path / "maps"),
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("albedo", "roughness", "metallic", "normal", "input_0"):
        assert (tmp_path / "maps" / f"{name}.png").stat().st_size > 0
    r = run(
        [
            "neuropbr/export.py",
            "--model-path",
            str(out / "ckpt" / "latest"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "export"),
        ]
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert rep["pte_matches_eager"] and rep["vgf"]["delegated_fraction"] > 0.9
    assert (tmp_path / "export" / "model.vgf").stat().st_size > 0


@pytest.mark.stress
def test_int8_export_scores_int8_against_fp32_on_heldout_materials(data, tmp_path):
    out = tmp_path / "run"
    assert _train(data, out, ["--no-gan", "--max-steps", "2"]).returncode == 0
    r = run(
        [
            "neuropbr/export.py",
            "--model-path",
            str(out / "ckpt" / "latest"),
            "--data",
            str(data),
            "--export-type",
            "ptq_int8",
            "--calibration-samples",
            "2",
            "--eval-samples",
            "2",
            "--no-vgf",
            "--out",
            str(tmp_path / "export_int8"),
        ]
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "export_int8" / "export_report.json").read_text())
    assert (
        rep["pte_matches_eager"] and rep["checks"]["pte_p99_steps"] <= 1 and rep["xnnpack"]["delegated_fraction"] > 0.9
    )
    assert rep["heldout"]["samples"] == 2 and set(rep["heldout"]) == {"fp32", "ptq_int8", "samples"}, rep["heldout"]


def test_batchnorm_folds_into_the_convolutions_before_qat():
    """QAT starts from the generator with every BatchNorm folded into its conv (running statistics): same output,
    no BatchNorm left (left in, convert_pt2e keeps them and the VGF splits into many graphs)."""
    from neuropbr.quantize import fold_batchnorm

    torch.manual_seed(0)
    gen = Generator(ModelConfig(encoder_stride=2, transformer_dim=32, transformer_heads=2, transformer_depth=1))
    gen.train()
    gen(torch.rand(4, 3, 3, 64, 64))  # running statistics away from their 0 / 1 start
    gen.eval()
    count = lambda m: sum(isinstance(b, torch.nn.BatchNorm2d) for b in m.modules())  # noqa: E731
    n = count(gen)
    folded = fold_batchnorm(gen)
    assert count(folded) == 0 and count(gen) == n > 30  # the original is untouched
    x = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        a, b = gen(x), folded(x)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def _fp32_then_qat(data, tmp_path):
    """A tiny fp32 checkpoint as train.py writes it (made here, not trained), then --qat --finetune from it."""
    from common import ckpt
    from neuropbr.train import PRESETS, model_config

    torch.manual_seed(0)
    gen = Generator(model_config(PRESETS["tiny"]))
    weights = {f"gen.{k}": v for k, v in gen.state_dict().items()}
    ckpt.save(tmp_path / "fp32" / "ckpt", "latest", weights, {}, {"step": 0, "model_type": "fp32"})
    finetune = ["--qat", "--finetune", str(tmp_path / "fp32" / "ckpt" / "latest")]
    r = _train(data, tmp_path / "qat", finetune)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_qat_fine_tune_resumes_exactly_and_evaluates_as_int8(data, tmp_path):
    """--qat --finetune: the generator, BatchNorms folded, under Arm's int8 fake-quant; stopped and resumed it
    ends bit-identical; the report and --evaluate score the converted int8 graph."""
    from common.ckpt import load

    _fp32_then_qat(data, tmp_path)
    finetune = ["--qat", "--finetune", str(tmp_path / "fp32" / "ckpt" / "latest")]
    assert _train(data, tmp_path / "split", [*finetune, "--stop-after", "2"]).returncode == 0
    assert _train(data, tmp_path / "split", ["--resume"]).returncode == 0  # a QAT run resumes as QAT
    (a, _, meta), b = load(tmp_path / "qat" / "ckpt" / "latest"), load(tmp_path / "split" / "ckpt" / "latest")[0]
    assert meta["model_type"] == "qat_int8" and meta["step"] == 4 and meta["qat"] == {"shape": [2, 64]}
    assert any(k.startswith("qat.") for k in a) and any(k.startswith("model.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = json.loads((tmp_path / "qat" / "eval" / "results.json").read_text())
    qat = str(tmp_path / "qat" / "ckpt" / "latest")
    r = _train(data, tmp_path / "ev", ["--evaluate", "--model-path", qat])
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((tmp_path / "ev" / "eval" / "results.json").read_text())
    assert again["model"]["albedo"]["psnr"] == pytest.approx(res["model"]["albedo"]["psnr"], abs=1e-6)
    r = _train(data, tmp_path / "bad", ["--qat", "--finetune", qat])
    assert r.returncode == 2 and "--finetune takes an fp32" in r.stderr, r.stderr[-2000:]


@pytest.mark.stress
def test_qat_int8_export_for_arm_gpus(data, tmp_path):
    """--export-type qat_int8: the QAT graph converted; the .vgf is one delegate that equals the TOSA reference,
    within a step of PyTorch's int8 graph on 99% of values; int8 vs fp32 on held-out materials."""
    _fp32_then_qat(data, tmp_path)
    out = tmp_path / "export"
    argv = ["neuropbr/export.py", "--model-path", str(tmp_path / "qat" / "ckpt" / "latest"), "--data", str(data)]
    r = run(
        [*argv, "--export-type", "qat_int8", "--calibration-samples", "2", "--eval-samples", "2", "--out", str(out)]
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "export_report.json").read_text())
    c = rep["checks"]
    assert rep["export_type"] == "qat_int8" and rep["pte_matches_eager"] and rep["vgf"]["delegated_fraction"] > 0.95
    assert c["tosa_p99_steps"] <= 1 and c.get("vgf_vs_tosa_steps", 0) == 0
    assert set(rep["heldout"]) == {"fp32", "qat_int8", "samples"}, rep["heldout"]


def test_cli_errors_are_one_line_exit_2(data, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "input" / "render_metadata.json").unlink()
    r = _train(bad, tmp_path / "x")
    assert r.returncode == 2 and "render_metadata.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1, (
        r.stderr
    )
    r = run(
        [
            "neuropbr/infer.py",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--input-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert r.returncode == 2 and "nope" in r.stderr


def test_help_explains_every_flag():
    from neuropbr.train import build_parser

    for action in build_parser()._actions:
        assert action.help and len(action.help) > 10, action.option_strings
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    assert {
        "--input-dir",
        "--output-dir",
        "--config",
        "--render-curriculum",
        "--checkpoint-dir",
        "--resume",
        "--device",
        "--batch-size",
        "--preset",
        "--out",
        "--max-steps",
    } <= flags


def test_tiled_inference_equals_one_whole_pass():
    """infer.predict cuts a 512x512 input into 16 tiles of 128 px, each with the receptive field's context
    around it: the maps equal one whole-image pass (local attention, the default); odd sizes are padded."""
    from neuropbr.infer import predict
    from neuropbr.train import PRESETS, model_config

    torch.manual_seed(0)
    gen = Generator(model_config(PRESETS["tiny"])).eval()
    views = torch.rand(3, 3, 512, 512)
    whole, tiled = predict(gen, views, tile=4096), predict(gen, views, tile=128)
    for k in whole:
        assert whole[k].shape == tiled[k].shape == (whole[k].shape[0], 512, 512)
        assert (whole[k] - tiled[k]).abs().max() < 1e-3, k
    odd = predict(gen, views[..., :200, :150], tile=64)
    assert odd["albedo"].shape == (3, 200, 150)
    narrow = predict(gen, views[..., :64, :64], tile=4096)
    assert (narrow["normal"] - odd["normal"][:, :64, :64]).abs().max() > 0  # context matters: a real test


def test_the_shipped_weights_recover_a_held_out_material(tmp_path):
    """`python neuropbr/infer.py --input-dir DIR --out OUT` with no checkpoint runs the shipped weights
    (neuropbr/weights/neuropbr) on three views of built-in materials no training saw, and recovers them: albedo
    well above the view average, normals closer than a flat plane, metallic right."""
    from torchvision.io import ImageReadMode

    from neuropbr.dataset import PBRDataset, read_png
    from neuropbr.evaluate import scores
    from neuropbr.synth import make_dataset

    make_dataset(tmp_path / "d", 4, size=128, seed=4242, clean_fraction=1.0, progress=False)
    ds = PBRDataset.from_root(tmp_path / "d")
    for i in (2, 3):  # planks, stones (families 2 and 3 of 8)
        item = ds[i]
        folder = tmp_path / "d" / "input" / item["source"] / item["name"]
        r = run(["neuropbr/infer.py", "--input-dir", str(folder), "--out", str(tmp_path / f"maps{i}")])
        assert r.returncode == 0, r.stderr[-2000:]
        assert "peak RSS" in r.stdout
        maps = {
            k: read_png(
                tmp_path / f"maps{i}" / f"{k}.png",
                ImageReadMode.UNCHANGED if k in ("roughness", "metallic") else ImageReadMode.RGB,
            )[None]
            for k in ("albedo", "roughness", "metallic", "normal")
        }
        maps = {k: v[:, :1] if k in ("roughness", "metallic") else v for k, v in maps.items()}
        maps["normal"] = torch.nn.functional.normalize(maps["normal"] * 2 - 1, dim=1)
        got = scores(maps, {k: item[k][None] for k in maps})
        flat = scores(
            {**maps, "normal": torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand_as(maps["normal"])},
            {k: item[k][None] for k in maps},
        )
        view_avg = scores({**maps, "albedo": item["views"].mean(0, keepdim=True)}, {k: item[k][None] for k in maps})
        assert got["albedo"]["psnr"] > view_avg["albedo"]["psnr"] + 3, (got["albedo"], view_avg["albedo"])
        assert got["normal"]["angle_mean"] < 0.85 * flat["normal"]["angle_mean"], (got["normal"], flat["normal"])
        assert got["metallic"]["mae"] < 0.15, got["metallic"]
