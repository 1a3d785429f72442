"""Meshes, logical-axis rule presets and multi-host helpers.

``make_mesh`` builds the five-axis mesh (``MESH_AXES``); ``PRESETS`` / ``get_rules`` map logical
parameter axes to it; ``param_shardings`` gives the trainer's NamedShardings and
``print_sharding_table`` shows them per parameter (see ``seedjax.sharding.rules``).
"""
from seedjax.sharding.mesh import MESH_AXES, make_mesh
from seedjax.sharding.rules import (MAPPED, PRESETS, REPLICATED, get_rules, param_shardings,
                                    print_sharding_table, sharding_rows, sharding_table, spec_for,
                                    unknown_logical_names)

__all__ = ["MESH_AXES", "make_mesh", "PRESETS", "MAPPED", "REPLICATED", "get_rules",
           "param_shardings", "print_sharding_table", "sharding_rows", "sharding_table",
           "spec_for", "unknown_logical_names"]
