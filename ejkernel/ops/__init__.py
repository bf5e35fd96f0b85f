"""Semantics shared by every backend, one subpackage per algorithm."""
