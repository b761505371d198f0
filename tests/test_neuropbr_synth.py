"""neuropbr/synth.py on tiny data (64 px): NeuroPBR's exact layout, valid maps, determinism, non-trivial renders,
clean/dirty split, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.io import ImageReadMode, read_image

from neuropbr.synth import make_dataset

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
MAPS = {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}


def png(path):
    return read_image(str(path), ImageReadMode.UNCHANGED)


def sample_dir(root, sample):
    """The one folder of a sample: exactly one of input/clean/<sample>, input/dirty/<sample> exists."""
    found = [root / "input" / s / sample for s in ("clean", "dirty") if (root / "input" / s / sample).is_dir()]
    assert len(found) == 1, f"{sample}: in {len(found)} of clean/dirty"
    return found[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("npbr")
    meta = make_dataset(root, 8, size=SIZE, seed=0, progress=False)
    return root, meta


def test_layout(data):
    root, meta = data
    on_disk = json.loads((root / "input" / "render_metadata.json").read_text())
    assert on_disk == meta and len(meta) == 8
    assert all(isinstance(v, str) for v in meta.values())  # flat {sample: material}
    folders = sorted(
        d.name for s in ("clean", "dirty") if (root / "input" / s).is_dir() for d in (root / "input" / s).iterdir()
    )
    assert folders == sorted(meta) == [f"sample_{i:04d}" for i in range(8)]  # each sample once, nothing else
    assert sorted(p.name for p in (root / "input").iterdir()) <= ["clean", "dirty", "render_metadata.json"]
    assert len(set(meta.values())) == 8  # one material per sample
    assert sorted(meta.values()) == sorted(p.name for p in (root / "output").iterdir())
    for sample, name in meta.items():
        d = sample_dir(root, sample)
        assert sorted(p.name for p in d.iterdir()) == ["0.png", "1.png", "2.png"]
        for v in range(3):
            assert png(d / f"{v}.png").shape == (3, SIZE, SIZE)
        assert sorted(p.name for p in (root / "output" / name).iterdir()) == sorted(f"{k}.png" for k in MAPS)
        for k, c in MAPS.items():
            img = png(root / "output" / name / f"{k}.png")
            assert img.shape == (c, SIZE, SIZE) and img.dtype == torch.uint8, (name, k, img.shape)


def test_maps_valid(data):
    root, meta = data
    metal_seen = False
    for name in meta.values():
        n = png(root / "output" / name / "normal.png").float() / 255 * 2 - 1
        assert (n.norm(dim=0) - 1).abs().max() < 0.02, name  # unit length within 8-bit rounding
        assert n[2].min() > 0, name  # z out of the surface
        rough = png(root / "output" / name / "roughness.png").float() / 255
        assert rough.min() >= 0.04, name  # roughness in [0.05, 1]
        metal_seen |= bool((png(root / "output" / name / "metallic.png") > 200).float().mean() > 0.3)
    assert metal_seen  # the metal families are metallic


def test_renders_not_blank_and_views_differ(data):
    root, meta = data
    for sample in meta:
        views = [png(sample_dir(root, sample) / f"{v}.png").float() / 255 for v in range(3)]
        for v in views:
            assert v.std() > 0.03 and 0.05 < v.mean() < 0.95, sample
        for a in range(3):
            for b in range(a + 1, 3):
                d = (views[a] - views[b]).abs()  # rectified views: the flash, highlights, relief move
                assert d.mean() > 0.002 and d.max() > 0.1, (sample, a, b)


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_deterministic_and_seeds_differ(tmp_path):
    make_dataset(tmp_path / "a", 3, size=SIZE, seed=0, progress=False)
    make_dataset(tmp_path / "b", 3, size=SIZE, seed=0, progress=False)
    make_dataset(tmp_path / "c", 3, size=SIZE, seed=1, progress=False)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and len(a) == 3 * 3 + 3 * 4  # byte-identical for one seed
    albedo = lambda fs: [v for k, v in fs.items() if k.endswith("albedo.png")]  # noqa: E731
    assert all(x != y for x, y in zip(albedo(a), albedo(c)))  # another seed: other materials
    assert not set(json.loads((tmp_path / "a/input/render_metadata.json").read_text()).values()) & set(
        json.loads((tmp_path / "c/input/render_metadata.json").read_text()).values()
    )


def test_clean_dirty_split(tmp_path):
    meta = make_dataset(tmp_path / "mix", 16, size=32, seed=0, progress=False)
    dirty = {s for s in meta if (tmp_path / "mix/input/dirty" / s).is_dir()}
    assert 0 < len(dirty) < 16
    for frac, want in ((0.0, "dirty"), (1.0, "clean")):
        root = tmp_path / want
        meta = make_dataset(root, 3, size=32, seed=0, clean_fraction=frac, progress=False)
        assert all((root / "input" / want / s).is_dir() for s in meta)
        assert not (root / "input" / ("clean" if want == "dirty" else "dirty")).exists() or not any(
            (root / "input" / ("clean" if want == "dirty" else "dirty")).iterdir()
        )


def test_rerun_smaller_keeps_layout_exact(tmp_path):
    make_dataset(tmp_path, 5, size=32, seed=0, clean_fraction=0.0, progress=False)
    meta = make_dataset(tmp_path, 3, size=32, seed=0, clean_fraction=1.0, progress=False)
    for sample in meta:
        sample_dir(tmp_path, sample)
    dirs = [d.name for s in ("clean", "dirty") for d in (tmp_path / "input" / s).iterdir()]
    assert sorted(dirs) == sorted(meta)


def test_cli_and_preview(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "neuropbr/synth.py"),
            "--out",
            str(tmp_path / "d"),
            "--count",
            "2",
            "--size",
            "48",
            "--seed",
            "3",
            "--preview",
            str(tmp_path / "p.png"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "d/input/render_metadata.json").read_text())
    assert list(meta) == ["sample_0000", "sample_0001"]
    assert png(sample_dir(tmp_path / "d", "sample_0001") / "2.png").shape == (3, 48, 48)
    assert png(tmp_path / "p.png").shape[0] == 3
    bad = subprocess.run(
        [sys.executable, str(ROOT / "neuropbr/synth.py"), "--out", str(tmp_path / "e"), "--count", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2


def test_materials_have_real_relief_and_the_renders_show_it():
    """Over one material of each family at 128 px a flat normal is >= 15 deg off on average, and the relief is
    in the renders: traced through the height field (parallax, occlusion, shadows), a view differs from the same
    view of the same maps with the height flattened."""
    from neuropbr import synth

    angles = []
    for i, family in enumerate(synth.FAMILIES):
        m = synth.make_material(torch.Generator().manual_seed(i), family, 128)
        assert m["height"].max() == 0 and m["height"].min() < -0.005, family  # top plane z = 0, real depth
        n = synth.decode_maps(synth.encode_maps(m))[5:8]
        angles.append(torch.rad2deg(torch.acos(n[2].clamp(-1, 1))).mean().item())
        if family == "stones":
            stack = synth.decode_maps(synth.encode_maps(m))
            relief = synth.render_views(torch.Generator().manual_seed(7), stack, m["height"], dirty=False).float()
            flat = synth.render_views(
                torch.Generator().manual_seed(7), stack, torch.zeros_like(m["height"]), dirty=False
            ).float()
            assert (relief - flat).abs().mean() > 4, (relief - flat).abs().mean()  # 8-bit levels
    assert sum(angles) / len(angles) >= 15, angles
    assert min(angles) > 3 and max(angles) > 20, angles


def test_views_are_rectified_to_the_maps():
    """A camera straight above a material without relief sees texel (i, j) at pixel (i, j): the rendered view's
    edges line up with the albedo map's edges (the views are registered with the maps)."""
    from neuropbr import synth

    g = torch.Generator().manual_seed(0)
    m = synth.make_material(g, "tiles", 64)
    stack = synth.decode_maps(synth.encode_maps(m))
    p = synth.trace_relief(torch.zeros_like(m["height"]), torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(synth.lookup(stack, p), stack, atol=1e-5)
