"""Helpers of the reliability tests (tests/test_reliability_resume.py, tests/test_reliability_fuzz.py); not a test
file itself. Use: `from tests.reliability import ...` in a test module, and give its fixtures names there
(`data = reliability.data`): pytest looks for fixtures in the test module.

- CASES: the tiny training run of each use case (NSS, NeuroPBR, Prism, GameNGen); in_process() runs its train.py in
  this process, start() in a process of its own that a test can kill -9 or signal.
- fixtures `data` (tiny data per use case) and `reference` (an uninterrupted run), built on first use per module.
- mutate(): seeded damage to a file of any kind a reader reads (generic bytes, JSON, safetensors, PNG).
- the stress report: under NANONG_STRESS=1 the autouse fixture `report` of each module adds REPORT (kill counts,
  fuzz outcomes per reader) to the JSON file $NANONG_STRESS_REPORT, which `bash run.sh stress` prints.
"""

import fcntl
import importlib
import io
import json
import multiprocessing
import os
import signal
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save

from common import ckpt
from tests.conftest import run_main

STRESS = os.environ.get("NANONG_STRESS") == "1"
REPORT = {"kills": {}, "fuzz": {}}  # filled by the tests of both modules, written by `report`


@dataclass
class Case:
    name: str
    script: str
    args: list  # a short tiny run: {data}, {out} filled in
    longer: list  # appended: a run long enough to be signalled mid-training

    @property
    def module(self):
        return self.script[:-3].replace("/", ".")

    @property
    def main(self):
        return importlib.import_module(self.module).main

    def argv(self, data, out):
        return [str(a).format(data=data, out=out) for a in self.args]


CASES = {
    c.name: c
    for c in [
        Case(
            "nss",
            "nss/train.py",
            [
                "--data",
                "{data}",
                "--out",
                "{out}",
                "--preset",
                "tiny",
                "--max-steps",
                8,
                "--save-every",
                2,
                "--no-evaluate",
                "--seed",
                5,
                "--log-level",
                "quiet",
            ],
            ["--max-steps", 100_000],
        ),
        Case(
            "neuropbr",
            "neuropbr/train.py",
            [
                "--data",
                "{data}",
                "--out",
                "{out}",
                "--preset",
                "tiny",
                "--image-size",
                32,
                "--save-every",
                2,
                "--seed",
                3,
                "--log-level",
                "quiet",
            ],
            ["--epochs", 100_000],
        ),
        Case(
            "prism",
            "prism/train.py",
            [
                "--data",
                "{data}",
                "--out",
                "{out}",
                "--preset",
                "tiny",
                "--max-steps",
                8,
                "--save-every",
                2,
                "--log-level",
                "quiet",
            ],
            ["--max-steps", 100_000],
        ),
        Case(
            "gamengen",
            "gamengen/train.py",
            [
                "diffusion",
                "--data",
                "{data}",
                "--out",
                "{out}",
                "--preset",
                "tiny",
                "--save-every",
                2,
                "--log-level",
                "quiet",
            ],
            ["--max-steps", 100_000],
        ),
    ]
}


