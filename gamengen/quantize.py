"""GameNGen int8: quantization-aware training (QAT) of the denoise step, and the int8 graphs exported from it.

    python gamengen/train.py diffusion --qat --finetune gamengen/weights/denoiser --data LATENTS --out runs/gg_qat
    python gamengen/export.py --model-path runs/gg_qat/ckpt/latest --export-type qat_int8 --out runs/gg/export_qat

The graph under int8 fake-quant (Arm's scheme, common/quant.py) is the one play.py calls per DDIM step and
export.py lowers: DenoiseStep(denoiser, guidance), the guidance weight baked in as at export. It is trained by
distillation: for a held-in window, a DDIM step t -> s of the played grid (t = 1, 1 - 1/S, ..., s = t - 1/S) and
x_t drawn as the forward process makes it from the true next latent, the int8 step's x_s is pulled towards what
the fp32 step (the --finetune weights, frozen: the "teacher") computes from the same inputs. So QAT learns what
int8 loses and nothing else; the fp32 model's own training (context noise, context dropout) stays as it was.

Shapes are static (common/qat.py): the graph of the training batch trains; batch 1 (export, play) and the
validation batches run graphs captured at their shapes with the trained state copied in. A QAT checkpoint holds
`model.*` (the denoiser with the QAT-trained weights, fp32: what the CPU .pte's own quantizer calibrates),
`qat.*` (the graph's state) and `teacher.*` (the frozen fp32 weights, so --resume needs nothing else);
meta["qat"] = {"guidance", "steps", "batch"}, meta["model_type"] = "qat_int8".
"""

import torch
import torch.nn.functional as F

from common.qat import Int8Model, QATModel
from gamengen.model import Denoiser, DenoiseStep, alpha_sigma


def step_inputs(cfg, n):
    """Zeros of the step's input shapes at batch n: x, t, s, context, actions (int64), bucket (int64)."""
    C, (H, W), N = cfg.latent_channels, cfg.latent_size, cfg.context
    z = torch.zeros
    return z(n, C, H, W), z(n), z(n), z(n, N, C, H, W), z(n, N, dtype=torch.long), z(n, dtype=torch.long)


class QATStep(QATModel):
    """DenoiseStep(model, guidance) under int8 fake-quant, trained at batch `batch`; forward(x, t, s, context,
    actions, bucket) -> x at s, the signature of DenoiseStep (so model.sample(..., step=qat) plays with it)."""

    def __init__(self, model, guidance, batch):
        super().__init__(model, lambda m: DenoiseStep(m, guidance), step_inputs(model.cfg, batch))
        self.cfg, self.guidance, self.batch = model.cfg, guidance, batch

    def forward(self, *inputs):  # one output: the graph returns the tensor itself (QATModel's tuple would split it)
        return self.graph_at(inputs)(*inputs)


class Int8Step(Int8Model):
    """A QATStep converted to real int8 (what the .vgf computes), with DenoiseStep's signature."""

    def __init__(self, qat):
        super().__init__(qat)
        self.cfg = qat.cfg

    def forward(self, *inputs):
        return self.graph_at(inputs)(*inputs)


def distill_loss(qat, teacher, batch, steps, generator):
    """MSE between the int8 step's x_s and the fp32 teacher step's, at a DDIM step t -> s = t - 1/steps of the
    played grid drawn per window, from x_t = a_t x0 + s_t eps (x0: the window's true next latent)."""
    x0, device = batch["target"], batch["target"].device
    n = x0.shape[0]
    t = 1 - torch.randint(steps, (n,), generator=generator).float().to(device) / steps
    s = (t - 1 / steps).clamp_min(0)
    a, sg = (z.view(-1, 1, 1, 1) for z in alpha_sigma(t))
    x_t = x0 * a + torch.randn(x0.shape, generator=generator).to(device) * sg
    inputs = (x_t, t, s, batch["context"], batch["actions"], torch.zeros(n, dtype=torch.long, device=device))
    with torch.no_grad():
        want = teacher(*inputs)
    return F.mse_loss(qat(*inputs), want)


def load_qat(weights, meta, model_config):
    """A QAT checkpoint's (weights, meta) -> its QATStep, with the trained state."""
    q = meta["qat"]
    return QATStep(Denoiser(model_config), q["guidance"], q["batch"]).load(weights)
