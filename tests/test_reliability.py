"""Reliability, for NSS, NeuroPBR, Prism and GameNGen: nothing lost on a crash, no crash on bad input, nothing
unpickled from strangers.

- kill -9 in the middle of a checkpoint write and after a random delay: every checkpoint a reader can name is
  complete, and --resume ends bit-identical to an uninterrupted run; SIGINT / SIGTERM save and exit 130 / 0 with one line.
- every reader under a seeded fuzz loop (truncation, random bytes, headers that lie about sizes, wrong dtypes and
  shapes, missing keys, NaN / inf, PNGs that are not PNGs or have other sizes, malformed or path-escaping JSON,
  shards of mismatched lengths): its own error with one line naming the file, or success on a file that is still
  valid; nothing else. A few runs check the command lines: exit code 2 and one line.
- a malicious pickle in state.pt (or a .pth, or a .pt2) is refused without running; a NaN loss is skipped and
  counted, or stops the run with the last good state; an unwritable or full disk is refused before training and
  a failed write mid-run keeps the previous checkpoint.

Smoke runs one random-delay kill per use case; NANONG_STRESS=1 (`bash run.sh stress`) runs the long versions: >= 5 kills at random moments (plus one mid-write)
per use case, both signals everywhere, 5,000 mutations per reader; counts go to $NANONG_STRESS_REPORT (JSON).
"""
import importlib
import io
import json
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save, save_file

from common import ckpt
from tests.conftest import run_main

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
STRESS = os.environ.get("NANONG_STRESS") == "1"
RANDOM_KILLS = 5 if STRESS else 1          # kills after a random delay, per use case (plus one mid-write kill)
MUTATIONS = 5000 if STRESS else 200        # fuzz cases per reader
PAUSE = 0.15                               # NANONG_CKPT_PAUSE: seconds between the stages of a checkpoint write
REPORT = {"kills": {}, "fuzz": {}}
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@dataclass
class Case:
    name: str
    script: str
    args: list          # a short tiny run: {data}, {out} filled in
    longer: list        # appended: a run long enough to be signalled mid-training

    @property
    def module(self):
        return self.script[:-3].replace("/", ".")

    @property
    def main(self):
        return importlib.import_module(self.module).main

    def argv(self, data, out):
        return [str(a).format(data=data, out=out) for a in self.args]


CASES = {c.name: c for c in [
    Case("nss", "nss/train.py", ["--data", "{data}", "--out", "{out}", "--preset", "tiny", "--max-steps", 8, "--save-every", 2,
                                 "--no-evaluate", "--seed", 5, "--log-level", "quiet"], ["--max-steps", 100_000]),
    Case("neuropbr", "neuropbr/train.py", ["--data", "{data}", "--out", "{out}", "--preset", "tiny", "--image-size", 32,
                                           "--save-every", 2, "--seed", 3, "--log-level", "quiet"], ["--epochs", 100_000]),
    Case("prism", "prism/train.py", ["--data", "{data}", "--out", "{out}", "--preset", "tiny", "--max-steps", 8, "--save-every", 2,
                                     "--log-level", "quiet"], ["--max-steps", 100_000]),
    Case("gamengen", "gamengen/train.py", ["diffusion", "--data", "{data}", "--out", "{out}", "--preset", "tiny",
                                           "--save-every", 2, "--log-level", "quiet"], ["--max-steps", 100_000]),
]}


def in_process(case, *argv):
    """main() of the case's train.py with these arguments, in this process -> exit code (0 when it returns)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_main(case.main, *argv)
        return 0
    except SystemExit as e:
        return e.code
    finally:
        for s, h in handlers.items():     # StopSignal installed its own
            signal.signal(s, h)


def _child(module, argv, stdout, stderr, pause):
    """A training run in a process of its own, its stdout and stderr in files (see start)."""
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    ckpt.PAUSE = pause
    run_main(importlib.import_module(module).main, *argv)


def start(case, argv, stdout, stderr=None, pause=0.0):
    """Run train.py in a new process, as `python train.py argv` would, but forked from a server that has imported
    torch and every train.py once (a fresh interpreter takes seconds to import them, a fork milliseconds).
    -> multiprocessing.Process: kill() is kill -9; exitcode as the command's exit code."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "tests.test_reliability", *(c.module for c in CASES.values())])
    p = ctx.Process(target=_child, args=(case.module, [str(a) for a in argv], str(stdout), str(stderr or stdout), pause))
    p.start()
    return p


