"""Training costs of one node: backward FLOPs and bytes, what autograd saves, the optimizer's state.

Pure formulas over the forward figures ``op_costs`` gives (numbers or sympy expressions alike).
``input_grad``: some activation operand of the node needs a gradient (False for the first layer,
whose input is data); ``weight_grad``: the node reads a trainable parameter. A node with
neither has no backward at all (no autograd node is recorded for it).

Backward per op class (``F``, ``Q``: the forward FLOPs and bytes moved):

* **matmul / linear / conv** (``dense``): the gradient wrt the input is one GEMM (or transposed
  convolution) of the forward's size, the gradient wrt the weight another, so
  ``F_b = F (input_grad + weight_grad)`` and ``Q_b = Q (input_grad + weight_grad)`` (each GEMM
  reads the output gradient and one operand and writes one gradient); a matmul of two
  activations (attention's ``bmm``) has two operand gradients: ``2 F``.
* **scaled_dot_product_attention**: the fused backward recomputes ``Q K^T`` and runs four more
  GEMMs (``dV = P^T dO``, ``dP = dO V^T``, ``dQ = dS K``, ``dK = dS^T Q``) against the forward's
  two: ``F_b = 2.5 F``; it reads q, k, v, o, dO and writes dq, dk, dv: ``Q_b = 2 Q``.
* **normalization** (layer/batch/group/RMS norm): the input gradient needs the mean of ``dy``
  and of ``dy * x_hat`` on top of the elementwise terms, and the affine weights a reduction:
  ``F_b = 2 F``; reads x and dy, writes dx: ``Q_b = 1.5 Q``.
* **softmax / log_softmax**: ``dx = y (dy - sum(dy y))``: ``F_b = F``, ``Q_b = 1.5 Q``.
* **add / sub**: the gradient passes through unchanged: nothing to compute or move.
* **mul / div**: one product per operand gradient: ``F_b = 2 F``, ``Q_b = 2 Q``.
* **other elementwise, reductions, copies**: the derivative costs about what the op does:
  ``F_b = F``, ``Q_b = 1.5 Q`` (reads the saved tensor and dy, writes dx).
* **embedding / index**: a scatter-add of the output gradient into the table's rows, only when
  the table is trained: ``F_b = numel(out)`` (taken as ``Q_out / 4``), ``Q_b = 2 Q_out``.
* **views**: free.

Backward kernels (``backward_kernels``, for the per-op overhead, which dominates small layers
on fast devices): a GEMM or a mul / div one per operand gradient (plus one reduction for a
GEMM's bias); a convolution one (ATen's ``convolution_backward``); a split one (the ``cat``
of its parts' gradients); add / sub and other views none; every other node with a backward
one. (GPT-2 and a transformer encoder: 68 and 65 backward kernels
recorded against 62 and 34 forward nodes; the forward count, used before, missed half.)

Saved activations (what autograd keeps for the backward, per microbatch): a GEMM / conv saves
its activation operands when a gradient needs them (the input for the weight gradient; both
operands of an activation matmul); attention saves q, k, v and its output; a norm its input;
softmax, relu, sigmoid and tanh their output; gelu, silu and the other elementwise ops their
inputs; mul / div both operands; add / sub and views nothing; dropout its mask (an output).
A tensor saved by several nodes is stored once (``coarsen`` counts each producer once).

Optimizer state (``optimizer_state_bytes``): ``torch.optim`` keeps state in the parameter's
dtype: AdamW two moments (``2x`` trainable bytes), SGD with momentum one buffer (``1x``), plain
SGD none. Gradients take the trainable parameters' bytes.

Loss (``loss_costs``): the planner does not see the user's loss, so it prices the usual one, a
softmax cross-entropy over the model's outputs (``O`` bytes of logits): ``log_softmax`` reads
and writes them, its backward reads two such tensors and writes one, ``nll_loss``'s backward
writes one, about ``7 O`` moved (GPT-2: the loss was 9% of its recorded step, missing before),
2 FLOPs per element, 5 kernels (two forward, three backward with the seed gradient). It runs
on the last stage, between its forward and backward.

Optimizer step (``optimizer_step_costs``): memory-bound, per trainable element and tensor.
Plain SGD reads the weight and its gradient and writes the weight (``3x`` the trainable bytes,
one multiply-add: 2 FLOPs per element, one kernel per tensor); with momentum it also reads and
writes the buffer (``5x``, 4 FLOPs, 2 kernels); Adam / AdamW read weight, gradient and both
moments and write weight and moments (``7x``, about 12 FLOPs with the square root and the
decay, 5 kernels: torch's per-tensor loop on CPU; a fused or foreach GPU kernel launches fewer,
so this overstates the step there).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "OPTIMIZERS",
    "backward_costs",
    "backward_kernels",
    "optimizer_state_bytes",
    "optimizer_step_costs",
    "loss_costs",
    "saved_operands",
]

OPTIMIZERS: dict[str, float] = {"adamw": 2.0, "adam": 2.0, "sgd": 0.0, "sgd-momentum": 1.0}

_GEMMS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}
_CONVS = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose2d", "_convolution"}
_ATTENTION = {
    "scaled_dot_product_attention",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
}
_NORMS = {
    "layer_norm", "native_layer_norm", "batch_norm", "native_batch_norm",
    "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "group_norm",
    "native_group_norm", "rms_norm", "_fused_rms_norm", "instance_norm",
}  # fmt: skip
_SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"}
_PASS_THROUGH = {"add", "sub", "add_", "sub_", "rsub"}
_PRODUCTS = {"mul", "div", "mul_", "div_"}
_SAVE_OUTPUT = {"relu", "relu_", "sigmoid", "tanh", "hardtanh", "relu6", "exp"}
_SPLITS = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split"}
_LOOKUPS = {"embedding", "index", "index_select", "gather"}


def optimizer_state_bytes(optimizer: str, trainable_bytes: float) -> float:
    """Bytes of the optimizer's state for ``trainable_bytes`` of parameters (see module doc)."""
    factor = OPTIMIZERS.get(optimizer)
    if factor is None:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    return factor * trainable_bytes


