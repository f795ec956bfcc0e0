"""The compiler: capture a model, annotate its costs, coarsen it into blocks, plan, lower the
plan to stage graphs with send/recv, schedule their communication and generate each stage's
code, as one flat list of passes over a ``CompileState`` (``pipeline.PASSES``)."""
