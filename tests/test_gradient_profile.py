"""Block profiles on synthetic measurements: which layers are compared, and where a profile breaks."""

from __future__ import annotations

from gradhealth.diagnostics.measurements import LayerMeasure, Measurements
from gradhealth.diagnostics.options import AnalysisOptions
from gradhealth.diagnostics.rules import exploding_gradient, vanishing_gradient
from gradhealth.diagnostics.rules.gradient_profile import depth_profiles, trunk_profiles


def _layer(name: str, out_grad: float, grad_norm: float = 1.0, type_name: str = "Linear") -> LayerMeasure:
    return LayerMeasure(
        name=name,
        type=type_name,
        depth=0,
        numel=64,
        grad_norm=grad_norm,
        weight_norm=8.0,
        update_norm=None,
        nonfinite=0,
        flushed=0,
        flushed_scaled=0,
        subnormal=0,
        nonzero_grads=64,
        missing_grads=0,
        fan_in=8,
        output_grad_rms=out_grad,
        output_rank=3,
    )


def _transformer(block_out: list[float], head: float = 1e-5) -> Measurements:
    """embed, blocks.{i}.(fc1, fc2), head: fc2's output gradient is the residual stream's."""
    layers = [_layer("embed", 1.0)]
    for i, value in enumerate(block_out):
        layers += [_layer(f"blocks.{i}.fc1", value * 50), _layer(f"blocks.{i}.fc2", value, grad_norm=value)]
    layers.append(_layer("head", head))
    return Measurements(options=AnalysisOptions(), batch_size=8, loss=1.0, layers=layers)


def test_block_profile_reads_each_blocks_output_and_leaves_out_embedding_and_head() -> None:
    profiles = trunk_profiles(_transformer([1.0, 0.9, 0.8, 0.7]))
    assert profiles is not None and len(profiles) == 1
    backprop = profiles[0][0]
    assert backprop.source == "block_output_grad_rms" and backprop.trunk == "blocks"
    assert backprop.values == [1.0, 0.9, 0.8, 0.7]
    assert backprop.names == [f"blocks.{i}" for i in range(4)]


def test_flat_trunk_is_quiet_although_embedding_vs_head_is_1e5() -> None:
    m = _transformer([1.0, 0.9, 0.8, 0.7], head=1e-5)
    assert not exploding_gradient.evaluate(m) and not vanishing_gradient.evaluate(m)


def test_one_block_that_multiplies_the_gradient_is_named() -> None:
    m = _transformer([1.0, 1.0, 1e-4, 1e-4, 1e-4])
    (finding,) = exploding_gradient.evaluate(m)
    assert finding.evidence["block"] == "blocks.2" and finding.layers[0] == "blocks.2"
    assert finding.evidence["block_gain"] == 1e4
    assert "breaks at block blocks.2" in finding.message


def test_spread_growth_blames_no_single_block() -> None:
    m = _transformer([2.0**-i for i in range(12)])  # x2 per block: 10^3.3 over the trunk
    (finding,) = exploding_gradient.evaluate(m)
    assert "block" not in finding.evidence and "No single block is to blame" in finding.message
    assert finding.evidence["trunk"] == "blocks"


def test_two_heads_in_a_module_list_are_no_trunk() -> None:
    layers = [_layer(f"net.{i}", 10.0**-i) for i in range(6)] + [_layer("heads.0", 1.0), _layer("heads.1", 1.0)]
    m = Measurements(options=AnalysisOptions(), batch_size=8, loss=1.0, layers=layers)
    assert [p.trunk for p in depth_profiles(m)[0]] == ["net", "net"]
    layers = [_layer(f"fc{i}", 10.0**-i) for i in range(6)] + [_layer("heads.0", 1.0), _layer("heads.1", 1.0)]
    m = Measurements(options=AnalysisOptions(), batch_size=8, loss=1.0, layers=layers)
    assert trunk_profiles(m) is None
    assert [p.trunk for p in depth_profiles(m)[0]] == [None, None]
