"""Record ViZDoom episodes for GameNGen: frames, actions, rewards, episode and step ids, in safetensors shards.

    python gamengen/collect.py --policy random --steps 20000 --out data/doom
    python gamengen/collect.py --policy random --steps 40000 --out data/doom     # resumes: records 20000 more
    python gamengen/collect.py --policy runs/doom_agent/ckpt/latest --steps 20000 --out data/doom_agent   # PPO agent

Layout (one shard = whole episodes, or consecutive parts of one long episode):

    OUT/index.json              {"format": "gamengen-episodes-v1", "actions": [...], "frame_shape": [3, 128, 160],
                                 "shards": [{"file": "shard_00000.safetensors", "steps": N,
                                             "segments": [[episode, first_step, length], ...]}],
                                 "episodes": {"0": {"split": "train"|"heldout", "length": L, "done": true,
                                                           "policy": "random"}}}
    OUT/shard_00000.safetensors frames  uint8 (N, 3, H, W)   frame t of an episode
                                actions int64 (N,)           what the player pressed after seeing frame t
                                rewards float32 (N,)         shaped reward of that step (gamengen/doom.py)
                                episode int64 (N,), step int64 (N,)

An episode's last record is its last observed frame (its action is the one that ended it); "done": false marks
an episode cut short by --steps or by an interrupted run. Each episode is train or held-out as a whole
(seeded, --heldout fraction). Shards are written to a temporary name and renamed,
then index.json is replaced: an interrupted collection keeps every completed shard and never a partial one;
running the same command again continues after the last complete shard (the episode in progress is replayed
from its start with a new episode id).
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from safetensors.torch import save_file

from common.log import progress as progress_bar
from common.runtime import fail
from gamengen.doom import ACTIONS, DoomEnv

FORMAT = "gamengen-episodes-v1"


def load_index(out):
    path = Path(out) / "index.json"
    if not path.exists():
        return None
    try:
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"format is {index.get('format')!r}, expected {FORMAT}")
        return index
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a GameNGen episode index ({e})") from None


class ShardWriter:
    """Buffers steps and writes a shard of whole episodes (or a part of a long one) every `shard_steps`."""

    def __init__(self, out, index, shard_steps):
        self.out, self.index, self.shard_steps = Path(out), index, shard_steps
        self.buf = {k: [] for k in ("frames", "actions", "rewards", "episode", "step")}

    def add(self, frame, action, reward, episode, step):
        for k, v in zip(self.buf, (frame, action, reward, episode, step)):
            self.buf[k].append(v)

    def steps(self):
        return len(self.buf["actions"])

    def flush(self, episodes):
        """Write the buffer as the next shard and record `episodes` (finished ones) in the index, atomically."""
        n = self.steps()
        if n:
            name = f"shard_{len(self.index['shards']):05d}.safetensors"
            ep, st = np.array(self.buf["episode"]), np.array(self.buf["step"])
            segments = []
            for e in dict.fromkeys(ep.tolist()):
                rows = np.nonzero(ep == e)[0]
                segments.append([int(e), int(st[rows[0]]), int(len(rows))])
            tensors = {
                "frames": torch.from_numpy(np.stack(self.buf["frames"])),
                "actions": torch.tensor(self.buf["actions"], dtype=torch.int64),
                "rewards": torch.tensor(self.buf["rewards"], dtype=torch.float32),
                "episode": torch.from_numpy(ep.astype(np.int64)),
                "step": torch.from_numpy(st.astype(np.int64)),
            }
            tmp = self.out / (name + ".tmp")
            save_file(tensors, str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            tmp.replace(self.out / name)
            self.index["shards"].append({"file": name, "steps": n, "segments": segments})
            self.buf = {k: [] for k in self.buf}
        self.index["episodes"].update(episodes)
        tmp = self.out / "index.json.tmp"
        tmp.write_text(json.dumps(self.index, indent=1))
        tmp.replace(self.out / "index.json")


def new_index(resolution):
    return {"format": FORMAT, "actions": list(ACTIONS), "resolution": resolution, "shards": [], "episodes": {}}


def next_episode_id(index):
    return 1 + max(
        [int(e) for e in index["episodes"]] + [s[0] for sh in index["shards"] for s in sh["segments"]] + [-1]
    )


def split_of(seed, heldout, episode):
    """Seeded, per-episode train / held-out assignment (the same for collect.py and agent.py --record)."""
    return "heldout" if random.Random(f"split/{seed}/{episode}").random() < heldout else "train"


def random_policy(rng):
    return lambda frame: rng.randrange(len(ACTIONS))


def collect(
    out, steps, policy="random", seed=0, heldout=0.1, shard_steps=2000, resolution="160x120", sticky=0.25, progress=True
):
    """Play until OUT holds `steps` recorded steps (continuing an earlier collection). -> the index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.tmp"):  # a shard being written when the last run was killed
        stale.unlink()
    index = load_index(out) or new_index(resolution)
    done_steps = sum(s["steps"] for s in index["shards"])
    next_episode = next_episode_id(index)
    if done_steps >= steps:
        return index
    rng = random.Random(f"{seed}/{next_episode}")  # a resumed run does not replay the same random game
    env = DoomEnv(seed=seed * 100_003 + next_episode, resolution=resolution, sticky=sticky)
    index["frame_shape"] = list(env.shape)
    act = random_policy(rng) if policy == "random" else policy
    name = policy if isinstance(policy, str) else getattr(policy, "name", "agent")  # recorded per episode in the index
    writer = ShardWriter(out, index, shard_steps)
    finished = {}
    bar = progress_bar(total=steps, initial=done_steps, desc="collect", unit="step", disable=not progress)
    episode, t, frame = next_episode, 0, env.reset()
    while done_steps + writer.steps() < steps:
        action = act(frame)
        next_frame, reward, done, info = env.step(action)
        writer.add(frame, info["action"], reward, episode, t)
        bar.update(1)
        t += 1
        frame = next_frame
        last = done_steps + writer.steps() >= steps
        if done or last:
            finished[str(episode)] = {
                "split": split_of(seed, heldout, episode),
                "length": t,
                "done": bool(done),
                "policy": name,
            }
            episode, t, frame = episode + 1, 0, env.reset()
        if writer.steps() >= shard_steps or last:
            if t:  # the episode in progress continues in the next shard; if the run dies first, it stays truncated
                finished[str(episode)] = {
                    "split": split_of(seed, heldout, episode),
                    "length": t,
                    "done": False,
                    "policy": name,
                }
            done_steps += writer.steps()
            writer.flush(finished)
            finished = {}
    bar.close()
    env.close()
    return index


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--policy",
        default="random",
        help="random (uniform over the 8 actions) or a gamengen/agent.py checkpoint (e.g. runs/doom_agent/ckpt/latest)",
    )
    p.add_argument(
        "--steps", type=int, required=True, help="total recorded steps in OUT (an existing collection is continued)"
    )
    p.add_argument("--out", required=True, help="output folder (index.json + shard_XXXXX.safetensors)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the games, the random policy and the train/held-out split"
    )
    p.add_argument("--heldout", type=float, default=0.1, help="fraction of episodes held out (whole episodes)")
    p.add_argument("--shard-steps", type=int, default=2000, help="steps per shard (a shard is written when it is full)")
    p.add_argument(
        "--resolution", default="160x120", choices=["160x120", "320x240"], help="game screen (padded to 128 / 256 rows)"
    )
    p.add_argument("--sticky", type=float, default=0.25, help="probability of repeating the previous action instead")
    args = p.parse_args()
    policy = args.policy
    if policy != "random":  # a PPO agent checkpoint (gamengen/agent.py): actions sampled from its policy
        from common.ckpt import CheckpointError
        from gamengen.agent import load_policy

        try:
            torch.set_num_threads(1)
            policy = load_policy(args.policy, args.seed)
            policy.name = f"agent {args.policy}"
        except CheckpointError as e:
            fail(f"--policy {args.policy}: {e}")
    try:
        t0 = time.time()
        index = collect(
            args.out, args.steps, policy, args.seed, args.heldout, args.shard_steps, args.resolution, args.sticky
        )
    except ValueError as e:
        fail(str(e))
    eps = index["episodes"].values()
    print(
        f"{sum(s['steps'] for s in index['shards'])} steps in {len(index['shards'])} shards, "
        f"{len(index['episodes'])} episodes "
        f"({sum(e['split'] == 'heldout' for e in eps)} held out) in {args.out} ({time.time() - t0:.0f}s this run)"
    )


if __name__ == "__main__":
    main()
