"""Runtime plumbing every train.py shares: the common flags, device, seeding, AMP, torchrun DDP,
SIGINT/SIGTERM -> checkpoint, the NaN/inf loss guard and --profile traces.

DDP follows nanoGPT: a run is distributed when torchrun sets RANK; rank 0 is the master process that
logs and saves; gloo on CPU, nccl on CUDA.
"""
import contextlib
import functools
import os
import random
import signal
import sys
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist


def add_common_args(p, presets):
    """The command-line conventions shared by every train.py (so scripts, tests and benchmarks can drive them)."""
    p.add_argument("--data", default=None, help="dataset root; when absent, built-in data is generated into OUT/data")
    p.add_argument("--preset", default="cpu", choices=sorted(presets), help="hyper-parameter preset (dataclass in train.py)")
    p.add_argument("--out", default="runs/default", help="run directory: output.log, metrics.jsonl, images, ckpt/")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train (overrides the preset)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto = cuda if available, else cpu")
    p.add_argument("--seed", type=int, default=1337, help="seed for weights, data order and augmentation (offset by rank)")
    p.add_argument("--resume", action="store_true", help="continue bit-exactly from OUT/ckpt/latest")
    p.add_argument("--log-level", default="info", choices=["quiet", "info", "debug"], help="console verbosity (output.log always gets info)")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision: auto = fp16 on CUDA, off on CPU (bf16 is rarely faster on CPUs)")
    p.add_argument("--save-every", type=int, default=None, help="also keep OUT/ckpt/step_XXXXXXX every N steps (default: preset)")
    p.add_argument("--profile", action="store_true", help="trace a few steps with torch.profiler to OUT/trace.json (open in ui.perfetto.dev)")
    p.add_argument("--nan-policy", default="skip", choices=["skip", "stop"],
                   help="non-finite loss: skip the step (counted and logged) or stop with a checkpoint of the last good state")


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def add_config_flags(p, cfg, what="preset cpu"):
    """One flag per field of the dataclass instance `cfg` that the parser does not have yet: --field-name, typed
    like the field's value (bools take true/false, tuples several values); the help shows `cfg`'s value. Read
    them back with override(); a flag left out keeps the preset's value."""
    have = {s for a in p._actions for s in a.option_strings} | {a.dest for a in p._actions}
    group = p.add_argument_group("every preset field (default: the chosen --preset's value)")
    for f in fields(cfg):
        flag, value = "--" + f.name.replace("_", "-"), getattr(cfg, f.name)
        if flag in have or f.name in have:
            continue
        kind = (type(value[0]) if value else int) if isinstance(value, tuple) else _bool if isinstance(value, bool) else type(value)
        group.add_argument(flag, type=kind, nargs="*" if isinstance(value, tuple) else None, default=None,
                           metavar="BOOL" if kind is _bool else kind.__name__.upper(),
                           help=f"{type(cfg).__name__}.{f.name} ({what}: {value})")


