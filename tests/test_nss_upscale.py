"""nss/upscale.py on tiny generated captures: one EXR and one PNG per frame at 2x, the PNG being the EXR
exposed, tonemapped and sRGB-encoded, the comparison GIF, --max-frames, the .pte backend, and one-line errors."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.images import load_png, srgb
from nss import upscale
from nss.dataset import stream
from nss.evaluate import tonemap
from nss.synth import make_dataset

OpenEXR = pytest.importorskip("OpenEXR")

ROOT = Path(__file__).resolve().parents[1]
H = W = 32  # high res; the captures' low res is 16 x 16
FRAMES = 3


def run(*argv):
    return upscale.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("nss_upscale")
    make_dataset(root / "caps", 2, FRAMES, (H, W), seed=7, progress=False)
    return root


@pytest.fixture(scope="module")
def upscaled(captures):
    """The whole folder upscaled once, with the comparison GIF."""
    out = captures / "out"
    run("--data", captures / "caps", "--out", out, "--compare", "gif", "--device", "cpu")
    return out


def read_exr(path):
    ch = OpenEXR.File(str(path), separate_channels=True).channels()
    return np.stack([ch[c].pixels.astype(np.float32) for c in "RGB"])


def test_one_exr_and_png_per_frame_at_2x(captures, upscaled):
    for cap in sorted((captures / "caps").glob("*.safetensors")):
        dest = upscaled / cap.stem
        pngs, exrs = sorted((dest / "png").iterdir()), sorted((dest / "exr").iterdir())
        assert [p.name for p in pngs] == [f"{t:04d}.png" for t in range(FRAMES)]
        assert [p.name for p in exrs] == [f"{t:04d}.exr" for t in range(FRAMES)]
        for (f, _), png, exr in zip(stream(cap), pngs, exrs):
            assert Image.open(png).size == (W, H) and Image.open(png).mode == "RGB"
            linear = torch.from_numpy(read_exr(exr))
            assert linear.shape == (3, H, W) and torch.isfinite(linear).all() and linear.amax() > 0
            # the PNG is the EXR exposed, Reinhard-tonemapped and sRGB-encoded (8-bit and half rounding apart)
            want = srgb(tonemap(linear[None] * f["exposure"]))[0]
            assert (load_png(png) - want).abs().max() <= 2 / 255
            assert (load_png(png) - want).abs().mean() < 0.5 / 255


@torch.no_grad()
def test_exrs_are_nss_with_history_carried(captures, upscaled):
    """The EXRs are what evaluate.py's loop computes: history carried frame to frame, reset at camera cuts."""
    from nss.checkpoints import load
    from nss.model import NSS, NSSConfig
    from nss.quantize import network

    weights, meta = load(upscale.SHIPPED)
    model = NSS(NSSConfig(**meta.get("model", {})))
    model.net = network(weights, "fp32")[0]
    model.eval()
    cap = captures / "caps" / "seq_0000.safetensors"
    for t, (f, new_seq) in enumerate(stream(cap)):
        if new_seq:
            state = model.init_state(f)
        out, state = model(f, state)
        want = out["output_linear"][0]
        assert torch.allclose(
            torch.from_numpy(read_exr(upscaled / cap.stem / "exr" / f"{t:04d}.exr")), want, rtol=2e-3, atol=1e-4
        )


def test_compare_gif_has_a_frame_per_capture_frame(captures, upscaled):
    for cap in sorted((captures / "caps").glob("*.safetensors")):
        gif = Image.open(upscaled / cap.stem / "compare.gif")
        assert gif.n_frames == FRAMES
        assert gif.size == (3 * W, H)  # bilinear | NSS | ground truth


def test_max_frames_single_file_no_exr(captures, capsys):
    cap = captures / "caps" / "seq_0001.safetensors"
    out = captures / "out_max"
    run("--data", cap, "--out", out, "--max-frames", 2, "--no-exr", "--device", "cpu")
    assert sorted(p.name for p in (out / "seq_0001" / "png").iterdir()) == ["0000.png", "0001.png"]
    assert not (out / "seq_0001" / "exr").exists() and not (out / "seq_0001" / "compare.gif").exists()
    report = capsys.readouterr().out.strip().splitlines()[-1]
    assert report.startswith("seq_0001.safetensors: 2 frames, PSNR NSS ") and " dB, bilinear " in report


def test_without_openexr(captures, monkeypatch, capsys):
    monkeypatch.setattr(upscale, "OpenEXR", None)
    out = captures / "out_noexr"
    with pytest.raises(SystemExit) as e:
        run("--data", captures / "caps", "--out", out, "--exr")
    assert e.value.code == 2 and "OpenEXR" in capsys.readouterr().err and not out.exists()
    run("--data", captures / "caps" / "seq_0000.safetensors", "--out", out, "--max-frames", 1, "--device", "cpu")
    assert "note: OpenEXR is not installed" in capsys.readouterr().out
    assert [p.name for p in (out / "seq_0000").iterdir()] == ["png"]


def one_line_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run(*argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_exits_2_with_one_line(captures, tmp_path, capsys):
    assert "no such file" in one_line_error(["--data", tmp_path / "missing", "--out", tmp_path / "o"], capsys)
    text = tmp_path / "notes.safetensors"
    text.write_text("not a capture\n")
    assert str(text) in one_line_error(["--data", text, "--out", tmp_path / "o"], capsys)
    (tmp_path / "empty").mkdir()
    assert "no *.safetensors" in one_line_error(["--data", tmp_path / "empty", "--out", tmp_path / "o"], capsys)
    cap = captures / "caps" / "seq_0000.safetensors"
    err = one_line_error(["--data", cap, "--out", tmp_path / "o", "--model-path", tmp_path / "nockpt"], capsys)
    assert str(tmp_path / "nockpt") in err
    if importlib.util.find_spec("av") is None:
        assert "pip install av" in one_line_error(["--data", cap, "--out", tmp_path / "o", "--compare", "mp4"], capsys)
    assert not (tmp_path / "o").exists()


def test_cli_missing_path_exit_code(tmp_path):
    r = subprocess.run(
        [sys.executable, "nss/upscale.py", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


def test_pte_backend_matches_eager_and_checks_size(captures, upscaled, tmp_path, capsys):
    pytest.importorskip("executorch")
    from common.export import lower_xnnpack
    from nss.checkpoints import load
    from nss.quantize import fp32_net

    net = fp32_net(load(upscale.SHIPPED)[0])
    pte = tmp_path / "model.pte"
    lower_xnnpack(torch.export.export(net, (torch.rand(1, 12, 16, 16),)), pte)  # 16 x 16: already a multiple of 8
    cap = captures / "caps" / "seq_0000.safetensors"
    run("--data", cap, "--out", tmp_path / "o", "--pte", pte, "--no-exr", "--device", "cpu")
    for t in range(FRAMES):
        a, b = (
            load_png(tmp_path / "o" / "seq_0000" / "png" / f"{t:04d}.png"),
            load_png(upscaled / "seq_0000" / "png" / f"{t:04d}.png"),
        )
        assert (a - b).abs().max() <= 1 / 255
    capsys.readouterr()  # ExecuTorch's runtime logs as it starts
    other = tmp_path / "other"
    make_dataset(other, 1, 1, (48, 32), seed=8, progress=False)  # low res 24 x 16: network input 24 x 16
    err = one_line_error(["--data", other, "--out", tmp_path / "o2", "--pte", pte, "--device", "cpu"], capsys)
    assert "(1, 12, 16, 16)" in err and "(1, 12, 24, 16)" in err
