"""Training cost formulas per op class, and the backward annotations of a traced model."""

from __future__ import annotations

import pytest
import torch

from dora_fx.cost_models.train_costs import (
    backward_costs,
    backward_kernels,
    loss_costs,
    optimizer_state_bytes,
    optimizer_step_costs,
    saved_operands,
)


def test_dense_backward_is_input_grad_plus_weight_grad() -> None:
    assert backward_costs("linear", "dense", 10.0, 4.0, 1.0, input_grad=True, weight_grad=True) == (20.0, 8.0)
    # the first layer: its input is data, only the weight gradient
    assert backward_costs("linear", "dense", 10.0, 4.0, 1.0, input_grad=False, weight_grad=True) == (10.0, 4.0)
    # an activation x activation matmul: both operands' gradients
    assert backward_costs("bmm", "dense", 10.0, 4.0, 1.0, input_grad=True, weight_grad=False, activation_operands=2) == (20.0, 8.0)
    assert backward_costs("linear", "dense", 10.0, 4.0, 1.0, input_grad=False, weight_grad=False) == (0, 0)


def test_other_classes_have_their_own_factors() -> None:
    kw = {"input_grad": True, "weight_grad": False}
    assert backward_costs("scaled_dot_product_attention", "dense", 10.0, 4.0, 1.0, **kw) == (25.0, 8.0)
    assert backward_costs("layer_norm", "other", 10.0, 4.0, 1.0, **kw) == (20.0, 6.0)
    assert backward_costs("softmax", "other", 10.0, 4.0, 1.0, **kw) == (10.0, 6.0)
    assert backward_costs("add", "other", 10.0, 4.0, 1.0, **kw) == (0, 0)
    assert backward_costs("mul", "other", 10.0, 4.0, 1.0, **kw) == (20.0, 8.0)
    assert backward_costs("view", "view", 0.0, 0.0, 1.0, **kw) == (0, 0)
    assert saved_operands("relu", "other", weight_grad=False, input_grad=True) == "output"
    assert saved_operands("add", "other", weight_grad=False, input_grad=True) == "none"


def test_optimizer_state() -> None:
    assert optimizer_state_bytes("adamw", 100.0) == 200.0
    assert optimizer_state_bytes("sgd-momentum", 100.0) == 100.0
    assert optimizer_state_bytes("sgd", 100.0) == 0.0
    with pytest.raises(ValueError, match="optimizer"):
        optimizer_state_bytes("lion", 1.0)


def test_backward_kernels_count_what_autograd_launches() -> None:
    both = {"input_grad": True, "weight_grad": True}
    # linear with a bias: the input's and the weight's GEMMs and the bias's reduction
    assert backward_kernels("linear", "dense", **both, bias=True) == 3
    assert backward_kernels("linear", "dense", input_grad=False, weight_grad=True) == 1
    # a product of two activations: one kernel per operand gradient
    assert backward_kernels("mul", "other", input_grad=True, weight_grad=False, activation_operands=2) == 2
    assert backward_kernels("add", "other", **both) == 0
    assert backward_kernels("view", "view", **both) == 0
    assert backward_kernels("split", "view", input_grad=True, weight_grad=False) == 1  # the cat
    assert backward_kernels("gelu", "other", input_grad=True, weight_grad=False) == 1
    assert backward_kernels("gelu", "other", input_grad=False, weight_grad=False) == 0


def test_optimizer_step_and_loss_are_memory_bound_formulas() -> None:
    assert optimizer_step_costs("sgd", 400.0, 2) == (200.0, 1200.0, 2)
    assert optimizer_step_costs("adamw", 400.0, 2) == (1200.0, 2800.0, 10)
    with pytest.raises(ValueError, match="optimizer"):
        optimizer_step_costs("lion", 1.0, 1)
    assert loss_costs(400.0) == (200.0, 2800.0, 5)
    assert loss_costs(0.0) == (0.0, 0.0, 0)


def test_a_value_used_twice_gets_its_gradient_sum_priced() -> None:
    from dora_fx.compiler.pipeline import front_end

    class Residual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return h + self.b(h)  # h feeds the add and b: two gradient parts

    def backward_bytes(model: torch.nn.Module) -> float:
        state = front_end(model.eval(), (torch.randn(4, 16),))
        assert state.chain is not None
        blocks, _ = state.chain.at(4)
        return sum(b.backward_bytes for b in blocks)

    class Chain(Residual):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) + 1.0

    # the residual's one extra add reads two [4, 16] gradients and writes their sum
    assert backward_bytes(Residual()) - backward_bytes(Chain()) == pytest.approx(3 * 4 * 16 * 4)


def test_mlp_blocks_carry_backward_costs() -> None:
    from dora_fx.compiler.pipeline import front_end

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    state = front_end(model.eval(), (torch.randn(4, 16),))
    assert state.chain is not None
    blocks, _ = state.chain.at(4)
    flops = sum(b.flops for b in blocks)
    dense = sum(b.dense for b in blocks)
    backward = sum(b.backward_flops for b in blocks)
    # first linear: weight gradient only (1x); second: input + weight (2x); relu ~1x
    first, second = 2 * 4 * 16 * 32, 2 * 4 * 32 * 8
    assert sum(b.backward_dense for b in blocks) == pytest.approx(first + 2 * second, rel=0.05)
    assert backward >= dense
    assert sum(b.grad_bytes for b in blocks) == 4 * (16 * 32 + 32 + 32 * 8 + 8)
    # saved: linear 1's input (its weight gradient needs it) and relu's output (relu and
    # linear 2 both keep it: once inside a block, once per block when they are split)
    acts = sum(b.activation_bytes for b in blocks)
    assert 4 * 4 * (16 + 32) <= acts <= 4 * 4 * (16 + 32 + 32)
    assert flops > 0
