"""PPO agent that plays ViZDoom for GameNGen (CleanRL style: one file, one Args, a flat loop).

The paper trains an RL agent on the shaped reward (gamengen/doom.py) and records every episode it plays while
learning: those trajectories, from clumsy to competent, are GameNGen's training data.

    python gamengen/agent.py --out runs/doom_agent             # train 600k steps, save OUT/ckpt/latest
    python gamengen/agent.py --out runs/doom_agent --record data/doom         # ... and record all episodes
    python gamengen/agent.py --out runs/doom_agent --eval 50 --gif play.gif   # compare with random play
    python gamengen/agent.py --checkpoint runs/doom_agent/ckpt/latest --eval 10              # evaluate only
    python gamengen/collect.py --policy runs/doom_agent/ckpt/latest --steps 20000 --out data/doom_agent

Observation: the padded (3, 128, 160) RGB frame average-pooled 2x to (3, 64, 80), one frame (no stacking, so the
policy is a plain function of the frame, as collect.py expects). Action repeat 4 and sticky actions come from
DoomEnv. Logs one JSON line per update to OUT/metrics.jsonl (and stdout): mean shaped return of recent episodes.
"""

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import ckpt, runtime
from gamengen.doom import ACTIONS, DoomEnv


@dataclass
class Args:
    out: str = "runs/doom_agent"  # run directory: metrics.jsonl, ckpt/latest
    total_steps: int = 600_000  # agent steps to train, summed over environments (0 = no training)
    n_envs: int = 8  # games played in parallel (stepped in turn)
    n_steps: int = 128  # steps per environment per rollout
    lr: float = 5e-4  # Adam learning rate, annealed linearly to 0
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    n_minibatches: int = 4  # minibatches per epoch
    update_epochs: int = 4  # passes over each rollout
    clip: float = 0.2  # PPO ratio clip
    ent_coef: float = 0.01  # entropy bonus
    vf_coef: float = 0.5  # value loss weight
    max_grad_norm: float = 0.5  # gradient clip
    seed: int = 0  # seed of games, weights and sampling
    sticky: float = 0.25  # probability that DoomEnv repeats the previous action
    threads: int = 1  # torch CPU threads (1 is fastest on a small shared CPU)
    record: str = None  # record every episode played while learning into this folder (collect.py format)
    heldout: float = 0.1  # fraction of recorded episodes held out (seeded, whole episodes)
    shard_steps: int = 2000  # a recorded shard is written once it holds this many steps
    save_every: int = 20  # updates between checkpoints (OUT/ckpt/latest: weights, optimizer, progress)
    resume: bool = False  # continue an interrupted run from OUT/ckpt/latest (games restart, open episodes are lost)
    checkpoint: str = None  # load this agent checkpoint (skips training unless --total-steps is given)
    eval: int = 0  # after training, play N episodes with the agent and with a random policy; print both means
    gif: str = None  # with --eval: write the agent's first evaluation episode (up to 300 steps) to this GIF


class Agent(nn.Module):
    """Nature-CNN trunk on the pooled frame, separate actor and critic heads."""

    def __init__(self, n_actions=len(ACTIONS)):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 6, 512),
            nn.ReLU(),
        )
        self.actor, self.critic = nn.Linear(512, n_actions), nn.Linear(512, 1)
        nn.init.orthogonal_(self.actor.weight, 0.01)  # near-uniform initial policy
        nn.init.zeros_(self.actor.bias)

    def forward(self, frames):
        """uint8 frames (B, 3, 128, 160) -> (action logits (B, A), values (B,))."""
        x = F.adaptive_avg_pool2d(frames.float() / 255.0, (64, 80))  # 128x160 (or 256x320) -> 64x80
        h = self.trunk(x)
        return self.actor(h), self.critic(h).squeeze(-1)


def ppo_loss(agent, args, obs, actions, logp_old, advantages, returns):
    """Clipped surrogate + value loss - entropy bonus on one minibatch -> (loss, stats)."""
    logits, values = agent(obs)
    dist = torch.distributions.Categorical(logits=logits)
    logp = dist.log_prob(actions)
    ratio = (logp - logp_old).exp()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8) if len(advantages) > 1 else advantages
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip, 1 + args.clip)).mean()
    v = F.mse_loss(values, returns)
    ent = dist.entropy().mean()
    loss = pg + args.vf_coef * v - args.ent_coef * ent
    return loss, {"pg": pg.item(), "value": v.item(), "entropy": ent.item(), "kl": (logp_old - logp).mean().item()}


def load_agent(path):
    weights, _, meta = ckpt.load(path, with_state=False)
    agent = Agent()
    agent.load_state_dict(weights)
    return agent.eval(), meta


