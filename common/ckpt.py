"""Checkpoints as directories: weights in safetensors, the rest in JSON and a tensors-only state.pt.

    OUT/ckpt/step_0000400/   model.safetensors   state.pt (optimizer, scheduler, RNG, data position)   meta.json
    OUT/ckpt/latest -> step_0000400   (a symlink, swapped atomically)
    OUT/ckpt/best   (a full copy of the best one)

Every directory is written to a hidden temporary name and `os.replace`d into place (and renamed to a hidden
name before it is deleted), so a kill -9 at any moment leaves the previous checkpoint intact and never a
half-written directory under a valid name; a copy like `best`, moved aside (`.old-best-PID`) for the swap, is
read and put back if the kill fell between the two renames. A failed write (disk full) removes its temporary
and raises CheckpointError; the previous checkpoint stays. Loading never unpickles arbitrary objects:
safetensors for weights (NaN refused), `torch.load(weights_only=True)` for the state, JSON for the meta.
"""

import contextlib
import json
import os
import pickle
import shutil
import time
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# Tests only: seconds to sleep between the stages of a write, so that a test can kill -9 inside one.
PAUSE = float(os.environ.get("NANONG_CKPT_PAUSE", 0))


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the file."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(ckpt_root, name, model_state, state, meta):
    """Write ckpt_root/name atomically and return its path. `model_state` is a dict of tensors, `state` a
    nested dict/list of tensors and plain numbers (what torch.load(weights_only=True) accepts).
    Raises CheckpointError (and leaves no temporary) when the write fails, e.g. on a full disk."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        tensors, seen = {}, set()
        for k, v in model_state.items():  # safetensors refuses shared storage (e.g. QAT observers shared by edges)
            v = v.detach().cpu().contiguous()
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), v.dtype) if v.numel() else None
            tensors[k] = v.clone() if key in seen else v
            seen.add(key)
        save_file(tensors, str(tmp / "model.safetensors"))
        time.sleep(PAUSE)
        torch.save(state, tmp / "state.pt")
        time.sleep(PAUSE)
        meta = dict(meta, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"), torch=torch.__version__)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        time.sleep(PAUSE)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"{final}: could not write the checkpoint ({getattr(e, 'strerror', None) or e}); the previous one is kept"
        ) from None
    old = ckpt_root / f".old-{name}-{os.getpid()}"
    if final.exists() and not final.is_symlink():
        os.replace(final, old)  # a directory can't be replaced over a non-empty one
        time.sleep(PAUSE)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(ckpt_root)
    return final


def save_fp16(path, model_state, meta):
    """What ships: the weights alone, in fp16, as checkpoint directory `path` (meta gains "dtype": "float16"; no
    optimizer state). Every loader reads it like a training checkpoint. -> its path."""
    path = Path(path)
    return save(path.parent, path.name, {k: v.half() for k, v in model_state.items()}, {}, {**meta, "dtype": "float16"})


def link(ckpt_root, alias, target_name):
    """Point ckpt_root/alias (e.g. 'latest') at ckpt_root/target_name with an atomic symlink swap."""
    ckpt_root = Path(ckpt_root)
    tmp = ckpt_root / f".tmp-link-{alias}-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, ckpt_root / alias)
    _fsync_dir(ckpt_root)


def prune(ckpt_root, keep):
    """Remove step_* directories not in `keep` (names) and stale temporaries of dead writers."""
    for p in list(Path(ckpt_root).iterdir()):
        if p.name.startswith(".old-") and not os.path.lexists(orig := p.with_name(p.name[5:].rsplit("-", 1)[0])):
            os.replace(p, orig)  # killed between save()'s two renames: put the previous copy back
        elif p.name.startswith(".tmp-") or p.name.startswith(".old-"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
        elif p.name.startswith("step_") and p.name not in keep:  # hidden first: a kill in rmtree leaves no half a step
            os.replace(p, gone := p.with_name(f".tmp-gone-{p.name}-{os.getpid()}"))
            shutil.rmtree(gone, ignore_errors=True)


def save_step(ckpt_root, step, model_state, state, meta, best=False, keep_every=0):
    """The rotation every training loop uses: write step_XXXXXXX, point `latest` at it, copy it to `best` when
    `best` is true, and remove the older step_* directories except those at multiples of keep_every (0: none).
    -> the path written."""
    name = f"step_{step:07d}"
    path = save(ckpt_root, name, model_state, state, meta)
    try:
        link(ckpt_root, "latest", name)
    except OSError as e:
        raise CheckpointError(
            f"{Path(ckpt_root) / 'latest'}: could not link it to {name} ({e.strerror or e})"
        ) from None
    if best:
        save(ckpt_root, "best", model_state, state, meta)
    prune(
        ckpt_root,
        {name} | {p.name for p in Path(ckpt_root).glob("step_*") if keep_every and int(p.name[5:]) % keep_every == 0},
    )
    return path


def check_room(ckpt_root, *modules, factor=4):
    """Before training: ckpt_root must be writable and its disk must hold a checkpoint of `modules` (their state
    bytes x factor: weights, optimizer moments, the `best` copy). Raises CheckpointError."""
    ckpt_root = Path(ckpt_root)
    need = factor * sum(t.numel() * t.element_size() for m in modules if m is not None for t in m.state_dict().values())
    probe = ckpt_root / f".tmp-probe-{os.getpid()}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"nanoNG")
        probe.unlink()
        free = shutil.disk_usage(ckpt_root).free
    except OSError as e:
        raise CheckpointError(f"{ckpt_root}: cannot write checkpoints here ({e.strerror or e})") from None
    if free < need:
        raise CheckpointError(
            f"{ckpt_root}: {free / 2**20:.1f} MiB free, a checkpoint needs about {need / 2**20:.1f} MiB"
        )


def load(path, map_location="cpu", with_state=True):
    """Read a checkpoint directory -> (model_state, state or None, meta). Raises CheckpointError."""
    path = Path(path)
    if not path.is_dir() and (old := sorted(path.parent.glob(f".old-{path.name}-*"))):
        path = old[-1]  # killed between save()'s two renames: the previous copy, complete, was moved aside
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (expected model.safetensors, state.pt, meta.json)")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"{path / 'meta.json'}: unreadable ({e.__class__.__name__}: {e})") from None
    if not isinstance(meta, dict) or type(meta.get("step", 0)) is not int:
        raise CheckpointError(f"{path / 'meta.json'}: not a checkpoint's meta (a JSON object with an integer 'step')")
    try:
        model_state = load_file(str(path / "model.safetensors"), device=str(map_location))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path / 'model.safetensors'}: unreadable ({e})") from None
    for k, v in model_state.items():  # observers' min_val/max_val legitimately start at +-inf
        if v.is_floating_point() and (v.isnan().any() or (not k.endswith(("min_val", "max_val")) and v.isinf().any())):
            raise CheckpointError(f"{path / 'model.safetensors'}: '{k}' has NaN or inf values")
    state = None
    if with_state:
        try:
            with warnings.catch_warnings():  # e.g. a note on the pickle protocol of a file it is about to refuse
                warnings.simplefilter("ignore")
                state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
        except Exception as e:  # weights_only raises UnpicklingError for any non-tensor object
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise CheckpointError(f"{path / 'state.pt'}: refused or unreadable ({first})") from None
    return model_state, state, meta


def peek_meta(path):
    """meta.json of checkpoint directory `path` without loading the checkpoint; {} when it is missing or
    unreadable (load() says so, in one line, where the checkpoint is then read)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def rng_state():
    import random

    import numpy as np

    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np_state[1].astype("int64")),
        "numpy_pos": np_state[2],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s):
    import random

    import numpy as np

    random.setstate((3, tuple(s["python"]), None))
    np.random.set_state(("MT19937", s["numpy"].numpy().astype("uint32"), s["numpy_pos"], 0, 0.0))
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


