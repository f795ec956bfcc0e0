"""FLOP counts against published figures, and symbolic scaling with the batch."""

import sympy
import torch

import dora_fx
from dora_fx.compiler.capture import capture
from dora_fx.compiler.passes.annotate_costs import CostSymbols, annotate_costs
from dora_fx.ir.cost import COST_KEY
from dora_fx.models import build


def _flops(name, size="full"):
    model, inputs = build(name, size, batch=2)
    captured = capture(model, inputs)
    symbols = CostSymbols.from_names(captured.symbols)
    missing = annotate_costs(captured.gm, symbols)
    costs = [n.meta[COST_KEY] for n in captured.gm.graph.nodes]
    dense = sum((c.flops for c in costs if c.op_class == "dense"), sympy.Integer(0))
    return sympy.expand(dense), symbols, missing


def test_gpt2_small_flops_match_the_published_count():
    dense, symbols, missing = _flops("gpt2")
    assert missing == []
    # Kaplan et al. 2020: forward FLOPs per token = 2 N + 2 n_layer n_ctx d_model, N the
    # non-embedding parameters (12 * 12 * 768^2); plus the 768 x 50257 LM head, 128 tokens.
    layers, width, tokens, vocab = 12, 768, 128, 50257
    published = tokens * (2 * 12 * layers * width**2 + 2 * layers * tokens * width + 2 * width * vocab)
    per_sample = float(dense.subs(symbols.batch, 1))
    # ours also counts biases and both attention matmuls (Kaplan counts Q·K only)
    assert abs(per_sample / published - 1) < 0.02
    assert dense.free_symbols == {symbols.batch}
    assert dense.subs(symbols.batch, 8) == 8 * dense.subs(symbols.batch, 1)


def test_mobilenetv2_flops_match_the_published_count():
    dense, symbols, missing = _flops("mobilenetv2")
    assert missing == []
    # Sandler et al. 2018, Table 4: MobileNetV2 (1.0, 224) = 300M multiply-adds
    assert abs(float(dense.subs(symbols.batch, 1)) / (2 * 300e6) - 1) < 0.02
    assert dense.free_symbols == {symbols.batch}


def test_attention_gets_our_formula():
    model, inputs = build("transformer")
    captured = capture(model, inputs)
    symbols = CostSymbols.from_names(captured.symbols)
    annotate_costs(captured.gm, symbols)
    sdpa = next(
        n for n in captured.gm.graph.nodes if "scaled_dot_product_attention" in str(n.target)
    )
    # 4 heads of 8 dims, 12 tokens: heads * L * S * (2E + 2Ev + 5) per sample
    assert sdpa.meta[COST_KEY].flops == symbols.batch * 4 * 12 * 12 * (2 * 8 + 2 * 8 + 5)


class _Unknown(torch.nn.Module):
    def forward(self, x):
        return torch.special.bessel_j0(x) + 1


def test_ops_without_formula_are_listed_in_explain():
    compiled = dora_fx.compile(
        _Unknown().eval(), [dora_fx.Device("a", 1e9)], example_inputs=(torch.randn(2, 3),)
    )
    assert compiled.state.missing_formulas == ["special_bessel_j0"]
    assert "ops with no FLOP formula (counted as 0 FLOPs, bytes still counted): special_bessel_j0" in compiled.explain()


def test_transcendental_functions_cost_more_than_a_multiply():
    """tanh runs 3x an add's time here; pow is cheap for x**3 (multiplies), not for x**2.5."""
    from dora_fx.cost_models.op_costs import other_flops

    x = torch.randn(4, 8)
    assert other_flops("mul", (x, x), x) == 32
    assert other_flops("tanh", (x,), x) == 20 * 32
    assert other_flops("pow", (x, 3.0), x) == 2 * 32
    assert other_flops("pow", (x, 2.5), x) == 40 * 32
    assert other_flops("pow", (x, x), x) == 40 * 32