def in_process(case, *argv):
    """main() of the case's train.py with these arguments, in this process -> exit code (0 when it returns)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_main(case.main, *argv)
        return 0
    except SystemExit as e:
        return e.code
    finally:
        for s, h in handlers.items():  # StopSignal installed its own
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
    ctx.set_forkserver_preload(["torch", "tests.reliability", *(c.module for c in CASES.values())])
    p = ctx.Process(
        target=_child, args=(case.module, [str(a) for a in argv], str(stdout), str(stderr or stdout), pause)
    )
    p.start()
    return p


def one_line_error(err, *needles):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and all(str(n) in lines[0] for n in needles)


def finite(t):
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


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
    """After the module: merge REPORT into $NANONG_STRESS_REPORT. Both modules add theirs to what the file already
    holds (under a lock: pytest -n may run them in two processes at once), so it stays one JSON object
    {"kills": {...}, "fuzz": {...}}."""
    yield
    if STRESS and os.environ.get("NANONG_STRESS_REPORT"):
        with open(os.environ["NANONG_STRESS_REPORT"], "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            merged = json.loads(text) if text.strip() else {}
            for key, counts in REPORT.items():
                merged.setdefault(key, {}).update(counts)
            f.truncate(0)
            f.write(json.dumps(merged, indent=1))


# ------------------------------------------------------------------------------------------------ mutations


def mutate_bytes(b, rng):
    """Generic damage: truncation, random bytes, flipped / overwritten / deleted / inserted spans, an empty file."""
    k, n = rng.randrange(7), len(b)
    i, j = sorted(rng.randrange(n + 1) for _ in range(2))
    if k == 0:
        return b[: rng.randrange(n)] if n else b
    if k == 1:
        return rng.randbytes(rng.randrange(1, 2 * n + 2))
    if k == 2:
        b = bytearray(b)
        for _ in range(rng.randint(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if k == 3:
        return b[:i] + rng.randbytes(min(j - i, 64) or 1) + b[i + (min(j - i, 64) or 1) :]
    if k == 4:
        return b[:i] + b[j:]
    if k == 5:
        return b[:i] + rng.randbytes(rng.randint(1, 64)) + b[i:]
    return b""


ODD_VALUES = [
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "",
    "a/b",
    "C:\\x",
    "x" * 300,
    None,
    True,
    -1,
    0,
    10**12,
    2.5,
    float("nan"),
    [],
    {},
    [1, 2],
    {"a": 1},
]


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
        for k in x if isinstance(x, dict) else range(len(x)) if isinstance(x, list) else []:
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
        header, payload = json.loads(b[8 : 8 + n]), b[8 + n :]
        tensors = st_load(b)
    except Exception:
        return mutate_bytes(b, rng)
    names = [x for x in header if x != "__metadata__"]
    name = rng.choice(names)
    if k == 1:  # the header lies
        e, what = header[name], rng.randrange(6)
        if what == 0 and e["shape"]:
            d = rng.randrange(len(e["shape"]))
            e["shape"][d] = rng.choice([0, 1, e["shape"][d] + 1, max(0, e["shape"][d] - 1), 2**40, -1, 2**64 + 1])
        elif what == 1:
            e["dtype"] = rng.choice(["F16", "F32", "F64", "I32", "I64", "U8", "BOOL", "BF16", "I8", "X9", 5])
        elif what == 2:
            d = rng.randrange(2)
            e["data_offsets"][d] += rng.choice([-8, -1, 1, 8, 10**9, -(10**9)])
        elif what == 3:
            del header[name]
        elif what == 4:
            header[name] = rng.choice(ODD_VALUES)
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        prefix = len(hb) + (rng.choice([-9, -1, 1, 8, 2**40]) if what == 5 else 0)
        return struct.pack("<Q", max(prefix, 0)) + hb + payload
    t = tensors[name]  # valid file, wrong contents
    what = rng.randrange(6)
    if what == 0:
        del tensors[name]
    elif what == 1:
        tensors[name] = t.to(
            rng.choice([torch.float64, torch.float16, torch.float32, torch.int32, torch.int64, torch.uint8, torch.bool])
        )
    elif what == 2 and t.dim():
        tensors[name] = rng.choice(
            [t[:-1], torch.cat([t, t[:1]]), t.reshape(-1), t[..., :-1], t.unsqueeze(0)]
        ).contiguous()
    elif what == 3 and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        tensors[name] = t
    elif what == 4 and t.numel() and not t.is_floating_point() and t.dtype != torch.bool:
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = rng.choice(
            [torch.iinfo(t.dtype).min, -1 if t.is_signed() else 0, 99, torch.iinfo(t.dtype).max]
        )
        tensors[name] = t
    else:
        tensors[rng.choice(["extra", name + "_2"])] = torch.zeros(rng.randint(0, 3))
    return save(tensors)


def png_chunks(b):
    out, i = [], 8
    while i + 8 <= len(b):
        n, kind = struct.unpack(">I4s", b[i : i + 8])
        out.append([kind, b[i + 8 : i + 8 + n]])
        i += 12 + n
    return out


def png_bytes(chunks):
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks
    )


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
        return rng.choice(
            [
                bytes(encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8)).numpy()),
                b"GIF89a" + b"\0" * 20,
                b"\x89PNG\r\n\x1a\n",
                b"not a png at all",
            ]
        )
    return mutate_bytes(b, rng)


def mutate(path, rng):
    b = path.read_bytes()
    kind = {".json": mutate_json, ".safetensors": mutate_safetensors, ".png": mutate_png}.get(path.suffix, mutate_bytes)
    return kind(b, rng)
