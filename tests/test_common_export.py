"""common/export.py: a tiny conv net exported to VGF, TOSA and XNNPACK `.pte`, each checked against eager.
Needs the venv's bin on PATH (model-converter, scenario_runner), as `bash run.sh smoke` sets it."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import export, runtimes


class TinyNet(nn.Module):
    """conv-relu-conv-sigmoid, then two outputs: a 2x pixel-shuffled image and a 4-channel map."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(12, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 12, 3, padding=1)

    def forward(self, x):  # (N, 12, h, w) -> (N, 3, 2h, 2w), (N, 4, h, w)
        features = torch.sigmoid(self.conv2(torch.relu(self.conv1(x))))
        return F.pixel_shuffle(features, 2), features[:, :4]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    out, net = tmp_path_factory.mktemp("export"), TinyNet()
    report = export.export_fp32(net, (torch.rand(1, 12, 16, 16),), out)
    return out, report, net


def test_export_writes_every_file_and_the_report(exported):
    out, report, _ = exported
    for name in ("model.vgf", "model.tosa", "model_vgf.pte", "model.pte", "export_report.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "export_report.json").read_text()) == report
    assert report["total_seconds"] > 0  # reported, never bounded: it depends on the machine's load


def test_whole_network_is_delegated(exported):
    _, report, _ = exported
    assert report["vgf"]["delegated_fraction"] == 1.0, report["vgf"]
    assert report["xnnpack"]["delegated_fraction"] == 1.0, report["xnnpack"]


def test_pte_and_tosa_match_eager(exported):
    _, report, _ = exported
    assert report["checks"]["pte_max_abs_error"] < 1e-4
    assert report["checks"]["tosa_max_abs_error"] < 1e-4
    assert report["checks"]["pte_ms"] > 0 and report["checks"]["eager_ms"] > 0


def test_vgf_matches_eager_on_the_emulation_layer(exported):
    reason = runtimes.vulkan_unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert exported[1]["checks"]["vgf_max_abs_error"] < 1e-4


def test_runners_take_inputs_in_graph_order_and_return_every_output(exported, tmp_path):
    out, _, net = exported
    x = torch.rand(1, 12, 16, 16) * 4 - 2  # not the example input: the files hold the function, not its output
    with torch.no_grad():
        expected = net(x)
    assert export.max_abs_error(runtimes.run_pte(out / "model.pte", [x]), expected) < 1e-4
    assert export.max_abs_error(runtimes.run_tosa(out / "model.tosa", [x]), expected) < 1e-4
    outputs = runtimes.run_vgf(out / "model.vgf", [x], tmp_path)
    assert outputs is None or export.max_abs_error(outputs, expected) < 1e-4


def test_missing_tools_give_an_actionable_error_or_a_skip(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MODEL_CONVERTER_PATH", raising=False)
    program = torch.export.export(TinyNet().eval(), (torch.rand(1, 12, 8, 8),))
    with pytest.raises(RuntimeError, match="MODEL_CONVERTER_PATH"):
        export.lower_vgf(program, tmp_path)
    assert "scenario_runner" in runtimes.vulkan_unavailable_reason()
    assert runtimes.run_vgf(tmp_path / "model.vgf", [torch.rand(1, 12, 8, 8)], tmp_path) is None
