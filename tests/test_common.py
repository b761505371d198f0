"""common/: checkpoints (atomic, exact, never unpickle), metrics, images, runtime helpers."""

import math
import os
import pickle
from typing import Literal

import pytest
import torch

from common import ckpt, images, metrics, runtime


def _save(root, name="step_0000001", value=1.0):
    model_state = {"w": torch.full((3, 3), value)}
    state = {"optimizer": {"step": torch.tensor(5.0)}, "rng": ckpt.rng_state()}
    return ckpt.save(root, name, model_state, state, {"step": 1})


def test_checkpoint_roundtrip_and_latest_link(tmp_path):
    p = _save(tmp_path)
    ckpt.link(tmp_path, "latest", p.name)
    w, state, meta = ckpt.load(tmp_path / "latest")
    assert torch.equal(w["w"], torch.ones(3, 3)) and meta["step"] == 1
    assert float(state["optimizer"]["step"]) == 5.0
    assert sorted(f.name for f in p.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]


def test_checkpoint_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    _save(tmp_path, "best", 1.0)
    _save(tmp_path, "best", 2.0)
    assert torch.equal(ckpt.load(tmp_path / "best")[0]["w"], torch.full((3, 3), 2.0))
    ckpt.prune(tmp_path, keep=set())
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_save_step_links_latest_copies_best_and_keeps_every_nth(tmp_path):
    for step in (2, 4, 6):
        ckpt.save_step(
            tmp_path, step, {"w": torch.full((1,), float(step))}, {}, {"step": step}, best=step == 4, keep_every=4
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "latest", "step_0000004", "step_0000006"]
    assert ckpt.load(tmp_path / "latest")[2]["step"] == 6 and ckpt.load(tmp_path / "best")[2]["step"] == 4
    ckpt.save_step(tmp_path, 8, {"w": torch.zeros(1)}, {}, {"step": 8})  # keep_every 0: only the newest step stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "latest", "step_0000008"]


def test_rng_state_roundtrip_is_exact(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    s = ckpt.rng_state()
    a = (torch.rand(4), random.random(), np.random.rand())
    _save(tmp_path)
    ckpt.save(tmp_path, "x", {"w": torch.zeros(1)}, {"rng": s}, {})
    ckpt.set_rng_state(ckpt.load(tmp_path / "x")[1]["rng"])
    b = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_state_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _save(tmp_path)
    with open(p / "state.pt", "wb") as f:
        pickle.dump({"optimizer": Evil()}, f)
    with pytest.raises(ckpt.CheckpointError, match="state.pt"):
        ckpt.load(p)
    assert not (tmp_path / "PWNED").exists()


def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not a checkpoint"):
        ckpt.load(tmp_path / "nope")
    p = _save(tmp_path)
    (p / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors"):
        ckpt.load(p)


def test_resuming_starts_fresh_loads_by_prefix_and_names_a_misfit(tmp_path):
    said = []
    with ckpt.resuming(tmp_path, "a test checkpoint", log=said.append) as latest:  # killed before any save
        assert latest is None
    assert "starting from step 0" in said[-1]
    net = torch.nn.Linear(3, 3)
    weights = {f"gen.{k}": v + 1 for k, v in net.state_dict().items()} | {"disc.w": torch.zeros(1)}
    ckpt.save_step(tmp_path, 7, weights, {"rng": ckpt.rng_state()}, {"step": 7})
    with ckpt.resuming(tmp_path, "a test checkpoint", log=said.append) as latest:
        ckpt.load_into(net, latest[0], prefix="gen")
    assert torch.equal(net.weight, weights["gen.weight"]) and said[-1].endswith("at step 7")
    with pytest.raises(ckpt.CheckpointError, match=r"latest: not a test checkpoint \(Error\(s\) in loading"):
        with ckpt.resuming(tmp_path, "a test checkpoint", log=said.append) as latest:
            ckpt.load_into(torch.nn.Linear(3, 4), latest[0], prefix="gen")  # another preset's shapes


def test_psnr_ssim_known_values():
    x = torch.rand(2, 3, 32, 32)
    assert metrics.ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.1).clamp(0, 1)
    mse = ((noisy - x) ** 2).flatten(1).mean(1)
    assert metrics.psnr(noisy, x).item() == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    assert metrics.ssim(noisy, x).item() < 0.99
    noisier = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert metrics.ssim(noisier, x) < metrics.ssim(noisy, x)
    y = x.clone().requires_grad_()
    metrics.ssim(y, noisy).backward()
    assert y.grad.abs().sum() > 0


def test_temporal_psnr_and_normal_angle():
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert math.isinf(metrics.temporal_psnr(a, b, a, b).item()) or metrics.temporal_psnr(a, b, a, b).item() > 100
    n = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4), dim=1)
    assert metrics.normal_angle_deg(n, n).max() < 0.1
    assert metrics.normal_angle_deg(n, -n).min() > 179


