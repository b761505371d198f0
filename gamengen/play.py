"""Play GameNGen: the diffusion model is the game engine. Keys in, the next frame is sampled, out on screen.

    pip install -r gamengen/requirements-play.txt                # pygame, for the window (not needed headless)
    python gamengen/play.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents
    python gamengen/play.py --model-path runs/gg/diffusion/ckpt/best --data runs/gg/latents \\
                            --decoder runs/gg/decoder/ckpt/best --steps 2 --scale 3  # fine-tuned decoder, faster
    python gamengen/play.py --model-path ... --data ... --headless --actions walk.txt --out play.gif
    python gamengen/play.py --model-path ... --data ... --headless --frames 60            # random actions
    python gamengen/export.py --model-path ... --data ... --out runs/gg/export && \\
    python gamengen/play.py --model-path ... --data ... --pte runs/gg/export --steps 4  # exported XNNPACK programs

Each frame: the action pressed now becomes the last of the N context actions, sample() runs --steps guided DDIM
steps of the denoiser (gamengen/model.py) from noise to the next latent, the autoencoder's decoder turns it into
a 160x128 frame, and the context slides by one (oldest latent and action out, the new latent in). The first N
context latents and actions come from a held-out episode of --data (its steps 0..N-1), so the game starts
from a real scene; R restarts from the next held-out episode. The model runs as fast as it can: no frame cap.

Keys (gamengen/doom.py's ACTIONS): W/up forward, S/down backward, A strafe_left, D strafe_right, left/Q
turn_left, right/E turn_right, space attack, nothing pressed = noop; with several keys down, the first of
attack, forward, backward, turn_left, turn_right, strafe_left, strafe_right wins. R reset, Esc quits.

Headless: --headless plays an --actions script (one action per line: a name from ACTIONS or its id, then an
optional repeat count, `#` starts a comment, e.g. `forward 10`) or --frames N random actions, writes --out
(a GIF: the decoded real context frames, then the generated ones) and prints one JSON line: frames, FPS
(warm-up frame excluded) and the mean milliseconds of the denoise and decode parts of a frame.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from common import ckpt
from common.images import save_gif
from common.runtime import fail
from gamengen.autoencoder import load_model as load_autoencoder
from gamengen.dataset import LatentSequences, recorded_path
from gamengen.doom import ACTIONS
from gamengen.model import sample
from gamengen.train import load_denoiser

SHIPPED = Path(__file__).resolve().parent / "weights"  # trained by this project: see gamengen/weights/README.md

# pygame key name -> action, in priority order (the first one held down wins)
KEYS = (
    ("SPACE", "attack"),
    ("w", "forward"),
    ("UP", "forward"),
    ("s", "backward"),
    ("DOWN", "backward"),
    ("LEFT", "turn_left"),
    ("q", "turn_left"),
    ("RIGHT", "turn_right"),
    ("e", "turn_right"),
    ("a", "strafe_left"),
    ("d", "strafe_right"),
)


class Engine:
    """The game state is N context latents (oldest first, in the diffusion model's scaled latent space) and N
    actions; context action t is what was pressed after seeing context frame t, so the last one leads to the
    next frame. step(action) samples that frame, decodes it and slides the context."""

    def __init__(self, model, decoder, scale, steps=None, guidance=None, ctx_noise=0.0, seed=0, device="cpu", pte=None):
        self.model, self.decoder, self.scale = model.to(device).eval(), decoder.to(device).eval(), float(scale)
        self.pte = pte  # (denoise step, decoder) .pte programs of gamengen/export.py, or None: eager PyTorch
        self.pte_step = (lambda *inputs: pte[0](list(inputs))[0]) if pte else None  # DenoiseStep's signature
        self.steps, self.guidance, self.ctx_noise, self.device = steps, guidance, ctx_noise, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.context = self.actions = None
        self.times = {"denoise": [], "decode": []}  # seconds, per step

    @property
    def n(self):
        return self.model.cfg.context

    def reset(self, context, actions):
        """context (N, C, H, W) scaled latents and actions (N,) int of a real window (e.g. a held-out episode's
        steps 0..N-1); the last action is overwritten by the next step's."""
        if context.shape[0] != self.n or actions.shape != (self.n,):
            raise ValueError(
                f"the model takes {self.n} context latents and actions, got {tuple(context.shape)} and "
                f"{tuple(actions.shape)}"
            )
        self.context = context.float().to(self.device).clone()
        self.actions = actions.long().to(self.device).clone()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def decode(self, latents):
        """(B, C, H, W) scaled latents -> uint8 (B, 3, 128, 160) frames."""
        with torch.inference_mode():
            if self.pte:  # the exported decoder takes one scaled latent and clamps
                x = torch.cat([self.pte[1]([z[None].cpu()])[0] for z in latents])
            else:
                x = self.decoder.decode(latents.to(self.device) / self.scale).clamp(0, 1)
            return (x * 255 + 0.5).to(torch.uint8).cpu()

    def step(self, action):
        """Play `action` (an id of ACTIONS) -> the next frame, uint8 (3, 128, 160)."""
        with torch.inference_mode():
            self.actions[-1] = int(action)
            t0 = time.perf_counter()
            z = sample(
                self.model,
                self.context[None],
                self.actions[None],
                steps=self.steps,
                guidance=self.guidance,
                ctx_noise=self.ctx_noise,
                generator=self.generator,
                step=self.pte_step,
            )
            self._sync()
            t1 = time.perf_counter()
            frame = self.decode(z)[0]
            t2 = time.perf_counter()
            self.context = torch.cat([self.context[1:], z])  # oldest latent out
            self.actions = torch.cat([self.actions[1:], self.actions.new_zeros(1)])  # placeholder, set next step
        self.times["denoise"].append(t1 - t0)
        self.times["decode"].append(t2 - t1)
        return frame

    def stats(self, skip=1):
        """FPS of the whole step and mean ms of its parts, over the steps after the first `skip` (warm-up)."""
        d, c = (self.times[k][skip:] or self.times[k] for k in ("denoise", "decode"))
        total = sum(d) + sum(c)
        return {
            "fps": round(len(d) / total, 2) if total else None,
            "denoise_ms": round(1e3 * sum(d) / max(len(d), 1), 2),
            "decode_ms": round(1e3 * sum(c) / max(len(c), 1), 2),
        }


class Episodes:
    """The held-out episodes of a latents folder long enough for N context frames, as starting windows."""

    def __init__(self, root, n):
        self.ds = LatentSequences(root, "heldout", n)
        first = {}  # episode -> dataset item whose target is at step N
        for i, p in enumerate(self.ds.targets):
            if self.ds.st_sorted[p] == n:
                first[int(self.ds.ep_sorted[p])] = i
        if not first:
            raise ValueError(f"{root}: no held-out episode has more than {n} steps (the model's context)")
        self.ids, self.item = sorted(first), first

    def window(self, episode):
        """-> (context (N, C, H, W) scaled latents, actions (N,)) of the episode's steps 0..N-1."""
        if episode not in self.item:
            raise ValueError(
                f"episode {episode} is not a held-out episode with more than {self.ds.context} steps "
                f"(have: {', '.join(map(str, self.ids[:20]))}{' ...' if len(self.ids) > 20 else ''})"
            )
        it = self.ds[self.item[episode]]
        return it["context"], it["actions"]

    def next(self, episode):
        return self.ids[(self.ids.index(episode) + 1) % len(self.ids)] if episode in self.ids else self.ids[0]


def parse_actions(text, source="script"):
    """An action script -> list of action ids. Lines: `name|id [count]`; `#` comments; blank lines skipped."""
    out = []
    for k, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        name, count = words[0], words[1] if len(words) > 1 else "1"
        if len(words) > 2 or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{source}:{k}: expected `ACTION [COUNT]`, got {line.strip()!r}")
        if name.isdigit() and int(name) < len(ACTIONS):
            a = int(name)
        elif name.lower() in ACTIONS:
            a = ACTIONS.index(name.lower())
        else:
            raise ValueError(
                f"{source}:{k}: unknown action {name!r} (one of {', '.join(ACTIONS)} or 0-{len(ACTIONS) - 1})"
            )
        out += [a] * int(count)
    if not out:
        raise ValueError(f"{source}: no actions")
    return out


def decoder_path(args):
    """--decoder, else the autoencoder checkpoint the latents were encoded with (their index's "ckpt")."""
    if args.decoder:
        return Path(args.decoder)
    index = json.loads((Path(args.data) / "index.json").read_text())
    if "ckpt" not in index:
        raise ValueError(f"{args.data}/index.json names no autoencoder checkpoint: give --decoder AE_CKPT")
    return recorded_path(args.data, index["ckpt"], "meta.json")


def load_exported(args, model, decoder, scale):
    """(denoise step, decoder) .pte programs of an export folder, checked to belong to this model and decoder."""
    from common.runtimes import load_pte

    root = Path(args.pte)
    try:
        summary = json.loads((root / "export_summary.json").read_text())
        step, dec = load_pte(root / "denoise_step" / "model.pte"), load_pte(root / "decoder" / "model.pte")
    except (OSError, ValueError, RuntimeError) as e:
        fail(
            f"--pte {root}: not a gamengen/export.py folder "
            f"({str(e).splitlines()[0] if str(e) else e.__class__.__name__})"
        )
    guidance = model.cfg.guidance if args.guidance is None else args.guidance
    if summary.get("context") != model.cfg.context or abs(summary.get("guidance", -1) - guidance) > 1e-9:
        fail(
            f"--pte {root}: exported for context {summary.get('context')} and guidance {summary.get('guidance')}, "
            f"this model plays with context {model.cfg.context} and guidance {guidance} (re-export)"
        )
    if abs(summary.get("latent_scale", -1) - scale) > 1e-6 * scale:
        fail(
            f"--pte {root}: its decoder was exported for latent scale {summary.get('latent_scale')}, --data has {scale}"
        )
    return step, dec


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model-path",
        default=str(SHIPPED / "denoiser"),
        help="diffusion checkpoint directory (train.py diffusion: OUT/ckpt/best; default: the shipped weights)",
    )
    p.add_argument(
        "--data",
        default=str(SHIPPED / "start"),
        help="latents folder (gamengen/train.py encode); its held-out "
        "episodes start the game (default: the shipped start windows, decoded by the shipped autoencoder)",
    )
    p.add_argument(
        "--decoder",
        help="autoencoder checkpoint to decode with (default: the one named in the latents' index; "
        "a decoder-finetune run's ckpt/best works too)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=2,
        help="DDIM steps per frame (default 2: on held-out Doom the cpu model's "
        "teacher-forced PSNR at 2 steps equals 4 steps' (22.23 vs 22.13 dB) at twice the frame rate; 4 is the paper's)",
    )
    p.add_argument(
        "--guidance", type=float, help="classifier-free guidance weight on the context (default: the model's, 1.5)"
    )
    p.add_argument(
        "--ctx-noise", type=float, default=0.0, help="noise level added to the context latents (paper's knob, 0..0.7)"
    )
    p.add_argument(
        "--episode",
        type=int,
        help="held-out episode id whose first N frames start the game (default: the first long enough)",
    )
    p.add_argument("--scale", type=int, default=4, help="window zoom of the 160x128 frame")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (and of random headless actions)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: all cores; on a machine busy with "
        "other work 1 can be several times faster: threads that wait for a core stall every op)",
    )
    p.add_argument(
        "--headless", action="store_true", help="no window: play --actions or --frames random actions, write --out"
    )
    p.add_argument(
        "--actions",
        help="action script for --headless: `ACTION [COUNT]` per line (names of gamengen/doom.py's ACTIONS or ids)",
    )
    p.add_argument(
        "--frames", type=int, help="frames to generate headless (default: the script's length, or 30 random actions)"
    )
    p.add_argument(
        "--out", help="GIF of the session (headless default: play.gif; in the window: written on quit when given)"
    )
    p.add_argument(
        "--pte",
        metavar="EXPORT_DIR",
        help="run the exported programs of gamengen/export.py --out EXPORT_DIR "
        "(denoise_step/model.pte, decoder/model.pte; XNNPACK) instead of eager PyTorch: on this 2-core CPU 2.5x faster",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where the model runs (auto = cuda if available)",
    )
    return p


