"""What ConViT's GPSA gates learned (vitfer.analysis.gates) and the report's section on them."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from vitfer.analysis import GATE_ATOL, gpsa_gates, init_gates, plot_gating, spearman, write_report
from vitfer.cli import main
from vitfer.models import create_model

from analysis_helpers import png_variance, tiny

SIGMOID_1 = 1.0 / (1.0 + math.exp(-1.0))  # timm's gating_param = 1 at init


def _convit(**overrides):
    """A freshly built convit_tiny (10 GPSA layers of 4 heads), 7 classes."""
    return create_model("convit_tiny", num_classes=7, **overrides).eval()


def _set_gates(model, gates: np.ndarray) -> None:
    """Set every GPSA head's gate sigmoid(gating_param) to ``gates`` (layers, heads)."""
    logits = torch.logit(torch.as_tensor(gates, dtype=torch.float64)).float()
    with torch.no_grad():
        for layer, row in zip(model.gpsa_layers, logits):
            layer.gating_param.copy_(row)


def test_fresh_convit_gates_are_the_init_and_not_moved():
    m = _convit()
    state = torch.random.get_rng_state()
    s = gpsa_gates(m)
    assert torch.equal(torch.random.get_rng_state(), state)  # building the fresh model drew no numbers of ours
    assert s.gates.shape == s.init.shape == (10, 4)
    np.testing.assert_array_equal(s.gates, s.init)
    np.testing.assert_allclose(s.init, SIGMOID_1, rtol=0, atol=1e-7)
    assert s.init_level == pytest.approx(0.7310586, abs=1e-7)
    assert s.max_change == 0.0 and not s.moved and not s.later_less_positional
    assert s.trend == "none" and s.slope == pytest.approx(0.0, abs=1e-12) and math.isnan(s.spearman)
    assert s.verdict.startswith("The gates have not moved from their initial 0.731")
    assert "less positional" in s.verdict and "neither" in s.verdict


def test_init_follows_the_models_init_code_path(monkeypatch):
    """The init level is read from a freshly built model, not assumed: change the init and it follows."""
    from vitfer.models.convit import ConViT

    original = ConViT.init_weights

    def init_weights(self):
        original(self)
        with torch.no_grad():
            for layer in self.gpsa_layers:
                layer.gating_param.fill_(2.0)

    monkeypatch.setattr(ConViT, "init_weights", init_weights)
    m = _convit()
    s = gpsa_gates(m)
    np.testing.assert_allclose(init_gates(m), 1 / (1 + math.exp(-2.0)), rtol=0, atol=1e-7)
    assert not s.moved and "initial 0.881" in s.verdict


def test_gates_falling_with_depth_say_later_layers_are_less_positional():
    m = _convit()
    means = np.linspace(0.9, 0.1, 10)  # layer means from positional to content
    spread = np.array([-0.04, -0.01, 0.01, 0.04])
    _set_gates(m, means[:, None] + spread[None, :])
    s = gpsa_gates(m)
    np.testing.assert_allclose(s.layer_mean, means, atol=1e-6)
    assert s.max_change == pytest.approx(abs(0.1 - 0.04 - SIGMOID_1), abs=1e-6)  # layer 10, head 0
    assert s.moved and s.trend == "decreasing" and s.later_less_positional and s.first_positional
    assert s.slope == pytest.approx(-0.8 / 9, abs=1e-6)  # a straight line: 0.8 over 9 layer steps
    assert s.spearman == pytest.approx(-1.0)
    assert "Later GPSA layers are less positional" in s.verdict and "as the ConViT paper found" in s.verdict
    assert "layer 1 0.90, layer 10 0.10" in s.verdict and "slope -0.089" in s.verdict
    assert "The first GPSA layer stays positional (mean gate 0.90" in s.verdict


def test_gates_rising_with_depth_say_the_opposite():
    m = _convit()
    means = np.linspace(0.2, 0.95, 10)
    _set_gates(m, np.repeat(means[:, None], 4, axis=1))
    s = gpsa_gates(m)
    assert s.moved and s.trend == "increasing" and not s.later_less_positional and not s.first_positional
    assert s.slope == pytest.approx(0.75 / 9, abs=1e-6) and s.spearman == pytest.approx(1.0)
    assert "Later GPSA layers are more positional" in s.verdict
    assert "the opposite of the ConViT paper's finding" in s.verdict
    assert "no longer positional (mean gate 0.20, below 0.5)" in s.verdict


