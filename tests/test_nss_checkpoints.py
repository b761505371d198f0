"""Arm's Model Gym checkpoints in and out (nss/checkpoints.py): an Arm-layout `.pt` with seeded random weights
under Arm's key names is taken by evaluation, fine-tuning and export; the exported `.pte` computes Arm's layer
table; writing Arm's layout round-trips exactly; anything else is refused with one line and exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.ckpt import CheckpointError
from nss.checkpoints import from_arm, load, read_arm, to_arm, write_arm
from nss.model import NSS

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")

# Arm's AutoEncoderV1 layer table (model_blocks_v1.py), forward order: (name, in, out, stride); 3x3 convs, zero
# padding 1, bias; every conv but the two heads is followed by ReLU
LAYERS = [
    ("conv2d_0", 12, 32, 2),
    ("conv2d_1", 32, 32, 1),
    ("conv2d_2", 32, 32, 2),
    ("conv2d_3", 32, 32, 1),
    ("conv2d_4", 32, 64, 2),
    ("conv2d_5", 64, 64, 1),
    ("conv2d_6", 64, 32, 1),
    ("conv2d_7", 32, 16, 1),
    ("conv2d_8", 48, 32, 1),
    ("kpn_params", 32, 36, 1),
    ("conv2d_9", 32, 16, 1),
    ("conv2d_10", 48, 16, 1),
    ("conv2d_11", 16, 16, 1),
    ("temporal_params_out_conv", 16, 4, 1),
]


def arm_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, cin, cout, _ in LAYERS:
        sd[f"autoencoder.{name}.conv2d.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        sd[f"autoencoder.{name}.conv2d.bias"] = torch.randn(cout, generator=g) * 0.05
    return sd


def layer_table_forward(sd, x):
    """Arm's network written straight from the layer table, on Arm's keys: skips after conv2d_1 and conv2d_3,
    nearest x2 upsampling, concat [upsampled, skip], sigmoid heads."""
    stride = {name: s for name, _, _, s in LAYERS}
    conv = lambda name, t: F.conv2d(
        t,
        sd[f"autoencoder.{name}.conv2d.weight"],
        sd[f"autoencoder.{name}.conv2d.bias"],
        stride=stride[name],
        padding=1,
    )
    relu = lambda name, t: torch.relu(conv(name, t))
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")
    skip1 = relu("conv2d_1", relu("conv2d_0", x))
    skip2 = relu("conv2d_3", relu("conv2d_2", skip1))
    b = relu("conv2d_6", relu("conv2d_5", relu("conv2d_4", skip2)))
    d2 = relu("conv2d_8", torch.cat([relu("conv2d_7", up(b)), skip2], 1))
    kpn = torch.sigmoid(conv("kpn_params", d2))
    d1 = relu("conv2d_11", relu("conv2d_10", torch.cat([relu("conv2d_9", up(d2)), skip1], 1)))
    return kpn, torch.sigmoid(conv("temporal_params_out_conv", up(d1)))


def save_arm(path, sd):
    """An Arm Model Gym checkpoint file as its trainer writes it."""
    torch.save({"epoch": 7, "model_state_dict": sd, "optimizer_state_dict": {}, "lr_scheduler_state_dict": {}}, path)
    return path


def run(args, **kw):
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, **kw
    )


def test_arm_keys_map_onto_the_network_and_compute_the_layer_table(tmp_path):
    sd = arm_state_dict()
    weights, meta = load(save_arm(tmp_path / "arm.pt", sd))
    assert meta["model_type"] == "fp32" and meta["model"]["quality"] == "high" and len(weights) == 28
    model = NSS()
    model.net.load_state_dict(weights)  # strict: every key, every shape
    x = torch.rand(2, 12, 32, 24)
    for ours, ref in zip(model.net(x), layer_table_forward(sd, x)):
        assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6)


def test_writing_arms_layout_round_trips_exactly(tmp_path):
    sd = arm_state_dict(1)
    weights = from_arm(sd)
    path = write_arm(tmp_path / "out" / "nss.pt", weights, epoch=3)
    back = torch.load(path, weights_only=True)  # what Model Gym's loaders do
    assert set(back) == {"epoch", "model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict"}
    assert back["epoch"] == 3 and set(back["model_state_dict"]) == set(sd)
    assert all(torch.equal(back["model_state_dict"][k], v) for k, v in sd.items())
    again, _ = read_arm(path)
    assert all(torch.equal(again[k], v) for k, v in weights.items()) and to_arm(again).keys() == sd.keys()


def test_bad_arm_files_are_refused_naming_the_problem(tmp_path):
    sd = arm_state_dict()
    del sd["autoencoder.conv2d_5.conv2d.bias"]
    with pytest.raises(CheckpointError, match="missing autoencoder.conv2d_5.conv2d.bias"):
        load(save_arm(tmp_path / "missing.pt", sd))
    sd = {**arm_state_dict(), "autoencoder.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected autoencoder.extra.weight"):
        load(save_arm(tmp_path / "extra.pt", sd))
    qat = {f"autoencoder._param_constant{i}": torch.zeros(1) for i in range(28)}
    with pytest.raises(CheckpointError, match="QAT int8 checkpoint.*not supported"):
        load(save_arm(tmp_path / "qat.pt", qat))


class Payload:
    """Unpickling this would create a file: a checkpoint must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.slow
