"""Flash attention for NVIDIA GPUs written with Pallas' Triton backend (platform "triton").

``spec`` registers it; ``interface`` holds the public entry points; ``forward``/``backward`` the kernels;
``tiles`` the block arithmetic they share; ``configs`` the measured block-size table.
"""
