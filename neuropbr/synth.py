"""Built-in NeuroPBR data: procedural PBR materials with real relief, rendered from three views, in NeuroPBR's layout.

Every sample is one procedural material of eight families, each with random parameters: bricks and tiles with
mortar/grout joints and unevenly laid units, planks with gaps, cupping and wear, rounded stones in grit, hammered
metal (round dents), embossed metal (tread plate), scratched metal (dents, grooves) and woven fabric (plain or
basket weave); metals carry rust or paint patches. A family builds albedo, roughness, metallic and a height field
(material widths, 0 at the top plane); the normal map is the height's exact slope. Over the held-out materials a
flat normal is ~15-16 deg off on average (stones, hammered metal and fabric 20-27, scratched metal ~5).
The families are neuropbr/materials.py; this file is the renderer, the 8-bit maps and the dataset writer.

The three views look at the sample lying flat at the origin (z up) from cameras on a sphere around it (radius
0.95-1.1, azimuth U(0, 360), tilt from vertical U(0, 40) deg) and are RECTIFIED to the sample's square, as a capture
app does with the sample's corners: pixel (i, j) of every view shows texel (i, j) of the top plane, so the
views are registered with the maps, and what differs between views is what a real capture shows: the relief
moving and hiding itself (each ray is traced into the height field), highlights and the camera's flash moving
with the view (each photo is taken with the flash on: a point light at the camera). Shading is
Cook-Torrance (GGX D, Smith Schlick-GGX G, Schlick F with F0 = lerp(0.04, albedo, metallic)) plus Lambert diffuse
* (1 - metallic), lit by the flash and 1-2 random point/directional lights whose light the relief blocks (soft
shadows traced in the height field) and a hemisphere sky occluded in its hollows; exposure and white balance are
calibrated on the sample's plane (every source scaled per channel so that a white diffuse surface would shine
0.7-0.9, as a grey card in the shot allows: without it albedo is only known up to the light's colour and strength), then
ACES-tonemapped and sRGB-encoded. A sample is
"dirty" with probability 1 - clean_fraction: then it also gets a soft cast shadow (p 0.75), lens smudges (p 0.6),
an exposure shift and sensor noise.

    DIR/input/clean/sample_0000/{0,1,2}.png   three 8-bit sRGB renders (or input/dirty/sample_0000/...)
    DIR/input/render_metadata.json            flat JSON {"sample_0000": "<material_name>", ...}
    DIR/output/<material_name>/albedo.png     RGB sRGB albedo
    DIR/output/<material_name>/roughness.png  L (grayscale), linear roughness in [0, 1]
    DIR/output/<material_name>/metallic.png   L, metallic in [0, 1]
    DIR/output/<material_name>/normal.png     RGB tangent-space normal n * 0.5 + 0.5 (x = image right,
                                              y = image up, +z out of the surface)

    python neuropbr/synth.py --out data/neuropbr/train --count 64 --size 256 --seed 0 --preview strip.png
    python neuropbr/synth.py --out data/neuropbr/test --count 16 --size 256 --seed 1   # held-out materials

Sample i of --seed S renders material S * 100000 + i (named e.g. planks_0002 for seed 0), from its own random
stream: the same seed gives byte-identical PNGs, another seed other materials, lights and cameras. The renders
use the maps as written (8-bit), so targets and inputs agree exactly.
"""

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torchvision.io import write_png

from common.images import grid, load_png, srgb
from common.log import progress as progress_bar
from neuropbr.materials import FAMILIES, U, fbm, hsv, make_material, normalize, smoothstep, uv_grid

# torchvision 0.29 deprecates its PNG codec in favour of TorchCodec but it works; silence the per-call warning
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)
MAPS = ("albedo", "roughness", "metallic", "normal")


# ------------------------------------------------------------------------------------------------ 8-bit maps
def srgb_decode(x):
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def quantize(x):
    """[0, 1] float -> uint8, round to nearest."""
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def encode_maps(m):
    """Float maps -> the uint8 (C, S, S) images written to disk (albedo sRGB, normal n * 0.5 + 0.5)."""
    return {
        "albedo": quantize(srgb(m["albedo"])),
        "roughness": quantize(m["roughness"]),
        "metallic": quantize(m["metallic"]),
        "normal": quantize(m["normal"] * 0.5 + 0.5),
    }


