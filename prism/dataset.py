"""Prism dataset: game G-buffer sequences (colour, depth, motion) paired with photoreal frames at 2x or 3x.

Layout (one safetensors shard per sequence, so the temporal state can stream through it):

    ROOT/index.json                {"format": "prism-v1", "sequences": [{"file": "seq_0000.safetensors",
                                     "frames": T, "scale": 2, "size": [h, w], "is_real": false}, ...]}
    ROOT/seq_0000.safetensors      color          float16/32 (T, 3, h, w)    game frame, sRGB in [0, 1]
                                   depth          float16/32 (T, 1, h, w)    view depth / far plane, in [0, 1]
                                   motion_vectors float16/32 (T, 2, h, w)    pixels at input resolution, (dx, dy):
                                                                             this pixel was at (x+dx, y+dy) in the
                                                                             previous frame (0 on frame 0)
                                   ground_truth   float16/32 (T, 3, s*h, s*w) photoreal target, s = 2 or 3
                                   is_real        uint8 (T,)                 1: from real video, 0: synthetic

A sample is one frame of it: color[3,h,w], depth[1,h,w], motion_vectors[2,h,w], ground_truth[3,sh,sw],
is_real. Training reads clips of `clip_len` consecutive frames (the GRU state streams through a clip),
optionally a random crop of `crop` input pixels (the ground truth crop follows at s times).

    write_sequence(root / "seq_0000.safetensors", color=..., depth=..., motion_vectors=...,
                   ground_truth=..., is_real=...)
    write_index(root)                              # scans the shards, writes index.json
    ds = PrismDataset(root, clip_len=4, crop=64)    # validates every shard header at start
    clip = ds[i]                                    # dict of (T, ...) float32 tensors + "scale", "is_real"

Any problem is a DataError (ValueError) whose message is one line naming the file and the problem.
"""

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

KEYS = ("color", "depth", "motion_vectors", "ground_truth", "is_real")
CHANNELS = {"color": 3, "depth": 1, "motion_vectors": 2, "ground_truth": 3}
FLOAT_DTYPES = ("F16", "F32", "BF16")


class DataError(ValueError):
    """Bad input data: the message is one line naming the file and the problem."""


