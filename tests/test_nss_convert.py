"""nss/convert.py on a tiny generated EXR capture: the safetensors layout of Arm's safetensors_writer.py, the
cropper, -overwrite, and one-line errors."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

OpenEXR = pytest.importorskip("OpenEXR")
from safetensors import safe_open  # noqa: E402

from nss import convert  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAMES = 3
NEAR, FAR, FOV_Y = 0.1, 100.0, 1.0
JITTER = (0.25, -0.5)  # raw jitter (x, y) in low-res pixels
# capture -> (high-res H, W, ReverseZ, infinite far plane); 0000 is non-square to catch (x, y) swaps
CAPTURES = {"0000": (12, 20, False, False), "0001": (16, 16, True, True)}

SPEC = {  # key: (dtype, per-frame shape with h, w = low res and H, W = high res)
    "colour_linear": (torch.float16, (3, "h", "w")),
    "ground_truth_linear": (torch.float16, (3, "H", "W")),
    "depth": (torch.float32, (1, "h", "w")),
    "motion_lr": (torch.float16, (2, "h", "w")),
    "motion": (torch.float16, (2, "H", "W")),
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


def write_exr(path, channels):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, channels).write(str(path))


def write_capture(root, seq, H, W, reverse_z, infinite, gt=None):
    """Frames of constant images: colour/GT 0.5, depth 0.25 (stored reversed if reverse_z), motion
    (u, v) = (0.25, -0.125) with one LR pixel at u = 3 to exercise the clamp."""
    h, w = H // 2, W // 2
    half = lambda v, hh, ww: np.full((hh, ww), v, np.float16)  # noqa: E731
    for i in range(FRAMES):
        name = f"{i:04d}.exr"
        rgb = gt if gt is not None else np.full((3, H, W), 0.5, np.float16)
        write_exr(root / "ground_truth" / seq / name, {"R": rgb[0], "G": rgb[1], "B": rgb[2], "A": half(1, H, W)})
        write_exr(root / "motion_gt" / seq / name, {"R": half(0.25, H, W), "G": half(-0.125, H, W)})
        write_exr(root / "x2/color" / seq / name, {c: half(0.5, h, w) for c in "RGBA"})
        write_exr(root / "x2/depth" / seq / name, {"R": np.full((h, w), 0.75 if reverse_z else 0.25, np.float32)})
        u = half(0.25, h, w)
        u[0, 0] = 3.0
        write_exr(root / "x2/motion" / seq / name, {"R": u, "G": half(-0.125, h, w)})
    frames = []
    for i in range(FRAMES):
        fr = {
            "Frame": i,
            "FovX": 1.2,
            "FovY": FOV_Y,
            "CameraNearPlane": NEAR,
            "CameraFarPlane": -1 if infinite else FAR,
            "ViewProjection": [float(k) for k in range(16)],
            "Jitter": {"X": JITTER[0], "Y": JITTER[1]},
            # index 0 is another ratio's jitter: the converter must pick x2_index = 1
            "NormalizedPerRatioJitter": [{"X": 9.0, "Y": 9.0}, {"X": JITTER[0] / w, "Y": JITTER[1] / h}],
        }
        if i != 1:
            fr["Exposure"] = 2.0 * (i + 1)
        if i in (0, 2):
            fr["CameraCut"] = True
        frames.append(fr)
    meta = {
        "Version": "1.0.1",
        "EmulatedFramerate": 30,
        "TargetResolution": {"X": W, "Y": H},
        "Samples": {"Sequence": "TiledHalton", "Count": 16, "Quantized": True},
        "ReverseZ": reverse_z,
        "UpscalingRatiosIndices": {"x1_5_index": 0, "x2_index": 1},
        "GTColorSpace": "Linear",
        "Frames": frames,
    }
    (root / f"{seq}.json").write_text(json.dumps(meta))


def make_root(tmp_path, name="captures", **kw):
    root = tmp_path / name
    for seq, (H, W, rz, inf) in CAPTURES.items():
        write_capture(root, seq, H, W, rz, inf, **kw)
    return root


def run(*argv, tmp_path):
    return convert.main([*map(str, argv), "-logging_output_dir", str(tmp_path / "log")])


def load(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv")
    root = make_root(tmp)
    assert run("-src", root, "-dst", tmp / "out", tmp_path=tmp) == 0
    return tmp / "out" / "captures"


def test_every_key_has_spec_dtype_and_shape(converted):
    for seq, (H, W, _, _) in CAPTURES.items():
        t, meta = load(converted / f"{seq}.safetensors")
        dims = {"h": H // 2, "w": W // 2, "H": H, "W": W}
        assert set(t) == set(SPEC)
        for key, (dtype, shape) in SPEC.items():
            assert t[key].dtype == dtype, key
            assert tuple(t[key].shape) == (FRAMES,) + tuple(dims.get(s, s) for s in shape), key
        assert meta["Length"] == str(FRAMES) and meta["Version"] == "NSSEXRDatasetReader"
        assert len(meta["Created"].split("-")) == 3  # dd-mm-YYYY
        assert t["render_size"][0].tolist() == [H // 2, W // 2] and t["outDims"][0].tolist() == [H, W]
        assert t["TargetResolution"][0].tolist() == [W, H] and t["Samples"][0].item() == 16
        assert t["img"].view(-1).tolist() == [0, 1, 2] and t["scale"].eq(2.0).all()
        assert t["viewProj"][0, 0, 0, 1] == 1 and t["viewProj"][0, 0, 1, 0] == 4  # row-major from the list


def test_nanong_dataset_reads_the_output(converted):
    from nss.dataset import read_capture

    cap = read_capture(converted / "0000.safetensors")
    assert cap["colour_linear"].shape == (FRAMES, 3, 6, 10)


def test_motion_is_clamped_and_swizzled_to_yx_pixels(converted):
    t, _ = load(converted / "0000.safetensors")  # LR 6x10, HR 12x20; (u, v) = (0.25, -0.125)
    assert t["motion_lr"][0, :, 1, 1].tolist() == [-0.125 * 6, 0.25 * 10]
    assert t["motion_lr"][0, :, 0, 0].tolist() == [-0.125 * 6, 1.0 * 10]  # u = 3 clamped to 1
    assert t["motion"][0, :, 5, 7].tolist() == [-0.125 * 12, 0.25 * 20]


def test_jitter_uses_the_x2_ratio_in_yx_low_res_pixels(converted):
    t, _ = load(converted / "0000.safetensors")
    assert t["jitter"][0].view(-1).tolist() == pytest.approx([JITTER[1], JITTER[0]])
    assert t["X"][0].item() == pytest.approx(JITTER[0] / 10) and t["Y"][0].item() == pytest.approx(-JITTER[1] / 6)


def test_exposure_is_ln_and_zero_when_absent_and_cuts_are_kept(converted):
    t, _ = load(converted / "0000.safetensors")
    assert t["exposure"].view(-1).tolist() == pytest.approx([math.log(2.0), 0.0, math.log(6.0)])
    assert t["camera_cut"].view(-1).tolist() == [True, False, True]
    ids = {load(converted / f"{s}.safetensors")[0]["seq"][0].item() for s in CAPTURES}
    assert len(ids) == 2 and 0 not in ids
    assert convert.stable_id("captures_0000_3") == t["seq"][0].item()  # deterministic, not Python's hash()


def test_depth_params_match_fsr2_by_hand(converted):
    t, _ = load(converted / "0000.safetensors")
    q = FAR / (NEAR - FAR)
    want = [-q, q * NEAR, math.tan(FOV_Y / 2) * 10 / 6, math.tan(FOV_Y / 2)]
    assert t["depth_params"][0].tolist() == pytest.approx(want, rel=1e-6)
    p0, p1 = want[:2]  # view depth z = p1 / (d - p0): device depth 0 is the near plane, 1 the far plane
    assert p1 / (0 - p0) == pytest.approx(NEAR) and p1 / (1 - p0) == pytest.approx(FAR)
    assert t["depth"].eq(0.25).all() and not t["ReverseZ"].any() and not t["infinite_zFar"].any()


def test_reverse_z_and_infinite_far_plane(converted):
    t, _ = load(converted / "0001.safetensors")
    assert t["depth"].eq(0.25).all()  # stored 0.75 reverse-Z -> 1 - 0.75
    assert t["ReverseZ"].all() and t["infinite_zFar"].all() and t["zFar"].eq(5000.0).all()
    assert t["depth_params"][0, :2].tolist() == pytest.approx([1 + 1e-7, -NEAR - 1e-7])


def test_overwrite_skips_existing_then_rewrites(tmp_path):
    root = make_root(tmp_path)
    out = tmp_path / "out" / "captures" / "0000.safetensors"
    assert run("-src", root, "-dst", tmp_path / "out", tmp_path=tmp_path) == 0
    meta = json.loads((root / "0000.json").read_text())
    meta["Frames"][1]["Exposure"] = math.e
    (root / "0000.json").write_text(json.dumps(meta))
    assert run("-src", root, "-dst", tmp_path / "out", tmp_path=tmp_path) == 0
    assert load(out)[0]["exposure"][1].item() == 0.0  # skipped: still the old file
    assert run("-src", root, "-dst", tmp_path / "out", "-overwrite", tmp_path=tmp_path) == 0
    assert load(out)[0]["exposure"][1].item() == pytest.approx(1.0)


def test_karis_tonemapped_truth_is_inverted(tmp_path):
    linear = np.array([4.0, 1.0, 0.5], np.float32).reshape(3, 1, 1) * np.ones((3, 16, 16), np.float32)
    root = tmp_path / "karis"
    write_capture(root, "0000", 16, 16, False, False, gt=(linear / (1 + linear.max(0))).astype(np.float16))
    assert run("-src", root, "-dst", tmp_path / "out", "-no-linear-truth", tmp_path=tmp_path) == 0
    gt = load(tmp_path / "out" / "karis" / "0000.safetensors")[0]["ground_truth_linear"]
    assert gt[0, :, 0, 0].float().tolist() == pytest.approx([4.0, 1.0, 0.5], rel=5e-3)


def test_cropper_tiles_with_an_overlapping_last_crop(converted, tmp_path):
    assert run("-src", converted, "-dst", tmp_path, "-reader", "cropper", "-crop_size", 8, tmp_path=tmp_path) == 0
    files = sorted((tmp_path / "captures").rglob("*.safetensors"))
    # 0000 is 12x20: rows start at 0 and 4 (overlap), columns at 0, 8 and 12 -> 6 crops; 0001 is 16x16 -> 4
    assert [f.relative_to(tmp_path / "captures").as_posix() for f in files] == (
        [f"0000/{k:04d}/0000.safetensors" for k in range(6)] + [f"0001/{k:04d}/0001.safetensors" for k in range(6, 10)]
    )
    full, _ = load(converted / "0000.safetensors")
    last, meta = load(files[5])  # row 1 (starts at y=4), column 2 (starts at x=12)
    assert last["ground_truth_linear"].shape == (FRAMES, 3, 8, 8) and last["colour_linear"].shape == (FRAMES, 3, 4, 4)
    assert torch.equal(last["motion_lr"], full["motion_lr"][..., 2:6, 6:10])
    assert torch.equal(last["motion"], full["motion"][..., 4:12, 12:20])
    assert torch.equal(last["depth_params"], full["depth_params"]) and meta["Length"] == str(FRAMES)
    assert last["crop_id_y"].view(-1).tolist() == [1] * FRAMES and last["crop_id_x"].view(-1).tolist() == [2] * FRAMES
    assert last["seq_id"].dtype == torch.int64 and last["crop_sz"].eq(8.0).all()
    assert len({load(f)[0]["seq_id"][0].item() for f in files}) == 10


@pytest.mark.parametrize(
    "break_capture, problem",
    [
        (lambda r: shutil.rmtree(r / "x2/depth/0001"), "missing or empty folder"),
        (lambda r: (r / "0000.json").unlink(), "missing capture JSON"),
        (
            lambda r: (r / "0000.json").write_text(
                json.dumps(
                    {
                        k: v
                        for k, v in json.loads((r / "0000.json").read_text()).items()
                        if k != "UpscalingRatiosIndices"
                    }
                )
            ),
            "missing JSON field 'UpscalingRatiosIndices'",
        ),
        (lambda r: (r / "x2/color/0000/0001.exr").write_bytes(b"not an exr"), "unreadable EXR"),
        (
            lambda r: write_exr(r / "x2/motion/0000/0002.exr", {"R": np.zeros((6, 10), np.float16)}),
            "missing EXR channel 'G'",
        ),
    ],
    ids=["missing-folder", "missing-json", "missing-field", "unreadable-exr", "missing-channel"],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, break_capture, problem):
    root = make_root(tmp_path)
    break_capture(root)
    assert run("-src", root, "-dst", tmp_path / "out", tmp_path=tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {root}") and problem in err[0]


def test_missing_openexr_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(convert, "OpenEXR", None)
    assert run("-src", tmp_path, tmp_path=tmp_path) == 2
    assert "pip install -r nss/requirements.txt" in capsys.readouterr().err


def test_cli_converts_and_fails_cleanly(tmp_path):
    root = make_root(tmp_path)
    cmd = [
        sys.executable,
        "nss/convert.py",
        "-src",
        str(root),
        "-dst",
        str(tmp_path / "out"),
        "-threads",
        "2",
        "-reader",
        "EXRv101",
        "-logging_output_dir",
        str(tmp_path / "log"),
    ]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "captures").iterdir()) == ["0000.safetensors", "0001.safetensors"]
    (root / "motion_gt" / "0001").rename(tmp_path / "moved")
    bad = subprocess.run(cmd + ["-overwrite"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {root / 'motion_gt' / '0001'}: missing or empty folder")
