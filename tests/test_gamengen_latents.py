"""GameNGen part 2: the frame autoencoder (train, encode to latents once, decoder fine-tune) and the
latent-sequence dataset (context never crosses episodes, left-padded at episode starts)."""

import argparse
import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("vizdoom", reason="GameNGen needs vizdoom (bash run.sh smoke installs gamengen/requirements.txt)")

from gamengen import autoencoder as aem  # noqa: E402
from gamengen.collect import collect  # noqa: E402
from gamengen.dataset import LatentSequences  # noqa: E402


def tiny(**kw):
    return aem.AEConfig(**dict(asdict(aem.PRESETS["tiny"]), **kw))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gamengen_ae")
    index = collect(root / "doom", 300, seed=3, shard_steps=100, progress=False)
    for e, v in index["episodes"].items():  # both splits whatever the episode lengths: alternate them
        v["split"] = "heldout" if int(e) % 2 else "train"
    (root / "doom" / "index.json").write_text(json.dumps(index))
    ns = argparse.Namespace(data=root / "doom", out=root / "run", seed=0, resume=False)
    torch.manual_seed(0)
    aem.train(ns, tiny())
    return root


def test_autoencoder_shapes():
    model = aem.AE(tiny())
    x = torch.rand(2, 3, 128, 160)
    y, z = model(x)
    assert z.shape == (2, 4, 16, 20) and y.shape == x.shape
    assert model.encode(x).shape == (2, 4, 16, 20) and model.decode(z).shape == (2, 3, 128, 160)


def test_short_training_lowers_the_loss_and_resumes(trained):
    index, shards = aem.load_shards(trained / "doom")
    rows = aem.eval_rows(index, shards, 8)
    model, cfg = aem.load_model(trained / "run" / "ckpt" / "latest")
    torch.manual_seed(0)
    fresh = aem.AE(cfg).eval()
    trained_psnr, fresh_psnr = (aem.evaluate(lambda x, k: m(x)[0], shards, rows) for m in (model, fresh))
    assert trained_psnr > fresh_psnr + 2, (trained_psnr, fresh_psnr)
    ns = argparse.Namespace(data=trained / "doom", out=trained / "run", seed=0, resume=True)
    aem.train(ns, tiny(steps=24, eval_every=4))
    meta = json.loads((trained / "run" / "ckpt" / "latest" / "meta.json").read_text())
    assert meta["step"] == 24


def test_encode_writes_latents_matching_the_shards(trained):
    ns = argparse.Namespace(data=trained / "doom", ckpt=trained / "run" / "ckpt" / "best", out=trained / "latents")
    aem.encode(ns)
    src = json.loads((trained / "doom" / "index.json").read_text())
    idx = json.loads((trained / "latents" / "index.json").read_text())
    assert idx["latent_shape"] == [4, 16, 20] and idx["scale"] > 0 and idx["episodes"] == src["episodes"]
    assert len(idx["shards"]) == len(src["shards"])
    for s, l in zip(src["shards"], idx["shards"]):
        frames, lat = load_file(str(trained / "doom" / s["file"])), load_file(str(trained / "latents" / l["file"]))
        assert lat["latents"].dtype == torch.float16 and lat["latents"].shape == (s["steps"], 4, 16, 20)
        for k in ("episode", "step", "actions"):
            assert torch.equal(lat[k], frames[k])
        assert l["segments"] == s["segments"]
    ds = LatentSequences(trained / "latents", "heldout", context=4)
    assert ds[0]["target"].shape == (4, 16, 20) and ds[0]["context"].shape == (4, 4, 16, 20)


def test_decoder_finetune_changes_only_the_decoder(trained):
    if not (trained / "latents" / "index.json").exists():
        aem.encode(
            argparse.Namespace(data=trained / "doom", ckpt=trained / "run" / "ckpt" / "best", out=trained / "latents")
        )
    before, _ = aem.load_model(trained / "run" / "ckpt" / "best")
    ns = argparse.Namespace(
        data=trained / "doom",
        latents=trained / "latents",
        ckpt=trained / "run" / "ckpt" / "best",
        out=trained / "dec",
        seed=0,
        resume=False,
    )
    aem.decoder_finetune(ns, tiny(steps=3, eval_every=3, lr=1e-3))
    after, _ = aem.load_model(trained / "dec" / "ckpt" / "latest")
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))


def write_synthetic_latents(root, lengths):
    """Episodes {e: length} split over two shards (episode 1 spans both); latent value = 1000 * episode + step."""
    root.mkdir()
    rows = [(e, t) for e, n in lengths.items() for t in range(n)]
    cut = len(rows) // 2 + 1
    shards = []
    for i, part in enumerate((rows[:cut], rows[cut:])):
        ep = torch.tensor([e for e, _ in part])
        st = torch.tensor([t for _, t in part])
        lat = (1000 * ep + st).half().view(-1, 1, 1, 1).expand(-1, 4, 2, 3).contiguous()
        save_file(
            {"latents": lat, "actions": (st % 7) + 1, "episode": ep, "step": st}, str(root / f"latents_{i}.safetensors")
        )
        shards.append({"file": f"latents_{i}.safetensors", "steps": len(part)})
    episodes = {str(e): {"split": "heldout" if e == 2 else "train", "length": n} for e, n in lengths.items()}
    (root / "index.json").write_text(json.dumps({"shards": shards, "episodes": episodes, "scale": 0.5}))


def test_dataset_never_crosses_episodes_and_left_pads(tmp_path):
    lengths = {0: 3, 1: 9, 2: 5, 3: 1}
    write_synthetic_latents(tmp_path / "lat", lengths)
    N = 4
    ds = LatentSequences(tmp_path / "lat", "train", context=N, scaled=False)
    assert len(ds) == 3 + 9 + 1
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        e, t = s["episode"], s["step"]
        seen.add((e, t))
        assert torch.all(s["target"] == 1000 * e + t)
        n = min(N, t)
        assert s["valid"].tolist() == [False] * (N - n) + [True] * n
        for k in range(N):
            if k < N - n:  # padding: zero latent, noop
                assert torch.all(s["context"][k] == 0) and s["actions"][k] == 0
            else:  # step t - N + k of the same episode, and the action taken there
                assert torch.all(s["context"][k] == 1000 * e + t - N + k) and s["actions"][k] == (t - N + k) % 7 + 1
    assert seen == {(e, t) for e, n in lengths.items() if e != 2 for t in range(n)}
    held = LatentSequences(tmp_path / "lat", "heldout", context=N)
    assert {held[i]["episode"] for i in range(len(held))} == {2} and torch.all(held[4]["target"] == 0.5 * 2004)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["context"].shape == (5, N, 4, 2, 3) and batch["valid"].shape == (5, N)
