"""Implementations written in plain JAX/XLA; they run on every device."""