def setup(args):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, args.threads or cores))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is available")
    if args.steps is not None and args.steps < 1:
        fail("--steps must be >= 1")
    if args.frames is not None and args.frames < 1:
        fail("--frames must be >= 1")
    try:
        script = parse_actions(Path(args.actions).read_text(), args.actions) if args.actions else None
        model, _ = load_denoiser(args.model_path)
        decoder, _ = load_autoencoder(decoder_path(args))
        episodes = Episodes(args.data, model.cfg.context)
        episode = args.episode if args.episode is not None else episodes.ids[0]
        window = episodes.window(episode)
    except ckpt.CheckpointError as e:
        fail(str(e))
    except KeyError as e:
        fail(f"{args.model_path} or {args.data}: not a GameNGen checkpoint / latents folder (no {e})")
    except (OSError, ValueError) as e:
        fail(str(e))
    pte = load_exported(args, model, decoder_path(args), episodes.ds.scale) if args.pte else None
    engine = Engine(
        model, decoder, episodes.ds.scale, args.steps, args.guidance, args.ctx_noise, args.seed, device, pte
    )
    engine.reset(*window)
    return engine, episodes, episode, script


def headless(args, engine, script):
    n = args.frames or (len(script) if script else 30)
    rng = random.Random(args.seed)
    actions = [script[i % len(script)] for i in range(n)] if script else [rng.randrange(len(ACTIONS)) for _ in range(n)]
    frames = list(engine.decode(engine.context))  # the real starting frames (decoded context)
    for a in actions:
        frames.append(engine.step(a))
    out = Path(args.out or "play.gif")
    save_gif([f.float() / 255 for f in frames], out, fps=20)
    print(
        json.dumps(
            {
                "frames": n,
                **engine.stats(),
                "context_frames": engine.n,
                "steps": engine.steps or engine.model.cfg.sample_steps,
                "threads": torch.get_num_threads(),
                "device": str(engine.device),
                "engine": "pte" if engine.pte else "eager",
                "out": str(out),
            }
        )
    )