def policy_fn(agent, seed=0):
    """frame (3, H, W) uint8 -> action sampled from the agent's policy (what collect.py calls)."""
    g = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(frame):
        logits, _ = agent(torch.from_numpy(frame)[None])
        return int(torch.multinomial(logits.softmax(-1), 1, generator=g))

    return act


def load_policy(path, seed=0):
    return policy_fn(load_agent(path)[0], seed)


class Recorder:
    """Buffers each game's current episode; a finished one goes to the ShardWriter whole, with a fresh id."""

    def __init__(self, out, args, env_shape):
        from gamengen import collect as C

        self.C, self.args = C, args
        Path(out).mkdir(parents=True, exist_ok=True)
        for stale in Path(out).glob("*.tmp"):
            stale.unlink()
        index = C.load_index(out) or C.new_index("160x120")
        index["frame_shape"] = list(env_shape)
        self.writer = C.ShardWriter(out, index, args.shard_steps)
        self.next_id, self.finished = C.next_episode_id(index), {}
        self.eps = [[] for _ in range(args.n_envs)]

    def add(self, i, frame, action, reward, done):
        self.eps[i].append((frame, action, reward))
        if done:
            self.end(i, True)

    def end(self, i, done):
        if not self.eps[i]:
            return
        e = self.next_id
        self.next_id += 1
        for t, (frame, action, reward) in enumerate(self.eps[i]):
            self.writer.add(frame, action, reward, e, t)
        split = self.C.split_of(self.args.seed, self.args.heldout, e)
        self.finished[str(e)] = {"split": split, "length": len(self.eps[i]), "done": done, "policy": "ppo (learning)"}
        self.eps[i] = []
        if self.writer.steps() >= self.args.shard_steps:
            self.flush()

    def flush(self):
        self.writer.flush(self.finished)
        self.finished = {}

    def close(self):
        for i in range(len(self.eps)):
            self.end(i, False)  # episodes still running when training stops: recorded, marked cut short
        self.flush()


