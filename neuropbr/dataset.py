"""NeuroPBR dataset reader: three rendered views of a material -> its four PBR maps.

Layout (the NeuroPBR repo's):

    ROOT/input/clean/sample_0000/{0,1,2}.png   three 8-bit RGB renders (views) of one material
    ROOT/input/dirty/sample_0000/{0,1,2}.png   dirty renders (shadows, smudges); a sample may be in clean, dirty or both
    ROOT/input/render_metadata.json            flat JSON object {"sample_0000": "<material_name>", ...}
    ROOT/output/<material_name>/albedo.png     RGB, sRGB-encoded
    ROOT/output/<material_name>/roughness.png  grayscale (1 channel; RGB -> channel 0)
    ROOT/output/<material_name>/metallic.png   grayscale (1 channel; RGB -> channel 0)
    ROOT/output/<material_name>/normal.png     RGB, tangent-space normal encoded n * 0.5 + 0.5

Usage:

    ds = PBRDataset("ROOT/input", "ROOT/output", render_curriculum=0, image_size=256, augment=True)
    ds = PBRDataset.from_root("ROOT", image_size=256)           # the same, from the root folder
    train, val = ds.split(val_fraction=0.1, seed=42)             # by material: val materials are unseen
    dl = loader(train, batch_size=8, shuffle=True, seed=0)
    for epoch in range(n):
        train.set_epoch(epoch)                                   # new (reproducible) flips each epoch
        for b in dl: b["views"]  # (B, 3 views, 3, H, W)

render_curriculum: 0 = clean renders only, 1 = clean + dirty (a sample in both folders is queued once per
folder), 2 = dirty only. Each item is a dict of float32 tensors: `views` (3, 3, H, W) in [0, 1] (views 0, 1, 2),
`albedo` (3, H, W) in [0, 1] (still sRGB), `roughness` and `metallic` (1, H, W) in [0, 1], `normal` (3, H, W)
unit vectors in [-1, 1]; plus the strings `name`, `material` and `source` ("clean"/"dirty").
No normalisation for the network (mean/std 0.5) is done here: the model does it.

Everything is resized on the fly to `image_size` (antialiased bilinear; normals are resized as vectors and
re-normalised); with image_size=None the maps are brought to the views' size. augment=True flips views and
maps horizontally with probability 0.5, negating normal.x so the normals match the flipped surface; the
flip depends only on (seed, epoch, index), so it is the same with any num_workers.

Any problem with the data is a DataError (a ValueError) with a one-line message naming the file or sample.
Layout, metadata, material names and PNG headers are checked when the dataset is built; pixel data when read.
A sample folder (in a chosen source) missing from the metadata is an error, and so is a metadata entry with
no folder in clean/ nor dirty/ (an entry found only in the source you did not choose is simply not used).
"""

import copy
import io
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_png

SOURCES = {0: ("clean",), 1: ("clean", "dirty"), 2: ("dirty",)}
VIEWS = ("0.png", "1.png", "2.png")
MAPS = ("albedo", "roughness", "metallic", "normal")
PNG_SIG = b"\x89PNG\r\n\x1a\n"
# torchvision 0.29 warns on every decode that its image I/O is deprecated; PNG decoding works, keep logs clean
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)


class DataError(ValueError):
    """Bad input data: the message is one line naming the file or the sample."""


