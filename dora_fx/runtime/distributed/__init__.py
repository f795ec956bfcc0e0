"""Distributed runtime: one process (rank) per device, tensors over torch.distributed P2P.

Ranks follow the plan, stage by stage and device by device within a data-parallel group::

    stage 0 (phone)  stage 1 (laptop, jetson; shares .4 .6)  stage 2 (rpi4)
    rank 0           rank 1, rank 2                            rank 3

Its modules, bottom to top (each imports only those before it):

* ``wiring``: which rank runs which stage, and what each stage sends where (from plan.json);
* ``wire``: the self-describing message format and gloo point-to-point calls;
* ``transport``: moving tensors between ranks (receiver threads, chunks, data-parallel
  scatter and gather, the link shaper hook);
* ``runner``: one rank executing its stage's schedule actions (POST, WAIT, F, SEND, SENT);
* ``config``, ``driver``, ``rank``: what a rank is told, and what it does from start to end
  (process groups, warm-up, emulation, the request stream or a session's rounds, metrics);
* ``worker``: the rank process's entry (reports a failure for the supervisor);
* ``supervisor``: starts, watches and stops the rank processes;
* ``launch``: prepares a run and reads its result (``run_local``; the torchrun entry point
  ``python -m dora_fx.runtime.distributed.launch``);
* ``inbox``, ``session``: a plan's ranks kept up, serving requests as they come;
* training: ``train_config``, ``train_transport`` (gradients back, targets to the last stage),
  ``train_reduce`` (gradient sums over the ranks holding each parameter), ``train_runner``
  (one step's F/B/RECV/SEND/GRECV/GSEND/REDUCE actions), ``train_emulation``, ``train_rank``
  (a training rank from start to end, checkpoints), ``train_launch`` (``train_local``,
  ``TrainResult``, ``TrainingRankLost``).

This package's ``__init__`` imports nothing, so ``python -m dora_fx.runtime.distributed.launch``
runs the launcher as ``__main__`` without it being imported first.
"""