def test_images_roundtrip(tmp_path):
    img = torch.rand(3, 16, 24)
    images.save_png(img, tmp_path / "a.png")
    back = images.load_png(tmp_path / "a.png")
    assert back.shape == img.shape and (back - img).abs().max() <= 1 / 255 + 1e-6
    g = images.grid([[img, img, img]], ["A", "B", "C"], tmp_path / "g.png", crop=(4, 4, 8), zoom=2)
    assert (tmp_path / "g.png").exists() and g.shape[0] == 3 and g.shape[2] > 3 * 24


def test_nan_guard_and_override():
    g = runtime.NanGuard("skip")
    assert g.ok(torch.tensor(1.0)) and not g.ok(torch.tensor(float("nan"))) and g.skipped == 1
    assert not g.must_stop and runtime.NanGuard("stop").ok(torch.tensor(float("inf"))) is False
    s = runtime.NanGuard("stop")
    s.ok(torch.tensor(float("inf")))
    assert s.must_stop
    import logging

    rt, log = runtime.Runtime(device=torch.device("cpu")), logging.getLogger("test")
    g = runtime.NanGuard("skip", max_consecutive=2)
    assert not g.skip_step(torch.tensor(0.5), 0, rt, log)
    assert g.skip_step(torch.tensor(float("nan")), 1, rt, log) and not g.must_stop
    # the second in a row: the loop must save the last good state and stop, with this one-line reason
    assert g.skip_step(torch.tensor(float("inf")), 2, rt, log) and g.must_stop and g.skipped == 2
    assert g.reason("runs/x/ckpt/latest") == (
        "stopping: non-finite loss (--nan-policy skip, 2 in a row); last good state in runs/x/ckpt/latest"
    )

    from dataclasses import dataclass

    @dataclass
    class C:
        lr: float = 1.0
        steps: int = 3

    class A:
        lr, steps = 0.5, None

    assert runtime.override(C(), A()) == C(lr=0.5, steps=3)


def test_every_config_field_becomes_a_flag():
    """add_config_flags: one typed flag per dataclass field the parser lacks (bools take true/false, tuples several
    values, Literal fields their choices), its help the field's comment and the preset's value; override() reads
    them back, absent flags keep the preset."""
    import argparse
    from dataclasses import dataclass

    @dataclass
    class C:
        lr: float = 1.0
        use_gan: bool = True
        synth: tuple = (240, 128)  # materials and their size
        name: str = "cpu"
        loss: Literal["l1", "v1"] = "l1"

    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, help="hand-written, kept")
    runtime.add_config_flags(p, C())
    assert [a.help for a in p._actions if "--lr" in a.option_strings] == ["hand-written, kept"]
    assert "materials and their size; preset cpu: (240, 128)" in " ".join(p.format_help().split())  # the comment
    args = p.parse_args(["--use-gan", "false", "--synth", "8", "64", "--name", "x", "--loss", "v1"])
    assert runtime.override(C(), args) == C(lr=1.0, use_gan=False, synth=(8, 64), name="x", loss="v1")
    assert runtime.override(C(), p.parse_args([])) == C()
    for bad in (["--use-gan", "maybe"], ["--loss", "l2"]):  # a Literal field takes only its choices
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_progress_writes_whole_lines_in_a_log_and_nothing_for_a_short_task(capsys):
    """Off a terminal (a log file, CI) a progress bar is one plain line per refresh, not carriage-return redraws,
    and a task shorter than its 10 s delay prints nothing (so a one-line error stays one line)."""
    from common.log import progress

    for _ in progress(range(3), desc="quick"):
        pass
    assert capsys.readouterr().err == ""
    for _ in progress(range(3), desc="slow", delay=0, mininterval=0, maxinterval=0):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n") and len(err.splitlines()) >= 3
    assert all(line.startswith("slow:") for line in err.splitlines())


def test_profile_trace_and_memory_needs_cuda(tmp_path, capsys):
    """--profile (trace) writes a Perfetto trace of the steps it saw; --profile memory on a CPU run is a one-line
    error (exit 2) before anything runs, since it records the CUDA allocator."""
    import argparse
    import json

    with runtime.profiler("trace", tmp_path, steps=4) as step:
        for _ in range(4):
            torch.randn(64, 64) @ torch.randn(64, 64)
            step()
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    with runtime.profiler(None, tmp_path) as step:
        step()  # off: a no-op
    p = argparse.ArgumentParser()
    runtime.add_common_args(p, {"cpu": None})
    assert p.parse_args(["--profile"]).profile == "trace" and p.parse_args([]).profile is None
    with pytest.raises(SystemExit) as e:
        runtime.setup(p.parse_args(["--device", "cpu", "--profile", "memory"]))
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1