def weights(out):
    return ckpt.load(Path(out) / "ckpt" / "latest", with_state=False)[0]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line_error(err, *needles):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and all(str(n) in lines[0] for n in needles)


@pytest.fixture(scope="module")
def data(tmp_path_factory, request):
    """name -> tiny data for that use case, made on first use."""
    made = {}

    def get(name):
        if name not in made:
            root = tmp_path_factory.mktemp(f"{name}_data")
            if name == "nss":
                from nss.synth import make_dataset
                make_dataset(root / "train", 2, 6, (32, 32), seed=1, progress=False)
            elif name == "neuropbr":
                from neuropbr.synth import make_dataset
                make_dataset(root, 4, size=32, seed=1, progress=False)
            elif name == "prism":
                from prism.synth import make_dataset
                make_dataset(root, sequences=4, frames=2, size=32, seed=0, progress=False)
            else:
                root = request.getfixturevalue("gamengen_tiny") / "latents"
            made[name] = root
        return made[name]
    return get


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """name -> the run folder of an uninterrupted run (in this process)."""
    done = {}

    def get(name):
        if name not in done:
            case, out = CASES[name], tmp_path_factory.mktemp(f"{name}_reference")
            assert in_process(case, *case.argv(data(name), out)) == 0
            done[name] = out
        return done[name]
    return get


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if STRESS and os.environ.get("NANONG_STRESS_REPORT"):
        Path(os.environ["NANONG_STRESS_REPORT"]).write_text(json.dumps(REPORT, indent=1))


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
    want, counts = weights(reference(name)), {"survived": 0, "inside_a_checkpoint_write": 0, "before_the_first_checkpoint": 0}
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
        for attempt in range(2):        # killed, and maybe killed again while resuming
            p = start(case, argv + ["--resume"] * attempt, log, pause=PAUSE / 3)
            time.sleep(rng.uniform(0, t_run))
            if not p.is_alive():
                break
            writing = ck.is_dir() and any(f.name.startswith((".tmp-step_", ".tmp-best-", ".old-")) for f in ck.iterdir())
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


SIGNALS = [(n, s) for n in CASES for s in (signal.SIGINT, signal.SIGTERM)] if STRESS else \
    [("nss", signal.SIGINT), ("neuropbr", signal.SIGTERM), ("prism", signal.SIGTERM), ("gamengen", signal.SIGINT)]


