"""Reliability, for NSS, NeuroPBR, Prism and GameNGen: no crash on bad input, nothing unpickled from strangers.

- every reader under a seeded fuzz loop (truncation, random bytes, headers that lie about sizes, wrong dtypes and
  shapes, missing keys, NaN / inf, PNGs that are not PNGs or have other sizes, malformed or path-escaping JSON,
  shards of mismatched lengths): its own error with one line naming the file, or success on a file that is still
  valid; nothing else. A few runs check the command lines: exit code 2 and one line.
- a malicious pickle in state.pt (or a .pth, or a .pt2) is refused without running; so is a damaged checkpoint on
  --resume, with exit code 2 and one line.

Smoke runs 200 mutations per reader; NANONG_STRESS=1 (`bash run.sh stress`) runs 5,000, and their outcomes per
reader go to $NANONG_STRESS_REPORT (JSON). Crashes, signals, NaN losses and full disks:
tests/test_reliability_resume.py.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m pytest -q tests/test_reliability_fuzz.py
"""

import importlib
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from common import ckpt
from tests import reliability
from tests.reliability import (
    CASES,
    REPORT,
    STRESS,
    finite,
    in_process,
    mutate,
    one_line_error,
    png_bytes,
    png_chunks,
    start,
)

data, reference, report = reliability.data, reliability.reference, reliability.report  # fixtures, found here by pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
MUTATIONS = 5000 if STRESS else 200  # fuzz cases per reader
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


# ------------------------------------------------------------------------------------------------ readers


class Evil:
    marker = None

    def __reduce__(self):
        return (os.system, (f"touch {Evil.marker}",))


def make_nss(root):
    from nss.synth import make_dataset

    make_dataset(root, 1, 3, (16, 16), seed=2, progress=False)
    return sorted(root.rglob("*.safetensors"))


def read_nss(root, files):
    from nss.dataset import read_capture

    out = read_capture(files[0])
    ref = load_file(str(files[0]))  # what safetensors itself reads: the file must be valid
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
        assert it["views"].shape[:2] == (3, 3) and all(
            finite(it[k]) for k in ("views", "albedo", "roughness", "metallic", "normal")
        )
        assert {k: tuple(it[k].shape) for k in ("albedo", "roughness", "metallic", "normal")} == {
            "albedo": (3, H, W),
            "roughness": (1, H, W),
            "metallic": (1, H, W),
            "normal": (3, H, W),
        }
        assert 0 <= it["views"].min() and it["views"].max() <= 1
        assert it["normal"].norm(dim=0).max() < 1 + 1e-3  # unit, or zero where a nonsense map averages to nothing


def make_prism(root):
    from prism.dataset import write_index, write_sequence

    g = torch.Generator().manual_seed(0)
    for i, s in enumerate((2, 3)):
        write_sequence(
            root / f"seq_{i:04d}.safetensors",
            color=torch.rand(2, 3, 8, 8, generator=g),
            depth=torch.rand(2, 1, 8, 8, generator=g),
            motion_vectors=torch.randn(2, 2, 8, 8, generator=g),
            ground_truth=torch.rand(2, 3, 8 * s, 8 * s, generator=g),
            is_real=i,
        )
    write_index(root)
    return sorted(root.iterdir())


def read_prism(root, files):
    from prism.dataset import PrismDataset

    ds = PrismDataset(root, clip_len=2)
    for i in range(len(ds)):
        c, s = ds[i], ds.scale_of(i)
        T, _, h, w = c["color"].shape
        assert all(finite(c[k]) for k in ("color", "depth", "motion_vectors", "ground_truth"))
        assert (c["depth"].shape, c["motion_vectors"].shape, c["ground_truth"].shape, c["is_real"].shape) == (
            (T, 1, h, w),
            (T, 2, h, w),
            (T, 3, s * h, s * w),
            (T,),
        )


def make_episodes(root):
    rng = np.random.default_rng(0)
    index = {"format": "gamengen-episodes-v1", "frame_shape": [3, 16, 24], "shards": [], "episodes": {}}
    for i, (e, n) in enumerate(((0, 5), (1, 4))):
        name = f"shard_{i:05d}.safetensors"
        save_file(
            {
                "frames": torch.from_numpy(rng.integers(0, 256, (n, 3, 16, 24), dtype=np.uint8)),
                "actions": torch.arange(n) % 8,
                "rewards": torch.zeros(n),
                "episode": torch.full((n,), e),
                "step": torch.arange(n),
            },
            str(root / name),
        )
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
        save_file(
            {
                "latents": torch.randn(n, 4, 2, 3).half(),
                "actions": torch.arange(n) % 8,
                "rewards": torch.zeros(n),
                "episode": torch.full((n,), e),
                "step": torch.arange(n),
            },
            str(root / name),
        )
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
    ckpt.save(
        root,
        "c",
        {"w": torch.randn(2, 3), "b": torch.zeros(2), "obs.min_val": torch.tensor(float("inf"))},
        {"optimizer": opt.state_dict(), "rng": ckpt.rng_state()},
        {"step": 3, "best": 1.5},
    )
    return sorted((root / "c").iterdir())