def window(args, engine, episodes, episode):
    try:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame
    except ImportError:
        fail("the window needs pygame: pip install pygame (or -r gamengen/requirements-play.txt); or use --headless")
    pygame.display.init()  # (not pygame.init(): no audio device needed)
    pygame.font.init()
    h, w = 128, 160
    screen = pygame.display.set_mode((w * args.scale, h * args.scale))
    pygame.display.set_caption("GameNGen - WASD/arrows move, Q/E turn, space attack, R reset, Esc quit")
    font = pygame.font.Font(None, 14 + 4 * args.scale)
    keys = [(getattr(pygame, f"K_{k}"), ACTIONS.index(a)) for k, a in KEYS]
    recorded = list(engine.decode(engine.context)) if args.out else None
    frame, last, fps = engine.decode(engine.context)[-1], time.perf_counter(), 0.0
    running = True
    while running:
        for ev in pygame.event.get():
            if ev.type == pygame.QUIT or (ev.type == pygame.KEYDOWN and ev.key == pygame.K_ESCAPE):
                running = False
            elif ev.type == pygame.KEYDOWN and ev.key == pygame.K_r:
                episode = episodes.next(episode)
                engine.reset(*episodes.window(episode))
                frame = engine.decode(engine.context)[-1]
        if not running:
            break
        pressed = pygame.key.get_pressed()
        action = next((a for k, a in keys if pressed[k]), 0)
        frame = engine.step(action)
        if recorded is not None:
            recorded.append(frame)
        surf = pygame.surfarray.make_surface(frame.permute(2, 1, 0).numpy())
        screen.blit(pygame.transform.scale(surf, screen.get_size()), (0, 0))
        now = time.perf_counter()
        fps, last = 0.9 * fps + 0.1 / max(now - last, 1e-6) if fps else 1 / max(now - last, 1e-6), now
        d, c = engine.times["denoise"][-1] * 1e3, engine.times["decode"][-1] * 1e3
        text = f"{fps:5.1f} FPS  denoise {d:.0f} ms  decode {c:.0f} ms  {ACTIONS[action]}  ep {episode}"
        screen.blit(font.render(text, True, (255, 255, 0), (0, 0, 0)), (4, 4))
        pygame.display.flip()
    pygame.quit()
    if recorded is not None:
        save_gif([f.float() / 255 for f in recorded], args.out, fps=20)
    print(json.dumps({"frames": len(engine.times["denoise"]), **engine.stats(), "out": args.out}))


def main():
    args = build_parser().parse_args()
    if not args.headless and (args.actions or args.frames):
        fail("--actions and --frames are for --headless")
    engine, episodes, episode, script = setup(args)
    if args.headless:
        headless(args, engine, script)
    else:
        window(args, engine, episodes, episode)


if __name__ == "__main__":
    main()
