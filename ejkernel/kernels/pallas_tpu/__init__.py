"""Flash attention for TPU in Pallas/Mosaic (registered as platform "pallas").

Modules, one idea each: ``spec`` (registry entry and capabilities; imports no Pallas), ``blocks`` (block
sizes, VMEM estimates, which tiles are visited), ``config`` (static kernel configuration), ``tiles``
(in-kernel tile math), ``forward`` and ``backward`` (the kernels), ``flash`` (layout, padding,
``custom_vjp``), ``interface`` (``flash_attention``, ``flash_attention_with_lse``, the registered
implementation). Importing this package imports none of them.
"""
