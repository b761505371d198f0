"""Runtime plumbing every train.py shares: the common flags, device, seeding, AMP, torchrun DDP,
SIGINT/SIGTERM -> checkpoint, the NaN/inf loss guard and --profile traces; and for the demos, benchmarks and
export checks: a median timer (median_ms) and the runner of a repo script as a child process (run_script).

DDP follows nanoGPT: a run is distributed when torchrun sets RANK; rank 0 is the master process that
logs and saves; gloo on CPU, nccl on CUDA.
"""

import contextlib
import functools
import hashlib
import os
import random
import signal
import statistics
import subprocess
import sys
import textwrap
import time
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def add_common_args(p, presets):
    """The command-line conventions shared by every train.py (so scripts, tests and benchmarks can drive them)."""
    p.add_argument("--data", default=None, help="dataset root; when absent, built-in data is generated into OUT/data")
    p.add_argument(
        "--preset", default="cpu", choices=sorted(presets), help="hyper-parameter preset (dataclass in train.py)"
    )
    p.add_argument("--out", default="runs/default", help="run directory: output.log, metrics.jsonl, images, ckpt/")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train (overrides the preset)")
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto = cuda if available, else cpu"
    )
    p.add_argument(
        "--seed", type=int, default=1337, help="seed for weights, data order and augmentation (offset by rank)"
    )
    p.add_argument("--resume", action="store_true", help="continue bit-exactly from OUT/ckpt/latest")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["quiet", "info", "debug"],
        help="console verbosity (output.log always gets info)",
    )
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16", "fp16"],
        help="mixed precision: auto = fp16 on CUDA, off on CPU (bf16 is rarely faster on CPUs)",
    )
    p.add_argument(
        "--save-every", type=int, default=None, help="also keep OUT/ckpt/step_XXXXXXX every N steps (default: preset)"
    )
    p.add_argument(
        "--profile",
        nargs="?",
        const="trace",
        default=None,
        choices=["trace", "memory"],
        help="trace (the default of a bare --profile): a few steps of torch.profiler to OUT/trace.json (open in "
        "ui.perfetto.dev); memory: every CUDA allocation of the first steps to OUT/cuda_memory.pickle (drop it on "
        "pytorch.org/memory_viz; CUDA only)",
    )
    p.add_argument(
        "--nan-policy",
        default="skip",
        choices=["skip", "stop"],
        help="non-finite loss: skip the step (counted and logged) or stop with a checkpoint of the last good state",
    )


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def field_comments(cls):
    """{field: its trailing comment} from the source of the dataclass `cls` (`lr: float = 2e-3  # peak lr`): the
    one place a hyper-parameter is documented, read back as the help of its flag."""
    import inspect
    import io
    import tokenize

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined where there is no source (an interactive session)
        return {}
    notes, name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
            name = tok.string  # the first name at class-body indent opens a field line
        elif tok.type == tokenize.COMMENT and name:
            notes[name] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NEWLINE:
            name = None
    return notes


