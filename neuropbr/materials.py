"""The material families of neuropbr/synth.py's built-in data: procedural PBR maps with a real height field.

Eight families (FAMILIES), each drawing random parameters from a torch.Generator: bricks and tiles (mortar or grout
joints, unevenly laid units), planks (gaps, cupping, wear), rounded stones in grit, hammered, embossed and scratched
metal (with rust or paint patches) and woven fabric. make_material() returns linear albedo, roughness, metallic, a
height field (material widths, 0 at the top plane, negative below it) and the normal map, the height's exact slope.
The small random helpers (U, value noise, fbm, hsv, ...) are shared with the renderer in neuropbr/synth.py. A
library module, no CLI:

    m = make_material(torch.Generator().manual_seed(0), "bricks", 256)  # {"albedo": (3, 256, 256), ...}
"""

import math

import torch
import torch.nn.functional as F

METALS = ((0.95, 0.93, 0.88), (0.91, 0.92, 0.92), (1.0, 0.78, 0.34), (0.95, 0.64, 0.54), (0.56, 0.57, 0.58))


# ----------------------------------------------------------------------------------------------- random helpers
def U(g, lo, hi):
    """One uniform float in [lo, hi) from generator g."""
    return lo + (hi - lo) * torch.rand(1, generator=g).item()


def noise(g, size, cells_y, cells_x=None):
    """Smooth value noise in [0, 1]: a random (cells_y+1, cells_x+1) lattice, bicubically upsampled to size^2."""
    lattice = torch.rand(1, 1, int(cells_y) + 1, int(cells_x or cells_y) + 1, generator=g)
    return F.interpolate(lattice, size=(size, size), mode="bicubic", align_corners=True)[0, 0].clamp(0, 1)


def fbm(g, size, cells=4, octaves=4):
    """Fractal sum of value noise, octave k has 2^k times the cells and half the amplitude; ~[0, 1]."""
    total = sum(0.5 ** (k + 1) * noise(g, size, min(cells * 2**k, size)) for k in range(octaves))
    return total / (1 - 0.5**octaves)


def normalize(x, dim=0):
    """x / |x| along dim (cheaper than F.normalize's vector_norm on CPU)."""
    return x * torch.rsqrt((x * x).sum(dim, keepdim=True).clamp_min(1e-12))


def smoothstep(e0, e1, x):
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def hsv(h, s, v):
    """One HSV colour -> linear RGB tensor (3,)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


# -------------------------------------------------------------------------------------------------- materials
# Every family returns (albedo (3, S, S) linear, roughness (S, S), metallic (S, S), height (S, S)): the height is
# in material widths (the sample is 1 x 1), 0 at the sample's top plane and negative below it (mortar, gaps,
# dents), so the renderer can trace it and the normal map is its exact slope.
def uv_grid(size):
    """Texel-centre coordinates: u grows to the right, v grows DOWN the image, both in [0, 1)."""
    t = (torch.arange(size) + 0.5) / size
    v, u = torch.meshgrid(t, t, indexing="ij")
    return u, v


def cells(u, v, nx, ny, stagger):
    """A running-bond grid of nx x ny cells (odd rows shifted by `stagger` of a cell). -> cell id (row, col) and
    the distance of every texel to its cell's border and its offset from the cell's centre, in material widths."""
    row = torch.floor(v * ny)
    x = u * nx + stagger * (row % 2)
    col = torch.floor(x)
    fu, fv = x - col, v * ny - row
    edge = torch.minimum(torch.minimum(fu, 1 - fu) / nx, torch.minimum(fv, 1 - fv) / ny)
    return row.long(), col.long() % (nx + 1), edge, (fu - 0.5) / nx, (fv - 0.5) / ny


def jittered_points(g, u, v, k, jitter=0.8):
    """Worley noise on a k x k grid of jittered points: per texel the nearest and second-nearest distances
    (material widths), the nearest point's id and its offset (du, dv) from the texel, over the 3x3 cells around."""
    pts = (torch.rand(k + 2, k + 2, 2, generator=g) - 0.5) * jitter + 0.5  # one point per cell (+1 ring)
    cy, cx = torch.floor(v * k).long(), torch.floor(u * k).long()
    d1 = torch.full_like(u, 1e9)
    d2, ids, off = d1.clone(), torch.zeros_like(cx), torch.zeros(2, *u.shape)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny_, nx_ = cy + dy, cx + dx
            p = pts[ny_ + 1, nx_ + 1]  # (S, S, 2)
            ou, ov = (nx_ + p[..., 0]) / k - u, (ny_ + p[..., 1]) / k - v
            d = torch.sqrt(ou * ou + ov * ov)
            closer = d < d1
            d2 = torch.where(closer, d1, torch.minimum(d2, d))
            ids = torch.where(closer, (ny_ + 1) * (k + 2) + nx_ + 1, ids)
            off = torch.where(closer, torch.stack([ou, ov]), off)
            d1 = torch.where(closer, d, d1)
    return d1, d2, ids, off