def check_name(name, what):
    """Reject a name that could leave its folder, by looking at the string only (no file access)."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or ":" in name
        or name != name.strip()
        or Path(name).is_absolute()
    )
    if bad:
        raise DataError(
            f"{what} {name!r}: not a plain folder name (no path separators, '..', absolute paths or drive letters)"
        )


def png_size(path):
    """(height, width) from a PNG header; DataError for a missing, truncated or non-PNG file."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except FileNotFoundError:
        raise DataError(f"{path}: missing file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) < 24 or head[:8] != PNG_SIG or head[12:16] != b"IHDR":
        raise DataError(f"{path}: not a PNG file (bad or truncated header)")
    w, h = struct.unpack(">II", head[16:24])
    return h, w


def read_png(path, mode):
    """Decode a PNG to float32 (C, H, W) in [0, 1]; 8- and 16-bit files; mode RGB (3 channels) or UNCHANGED.
    Pillow decodes, and so checks, every file: torchvision's libpng decoder can crash the process (segfault) on a
    corrupt file instead of raising. 16-bit colour, which Pillow cuts to 8 bits, is then decoded by torchvision."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise ValueError(f"{im.format or 'unknown'} data")
            im.load()
            if data[24] == 16 and data[25] in (2, 6):  # IHDR bit depth 16, RGB or RGBA
                img = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode)
                return img.float() / 65535.0
            if im.mode.startswith("I"):  # 16-bit gray
                img = torch.from_numpy(np.asarray(im).astype(np.float32) / 65535.0)[None]
                return img.expand(3, -1, -1).contiguous() if mode == ImageReadMode.RGB else img
            if im.mode not in ("L", "LA", "RGB", "RGBA"):  # palette, 1-bit: as libpng expands them
                im = im.convert("RGBA" if "transparency" in im.info else "L" if im.mode == "1" else "RGB")
            a = np.asarray(im.convert("RGB") if mode == ImageReadMode.RGB else im, dtype=np.float32) / 255.0
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, zlib errors... for corrupt data
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: unreadable or corrupt PNG ({msg})") from None
    return torch.from_numpy(a.reshape(a.shape[0], a.shape[1], -1)).permute(2, 0, 1).contiguous()


def resize(x, size):
    """Antialiased bilinear resize of (..., C, H, W) to size=(H, W); a no-op when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-3]
    y = F.interpolate(
        x.reshape(-1, *x.shape[-3:]), size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )
    return y.reshape(*lead, *y.shape[-3:])


def split_materials(materials, val_fraction=0.1, seed=42):
    """Seeded split of material names -> (train, val), both sorted; >= 1 val material when there are >= 2."""
    mats = sorted(set(materials))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if len(mats) < 2 else min(len(mats) - 1, max(1, round(val_fraction * len(mats))))
    order = torch.randperm(len(mats), generator=torch.Generator().manual_seed(seed)).tolist()
    val = {mats[i] for i in order[:n_val]}
    return [m for m in mats if m not in val], sorted(val)


