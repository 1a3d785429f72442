"""Memory layers: PKM (product_key.py), PEER (peer.py), Memory+ (memory_plus.py), UltraMem
(ultramem.py) and UltraMemV2 (ultramem_v2.py), with the shared product-key retrieval
(pk_common.py), TDQKR retrieval (tdqkr.py) and V2's cross-layer table sharing (sharing.py)."""
from seedjax.nn.memory.memory_plus import MemoryPlus, MemoryPlusConfig
from seedjax.nn.memory.peer import PEER, PEERConfig
from seedjax.nn.memory.pk_common import ProductKeyRetrieval
from seedjax.nn.memory.product_key import PKMConfig, ProductKeyMemory
from seedjax.nn.memory.sharing import SHARING, shared_tables
from seedjax.nn.memory.tdqkr import (DecodeConstant, TDQKRConfig, TuckerRetrieval,
                                     prepare_decode, release_decode)
from seedjax.nn.memory.ultramem import UltraMem, UltraMemConfig
from seedjax.nn.memory.ultramem_v2 import (SharedValueTables, UltraMemV2, UltraMemV2Config,
                                           shared_value_std)

__all__ = ["DecodeConstant", "MemoryPlus", "MemoryPlusConfig", "PEER", "PEERConfig", "PKMConfig",
           "ProductKeyMemory", "ProductKeyRetrieval", "SHARING", "SharedValueTables",
           "TDQKRConfig", "TuckerRetrieval", "UltraMem", "UltraMemConfig", "UltraMemV2",
           "UltraMemV2Config", "prepare_decode", "release_decode", "shared_tables",
           "shared_value_std"]