def bevel(edge, gap, width):
    """0 in a joint of half-width `gap`, rising over `width` (rounded), 1 on the body."""
    t = ((edge - gap) / width).clamp(0, 1)
    return torch.sqrt(t * (2 - t))  # a quarter circle: rounded edge


def grid_material(g, size, bricks):
    """Bricks (2:1, staggered, rough, uneven faces, deep mortar joints) or tiles (square or staggered, glossy,
    slightly uneven laying, grout grooves with rounded edges)."""
    u, v = uv_grid(size)
    ny = int(U(g, 5, 11)) if bricks else int(U(g, 3, 8))
    nx = max(1, round(ny * (U(g, 0.4, 0.6) if bricks else 1.0)))
    stagger = 0.5 if bricks or U(g, 0, 1) < 0.3 else 0.0
    row, col, edge, du, dv = cells(u, v, nx, ny, stagger)
    gap = U(g, 0.004, 0.01) if bricks else U(g, 0.003, 0.007)
    body = bevel(edge, gap, U(g, 0.004, 0.01) if bricks else U(g, 0.01, 0.025))
    jitter = torch.rand(ny + 1, nx + 2, 6, generator=g)[row, col]  # per-cell random numbers (H, W, 6)
    grain = fbm(g, size, 8)
    base = (
        hsv(U(g, 0.0, 0.08), U(g, 0.4, 0.8), U(g, 0.25, 0.6))
        if bricks
        else hsv(U(g, 0, 1), U(g, 0, 0.7), U(g, 0.2, 0.9))
    )
    spread = 0.35 if bricks else 0.1
    cell_rgb = base[:, None, None] * (1 + spread * (jitter.permute(2, 0, 1)[:3] - 0.5))
    cell_rgb = cell_rgb * (0.8 + 0.4 * grain if bricks else 1.0)
    mortar = hsv(0.1, U(g, 0, 0.2), U(g, 0.3, 0.7))[:, None, None] * (0.85 + 0.3 * fbm(g, size, 16))
    albedo = torch.lerp(mortar, cell_rgb, body)
    rough_cell = (U(g, 0.65, 0.95) + 0.1 * (grain - 0.5)) if bricks else (U(g, 0.05, 0.3) + 0.05 * jitter[..., 3])
    rough = torch.lerp(torch.full_like(u, U(g, 0.85, 1.0)), rough_cell, body)
    depth = U(g, 0.008, 0.02) if bricks else U(g, 0.004, 0.01)
    tilt = (jitter[..., 4] - 0.5) * du + (jitter[..., 5] - 0.5) * dv  # each unit laid unevenly
    face = tilt * (0.2 if bricks else 0.15) + (U(g, 0.008, 0.016) if bricks else U(g, 0.006, 0.014)) * (
        fbm(g, size, 24, 3) - 0.5
    )
    height = (depth + face) * body - depth + 0.0015 * (fbm(g, size, 32, 2) - 0.5) * (1 - body)
    return albedo, rough, torch.zeros_like(u), height