@pytest.mark.parametrize("name,sig", SIGNALS, ids=[f"{n}-{s.name}" for n, s in SIGNALS])
def test_sigint_sigterm_save_a_checkpoint_and_exit_with_one_line(name, sig, data, tmp_path):
    case, out = CASES[name], tmp_path / "run"
    p = start(case, case.argv(data(name), out) + case.longer, tmp_path / "stdout", tmp_path / "stderr")
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):   # training
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
    os.replace(tmp_path / "best", tmp_path / ".old-best-999")          # what such a kill leaves
    assert ckpt.load(tmp_path / "best")[2]["step"] == 1
    ckpt.prune(tmp_path, keep=set())
    assert ckpt.load(tmp_path / "best")[2]["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_kill_while_an_old_step_is_deleted_leaves_no_half_step_under_its_name(tmp_path, monkeypatch):
    ckpt.save_step(tmp_path, 1, {"w": torch.ones(2)}, {}, {"step": 1})

    def killed(path, ignore_errors=False):        # dies after the first file, as a kill -9 in rmtree would
        if Path(path).exists():
            next(Path(path).iterdir()).unlink()
            raise KeyboardInterrupt
    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_step(tmp_path, 2, {"w": torch.ones(2)}, {}, {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["latest", "step_0000002"]
    assert assert_intact(tmp_path) == 2


# ------------------------------------------------------------------------------------------------ mutations

def mutate_bytes(b, rng):
    """Generic damage: truncation, random bytes, flipped / overwritten / deleted / inserted spans, an empty file."""
    k, n = rng.randrange(7), len(b)
    i, j = sorted(rng.randrange(n + 1) for _ in range(2))
    if k == 0:
        return b[:rng.randrange(n)] if n else b
    if k == 1:
        return rng.randbytes(rng.randrange(1, 2 * n + 2))
    if k == 2:
        b = bytearray(b)
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if k == 3:
        return b[:i] + rng.randbytes(min(j - i, 64) or 1) + b[i + (min(j - i, 64) or 1):]
    if k == 4:
        return b[:i] + b[j:]
    if k == 5:
        return b[:i] + rng.randbytes(rng.randint(1, 64)) + b[i:]
    return b""


ODD_VALUES = ["../../etc/passwd", "/etc/passwd", "..", ".", "", "a/b", "C:\\x", "x" * 300, None, True, -1, 0, 10**12, 2.5,
              float("nan"), [], {}, [1, 2], {"a": 1}]


def mutate_json(b, rng):
    """A malformed or well-formed-but-wrong JSON document: odd values (paths leaving the folder, wrong types), keys
    removed, renamed or added; or generic damage."""
    try:
        doc = json.loads(b)
    except ValueError:
        return mutate_bytes(b, rng)
    if rng.random() < 0.3:
        return mutate_bytes(b, rng)
    slots = []

    def walk(x):
        for k in (x if isinstance(x, dict) else range(len(x)) if isinstance(x, list) else []):
            slots.append((x, k))
            walk(x[k])
    walk(doc)
    if not slots:
        return json.dumps(rng.choice(ODD_VALUES)).encode()
    parent, key = rng.choice(slots)
    k = rng.randrange(4)
    if k == 0 or not isinstance(parent, dict):
        parent[key] = rng.choice(ODD_VALUES)
    elif k == 1:
        del parent[key]
    elif k == 2:
        parent[rng.choice(["../../etc/passwd", "sample_9999", "", "9", "x/y"])] = parent.pop(key)
    else:
        parent[rng.choice(["../../etc/passwd", "sample_9999", "extra", "7"])] = rng.choice(ODD_VALUES)
    return json.dumps(doc).encode()


def mutate_safetensors(b, rng):
    """A header that lies (shape, dtype, offsets, length prefix), a valid file with the wrong contents (missing keys,
    other dtypes or shapes, a row more or less, NaN / inf, out-of-range integers), or generic damage."""
    k = rng.randrange(3)
    if k == 0:
        return mutate_bytes(b, rng)
    try:
        n = struct.unpack("<Q", b[:8])[0]
        header, payload = json.loads(b[8:8 + n]), b[8 + n:]
        tensors = st_load(b)
    except Exception:
        return mutate_bytes(b, rng)
    names = [x for x in header if x != "__metadata__"]
    name = rng.choice(names)
    if k == 1:                                                              # the header lies
        e, what = header[name], rng.randrange(6)
        if what == 0 and e["shape"]:
            d = rng.randrange(len(e["shape"]))
            e["shape"][d] = rng.choice([0, 1, e["shape"][d] + 1, max(0, e["shape"][d] - 1), 2**40, -1, 2**64 + 1])
        elif what == 1:
            e["dtype"] = rng.choice(["F16", "F32", "F64", "I32", "I64", "U8", "BOOL", "BF16", "I8", "X9", 5])
        elif what == 2:
            d = rng.randrange(2)
            e["data_offsets"][d] += rng.choice([-8, -1, 1, 8, 10**9, -10**9])
        elif what == 3:
            del header[name]
        elif what == 4:
            header[name] = rng.choice(ODD_VALUES)
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        prefix = len(hb) + (rng.choice([-9, -1, 1, 8, 2**40]) if what == 5 else 0)
        return struct.pack("<Q", max(prefix, 0)) + hb + payload
    t = tensors[name]                                                       # valid file, wrong contents
    what = rng.randrange(6)
    if what == 0:
        del tensors[name]
    elif what == 1:
        tensors[name] = t.to(rng.choice([torch.float64, torch.float16, torch.float32, torch.int32, torch.int64, torch.uint8, torch.bool]))
    elif what == 2 and t.dim():
        tensors[name] = rng.choice([t[:-1], torch.cat([t, t[:1]]), t.reshape(-1), t[..., :-1], t.unsqueeze(0)]).contiguous()
    elif what == 3 and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        tensors[name] = t
    elif what == 4 and t.numel() and not t.is_floating_point() and t.dtype != torch.bool:
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice([torch.iinfo(t.dtype).min, -1 if t.is_signed() else 0, 99, torch.iinfo(t.dtype).max])
        tensors[name] = t
    else:
        tensors[rng.choice(["extra", name + "_2"])] = torch.zeros(rng.randint(0, 3))
    return save(tensors)


def png_chunks(b):
    out, i = [], 8
    while i + 8 <= len(b):
        n, kind = struct.unpack(">I4s", b[i:i + 8])
        out.append([kind, b[i + 8:i + 8 + n]])
        i += 12 + n
    return out


def png_bytes(chunks):
    return b"\x89PNG\r\n\x1a\n" + b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
                                            for k, d in chunks)


def mutate_png(b, rng):
    """A header that lies (size, bit depth, colour type; CRCs kept valid), damaged pixel data with a valid CRC,
    missing chunks, another valid PNG of another size or mode, something that is not a PNG, or generic damage."""
    from torchvision.io import encode_jpeg
    k = rng.randrange(6)
    chunks = png_chunks(b)
    if k == 0 and chunks and chunks[0][0] == b"IHDR":
        w, h, depth, colour, comp, filt, lace = struct.unpack(">IIBBBBB", chunks[0][1])
        field = rng.randrange(5)
        w = rng.choice([0, 1, w + 1, 2**31 - 1, 2**32 - 1]) if field == 0 else w
        h = rng.choice([0, 1, h + 1, 2**31 - 1]) if field == 1 else h
        depth = rng.choice([1, 2, 4, 8, 16, 3, 0]) if field == 2 else depth
        colour = rng.choice([0, 2, 3, 4, 6, 1, 7]) if field == 3 else colour
        lace = rng.choice([0, 1, 2]) if field == 4 else lace
        chunks[0][1] = struct.pack(">IIBBBBB", w, h, depth, colour, comp, filt, lace)
        return png_bytes(chunks)
    if k == 1 and any(c[0] == b"IDAT" for c in chunks):
        c = next(c for c in chunks if c[0] == b"IDAT")
        c[1] = mutate_bytes(c[1], rng)
        return png_bytes(chunks)
    if k == 2 and chunks:
        del chunks[rng.randrange(len(chunks))]
        return png_bytes(chunks)
    if k == 3:
        from PIL import Image
        h, w, c = rng.randint(1, 40), rng.randint(1, 40), rng.choice([1, 2, 3, 4])
        pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (h, w, c), dtype=np.uint8)
        im = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
        im = rng.choice([im, im.convert("P"), im.convert("1"), Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)])
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()
    if k == 4:
        return rng.choice([bytes(encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)).numpy()), b"GIF89a" + b"\0" * 20,
                           b"\x89PNG\r\n\x1a\n", b"not a png at all"])
    return mutate_bytes(b, rng)


