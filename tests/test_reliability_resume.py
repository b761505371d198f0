"""Reliability, for NSS, NeuroPBR, Prism and GameNGen: nothing lost on a crash.

- kill -9 in the middle of a checkpoint write and after a random delay: every checkpoint a reader can name is
  complete, and --resume ends bit-identical to an uninterrupted run; SIGINT / SIGTERM save and exit 130 / 0 with one
  line.
- a NaN loss is skipped and counted, or stops the run with the last good state; an unwritable or full disk is
  refused before training and a failed write mid-run keeps the previous checkpoint.

Smoke runs one random-delay kill per use case; NANONG_STRESS=1 (`bash run.sh stress`) runs the long versions: >= 5
kills at random moments (plus one mid-write) per use case, both signals and both NaN policies everywhere; kill counts
go to $NANONG_STRESS_REPORT (JSON). Bad input and untrusted files: tests/test_reliability_fuzz.py.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m pytest -q tests/test_reliability_resume.py
"""

import importlib
import os
import random
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common import ckpt
from tests import reliability
from tests.reliability import CASES, REPORT, STRESS, finite, in_process, one_line_error, start

data, reference, report = reliability.data, reliability.reference, reliability.report  # fixtures, found here by pytest

RANDOM_KILLS = 5 if STRESS else 1  # kills after a random delay, per use case (plus one mid-write kill)
PAUSE = 0.15  # NANONG_CKPT_PAUSE: seconds between the stages of a checkpoint write
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def weights(out):
    return ckpt.load(Path(out) / "ckpt" / "latest", with_state=False)[0]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ crashes, signals


def assert_intact(ck):
    """Every checkpoint a reader can name loads completely -> the step of `latest`."""
    for p in ck.iterdir():
        if not p.name.startswith("."):
            ckpt.load(p)
    return ckpt.load(ck / "latest")[2]["step"]


def kill_mid_write(case, argv, ck, log, rng):
    """Start a run and kill -9 it at a random point inside a checkpoint write that has a complete predecessor."""
    p = start(case, argv, log, pause=PAUSE)
    deadline = time.time() + 300
    while not (os.path.lexists(ck / "latest") and any(ck.glob(".tmp-step_*"))):
        assert p.is_alive(), f"the run ended before its second checkpoint: {log.read_text()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 4 * PAUSE))
    p.kill()
    p.join()


def resume_and_compare(case, argv, want):
    assert in_process(case, *argv, "--resume") == 0
    assert same(weights(argv[argv.index("--out") + 1]), want), "the resumed run differs from the uninterrupted one"


@pytest.mark.parametrize("name", CASES)
def test_kill_9_then_resume_is_bit_exact_and_no_partial_checkpoint_is_read(name, data, reference, tmp_path):
    """One kill -9 inside a checkpoint write, then RANDOM_KILLS kills after random delays (smoke 1, stress 5), some
    of them of a run that was itself resuming."""
    case, rng, log = CASES[name], random.Random(f"kill/{name}"), tmp_path / "log"
    want, counts = (
        weights(reference(name)),
        {"survived": 0, "inside_a_checkpoint_write": 0, "before_the_first_checkpoint": 0},
    )
    argv = case.argv(data(name), tmp_path / "mid_write")
    kill_mid_write(case, argv, tmp_path / "mid_write" / "ckpt", log, rng)
    assert_intact(tmp_path / "mid_write" / "ckpt")
    resume_and_compare(case, argv, want)
    counts["survived"] += 1
    counts["inside_a_checkpoint_write"] += 1
    if RANDOM_KILLS:
        t0 = time.time()
        start(case, case.argv(data(name), tmp_path / "timed"), log, pause=PAUSE / 3).join()
        t_run = time.time() - t0
    for round in range(4 * RANDOM_KILLS):
        if counts["survived"] > RANDOM_KILLS:
            break
        argv = case.argv(data(name), tmp_path / f"random_{round}")
        ck = tmp_path / f"random_{round}" / "ckpt"
        for attempt in range(2):  # killed, and maybe killed again while resuming
            p = start(case, argv + ["--resume"] * attempt, log, pause=PAUSE / 3)
            time.sleep(rng.uniform(0, t_run))
            if not p.is_alive():
                break
            writing = ck.is_dir() and any(
                f.name.startswith((".tmp-step_", ".tmp-best-", ".old-")) for f in ck.iterdir()
            )
            p.kill()
            p.join()
            counts["survived"] += 1
            counts["inside_a_checkpoint_write"] += writing
            if os.path.lexists(ck / "latest"):
                assert_intact(ck)
            else:
                counts["before_the_first_checkpoint"] += 1
        resume_and_compare(case, argv, want)
    assert counts["survived"] > RANDOM_KILLS, counts
    REPORT["kills"][name] = counts


SIGNALS = (
    [(n, s) for n in CASES for s in (signal.SIGINT, signal.SIGTERM)]
    if STRESS
    else [("nss", signal.SIGINT), ("neuropbr", signal.SIGTERM), ("prism", signal.SIGTERM), ("gamengen", signal.SIGINT)]
)