# optimizer -> (bytes moved per trainable byte, FLOPs per element, kernels per tensor)
OPTIMIZER_STEPS: dict[str, tuple[float, float, int]] = {
    "adamw": (7.0, 12.0, 5), "adam": (7.0, 12.0, 5), "sgd": (3.0, 2.0, 1),
    "sgd-momentum": (5.0, 4.0, 2),
}  # fmt: skip


def optimizer_step_costs(
    optimizer: str, trainable_bytes: float, tensors: int, element_bytes: int = 4
) -> tuple[float, float, int]:
    """``(FLOPs, bytes moved, kernels)`` of one optimizer step over ``trainable_bytes`` of
    parameters in ``tensors`` tensors (see the module doc)."""
    if optimizer not in OPTIMIZER_STEPS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STEPS)}, got {optimizer!r}")
    per_byte, per_element, per_tensor = OPTIMIZER_STEPS[optimizer]
    return per_element * trainable_bytes / element_bytes, per_byte * trainable_bytes, per_tensor * tensors


def loss_costs(output_bytes: float, element_bytes: int = 4) -> tuple[float, float, int]:
    """``(FLOPs, bytes moved, kernels)`` of the loss and its backward over ``output_bytes``
    of model outputs (see the module doc)."""
    if output_bytes <= 0:
        return 0.0, 0.0, 0
    return 2.0 * output_bytes / element_bytes, 7.0 * output_bytes, 5


def backward_costs(
    name: str,
    op_class: str,
    flops: Any,
    bytes_moved: Any,
    output_bytes: Any,
    *,
    input_grad: bool,
    weight_grad: bool,
    activation_operands: int = 1,
) -> tuple[Any, Any]:
    """``(backward FLOPs, backward bytes)`` of one node (formulas in the module docstring).
    ``activation_operands``: how many of its operands are activations needing a gradient."""
    if op_class == "view" or not (input_grad or weight_grad):
        return 0, 0
    if name in _ATTENTION:
        return 2.5 * flops, 2 * bytes_moved
    if name in _GEMMS or name in _CONVS:
        grads = (max(activation_operands, 1) if input_grad else 0) + (1 if weight_grad else 0)
        return grads * flops, grads * bytes_moved
    if name in _LOOKUPS:
        if not weight_grad:
            return 0, 0
        return output_bytes / 4, 2 * output_bytes
    if name in _NORMS:
        return 2 * flops, 1.5 * bytes_moved
    if name in _SOFTMAX:
        return flops, 1.5 * bytes_moved
    if name in _PASS_THROUGH:
        return 0, 0
    if name in _PRODUCTS:
        return 2 * flops, 2 * bytes_moved
    return flops, 1.5 * bytes_moved


def backward_kernels(
    name: str,
    op_class: str,
    *,
    input_grad: bool,
    weight_grad: bool,
    activation_operands: int = 1,
    bias: bool = False,
) -> int:
    """Kernels one node's backward launches (module docstring). ``bias``: a GEMM with one."""
    if not (input_grad or weight_grad) or name in _PASS_THROUGH:
        return 0
    if op_class == "view":
        return 1 if name in _SPLITS and input_grad else 0
    if name in _GEMMS or name in _PRODUCTS:
        grads = max(activation_operands, 1) if input_grad else 0
        return grads + ((1 + (bias and name in _GEMMS)) if weight_grad else 0)
    if name in _LOOKUPS and not weight_grad:
        return 0
    return 1


def saved_operands(name: str, op_class: str, *, weight_grad: bool, input_grad: bool) -> str:
    """What a node saves for its backward: ``"inputs"`` (its activation operands),
    ``"output"``, ``"inputs+output"`` or ``"none"`` (see the module docstring)."""
    if op_class == "view" or not (input_grad or weight_grad):
        return "none"
    if name in _ATTENTION:
        return "inputs+output"
    if name in _GEMMS or name in _CONVS:
        # the weight gradient needs the input; an activation x activation product needs both
        return "inputs" if (weight_grad or input_grad) else "none"
    if name in _PASS_THROUGH or name in _LOOKUPS:
        return "none"
    if name in _SOFTMAX or name in _SAVE_OUTPUT or name.startswith("native_dropout"):
        return "output"
    return "inputs"
