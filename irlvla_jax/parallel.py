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


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Join a multi-process job: ``jax.distributed.initialize`` before anything starts JAX's
    backend (so no ``jax.devices()`` / ``jax.process_count()`` before this call).

    Explicit: ``coordinator_address`` ('HOST:PORT') with ``num_processes`` and ``process_id``
    (launch.py's flags). Otherwise JAX's cluster detection runs when the environment says the
    job has several processes: ``JAX_COORDINATOR_ADDRESS``, ``SLURM_NTASKS`` > 1, or a TPU pod
    (``TPU_WORKER_HOSTNAMES`` listing several hosts). A single process (the default, any CPU
    run, a 1-task SLURM job) does nothing. ``IRLVLA_NO_DISTRIBUTED=1`` disables it. Returns
    whether it initialised.
    """
    if os.environ.get("IRLVLA_NO_DISTRIBUTED") == "1":
        return False
    if coordinator_address or _cluster_env():
        _cpu_collectives()
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=int(num_processes),
                                   process_id=int(process_id))
        return True
    multi = _cluster_env()
    if multi:
        jax.distributed.initialize()
    return multi


def _cluster_env() -> bool:
    """Whether the environment describes a job of several processes."""
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return ("JAX_COORDINATOR_ADDRESS" in os.environ
            or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 or len(hosts) > 1)


def _cpu_collectives() -> None:
    """Cross-process collectives on the CPU backend need an implementation (gloo); JAX
    versions before it was the default leave it off, and a multi-process CPU job then fails at
    its first collective. Set before ``jax.distributed.initialize``; other backends ignore it."""
    name = "jax_cpu_collectives_implementation"
    if name in jax.config.values and jax.config.values[name] in (None, "none"):
        jax.config.update(name, "gloo")


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
    """Leading (batch) axis split over every device ('data' x 'fsdp': FSDP is data parallel
    too; only the state is split differently), the rest replicated."""
    return NamedSharding(mesh, P((DATA, FSDP)))


def batch_devices(mesh: Mesh) -> int:
    """How many ways the batch is split: 'data' x 'fsdp'."""
    return int(mesh.shape[DATA] * mesh.shape[FSDP])


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


def to_host(tree: Any) -> Any:
    """numpy copies of a pytree of (possibly sharded) arrays: ``jax.device_get`` on one
    process; on several, every process gathers the whole arrays (``process_allgather``), since
    a process cannot read another's shards."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
    if int(global_batch) < 1:
        raise ValueError(f"config.data.batch_size = {global_batch}: must be >= 1")
    n = batch_devices(mesh)
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by the {n} devices of "
                         f"the mesh's 'data' x 'fsdp' axes; change --config.data.batch_size")


# ----------------------------------------------------------------------------------------------
# FSDP: which state leaves are split over 'fsdp', and on which dimension.

def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def fsdp_spec(path: str, shape: tuple[int, ...], fsdp: int, min_size: int = 2 ** 16,
              overrides: Mapping[str, int] | None = None) -> P:
    """The PartitionSpec of one state leaf under FSDP.

    Default rule: a leaf of at least ``min_size`` elements is split over 'fsdp' on its largest
    dimension divisible by the fsdp size (ties: the last such dimension); smaller leaves and
    leaves with no divisible dimension are replicated. ``overrides`` maps a regular expression
    on the leaf's path ('params/planner/...', searched) to a dimension (-1: replicate); the first
    match wins.
    """
    import re
    if fsdp <= 1 or not shape:
        return P()
    dim = None
    for pattern, d in (overrides or {}).items():
        if re.search(pattern, path):
            dim = int(d)
            if dim < 0:
                return P()
            break
    if dim is None:
        if int(np.prod(shape)) < min_size:
            return P()
        candidates = [i for i, n in enumerate(shape) if n % fsdp == 0]
        if not candidates:
            return P()
        dim = max(candidates, key=lambda i: (shape[i], i))
    elif shape[dim] % fsdp:
        raise ValueError(f"mesh.fsdp_overrides: {path} dimension {dim} ({shape[dim]}) is not "
                         f"divisible by fsdp={fsdp}")
    spec = [None] * len(shape)
    spec[dim] = FSDP
    return P(*spec)


def state_shardings(abstract: Any, mesh: Mesh, mesh_cfg: Mapping[str, Any] | None = None):
    """NamedShardings for a state pytree (params, optimizer moments, frozen variables) from
    :func:`fsdp_spec`; with fsdp = 1 everything is replicated. abstract: arrays or
    ShapeDtypeStructs. The optimizer's moments have their parameter's shape, so they follow it.
    """
    cfg = dict(mesh_cfg or {})
    fsdp = int(mesh.shape[FSDP])
    min_size = int(cfg.get("fsdp_min_size", 2 ** 16))
    overrides = dict(cfg.get("fsdp_overrides", {}) or {})

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, fsdp_spec(_path_str(path), shape, fsdp, min_size, overrides))
    return jax.tree_util.tree_map_with_path(one, abstract)


def device_bytes(tree: Any) -> int:
    """Bytes of a pytree of jax.Arrays held by one device (device 0's shards)."""
    dev = jax.devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            if shard.device == dev:
                total += shard.data.nbytes
    return total
