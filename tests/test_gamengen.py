"""GameNGen part 1 so far: the ViZDoom game (action table, padded frames, shaped reward) and episode recording
(shards of whole episodes, held-out split by episode, resumable, nothing partial kept after a kill -9)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("vizdoom", reason="GameNGen needs vizdoom (bash run.sh smoke installs gamengen/requirements.txt)")

from gamengen.collect import collect  # noqa: E402
from gamengen.doom import ACTIONS, VARIABLES, DoomEnv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_game_frames_are_padded_and_actions_move_the_player():
    env = DoomEnv(seed=0, sticky=0.0)
    frame = env.reset()
    assert frame.shape == (3, 128, 160) and frame.dtype == np.uint8
    assert (
        frame[:, :4].max() == 0 and frame[:, -4:].max() == 0 and frame[:, 4:124].mean() > 10
    )  # 120 rows + black bands
    assert ACTIONS == (
        "noop",
        "attack",
        "forward",
        "backward",
        "strafe_left",
        "strafe_right",
        "turn_left",
        "turn_right",
    )
    x0 = (env.vars["POSITION_X"], env.vars["POSITION_Y"])
    moved = None
    for _ in range(5):
        moved, _, _, info = env.step(ACTIONS.index("forward"))
    assert info["action"] == ACTIONS.index("forward")
    assert (env.vars["POSITION_X"], env.vars["POSITION_Y"]) != x0 and not np.array_equal(moved, frame)
    turned, _, _, _ = env.step(ACTIONS.index("turn_left"))
    assert not np.array_equal(turned, moved)
    env.close()


def test_shaped_reward_follows_the_paper():
    base = dict.fromkeys(VARIABLES, 0.0)  # every game variable DoomEnv reads, at zero
    r = lambda **d: DoomEnv.shaped_reward(base, dict(base, **d))  # noqa: E731
    assert r(KILLCOUNT=1) == pytest.approx(1.0) and r(HITCOUNT=1) == pytest.approx(0.3)
    assert r(HITS_TAKEN=1) == pytest.approx(-0.1) and r(ITEMCOUNT=1) == pytest.approx(0.1)
    assert r(HEALTH=-10) == pytest.approx(-0.1) and r(SELECTED_WEAPON_AMMO=-1) == pytest.approx(-0.001)
    assert DoomEnv.shaped_reward(base, base, dead=True) == -5.0


def test_collect_shards_split_by_episode_and_resume(tmp_path):
    index = collect(tmp_path, 500, seed=1, heldout=0.3, shard_steps=150, progress=False)
    assert [s["steps"] for s in index["shards"]] == [150, 150, 150, 50]
    first = (tmp_path / "shard_00000.safetensors").read_bytes()
    index = collect(tmp_path, 900, seed=1, heldout=0.3, shard_steps=150, progress=False)  # continues
    assert (
        sum(s["steps"] for s in index["shards"]) == 900 and (tmp_path / "shard_00000.safetensors").read_bytes() == first
    )
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk == json.loads(json.dumps(index))
    steps = {}
    for shard in index["shards"]:
        d = load_file(str(tmp_path / shard["file"]))
        assert d["frames"].dtype == torch.uint8 and d["frames"].shape[1:] == (3, 128, 160)
        assert d["actions"].min() >= 0 and d["actions"].max() < len(ACTIONS)
        for e, first_step, length in shard["segments"]:
            rows = d["episode"] == e
            assert rows.sum() == length and torch.equal(d["step"][rows], torch.arange(first_step, first_step + length))
            steps.setdefault(e, []).append((first_step, length))
    for e, parts in steps.items():  # every episode's steps are contiguous from 0 across shards
        assert sorted(parts)[0][0] == 0 and sum(n for _, n in parts) == index["episodes"][str(e)]["length"]
    splits = {v["split"] for v in index["episodes"].values()}
    assert splits <= {"train", "heldout"} and len(index["episodes"]) >= 3


def test_kill_during_collection_keeps_only_complete_shards(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "gamengen/collect.py", "--steps", "200000", "--shard-steps", "100", "--out", str(tmp_path)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("shard_*.safetensors"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: collect.py and its ViZDoom game process
    proc.wait()
    index = json.loads((tmp_path / "index.json").read_text())
    for shard in index["shards"]:  # everything the index lists is complete and readable
        assert load_file(str(tmp_path / shard["file"]))["actions"].shape == (shard["steps"],)
    before = len(index["shards"])
    r = subprocess.run([*cmd[:3], str(before * 100 + 150), *cmd[4:]], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    index = json.loads((tmp_path / "index.json").read_text())
    assert sum(s["steps"] for s in index["shards"]) == before * 100 + 150
    assert not list(tmp_path.glob("*.tmp"))
    assert {p.name for p in tmp_path.glob("shard_*")} == {s["file"] for s in index["shards"]}


def test_collect_cli_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    (tmp_path / "index.json").write_text("{broken")
    r = subprocess.run(
        [sys.executable, "gamengen/collect.py", "--steps", "10", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "index.json: not a GameNGen episode index" in r.stderr