def decode_maps(q):
    """uint8 maps -> one (8, S, S) float stack [albedo linear, roughness, metallic, unit normal] for rendering."""
    f = {k: t.float() / 255 for k, t in q.items()}
    n = normalize(f["normal"] * 2 - 1, dim=0)
    return torch.cat([srgb_decode(f["albedo"]), f["roughness"], f["metallic"], n])


# -------------------------------------------------------------------------------------------------- renderer
def random_eye(g):
    """A camera position on a sphere around the sample's centre: radius 0.95-1.1 material widths, tilted 0-40
    deg from vertical towards any azimuth."""
    r, az, tilt = U(g, 0.95, 1.1), U(g, 0, 2 * math.pi), math.radians(U(g, 0, 40))
    return torch.tensor([r * math.sin(tilt) * math.cos(az), r * math.sin(tilt) * math.sin(az), r * math.cos(tilt)])


def random_lights(g):
    """1-2 lights: (position or direction (3,), is_point, rgb radiance (3,)) and hemisphere sky/ground colours."""
    lights = []
    for _ in range(1 + int(U(g, 0, 1) < 0.5)):
        az, elev = U(g, 0, 2 * math.pi), math.radians(U(g, 20, 85))
        d = torch.tensor([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)])
        point, dist = U(g, 0, 1) < 0.5, U(g, 0.8, 2.0)
        rgb = hsv(U(g, 0.05, 0.65), U(g, 0, 0.25), 1.0) * U(g, 0.8, 2.5)  # irradiance at the sample's centre
        lights.append((d * dist, True, rgb * dist**2) if point else (d, False, rgb))
    sky = hsv(U(g, 0.5, 0.65), U(g, 0.05, 0.5), U(g, 0.2, 0.6))
    ground = hsv(U(g, 0.05, 0.15), U(g, 0.1, 0.4), U(g, 0.05, 0.2))
    return lights, sky, ground


def plane_points(size):
    """World points (3, S, S) of the texel centres on the plane z = 0: x = u - 0.5 (right), y = 0.5 - v (up)."""
    u, v = uv_grid(size)
    return torch.stack([u - 0.5, 0.5 - v, torch.zeros_like(u)])


def lookup(maps, p):
    """Bilinear lookup of maps (C, S, S) at the world points p (3, ...) (their x, y), clamped at the border."""
    grid = torch.stack([p[0] * 2, -p[1] * 2], -1)[None]
    return F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def trace_relief(height, eye, steps=32):
    """Where the ray from `eye` through each texel of the top plane meets the height field (1, S, S) (<= 0): a
    linear search over `steps` depth levels, then the crossing interpolated between the last two. This is what
    makes the relief move between views (parallax) and hide itself (occlusion). -> surface points (3, S, S)."""
    q = plane_points(height.shape[-1])
    d = normalize(q - eye[:, None, None], dim=0)  # into the sample: d_z < 0
    depth = -float(height.min())
    if depth <= 0:
        return q
    at = lambda z: q + d * (z / d[2:3])  # noqa: E731  ray point at height z
    z_prev, gap_prev = torch.zeros_like(q[2:3]), -lookup(height, q)  # gap = ray height - surface height
    hit, found = torch.zeros_like(q[2:3]), gap_prev <= 0
    for k in range(1, steps + 1):
        z = torch.full_like(z_prev, -depth * k / steps)
        gap = z - lookup(height, at(z))
        cross = (gap <= 0) & ~found
        t = gap_prev / (gap_prev - gap).clamp_min(1e-12)
        hit = torch.where(cross, z_prev + t * (z - z_prev), hit)
        found, z_prev, gap_prev = found | cross, z, gap
    return at(hit)