def override(cfg, args):
    """Argparse values that are not None replace dataclass fields of the same name (dashes -> underscores)."""
    for f in fields(cfg):
        v = getattr(args, f.name, None)
        if isinstance(v, list):
            v = tuple(v)
        if v is not None:
            setattr(cfg, f.name, v)
    return cfg


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    ddp: bool = False
    amp_dtype: torch.dtype = None

    @property
    def master(self):
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup(args):
    """Device, DDP process group, seeds and AMP from the common flags."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
        if device == "cuda" and not torch.cuda.is_available():
            fail("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if ddp:
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    device = torch.device(device)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16,
           "auto": torch.float16 if device.type == "cuda" else None}[args.amp]
    seed_everything(args.seed + rank)
    return Runtime(device=device, rank=rank, world=world, ddp=ddp, amp_dtype=amp)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def teardown(rt):
    if rt.ddp and dist.is_initialized():
        dist.destroy_process_group()


def fail(msg, code=2):
    """One line on stderr that a user can act on, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def user_errors(*errors):
    """Decorator for a main(): the given exceptions, whose messages are one line naming a file (a corrupt sample
    met mid-run, a checkpoint that could not be written), end the program through fail() instead of a traceback."""
    def wrap(main):
        @functools.wraps(main)
        def guarded(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except errors as e:
                fail(str(e))
        return guarded
    return wrap


class StopSignal:
    """SIGINT/SIGTERM set a flag; the training loop checks it after each step, saves and exits."""

    def __init__(self):
        self.signum = None
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:  # second Ctrl-C: leave now
            sys.exit(130)
        self.signum = signum

    @property
    def exit_code(self):
        return 130 if self.signum == signal.SIGINT else 0

    def checkpoint_and_leave(self, step, steps_this_run, stop_after, save, latest, logger, rt):
        """Called after every training step. After --stop-after N steps of this run: save, tear down and return
        True (the caller returns). On SIGINT/SIGTERM: save, tear down and exit 130/0. Otherwise False."""
        if not (stop_after and steps_this_run >= stop_after) and self.signum is None:
            return False
        save()
        teardown(rt)
        if stop_after and steps_this_run >= stop_after:
            logger.info(f"--stop-after {stop_after}: saved {latest} at step {step}")
            return True
        logger.warning(f"{signal.Signals(self.signum).name}: saved {latest} at step {step}; continue with --resume")
        sys.exit(self.exit_code)


class NanGuard:
    """Checks a loss before backward. `ok(loss)` is False for non-finite losses, which are counted."""

    def __init__(self, policy="skip", max_consecutive=20):
        self.policy, self.max_consecutive = policy, max_consecutive
        self.skipped = self.consecutive = 0

    def ok(self, loss):
        if torch.isfinite(loss).all():
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        return False

    @property
    def must_stop(self):
        return self.policy == "stop" and self.consecutive > 0 or self.consecutive >= self.max_consecutive

    def skip_step(self, loss, step, rt, save, latest, logger):
        """The check every training loop makes before backward: False for a finite loss (averaged over DDP ranks,
        so all ranks decide alike). Otherwise the step is skipped (warning, counted) and True is returned; under
        --nan-policy stop, or after max_consecutive in a row, the last good state is saved and the run exits 2."""
        if self.ok(all_reduce_mean(loss.detach(), rt)):
            return False
        logger.warning(f"step {step}: non-finite loss, skipped ({self.skipped} so far)")
        if self.must_stop:
            save()
            fail(f"stopping: non-finite loss (--nan-policy {self.policy}{'' if self.policy == 'stop' else f', {self.consecutive} in a row'}); "
                 f"last good state in {latest}")
        return True


def all_reduce_mean(x, rt):
    if rt.ddp:
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= rt.world
    return x


@contextlib.contextmanager
def profiler(enabled, out_dir, steps=6):
    """Yields a step() callback; writes a Chrome/Perfetto trace (and a CUDA memory snapshot) when enabled."""
    if not enabled:
        yield lambda: None
        return
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.memory._record_memory_history()
    trace = os.path.join(out_dir, "trace.json")
    sched = torch.profiler.schedule(wait=1, warmup=1, active=steps - 2, repeat=1)
    with torch.profiler.profile(activities=acts, schedule=sched, record_shapes=True, profile_memory=True,
                                on_trace_ready=lambda p: p.export_chrome_trace(trace)) as prof:
        yield prof.step
    if torch.cuda.is_available():
        torch.cuda.memory._dump_snapshot(os.path.join(out_dir, "cuda_memory.pickle"))


def run_step(cmd):
    """Run `python cmd...` as a demo step: print the command line (so it can be rerun by hand), exit on
    failure; returns the seconds it took."""
    import subprocess
    import time
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    rc = subprocess.call([sys.executable, *cmd])
    if rc != 0:
        sys.exit(f"error: step failed with exit code {rc}: {' '.join(cmd)}")
    return time.time() - t0
