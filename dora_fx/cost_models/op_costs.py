"""FLOP and memory-traffic formulas per ATen op, over FakeTensor values with SymInt sizes.

torch.utils.flop_counter's registry covers mm/addmm/bmm/convolution and the fused attention
kernels; the undecomposed graphs torch.export gives also hold high-level ops it does not cover
(linear, conv2d, matmul, scaled_dot_product_attention), which get formulas here. Elementwise,
normalization and reduction ops are memory-bound: they get a small per-element FLOP count and
their traffic is what matters. View ops are free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry

__all__ = [
    "op_name", "dense_flops", "other_flops", "is_view", "is_memory_only", "is_misaligned_gemm",
]

Value = Any  # a FakeTensor, a SymInt/int, or a container of them

# Ops that alias or reshape without moving data, or only query shapes.
_VIEW_OPS = {
    "view", "_unsafe_view", "reshape", "transpose", "permute", "t", "expand", "expand_as",
    "unsqueeze", "squeeze", "slice", "select", "alias", "detach", "split", "split_with_sizes",
    "chunk", "unbind", "sym_size", "sym_numel", "sym_stride", "_assert_tensor_metadata",
    "_assert_scalar", "flatten", "unflatten", "view_as", "narrow", "lift_fresh_copy",
    "dropout", "dropout_", "feature_dropout", "alpha_dropout", "identity", "getitem", "_local_scalar_dense", "movedim",
    "as_strided", "diagonal", "_unsafe_index_put", "sym_constrain_range_for_size",
}
# Ops that move or create data but do no arithmetic: 0 FLOPs is their true count.
_MEMORY_OPS = {
    "embedding", "index", "index_select", "gather", "cat", "stack", "clone", "contiguous",
    "copy", "copy_", "_to_copy", "to", "pad", "constant_pad_nd", "arange", "full", "full_like",
    "ones", "ones_like", "zeros", "zeros_like", "new_ones", "new_zeros", "new_full",
    "new_empty", "empty", "empty_like", "scalar_tensor", "masked_fill", "repeat", "roll",
    "tril", "triu", "flip", "fill", "fill_", "lift", "zero", "zero_", "scatter", "index_put",
    "slice_scatter", "select_scatter", "repeat_interleave", "tensor", "eye", "_unsafe_index",
    "upsample_nearest2d", "where", "masked_select", "clamp_min", "clamp_max", "tile",
}
# FLOPs per output element. Transcendental functions count their cost in FLOP-equivalents
# against erf-GELU's 8 (what calibration fits the compute roof of other ops with), measured on
# a 12.6 MB tensor with 2 AVX2 threads (vectorized SLEEF kernels): tanh 2.2 ns per element
# = 21, erf 11, log 10, sin and cos 11, exp 8, sigmoid 7, against add at 0.56 (memory-bound);
# the table rounds them to 20, 10 and 8 (sigmoid keeps its older 4). GPT-2's tanh-GELU spends
# 3x an add's time in tanh; counted as 1 FLOP it was priced as a copy.
_ELEMENTWISE_FLOPS = {
    "add": 1, "add_": 1, "sub": 1, "rsub": 1, "mul": 1, "mul_": 1, "div": 1, "neg": 1, "abs": 1,
    "relu": 1, "relu_": 1, "hardtanh": 2, "hardtanh_": 2, "relu6": 2, "clamp": 2, "maximum": 1,
    "minimum": 1, "sqrt": 1, "rsqrt": 1, "reciprocal": 1, "exp": 8, "log": 10,
    "tanh": 20, "sigmoid": 4, "silu": 5, "silu_": 5, "gelu": 8, "erf": 10, "sin": 10, "cos": 10,
    "hardswish": 4, "hardswish_": 4, "hardsigmoid": 3, "leaky_relu": 2, "elu": 3,
    "eq": 1, "ne": 1, "lt": 1, "le": 1, "gt": 1, "ge": 1, "__and__": 1, "__or__": 1,
    "bitwise_and": 1, "bitwise_or": 1, "bitwise_not": 1, "logical_and": 1, "logical_or": 1,
    "logical_not": 1, "floor_divide": 1, "remainder": 1, "fmod": 1, "ceil": 1, "floor": 1,
    "sign": 1, "addcmul": 2, "addcdiv": 2, "lerp": 2, "softplus": 3, "mish": 6,
    "_softmax": 5, "softmax": 5, "log_softmax": 5, "_log_softmax": 5,
    "layer_norm": 5, "native_layer_norm": 5, "rms_norm": 4, "group_norm": 5,
    "native_group_norm": 5, "batch_norm": 2, "_native_batch_norm_legit_no_training": 2,
    "native_batch_norm": 2, "instance_norm": 5, "type_as": 0, "masked_fill_": 1,
}
# FLOPs per input element.
_REDUCTION_OPS = {
    "sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "cumsum", "prod",
    "var", "std", "var_mean", "norm", "linalg_vector_norm", "logsumexp", "any", "all", "diff",
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "avg_pool2d", "max_pool2d",
    "max_pool2d_with_indices", "adaptive_avg_pool1d", "avg_pool1d", "max_pool1d",
}


def op_name(target: Any) -> str:
    """``aten.addmm.default`` -> ``addmm``; ``operator.getitem`` -> ``getitem``."""
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(packet.__name__)
    return str(getattr(target, "__name__", target))


def is_view(name: str) -> bool:
    return name in _VIEW_OPS


def is_memory_only(name: str) -> bool:
    return name in _MEMORY_OPS


def numel(value: Value) -> Any:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum((numel(v) for v in value), 0)
    return 0


def dense_flops(target: Any, args: tuple[Value, ...], kwargs: dict[str, Value], out: Value) -> Any:
    """FLOPs of matmul/conv/attention ops, or None when the op is not one."""
    packet = getattr(target, "overloadpacket", None)
    if packet in flop_registry:
        return flop_registry[packet](*args, out_val=out, **kwargs)
    formula = _DENSE_FORMULAS.get(op_name(target))
    return None if formula is None else formula(args, kwargs, out)


# Matrix multiplies (the output's last dim is N, the row length of the result).
_GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}
VECTOR_BYTES = 32  # AVX2 registers; GPU tensor cores want rows of 8-16 elements too


def is_misaligned_gemm(name: str, out: Value) -> bool:
    """True for a matrix multiply whose output rows are not a whole number of vector registers
    (fp32: N not a multiple of 8, e.g. GPT-2's LM head, N = 50257): its kernel handles a
    remainder on every row, measured 0.65-0.8x as fast here. A symbolic row length counts as
    aligned."""
    if name not in _GEMM_OPS or not isinstance(out, torch.Tensor) or out.dim() == 0:
        return False
    row = out.shape[-1]
    if not isinstance(row, int):
        return False
    return (row * out.element_size()) % VECTOR_BYTES != 0


def other_flops(name: str, args: tuple[Value, ...], out: Value) -> Any:
    """FLOPs of memory-bound ops, or None when there is no formula."""
    if name in _VIEW_OPS or name in _MEMORY_OPS:
        return 0
    if name == "pow":
        return _pow_flops(args) * numel(out)
    if name in _ELEMENTWISE_FLOPS:
        return _ELEMENTWISE_FLOPS[name] * numel(out if not isinstance(out, tuple) else out[0])
    if name in _REDUCTION_OPS:
        return numel(args[0]) if args else 0
    return None


# pow's CPU kernel multiplies for these scalar exponents (x**3 is x*x*x) and calls the
# general exp(y log x) for the rest: 4.0 ns per element here, 7x an add.
_CHEAP_POW_EXPONENTS = {2.0, 3.0, 0.5, -0.5, -1.0, -2.0}


def _pow_flops(args: tuple[Value, ...]) -> int:
    exponent = args[1] if len(args) > 1 else None
    if isinstance(exponent, (int, float)) and float(exponent) in _CHEAP_POW_EXPONENTS:
        return 2
    return 40


def _linear(args: tuple[Value, ...], kwargs: dict[str, Value], out: Value) -> Any:
    x = args[0]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    flops = 2 * numel(out) * x.shape[-1]
    return flops + (numel(out) if bias is not None else 0)


def _matmul(args: tuple[Value, ...], kwargs: dict[str, Value], out: Value) -> Any:
    return 2 * numel(out) * args[0].shape[-1]


def _conv(args: tuple[Value, ...], kwargs: dict[str, Value], out: Value) -> Any:
    weight = args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    # Each output element is a dot product over (C_in / groups) * prod(kernel) inputs; the
    # weight is (C_out, C_in / groups, *kernel), so that length is weight.numel() / C_out.
    per_output = weight.numel() // weight.shape[0]
    return 2 * numel(out) * per_output + (numel(out) if bias is not None else 0)


def _sdpa(args: tuple[Value, ...], kwargs: dict[str, Value], out: Value) -> Any:
    # q: (..., L, E), k: (..., S, E), v: (..., S, Ev): Q·Kᵀ is 2·L·S·E per batch-head, P·V is
    # 2·L·S·Ev, the softmax over (L, S) about 5 per element. For E = Ev = D and L = S this is the
    # familiar 4·B·H·S²·D (+ softmax).
    q, k, v = args[0], args[1], args[2]
    heads = math.prod(q.shape[:-2]) if q.dim() > 2 else 1
    length, source = q.shape[-2], k.shape[-2]
    return heads * length * source * (2 * q.shape[-1] + 2 * v.shape[-1] + 5)


_DENSE_FORMULAS: dict[str, Callable[[tuple[Value, ...], dict[str, Value], Value], Any]] = {
    "linear": _linear,
    "matmul": _matmul,
    "conv1d": _conv,
    "conv2d": _conv,
    "conv3d": _conv,
    "scaled_dot_product_attention": _sdpa,
}
