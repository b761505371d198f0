"""nss/loss.py: Arm's NSS v1 loss. Expected numbers are worked out by hand in the comments, not taken from a run."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nss.loss import LPIPS, LossConfig, convert_lpips, load_lpips, loss_v1, time_weights  # noqa: E402


def make_outs(y, params, disocc=None, reset=None, pred=None, filt=None):
    n, t = y.shape[:2]
    h, w = params.shape[-2:]
    return {
        "output": y.clone() if pred is None else pred,
        "out_filtered": y.clone() if filt is None else filt,
        "temporal_params": params,
        "disocclusion_mask": torch.zeros(n, t, 1, h, w) if disocc is None else disocc,
        "reset": torch.zeros(n, t, dtype=torch.bool) if reset is None else reset,
    }


def perfect_params(n, t, h, w):
    p = torch.full((n, t, 4, h, w), 0.5)
    p[:, :, 0] = 1.0  # theta at its target 1
    p[:, :, 1] = 0.0  # alpha at its target 0
    return p


def only(**weights):
    """A config with every weighted term off except those given."""
    off = dict(
        filtered_weight=0,
        first_frame_weight=0,
        theta_reg_weight=0,
        alpha_reg_weight=0,
        temporal_reg_weight=0,
        change_pred_weight=0,
    )
    off.update(weights)
    return LossConfig(**off)


def test_time_weights_hand_values():
    # w_t = 0.9 + (0.1 - 0.9) * (1 + cos(pi t / 3)) / 2, t = 1, 2, 3: cos = 0.5, -0.5, -1
    #     = 0.9 - 0.8 * 0.75, 0.9 - 0.8 * 0.25, 0.9 - 0 = 0.3, 0.7, 0.9
    assert torch.allclose(time_weights(4, LossConfig()), torch.tensor([0.3, 0.7, 0.9]), atol=1e-6)
    assert torch.allclose(time_weights(3, LossConfig()), torch.tensor([0.5, 0.9]), atol=1e-6)  # cos(pi/2) = 0
    assert torch.allclose(time_weights(2, LossConfig()), torch.tensor([0.9]), atol=1e-6)


def test_defaults_match_arm_template():
    cfg = LossConfig(
        **{"temporal_reg_weight": 0.7, "alpha_reg_weight": 0.0001, "temporal_reg_channels": 1, "min_weight": 0.1}
    )  # nss_v1_template.json loss_args, verbatim keys
    assert cfg == LossConfig()
    assert (cfg.alpha, cfg.lpips_weight, cfg.filtered_weight, cfg.max_weight) == (4.0, 0.157, 0.1, 0.9)
    assert (cfg.theta_reg_weight, cfg.first_frame_weight, cfg.change_pred_weight) == (0.02, 0.5, 0.7)
    assert (cfg.change_pred_sigma, cfg.change_pred_eps, cfg.flicker_threshold) == (0.06, 1e-3, 0.02)


def test_perfect_prediction_is_zero():
    torch.manual_seed(0)
    n, t, H, W = 2, 4, 8, 8
    y = torch.rand(n, t, 3, H, W)
    motion = torch.randn(n, t, 2, H, W) * 2
    # Everything but the change-prediction term is exactly 0: d_pred == d_true, L1 = 0, theta = 1, alpha = 0,
    # and a constant theta can't flip sign (1 - warp(1) >= 0 in both differences).
    total, terms = loss_v1(
        make_outs(y, perfect_params(n, t, 4, 4)),
        y,
        motion,
        only(
            filtered_weight=0.1,
            first_frame_weight=0.5,
            theta_reg_weight=0.02,
            alpha_reg_weight=1e-4,
            temporal_reg_weight=0.7,
        ),
    )
    assert total.item() == 0.0
    # With the change term on, a static scene leaves only its charbonnier floor: 0.7 * sqrt(0 + eps^2) = 7e-4.
    y = torch.rand(n, 1, 3, H, W).expand(n, t, 3, H, W).contiguous()
    total, terms = loss_v1(make_outs(y, perfect_params(n, t, 4, 4)), y, torch.zeros(n, t, 2, H, W), LossConfig())
    assert terms["change_pred"].item() == pytest.approx(1e-3, rel=1e-5)
    assert total.item() == pytest.approx(0.7e-3, rel=1e-5)


def test_temporal_term_on_image_shift():
    # One row of 4 px. The scene moves right by 1 px (motion (y, x) = (0, +1)); new content 0.5 enters at x=0:
    #   y0 = [.1 .2 .3 .4], y1 = [.5 .1 .2 .3]; the prediction freezes: p0 = p1 = y0.
    # Backward warp samples frame 0 at x - 1: warp(y0) = warp(p0) = [0 .1 .2 .3] (x=0 falls outside -> 0).
    #   d_true = y1 - warp(y0) = [.5 0 0 0],  d_pred = p1 - warp(p0) = [.1 .1 .1 .1],  |diff| = [.4 .1 .1 .1]
    #   temporal = mean(exp(4 |diff|) - 1) = (e^1.6 + 3 e^0.4 - 4) / 4
    row0, row1 = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.5, 0.1, 0.2, 0.3])
    y = torch.stack([row0, row1]).view(1, 2, 1, 1, 4).expand(1, 2, 3, 1, 4).contiguous()
    pred = torch.stack([row0, row0]).view(1, 2, 1, 1, 4).expand(1, 2, 3, 1, 4).contiguous()
    motion = torch.zeros(1, 2, 2, 1, 4)
    motion[:, :, 1] = 1.0
    _, terms = loss_v1(make_outs(y, perfect_params(1, 2, 1, 2), pred=pred), y, motion, only())
    want = (math.exp(1.6) + 3 * math.exp(0.4) - 4) / 4  # = 1.35713
    assert terms["temporal"].item() == pytest.approx(want, rel=1e-5)
    # T = 2: w_1 = 0.9 on the spatial side; L1(p1, y1) = (.4 + .1 + .1 + .1) / 4 = .175
    assert terms["spatial_temporal"].item() == pytest.approx(0.1 * want + 0.9 * 0.175, rel=1e-5)


def flicker_of(theta, motion=None, hr=(1, 1), **cfg):
    """Flicker term for ch-0 values theta (T, h, w) of one sample, zero disocclusion, no reset."""
    theta = torch.as_tensor(theta, dtype=torch.float32)
    t, h, w = theta.shape
    params = perfect_params(1, t, h, w)
    params[0, :, 0] = theta
    y = torch.zeros(1, t, 3, *hr)
    motion = torch.zeros(1, t, 2, *hr) if motion is None else motion
    _, terms = loss_v1(make_outs(y, params), y, motion, only(temporal_reg_weight=0.7, **cfg))
    return terms["flicker"].item()


def test_flicker_penalty_hand_values():
    # 0.2 / 0.8 / 0.2 on frames 1-3: d1 = 0.8 - 0.2 = 0.6, d2 = 0.2 - 0.8 = -0.6: opposite signs, both > 0.02
    #   -> min(|d1|, |d2|)^2 = 0.36 over the one valid centre (Arm always masks off the triple (0, 1, 2)).
    assert flicker_of([[[0.5]], [[0.2]], [[0.8]], [[0.2]]]) == pytest.approx(0.36, rel=1e-6)
    # hence over exactly three frames (0, 1, 2) it is 0 in Arm's loss
    assert flicker_of([[[0.2]], [[0.8]], [[0.2]]]) == 0.0
    assert flicker_of([[[0.1]], [[0.2]], [[0.3]], [[0.4]]]) == 0.0  # monotone ramp: no flip
    assert flicker_of([[[0.2]], [[0.21]], [[0.2]], [[0.21]]]) == 0.0  # flips below the 0.02 threshold


def test_flicker_follows_motion():
    # A bright param pixel (0.8 on 0.2) moving right one param px per frame: t=1 at x=1, t=2 at x=2, t=3 at x=3.
    theta = torch.full((4, 1, 4), 0.2)
    for k in range(1, 4):
        theta[k, 0, k] = 0.8
    # Without motion compensation x=2 reads 0.2 -> 0.8 -> 0.2 (a flip of 0.6): 0.36 over 4 valid px = 0.09.
    assert flicker_of(theta, hr=(2, 8)) == pytest.approx(0.09, rel=1e-6)
    # With HR motion of 2 HR px = 1 param px (HR 2x8 -> params 1x4) the warped differences are 0 except the
    # out-of-view column x=0 (0.2 - 0 in both: same sign): no flicker.
    motion = torch.zeros(1, 4, 2, 2, 8)
    motion[:, :, 1] = 2.0
    assert flicker_of(theta, motion, hr=(2, 8)) == 0.0


def change_pred_of(pred, y):
    """Change-prediction term for per-frame constant images (static scene, zero motion)."""
    t = len(pred)
    mk = lambda v: torch.tensor(v).view(1, t, 1, 1, 1).expand(1, t, 3, 2, 2).contiguous()  # noqa: E731
    yy = mk(y)
    _, terms = loss_v1(
        make_outs(yy, perfect_params(1, t, 1, 1), pred=mk(pred)),
        yy,
        torch.zeros(1, t, 2, 2, 2),
        only(change_pred_weight=0.7),
    )
    return terms["change_pred"].item()


def test_change_prediction_hand_values():
    eps = 1e-3
    # Static GT 0.5, prediction 0.5 -> 0.6 -> 0.6. Pairs (frame, earlier prediction):
    #   (1, p0): r = 0.1, |y1 - p0| = 0 -> w = 1: sqrt(0.01 + eps^2)
    #   (2, p0): r = 0.1, w = 1: sqrt(0.01 + eps^2);  (2, p1): r = 0 -> eps
    want = (2 * math.sqrt(0.01 + eps**2) + eps) / 3
    assert change_pred_of([0.5, 0.6, 0.6], [0.5, 0.5, 0.5]) == pytest.approx(want, rel=1e-5)
    # The GT changes the same way: |y - p0| = 0.1 -> w = exp(-0.1 / 0.06) lets the prediction change cheaply.
    w = math.exp(-0.1 / 0.06)
    want = (2 * math.sqrt((w * 0.1) ** 2 + eps**2) + eps) / 3
    assert change_pred_of([0.5, 0.6, 0.6], [0.5, 0.6, 0.6]) == pytest.approx(want, rel=1e-5)


def regs(disocc=None, reset=None):
    # 2 params px, T = 3. Frame 0 is never used (theta 0 there); frame 1: theta 0.5, alpha 0.3 on both px;
    # frame 2: theta 1, alpha 0 (perfect).
    params = perfect_params(1, 3, 1, 2)
    params[0, 0, 0] = 0.0
    params[0, 1, 0], params[0, 1, 1] = 0.5, 0.3
    y = torch.zeros(1, 3, 3, 2, 4)
    outs = make_outs(y, params, disocc=disocc, reset=reset)
    _, terms = loss_v1(outs, y, torch.zeros(1, 3, 2, 2, 4), only(theta_reg_weight=0.02, alpha_reg_weight=1e-4))
    return terms["theta_reg"].item(), terms["alpha_reg"].item()


def test_masks_exclude_disoccluded_and_reset_frames():
    # all 4 (frame, px) valid: theta (2 * 0.25 + 2 * 0) / 4 = 0.125, alpha (2 * 0.09) / 4 = 0.045
    assert regs() == pytest.approx((0.125, 0.045), rel=1e-5)
    # frame 1 reset -> only frame 2 counts -> 0
    assert regs(reset=torch.tensor([[False, True, False]])) == (0.0, 0.0)
    # frame 1 disoccluded everywhere -> 0
    d = torch.zeros(1, 3, 1, 1, 2)
    d[0, 1] = 1.0
    assert regs(disocc=d) == (0.0, 0.0)
    # one px of frame 1 disoccluded (0.01 is not < 0.01), the other just under the threshold: 1 of frame 1's px
    # counts -> theta 0.25 / 3, alpha 0.09 / 3
    d[0, 1, 0, 0] = torch.tensor([0.01, 0.005])
    assert regs(disocc=d) == pytest.approx((0.25 / 3, 0.09 / 3), rel=1e-5)
    # a mask at twice the params' resolution is resized (nearest): left half disoccluded = px 0
    d2 = torch.zeros(1, 3, 1, 2, 4)
    d2[0, 1, 0, :, :2] = 1.0
    assert regs(disocc=d2) == pytest.approx((0.25 / 3, 0.09 / 3), rel=1e-5)


def test_gradients_reach_every_output():
    torch.manual_seed(1)
    n, t, H, W = 1, 4, 8, 8
    y = torch.rand(n, t, 3, H, W)
    pred = (y + 0.1 * torch.randn_like(y)).requires_grad_()
    filt = (y + 0.1 * torch.randn_like(y)).requires_grad_()
    params = torch.rand(n, t, 4, 4, 4, requires_grad=True)
    total, terms = loss_v1(make_outs(y, params, pred=pred, filt=filt), y, torch.randn(n, t, 2, H, W), LossConfig())
    total.backward()
    assert all(not v.requires_grad for v in terms.values())
    for x in (pred, filt, params):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert params.grad[:, 1:, 0].abs().sum() > 0 and params.grad[:, 1:, 1].abs().sum() > 0


def test_bad_shapes_raise():
    y = torch.zeros(1, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="T>1"):
        loss_v1(make_outs(y, perfect_params(1, 1, 2, 2)), y, torch.zeros(1, 1, 2, 4, 4))
    y = torch.zeros(1, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="motion"):
        loss_v1(make_outs(y, perfect_params(1, 2, 2, 2)), y, torch.zeros(1, 2, 2, 2, 2))


# ----------------------------------------------------------------------------------------------------------
# LPIPS


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    net = LPIPS()
    for lin in net.lins:  # trained LPIPS lin weights are non-negative
        lin.weight.data.abs_()
    path = tmp_path_factory.mktemp("lpips") / "lpips_alex.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path, net


def test_lpips_loads_and_measures(lpips_file):
    path, ref = lpips_file
    net = load_lpips(path)
    a = torch.rand(2, 3, 64, 64)
    b = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert torch.equal(net(a, a), torch.zeros(2))
    d = net(a, b)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, ref(a, b))
    # and in the loss: the LPIPS terms turn on and pass gradient to the prediction
    y = torch.rand(1, 2, 3, 32, 32)
    pred = (y + 0.1 * torch.randn_like(y)).clamp(0, 1).requires_grad_()
    total, terms = loss_v1(
        make_outs(y, perfect_params(1, 2, 16, 16), pred=pred), y, torch.zeros(1, 2, 2, 32, 32), only(), lpips=net
    )
    assert terms["lpips"] > 0
    total.backward()
    assert pred.grad.abs().sum() > 0


def test_lpips_package_key_names_and_convert(lpips_file, tmp_path):
    path, ref = lpips_file
    sd = ref.state_dict()
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}  # alexnet features index -> lpips' net.sliceK
    lin = {f"lin{i}.model.1.weight": sd[f"lins.{i}.weight"] for i in range(5)}
    alex = {k: v for k, v in sd.items() if k.startswith("features.")}
    alex["classifier.1.weight"] = torch.zeros(3, 3)  # a full torchvision checkpoint: dropped
    lpips_pkg = dict(
        lin,
        **{
            f"net.slice{slice_of[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
            for k, v in alex.items()
            if k.startswith("features.")
        },
    )
    lpips_pkg.update({f"lins.{i}.model.1.weight": sd[f"lins.{i}.weight"] for i in range(5)})  # its ModuleList alias
    lpips_pkg["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(lpips_pkg, tmp_path / "lpips_pkg.pth")
    torch.save(lin, tmp_path / "alex.pth")
    torch.save(alex, tmp_path / "alexnet.pth")
    a, b = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    assert torch.allclose(load_lpips(tmp_path / "lpips_pkg.pth")(a, b), ref(a, b))
    out = convert_lpips(tmp_path / "alex.pth", tmp_path / "alexnet.pth", tmp_path / "merged.safetensors")
    assert torch.allclose(load_lpips(out)(a, b), ref(a, b))


def test_lpips_bad_files_give_clear_errors(lpips_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_lpips(tmp_path / "nope.pth")
    for name in ("junk.pth", "junk.safetensors"):
        (tmp_path / name).write_bytes(b"not a checkpoint at all")
        with pytest.raises(ValueError, match="cannot read LPIPS weights"):
            load_lpips(tmp_path / name)
    sd = lpips_file[1].state_dict()
    del sd["lins.4.weight"]
    sd["features.0.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing \['lins.4.weight'\].*wrong shapes \['features.0.weight"):
        load_lpips(tmp_path / "partial.pth")
