"""Attention in plain JAX/XLA, on every device: ``reference`` (dense; the default path and the parity
oracle), ``chunked`` (online softmax over key chunks, O(S) memory), ``spec`` (their registry records)."""
