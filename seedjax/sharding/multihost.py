"""Multi-host helpers: ``jax.distributed`` initialisation and process-local -> global batches.

Call ``maybe_initialize`` once at the top of an entry point (never at import time).
"""
from __future__ import annotations

import logging
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seedjax.sharding import failure

log = logging.getLogger(__name__)


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, timeout_s: int = 300,
                     auto_detect: bool = False, peer_timeout_s: float | None = None) -> bool:
    """Initialises ``jax.distributed`` with an explicit coordinator, or (``auto_detect``) from the
    cluster environment (Cloud TPU, SLURM, Open MPI, k8s). Otherwise single-process: no-op.

    ``peer_timeout_s``: start a ``failure.PeerWatchdog`` that ends this process with one line
    when a peer has been silent that long (jax's own heartbeat timeout is set above it).
    Returns True if running multi-process.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    extra = {}
    if peer_timeout_s is not None:
        extra["heartbeat_timeout_seconds"] = failure.jax_heartbeat_timeout(peer_timeout_s)
    if coordinator_address is None and num_processes is None:
        if not auto_detect:
            return False
        try:  # auto-detect (Cloud TPU, SLURM, Open MPI, k8s); absent cluster -> single process
            jax.distributed.initialize(initialization_timeout=timeout_s, **extra)
        except (ValueError, RuntimeError) as e:
            log.info("jax.distributed not initialised (single process): %s", e)
            return False
    else:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=timeout_s, **extra)
    multi = jax.process_count() > 1
    if multi and peer_timeout_s is not None:
        from jax._src import distributed as _dist  # the client jax.distributed just connected
        failure.start_watchdog(_dist.global_state.client, jax.process_index(),
                               jax.process_count(), peer_timeout_s)
    return multi


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, spec: PartitionSpec) -> dict:
    """Assembles each process's rows into global arrays sharded by ``spec`` (batch dim first).

    Each of the ``P`` processes holds ``B / P`` distinct rows (``seedjax.data`` gives process
    ``p`` rows ``[p*B/P, (p+1)*B/P)``), so the global batch has ``B = rows * P`` rows and
    ``spec``'s batch axes must split the batch across the processes. The global shape is passed
    explicitly: otherwise a mesh that replicates the batch across processes (say ``data=1,
    model=2`` over two processes) would silently make "replicas" out of different rows, and the
    replicated parameters would drift apart between processes.
    """
    sharding = NamedSharding(mesh, spec)
    n_proc = jax.process_count()
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        global_shape = (v.shape[0] * n_proc, *v.shape[1:])
        try:
            out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
        except ValueError as e:
            raise ValueError(
                f"batch[{k!r}]: this process holds {v.shape[0]} of {global_shape[0]} rows, but "
                f"the batch sharding {spec} over mesh {dict(mesh.shape)} does not give each of "
                f"the {n_proc} processes a distinct 1/{n_proc} of the batch; put the mesh's "
                f"batch axes (data, fsdp) across processes ({e})") from e
    return out
