"""prism/make_dataset.py on a tiny generated frame folder (a texture panning 4 px per frame), with
random-init RAFT-small weights and a 1-conv exported depth program: the Prism shard layout at 2x and 3x,
game_style, and one-line errors (exit 2, nothing half-written). Random RAFT gives meaningless flow, so
only the motion format is checked."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from prism import make_dataset
from prism.dataset import DataError, PrismDataset

REPO = Path(__file__).resolve().parents[1]
FRAMES, SIZE, PAN = 6, 128, 4  # 6 frames of 128x128, panning PAN pixels right per frame


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("prism_md")
    videos = root / "videos" / "pan"
    videos.mkdir(parents=True)
    yy, xx = np.mgrid[0:SIZE, 0 : SIZE + PAN * FRAMES].astype(np.float32)
    texture = np.stack(
        [0.5 + 0.5 * np.sin(xx / 5 + yy / 9), 0.5 + 0.5 * np.cos(yy / 4), ((xx // 16 + yy // 16) % 2) * 0.8], -1
    )
    for t in range(FRAMES):
        crop = texture[:, PAN * (FRAMES - t) : PAN * (FRAMES - t) + SIZE]  # content moves +PAN in x per frame
        Image.fromarray((crop * 255).astype(np.uint8)).save(videos / f"{t:04d}.png")
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    raft = root / "raft_small.safetensors"
    save_file({k: v.contiguous() for k, v in raft_small().state_dict().items()}, str(raft))
    depth = root / "depth.pt2"
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Sigmoid()).eval()
    torch.export.save(torch.export.export(conv, (torch.rand(1, 3, 64, 64),)), str(depth))  # static 64x64 input
    return {"root": root, "videos": videos.parent, "raft": raft, "depth": depth}


def cli(a, out, *extra):
    return [
        "--videos",
        str(a["videos"]),
        "--out",
        str(out),
        "--raft-weights",
        str(a["raft"]),
        "--depth-model",
        str(a["depth"]),
        "--frames-per-seq",
        "3",
        "--raft-iters",
        "2",
        *extra,
    ]


def run_main(argv, capsys):
    """make_dataset.main in-process -> (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as e:
        make_dataset.main(argv)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def check_dataset(out, h, w, scale, sequences=2):
    index = json.loads((out / "index.json").read_text())
    assert [s["frames"] for s in index["sequences"]] == [3] * sequences
    assert all(s["scale"] == scale and s["size"] == [h, w] and s["is_real"] for s in index["sequences"])
    ds = PrismDataset(out, clip_len=3)
    assert len(ds) == sequences
    for clip in ds:
        assert clip["color"].shape == (3, 3, h, w) and clip["ground_truth"].shape == (3, 3, scale * h, scale * w)
        assert clip["depth"].shape == (3, 1, h, w) and clip["motion_vectors"].shape == (3, 2, h, w)
        assert clip["is_real"].all() and clip["scale"] == scale
        assert 0 <= clip["depth"].min() and clip["depth"].max() <= 1
        assert clip["color"].min() >= 0 and clip["color"].max() <= 1
        assert (clip["motion_vectors"][0] == 0).all()  # frame 0 of a sequence has no previous frame
        assert torch.isfinite(clip["motion_vectors"]).all()
    return ds


def test_cli_scale2(assets, tmp_path):
    out = tmp_path / "out2"
    r = subprocess.run(
        [sys.executable, "prism/make_dataset.py", *cli(assets, out)], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    ds = check_dataset(out, 64, 64, 2)
    clip = ds[0]
    assert clip["depth"].min() == 0 and clip["depth"].max() == 1  # normalised over the sequence
    gt = torch.from_numpy(
        np.asarray(Image.open(assets["videos"] / "pan" / "0000.png"), dtype=np.float32) / 255
    ).permute(2, 0, 1)
    assert (clip["ground_truth"][0] - gt).abs().max() < 2e-3  # 128 -> 128: the target is the real frame


def test_scale3_size_and_no_depth(assets, tmp_path, capsys):
    out = tmp_path / "out3"
    make_dataset.main(cli(assets, out, "--scale", "3", "--max-frames", "3"))
    check_dataset(out, 40, 40, 3, sequences=1)  # 128 / 3 = 42 -> 40 (multiple of 8)
    out = tmp_path / "out3none"
    argv = cli(assets, out, "--scale", "3", "--size", "24", "32", "--max-frames", "3")
    argv[argv.index("--depth-model") + 1] = "none"
    make_dataset.main(argv)
    assert "warning" in capsys.readouterr().err
    ds = PrismDataset(out, clip_len=3)
    assert len(ds) == 1 and ds[0]["ground_truth"].shape == (3, 3, 72, 96) and (ds[0]["depth"] == 0.5).all()


def test_errors(assets, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    code, err = run_main(cli(assets, tmp_path / "o1", "--raft-weights", str(missing)), capsys)
    assert code == 2 and len(err) == 1 and "nope.safetensors" in err[0]
    (tmp_path / "empty").mkdir()
    code, err = run_main(cli(assets, tmp_path / "o2", "--videos", str(tmp_path / "empty")), capsys)
    assert code == 2 and len(err) == 1 and "empty" in err[0]
    code, err = run_main(cli(assets, tmp_path / "o3", "--raft", "large"), capsys)  # small weights, large model
    assert code == 2 and len(err) == 1 and "RAFT-large" in err[0]
    other = tmp_path / "conv.pth"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), other)
    code, err = run_main(cli(assets, tmp_path / "o4", "--raft-weights", str(other)), capsys)
    assert code == 2 and len(err) == 1 and "do not fit" in err[0]
    bad_depth = tmp_path / "depth.pt2"
    bad_depth.write_bytes(b"not a program")
    code, err = run_main(cli(assets, tmp_path / "o5", "--depth-model", str(bad_depth)), capsys)
    assert code == 2 and len(err) == 1 and "depth.pt2" in err[0]
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3", "o4", "o5"))


def test_bad_inputs(assets, tmp_path, capsys):
    videos = tmp_path / "videos"
    (videos / "short").mkdir(parents=True)
    for t in range(2):
        Image.new("RGB", (64, 64)).save(videos / "short" / f"{t}.png")
    code, err = run_main(cli(assets, tmp_path / "o", "--videos", str(videos)), capsys)
    assert code == 2 and len(err) == 1 and "short" in err[0] and "frames-per-seq" in err[0]
    Image.new("RGB", (48, 64)).save(videos / "short" / "2.png")
    code, err = run_main(cli(assets, tmp_path / "o", "--videos", str(videos)), capsys)
    assert code == 2 and len(err) == 1 and "2.png" in err[0] and "size" in err[0]
    Image.new("RGB", (64, 64)).save(videos / "short" / "2.png")  # the folder is fine again
    (videos / "clip.mp4").write_bytes(b"\0" * 64)  # undecodable (or no decoder installed)
    code, err = run_main(cli(assets, tmp_path / "o", "--videos", str(videos)), capsys)
    assert code == 2 and len(err) == 1 and "clip.mp4" in err[0]
    assert not (tmp_path / "o").exists()


def test_failure_leaves_nothing(assets, tmp_path, capsys, monkeypatch):
    def broken_index(root):
        raise DataError(f"{root}: broken on purpose")

    monkeypatch.setattr(make_dataset, "write_index", broken_index)
    out = tmp_path / "o"
    code, err = run_main(cli(assets, out, "--max-frames", "3", "--depth-model", "none"), capsys)
    assert (
        code == 2 and [e for e in err if "error" in e] == [err[-1]] and "broken on purpose" in err[-1]
    )  # after the tqdm bar
    assert not list(out.glob("*.safetensors")) and not (out / "index.json").exists()


def test_motion_vectors_scaling():
    """RAFT runs at >= 128 px (multiples of 8); its flow is resized and rescaled to input pixels."""
    seen = []

    def fake_raft(img1, img2, num_flow_updates):
        seen.append((img1.shape, num_flow_updates))
        return [torch.tensor([8.0, -4.0]).view(1, 2, 1, 1).expand(len(img1), 2, *img1.shape[-2:])]

    mv = make_dataset.motion_vectors(fake_raft, torch.rand(5, 3, 96, 144), (32, 48), iters=3, batch=3)
    assert [s for s, _ in seen] == [(3, 3, 128, 128), (1, 3, 128, 128)] and seen[0][1] == 3
    assert mv.shape == (5, 2, 32, 48) and (mv[0] == 0).all()
    assert torch.allclose(mv[1:, 0], torch.full((4, 32, 48), 8 * 48 / 128)) and torch.allclose(
        mv[1:, 1], torch.full((4, 32, 48), -4 * 32 / 128)
    )


def test_game_style():
    torch.manual_seed(0)
    frame = torch.rand(2, 3, 32, 48)
    styled = make_dataset.game_style(frame)
    assert styled.shape == frame.shape and styled.dtype == frame.dtype
    assert styled.min() >= 0 and styled.max() <= 1 and (styled - frame).abs().mean() > 0.02
    assert len(torch.unique(styled)) <= 32  # 5-bit banding
    assert torch.equal(styled, make_dataset.game_style(frame))  # deterministic
    assert make_dataset.game_style(frame[0]).shape == (3, 32, 48)
    assert torch.equal(make_dataset.game_style(frame, strength=0), frame)


def encode(frames_dir, path, codec):
    """The pan's PNG frames -> a video file, encoded by PyAV itself (near-lossless where the codec allows)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10, options={"crf": "0"} if codec == "libx264" else {})
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        if codec == "libvpx-vp9":
            stream.options = {"lossless": "1"}
        for f in sorted(frames_dir.glob("*.png")):
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(f).convert("RGB")), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_video_files_decode_with_pyav(assets, tmp_path, capsys):
    """--videos with .mp4 (H.264), .mkv (H.264) and .webm (VP9) files, decoded with PyAV (prism/requirements.txt):
    each 6-frame clip gives two 3-frame sequences whose targets are the clip's frames (up to 4:2:0 chroma)."""
    pytest.importorskip("av", reason="video decoding needs PyAV: pip install -r prism/requirements.txt")
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, codec in (("pan.mp4", "libx264"), ("pan.mkv", "libx264"), ("pan.webm", "libvpx-vp9")):
        encode(assets["videos"] / "pan", videos / name, codec)
    out = tmp_path / "out"
    make_dataset.main(cli(assets, out, "--videos", str(videos), "--depth-model", "none"))
    ds = check_dataset(out, 64, 64, 2, sequences=6)
    first = torch.from_numpy(np.asarray(Image.open(assets["videos"] / "pan" / "0000.png"), dtype=np.float32) / 255)
    for clip in (ds[0], ds[2], ds[4]):  # the first sequence of each file starts at the clip's first frame
        assert (clip["ground_truth"][0] - first.permute(2, 0, 1)).abs().mean() < 0.03

    (videos / "pan.webm").write_bytes((videos / "pan.webm").read_bytes()[:300])  # truncated: undecodable
    code, err = run_main(cli(assets, tmp_path / "o", "--videos", str(videos), "--depth-model", "none"), capsys)
    assert code == 2 and [e for e in err if "error" in e] == [err[-1]] and "pan.webm" in err[-1]
    assert not (tmp_path / "o").exists()
