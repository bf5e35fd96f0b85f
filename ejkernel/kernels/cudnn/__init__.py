"""cuDNN's fused attention (through ``jax.nn.dot_product_attention(implementation="cudnn")``), registered as
the platform ``"cudnn"`` for exactly the calls where its result is our semantics (``capabilities``)."""