def mutate(path, rng):
    b = path.read_bytes()
    kind = {".json": mutate_json, ".safetensors": mutate_safetensors, ".png": mutate_png}.get(path.suffix, mutate_bytes)
    return kind(b, rng)


# ------------------------------------------------------------------------------------------------ readers

class Evil:
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))


def finite(t):
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def make_nss(root):
    from nss.synth import make_dataset
    make_dataset(root, 1, 3, (16, 16), seed=2, progress=False)
    return sorted(root.rglob("*.safetensors"))


def read_nss(root, files):
    from nss.dataset import read_capture
    out = read_capture(files[0])
    ref = load_file(str(files[0]))               # what safetensors itself reads: the file must be valid
    assert all(finite(v) for v in out.values()), "non-finite values accepted"
    assert all(torch.equal(v, ref[k]) for k, v in out.items() if k in ref)
    assert out["colour_linear"].shape[0] >= 1 and out["ground_truth_linear"].shape[-1] > out["colour_linear"].shape[-1]


def make_neuropbr(root):
    from neuropbr.synth import make_dataset
    make_dataset(root, 2, size=16, seed=1, progress=False)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".png", ".json"))


def read_neuropbr(root, files):
    from neuropbr.dataset import PBRDataset
    ds = PBRDataset.from_root(root, render_curriculum=1)
    for i in range(len(ds)):
        it = ds[i]
        H, W = it["views"].shape[-2:]
        assert it["views"].shape[:2] == (3, 3) and all(finite(it[k]) for k in ("views", "albedo", "roughness", "metallic", "normal"))
        assert {k: tuple(it[k].shape) for k in ("albedo", "roughness", "metallic", "normal")} == \
            {"albedo": (3, H, W), "roughness": (1, H, W), "metallic": (1, H, W), "normal": (3, H, W)}
        assert 0 <= it["views"].min() and it["views"].max() <= 1
        assert it["normal"].norm(dim=0).max() < 1 + 1e-3        # unit, or zero where a nonsense map averages to nothing


