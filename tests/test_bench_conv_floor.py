"""bench_conv_floor: the convolutions it times are the steps' own (the inventory of a
resnet20 -> resnet20 KD step), each piece computes the same numbers on both sides, and a
smoke run writes its table and JSON. Timings themselves are never asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from experiments import bench_conv_floor as floor  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("floor") / "floor.json"
    result = floor.main(["--smoke", "--out", str(out)])
    return result, json.loads(out.read_text())


def _calls(result, step: str, kind: str, where=lambda conv: True) -> int:
    return sum(p["calls_per_step"].get(step, 0) for p in result["pieces"]
               if p["kind"] == kind and where(p["conv"]))


def test_kd_step_inventory_is_resnet20_twice(smoke):
    """resnet20 has 19 convs (option-A shortcuts): the teacher's 19 forwards, the
    student's 19 forwards and 19 weight grads, and 18 input grads (none on the image)."""
    result, _ = smoke
    assert {k: _calls(result, "KD step", k) for k in floor.KINDS} == {
        "fwd": 38, "input_grad": 18, "weight_grad": 19}
    on_image = lambda conv: conv.split(" ")[0].endswith("x32x32x3")  # noqa: E731
    assert _calls(result, "KD step", "fwd", on_image) == 2
    assert _calls(result, "KD step", "input_grad", on_image) == 0
    assert any(p["conv"].endswith("s2") for p in result["pieces"])


# resnet20's multiply-adds per 32x32 image: the stem, then 3 stages of 6 convs (the
# 2nd and 3rd stages' first conv at stride 2 on half the channels)
STEM_MACS = 32 * 32 * 27 * 16
RESNET20_MACS = (STEM_MACS + 6 * 32 * 32 * 144 * 16
                 + 16 * 16 * 144 * 32 + 5 * 16 * 16 * 288 * 32
                 + 8 * 8 * 288 * 64 + 5 * 8 * 8 * 576 * 64)


def test_kd_step_flops_are_resnet20s_four_passes(smoke):
    """Teacher fwd, student fwd and weight grad: 3 x resnet20; input grads: all but the stem."""
    result, _ = smoke
    kd = next(r for r in result["rows"] if r["step"] == "KD step")
    batch = result["settings"]["kd_batch_size"]
    expected = 2 * batch * (4 * RESNET20_MACS - STEM_MACS) / 1e9
    assert kd["conv_gflop"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,out_hw", [
    (3, 1, ((1, 1), (1, 1)), 8), (3, 2, ((1, 1), (1, 1)), 4), (3, 1, ((0, 0), (0, 0)), 6),
    (2, 1, ((1, 0), (0, 1)), 8)])  # the last: a polyphase conv of layers.UpsampleConv3x3
def test_conv_flops_counts_output_positions(kernel, stride, padding, out_hw):
    spec = floor.ConvSpec((2, 8, 8, 4), (kernel, kernel, 4, 6), (stride, stride), padding)
    assert floor.conv_flops(spec) == 2 * 2 * out_hw * out_hw * kernel * kernel * 4 * 6


def test_synthesis_step_weight_grads_are_the_generators_only(smoke):
    """Teacher and student are frozen in synthesis: gradients reach the image (an input
    grad per forward) and only the generator's convs get weight grads: 4 polyphase 2x2
    convs for each of its two up x2 -> conv3x3 layers, and the output conv."""
    result, _ = smoke
    assert _calls(result, "synthesis step", "weight_grad") == 2 * 4 + 1
    assert _calls(result, "synthesis step", "fwd") == _calls(result, "synthesis step",
                                                             "input_grad") == 9 + 38
    assert _calls(result, "synthesis step", "fwd", lambda conv: " k2x2->" in conv) == 8


def test_smoke_run_writes_table_and_json(smoke, capsys):
    result, saved = smoke
    assert [r["step"] for r in saved["rows"]] == ["KD step", "synthesis step"]
    for r in saved["rows"]:
        assert r["xla_convs_s"] >= 0 and r["torch_step_s"] > 0 and r["jax_step_s"] > 0
        assert set(r["xla_convs_by_kind_s"]) == set(floor.KINDS)
        assert r["outside_convs_budget_for_1x_s"] == pytest.approx(r["torch_step_s"] - r["xla_convs_s"])
        assert r["jax_outside_convs_s"] == pytest.approx(r["jax_step_s"] - r["xla_convs_s"])
    assert len(saved["load_avg_start"]) == 3 and saved["smoke"] and "cpu_isa" in saved
    assert saved["matmul_reference"]["n"] == 64
    assert saved["matmul_reference"]["xla_gflops_per_s"] > 0


@pytest.mark.parametrize("kind", floor.KINDS)
@pytest.mark.parametrize("kernel,stride,padding", [
    (3, 1, ((1, 1), (1, 1))), (3, 2, ((1, 1), (1, 1))),
    (2, 1, ((1, 0), (0, 1)))])  # a polyphase conv of layers.UpsampleConv3x3
def test_pieces_compute_the_same_on_both_sides(kind, kernel, stride, padding):
    spec = floor.ConvSpec((2, 8, 8, 4), (kernel, kernel, 4, 6), (stride, stride), padding)
    ops = floor.operands(spec, np.random.default_rng(0))
    ours = np.asarray(floor.xla_piece(spec, kind, ops)())
    theirs = floor.torch_piece(spec, kind, ops)().numpy()
    to_ours = (0, 2, 3, 1) if kind != "weight_grad" else (2, 3, 1, 0)  # NCHW / OIHW back
    np.testing.assert_allclose(ours, theirs.transpose(to_ours), rtol=1e-4, atol=1e-5)