class PBRDataset(Dataset):
    """Items (source, sample) of a NeuroPBR layout; see the module docstring."""

    def __init__(
        self,
        input_dir,
        output_dir,
        render_curriculum=0,
        image_size=None,
        augment=False,
        seed=0,
        subset=None,
        val_fraction=0.1,
        split_seed=42,
    ):
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
        if render_curriculum not in SOURCES:
            raise ValueError(
                f"render_curriculum must be 0 (clean), 1 (clean + dirty) or 2 (dirty), got {render_curriculum!r}"
            )
        if subset not in (None, "train", "val"):
            raise ValueError(f"subset must be None, 'train' or 'val', got {subset!r}")
        self.render_curriculum, self.augment, self.seed, self.epoch = render_curriculum, augment, seed, 0
        self.image_size = (
            (image_size, image_size) if isinstance(image_size, int) else (tuple(image_size) if image_size else None)
        )
        self.metadata = self._read_metadata()
        self.items = self._find_items()
        if subset is not None:
            train, val = split_materials(self.materials(), val_fraction, split_seed)
            keep = set(train if subset == "train" else val)
            self.items = [it for it in self.items if self.metadata[it[1]] in keep]
        self._check_files()

    @classmethod
    def from_root(cls, root, **kw):
        """PBRDataset(ROOT/input, ROOT/output, **kw)."""
        return cls(Path(root) / "input", Path(root) / "output", **kw)

    def _read_metadata(self):
        if not self.input_dir.is_dir():
            raise DataError(f"{self.input_dir}: input folder not found")
        if not self.output_dir.is_dir():
            raise DataError(f"{self.output_dir}: output folder not found")
        path = self.input_dir / "render_metadata.json"
        if not path.is_file():
            raise DataError(f"{path}: missing (it maps each sample folder to its material name)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise DataError(
                f'{path}: must be a flat JSON object {{"sample_0000": "material", ...}}, got {type(meta).__name__}'
            )
        for k, v in meta.items():
            if not isinstance(v, str):
                raise DataError(f"{path}: sample {k!r} maps to {type(v).__name__}, expected a material name string")
            check_name(k, f"{path}: sample")
            check_name(v, f"{path}: sample {k!r} has material")  # before any access to the output folder
        out = self.output_dir.resolve()
        for k, v in meta.items():
            if (self.output_dir / v).resolve().parent != out:
                raise DataError(f"{path}: sample {k!r} has material {v!r}, which resolves outside {self.output_dir}")
        return meta

    def _find_items(self):
        meta_path = self.input_dir / "render_metadata.json"
        on_disk = {}
        for src in ("clean", "dirty"):
            d = self.input_dir / src
            on_disk[src] = (
                {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")} if d.is_dir() else set()
            )
        for name in sorted(self.metadata):
            if not any(name in found for found in on_disk.values()):
                raise DataError(
                    f"{meta_path}: sample {name!r} has no folder in {self.input_dir / 'clean'} or "
                    f"{self.input_dir / 'dirty'}"
                )
        items = []
        for src in SOURCES[self.render_curriculum]:
            for name in sorted(on_disk[src]):
                if name not in self.metadata:
                    raise DataError(f"{self.input_dir / src / name}: unknown sample (not in {meta_path})")
                items.append((src, name))
        if not items:
            folders = " and ".join(str(self.input_dir / s) for s in SOURCES[self.render_curriculum])
            other = {0: "2 (dirty only) or 1", 1: "none", 2: "0 (clean only) or 1"}[self.render_curriculum]
            raise DataError(
                f"no samples for render_curriculum={self.render_curriculum}: no sample folders in {folders}"
                + (f"; try render_curriculum {other}" if other != "none" else "")
            )
        return sorted(items)

    def _check_files(self):
        """Every view and map exists and has a PNG header; the three views of a sample share one size."""
        for m in self.materials():
            for k in MAPS:
                png_size(self.output_dir / m / f"{k}.png")
        for src, name in self.items:
            sizes = [png_size(self.input_dir / src / name / v) for v in VIEWS]
            if len(set(sizes)) > 1:
                raise DataError(f"{self.input_dir / src / name}: views of different sizes {sizes} (H, W)")

    def materials(self):
        """Sorted material names used by this dataset's items."""
        return sorted({self.metadata[n] for _, n in self.items})

    def split(self, val_fraction=0.1, seed=42):
        """(train, val) datasets with disjoint materials; val never augments."""
        train_m, val_m = split_materials(self.materials(), val_fraction, seed)
        train_m, val_m = set(train_m), set(val_m)
        train, val = copy.copy(self), copy.copy(self)
        train.items = [it for it in self.items if self.metadata[it[1]] in train_m]
        val.items = [it for it in self.items if self.metadata[it[1]] in val_m]
        val.augment = False
        return train, val

    def set_epoch(self, epoch):
        """Choose the flips of this epoch (the flip of item i depends on seed, epoch and i only)."""
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        src, name = self.items[i]
        material = self.metadata[name]
        folder, mdir = self.input_dir / src / name, self.output_dir / material
        views = [read_png(folder / v, ImageReadMode.RGB) for v in VIEWS]
        if len({tuple(v.shape) for v in views}) > 1:
            raise DataError(f"{folder}: views of different sizes {[tuple(v.shape[1:]) for v in views]} (H, W)")
        size = self.image_size or tuple(views[0].shape[1:])
        gray = lambda k: read_png(mdir / f"{k}.png", ImageReadMode.UNCHANGED)[:1]  # 1 channel, or RGB(A) -> channel 0
        normal = read_png(mdir / "normal.png", ImageReadMode.RGB) * 2 - 1
        out = {
            "views": resize(torch.stack(views), size).clamp(0, 1),
            "albedo": resize(read_png(mdir / "albedo.png", ImageReadMode.RGB), size).clamp(0, 1),
            "roughness": resize(gray("roughness"), size).clamp(0, 1),
            "metallic": resize(gray("metallic"), size).clamp(0, 1),
            "normal": F.normalize(resize(normal, size), dim=0, eps=1e-6),
        }
        if self.augment:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch * 65_537 + i) % (2**63))
            if torch.rand((), generator=g).item() < 0.5:
                out = {k: v.flip(-1) for k, v in out.items()}
                out["normal"][0] = -out["normal"][0]  # x points the other way on the mirrored surface
        return {**{k: v.contiguous() for k, v in out.items()}, "name": name, "material": material, "source": src}


def loader(dataset, batch_size, shuffle=True, seed=0, num_workers=0, drop_last=False):
    """A DataLoader over `dataset` whose shuffling is seeded (the default collate stacks the dicts)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