def make_prism(root):
    from prism.dataset import write_index, write_sequence
    g = torch.Generator().manual_seed(0)
    for i, s in enumerate((2, 3)):
        write_sequence(root / f"seq_{i:04d}.safetensors", color=torch.rand(2, 3, 8, 8, generator=g), depth=torch.rand(2, 1, 8, 8, generator=g),
                       motion_vectors=torch.randn(2, 2, 8, 8, generator=g), ground_truth=torch.rand(2, 3, 8 * s, 8 * s, generator=g), is_real=i)
    write_index(root)
    return sorted(root.iterdir())


def read_prism(root, files):
    from prism.dataset import PrismDataset
    ds = PrismDataset(root, clip_len=2)
    for i in range(len(ds)):
        c, s = ds[i], ds.scale_of(i)
        T, _, h, w = c["color"].shape
        assert all(finite(c[k]) for k in ("color", "depth", "motion_vectors", "ground_truth"))
        assert (c["depth"].shape, c["motion_vectors"].shape, c["ground_truth"].shape, c["is_real"].shape) == \
            ((T, 1, h, w), (T, 2, h, w), (T, 3, s * h, s * w), (T,))


def make_episodes(root):
    rng = np.random.default_rng(0)
    index = {"format": "gamengen-episodes-v1", "frame_shape": [3, 16, 24], "shards": [], "episodes": {}}
    for i, (e, n) in enumerate(((0, 5), (1, 4))):
        name = f"shard_{i:05d}.safetensors"
        save_file({"frames": torch.from_numpy(rng.integers(0, 256, (n, 3, 16, 24), dtype=np.uint8)),
                   "actions": torch.arange(n) % 8, "rewards": torch.zeros(n), "episode": torch.full((n,), e),
                   "step": torch.arange(n)}, str(root / name))
        index["shards"].append({"file": name, "steps": n, "segments": [[e, 0, n]]})
        index["episodes"][str(e)] = {"split": ("train", "heldout")[e], "length": n, "done": True}
    (root / "index.json").write_text(json.dumps(index))
    return sorted(root.iterdir())


def read_episodes(root, files):
    from gamengen.autoencoder import frame_rows, frames, load_shards
    index, shards = load_shards(root)
    rows = frame_rows(index, shards, "train") + frame_rows(index, shards, "heldout")
    x = frames(shards, rows) if rows else torch.zeros(0, 3, 16, 24)
    assert x.shape[1:] == (3, 16, 24) and len({len(v) for s in shards for v in s.values()}) <= len(shards)
    assert all(0 <= s["actions"].min() and s["actions"].max() < 8 for s in shards if len(s["actions"]))


def make_latents(root):
    index = {"format": "gamengen-latents-v1", "scale": 0.5, "latent_shape": [4, 2, 3], "shards": [], "episodes": {}}
    for i, (e, n) in enumerate(((0, 5), (1, 4))):
        name = f"latents_{i:05d}.safetensors"
        save_file({"latents": torch.randn(n, 4, 2, 3).half(), "actions": torch.arange(n) % 8, "rewards": torch.zeros(n),
                   "episode": torch.full((n,), e), "step": torch.arange(n)}, str(root / name))
        index["shards"].append({"file": name, "steps": n})
        index["episodes"][str(e)] = {"split": ("train", "heldout")[e], "length": n}
    (root / "index.json").write_text(json.dumps(index))
    return sorted(root.iterdir())


def read_latents(root, files):
    from gamengen.dataset import LatentSequences
    for split in ("train", "heldout"):
        ds = LatentSequences(root, split, context=2)
        for i in range(len(ds)):
            s = ds[i]
            assert finite(s["target"]) and finite(s["context"]) and s["context"].shape[1:] == s["target"].shape
            assert 0 <= s["actions"].min() and s["actions"].max() < 8


def make_checkpoint(root):
    opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt.step()
    ckpt.save(root, "c", {"w": torch.randn(2, 3), "b": torch.zeros(2), "obs.min_val": torch.tensor(float("inf"))},
              {"optimizer": opt.state_dict(), "rng": ckpt.rng_state()}, {"step": 3, "best": 1.5})
    return sorted((root / "c").iterdir())


