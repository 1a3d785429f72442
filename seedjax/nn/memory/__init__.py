"""Memory layers: PKM (product_key.py), UltraMem (ultramem.py) and UltraMemV2 (ultramem_v2.py),
with the shared TDQKR retrieval (tdqkr.py) and V2's cross-layer table sharing (sharing.py)."""
from seedjax.nn.memory.product_key import PKMConfig, ProductKeyMemory
from seedjax.nn.memory.sharing import SHARING, shared_tables
from seedjax.nn.memory.tdqkr import TDQKRConfig, TuckerRetrieval
from seedjax.nn.memory.ultramem import UltraMem, UltraMemConfig
from seedjax.nn.memory.ultramem_v2 import (SharedValueTables, UltraMemV2, UltraMemV2Config,
                                           shared_value_std)

__all__ = ["PKMConfig", "ProductKeyMemory", "SHARING", "SharedValueTables", "TDQKRConfig",
           "TuckerRetrieval", "UltraMem", "UltraMemConfig", "UltraMemV2", "UltraMemV2Config",
           "shared_tables", "shared_value_std"]
