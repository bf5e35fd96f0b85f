"""Attention semantics shared by every backend: validation, masks and windows, sinks, capabilities."""