def read_checkpoint(root, files):
    w, state, meta = ckpt.load(root / "c")
    assert isinstance(meta, dict) and isinstance(meta.get("step", 0), int) and isinstance(state, dict)
    assert all(not torch.isnan(v).any() for v in w.values() if v.is_floating_point())


def make_exr(root):
    pytest.importorskip("OpenEXR")
    import OpenEXR
    rgb = {c: np.full((6, 8), v, np.float16) for c, v in zip("RGB", (0.25, 0.5, 0.75))}
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, rgb).write(str(root / "0000.exr"))
    return [root / "0000.exr"]


def read_exr(root, files):
    from nss.convert import read_exr
    img = read_exr(files[0], "RGB", np.float16)
    assert img.ndim == 3 and img.shape[0] == 3 and img.dtype == np.float16


def error_class(name):
    return {"nss": ("nss.dataset", "DataError"), "exr": ("nss.convert", "ConvertError"), "neuropbr": ("neuropbr.dataset", "DataError"),
            "prism": ("prism.dataset", "DataError"), "episodes": ("gamengen.dataset", "DataError"),
            "latents": ("gamengen.dataset", "DataError"), "checkpoint": ("common.ckpt", "CheckpointError")}[name]


READERS = {"nss": (make_nss, read_nss), "exr": (make_exr, read_exr), "neuropbr": (make_neuropbr, read_neuropbr),
           "prism": (make_prism, read_prism), "episodes": (make_episodes, read_episodes),
           "latents": (make_latents, read_latents), "checkpoint": (make_checkpoint, read_checkpoint)}


@pytest.mark.parametrize("reader", READERS)
def test_fuzzed_files_give_a_one_line_error_naming_the_file_or_still_valid_data(reader, tmp_path):
    """Each case damages one file of a tiny valid instance, reads the whole instance and restores the file. Good
    outcomes: the reader's own error, one line, naming a file of the instance; or success with data that is still
    valid (finite, consistent shapes and ranges, what safetensors itself reads). Anything else is a bug."""
    make, read = READERS[reader]
    root = tmp_path / "data"
    root.mkdir()
    files = make(root)
    err = getattr(importlib.import_module(error_class(reader)[0]), error_class(reader)[1])
    read(root, files)                                            # the unmutated instance is valid
    Evil.marker = tmp_path / "PWNED"
    rng, counts, bugs = random.Random(f"fuzz/{reader}"), {"error": 0, "valid": 0}, []
    for case in range(MUTATIONS):
        target = rng.choice(files)
        original = target.read_bytes()
        if target.name == "state.pt" and rng.random() < 0.1:   # a stranger's pickle
            buf = io.BytesIO()
            torch.save({"optimizer": Evil()}, buf)
            target.write_bytes(buf.getvalue())
        else:
            target.write_bytes(mutate(target, rng))
        try:
            read(root, files)
            counts["valid"] += 1
        except err as e:
            msg = str(e)
            if "\n" in msg or str(root) not in msg:
                bugs.append(f"case {case} ({target.name}): message is not one line naming the file: {msg!r:.300}")
            counts["error"] += 1
        except Exception as e:      # includes AssertionError: accepted data that is not valid
            bugs.append(f"case {case} ({target.name}): {type(e).__name__}: {str(e)[:300]}")
        finally:
            target.write_bytes(original)
    REPORT["fuzz"][reader] = dict(counts, cases=MUTATIONS, bugs=len(bugs))
    assert not Evil.marker.exists(), "a pickle ran code"
    assert not bugs, f"{len(bugs)} of {MUTATIONS} cases:\n" + "\n".join(bugs[:20])
    assert counts["error"] > MUTATIONS // 4


# ------------------------------------------------------------------------------------------------ command lines

def bad_input(name, root, src):
    """Copy the tiny data of `name` to root and damage it where only training (not the up-front checks) reads
    -> the file that is damaged."""
    shutil.copytree(src, root)
    if name == "nss":
        f = sorted(root.rglob("*.safetensors"))[0]
        f.write_bytes(f.read_bytes()[:-100])
        return f
    if name == "neuropbr":      # a valid PNG header, garbage pixel data: found when the sample is first read
        for f in (root / "input").rglob("*.png"):
            chunks = png_chunks(f.read_bytes())
            next(c for c in chunks if c[0] == b"IDAT")[1] = b"\0" * 40
            f.write_bytes(png_bytes(chunks))
        return root / "input"
    tensors_key = "depth" if name == "prism" else "latents"
    for f in root.glob("*.safetensors"):
        t = load_file(str(f))
        t[tensors_key] = t[tensors_key].clone().fill_(float("nan"))
        save_file(t, str(f))
    return root


