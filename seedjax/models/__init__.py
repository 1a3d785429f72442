"""Models assembled from seedjax.nn: the decoder LM (lm.py)."""
from seedjax.models.config import LMConfig
from seedjax.models.lm import LM, LMOutput
from seedjax.models.registry import lookup, names, register

__all__ = ["LMConfig", "LM", "LMOutput", "lookup", "names", "register"]
from seedjax.models import moe_factories  # noqa: F401,E402
from seedjax.models import looped_factories  # noqa: F401,E402
from seedjax.models import over_encoding_factories  # noqa: F401,E402
from seedjax.models import over_decoding_factories  # noqa: F401,E402
