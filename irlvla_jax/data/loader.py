"""Built TFDS dataset -> grain (shuffle, repeat, batch, prefetch) -> Scene batches on the mesh.

    mesh = parallel.make_mesh(config.mesh)
    loader = make_loader(config, config.data.train_split, mesh, seed=config.seed, shuffle=True)
    for scene, metas in loader:      # scene: Scene of jax Arrays [B, ...] sharded on 'data'
        ...
    state = loader.get_state()       # {"step": n}; make_loader(..., start_step=n) resumes there

The order is a pure function of (seed, split, global batch size): grain's ``MapDataset`` is random
access, so resuming at step ``n`` is slicing the batched dataset at ``n`` (no replay), and neither
worker processes (``config.data.num_workers``) nor the number of hosts change the order. Each
epoch is reshuffled. Each process reads and decodes only the rows of each global batch that its
devices hold.

Cameras are stored as JPEG (``dataset_id.CAMERAS_JPEG``) and decoded by :func:`decode_example`,
which runs in the grain worker processes: every reader (the loader, :func:`load_split_numpy`)
gets uint8 [C, H, W, 3] as ``types.scene_spec`` documents. Host memory is bounded: with
``num_workers`` > 0 each worker builds one batch at a time and holds at most one finished batch
(``num_workers x 2`` decoded batches in all, plus the one the device loader holds); with 0
workers ``prefetch`` batches are decoded ahead in threads.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Iterator, Sequence

import grain
from absl import flags as absl_flags
import jax
import numpy as np
import tensorflow_datasets as tfds

from irlvla_jax import parallel, types
from irlvla_jax.data import dataset_id, sensor_io


def open_source(config, split: str):
    """The split's random-access TFDS ArrayRecord data source (``len``, ``[i]``); no TF."""
    path = dataset_id.dataset_path(config)
    builder = tfds.builder_from_directory(str(path))
    name = dataset_id.tfds_split(split)
    if name not in builder.info.splits:
        raise ValueError(f"split {split!r} is not in the dataset at {path}; it has "
                         f"{sorted(builder.info.splits)} (set config.data.train_split / "
                         f"eval_split and run `python launch.py data`)")
    return builder.as_data_source(name)


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _decode_cameras(index: int, example: dict[str, Any], shape, split: str) -> np.ndarray:
    """The stored JPEGs ([C] bytes) -> uint8 [C, H, W, 3]; a corrupt one names its scene."""
    blobs = example[dataset_id.CAMERAS_JPEG]
    if len(blobs) != shape[0]:
        raise ValueError(f"{split} example {index}: {len(blobs)} stored camera images, expected "
                         f"{shape[0]}; rebuild with `python launch.py data`")
    out = np.empty(shape, np.uint8)
    for c, blob in enumerate(blobs):
        try:
            out[c] = sensor_io.decode_jpeg(blob, shape[1:3])
        except ValueError as e:
            raise ValueError(
                f"{split} example {index} (scene token {_text(example.get('token', '?'))!r}, log "
                f"{_text(example.get('log_name', '?'))!r}): camera {c} of the stored dataset is "
                f"corrupt: {e}. Rebuild the dataset with `python launch.py data`") from None
    return out


def decode_example(index: int, example: dict[str, Any], *, spec, split: str
                   ) -> tuple[dict[str, np.ndarray], types.SceneMeta]:
    """One stored example -> (dict of numpy arrays exactly as ``spec``, SceneMeta).

    TFDS's numpy reader returns scalars as Python numbers; they are cast back to the documented
    dtype here. Cameras stored as JPEG are decoded (uint8 [C, H, W, 3]; a JPEG that does not
    decode raises ValueError naming the scene). A shape that disagrees with ``spec`` means the
    dataset was built for another Scene contract: that is an error, not something to reshape.
    ``spec`` may be a subset of ``types.scene_spec`` (only those fields are decoded).
    """
    arrays = {}
    for name, (shape, dtype) in spec.items():
        if name == "cameras" and dataset_id.CAMERAS_JPEG in example:
            arrays[name] = _decode_cameras(index, example, shape, split)
            continue
        if name not in example:
            raise ValueError(f"{split} example {index}: stored dataset lacks field {name!r}; "
                             f"rebuild it with `python launch.py data`")
        a = np.asarray(example[name], dtype=dtype)
        if a.shape != shape:
            raise ValueError(f"{split} example {index}: field {name!r} has shape {a.shape}, "
                             f"expected {shape}; rebuild with `python launch.py data`")
        arrays[name] = a
    prev = _text(example["previous_token"])
    meta = types.SceneMeta(
        token=_text(example["token"]), log_name=_text(example["log_name"]),
        map_location=_text(example["map_location"]), previous_token=prev or None,
        track_tokens=[_text(t) for t in example["track_tokens"]], split=split,
        scene_index=int(index))
    return arrays, meta