@pytest.mark.parametrize("name,sig", SIGNALS, ids=[f"{n}-{s.name}" for n, s in SIGNALS])
def test_sigint_sigterm_save_a_checkpoint_and_exit_with_one_line(name, sig, data, tmp_path):
    case, out = CASES[name], tmp_path / "run"
    p = start(case, case.argv(data(name), out) + case.longer, tmp_path / "stdout", tmp_path / "stderr")
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):  # training
        assert p.is_alive() and time.time() < deadline, (tmp_path / "stderr").read_text()[-2000:]
        time.sleep(0.01)
    os.kill(p.pid, sig)
    p.join(timeout=300)
    assert p.exitcode == (130 if sig == signal.SIGINT else 0), p.exitcode
    stdout, stderr = (tmp_path / "stdout").read_text().strip(), (tmp_path / "stderr").read_text().strip()
    assert stdout.count("\n") == 0 and sig.name in stdout and "--resume" in stdout and stderr == "", (stdout, stderr)
    assert ckpt.load(out / "ckpt" / "latest")[2]["step"] >= 1


def test_a_kill_between_the_renames_of_best_keeps_the_previous_copy(tmp_path):
    """save() moves the old `best` aside before renaming the new one in; killed in between, the old copy is read
    and put back."""
    ckpt.save(tmp_path, "best", {"w": torch.ones(2)}, {}, {"step": 1})
    os.replace(tmp_path / "best", tmp_path / ".old-best-999")  # what such a kill leaves
    assert ckpt.load(tmp_path / "best")[2]["step"] == 1
    ckpt.prune(tmp_path, keep=set())
    assert ckpt.load(tmp_path / "best")[2]["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_kill_while_an_old_step_is_deleted_leaves_no_half_step_under_its_name(tmp_path, monkeypatch):
    ckpt.save_step(tmp_path, 1, {"w": torch.ones(2)}, {}, {"step": 1})

    def killed(path, ignore_errors=False):  # dies after the first file, as a kill -9 in rmtree would
        if Path(path).exists():
            next(Path(path).iterdir()).unlink()
            raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_step(tmp_path, 2, {"w": torch.ones(2)}, {}, {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["latest", "step_0000002"]
    assert assert_intact(tmp_path) == 2


# ------------------------------------------------------------------------------------------------ NaN, disk

LOSSES = {"nss": "window_loss", "neuropbr": "hybrid_loss", "prism": "stream_clip", "gamengen": "training_loss"}
NAN_RUNS = (
    [(n, p) for n in CASES for p in ("skip", "stop")]
    if STRESS
    else [("nss", "stop"), ("neuropbr", "skip"), ("prism", "stop"), ("gamengen", "skip")]
)


@pytest.mark.parametrize("name,policy", NAN_RUNS, ids=[f"{n}-{p}" for n, p in NAN_RUNS])
def test_a_nan_loss_is_skipped_and_counted_or_stops_with_the_last_good_state(
    name, policy, data, tmp_path, monkeypatch, capsys
):
    """The loss of the second step is NaN (skip) or inf (stop)."""
    case, out, argv = CASES[name], tmp_path / "run", CASES[name].argv(data(name), tmp_path / "run")  # data first
    module, fn = importlib.import_module(case.module), LOSSES[name]
    real, calls = getattr(module, fn), []

    def poisoned(*a, **kw):
        out = real(*a, **kw)
        calls.append(1)
        if len(calls) != 2:
            return out
        bad = float("nan") if policy == "skip" else float("inf")
        return (out[0] * bad, *out[1:]) if isinstance(out, tuple) else out * bad

    monkeypatch.setattr(module, fn, poisoned)
    code = in_process(case, *argv, "--max-steps", 3, "--nan-policy", policy)
    w, _, meta = ckpt.load(out / "ckpt" / "latest")
    assert all(finite(v) for v in w.values())
    if policy == "skip":
        assert code == 0 and meta["nan_skipped"] == 1 and meta["step"] >= 2  # the skipped step counts
        assert "step 1: non-finite loss, skipped (1 so far)" in (out / "output.log").read_text()
    else:
        assert code == 2 and meta["step"] == 1  # saved before the step that met the NaN
        assert one_line_error(capsys.readouterr().err, "non-finite loss", out / "ckpt" / "latest")


@pytest.mark.parametrize("name", CASES)
def test_unwritable_or_full_output_is_refused_before_training(name, data, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    (tmp_path / "file").write_text("")
    assert in_process(case, *case.argv(data(name), tmp_path / "file" / "run")) == 2  # the run folder
    assert one_line_error(capsys.readouterr().err, tmp_path / "file" / "run")
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    if os.geteuid() != 0:  # root writes anyway
        os.chmod(tmp_path / "run" / "ckpt", 0o500)
        assert in_process(case, *case.argv(data(name), tmp_path / "run")) == 2
        assert one_line_error(capsys.readouterr().err, tmp_path / "run" / "ckpt", "cannot write")
        os.chmod(tmp_path / "run" / "ckpt", 0o700)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**12, used=10**12 - 4096, free=4096))
    assert in_process(case, *case.argv(data(name), tmp_path / "run")) == 2
    assert one_line_error(capsys.readouterr().err, tmp_path / "run" / "ckpt", "MiB free")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was trained


@pytest.mark.parametrize("name", ["nss", "gamengen"])
def test_disk_full_mid_run_keeps_the_previous_checkpoint(name, data, tmp_path, monkeypatch, capsys):
    import errno

    case, out, argv = CASES[name], tmp_path / "run", CASES[name].argv(data(name), tmp_path / "run")  # data first
    real, writes = ckpt.save_file, []

    def full_after_one(*a, **kw):
        writes.append(1)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **kw)

    monkeypatch.setattr(ckpt, "save_file", full_after_one)
    assert in_process(case, *argv) == 2
    assert one_line_error(capsys.readouterr().err, out / "ckpt", "No space left on device")
    assert assert_intact(out / "ckpt") == 2 and not list((out / "ckpt").glob(".tmp-*"))
