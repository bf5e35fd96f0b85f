"""Flash attention for NVIDIA GPUs written with Pallas' Triton backend (platform "triton").

``spec`` registers it; ``interface`` holds the public entry points; ``plan`` the call's static plan;
``forward``/``backward`` the kernels; ``tiles`` the plan's view of the shared block ranges; ``blocks`` the
measured block-size table; ``flash`` the ``custom_vjp`` around the kernels.
"""
