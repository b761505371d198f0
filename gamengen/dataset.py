"""GameNGen training samples from pre-encoded latents: (target latent, N context latents, N actions, valid mask).

    ds = LatentSequences("runs/ae/latents", split="train", context=8)
    s = ds[0]   # target (4,16,20) f32, context (8,4,16,20) f32, actions (8,) int64, valid (8,) bool, episode, step
    python gamengen/dataset.py --latents runs/ae/latents --context 8 --batch 16    # data-loading share of a step

Context frames are the N frames before the target in the same episode, oldest first; context action t is what
the player pressed after seeing context frame t (so the last one leads to the target). A sample never crosses
episodes: near an episode's start the context is left-padded with zero latents and the noop action (0), and
`valid` marks the real context entries (valid[-k:] for k = min(N, step)). Episodes are train or held-out as a
whole, from the index. Latents are memory-mapped (numpy memmap over the safetensors payload: nothing is read
until a sample touches it, and a sample reads only its own N+1 rows); latents are multiplied by the index's
`scale` (1 / std of the train latents, as Stable Diffusion's 0.18215) unless scaled=False.
Any problem with an index or a shard (recorded episodes or latents) is a DataError naming the file.
"""

import argparse
import json
import math
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gamengen.doom import ACTIONS

DTYPES = {"U8": np.uint8, "I64": np.int64, "F16": np.float16, "F32": np.float32}


class DataError(ValueError):
    """Bad recorded episodes or latents: the message is one line naming the file and the problem."""


def mmap_safetensors(path):
    """{name: read-only numpy memmap view} of a safetensors file, zero-copy (the format is an 8-byte header
    length, a JSON header with dtype/shape/data_offsets, then the raw little-endian payload). DataError for a
    file that is not safetensors, is truncated or whose header lies about sizes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8).ljust(8, b"\xff"))[0]
            if n > size - 8:
                raise DataError(f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size})")
            header = json.loads(f.read(n))
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path}: corrupt safetensors header ({str(e).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: corrupt safetensors header (not a JSON object)")
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = v["data_offsets"]
            shape, dtype = [int(d) for d in v["shape"]], DTYPES[v["dtype"]]
            ok = all(isinstance(x, int) and x >= 0 for x in (a, b, *v["shape"])) and 8 + n + b <= size
            ok = ok and b - a == math.prod(shape) * np.dtype(dtype).itemsize
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise DataError(f"{path}: '{name}': header entry {v!r:.100} does not fit the file ({size} bytes)")
        out[name] = mm[8 + n + a : 8 + n + b].view(dtype).reshape(shape)
    return out


def read_shards(root, keys):
    """ROOT/index.json and the shards it lists, memory-mapped -> (index, [{key: array}]). Checks that every shard
    is a plain file name inside ROOT, holds `keys`, one row per recorded step in every tensor (as many as the index
    says) and actions in range. Raises DataError."""
    root = Path(root)
    path = root / "index.json"
    try:
        index = json.loads(path.read_text())
        names = [sh["file"] for sh in index["shards"]]
        bad = [e for e, v in index["episodes"].items() if not (e.isdigit() and isinstance(v, dict) and "split" in v)]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: not a GameNGen index ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if bad or not names:
        raise DataError(
            f"{path}: " + (f"episode {bad[0]!r}: expected an id with a 'split'" if bad else "lists no shards")
        )
    shards = []
    for sh, name in zip(index["shards"], names):
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise DataError(f"{path}: shard {name!r}: expected a .safetensors file inside {root}")
        s = mmap_safetensors(root / name)
        missing = [k for k in keys if k not in s]
        if missing:
            raise DataError(f"{root / name}: missing '{missing[0]}' (a shard holds {', '.join(keys)})")
        rows = {k: a.shape[0] if a.ndim else -1 for k, a in s.items()}  # every key holds one row per step
        if len(set(rows.values())) != 1 or rows[keys[0]] != sh.get("steps", rows[keys[0]]):
            raise DataError(f"{root / name}: rows per key {rows} differ (index.json says {sh.get('steps')} steps)")
        if any(s[k].ndim != 1 or s[k].dtype != np.int64 for k in ("actions", "episode", "step")):
            raise DataError(f"{root / name}: 'actions', 'episode' and 'step' must be int64 of shape (N,)")
        if len(s["actions"]) and not (0 <= s["actions"].min() and s["actions"].max() < len(ACTIONS)):
            raise DataError(f"{root / name}: 'actions' outside 0..{len(ACTIONS) - 1}")
        shards.append(s)
    return index, shards


def recorded_path(data, path, marker):
    """A path written into a latents index (the autoencoder "ckpt", the episodes "source") as given on encode's
    command line: tried as is, then relative to the latents folder and each of its parents; the first candidate
    holding `marker` (e.g. meta.json, index.json) wins. Raises ValueError."""
    p, root = Path(path), Path(data).resolve()
    for cand in [p, *(base / p for base in (root, *root.parents))]:
        if (cand / marker).exists():
            return cand
    raise ValueError(
        f"{path!r}, named in {data}/index.json, not found (looked beside the latents and in their parents)"
    )


class LatentSequences(torch.utils.data.Dataset):
    """One sample per recorded step of the split's episodes (the target), with its left-padded context."""

    def __init__(self, root, split="train", context=8, scaled=True):
        root = Path(root)
        self.root, self.context = root, context
        self.index, self.shards = read_shards(root, ("latents", "actions", "episode", "step"))
        self.scale = self.index.get("scale", 1.0) if scaled else 1.0
        if not isinstance(self.scale, (int, float)) or not 0 < self.scale < math.inf:
            raise DataError(f"{root / 'index.json'}: 'scale' {self.scale!r} is not a positive number")
        shapes = {tuple(s["latents"].shape[1:]) for s in self.shards}
        if len(shapes) != 1 or any(s["latents"].dtype.kind != "f" or s["latents"].ndim != 4 for s in self.shards):
            raise DataError(
                f"{root}: 'latents' must be float (N, C, h, w) of one shape in every shard, found {sorted(shapes)}"
            )
        ep = np.concatenate([s["episode"] for s in self.shards]).astype(np.int64)
        st = np.concatenate([s["step"] for s in self.shards]).astype(np.int64)
        self.shard_of = np.concatenate([np.full(len(s["episode"]), i) for i, s in enumerate(self.shards)])
        self.row_of = np.concatenate([np.arange(len(s["episode"])) for s in self.shards])
        self.order = np.lexsort((st, ep))  # sorted position -> global row; an episode is a contiguous run
        ep_s, st_s = ep[self.order], st[self.order]
        first = np.r_[True, ep_s[1:] != ep_s[:-1]]  # where each episode starts in sorted order
        start = np.maximum.accumulate(np.where(first, np.arange(len(ep_s)), 0))
        if len(ep_s) and not np.array_equal(st_s, np.arange(len(ep_s)) - start):
            raise DataError(f"{root}: an episode's steps are not contiguous from 0 (missing or duplicated shard?)")
        self.n_valid = np.minimum(np.arange(len(ep_s)) - start, context)  # real context frames before each
        splits = self.index["episodes"]
        keep = np.array([splits.get(str(e), {}).get("split") == split for e in ep_s], dtype=bool)
        self.targets = np.nonzero(keep)[0]
        self.ep_sorted, self.st_sorted = ep_s, st_s
        if not len(self.targets):
            raise DataError(f"{root}: no {split!r} episodes in the index")

    def __len__(self):
        return len(self.targets)

    def _rows(self, name, p0, p1):
        """Sorted positions [p0, p1) -> array; one slice when they lie in one shard (nearly always)."""
        rows, shards = self.row_of[self.order[p0:p1]], self.shard_of[self.order[p0:p1]]
        if len(rows) and shards[0] == shards[-1] and rows[-1] - rows[0] == len(rows) - 1:
            return np.asarray(self.shards[shards[0]][name][rows[0] : rows[-1] + 1])
        return np.stack([self.shards[s][name][r] for s, r in zip(shards, rows)]) if len(rows) else None

    def __getitem__(self, i):
        p, n, N = int(self.targets[i]), int(self.n_valid[self.targets[i]]), self.context
        lat = torch.from_numpy(self._rows("latents", p - n, p + 1).astype(np.float32)) * self.scale
        if not torch.isfinite(lat).all():
            raise DataError(
                f"{self.root}: 'latents' of episode {self.ep_sorted[p]} has NaN or inf values near step "
                f"{self.st_sorted[p]}"
            )
        ctx = torch.zeros((N,) + tuple(lat.shape[1:]))
        actions = torch.zeros(N, dtype=torch.int64)  # 0 = noop
        valid = torch.zeros(N, dtype=torch.bool)
        if n:
            ctx[N - n :] = lat[:n]
            actions[N - n :] = torch.from_numpy(self._rows("actions", p - n, p).astype(np.int64))
            valid[N - n :] = True
        return {
            "target": lat[n],
            "context": ctx,
            "actions": actions,
            "valid": valid,
            "episode": int(self.ep_sorted[p]),
            "step": int(self.st_sorted[p]),
        }