def shadowed(height, p, l, steps=16):
    """Fraction of light blocked at the surface points p (3, S, S) towards the unit directions l (3, S, S): the
    largest height of the relief above the shadow ray, over a soft 1/8 of the relief's depth."""
    depth = -float(height.min())
    if depth <= 0:
        return torch.zeros_like(p[:1])
    block = torch.zeros_like(p[:1])
    for k in range(1, steps + 1):
        z = p[2:3] + (0 - p[2:3]) * k / steps  # rise to the top plane along l
        s = p + l * ((z - p[2:3]) / l[2:3].clamp_min(0.05))
        block = torch.maximum(block, ((lookup(height, s) - z) / (depth / 8)).clamp(0, 1))
    return block


def ggx_shade(look, p, eye, lights, sky, ground, height, shadow=None):
    """Cook-Torrance + Lambert at the surface points p (3, H, W) with the maps looked up there: look (8, H, W) =
    albedo, roughness, metallic, normal; light blocked by the relief (shadows) and a cast shadow map (or None).
    Returns linear radiance (3, H, W)."""
    albedo, rough, metal_, n = look[:3], look[3:4], look[4:5], look[5:8]
    v = normalize(eye[:, None, None] - p, dim=0)
    f0 = torch.lerp(torch.full_like(albedo, 0.04), albedo, metal_)  # F0 = lerp(0.04, albedo, metallic)
    a2 = (rough * rough) ** 2  # alpha = roughness^2
    k = (rough + 1) ** 2 / 8  # Schlick-GGX k for direct light
    n_v = (n * v).sum(0, keepdim=True).clamp_min(1e-4)
    g_v = n_v / (n_v * (1 - k) + k)
    out = torch.zeros_like(albedo)
    for pos, point, rgb in lights:
        if point:  # point light: 1 / r^2 falloff
            l = pos[:, None, None] - p
            dist2 = (l * l).sum(0, keepdim=True)
            l, radiance = l / dist2.sqrt(), rgb[:, None, None] / dist2
        else:
            l, radiance = pos[:, None, None].expand_as(p), rgb[:, None, None]
        h = normalize(l + v, dim=0)
        n_l = (n * l).sum(0, keepdim=True).clamp_min(0)
        n_h = (n * h).sum(0, keepdim=True).clamp_min(0)
        v_h = (v * h).sum(0, keepdim=True).clamp_min(0)
        d = a2 / (math.pi * (n_h * n_h * (a2 - 1) + 1) ** 2)  # GGX normal distribution
        g = g_v * n_l / (n_l * (1 - k) + k)  # Smith: G1(v) G1(l)
        f = f0 + (1 - f0) * (1 - v_h) ** 5  # Schlick Fresnel
        spec = d * g * f / (4 * n_v * n_l + 1e-4)
        diffuse = (1 - f) * (1 - metal_) * albedo / math.pi
        out = out + (diffuse + spec) * radiance * n_l * (1 - shadowed(height, p, l))
    if shadow is not None:
        out = out * (1 - shadow)

    # ambient: hemisphere sky (irradiance lerp(ground, sky, n.z/2+1/2)), occluded in the hollows of the relief;
    # specular from the reflected direction, blurred towards the average with roughness; Schlick at n.v
    def hemi(z):
        return torch.lerp(ground[:, None, None], sky[:, None, None], z * 0.5 + 0.5)

    refl_z = 2 * n_v * n[2:3] - v[2:3]
    env_spec = torch.lerp(hemi(refl_z), hemi(torch.zeros_like(refl_z)), rough)
    f_amb = f0 + (torch.maximum(1 - rough, f0) - f0) * (1 - n_v) ** 5
    size = height.shape[-1]
    r = max(1, size // 32)
    local = F.avg_pool2d(F.pad(height[None], (r, r, r, r), mode="replicate"), 2 * r + 1, 1)[0]
    occl = 1 - ((local - lookup(height, p)) / max(-float(height.min()), 1e-6)).clamp(0, 1) * 0.6
    return out + ((1 - metal_) * albedo * hemi(n[2:3]) + f_amb * env_spec) * occl


def aces(x):
    """Narkowicz's ACES filmic fit."""
    return (x * (2.51 * x + 0.03) / (x * (2.43 * x + 0.59) + 0.14)).clamp(0, 1)


def soft_shadow(g, size):
    """A soft-edged dark shape on the material (u, v space): a rotated ellipse or band, edge wobbled by noise."""
    u, v = uv_grid(size)
    c, s = math.cos(U(g, 0, math.pi)), math.sin(U(g, 0, math.pi))
    x, y = (u - U(g, 0.2, 0.8)) * c + (v - U(g, 0.2, 0.8)) * s, -(u - 0.5) * s + (v - 0.5) * c
    ry = U(g, 0.15, 0.5) if U(g, 0, 1) < 0.6 else 10.0  # ellipse, or an infinite band
    sd = torch.sqrt((x / U(g, 0.15, 0.5)) ** 2 + (y / ry) ** 2) - 1 + 0.3 * (fbm(g, size, 3) - 0.5)
    return U(g, 0.4, 0.85) * (1 - smoothstep(-U(g, 0.05, 0.3), 0.05, sd))


def camera_artifacts(g, rgb, smudge):
    """Dirty-camera effects on a linear (3, H, W) view: exposure shift, lens smudge haze, sensor noise."""
    size = rgb.shape[-1]
    rgb = rgb * 2 ** U(g, -1.0, 0.8)  # exposure shift
    if smudge:  # low-frequency veiling haze + blur
        m = smoothstep(0.45, 0.8, fbm(g, size, 3, 3)) * U(g, 0.3, 0.8)
        blur = F.avg_pool2d(F.pad(rgb[None], (4, 4, 4, 4), mode="replicate"), 9, 1)[0]
        rgb = torch.lerp(rgb, blur, m) + m * U(g, 0.05, 0.3) * rgb.mean()
    return rgb + torch.randn(rgb.shape, generator=g) * U(g, 0.005, 0.03)  # sensor noise (before tonemap)


def render_views(g, stack, height, dirty, views=3):
    """Three views of the material stack (8, S, S) with its height (1, S, S), each from its own camera position
    with its flash on (a point light at the camera), rectified to the sample's square -> uint8 (views, 3, S, S)
    sRGB renders."""
    lights, sky, ground = random_lights(g)
    flash = torch.full((3,), U(g, 2.0, 4.0))  # the camera's flash: most of the light
    # exposure and white balance calibrated on the sample's plane (as with a grey card in the shot): every source
    # is scaled per channel so that a flat white diffuse surface at the centre would shine `white`
    white = U(g, 0.7, 0.9)
    seen = sky + flash / math.pi + sum(rgb * max(float(d[2] / d.norm()), 0.0) / math.pi for d, _, rgb in lights)
    k = white / seen
    lights, sky, ground, flash = [(d, pt, rgb * k) for d, pt, rgb in lights], sky * k, ground * k, flash * k
    shadow = smudge = False
    if dirty:
        shadow, smudge = U(g, 0, 1) < 0.75, U(g, 0, 1) < 0.6
        if shadow:
            stack = torch.cat([stack, soft_shadow(g, stack.shape[-1])[None]])
    out = []
    for _ in range(views):
        eye = random_eye(g)
        p = trace_relief(height, eye)
        look = lookup(stack, p)
        look[5:8] = normalize(look[5:8], dim=0)
        lit = lights + [(eye, True, flash * float(eye @ eye))]  # a point light at the camera
        rgb = ggx_shade(look, p, eye, lit, sky, ground, height, look[8:9] if shadow else None)
        if dirty:
            rgb = camera_artifacts(g, rgb, smudge)
        out.append(quantize(srgb(aces(rgb))))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------- dataset
def render_sample(index, size, clean_fraction):
    """Material number `index`: -> (name, uint8 maps dict, uint8 views (3, 3, S, S), dirty?)."""
    g = torch.Generator().manual_seed(index)
    family = list(FAMILIES)[index % len(FAMILIES)]
    dirty = U(g, 0, 1) >= clean_fraction
    m = make_material(g, family, size)
    maps = encode_maps(m)
    views = render_views(g, decode_maps(maps), m["height"], dirty)
    return f"{family}_{index:04d}", maps, views, dirty


def write_json(obj, path):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)  # atomic: never a half-written metadata file


