"""External checkpoint formats (HF safetensors + config.json) <-> seedjax parameters.

``seedjax.convert.ouro``: Ouro (LoopLM) checkpoints, ``load_hf`` / ``save_hf``.
"""
