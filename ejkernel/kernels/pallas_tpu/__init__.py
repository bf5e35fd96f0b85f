"""Flash attention for TPU in Pallas/Mosaic (registered as platform "pallas_tpu", alias "pallas").

Modules, one idea each (``docs/design.rst``, *Kernels*): ``capabilities`` (what it serves), ``spec``
(registry entry; imports no Pallas), ``plan`` (the static plan of one call), ``blocks`` (block sizes, VMEM
estimates, which tiles are visited), ``tiles`` (in-kernel tile helpers calling the shared rules),
``forward`` and ``backward`` (the kernels), ``flash`` (layout, padding, ``custom_vjp``), ``interface``
(``flash_attention``, ``flash_attention_with_lse``, the registered implementation). Importing this package
imports none of them.
"""
