"""Flash attention for Hopper GPUs written with Pallas' Mosaic-GPU backend (platform "mosaic_gpu").

``spec`` registers it; ``interface`` holds the public entry points; ``plan`` the call's static plan;
``blocks`` the block-size heuristic; ``tiles`` the in-kernel tile helpers; ``compat`` the differences
between jax versions and between the device and the interpreter; ``forward`` the warp-specialised
kernel; ``backward`` the native dK/dV and dQ kernels; ``flash`` the ``custom_vjp`` (its backward is the
native kernels at head dims up to 128 and the Triton backend's above, unless ``backward=`` names one).
"""
