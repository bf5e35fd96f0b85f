"""Pallas Mosaic-TPU kernels. Nothing is imported eagerly: the registry's specs load kernels on first use."""