def train(args, agent=None):
    """PPO on n_envs games for args.total_steps steps; saves OUT/ckpt/latest. -> the agent."""
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    agent = agent or Agent()
    opt = torch.optim.Adam(agent.parameters(), lr=args.lr, eps=1e-5)
    envs = [DoomEnv(seed=args.seed * 1000 + i, sticky=args.sticky) for i in range(args.n_envs)]
    rec = Recorder(args.record, args, envs[0].shape) if args.record else None
    N, T = args.n_envs, args.n_steps
    obs = torch.zeros((T, N, *envs[0].shape), dtype=torch.uint8)
    actions, logps, rewards, dones, values = (torch.zeros((T, N)) for _ in range(5))
    frames = torch.from_numpy(np.stack([env.reset() for env in envs]))
    done_now = torch.zeros(N)
    ep_ret, returns_log = np.zeros(N), []
    n_updates = max(1, args.total_steps // (N * T))
    batch, mb = N * T, N * T // args.n_minibatches
    metrics, t0, step, start = open(out / "metrics.jsonl", "a"), time.time(), 0, 0
    if args.resume and (out / "ckpt" / "latest").exists():
        weights, state, meta = ckpt.load(out / "ckpt" / "latest")
        agent.load_state_dict(weights)
        opt.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        start, step, returns_log = meta["update"], meta["steps"], list(meta["returns"])
        print(f"resumed from update {start} ({step} steps)", flush=True)

    def save(update, name=None):
        """OUT/ckpt/step_<update> (and latest), or OUT/ckpt/<name>."""
        if rec:  # finished episodes reach the disk with the checkpoint that played them
            rec.flush()
        meta = {
            "args": asdict(args),
            "update": update,
            "steps": step,
            "episodes": len(returns_log),
            "returns": [round(r, 4) for r in returns_log],
            "actions": list(ACTIONS),
        }
        state = {"optimizer": opt.state_dict(), "rng": ckpt.rng_state()}
        if name is None:
            return ckpt.save_step(out / "ckpt", update, agent.state_dict(), state, meta)
        return ckpt.save(out / "ckpt", name, agent.state_dict(), state, meta)

    for update in range(start, n_updates):
        for g in opt.param_groups:
            g["lr"] = args.lr * (1 - update / n_updates)
        for t in range(T):  # rollout
            obs[t], dones[t] = frames, done_now
            with torch.no_grad():
                logits, v = agent(frames)
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()  # the policy's choice; DoomEnv may repeat the previous action instead (sticky)
            actions[t], logps[t], values[t] = a, dist.log_prob(a), v
            new = []
            for i, env in enumerate(envs):
                frame, r, d, info = env.step(int(a[i]))
                if rec:
                    rec.add(i, frames[i].numpy(), info["action"], r, d)
                rewards[t, i], done_now[i], ep_ret[i] = r, float(d), ep_ret[i] + r
                if d:
                    returns_log.append(ep_ret[i])
                    ep_ret[i], frame = 0.0, env.reset()
                new.append(frame)
            frames, step = torch.from_numpy(np.stack(new)), step + N
        with torch.no_grad():  # GAE
            next_v = agent(frames)[1]
            adv, last = torch.zeros((T, N)), torch.zeros(N)
            for t in reversed(range(T)):
                nonterminal = 1.0 - (done_now if t == T - 1 else dones[t + 1])
                nv = next_v if t == T - 1 else values[t + 1]
                delta = rewards[t] + args.gamma * nv * nonterminal - values[t]
                last = delta + args.gamma * args.gae_lambda * nonterminal * last
                adv[t] = last
            rets = adv + values
        b_obs, b_act, b_logp = obs.reshape(batch, *obs.shape[2:]), actions.reshape(-1).long(), logps.reshape(-1)
        b_adv, b_ret = adv.reshape(-1), rets.reshape(-1)
        for _ in range(args.update_epochs):  # minibatch epochs
            perm = torch.randperm(batch)
            for s in range(0, batch, mb):
                idx = perm[s : s + mb]
                loss, stats = ppo_loss(agent, args, b_obs[idx], b_act[idx], b_logp[idx], b_adv[idx], b_ret[idx])
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                opt.step()
        recent = returns_log[-20:]
        line = {
            "update": update + 1,
            "step": step,
            "time_s": round(time.time() - t0, 1),
            "episodes": len(returns_log),
            "mean_return": round(float(np.mean(recent)), 3) if recent else None,
            "sps": round(step / (time.time() - t0)),
            **{k: round(v, 4) for k, v in stats.items()},
        }
        metrics.write(json.dumps(line) + "\n")
        metrics.flush()
        print(json.dumps(line), flush=True)
        if args.save_every and (update + 1) % args.save_every == 0 and update + 1 < n_updates:
            save(update + 1)
    if rec:
        rec.close()
    for env in envs:
        env.close()
    path = save(n_updates, "final")
    ckpt.link(out / "ckpt", "latest", "final")
    print(f"saved {path} ({step} steps, {len(returns_log)} episodes, {time.time() - t0:.0f}s)")
    return agent


def evaluate(act, n, seed=10_000, sticky=0.25, gif=None):
    """Mean shaped return of n episodes played by act(frame) on the same seeded games (and kills per episode).
    With gif, the first episode's frames (up to 300 steps) are written there."""
    env, returns, kills, frames = DoomEnv(seed=seed, sticky=sticky), [], [], []
    for e in range(n):
        frame, done, total = env.reset(), False, 0.0
        while not done:
            if gif and e == 0 and len(frames) < 300:
                frames.append(torch.from_numpy(frame).float() / 255)
            frame, r, done, info = env.step(act(frame))
            total += r
        returns.append(total)
        kills.append(info["kills"])
    env.close()
    if gif:
        from common.images import save_gif

        save_gif(frames, gif, fps=9)  # 35 tics/s / action repeat 4 ~ 9 agent steps/s: real time
    return float(np.mean(returns)), returns, kills


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    comments = runtime.field_comments(Args)
    for f in fields(Args):  # one flag per Args field; its help is the field's comment
        comment = comments.get(f.name, "")
        kind = type(f.default) if f.default is not None else str
        if kind is bool:
            p.add_argument("--" + f.name.replace("_", "-"), action="store_true", default=None, help=comment)
        else:
            p.add_argument(
                "--" + f.name.replace("_", "-"), type=kind, default=None, help=f"{comment} (default: {f.default})"
            )
    ns = p.parse_args()
    args = Args(**{k: v for k, v in vars(ns).items() if v is not None})
    torch.set_num_threads(args.threads)
    agent = None
    if args.checkpoint:
        try:
            agent = load_agent(args.checkpoint)[0]
        except ckpt.CheckpointError as e:
            from common.runtime import fail

            fail(str(e))
    if agent is None or ns.total_steps:
        agent = train(args, agent).eval()
    if args.eval:
        trained, tr, tk = evaluate(policy_fn(agent, args.seed), args.eval, sticky=args.sticky, gif=args.gif)
        rng = random.Random(args.seed)
        rand, rr, rk = evaluate(lambda frame: rng.randrange(len(ACTIONS)), args.eval, sticky=args.sticky)
        se = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")  # noqa: E731
        print(
            json.dumps(
                {
                    "eval_episodes": args.eval,
                    "trained_mean_return": round(trained, 3),
                    "trained_se": round(se(tr), 3),
                    "random_mean_return": round(rand, 3),
                    "random_se": round(se(rr), 3),
                    "trained_mean_kills": float(np.mean(tk)),
                    "random_mean_kills": float(np.mean(rk)),
                    "trained": [round(x, 3) for x in tr],
                    "random": [round(x, 3) for x in rr],
                }
            )
        )


if __name__ == "__main__":
    main()