def stones(g, size):
    """Cobbles or flagstones: Worley cells, each a rounded stone of its own colour and height, in a bed of dark,
    rough grit."""
    u, v = uv_grid(size)
    k = int(U(g, 4, 10))
    d1, d2, ids, _ = jittered_points(g, u, v, k)
    edge = (d2 - d1) / 2  # ~ distance to the cell border
    gap = U(g, 0.002, 0.008)
    dome = bevel(edge, gap, U(g, 0.25, 0.6) / k)  # rounded cobbles
    per = torch.rand((k + 2) ** 2, 4, generator=g)[ids]  # per-stone random numbers
    hue = U(g, 0.02, 0.14)
    rgb = torch.stack(
        [
            hsv(hue + 0.05 * (a - 0.5), U(g, 0.05, 0.4), 0.2 + 0.5 * b)
            for a, b in torch.rand(16, 2, generator=g).tolist()
        ]
    )  # a palette of 16 stone colours
    stone = rgb[(per[..., 0] * 16).long().clamp(max=15)].permute(2, 0, 1) * (0.8 + 0.4 * fbm(g, size, 16))
    grit = hsv(U(g, 0.05, 0.12), U(g, 0.1, 0.4), U(g, 0.08, 0.25))[:, None, None] * (0.7 + 0.6 * fbm(g, size, 48, 2))
    albedo = torch.lerp(grit, stone, dome)
    rough = torch.lerp(torch.full_like(u, 0.95), U(g, 0.4, 0.8) + 0.2 * (per[..., 1] - 0.5), dome)
    depth = U(g, 0.3, 0.8) / k * 0.4
    height = depth * (dome * (0.85 + 0.15 * per[..., 2]) - 1) + 0.003 * (fbm(g, size, 24, 3) - 0.5) * dome
    return albedo, rough, torch.zeros_like(u), height