def collate(items: Sequence[tuple[dict[str, np.ndarray], types.SceneMeta]]
            ) -> tuple[dict[str, np.ndarray], list[types.SceneMeta]]:
    """Stack N decoded examples: every field gains a leading [N] axis; metas stay a list."""
    names = items[0][0].keys()
    return ({k: np.stack([a[k] for a, _ in items]) for k in names}, [m for _, m in items])


def process_rows(mesh, global_batch: int) -> tuple[int, int]:
    """[lo, hi): the rows of the global batch held by this process's devices."""
    index_map = parallel.data_sharding(mesh).addressable_devices_indices_map((global_batch,))
    rows = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
                   for s in index_map.values()})
    lo, hi = rows[0][0], rows[-1][1]
    if sum(b - a for a, b in rows) != hi - lo:
        raise ValueError(f"this process's devices hold non-contiguous batch rows {rows}; "
                         f"order the mesh devices by process")
    return lo, hi


class _DecodeRows:
    """A batch of record indices (the global batch's) -> this process's rows of it, decoded and
    collated: ``(arrays dict [hi - lo, ...], hi - lo metas)``. A short last batch (evaluation
    keeps it) is padded with copies of its last record whose meta is None."""

    def __init__(self, source, spec, split: str, rows: tuple[int, int]):
        self._source, self._spec, self._split, self._rows = source, spec, split, rows

    def __call__(self, indices: np.ndarray):
        lo, hi = self._rows
        n = len(indices)
        items = [decode_example(int(indices[min(r, n - 1)]),
                                self._source[int(indices[min(r, n - 1)])],
                                spec=self._spec, split=self._split) for r in range(lo, hi)]
        arrays, metas = collate(items)
        return arrays, [m if lo + j < n else None for j, m in enumerate(metas)]


class SceneLoader:
    """Iterator of ``(Scene batch [B, ...] sharded on 'data', list of B SceneMeta)``.

    ``step`` counts batches from the start of the run (``start_step`` included), so
    ``make_loader(..., start_step=loader.get_state()["step"])`` continues where this one stopped.
    """

    def __init__(self, batches: Iterator, mesh, start_step: int):
        self._batches = iter(batches)
        self._mesh = mesh
        self.step = start_step
        # One batch in flight on the device: device_put is asynchronous, so the next batch's
        # transfer overlaps the caller's work on the current one.
        self._ready: collections.deque = collections.deque()

    def _put_next(self) -> None:
        arrays, metas = next(self._batches)
        self._ready.append((parallel.shard_batch(types.Scene.from_dict(arrays), self._mesh), metas))

    def __iter__(self) -> "SceneLoader":
        return self

    def __next__(self) -> tuple[types.Scene, list[types.SceneMeta]]:
        if not self._ready:
            self._put_next()            # StopIteration ends the loader (finite num_epochs)
        out = self._ready.popleft()
        try:
            self._put_next()
        except StopIteration:
            pass
        self.step += 1
        return out

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}


def make_dataset(config, split: str, *, seed: int, shuffle: bool, num_epochs: int | None,
                 rows: tuple[int, int] | None = None, limit: int | None = None,
                 drop_remainder: bool = True) -> grain.MapDataset:
    """The batched grain MapDataset of (arrays dict [hi - lo, ...], metas): element ``n`` is
    this process's rows ``rows = (lo, hi)`` (default: all) of global batch ``n``.

    The global batches (``config.data.batch_size`` record indices each, from the first
    ``limit`` records, shuffled by ``seed``, reshuffled each epoch) do not depend on how many
    processes read them: a run on N hosts trains on the batches of a run on one.
    ``num_epochs=None`` repeats forever. ``drop_remainder=False`` keeps a short last batch,
    padded (metas None on the padding rows; evaluation).
    """
    source = open_source(config, split)
    spec = types.scene_spec(types.SceneSizes.from_config(config.data.sizes))
    b = int(config.data.batch_size)
    lo, hi = rows if rows is not None else (0, b)
    n = len(source) if limit is None else min(int(limit), len(source))
    if n < (b if drop_remainder else 1):
        raise ValueError(f"split {split!r} has {n} scenes{'' if limit is None else ' used'}: "
                         f"too few for a global batch of {b}; lower --config.data.batch_size")
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)          # reshuffles each epoch (grain reseeds per epoch)
    ds = ds.batch(b, drop_remainder=drop_remainder)
    # SceneMeta.scene_index is the record's index in the split (decode_example's index).
    return ds.map(_DecodeRows(source, spec, split, (lo, hi)))


