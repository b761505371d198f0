"""NeuroPBR dataset reader on tiny hand-made layouts: curricula, split, shapes, resize, flips, clear errors."""

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from neuropbr.dataset import DataError, PBRDataset, loader, split_materials

S = 16
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def png(path, x):
    """Write a float (C, H, W) in [0, 1] as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png((x.clamp(0, 1) * 255).round().to(torch.uint8), str(path))


def tilted_normal(s=S, nx=0.6):
    n = torch.tensor([nx, 0.0, (1 - nx * nx) ** 0.5]).view(3, 1, 1).expand(3, s, s)
    return n * 0.5 + 0.5


def make_layout(root, clean=("s0", "s1", "s2", "s3"), dirty=("s2", "s3", "s4"), n_mat=3, gray_rgb=False):
    """Samples s0..s4 -> materials m0..m{n_mat-1}; metallic as RGB when gray_rgb (channel 0 is used)."""
    root = Path(root)
    names = sorted(set(clean) | set(dirty))
    meta = {n: f"m{i % n_mat}" for i, n in enumerate(names)}
    g = torch.Generator().manual_seed(0)
    for src, samples in (("clean", clean), ("dirty", dirty)):
        for n in samples:
            for v in range(3):
                png(root / "input" / src / n / f"{v}.png", torch.rand(3, S, S, generator=g))
    for m in set(meta.values()):
        d = root / "output" / m
        png(d / "albedo.png", torch.rand(3, S, S, generator=g))
        png(d / "roughness.png", torch.full((1, S, S), 0.25))
        png(d / "metallic.png", torch.full((3, S, S), 0.75) if gray_rgb else torch.full((1, S, S), 0.75))
        png(d / "normal.png", tilted_normal())
    (root / "input" / "render_metadata.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def root(tmp_path):
    return make_layout(tmp_path / "data")


def test_curriculum_counts(root):
    c0 = PBRDataset.from_root(root)
    assert [it for it in c0.items] == [("clean", n) for n in ("s0", "s1", "s2", "s3")]
    c1 = PBRDataset(root / "input", root / "output", render_curriculum=1)
    assert len(c1) == 7  # 4 clean + 3 dirty: s2 and s3 are in both folders and queued twice
    assert sum(n == "s2" for _, n in c1.items) == 2 and c1.items == sorted(c1.items)
    c2 = PBRDataset.from_root(root, render_curriculum=2)
    assert [n for _, n in c2.items] == ["s2", "s3", "s4"] and {s for s, _ in c2.items} == {"dirty"}
    with pytest.raises(ValueError):
        PBRDataset.from_root(root, render_curriculum=3)


def test_split(tmp_path):
    root = make_layout(tmp_path, clean=tuple(f"s{i}" for i in range(20)), dirty=(), n_mat=10)
    ds = PBRDataset.from_root(root)
    tr, va = ds.split(val_fraction=0.2, seed=42)
    tr2, va2 = ds.split(val_fraction=0.2, seed=42)
    assert tr.items == tr2.items and va.items == va2.items
    assert set(tr.materials()).isdisjoint(va.materials()) and len(va.materials()) == 2
    assert len(tr) + len(va) == len(ds) and not va.augment
    others = {tuple(ds.split(0.2, seed=s)[1].materials()) for s in range(6)}
    assert len(others) > 1  # the seed matters
    sub = PBRDataset.from_root(root, subset="val", val_fraction=0.2, split_seed=42)
    assert sub.items == va.items
    assert split_materials(["a", "b"], 0.01, 0)[1] != []  # >= 1 val material when >= 2
    assert split_materials(["a"], 0.5, 0) == (["a"], [])


def test_item_shapes_ranges(tmp_path):
    root = make_layout(tmp_path, gray_rgb=True)
    ds = PBRDataset.from_root(root, render_curriculum=1)
    it = ds[0]
    assert it["views"].shape == (3, 3, S, S) and it["albedo"].shape == (3, S, S)
    assert it["roughness"].shape == (1, S, S) and it["metallic"].shape == (1, S, S) and it["normal"].shape == (3, S, S)
    for k in ("views", "albedo", "roughness", "metallic", "normal"):
        assert it[k].dtype == torch.float32
    for k in ("views", "albedo", "roughness", "metallic"):
        assert 0 <= it[k].min() and it[k].max() <= 1
    assert torch.allclose(it["metallic"], torch.full_like(it["metallic"], 0.75), atol=1 / 255)
    assert torch.allclose(it["normal"].norm(dim=0), torch.ones(S, S), atol=1e-5)
    assert it["normal"][0].mean() > 0.5 and it["name"] == "s0" and it["material"] == "m0" and it["source"] == "clean"
    # view order 0, 1, 2
    from torchvision.io import read_image

    v1 = read_image(str(root / "input/clean/s0/1.png")).float() / 255
    assert torch.allclose(it["views"][1], v1)
    batch = next(iter(loader(ds, batch_size=3, shuffle=True, seed=1)))
    assert batch["views"].shape == (3, 3, 3, S, S) and len(batch["name"]) == 3
    order = lambda: [n for b in loader(ds, 2, True, seed=5) for n in b["name"]]
    assert order() == order()


def test_resize(root):
    ds = PBRDataset.from_root(root, image_size=8)
    it = ds[1]
    assert it["views"].shape == (3, 3, 8, 8) and it["roughness"].shape == (1, 8, 8) and it["normal"].shape == (3, 8, 8)
    assert torch.allclose(it["normal"].norm(dim=0), torch.ones(8, 8), atol=1e-5)
    assert PBRDataset.from_root(root, image_size=(12, 20))[0]["albedo"].shape == (3, 12, 20)


def test_hflip_flips_normal_x(root):
    plain = PBRDataset.from_root(root)
    ds = PBRDataset.from_root(root, augment=True, seed=3)
    flipped = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            a, b = ds[i], ds[i]
            assert torch.equal(a["views"], b["views"])  # reproducible
            if not torch.equal(a["views"], plain[i]["views"]):
                flipped += 1
                assert torch.equal(a["views"], plain[i]["views"].flip(-1))
                assert torch.equal(a["albedo"], plain[i]["albedo"].flip(-1))
                assert a["normal"][0].mean() < -0.5  # tilted toward +x on disk -> toward -x after the flip
                assert torch.allclose(a["normal"][2], plain[i]["normal"][2])
            else:
                assert a["normal"][0].mean() > 0.5
    assert 0 < flipped < 16


def err(fn, *needles):
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, (n, msg)
    return msg


def test_layout_errors(root):
    meta = root / "input/render_metadata.json"
    good = json.loads(meta.read_text())
    load = lambda **kw: PBRDataset.from_root(root, **kw)

    meta.write_text("[1, 2]")
    err(load, "render_metadata.json", "flat")
    meta.write_text(json.dumps({**good, "s0": {"name": "m0"}}))
    err(load, "render_metadata.json", "s0")
    meta.write_text("{not json")
    err(load, "render_metadata.json")
    meta.unlink()
    err(load, "render_metadata.json", "missing")

    meta.write_text(json.dumps({k: v for k, v in good.items() if k != "s1"}))
    err(load, "s1", "unknown sample")
    meta.write_text(json.dumps({**good, "s9": "m0"}))
    err(load, "s9")
    meta.write_text(json.dumps(good))

    (root / "input/clean/s1/2.png").unlink()
    err(load, root / "input/clean/s1/2.png")
    (root / "output/m1/normal.png").unlink()
    err(lambda: load(render_curriculum=2), root / "output/m1/normal.png")


def test_png_errors(root):
    load = lambda: PBRDataset.from_root(root)
    bad = root / "input/clean/s0/1.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not a png at all, just text....")
    err(load, bad, "PNG")
    bad.write_bytes(good[:60])  # header fine, data cut off: found when read
    ds = load()
    err(lambda: ds[0], bad, "corrupt")
    png(bad, torch.rand(3, S, S + 4))
    err(load, root / "input/clean/s0", "different sizes")
    bad.write_bytes(good)
    rough = root / "output/m2/roughness.png"
    rough.write_bytes(rough.read_bytes()[:40])
    ds = load()
    err(lambda: ds[2], rough)


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/b", "..", "a\\b", ""])
def test_material_path_traversal(root, name):
    meta = root / "input/render_metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "s0": name}))
    err(lambda: PBRDataset.from_root(root), "s0", "material")


def test_material_symlink_outside(root, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (root / "output/link").symlink_to(tmp_path / "elsewhere")
    meta = root / "input/render_metadata.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "s0": "link"}))
    err(lambda: PBRDataset.from_root(root), "link", "outside")


def test_empty_curriculum(tmp_path):
    root = make_layout(tmp_path, clean=("s0", "s1"), dirty=())
    msg = err(lambda: PBRDataset.from_root(root, render_curriculum=2), "dirty", "render_curriculum")
    assert "0" in msg.split("try")[1]
    root2 = make_layout(tmp_path / "b", clean=(), dirty=("s0",))
    err(lambda: PBRDataset.from_root(root2), "clean", "try render_curriculum 2")
    err(lambda: PBRDataset.from_root(tmp_path / "nowhere"), "input")
