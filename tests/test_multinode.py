"""Training across machines, played on this host, for each use case's tiny preset: two torchrun "nodes"
(`--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT`, one process each, as two
hosts would be launched) train one model into one run folder (the shared filesystem two hosts would mount): both
ranks take part and end with identical weights (runtime.same_weights compares their digests), only the global
rank 0 writes, and after one node is killed with SIGKILL mid-run, `--resume` on both nodes finishes the run from
the last checkpoint.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.ckpt import load

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
STEPS = 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(port, out, script, *extra, pause=0.0):
    """One "host": torchrun's agent joins the c10d rendezvous at 127.0.0.1:port and starts one training process
    (pause: seconds each checkpoint write waits, NANONG_CKPT_PAUSE, so that a kill lands mid-run)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "nanong-test"]
    cmd += [*map(str, script), "--out", str(out), "--preset", "tiny", "--max-steps", str(STEPS), "--save-every", "1"]
    cmd += ["--log-level", "quiet", *extra]
    env = dict(ENV, NANONG_CKPT_PAUSE=str(pause))
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def kill_host(pid):
    """SIGKILL a node's agent and every process below it (torchrun starts its workers in sessions of their own)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(procs, timeout=600):
    """Wait for both nodes -> their (exit code, stderr tail)."""
    results = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        results.append((p.returncode, err[-3000:]))
    return results


def two_nodes_then_kill_then_resume(script, out):
    """The scenario on `script` (train.py and its data flags) -> the names in the run folder."""
    port = free_port()
    a, b = node(port, out, script, pause=0.3), node(port, out, script, pause=0.3)
    latest = out / "ckpt" / "latest"
    deadline = time.time() + 600
    while not (latest / "meta.json").exists() and time.time() < deadline and a.poll() is None:
        time.sleep(0.2)  # the first checkpoint: the two nodes have met and trained a step together
    kill_host(b.pid)  # one host dies mid-run; the other loses its peer and stops with an error
    codes = finish([a, b])
    assert codes[1][0] != 0 and codes[0][0] != 0, codes
    step_at_kill = load(latest, with_state=False)[2]["step"]
    assert 1 <= step_at_kill < STEPS

    port = free_port()  # both hosts relaunched with --resume: the run continues from OUT/ckpt/latest
    results = finish([node(port, out, script, "--resume"), node(port, out, script, "--resume")])
    assert all(code == 0 for code, _ in results), results
    assert load(latest, with_state=False)[2]["step"] == STEPS
    log = (out / "output.log").read_text()
    assert "weights identical on all 2 ranks" in log  # both ranks trained one model
    assert log.count("resumed from") == 1  # one writer logged the resume
    return sorted(p.name for p in out.iterdir())


@pytest.mark.slow
def test_nss_two_nodes(synth_data, tmp_path):
    names = two_nodes_then_kill_then_resume(["nss/train.py", "--data", synth_data, "--no-evaluate"], tmp_path / "r")
    assert names == ["ckpt", "metrics.jsonl", "output.log"]  # nothing from rank 1


@pytest.mark.slow
def test_neuropbr_two_nodes(tmp_path):
    from neuropbr.synth import make_dataset

    make_dataset(tmp_path / "data", 10, size=64, seed=1, progress=False)
    script = ["neuropbr/train.py", "--data", tmp_path / "data", "--epochs", 50]  # --max-steps decides the end
    names = two_nodes_then_kill_then_resume(script, tmp_path / "r")
    assert names == ["ckpt", "eval", "metrics.jsonl", "output.log", "val"]


@pytest.mark.slow
def test_prism_two_nodes(tmp_path):
    from prism.synth import make_dataset

    make_dataset(tmp_path / "data", sequences=6, frames=4, size=32, seed=0, progress=False)
    names = two_nodes_then_kill_then_resume(["prism/train.py", "--data", tmp_path / "data"], tmp_path / "r")
    assert names == ["ckpt", "eval", "metrics.jsonl", "output.log"]


def test_gamengen_two_nodes(gamengen_tiny, tmp_path):
    script = ["gamengen/train.py", "diffusion", "--data", gamengen_tiny / "latents"]
    names = two_nodes_then_kill_then_resume(script, tmp_path / "r")
    assert names == ["ckpt", "metrics.jsonl", "output.log"]