def planks(g, size):
    """Wooden planks: rings of a distant trunk axis distorted by fbm, long grain, a plank colour each, ends
    staggered, every plank slightly cupped, deep gaps between them."""
    u, v = uv_grid(size)
    n = int(U(g, 3, 8))
    row = torch.floor(v * n)
    length = U(g, 0.5, 1.2)
    offs = torch.rand(n + 1, generator=g)[row.long()]
    x = u / length + offs
    col = torch.floor(x)
    fu, fv = x - col, v * n - row
    edge = torch.minimum(torch.minimum(fu, 1 - fu) * length, torch.minimum(fv, 1 - fv) / n)
    body = bevel(edge, U(g, 0.002, 0.005), U(g, 0.005, 0.012))
    per = torch.rand(n + 1, 64, 3, generator=g)[row.long(), col.long() % 64]
    warp = fbm(g, size, 3)
    r = torch.sqrt((v - U(g, -2, 2)) ** 2 + U(g, 0.5, 3) ** 2) + 0.08 * warp + per[..., 0]
    late = smoothstep(0.55, 0.95, torch.frac(r * U(g, 15, 40)))  # dark latewood band
    streaks = noise(g, size, size // 2, 6)  # long grain along u
    light = hsv(U(g, 0.05, 0.11), U(g, 0.45, 0.75), U(g, 0.35, 0.75))
    albedo = light[:, None, None] * (1 - 0.45 * late - 0.25 * (streaks - 0.5)) * (0.8 + 0.4 * per[..., 1])
    albedo = albedo * (0.35 + 0.65 * body)
    rough = (U(g, 0.35, 0.75) + 0.2 * late).clamp(0.05, 1) * body + (1 - body)
    depth = U(g, 0.008, 0.02)
    cup = U(g, 0.006, 0.012) * (1 - (2 * fv - 1) ** 2) + (per[..., 2] - 0.5) * 0.006
    wear = U(g, 0.01, 0.02) * (fbm(g, size, 16, 3) - 0.5)
    height = (depth + cup + wear - 0.002 * late + 0.0015 * streaks) * body - depth
    return albedo, rough, torch.zeros_like(u), height


def segments_distance(g, u, v, count, angle, spread, length):
    """Distance (in material widths) from every texel to the nearest of `count` random segments whose
    directions are angle +- spread: thin scratches. Processed in chunks to bound memory."""
    p0 = torch.rand(count, 2, generator=g)
    a = angle + spread * (torch.rand(count, generator=g) - 0.5)
    d = torch.stack([a.cos(), a.sin()], 1)
    ln = length * (0.3 + torch.rand(count, generator=g))
    best = torch.full_like(u, 1e9)
    for k in range(0, count, 32):
        px = u[None] - p0[k : k + 32, 0, None, None]
        py = v[None] - p0[k : k + 32, 1, None, None]
        dx, dy = d[k : k + 32, 0, None, None], d[k : k + 32, 1, None, None]
        t = (px * dx + py * dy).clamp(torch.zeros(1), ln[k : k + 32, None, None])  # projection onto the segment
        ex, ey = px - t * dx, py - t * dy
        best = torch.minimum(best, (ex * ex + ey * ey).amin(0))
    return best.sqrt()


def patches(g, size, amount):
    """Rust / paint patches: fbm standardised to mean 0, std 1 and cut at the normal quantile of 1 - amount
    (soft edge), so they cover about `amount` of the surface."""
    n = fbm(g, size, 4)
    if amount <= 0:
        return torch.zeros_like(n)
    z, t = (n - n.mean()) / n.std().clamp_min(1e-6), torch.special.ndtri(torch.tensor(1 - amount))
    return smoothstep(t - 0.15, t + 0.15, z)


def metal(g, size, kind):
    """Metal, metallic = 1 except rust or paint patches: `hammered` (overlapping round dents), `embossed` (tread
    plate: raised lozenges in alternating directions) or `scratched` (dents, thin random grooves)."""
    u, v = uv_grid(size)
    tint = torch.tensor(METALS[int(U(g, 0, len(METALS)))]) * U(g, 0.8, 1.0)
    if kind == "hammered":
        k = int(U(g, 6, 16))
        d1, _, ids, _ = jittered_points(g, u, v, k, jitter=1.0)
        radius = U(g, 0.7, 1.0) / k
        height = -U(g, 0.3, 0.5) * radius * (1 - (d1 / radius).clamp(max=1) ** 2)  # spherical-ish cups
        rough = U(g, 0.15, 0.45) + 0.1 * (torch.rand((k + 2) ** 2, generator=g)[ids] - 0.5)
    elif kind == "embossed":
        k = int(U(g, 5, 12))
        cy, cx = torch.floor(v * k), torch.floor(u * k)
        fu, fv = (u * k - cx) * 2 - 1, (v * k - cy) * 2 - 1
        flip = ((cx + cy) % 2) * 2 - 1  # alternate the diagonal
        a, b = (fu + flip * fv) / math.sqrt(2), (fu - flip * fv) / math.sqrt(2)
        r = torch.sqrt((a / 0.8) ** 2 + (b / U(g, 0.25, 0.4)) ** 2)  # a lozenge along one diagonal
        height = U(g, 0.15, 0.3) / k * (bevel(1 - r, 0.0, U(g, 0.4, 0.7)) - 1) + 0.006 * (fbm(g, size, 12, 3) - 0.5)
        rough = U(g, 0.2, 0.5) + 0.1 * (fbm(g, size, 8) - 0.5)
    else:
        angle = U(g, 0, math.pi)
        scratch_d = segments_distance(g, u, v, int(U(g, 30, 100)), angle, U(g, 0.2, 1.5), U(g, 0.1, 0.5))
        scratch = torch.exp(-((scratch_d / (U(g, 1.0, 2.0) / size)) ** 2))  # ~2-4 texel wide grooves
        rough = U(g, 0.25, 0.6) + 0.2 * (fbm(g, size, 8) - 0.5) - 0.2 * scratch
        height = U(g, 0.015, 0.03) * (fbm(g, size, 12, 3) - 1) - U(g, 0.002, 0.004) * scratch
    albedo = tint[:, None, None] * (0.9 + 0.1 * fbm(g, size, 8))
    spots = patches(g, size, U(g, 0.05, 0.4) if U(g, 0, 1) < 0.5 else 0.0)
    paint = U(g, 0, 1) < 0.5
    coat = hsv(U(g, 0, 1), U(g, 0.4, 0.9), U(g, 0.2, 0.8)) if paint else hsv(U(g, 0.02, 0.08), 0.8, U(g, 0.1, 0.3))
    coat = coat[:, None, None] * (0.7 + 0.6 * fbm(g, size, 16))
    albedo = torch.lerp(albedo, coat, spots)
    rough = torch.lerp(rough, torch.full_like(u, 0.5 if paint else 0.9), spots)
    return albedo, rough.clamp(0.05, 1), 1 - spots, height + 0.001 * spots


def fabric(g, size):
    """Plain or basket weave: round threads along u and v crossing over/under, fibre noise, one or two colours."""
    u, v = uv_grid(size)
    f = round(U(g, 12, 32) * size / 256) if size >= 128 else int(U(g, 8, 16))
    pair = 2 if U(g, 0, 1) < 0.3 else 1  # basket weave: threads in pairs
    fu, fv = torch.frac(u * f), torch.frac(v * f)
    over = ((torch.floor(u * f / pair) + torch.floor(v * f / pair)) % 2).bool()  # warp (along v) on top here
    warp = torch.sin(math.pi * fu).clamp_min(0) ** 0.5 * (0.6 + 0.4 * torch.sin(math.pi * fv))
    weft = torch.sin(math.pi * fv).clamp_min(0) ** 0.5 * (0.6 + 0.4 * torch.sin(math.pi * fu))
    bump = torch.where(over, warp, weft) + 0.1 * fbm(g, size, 32, 2)
    c1 = hsv(U(g, 0, 1), U(g, 0.2, 0.9), U(g, 0.15, 0.8))
    c2 = c1 if U(g, 0, 1) < 0.5 else hsv(U(g, 0, 1), U(g, 0.2, 0.9), U(g, 0.15, 0.8))
    albedo = torch.where(over, c1[:, None, None], c2[:, None, None]) * (0.7 + 0.3 * bump)
    rough = (U(g, 0.7, 0.95) + 0.1 * (1 - bump)).clamp(0.05, 1)
    height = U(g, 0.25, 0.45) / f * (bump - 1.1)
    return albedo, rough, torch.zeros_like(u), height


FAMILIES = {
    "bricks": lambda g, s: grid_material(g, s, True),
    "tiles": lambda g, s: grid_material(g, s, False),
    "planks": planks,
    "stones": stones,
    "hammered_metal": lambda g, s: metal(g, s, "hammered"),
    "embossed_metal": lambda g, s: metal(g, s, "embossed"),
    "scratched_metal": lambda g, s: metal(g, s, "scratched"),
    "fabric": fabric,
}


def height_to_normal(height):
    """Tangent-space normal of the surface z = height(u, v) (all in material widths): n = normalize(-dz/dx,
    -dz/dy, 1) with x = u (right) and y = -v (image up), central differences."""
    size = height.shape[-1]
    h = F.pad(height[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    dzdx = (h[1:-1, 2:] - h[1:-1, :-2]) * (size / 2)
    dzdy = -(h[2:, 1:-1] - h[:-2, 1:-1]) * (size / 2)
    return normalize(torch.stack([-dzdx, -dzdy, torch.ones_like(dzdx)]), dim=0)


def make_material(g, family, size):
    """-> dict of float maps: albedo (3, S, S) linear, roughness (1, S, S), metallic (1, S, S), normal (3, S, S),
    height (1, S, S) (material widths, <= 0)."""
    albedo, rough, metal_, height = FAMILIES[family](g, size)
    height = height - height.max()  # the top of the relief is the plane z = 0
    return {
        "albedo": albedo.clamp(0.01, 1),
        "roughness": rough.clamp(0.05, 1)[None],
        "metallic": metal_.clamp(0, 1)[None],
        "normal": height_to_normal(height),
        "height": height[None],
    }
