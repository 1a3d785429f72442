"""Standalone Pallas kernels (depend on jax; seedjax reaches them only through the
``seedjax.ops`` switches). One exception by design: ``expert_race/reference.py`` re-exports
``seedjax.nn.moe.racing``, the pure-JAX Expert Race the kernel must equal, instead of a copy."""