def write_sequence(path, color, depth, motion_vectors, ground_truth, is_real):
    """Write one sequence shard (tensors as in the layout above; images stored as float16) atomically."""
    path = Path(path)
    T = color.shape[0]
    tensors = {"color": color, "depth": depth, "motion_vectors": motion_vectors, "ground_truth": ground_truth}
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in tensors.items()}
    flag = torch.as_tensor(is_real, dtype=torch.uint8).reshape(-1)
    tensors["is_real"] = (flag.expand(T) if flag.numel() == 1 else flag).contiguous()
    check_shapes(path, {k: tuple(v.shape) for k, v in tensors.items()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def check_shapes(path, shapes, dtypes=None):
    """Validate a shard's key set, shapes and dtypes -> scale (2 or 3). Raises DataError."""
    missing = [k for k in KEYS if k not in shapes]
    if missing:
        raise DataError(
            f"{path}: missing key '{missing[0]}' (Prism shard needs {', '.join(KEYS)}; found "
            f"{', '.join(sorted(shapes)) or 'nothing'})"
        )
    for k, c in CHANNELS.items():
        if len(shapes[k]) != 4 or shapes[k][1] != c:
            raise DataError(f"{path}: '{k}' has shape {list(shapes[k])}, expected (T, {c}, H, W)")
        if dtypes and dtypes[k] not in FLOAT_DTYPES:
            raise DataError(f"{path}: '{k}' has dtype {dtypes[k]}, expected float16 or float32")
    T, _, h, w = shapes["color"]
    for k in ("depth", "motion_vectors"):
        if tuple(shapes[k][::2]) != (T, h) or shapes[k][3] != w:
            raise DataError(
                f"{path}: '{k}' has shape {list(shapes[k])}, expected ({T}, {CHANNELS[k]}, {h}, {w}) like 'color'"
            )
    gT, _, gh, gw = shapes["ground_truth"]
    scale = gh // h if h else 0
    if gT != T or scale not in (2, 3) or gh != scale * h or gw != scale * w:
        raise DataError(
            f"{path}: 'ground_truth' has shape {list(shapes['ground_truth'])}, expected ({T}, 3, {2 * h}, {2 * w}) "
            f"or ({T}, 3, {3 * h}, {3 * w}) for 'color' {list(shapes['color'])}"
        )
    if tuple(shapes["is_real"]) != (T,) or (dtypes and dtypes["is_real"] not in ("U8", "BOOL")):
        raise DataError(
            f"{path}: 'is_real' must be uint8 or bool of shape ({T},), got {list(shapes['is_real'])}"
            f"{' ' + dtypes['is_real'] if dtypes else ''}"
        )
    if T < 1 or h < 8 or w < 8:
        raise DataError(f"{path}: empty or tiny sequence (color {list(shapes['color'])})")
    return scale


def read_header(path):
    """-> (shapes, dtypes) of a shard, reading only its header. Raises DataError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
            dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise DataError(
            f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    return shapes, dtypes


def write_index(root):
    """Scan ROOT/*.safetensors and write ROOT/index.json (validates each shard). -> the index dict."""
    root = Path(root)
    seqs = []
    for f in sorted(root.glob("*.safetensors")):
        shapes, dtypes = read_header(f)
        scale = check_shapes(f, shapes, dtypes)
        with safe_open(str(f), framework="pt") as sf:
            real = bool(sf.get_tensor("is_real").any())
        seqs.append(
            {
                "file": f.name,
                "frames": shapes["color"][0],
                "scale": scale,
                "size": list(shapes["color"][2:]),
                "is_real": real,
            }
        )
    index = {"format": "prism-v1", "sequences": seqs}
    tmp = root / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(root / "index.json")
    return index


class PrismDataset(torch.utils.data.Dataset):
    """Clips of clip_len consecutive frames from every sequence (non-overlapping, in order).

    crop: random square crop of this many input pixels (None: whole frames). The crop of a clip is the same
    for all its frames and depends only on (seed, epoch, index), so a resumed run reads the same pixels."""

    def __init__(self, root, clip_len=4, crop=None, seed=0, sequences=None):
        self.root, self.clip_len, self.crop, self.seed, self.epoch = Path(root), clip_len, crop, seed, 0
        index_path = self.root / "index.json"
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        if not index_path.exists():
            raise DataError(
                f"{index_path}: missing (make it with prism/synth.py or prism/make_dataset.py, or "
                f"python -c 'from prism.dataset import write_index; write_index(\"{self.root}\")')"
            )
        try:
            index = json.loads(index_path.read_text())
            entries = index["sequences"]
            if index.get("format") != "prism-v1" or not isinstance(entries, list):
                raise ValueError("format is not prism-v1")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{index_path}: not a Prism index ({str(e).splitlines()[0]})") from None
        if not entries:
            raise DataError(f"{index_path}: lists no sequences")
        self.ids = list(range(len(entries))) if sequences is None else list(sequences)  # positions in index.json
        self.sequences = []
        for i, e in enumerate(entries[j] for j in self.ids):
            name = e.get("file") if isinstance(e, dict) else None
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
                raise DataError(
                    f"{index_path}: sequence {i} names {name!r}; expected a .safetensors file inside {self.root}"
                )
            path = self.root / name
            shapes, dtypes = read_header(path)
            scale = check_shapes(path, shapes, dtypes)
            T, _, h, w = shapes["color"]
            if crop and (crop > min(h, w)):
                raise DataError(f"{path}: frames {h}x{w} are smaller than the crop {crop}")
            self.sequences.append(
                {"path": path, "frames": T, "scale": scale, "size": (h, w), "is_real": bool(e.get("is_real"))}
            )
        if not self.sequences:
            raise DataError(f"{index_path}: no sequences selected")
        if min(s["frames"] for s in self.sequences) < clip_len:
            raise DataError(f"{self.root}: a sequence is shorter than clip_len={clip_len}")
        self.clips = [
            (si, t) for si, s in enumerate(self.sequences) for t in range(0, s["frames"] - clip_len + 1, clip_len)
        ]

    def __len__(self):
        return len(self.clips)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def scale_of(self, i):
        return self.sequences[self.clips[i][0]]["scale"]

    def split(self, val_sequences, seed=0):
        """-> (train, val) datasets, split by whole sequence: val_sequences of them (seeded) are held out."""
        n = len(self.sequences)
        if not 0 < val_sequences < n:
            raise DataError(f"{self.root}: {n} sequences cannot give {val_sequences} held-out and some to train on")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        val = sorted(self.ids[j] for j in perm[:val_sequences])
        train = sorted(self.ids[j] for j in perm[val_sequences:])
        mk = lambda idx, crop: PrismDataset(self.root, self.clip_len, crop, self.seed, sequences=idx)  # noqa: E731
        return mk(train, self.crop), mk(val, None)

    def __getitem__(self, i):
        si, t0 = self.clips[i]
        seq = self.sequences[si]
        s, (h, w) = seq["scale"], seq["size"]
        y0 = x0 = 0
        ch = cw = None
        if self.crop:
            g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i) % 2**63)
            ch = cw = self.crop
            y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        out = {}
        try:
            with safe_open(str(seq["path"]), framework="pt") as f:
                for k in KEYS:
                    sl = f.get_slice(k)
                    if k == "is_real":
                        out[k] = sl[t0 : t0 + self.clip_len].bool()
                    elif k == "ground_truth":
                        out[k] = (
                            sl[t0 : t0 + self.clip_len, :, y0 * s : (y0 + ch) * s, x0 * s : (x0 + cw) * s]
                            if ch
                            else sl[t0 : t0 + self.clip_len]
                        ).float()
                    else:
                        out[k] = (
                            sl[t0 : t0 + self.clip_len, :, y0 : y0 + ch, x0 : x0 + cw]
                            if ch
                            else sl[t0 : t0 + self.clip_len]
                        ).float()
        except Exception as e:
            raise DataError(
                f"{seq['path']}: unreadable data ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        for k in ("color", "depth", "motion_vectors", "ground_truth"):
            if not torch.isfinite(out[k]).all():
                raise DataError(f"{seq['path']}: '{k}' has NaN or inf values in frames {t0}..{t0 + self.clip_len - 1}")
        out["scale"] = s
        return out


def batches(dataset, batch_size, step, seed):
    """The clips of a training step, all of one scale: a seeded shuffle per epoch of same-scale groups, so
    2x and 3x are trained jointly (alternating batches) and a resumed run sees exactly the same data. Where a
    scale has both real and synthetic clips, each batch is half of each (the smaller kind is repeated).
    -> (list of clip indices, epoch)."""
    groups = {}
    for i in range(len(dataset)):
        seq = dataset.sequences[dataset.clips[i][0]]
        groups.setdefault(seq["scale"], {}).setdefault(seq["is_real"], []).append(i)
    per_epoch = sum(max(1, sum(map(len, g.values())) // batch_size) for g in groups.values())
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 7919 + epoch)
    chunks = []
    for scale in sorted(groups):
        kinds = [groups[scale][r] for r in sorted(groups[scale])]
        n = max(1, sum(map(len, kinds)) // batch_size)
        shares = [batch_size // len(kinds) + (j < batch_size % len(kinds)) for j in range(len(kinds))]
        streams = []
        for clips, share in zip(kinds, shares):
            perm = [clips[j] for j in torch.randperm(len(clips), generator=gen).tolist()]
            streams.append((perm * math.ceil(n * share / len(perm)))[: n * share])
        chunks += [sum((st[c * sh : (c + 1) * sh] for st, sh in zip(streams, shares)), []) for c in range(n)]
    order = torch.randperm(len(chunks), generator=gen).tolist()
    return chunks[order[k]], epoch


def collate(items):
    """Clips of one scale -> dict of (B, T, ...) tensors (+ int scale)."""
    out = {k: torch.stack([it[k] for it in items]) for k in KEYS}
    out["scale"] = items[0]["scale"]
    return out
