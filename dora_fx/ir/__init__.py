"""The IR every layer above shares: the plan (``plan``), the per-node cost record (``cost``),
the send/recv operators (``comm_ops``), the stage module type (``stage_module``), the
communication schedule (``schedule``) with its lowering (``lowering``) and execution order
(``execute``), and the batch split (``batch_split``).

Nothing is imported here: a saved stage file imports ``dora_fx.ir.comm_ops`` alone, which
needs only torch.
"""
