"""The harness every use case's bench.py runs on: its command line, FLOPs per call (torch.utils.flop_counter),
the machine's matmul peak, where a `.pte`'s time goes (ETDump), a training-step breakdown (data / forward /
backward / optimizer), 1-vs-2-process scaling, and the results files (bench/results.json rows + bench/results.md).
Timings use common.runtime.median_ms, child scripts common.runtime.run_script.

    args, work, res = cli("nss", __doc__)   # in nss/bench.py: the flags, its work dir, its Results
    res.add("psnr", "fp32", 30.6, "dB", True, baselines={"bicubic": 25.7})
    res.write()        # merges with the other use cases' rows already in bench/results.json, prints the table
"""

import argparse
import json
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.runtime import median_ms, run_script, sync


def cli(usecase, doc, device=False):
    """The command line every bench.py shares -> (args, work dir, Results). `doc` is the script's docstring."""
    p = argparse.ArgumentParser(
        description=doc.split("\n")[0],
        epilog=doc.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny budget, every kind of row (a few minutes; for tests)")
    p.add_argument(
        "--work",
        default=None,
        help=f"run directory for data, checkpoints, exports (default runs/bench/{usecase}[_quick])",
    )
    p.add_argument("--results", default="bench", help="folder of results.json / results.md (merged per use case)")
    p.add_argument("--seed", type=int, default=1337)
    if device:
        p.add_argument(
            "--device",
            default="auto",
            choices=["auto", "cpu", "cuda"],
            help="training and eager timings (.pte runs on the CPU)",
        )
    args = p.parse_args()
    quick = " --quick" if args.quick else ""
    work = Path(args.work or f"runs/bench/{usecase}{'_quick' if args.quick else ''}")
    return args, work, Results(usecase, f"bash run.sh bench {usecase}{quick}", args.results)


def machine():
    """Cores, CPU model, GPU and package versions, for the results header."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "gpu": gpu,
        "python": platform.python_version(),
        **{p: version(p) for p in ("torch", "torchvision", "executorch")},
    }


def pte_profile(path, inputs, runs=5):
    """Where the time of an ExecuTorch `.pte` goes, from its ETDump (ExecuTorch's devtools Inspector): the sums of
    each op's median ms over `runs` runs (a warm-up included) for XNNPACK's convolutions ("conv"), its other
    kernels ("other delegated": activations, concat), its layout and quantization conversions ("transpose/convert":
    Transpose, Copy and Convert ops, the pixel shuffle among them) and the ops left out of the delegate ("not
    delegated"), and the median Method::execute ("total"). Medians do not add up exactly. -> {part: ms}."""
    import tempfile

    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    module = _load_for_executorch(str(path), enable_etdump=True)
    for _ in range(runs + 1):
        module.forward(list(inputs))
    with tempfile.TemporaryDirectory() as work:
        module.write_etdump_result_to_file(f"{work}/run.etdp")
        df = Inspector(etdump_path=f"{work}/run.etdp").to_dataframe()
    parts = {"conv": 0.0, "other delegated": 0.0, "transpose/convert": 0.0, "not delegated": 0.0, "total": 0.0}
    for name, ms in zip(df["event_name"], df["p50 (ms)"]):
        if name == "Method::execute":
            parts["total"] += ms
        elif name in ("DELEGATE_CALL", "OPERATOR_CALL"):
            continue
        elif name.startswith("native_call_"):
            parts["not delegated"] += ms
        elif name.startswith("Convolution"):
            parts["conv"] += ms
        elif name.startswith(("Transpose", "Copy", "Convert")):
            parts["transpose/convert"] += ms
        else:
            parts["other delegated"] += ms
    return parts


def count_flops(fn):
    """FLOPs of one fn() call as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def peak_gflops(device="cpu", n=2048, dtype=torch.float32, repeats=5):
    """The machine's practical fp32 peak: the best GFLOP/s of an n x n matmul (what MFU is a share of)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = min(median_ms(lambda: a @ b, repeats=3, warmup=1, device=device) for _ in range(repeats))
    return 2 * n**3 / (ms * 1e-3) / 1e9


def step_breakdown(next_batch, loss_fn, opt, steps=10, warmup=2, device="cpu", samples=1):
    """Time `steps` training steps split into data (next_batch()), forward (loss_fn(batch)), backward and
    optimizer. -> ms of each part (median), data share of the step, samples/s, CUDA max allocated (MiB)."""
    parts = {"data": [], "forward": [], "backward": [], "optimizer": []}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next_batch()
        sync(device)
        t1 = time.perf_counter()
        loss = loss_fn(batch)
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        opt.step()
        sync(device)
        t4 = time.perf_counter()
        if i >= warmup:
            for k, a, b in (("data", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("optimizer", t3, t4)):
                parts[k].append((b - a) * 1e3)
    ms = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(ms.values())
    out = {**ms, "step": total, "data_share": ms["data"] / total, "samples_per_s": samples / (total * 1e-3)}
    if torch.device(device).type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def metric_median(metrics_jsonl, key, kind="train", skip=1):
    """Median of `key` over the rows of one kind in a run's metrics.jsonl (the first `skip` rows, which
    include warm-up, left out)."""
    rows = [json.loads(l) for l in Path(metrics_jsonl).read_text().splitlines() if l.strip()]
    vals = [r[key] for r in rows if r.get("split") == kind and key in r]
    return statistics.median(vals[skip:] or vals)


def scaling(script, args, out, steps, key, metrics_kind="train"):
    """Throughput (metrics.jsonl `key`, all processes together) of `steps` training steps of `script args` in
    1 process vs `torchrun --nproc_per_node=2` -> (one, two, speed-up)."""
    one = two = None
    for n in (1, 2):
        o = Path(out) / f"procs{n}"
        cmd = [script, *args, "--out", str(o), "--max-steps", str(steps)]
        run_script(["torchrun", "--standalone", f"--nproc_per_node={n}", *cmd] if n == 2 else cmd, quiet=True)
        v = metric_median(o / "metrics.jsonl", key, metrics_kind)
        one, two = (v, two) if n == 1 else (one, v)
    return one, two, two / one


class Results:
    """Rows {usecase, metric, variant, value, unit, higher_is_better, baselines, command} for one use case."""

    def __init__(self, usecase, command, out="bench"):
        self.usecase, self.command, self.out, self.rows, self.t0 = usecase, command, Path(out), [], time.time()
        self.info = {
            "command": command,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
        }

    def add(self, metric, variant, value, unit, higher_is_better=True, baselines=None):
        row = {
            "usecase": self.usecase,
            "metric": metric,
            "variant": variant,
            "value": float(f"{float(value):.5g}"),
            "unit": unit,
            "higher_is_better": higher_is_better,
            "baselines": {k: float(f"{float(v):.5g}") for k, v in (baselines or {}).items()},
            "command": self.command,
        }
        self.rows.append(row)
        print(
            f"[bench] {self.usecase} {metric} ({variant}): {row['value']:g} {unit}"
            + "".join(f" | {k} {v:g}" for k, v in row["baselines"].items()),
            flush=True,
        )
        return row

    def write(self, notes=()):
        """Merge into OUT/results.json (other use cases' rows kept), rewrite OUT/results.md, print this table."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.info.update(seconds=round(time.time() - self.t0), notes=list(notes))
        path, runs_path = self.out / "results.json", self.out / "runs.json"
        rows = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["usecase"] != self.usecase]
        runs = json.loads(runs_path.read_text()) if runs_path.exists() else {}
        runs[self.usecase] = self.info
        rows += self.rows
        path.write_text(json.dumps(rows, indent=1))
        runs_path.write_text(json.dumps(runs, indent=1))
        md = [
            "# nanoNG benchmark results",
            "",
            "Written by `bash run.sh bench`; every number below comes from the run named in its section.",
            "",
        ]
        for uc in runs:  # in the order the use cases were first benchmarked into OUT (run.sh bench all's order)
            md += [f"## {uc}", "", table([r for r in rows if r["usecase"] == uc], runs[uc]), ""]
        (self.out / "results.md").write_text("\n".join(md))
        print("\n" + table(self.rows, self.info))
        print(f"\nwrote {path} and {self.out / 'results.md'} ({self.info['seconds'] / 60:.1f} min)")


def table(rows, info):
    m = info["machine"]
    head = [
        f"`{info['command']}` on {info['date']}, {info['seconds'] / 60:.1f} min; {m['cores']} cores {m['cpu']}, "
        f"GPU {m['gpu']}; torch {m['torch']}, executorch {m['executorch']}, python {m['python']}",
        "",
    ]
    head += [f"- {n}" for n in info.get("notes", [])] + ([""] if info.get("notes") else [])
    lines = ["| metric | variant | value | unit | baselines | goal (README Goals) |", "|---|---|---|---|---|---|"]
    for r in rows:
        arrow = "↑" if r["higher_is_better"] else "↓"
        base = ", ".join(f"{k} {v:g}" for k, v in r["baselines"].items() if k != "goal")
        goal = r["baselines"].get("goal")
        if goal is not None:
            met = r["value"] >= goal if r["higher_is_better"] else r["value"] <= goal
            goal = f"{goal:g}: met" if met else f"{goal:g}: **missed by {abs(r['value'] - goal):.3g}**"
        lines.append(
            f"| {r['metric']} {arrow} | {r['variant']} | {r['value']:g} | {r['unit']} | {base} | {goal or ''} |"
        )
    return "\n".join(head + lines)
