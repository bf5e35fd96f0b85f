"""Implementations, one folder per backend: ``xla`` (dense reference and chunked), ``pallas_tpu``,
``pallas_triton``. Each folder's ``spec`` module holds its registry records (``SPECS``) and imports no
kernel code; ``ejkernel.registry.BUILTIN_MODULES`` names them."""