def add_config_flags(p, cfg, what="preset cpu"):
    """One flag per field of the dataclass instance `cfg` that the parser does not have yet: --field-name, typed
    like the field's value (bools take true/false, tuples several values, a Literal[...] field its choices); the
    help is the field's comment and `cfg`'s value. Read them back with override(); a flag left out keeps the
    preset's value."""
    have = {s for a in p._actions for s in a.option_strings} | {a.dest for a in p._actions}
    group = p.add_argument_group(f"every {type(cfg).__name__} field (default: the chosen --preset's value)")
    notes, hints = field_comments(type(cfg)), typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        flag, value = "--" + f.name.replace("_", "-"), getattr(cfg, f.name)
        if flag in have or f.name in have:
            continue
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else None
        if isinstance(value, tuple):
            kind = type(value[0]) if value else int
        else:
            kind = _bool if isinstance(value, bool) else type(choices[0]) if choices else type(value)
        if kind is type(None):
            kind = float  # an optional number left unset (None) by the preset
        note = notes.get(f.name, "")
        group.add_argument(
            flag,
            type=kind,
            nargs="*" if isinstance(value, tuple) else None,
            choices=choices,
            default=None,
            metavar=None if choices else "BOOL" if kind is _bool else kind.__name__.upper(),
            help=f"{note}{'; ' if note else ''}{what}: {value}",
        )


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
    if getattr(args, "profile", None) == "memory" and device.type != "cuda":
        fail(f"--profile memory records CUDA allocations; this run is on {device.type} (use --profile trace)")
    amp = {
        "off": None,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "auto": torch.float16 if device.type == "cuda" else None,
    }[args.amp]
    seed_everything(args.seed + rank)
    return Runtime(device=device, rank=rank, world=world, ddp=ddp, amp_dtype=amp)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def same_weights(modules, rt, logger):
    """After a DDP run: every rank holds the same weights (a sha256 of each rank's parameters, gathered to all).
    A mismatch, which DDP should make impossible, is an error; a match is logged by rank 0."""
    if not rt.ddp:
        return
    h = hashlib.sha256()
    for p in (p for m in modules if m is not None for p in m.parameters()):
        h.update(p.detach().float().cpu().numpy().tobytes())
    digests = [None] * rt.world
    dist.all_gather_object(digests, h.hexdigest()[:16])
    if len(set(digests)) > 1:
        raise RuntimeError(f"DDP ranks hold different weights after training: {digests}")
    logger.info(f"weights identical on all {rt.world} ranks (sha256 {digests[0]})")


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
    """SIGINT/SIGTERM set a flag; --stop-after N asks for the same after N steps of this session. The training loop
    asks `requested(steps_this_run)` after each step and, when True, saves and breaks; after the loop `leave()`
    says why and exits 130 (SIGINT) / 0 (SIGTERM), or returns (--stop-after)."""

    def __init__(self, stop_after=None):
        self.signum, self.stop_after, self.asked = None, stop_after, False
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:  # second Ctrl-C: leave now
            sys.exit(130)
        self.signum = signum

    @property
    def exit_code(self):
        return 130 if self.signum == signal.SIGINT else 0

    def requested(self, steps_this_run):
        """True once a signal came or this run has made --stop-after steps (then it stays True)."""
        self.asked = (
            self.asked or self.signum is not None or bool(self.stop_after and steps_this_run >= self.stop_after)
        )
        return self.asked

    def leave(self, step, latest, logger, rt):
        """After the loop broke on requested(): tear down, log where the state is, exit on a signal."""
        teardown(rt)
        if self.signum is None:
            logger.info(f"--stop-after {self.stop_after}: saved {latest} at step {step}")
            return
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

    def skip_step(self, loss, step, rt, logger):
        """The check every training loop makes before backward: False for a finite loss (averaged over DDP ranks,
        so all ranks decide alike); otherwise a warning, the count, and True. The caller skips the update and,
        when `must_stop` (--nan-policy stop, or max_consecutive in a row), saves the last good state and exits 2
        with `reason()`: this method neither saves nor exits."""
        if self.ok(all_reduce_mean(loss.detach(), rt)):
            return False
        logger.warning(f"step {step}: non-finite loss, skipped ({self.skipped} so far)")
        return True

    def reason(self, latest):
        """The one-line error of a run that must_stop."""
        why = "" if self.policy == "stop" else f", {self.consecutive} in a row"
        return f"stopping: non-finite loss (--nan-policy {self.policy}{why}); last good state in {latest}"


def all_reduce_mean(x, rt):
    if rt.ddp:
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= rt.world
    return x


@contextlib.contextmanager
def profiler(mode, out_dir, steps=6):
    """Yields a step() callback for the training loop. mode None: nothing; "trace": a Chrome/Perfetto trace of
    `steps` steps (CPU and CUDA activity) to OUT/trace.json; "memory": the CUDA caching allocator's history of the
    first `steps` steps (every alloc/free with its stack) to OUT/cuda_memory.pickle, the snapshot PyTorch's
    memory_viz shows."""
    if mode is None:
        yield lambda: None
    elif mode == "memory":
        torch.cuda.memory._record_memory_history(max_entries=200_000)
        done = [0]

        def step():
            done[0] += 1
            if done[0] == steps:
                _dump_memory(out_dir)

        try:
            yield step
        finally:
            if done[0] < steps:  # the run ended first: keep what was recorded
                _dump_memory(out_dir)
    else:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        trace = os.path.join(out_dir, "trace.json")
        with torch.profiler.profile(
            activities=acts,
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=steps - 2, repeat=1),
            record_shapes=True,
            profile_memory=True,
            on_trace_ready=lambda p: p.export_chrome_trace(trace),
        ) as prof:
            yield prof.step


def _dump_memory(out_dir):
    torch.cuda.memory._dump_snapshot(os.path.join(out_dir, "cuda_memory.pickle"))
    torch.cuda.memory._record_memory_history(enabled=None)


ROOT = Path(__file__).resolve().parents[1]


def sync(device="cpu"):
    """Wait for the work queued on `device` (CUDA runs kernels asynchronously); nothing to wait for on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, repeats=10, warmup=3, device="cpu"):
    """Median wall time of fn() in ms over `repeats` calls after `warmup` calls (the first calls allocate and pick
    kernels), without autograd; `device` is synchronised after each call."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def run_script(cmd, env=None, quiet=False):
    """Run a python script of this repo as a child, from the repo root and with it first on PYTHONPATH: cmd[0] is
    the script's path relative to the root, or "torchrun" followed by torchrun's arguments. Prints the command line
    (so it can be rerun by hand) and exits with the child's code if it fails. env: more variables for the child;
    quiet: drop its stdout. -> (seconds, peak RSS of the child in MiB)."""
    argv = [sys.executable, "-m", "torch.distributed.run", *cmd[1:]] if cmd[0] == "torchrun" else [sys.executable, *cmd]
    print("\n$ " + " ".join(["python" if a == sys.executable else a for a in argv]), flush=True)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    t = time.time()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.DEVNULL if quiet else None,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"error: step failed with exit code {code}: {' '.join(cmd)}")
    return time.time() - t, usage.ru_maxrss / 1024


def run_step(cmd):
    """run_script() as the demos call it: -> seconds."""
    return run_script(cmd)[0]
