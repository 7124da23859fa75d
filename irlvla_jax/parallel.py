"""Device mesh, shardings and multi-host setup.

Data parallelism is ``jax.jit`` over a :class:`jax.sharding.Mesh` whose batch axis is ``'data'``;
large models can additionally shard parameters over ``'fsdp'``. ``jax.pmap`` is not used (it is in
maintenance mode; its modern form is jit + shard_map).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA, FSDP = "data", "fsdp"


def maybe_initialize_distributed() -> None:
    """Call ``jax.distributed.initialize()`` on multi-host jobs (detected from the environment).

    Single-process runs (the default, and every CPU run) do nothing.
    """
    multi = any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_NAME"))
    if multi and jax.process_count() == 1 and os.environ.get("IRLVLA_NO_DISTRIBUTED") != "1":
        jax.distributed.initialize()


def make_mesh(mesh_cfg: Mapping[str, Any] | None = None, devices=None) -> Mesh:
    """A ('data', 'fsdp') mesh. ``mesh_cfg = {'data': -1, 'fsdp': 1}``: -1 takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    cfg = dict(mesh_cfg or {})
    fsdp = int(cfg.get(FSDP, 1))
    data = int(cfg.get(DATA, -1))
    if data == -1:
        if n % fsdp:
            raise ValueError(f"mesh: {n} devices are not divisible by fsdp={fsdp}")
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} != {n} available devices; "
                         f"set --config.mesh.data=-1 to use all of them")
    return Mesh(np.asarray(devices).reshape(data, fsdp), (DATA, FSDP))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', the rest replicated."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Place a host batch (this process's rows) on the mesh, batch axis on 'data'.

    Every leaf's leading axis is this process's slice of the global batch; on one host that is
    the whole batch. Uses ``jax.make_array_from_process_local_data`` so multi-host works too.
    """
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
    if int(global_batch) < 1:
        raise ValueError(f"config.data.batch_size = {global_batch}: must be >= 1")
    n = mesh.shape[DATA]
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by the {n} devices on "
                         f"the 'data' mesh axis; change --config.data.batch_size")
