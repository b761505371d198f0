"""Logging: console at --log-level, the same lines in OUT/output.log, metrics in OUT/metrics.jsonl,
TensorBoard scalars/images when the optional `tensorboard` package is installed."""

import json
import logging
import sys
import time
from pathlib import Path

LEVELS = {"quiet": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


def setup(out_dir, level="info", master=True, name="nanong"):
    """Return a logger. Non-master DDP ranks only print warnings and write nothing."""
    log = logging.getLogger(name)
    log.handlers.clear()
    log.setLevel(logging.DEBUG)
    log.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(LEVELS[level] if master else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    if master:
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(Path(out_dir) / "output.log")
        except OSError as e:
            from common.runtime import fail

            fail(f"{out_dir}: cannot write the run folder here ({e.strerror or e})")
        fh.setLevel(logging.DEBUG if level == "debug" else logging.INFO)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    return log


def _step_of(row):
    """The step of a metrics.jsonl row; infinity for a line torn by a kill -9 in the middle of its write."""
    try:
        return json.loads(row)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class Metrics:
    """Append-only JSONL of {"step", "split", **values}; mirrored to TensorBoard if it is installed.
    On resume from step S, rows logged after S by the interrupted run are dropped (they will be redone)."""

    def __init__(self, out_dir, enabled=True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tb"))
            except ImportError:
                pass

    def resume(self, step):
        """Drop rows the interrupted run logged after its checkpoint at `step`; the resumed run redoes them."""
        if self.enabled and self.path.exists():
            rows = [r for r in self.path.read_text(errors="replace").splitlines() if _step_of(r) <= step]
            self.path.write_text("".join(r + "\n" for r in rows))

    def write(self, step, split, **values):
        if not self.enabled:
            return
        row = {"step": step, "split": split, "time": round(time.time(), 3)}
        row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def image(self, tag, chw, step):
        if self.tb:
            self.tb.add_image(tag, chw, step)


class _Lines:
    """A file for tqdm when stderr is not a terminal (a log file, CI): each refresh becomes one whole line, instead
    of carriage-return redraws that pile up into one unreadable line."""

    def __init__(self, f):
        self.f = f

    def write(self, s):
        s = s.replace("\r", "").strip("\n")
        if s.strip():
            self.f.write(s + "\n")

    def flush(self):
        self.f.flush()


def progress(iterable=None, **kw):
    """tqdm: a live bar on a terminal; elsewhere a plain line every 10 s, starting after 10 s (so short tasks and
    their one-line errors stay quiet), and one at the end when it showed any. Same arguments as tqdm."""
    from tqdm import tqdm

    if not getattr(sys.stderr, "isatty", lambda: False)():
        kw = {
            "mininterval": 10.0,
            "maxinterval": 10.0,
            "delay": 10.0,
            "dynamic_ncols": False,
            "ncols": 100,
            **kw,
            "file": _Lines(sys.stderr),
        }
    return tqdm(iterable, **kw)