def test_commands_take_arm_checkpoints_and_refuse_objects(synth_data, tmp_path):
    data = synth_data
    arm = save_arm(tmp_path / "nss_v1_high_fp32.pt", arm_state_dict(2))
    r = run(["nss/train.py", "--evaluate", "--model-path", arm, "--eval-data", data / "test", "--out", tmp_path / "ev"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "ev" / "eval" / "results.json").read_text())["frames"] == 6
    r = run(
        [
            "nss/train.py",
            "--finetune",
            arm,
            "--data",
            data,
            "--out",
            tmp_path / "ft",
            "--preset",
            "tiny",
            "--max-steps",
            "2",
            "--no-evaluate",
        ]
    )
    assert r.returncode == 0 and "fine-tuning from" in (tmp_path / "ft" / "output.log").read_text(), r.stderr[-2000:]
    r = run(
        [
            "nss/train.py",
            "--finetune",
            arm,
            "--quality",
            "mid",
            "--data",
            data,
            "--out",
            tmp_path / "ft_mid",
            "--preset",
            "tiny",
            "--max-steps",
            "1",
            "--no-evaluate",
        ]
    )  # a high checkpoint prunes into mid
    assert r.returncode == 0 and "(mid quality)" in (tmp_path / "ft_mid" / "output.log").read_text(), r.stderr[-2000:]

    # export: the .pte computes Arm's layer table on Arm's keys
    r = run(["nss/export.py", "--model-path", arm, "--data", data / "test", "--no-vgf", "--out", tmp_path / "x"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from common.runtimes import run_pte

    shape = json.loads((tmp_path / "x" / "export_report.json").read_text())["input_shape"]
    x = torch.rand(*shape)
    for got, ref in zip(run_pte(tmp_path / "x" / "model.pte", [x]), layer_table_forward(arm_state_dict(2), x)):
        assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-5

    # pruned into mid quality on export: the 16-channel sparse KPN at half the low resolution
    r = run(
        [
            "nss/export.py",
            "--model-path",
            arm,
            "--quality",
            "mid",
            "--data",
            data / "test",
            "--no-vgf",
            "--size",
            "16",
            "16",
            "--out",
            tmp_path / "x_mid",
        ]
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    kpn, temporal = run_pte(tmp_path / "x_mid" / "model.pte", [torch.rand(1, 12, 16, 16)])
    assert kpn.shape == (1, 16, 4, 4) and temporal.shape == (1, 4, 16, 16)

    # and back out in Arm's layout, from the fine-tuned run
    out = tmp_path / "back.pt"
    r = run(["nss/export.py", "--model-path", tmp_path / "ft" / "ckpt" / "latest", "--arm-checkpoint", out])
    assert r.returncode == 0 and out.exists(), r.stderr[-2000:]
    assert set(torch.load(out, weights_only=True)["model_state_dict"]) == set(arm_state_dict())

    # a .pt holding an object: refused before anything in it runs
    marker = tmp_path / "ran"
    torch.save({"model_state_dict": Payload(marker)}, tmp_path / "evil.pt")
    for cmd in (
        [
            "nss/train.py",
            "--evaluate",
            "--model-path",
            tmp_path / "evil.pt",
            "--eval-data",
            data / "test",
            "--out",
            tmp_path / "e1",
        ],
        ["nss/export.py", "--model-path", tmp_path / "evil.pt", "--out", tmp_path / "e2"],
    ):
        r = run(cmd)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "evil.pt" in lines[-1] and len(lines) == 1, r.stderr[-2000:]
    assert not marker.exists()
