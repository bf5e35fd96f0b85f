"""``ejkernel bench``: timing harness for attention implementations and baselines.

Modules, one idea each: ``grids`` (named shapes), ``flops`` (FLOP convention and device peaks),
``timing`` (rounds, medians, buffer rotation), ``implementations`` (what is timed), ``runner`` (one
record per configuration), ``dispatch`` (same program under jit, eager overhead), ``environment``
(device and versions), ``report`` (JSON and table), ``compare`` (regressions beyond noise), ``plots``
(optional PNGs), ``progress`` (stderr bar) and ``cli``. Importing this package imports nothing heavy.
"""

__all__: list[str] = []