@pytest.mark.parametrize("name", CASES)
def test_bad_data_met_mid_run_is_exit_2_and_one_line(name, data, tmp_path):
    case = CASES[name]
    damaged = bad_input(name, tmp_path / "data", data(name))
    p = start(case, case.argv(tmp_path / "data", tmp_path / "run"), tmp_path / "stdout", tmp_path / "stderr")
    p.join(timeout=300)
    err = (tmp_path / "stderr").read_text()
    assert p.exitcode == 2 and one_line_error(err, damaged), err


def escape_the_folder(name, root):
    """Metadata that names ../../etc/passwd (NSS has none: a capture of random bytes instead) -> the file."""
    if name == "nss":
        (root / "train" / "x.safetensors").write_bytes(os.urandom(64))
        return root / "train" / "x.safetensors"
    index = root / ("input/render_metadata.json" if name == "neuropbr" else "index.json")
    doc = json.loads(index.read_text())
    if name == "neuropbr":
        doc[next(iter(doc))] = "../../etc/passwd"
    else:
        (doc["sequences"] if name == "prism" else doc["shards"])[0]["file"] = "../../etc/passwd"
    index.write_text(json.dumps(doc))
    return index


@pytest.mark.parametrize("name", CASES)
def test_an_empty_folder_or_metadata_leaving_it_is_exit_2_and_one_line(name, data, tmp_path):
    case = CASES[name]
    (tmp_path / "empty").mkdir()
    shutil.copytree(data(name), tmp_path / "data")
    for root, needle in ((tmp_path / "empty", tmp_path / "empty"), (tmp_path / "data", escape_the_folder(name, tmp_path / "data"))):
        p = start(case, case.argv(root, tmp_path / "run"), tmp_path / "stdout", tmp_path / "stderr")
        p.join(timeout=300)
        err = (tmp_path / "stderr").read_text()
        assert p.exitcode == 2 and one_line_error(err, needle), err