def read_state_dict(path):
    """A state dict from one weights file of someone else's making: .safetensors, or a torch file read with
    weights_only=True (objects are refused, never run). -> dict; raises CheckpointError naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. a note on the pickle protocol of a file it is about to refuse
            warnings.simplefilter("ignore")
            sd = (
                load_file(str(path))
                if path.suffix == ".safetensors"
                else torch.load(path, map_location="cpu", weights_only=True)
            )
    except pickle.UnpicklingError:  # weights_only met Python objects, or the bytes are no pickle at all
        raise CheckpointError(
            f"{path}: refused: not a file of tensors and plain containers (read with "
            f"torch.load(weights_only=True); nothing in it was run)"
        ) from None
    except Exception as e:  # unreadable
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise CheckpointError(f"{path}: unreadable ({first})") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: holds a {type(sd).__name__}, expected a state dict of tensors")
    return sd


def load_into(module, weights, strict=True, prefix=None):
    """module.load_state_dict(weights) for weights read from safetensors, which keeps no per-submodule
    `_metadata` (state-dict versions). Without it some modules migrate "old" state on load: torchao's
    observers, for one, reset their `eps` buffer, so a resumed QAT run would not be bit-exact.
    prefix: load only the entries named `prefix.*` (a checkpoint of several modules: "gen", "disc")."""
    from collections import OrderedDict

    if prefix:
        weights = {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    state = OrderedDict(weights)
    state._metadata = getattr(module.state_dict(), "_metadata", None)
    return module.load_state_dict(state, strict=strict)


@contextlib.contextmanager
def resuming(ckpt_root, what, map_location="cpu", log=print):
    """--resume, as every train.py does it:

        with ckpt.resuming(ck, "a checkpoint of this preset", rt.device, logger.info) as latest:
            if latest:   # (weights, state, meta) of ck/latest; None: nothing saved yet, start at step 0
                ...load them into the models and optimizers...

    A run killed before its first checkpoint has none yet: it starts from step 0 (and says so). A checkpoint
    that does not fit what is being loaded (missing keys, other shapes: another preset) raises CheckpointError
    with one line naming it."""
    path = Path(ckpt_root) / "latest"
    if not path.exists():
        log(f"--resume: no checkpoint in {ckpt_root} yet, starting from step 0")
        yield None
        return
    latest = load(path, map_location)
    try:
        yield latest
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: not {what} ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    log(f"resumed from {path} at step {latest[2]['step']}")
