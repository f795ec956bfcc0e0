"""Peers that run: other systems executed on the same runtime and emulation as dora_fx, for
side-by-side benchmarks. torch.distributed.pipelining: ``pipelining`` (``run_pipelining``, the
launcher), ``pipelining_rank`` (one rank), ``pipelining_emulation`` (emulation hooked into
torch's schedule) and ``pipelining_config`` (what the ranks are told); its training:
``pipelining_train`` (``run_pipelining_training``, ``peer_training_throughput``),
``pipelining_train_rank`` and ``pipelining_train_emulation``."""