def host_batches(config, split: str, *, seed: int, shuffle: bool, num_epochs: int | None = None,
                 start_step: int = 0, rows: tuple[int, int] | None = None,
                 limit: int | None = None, drop_remainder: bool = True,
                 num_workers: int | None = None):
    """The grain iterator of host batches ``(arrays dict [b, ...] numpy, list of b SceneMeta)``
    (:func:`make_dataset`'s) from batch ``start_step`` on: reading, JPEG decoding and
    collation run in ``num_workers`` (default ``config.data.num_workers``) worker processes,
    or in the calling process's ``config.data.prefetch`` threads when 0."""
    ds = make_dataset(config, split, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                      rows=rows, limit=limit, drop_remainder=drop_remainder)
    ds = ds[start_step:]
    workers = config.data.num_workers if num_workers is None else int(num_workers)
    if workers <= 0:
        n = max(1, config.data.prefetch)
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=n, prefetch_buffer_size=n))
    # One batch at a time in each worker (no threads, no read-ahead inside it): a worker is one
    # core, and holds one batch in progress plus one finished (per_worker_buffer_size).
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    # grain's workers read absl flags; outside an absl app nobody parsed them (defaults).
    if not absl_flags.FLAGS.is_parsed():
        absl_flags.FLAGS.mark_as_parsed()
    return it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                       per_worker_buffer_size=1))


def make_loader(config, split: str, mesh: jax.sharding.Mesh, *, seed: int, shuffle: bool,
                num_epochs: int | None = None, start_step: int = 0,
                limit: int | None = None) -> SceneLoader:
    """Scene batches of ``config.data.batch_size`` (global) sharded on the mesh's 'data' axis.

    Yields ``(Scene with fields [B, ...] as jax Arrays, list of B SceneMeta)``. Same
    (seed, split, mesh, batch size) -> the same batches; ``start_step=n`` yields batch ``n``
    first. ``num_epochs=None`` runs forever; otherwise the loader stops after the last full batch.
    ``limit``: only the split's first ``limit`` scenes (stored order) are read.
    """
    global_batch = config.data.batch_size
    parallel.check_batch_divisible(global_batch, mesh)
    it = host_batches(config, split, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                      start_step=start_step, rows=process_rows(mesh, global_batch),
                      limit=limit)
    return SceneLoader(it, mesh, start_step)


def load_split_numpy(config, split: str, limit: int | None = None
                     ) -> tuple[types.Scene, list[types.SceneMeta]]:
    """The first ``limit`` scenes of a split (all when None), in stored order, for evaluation.

    Returns (Scene of numpy arrays with a leading [N] axis, N SceneMeta).
    """
    arrays, metas = load_split_fields(config, split, limit=limit)
    return types.Scene.from_dict(arrays), metas


def load_split_fields(config, split: str, fields: Sequence[str] | None = None,
                      limit: int | None = None
                      ) -> tuple[dict[str, np.ndarray], list[types.SceneMeta]]:
    """Only ``fields`` (all when None) of the first ``limit`` scenes, in stored order: (dict of
    numpy arrays with a leading [N] axis, N SceneMeta). Without "cameras" no JPEG is decoded
    and the host holds a few bytes per scene (e.g. the expert futures for the anchors)."""
    source = open_source(config, split)
    spec = types.scene_spec(types.SceneSizes.from_config(config.data.sizes))
    if fields is not None:
        unknown = sorted(set(fields) - set(spec))
        if unknown:
            raise ValueError(f"unknown Scene field(s) {unknown}; see types.scene_spec")
        spec = {k: spec[k] for k in fields}
    n = len(source) if limit is None else min(int(limit), len(source))
    if n == 0:
        raise ValueError(f"split {split!r} has no scenes to load (limit={limit})")
    # Filled in place: the peak is the result, not the result plus a list of its rows.
    arrays = {k: np.empty((n, *shape), dtype) for k, (shape, dtype) in spec.items()}
    metas = []
    for i in range(n):
        row, meta = decode_example(i, source[i], spec=spec, split=split)
        for k in arrays:
            arrays[k][i] = row[k]
        metas.append(meta)
    return arrays, metas
