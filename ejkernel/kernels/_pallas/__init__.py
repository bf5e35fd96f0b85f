"""Pallas implementations, one folder per target (``tpu``: Mosaic). Nothing is imported eagerly."""
