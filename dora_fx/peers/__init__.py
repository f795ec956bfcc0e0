"""Peers that run: other systems executed on the same runtime and emulation as dora_fx, for
side-by-side benchmarks (``pipelining``: torch.distributed.pipelining)."""
