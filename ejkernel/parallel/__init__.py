"""Context parallelism on JAX's own sharding: ring attention over a sequence axis sharded with ``shard_map``.

- ``ring_layout``: where each shard's sequence chunks lie (contiguous or load-balanced zigzag), and the
  permutation that places a sequence in that layout and undoes it;
- ``ring_schedule``: which (query chunk, key chunk) pairs of a ring step causality or a window leave, as a
  static table, and the work per shard it implies;
- ``ring_steps``: one pair of chunks served by the registry's ``attention_with_lse``, and its VJP;
- ``ring``: ``ring_attention``, called inside ``shard_map`` (forward and backward are rings);
- ``sharded``: ``sharded_ring_attention``, which writes the ``shard_map`` for ``[B, S, H, D]`` arrays.
"""
