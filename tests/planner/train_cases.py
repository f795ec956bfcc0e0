"""Small random training problems and their exhaustive optimum, for the training planner's
tests and benchmark."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from dora_fx.analysis.problem import Problem, TrainingSpec
from dora_fx.analysis.training import evaluate_training
from dora_fx.planner import enumerate_plans
from dora_fx.planner.synthetic import random_problem
from dora_fx.planner.train_solve import microbatch_counts
from dora_fx.qoe import QoE


def random_training_problem(seed: int, n_blocks: int, n_devices: int, batch: int | None = None) -> Problem:
    base = random_problem(seed, n_blocks, n_devices, batch=batch)
    rng = random.Random(seed)
    blocks = tuple(
        replace(
            b,
            backward_flops=b.flops * rng.uniform(1.0, 2.2),
            backward_dense_flops=b.dense * 2.0,
            backward_bytes=b.bytes * rng.uniform(1.0, 2.0),
            activation_bytes=b.out_bytes * rng.uniform(1.0, 6.0),
            grad_bytes=b.param_bytes,
        )
        for b in base.blocks
    )
    objective = rng.choice(("throughput", "energy"))
    spec = TrainingSpec(optimizer=rng.choice(("adamw", "sgd", "sgd-momentum")))
    qoe = QoE(objective=objective, batch=base.batch)  # type: ignore[arg-type]
    return Problem(blocks, base.cluster, qoe, base.batch, base.input_bytes, training=spec)


def exhaustive_training_best(problem: Problem) -> float:
    """The best iteration time (or energy) over every plan, count and policy that fits memory."""
    energy = problem.qoe.objective == "energy"
    best = math.inf
    for plan in enumerate_plans(problem):
        for m in microbatch_counts(problem):
            for policy in ("gpipe", "1f1b"):
                e = evaluate_training(plan, problem, microbatches=m, schedule=policy)
                if e.memory_ok:
                    best = min(best, e.energy_j if energy else e.iteration_s)
    return best