def test_bad_data_through_the_command_line_is_exit_2_and_one_line(data, tmp_path):
    """The same through a fresh interpreter, `python gamengen/train.py ...`."""
    case = CASES["gamengen"]
    damaged = bad_input("gamengen", tmp_path / "data", data("gamengen"))
    r = subprocess.run([sys.executable, case.script, *case.argv(tmp_path / "data", tmp_path / "run")], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and one_line_error(r.stderr, damaged), r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ untrusted files

@pytest.mark.parametrize("name", CASES)
def test_a_malicious_state_pt_is_refused_without_running(name, data, tmp_path):
    case, out = CASES[name], tmp_path / "run"
    ckpt.save_step(out / "ckpt", 2, {"w": torch.zeros(1)}, {}, {"step": 2})
    Evil.marker = tmp_path / "PWNED"
    with open(out / "ckpt" / "latest" / "state.pt", "wb") as f:
        pickle.dump({"optimizer": Evil()}, f)
    p = start(case, case.argv(data(name), out) + ["--resume"], tmp_path / "stdout", tmp_path / "stderr")
    p.join(timeout=300)
    err = (tmp_path / "stderr").read_text()
    assert p.exitcode == 2 and one_line_error(err, "state.pt", "refused") and not Evil.marker.exists(), err


DAMAGE = {                                       # file of the checkpoint -> how, what the one line then says
    "meta.json": (lambda d: (d / "meta.json").write_bytes(b"\xff{not json"), "meta.json"),
    "state.pt": (lambda d: torch.save([1.0, 2.0], d / "state.pt"), "checkpoint"),                      # not the dict saved
    "model.safetensors": (lambda d: save_file({"w": torch.zeros(3)}, str(d / "model.safetensors")), "checkpoint"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_damaged_checkpoint_on_resume_is_exit_2_and_one_line(name, data, reference, tmp_path):
    case = CASES[name]
    for i, (file, (damage, words)) in enumerate(DAMAGE.items()):
        out = tmp_path / f"run{i}"
        shutil.copytree((reference(name) / "ckpt" / "latest").resolve(), out / "ckpt" / "step_0000002")
        ckpt.link(out / "ckpt", "latest", "step_0000002")
        damage(out / "ckpt" / "step_0000002")
        p = start(case, case.argv(data(name), out) + ["--resume"], tmp_path / "stdout", tmp_path / "stderr")
        p.join(timeout=300)
        err = (tmp_path / "stderr").read_text()
        assert p.exitcode == 2 and one_line_error(err, out / "ckpt", words), (file, err)


def test_a_malicious_pth_or_pt2_is_refused_without_running(data, tmp_path, capsys):
    Evil.marker = tmp_path / "PWNED"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    case = CASES["neuropbr"]
    assert in_process(case, *case.argv(data("neuropbr"), tmp_path / "run"), "--init", tmp_path / "evil.pth") == 2
    assert one_line_error(capsys.readouterr().err, "evil.pth")
    from prism.make_dataset import load_depth       # torch.export.load would fall back to pickle on its own
    conv = torch.nn.Conv2d(3, 1, 1)
    torch.export.save(torch.export.export(conv, (torch.rand(1, 3, 8, 8),)), str(tmp_path / "depth.pt2"))
    buf = io.BytesIO()
    torch.save((Evil(),), buf)
    with zipfile.ZipFile(tmp_path / "depth.pt2") as src, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as dst:
        for item in src.infolist():
            dst.writestr(item, buf.getvalue() if item.filename.endswith("sample_inputs/model.pt") else src.read(item.filename))
    with pytest.raises(SystemExit) as e:
        load_depth(tmp_path / "evil.pt2", torch.device("cpu"))
    assert e.value.code == 2 and one_line_error(capsys.readouterr().err, "evil.pt2")
    assert not Evil.marker.exists()


# ------------------------------------------------------------------------------------------------ NaN, disk

LOSSES = {"nss": "window_loss", "neuropbr": "hybrid_loss", "prism": "stream_clip", "gamengen": "training_loss"}
NAN_RUNS = [(n, p) for n in CASES for p in ("skip", "stop")] if STRESS else \
    [("nss", "stop"), ("neuropbr", "skip"), ("prism", "stop"), ("gamengen", "skip")]


@pytest.mark.parametrize("name,policy", NAN_RUNS, ids=[f"{n}-{p}" for n, p in NAN_RUNS])
def test_a_nan_loss_is_skipped_and_counted_or_stops_with_the_last_good_state(name, policy, data, tmp_path, monkeypatch, capsys):
    """The loss of the second step is NaN (skip) or inf (stop)."""
    case, out, argv = CASES[name], tmp_path / "run", CASES[name].argv(data(name), tmp_path / "run")   # data first
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
        assert code == 0 and meta["nan_skipped"] == 1 and meta["step"] >= 2       # the skipped step counts
        assert "step 1: non-finite loss, skipped (1 so far)" in (out / "output.log").read_text()
    else:
        assert code == 2 and meta["step"] == 1       # saved before the step that met the NaN
        assert one_line_error(capsys.readouterr().err, "non-finite loss", out / "ckpt" / "latest")


@pytest.mark.parametrize("name", CASES)
def test_unwritable_or_full_output_is_refused_before_training(name, data, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    (tmp_path / "file").write_text("")
    assert in_process(case, *case.argv(data(name), tmp_path / "file" / "run")) == 2          # the run folder
    assert one_line_error(capsys.readouterr().err, tmp_path / "file" / "run")
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    if os.geteuid() != 0:                                                                      # root writes anyway
        os.chmod(tmp_path / "run" / "ckpt", 0o500)
        assert in_process(case, *case.argv(data(name), tmp_path / "run")) == 2
        assert one_line_error(capsys.readouterr().err, tmp_path / "run" / "ckpt", "cannot write")
        os.chmod(tmp_path / "run" / "ckpt", 0o700)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=10**12, used=10**12 - 4096, free=4096))
    assert in_process(case, *case.argv(data(name), tmp_path / "run")) == 2
    assert one_line_error(capsys.readouterr().err, tmp_path / "run" / "ckpt", "MiB free")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()      # no step was trained


@pytest.mark.parametrize("name", ["nss", "gamengen"])
def test_disk_full_mid_run_keeps_the_previous_checkpoint(name, data, tmp_path, monkeypatch, capsys):
    import errno
    case, out, argv = CASES[name], tmp_path / "run", CASES[name].argv(data(name), tmp_path / "run")   # data first
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
