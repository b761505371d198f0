"""Shared fixtures. `gamengen_tiny`: a tiny GameNGen pipeline built once per test session (recorded random play,
tiny autoencoder, latents, tiny diffusion checkpoint), through the same commands a user runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


STRESS = os.environ.get("NANONG_STRESS") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes (export lowering); scheduled first, on its own")
    config.addinivalue_line(
        "markers", "stress: minutes of int8 lowering or the bench; runs in `bash run.sh stress`, skipped in smoke"
    )


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (`run.sh smoke` runs two workers): keep each file on one worker, so module fixtures are
    built once, and the two files that use the session fixture `gamengen_tiny` on the same worker. A test marked
    `slow` is a group of its own (its module fixtures are cheap to build twice), and the slow groups come first:
    run.sh passes --no-loadscope-reorder, so the workers take groups in this order and end together instead of
    one starting a four-minute export while the other has nothing left."""
    group = {}
    for item in items:
        if item.get_closest_marker("stress") and not STRESS:
            item.add_marker(pytest.mark.skip(reason="minutes: in bash run.sh stress (NANONG_STRESS=1), not in smoke"))
        name = Path(str(item.fspath)).stem
        if "gamengen_tiny" in getattr(item, "fixturenames", ()):
            name = "gamengen_tiny"
        elif item.get_closest_marker("slow"):
            name = item.nodeid
        group[item] = name
        item.add_marker(pytest.mark.xdist_group(name))
    slow = {group[item] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: group[item] not in slow)  # stable: collection order within each part


def run_main(main, *argv):
    """Call a script's main() in-process with sys.argv set (no interpreter start-up: seconds saved per call)."""
    saved = sys.argv
    sys.argv = ["prog", *map(str, argv)]
    try:
        return main()
    finally:
        sys.argv = saved


def record_random_play(out, steps=400):
    """gamengen/collect.py's random play into `out`, in a child process, retried once: ViZDoom's game.init() now and
    then dies of SIGSEGV when it starts while the other test worker is busy (2 of 3 smoke runs on 2 cores, at the
    start; not reproduced alone), and a crash here must cost one retry, not the test worker. -> out"""
    code = "from gamengen.collect import collect; "
    code += f"collect({str(out)!r}, {steps}, seed=3, shard_steps=100, progress=False)"
    for _ in range(2):
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
        if r.returncode == 0:
            return out
    raise RuntimeError(f"recording random play failed twice (exit {r.returncode}): {r.stderr[-2000:]}")


@pytest.fixture(scope="session")
def gamengen_tiny(tmp_path_factory):
    pytest.importorskip(
        "vizdoom", reason="GameNGen needs vizdoom (bash run.sh smoke installs gamengen/requirements.txt)"
    )
    from gamengen import train

    root = tmp_path_factory.mktemp("gamengen_tiny")
    index = json.loads((record_random_play(root / "doom") / "index.json").read_text())
    for e, v in index["episodes"].items():  # both splits whatever the episode lengths: alternate them
        v["split"] = "heldout" if int(e) % 2 else "train"
    (root / "doom" / "index.json").write_text(json.dumps(index))
    run_main(train.main, "ae", "--data", root / "doom", "--out", root / "ae", "--preset", "tiny", "--steps", 4)
    run_main(
        train.main,
        "encode",
        "--data",
        root / "doom",
        "--ckpt",
        root / "ae" / "ckpt" / "latest",
        "--out",
        root / "latents",
    )
    run_main(
        train.main,
        "diffusion",
        "--data",
        root / "latents",
        "--out",
        root / "diffusion",
        "--preset",
        "tiny",
        "--log-level",
        "quiet",
    )
    return root


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    """Tiny built-in NSS data (nss/synth.py): 2 training captures of 8 frames, 1 held-out of 6, 64x64 high res."""
    from nss.synth import make_dataset

    root = tmp_path_factory.mktemp("nss_data")
    make_dataset(root / "train", 2, 8, (64, 64), seed=1, progress=False)
    make_dataset(root / "test", 1, 6, (64, 64), seed=99, progress=False)
    return root