def test_moved_gates_without_a_trend_say_the_finding_does_not_show():
    m = _convit()
    means = np.array([0.6, 0.9, 0.3, 0.8, 0.4, 0.7, 0.5, 0.9, 0.3, 0.6])  # up and down, same at both ends
    _set_gates(m, np.repeat(means[:, None], 4, axis=1))
    s = gpsa_gates(m)
    assert s.moved and s.trend == "none" and not s.later_less_positional
    assert "no consistent trend with depth" in s.verdict and "does not show here" in s.verdict
    assert s.spearman == pytest.approx(spearman(np.arange(10), means))
    assert s.peak_layer is None and "peaks" not in s.verdict  # layer 8 is as high as layer 2


def test_a_peak_in_a_middle_layer_is_named_when_there_is_no_trend():
    """The shape measured on CK+48 with the gates learning 30x faster (README): up to layer 6, down after it."""
    m = _convit()
    means = np.array([0.81, 0.82, 0.85, 0.90, 0.90, 0.91, 0.83, 0.82, 0.83, 0.84])
    _set_gates(m, np.repeat(means[:, None], 4, axis=1))
    s = gpsa_gates(m)
    assert s.moved and s.trend == "none" and s.peak_layer == 6 and not s.later_less_positional
    assert "no consistent trend with depth" in s.verdict
    assert ("It peaks in a middle layer instead: GPSA layer 6 at 0.91, against 0.86 on average in layers 1-5 and "
            "0.83 in layers 7-10: the layers after it are less positional than it is.") in s.verdict
    assert s.to_dict()["peak_layer"] == 6
    # a later layer as high as the peak, or a peak in the first or last layer: no peak named
    for other in (np.where(np.arange(10) == 8, 0.91, means), np.r_[0.95, means[1:]], np.r_[means[:-1], 0.95]):
        _set_gates(m, np.repeat(other[:, None], 4, axis=1))
        s = gpsa_gates(m)
        assert s.peak_layer is None and "peaks" not in s.verdict, other
    # one layer shy of the threshold above the next: none either
    _set_gates(m, np.repeat(np.where(np.arange(10) == 6, 0.91 - 0.9 * GATE_ATOL, means)[:, None], 4, axis=1))
    assert gpsa_gates(m).peak_layer is None


def test_moved_threshold_is_on_the_largest_head_change():
    m = _convit()
    for delta, moved in ((0.9 * GATE_ATOL, False), (1.1 * GATE_ATOL, True)):
        g = np.full((10, 4), SIGMOID_1)
        g[9, 2] += delta  # one head of the last layer
        _set_gates(m, g)
        s = gpsa_gates(m)
        assert s.max_change == pytest.approx(delta, abs=1e-6)
        assert s.moved is moved
        # the layer means differ by delta / 4 at most: below the trend threshold either way
        assert s.trend == "none"


def test_one_gpsa_layer_has_no_trend_and_other_models_are_refused():
    m = tiny("convit_tiny", local_up_to_layer=1)
    _set_gates(m, np.array([[0.9, 0.8, 0.95, 0.7]]))
    s = gpsa_gates(m)
    assert s.moved and s.trend == "n/a" and math.isnan(s.slope) and "single GPSA layer" in s.verdict
    with pytest.raises(ValueError, match="ConViT"):
        gpsa_gates(tiny("vit_tiny_patch16_224"))
    with pytest.raises(ValueError, match="no GPSA layers"):
        gpsa_gates(tiny("convit_tiny", local_up_to_layer=0))


def test_spearman_with_ties_and_constants():
    assert spearman(np.arange(4), np.array([1.0, 1.0, 2.0, 2.0])) == pytest.approx(4 / math.sqrt(20))
    assert spearman(np.arange(5), np.array([5.0, 3.0, 4.0, 1.0, 2.0])) == pytest.approx(1 - 6 * 36 / (5 * 24))
    assert math.isnan(spearman(np.arange(3), np.ones(3))) and math.isnan(spearman(np.ones(1), np.ones(1)))