class TinyUNet(nn.Module):
    """A stand-in for the diffusion U-Net's cost: noisy target + context latents (channel-concatenated) and an
    action embedding -> predicted noise, two resolutions (16x20, 8x10)."""

    def __init__(self, context=8, ch=4, width=128, actions=8):
        super().__init__()
        self.emb = nn.Embedding(actions, width)
        self.inp = nn.Conv2d(ch * (context + 1), width, 3, padding=1)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.SiLU(), nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU()
        )
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU())
        self.out = nn.Sequential(
            nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, ch, 3, padding=1)
        )

    def forward(self, x, actions):
        h = F.silu(self.inp(x) + self.emb(actions).mean(1)[:, :, None, None])
        return self.out(torch.cat([h, self.up(self.down(h))], 1))


def bench(root, context=8, batch=16, steps=20, workers=0):
    """Seconds per batch of data loading vs one TinyUNet forward+backward+AdamW step on that batch."""
    ds = LatentSequences(root, "train", context)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    net = TinyUNet(context)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    t_data = t_step = 0.0
    it = iter(dl)
    for i in range(steps + 2):
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        noise = torch.randn_like(b["target"])
        x = torch.cat([b["target"] + noise, b["context"].flatten(1, 2)], 1)
        loss = F.mse_loss(net(x, b["actions"]), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= 2:  # warm-up
            t_data, t_step = t_data + t1 - t0, t_step + t2 - t1
    return t_data / steps, t_step / steps


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--latents", required=True, help="folder written by `gamengen/autoencoder.py encode`")
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(0)
    d, s = bench(a.latents, a.context, a.batch, a.steps, a.workers)
    print(
        f"data {d * 1e3:.2f} ms/batch, step {s * 1e3:.1f} ms (TinyUNet fwd+bwd, batch {a.batch}, context {a.context}): "
        f"data-loading share {100 * d / (d + s):.1f}%"
    )


if __name__ == "__main__":
    main()
