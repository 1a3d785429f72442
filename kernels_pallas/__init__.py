"""Standalone Pallas kernels (depend on jax only, never on seedjax)."""