def test_plot_gating_draws_the_init_level_dashed(tmp_path):
    g = np.linspace(0.9, 0.1, 10)[:, None] + np.array([-0.04, 0.0, 0.04])[None, :]
    fig = plot_gating(g, title="convit", init=SIGMOID_1)
    ax_map, ax_line = fig.axes[0], fig.axes[1]
    dashed = [ln for ln in ax_line.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and np.allclose(dashed[0].get_ydata(), SIGMOID_1)
    norm = ax_map.images[0].norm
    assert norm.vcenter == pytest.approx(SIGMOID_1) and float(norm(SIGMOID_1)) == pytest.approx(0.5)
    solid = [ln for ln in ax_line.get_lines() if ln.get_linestyle() == "-"]
    assert len(solid) == 4  # one line a head and the mean
    np.testing.assert_allclose(solid[-1].get_ydata(), g.mean(1))
    from vitfer.analysis import save_figure

    assert png_variance(save_figure(fig, tmp_path / "g.png")) > 100.0
    with pytest.raises(ValueError, match="init must be a gate"):
        plot_gating(g, init=1.5)


def test_report_of_a_trained_convit_has_the_gates_section(tiny_runs, tmp_path):
    import vitfer

    out = tmp_path / "r"
    res = write_report(tiny_runs[:1], out, samples=1, tsne=False)  # the model comes with the test set here
    md = res["markdown"].read_text()
    assert md.count("### GPSA gates: what ConViT learned") == 1
    convit_part = md[md.index("## convit_tiny"):]
    model = vitfer.load(tiny_runs[0] / "model.safetensors")
    g = model.gating_values().detach().double().numpy()  # (2 GPSA layers, 4 heads)
    rows = re.findall(r"^\| (\d) \| (.+) \| ([\d.]+) \| ([+-][\d.]+) \|$", convit_part, re.M)
    assert [int(r[0]) for r in rows] == [1, 2]
    for (_, heads, mean, change), layer in zip(rows, g):
        assert heads.split(" | ") == [f"{v:.2f}" for v in layer]
        assert float(mean) == pytest.approx(layer.mean(), abs=5e-4)
        assert float(change) == pytest.approx(layer.mean() - SIGMOID_1, abs=5e-4)
    # two epochs at lr 1e-4 barely move a gate (Adam's steps of ~1e-4 on gating_param)
    assert "**Verdict:** The gates have not moved from their initial 0.731" in convit_part
    data = json.loads((out / "convit_gpsa_gates.json").read_text())
    assert res["data"] == [out / "convit_gpsa_gates.json"]
    np.testing.assert_allclose(data["gates"], g, rtol=0, atol=1e-12)
    assert data["moved"] is False and data["max_change"] == pytest.approx(np.abs(g - SIGMOID_1).max(), abs=1e-7)
    fig = out / "convit_gpsa_gating.png"
    assert fig in res["figures"] and png_variance(fig) > 100.0 and fig.with_suffix(".pdf").is_file()
    assert "![GPSA gates](convit_gpsa_gating.png)" in convit_part


def test_report_gives_the_verdict_of_gates_set_by_hand_from_the_checkpoint_alone(tiny_runs, tmp_path, capsys):
    """A copy of the ConViT run whose gates fall with depth: the verdict says later layers are less
    positional, with --no-attention --no-tsne (the gates need only the checkpoint, not the data)."""
    import vitfer

    run = tmp_path / "falling"
    shutil.copytree(tiny_runs[0], run, ignore=shutil.ignore_patterns("report*", "r"))
    model = vitfer.load(run / "model.safetensors")
    _set_gates(model, np.array([[0.95, 0.9, 0.85, 0.9], [0.3, 0.2, 0.25, 0.15]]))
    vitfer.save(model, run / "model.safetensors", class_names=model.class_names)
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out), "--no-tsne", "--no-attention"]) == 0
    md = (out / "report.md").read_text()
    assert "Later GPSA layers are less positional" in md and "as the ConViT paper found" in md
    assert "| 1 | 0.95 | 0.90 | 0.85 | 0.90 | 0.900 | +0.169 |" in md
    assert "| 2 | 0.30 | 0.20 | 0.25 | 0.15 | 0.225 | -0.506 |" in md
    assert (out / "falling_gpsa_gating.png").is_file() and "data: " in capsys.readouterr().out
    assert json.loads((out / "falling_gpsa_gates.json").read_text())["later_less_positional"] is True



def test_has_gpsa_gates_reads_the_checkpoint_header(tiny_runs, tmp_path):
    from vitfer.analysis import has_gpsa_gates

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint" * 4)
    assert has_gpsa_gates(tiny_runs[0] / "model.safetensors") is True  # convit_tiny
    assert has_gpsa_gates(tiny_runs[1] / "model.safetensors") is False  # resnet18d
    assert has_gpsa_gates(bad) is False and has_gpsa_gates(tmp_path / "missing.safetensors") is False