def read_checkpoint(root, files):
    w, state, meta = ckpt.load(root / "c")
    assert isinstance(meta, dict) and isinstance(meta.get("step", 0), int) and isinstance(state, dict)
    assert all(not torch.isnan(v).any() for v in w.values() if v.is_floating_point())


def make_exr(root):
    pytest.importorskip("OpenEXR")
    import OpenEXR

    rgb = {c: np.full((6, 8), v, np.float16) for c, v in zip("RGB", (0.25, 0.5, 0.75))}
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, rgb).write(
        str(root / "0000.exr")
    )
    return [root / "0000.exr"]


def read_exr(root, files):
    from nss.convert import read_exr

    img = read_exr(files[0], "RGB", np.float16)
    assert img.ndim == 3 and img.shape[0] == 3 and img.dtype == np.float16


def error_class(name):
    return {
        "nss": ("nss.dataset", "DataError"),
        "exr": ("nss.convert", "ConvertError"),
        "neuropbr": ("neuropbr.dataset", "DataError"),
        "prism": ("prism.dataset", "DataError"),
        "episodes": ("gamengen.dataset", "DataError"),
        "latents": ("gamengen.dataset", "DataError"),
        "checkpoint": ("common.ckpt", "CheckpointError"),
    }[name]


READERS = {
    "nss": (make_nss, read_nss),
    "exr": (make_exr, read_exr),
    "neuropbr": (make_neuropbr, read_neuropbr),
    "prism": (make_prism, read_prism),
    "episodes": (make_episodes, read_episodes),
    "latents": (make_latents, read_latents),
    "checkpoint": (make_checkpoint, read_checkpoint),
}


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
    read(root, files)  # the unmutated instance is valid
    Evil.marker = tmp_path / "PWNED"
    rng, counts, bugs = random.Random(f"fuzz/{reader}"), {"error": 0, "valid": 0}, []
    for case in range(MUTATIONS):
        target = rng.choice(files)
        original = target.read_bytes()
        if target.name == "state.pt" and rng.random() < 0.1:  # a stranger's pickle
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
        except Exception as e:  # includes AssertionError: accepted data that is not valid
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
    if name == "neuropbr":  # a valid PNG header, garbage pixel data: found when the sample is first read
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
    for root, needle in (
        (tmp_path / "empty", tmp_path / "empty"),
        (tmp_path / "data", escape_the_folder(name, tmp_path / "data")),
    ):
        p = start(case, case.argv(root, tmp_path / "run"), tmp_path / "stdout", tmp_path / "stderr")
        p.join(timeout=300)
        err = (tmp_path / "stderr").read_text()
        assert p.exitcode == 2 and one_line_error(err, needle), err


def test_bad_data_through_the_command_line_is_exit_2_and_one_line(data, tmp_path):
    """The same through a fresh interpreter, `python gamengen/train.py ...`."""
    case = CASES["gamengen"]
    damaged = bad_input("gamengen", tmp_path / "data", data("gamengen"))
    r = subprocess.run(
        [sys.executable, case.script, *case.argv(tmp_path / "data", tmp_path / "run")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
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


DAMAGE = {  # file of the checkpoint -> how, what the one line then says
    "meta.json": (lambda d: (d / "meta.json").write_bytes(b"\xff{not json"), "meta.json"),
    "state.pt": (lambda d: torch.save([1.0, 2.0], d / "state.pt"), "checkpoint"),  # not the dict saved
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
    from prism.make_dataset import load_depth  # torch.export.load would fall back to pickle on its own

    conv = torch.nn.Conv2d(3, 1, 1)
    torch.export.save(torch.export.export(conv, (torch.rand(1, 3, 8, 8),)), str(tmp_path / "depth.pt2"))
    buf = io.BytesIO()
    torch.save((Evil(),), buf)
    with zipfile.ZipFile(tmp_path / "depth.pt2") as src, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as dst:
        for item in src.infolist():
            dst.writestr(
                item, buf.getvalue() if item.filename.endswith("sample_inputs/model.pt") else src.read(item.filename)
            )
    with pytest.raises(SystemExit) as e:
        load_depth(tmp_path / "evil.pt2", torch.device("cpu"))
    assert e.value.code == 2 and one_line_error(capsys.readouterr().err, "evil.pt2")
    assert not Evil.marker.exists()