def write_sample(out, i, index, size, clean_fraction):
    """Render material `index` as sample i; its views go to input/clean or input/dirty (and the sample's folder
    in the other one is removed). -> (sample name, material name)."""
    name, maps, views, dirty = render_sample(index, size, clean_fraction)
    sample = f"sample_{i:04d}"
    keep, drop = ("dirty", "clean") if dirty else ("clean", "dirty")
    shutil.rmtree(out / "input" / drop / sample, ignore_errors=True)
    (out / "input" / keep / sample).mkdir(parents=True, exist_ok=True)
    for v in range(views.shape[0]):
        write_png(views[v], str(out / "input" / keep / sample / f"{v}.png"))
    (out / "output" / name).mkdir(parents=True, exist_ok=True)
    for k, img in maps.items():
        write_png(img.contiguous(), str(out / "output" / name / f"{k}.png"))
    return sample, name


def make_dataset(out_dir, count, size=256, seed=0, clean_fraction=0.75, progress=True):
    """Write `count` samples (sample i = material seed * 100000 + i) into OUT/input and OUT/output. Sample
    folders of an earlier run that this one does not write are removed, so the metadata lists exactly the
    sample folders on disk. -> the metadata dict {sample_XXXX: material_name}."""
    out = Path(out_dir)
    inp = out / "input"
    inp.mkdir(parents=True, exist_ok=True)
    meta = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 256^2 tensors gain little from threads, and one thread is immune to busy cores
    try:
        for i in progress_bar(range(count), unit="sample", desc=f"neuropbr synth {out.name}", disable=not progress):
            sample, name = write_sample(out, i, seed * 100_000 + i, size, clean_fraction)
            meta[sample] = name
            if (i + 1) % 10 == 0:
                write_json(meta, inp / "render_metadata.json")
    finally:
        torch.set_num_threads(threads)
    for sub in ("clean", "dirty"):  # stale samples of a bigger earlier run
        for d in (inp / sub).glob("sample_*") if (inp / sub).is_dir() else ():
            if re.fullmatch(r"sample_\d+", d.name) and d.name not in meta:
                shutil.rmtree(d)
    write_json(meta, inp / "render_metadata.json")
    return meta


