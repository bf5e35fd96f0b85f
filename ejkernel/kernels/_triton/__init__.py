"""Pallas-Triton kernels for NVIDIA GPUs (platform "triton"); imported lazily by their registry specs."""
