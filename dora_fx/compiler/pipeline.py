"""The compiler: one flat, named list of passes over a ``CompileState``.

::

    capture         model            -> flat ATen GraphModule (torch.export; symbolic_trace fallback)
    annotate_costs  GraphModule      -> node.meta["dora.cost"]: sympy FLOPs / bytes per node
    coarsen         GraphModule      -> BlockChain: blocks at valid, low-traffic cut points
    partition       Problem          -> PlanSet     (pure: planner.solve; QoE-aware, certified gap)
    insert_comm     GraphModule+Plan -> one GraphModule per stage with send/recv nodes
    schedule_comm   stage graphs     -> reordered for overlap + Schedule (actions per stage,
                                        microbatches chosen by simulating the plan; the
                                        plan's predicted figures become the schedule's)
    codegen         stage graphs     -> readable standalone Python per stage, schedule shown

With ``DORA_DEBUG=1`` the verifier runs after every pass and each pass's graphs are written to
``$DORA_DUMP_DIR`` (default: ``./dora_debug``). A failing pass is named in the error, with the
passes that ran before it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sympy
import torch

from ..analysis.problem import Problem, TrainingSpec
from ..analysis.training import evaluate_training
from ..errors import DoraError, PassError
from ..planner import solve
from ..planner.balanced import balanced_flops_plan, check_plan
from .capture import capture
from .passes.annotate_costs import CostSymbols, annotate_costs
from .passes.coarsen import coarsen
from .passes.codegen import build_stage, call_spec
from .passes.insert_comm import insert_comm
from .passes.schedule_comm import schedule_comm
from .passes.verify import verify_state
from .state import CompileState

__all__ = ["FRONT_END", "PASSES", "front_end", "run_passes"]

log = logging.getLogger("dora_fx")


def _capture(state: CompileState) -> None:
    state.captured = capture(
        state.model, state.example_inputs, state.example_kwargs, seq_dim=state.seq_dim,
        for_training=state.for_training,
    )  # fmt: skip


def _annotate_costs(state: CompileState) -> None:
    assert state.captured is not None
    state.symbols = CostSymbols.from_names(state.captured.symbols)
    scale = None
    if not state.captured.symbols:  # static shapes: assume costs linear in the batch
        scale = state.symbols.batch / sympy.Integer(state.captured.example_batch)
    state.missing_formulas = annotate_costs(state.captured.gm, state.symbols, scale)


def _coarsen(state: CompileState) -> None:
    assert state.captured is not None and state.symbols is not None
    state.chain = coarsen(state.captured.gm, state.symbols, state.max_blocks)


def _partition(state: CompileState) -> None:
    assert state.chain is not None and state.cluster is not None
    blocks, input_bytes = state.chain.at(state.qoe.batch)
    # a training compile plans a training problem: backward costs, training memory (the
    # optimizer's state, AdamW's unless compile was told), the optimizer step, iteration time
    training = None
    if state.for_training:
        training = TrainingSpec(state.optimizer, microbatches=state.microbatches)
    state.problem = Problem(
        tuple(blocks), state.cluster, state.qoe, state.qoe.batch, input_bytes, training=training
    )
    if state.given_plan is not None:
        state.plan = check_plan(state.given_plan, state.problem)
    elif state.num_stages is not None:  # a fixed stage count: the spine's FLOP-balanced split
        state.plan = balanced_flops_plan(state.problem, state.num_stages)
    else:
        state.plan_set = solve(state.problem)
        state.plan = state.plan_set.best
        if state.plan_set.training:  # the schedule policy and microbatches the planner chose
            state.training = state.plan_set.training[0]


def _insert_comm(state: CompileState) -> None:
    assert state.captured is not None and state.chain is not None and state.plan is not None
    state.programs = insert_comm(state.captured.gm, state.chain, state.plan)


def _schedule_comm(state: CompileState) -> None:
    assert state.captured is not None and state.plan is not None
    microbatches = state.microbatches
    if microbatches is None and state.training is not None:
        microbatches = state.training.microbatches  # the training planner's count
    choice = schedule_comm(
        [p.gm for p in state.programs],
        state.plan,
        state.problem,
        state.qoe.batch,
        dynamic_batch="batch" in state.captured.symbols.values(),
        microbatches=microbatches,
    )
    state.schedule_choice = choice
    if state.problem is not None and state.problem.training is not None:
        # the plan's figures stay the training iteration's (the inference simulation of the
        # schedule says nothing about a backward)
        if state.training is None or state.training.microbatches != choice.schedule.microbatches:
            state.training = evaluate_training(
                state.plan, state.problem, microbatches=choice.schedule.microbatches,
                schedule=state.training.schedule if state.training else "1f1b",
            )  # fmt: skip
    elif state.plan_set is not None and choice.metrics is not None:
        # the planner's figures for the chosen plan become those of the schedule it runs
        state.plan_set = state.plan_set.with_schedule(choice.metrics, choice.schedule.header())
        state.plan = state.plan_set.best


def _codegen(state: CompileState) -> None:
    assert state.captured is not None and state.plan is not None
    assert state.schedule is not None
    state.stages = [
        build_stage(program, state.plan, state.captured, state.schedule)
        for program in state.programs
    ]
    state.call = call_spec(state.captured)


Pass = tuple[str, Callable[[CompileState], None]]

PASSES: list[Pass] = [
    ("capture", _capture),
    ("annotate_costs", _annotate_costs),
    ("coarsen", _coarsen),
    ("partition", _partition),
    ("insert_comm", _insert_comm),
    ("schedule_comm", _schedule_comm),
    ("codegen", _codegen),
]


FRONT_END = PASSES[:3]  # capture, annotate_costs, coarsen: the model as costed blocks


def front_end(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    example_kwargs: dict[str, Any] | None = None,
    *,
    seq_dim: int | None = None,
    max_blocks: int = 100,
) -> CompileState:
    """The passes every use of a model starts with (``FRONT_END``), for the planner's blocks,
    the simulator's problems and cost predictions alike: the state after ``coarsen``
    (``captured``, ``symbols``, ``chain``)."""
    state = CompileState(
        model, tuple(example_inputs), dict(example_kwargs or {}), seq_dim=seq_dim,
        max_blocks=max_blocks,
    )  # fmt: skip
    return run_passes(state, FRONT_END)


def run_passes(state: CompileState, passes: list[Pass] = PASSES) -> CompileState:
    debug = os.environ.get("DORA_DEBUG", "") not in ("", "0")
    done: list[str] = []
    for name, run in passes:
        log.info("dora_fx: pass %s", name)
        try:
            run(state)
            if debug:
                verify_state(state, name)
                _dump(state, name)
        except DoraError:
            raise
        except Exception as exc:
            before = ", ".join(done) or "none"
            raise PassError(
                f"pass {name!r} failed ({type(exc).__name__}: {exc}); passes run before it: "
                f"{before}. Set DORA_DEBUG=1 to verify and dump the graph after each pass."
            ) from exc
        done.append(name)
    return state


def _dump(state: CompileState, pass_name: str) -> None:
    folder = Path(os.environ.get("DORA_DUMP_DIR", "dora_debug"))
    folder.mkdir(parents=True, exist_ok=True)
    index = [name for name, _ in PASSES].index(pass_name) if pass_name in dict(PASSES) else 0
    texts = []
    if state.captured is not None and not state.programs:
        texts.append(str(state.captured.gm.graph))
    if state.plan is not None:
        texts.append(state.plan.to_text())
    texts += [f"# stage {p.index}\n{p.gm.graph}" for p in state.programs]
    if state.schedule is not None:
        texts.append(state.schedule.to_text())
    (folder / f"{index:02d}_{pass_name}.txt").write_text("\n\n".join(texts) + "\n")
    log.warning("dora_fx: DORA_DEBUG dump after %s in %s", pass_name, folder)