def preview(out_dir, png, samples=6):
    """One PNG strip: per row, a sample's three views and its four maps as written."""
    out = Path(out_dir)
    meta = json.loads((out / "input" / "render_metadata.json").read_text())
    rows = []
    for sample, name in list(meta.items())[:samples]:
        folder = next(p for p in (out / "input" / s / sample for s in ("clean", "dirty")) if p.is_dir())
        rows.append(
            [load_png(folder / f"{v}.png") for v in range(3)]
            + [load_png(out / "output" / name / f"{k}.png") for k in MAPS]
        )
    grid(rows, ["view 0", "view 1", "view 2", *MAPS], path=png)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="dataset folder; input/ and output/ are created in it")
    p.add_argument("--count", type=int, default=16, help="number of samples (one material each)")
    p.add_argument("--size", type=int, default=256, help="side of the renders and of the maps, in pixels")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sample i renders material seed*100000+i: another seed gives held-out materials",
    )
    p.add_argument("--clean-fraction", type=float, default=0.75, help="probability that a sample is clean")
    p.add_argument("--preview", metavar="PNG", help="also write a strip of the first samples' views and maps")
    args = p.parse_args(argv)
    if args.count < 1 or args.size < 8 or args.seed < 0 or not 0 <= args.clean_fraction <= 1:
        p.error("--count >= 1, --size >= 8, --seed >= 0 and --clean-fraction in [0, 1]")
    t0 = time.time()
    meta = make_dataset(args.out, args.count, args.size, args.seed, args.clean_fraction)
    dt = time.time() - t0
    dirty = sum((Path(args.out) / "input" / "dirty" / s).is_dir() for s in meta)
    print(f"wrote {len(meta)} samples ({dirty} dirty) to {args.out}: {dt / len(meta):.3f} s/sample")
    if args.preview:
        preview(args.out, args.preview)
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()
