"""GameNGen's PPO agent (gamengen/agent.py): a tiny run saves a loadable checkpoint and records every episode it
plays in collect.py's format; the PPO update favours advantaged actions; collect.py --policy CKPT plays the agent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("vizdoom", reason="GameNGen needs vizdoom (bash run.sh smoke installs gamengen/requirements.txt)")

from common import ckpt  # noqa: E402
from gamengen.agent import Agent, Args, load_agent, load_policy, ppo_loss, train  # noqa: E402
from gamengen.collect import collect, load_index, split_of  # noqa: E402
from gamengen.doom import ACTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def forward_agent(path):
    """A checkpoint whose policy almost always presses 'forward'."""
    agent = Agent()
    with torch.no_grad():
        agent.actor.bias[ACTIONS.index("forward")] = 20.0
    return ckpt.save(path, "final", agent.state_dict(), {}, {"actions": list(ACTIONS)})


def test_tiny_ppo_run_saves_checkpoint_and_records_all_episodes(tmp_path):
    rec = tmp_path / "rec"
    collect(rec, 40, seed=0, shard_steps=40, progress=False)  # recording continues an existing collection
    args = Args(
        out=str(tmp_path / "run"),
        total_steps=256,
        n_envs=2,
        n_steps=64,
        n_minibatches=2,
        update_epochs=1,
        record=str(rec),
        shard_steps=100,
        heldout=0.5,
    )
    agent = train(args)
    loaded, meta = load_agent(tmp_path / "run" / "ckpt" / "latest")
    assert meta["steps"] == 256 and all(torch.equal(v, loaded.state_dict()[k]) for k, v in agent.state_dict().items())
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [128, 256]

    index = load_index(rec)
    assert sum(s["steps"] for s in index["shards"]) == 40 + 256  # every step the agent played is recorded
    assert index["frame_shape"] == [3, 128, 160] and index["actions"] == list(ACTIONS)
    ids = [seg[0] for sh in index["shards"] for seg in sh["segments"]]
    assert len(ids) == len(set(ids)) == len(index["episodes"]) and min(ids[1:]) > ids[0]  # unique, after collect's
    for shard in index["shards"][1:]:
        d = load_file(str(rec / shard["file"]))
        assert d["frames"].shape[1:] == (3, 128, 160) and d["actions"].max() < len(ACTIONS)
        for e, first, length in shard["segments"]:  # agent episodes are written whole
            rows = d["episode"] == e
            assert first == 0 and rows.sum() == length == index["episodes"][str(e)]["length"]
            assert torch.equal(d["step"][rows], torch.arange(length))
            assert index["episodes"][str(e)]["split"] == split_of(0, 0.5, e)
    assert not list(rec.glob("*.tmp"))


def test_ppo_run_resumes_from_its_latest_checkpoint(tmp_path):
    """--resume continues from OUT/ckpt/latest: the update count, steps and episode returns carry on (one new update,
    not three), the weights are the saved ones, and the recording goes on after the episodes already on disk."""
    rec, out = tmp_path / "rec", tmp_path / "run"
    args = Args(
        out=str(out),
        total_steps=256,
        n_envs=2,
        n_steps=64,
        n_minibatches=2,
        update_epochs=1,
        record=str(rec),
        shard_steps=100,
        save_every=1,
    )
    first = train(args)
    recorded = sum(s["steps"] for s in load_index(rec)["shards"])
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    args.total_steps, args.resume, args.lr = 384, True, 0.0  # lr 0: the resumed weights come out unchanged
    second = train(args)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [128, 256, 384]
    _, meta = load_agent(out / "ckpt" / "latest")
    assert meta["update"] == 3 and meta["steps"] == 384 and len(meta["returns"]) == lines[-1]["episodes"]
    assert all(torch.equal(saved[k], v) for k, v in second.state_dict().items())  # it went on from the saved weights
    assert sum(s["steps"] for s in load_index(rec)["shards"]) == recorded + 128


def test_ppo_update_raises_probability_of_advantaged_action():
    torch.manual_seed(0)
    agent, args = Agent(), Args(ent_coef=0.0, clip=0.2)
    obs = torch.randint(0, 256, (32, 3, 128, 160), dtype=torch.uint8)
    good, bad = ACTIONS.index("attack"), ACTIONS.index("turn_left")
    actions = torch.tensor([good, bad] * 16)
    adv = torch.tensor([1.0, -1.0] * 16)
    with torch.no_grad():
        logits, values = agent(obs)
        logp_old = torch.distributions.Categorical(logits=logits).log_prob(actions)
        p_before = logits.softmax(-1).mean(0)
    returns = values + adv
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, _ = ppo_loss(agent, args, obs, actions, logp_old, adv, returns)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        p_after = agent(obs)[0].softmax(-1).mean(0)
    assert p_after[good] > 1.1 * p_before[good] and p_after[bad] < 0.9 * p_before[bad]
    assert losses[-1] < losses[0]


def test_collect_plays_a_saved_agent(tmp_path):
    path = forward_agent(tmp_path / "ckpt")
    index = collect(tmp_path / "a", 30, policy=load_policy(path), progress=False)
    d = load_file(str(tmp_path / "a" / index["shards"][0]["file"]))
    assert (d["actions"] == ACTIONS.index("forward")).all()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "gamengen/collect.py", "--policy", str(path), "--steps", "30", "--out", str(tmp_path / "b")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    d = load_file(str(tmp_path / "b" / "shard_00000.safetensors"))
    assert d["actions"].shape == (30,) and (d["actions"] == ACTIONS.index("forward")).all()
    r = subprocess.run(
        [
            sys.executable,
            "gamengen/collect.py",
            "--policy",
            str(tmp_path / "nope"),
            "--steps",
            "30",
            "--out",
            str(tmp_path / "c"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a checkpoint directory" in r.stderr


def test_agent_cli_evaluates_a_checkpoint_against_random(tmp_path):
    path = forward_agent(tmp_path / "ckpt")
    r = subprocess.run(
        [sys.executable, "gamengen/agent.py", "--checkpoint", str(path), "--eval", "1"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(result["trained"]) == len(result["random"]) == 1
    assert result["trained_mean_return"] == result["trained"][0] and result["random_mean_return"] == result["random"][0]
    assert "saved" not in r.stdout and "update" not in r.stdout  # evaluation alone trains and saves nothing
