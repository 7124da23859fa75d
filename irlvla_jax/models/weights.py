"""Pretrained weights from local files into Flax params, by an explicit key-mapping table.

A mapping table is ``{param_path: source}``: ``param_path`` is a "/"-joined path into the params
pytree (``"conv1/kernel"``); ``source`` is either a tensor name in the file, or
``(names, fn)`` where ``fn(*arrays) -> array`` converts (transposes a conv kernel, folds a
BatchNorm's statistics ...; written with array methods and operators so that it also runs on
abstract arrays). Every mapped parameter must exist in the file and come out with the
parameter's exact shape; otherwise :class:`WeightLoadError` names the file, the tensor, the
parameter and both shapes. Shapes are checked from the files' headers before any tensor is read.
Files: ``.safetensors``, ``.npz``, or a directory of ``*.safetensors`` shards (HF, with or without
``model.safetensors.index.json``). Nothing is downloaded.

Where a loaded tensor goes: onto the devices of the parameter it replaces (a parameter sharded
over a mesh receives only its slices); inside a trace (``jax.eval_shape``, ``jax.jit``) it becomes
a host callback that reads the file when the program runs, so an abstract evaluation reads
nothing. :func:`freeze` makes an optimizer leave chosen subtrees (a pretrained backbone) alone.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax
import jax
import numpy as np
import optax

Source = str | tuple[tuple[str, ...] | str, Callable[..., np.ndarray]]

HF_INDEX = "model.safetensors.index.json"


class WeightLoadError(ValueError):
    """A weight file does not fit the model (missing or mis-shaped key, unreadable file)."""


class TensorFile(Mapping[str, np.ndarray]):
    """The tensors of a weight file or checkpoint directory, each read from disk when accessed.

    ``path``: a ``.safetensors`` / ``.npz`` file or a directory of ``.safetensors`` shards (the
    shards ``model.safetensors.index.json`` lists when it exists, else every ``*.safetensors``).
    :meth:`shape_of` and :meth:`file_of` answer from the headers without reading tensor data.
    """

    def __init__(self, path: str):
        self.path = path
        self._file: dict[str, str] = {}                     # tensor name -> file holding it
        self._shape: dict[str, tuple[int, ...]] = {}
        if os.path.isdir(path):
            for f in self._shards(path):
                self._index(f)
        elif not os.path.exists(path):
            raise WeightLoadError(f"{path}: no such weight file")
        elif path.endswith((".safetensors", ".npz")):
            self._index(path)
        else:
            raise WeightLoadError(f"{path}: unknown weight format (expected .safetensors or .npz)")

    @staticmethod
    def _shards(directory: str) -> list[str]:
        index = os.path.join(directory, HF_INDEX)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    names = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise WeightLoadError(f"{index}: not a readable shard index ({e})") from e
            absent = [n for n in names if not os.path.exists(os.path.join(directory, n))]
            if absent:
                raise WeightLoadError(f"{index}: lists shard(s) that do not exist: {absent}")
        else:
            names = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
        if not names:
            raise WeightLoadError(f"{directory}: directory holds no .safetensors file")
        return [os.path.join(directory, n) for n in names]

    def _index(self, path: str) -> None:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                for k in z.files:
                    self._file[k], self._shape[k] = path, tuple(z[k].shape)
            return
        from safetensors import safe_open
        try:
            with safe_open(path, framework="numpy") as f:
                for k in f.keys():
                    self._file[k], self._shape[k] = path, tuple(f.get_slice(k).get_shape())
        except Exception as e:  # the library raises several types for a corrupt header
            raise WeightLoadError(f"{path}: not a readable safetensors file ({e})") from e

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._shape[name]

    def file_of(self, name: str) -> str:
        return self._file[name]

    def __getitem__(self, name: str) -> np.ndarray:
        path = self._file[name]
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return z[name]
        from safetensors import safe_open
        with safe_open(path, framework="numpy") as f:
            return f.get_tensor(name)

    def __contains__(self, name: object) -> bool:     # Mapping's default would read the tensor
        return name in self._file

    def __iter__(self) -> Iterator[str]:
        return iter(self._file)

    def __len__(self) -> int:
        return len(self._file)


def read_tensors(path: str) -> TensorFile:
    """The tensors of a ``.safetensors`` / ``.npz`` file or a directory of ``.safetensors``
    (a read-only mapping name -> array; each tensor is read when accessed)."""
    return TensorFile(path)


def save_tensors(tensors: Mapping[str, np.ndarray], path: str) -> None:
    """Write name -> array to ``.safetensors`` or ``.npz`` (by the extension)."""
    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file
        save_file(arrays, path)
    elif path.endswith(".npz"):
        np.savez(path, **arrays)
    else:
        raise WeightLoadError(f"{path}: unknown weight format (expected .safetensors or .npz)")


def flatten_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Nested params -> ``{"a/b/kernel": array}``."""
    return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(params).items()}


def _place(target: Any, read: Callable[[], np.ndarray]) -> Any:
    """The loaded value of one parameter, where ``target`` (its current value) lives: a host
    callback inside a trace, the target's devices and sharding for a jax.Array, numpy else."""
    dtype = np.dtype(target.dtype)
    if isinstance(target, jax.core.Tracer):
        return jax.pure_callback(lambda: np.asarray(read(), dtype),
                                 jax.ShapeDtypeStruct(target.shape, dtype))
    arr = np.asarray(read(), dtype)
    if isinstance(target, jax.Array):
        return jax.make_array_from_callback(arr.shape, target.sharding, lambda idx: arr[idx])
    return arr


def apply_mapping(params: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                  mapping: Mapping[str, Source], where: str = "weights") -> dict[str, Any]:
    """Return a copy of ``params`` with every mapped leaf replaced from ``tensors``.

    Leaves not in ``mapping`` keep their value; the replaced ones keep the target's dtype and
    devices (see :func:`_place`). Raises WeightLoadError, before reading any tensor data, for a
    mapped path absent from params, a source tensor absent from the file, or a converted shape
    that differs from the parameter's; the message names the file (``where`` or, for a
    :class:`TensorFile`, the file holding the tensor), the tensor, the parameter and both shapes.
    """
    flat = flatten_params(params)
    shape_of = getattr(tensors, "shape_of", lambda n: np.shape(tensors[n]))
    file_of = getattr(tensors, "file_of", lambda n: where)
    missing_src: list[str] = []
    plan: list[tuple[str, tuple[str, ...], Callable | None]] = []
    for path, source in mapping.items():
        if path not in flat:
            raise WeightLoadError(f"{where}: mapping targets {path!r}, which is not a parameter "
                                  f"of the model")
        names, fn = (source, None) if isinstance(source, str) else source
        names = (names,) if isinstance(names, str) else tuple(names)
        absent = [n for n in names if n not in tensors]
        if absent:
            missing_src.extend(absent)
            continue
        shapes = [jax.ShapeDtypeStruct(shape_of(n), np.float32) for n in names]
        want = tuple(np.shape(flat[path]))
        try:
            shape = shapes[0].shape if fn is None else jax.eval_shape(fn, *shapes).shape
        except (TypeError, ValueError) as e:        # e.g. a reshape that cannot fit
            raise WeightLoadError(f"{file_of(names[0])}: tensor {names[0]!r} of shape "
                                  f"{shapes[0].shape} does not convert to parameter {path!r} "
                                  f"{want} ({e})") from e
        if tuple(shape) != want:
            raise WeightLoadError(f"{file_of(names[0])}: tensor {names[0]!r} -> parameter "
                                  f"{path!r} has shape {tuple(shape)}, the model (its config) "
                                  f"expects {want}")
        plan.append((path, names, fn))
    if missing_src:
        shown = ", ".join(repr(m) for m in missing_src[:8])
        raise WeightLoadError(f"{where}: {len(missing_src)} key(s) the model needs are missing "
                              f"from the file: {shown}{' ...' if len(missing_src) > 8 else ''}")
    for path, names, fn in plan:
        def read(names=names, fn=fn):
            arrays = [np.asarray(tensors[n]) for n in names]
            return arrays[0] if fn is None else fn(*arrays)
        flat[path] = _place(flat[path], read)
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def load_weights(params: Mapping[str, Any], path: str,
                 mapping: Mapping[str, Source]) -> dict[str, Any]:
    """Read ``path`` and map it onto ``params`` (see :func:`apply_mapping`)."""
    return apply_mapping(params, read_tensors(path), mapping, where=path)


def freeze(tx: optax.GradientTransformation, params: Any, prefixes: Sequence[str]
           ) -> optax.GradientTransformation:
    """``tx`` for the params outside ``prefixes``; the params under them never change.

    prefixes: "/"-joined paths into ``params`` (``"vision"``, ``"semantic/llm"``), each naming
    at least one parameter. The frozen leaves get zero updates and no optimizer state
    (``optax.multi_transform``), and gradient clipping inside ``tx`` sees only the trained
    ones. No prefixes: ``tx`` itself (the same optimizer state as without this call).
    """
    prefixes = tuple(p.strip("/") for p in prefixes)
    if not prefixes:
        return tx
    paths = list(flatten_params(params))

    def under(path: str, prefix: str) -> bool:
        return path == prefix or path.startswith(prefix + "/")
    for p in prefixes:
        if not any(under(path, p) for path in paths):
            top = sorted({k.split("/")[0] for k in paths})
            raise ValueError(f"freeze: {p!r} names no parameter (top-level parameters: "
                             f"{', '.join(top)}; nested paths are '/'-joined)")
    labels = flax.traverse_util.unflatten_dict(
        {tuple(k.split("/")): "frozen" if any(under(k, p) for p in prefixes) else "train"
         for k in paths})
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ----------------------------------------------------------------------------------------------
# torchvision ResNet -> vision.ResNet

def conv_from_torch(w: np.ndarray) -> np.ndarray:
    """PyTorch conv kernel [O, I, kh, kw] -> Flax [kh, kw, I, O]."""
    return np.transpose(w, (2, 3, 1, 0))


def fold_batchnorm(eps: float = 1e-5):
    """BatchNorm (weight, bias, running_mean, running_var) -> Affine (scale) and (bias):
    ``w (x - mean) / sqrt(var + eps) + b = x * scale + bias``."""
    def scale(w, b, mean, var):
        return w / (var + eps) ** 0.5

    def bias(w, b, mean, var):
        return b - mean * w / (var + eps) ** 0.5
    return scale, bias


def resnet_torchvision_mapping(cfg: Any, prefix: str = "") -> dict[str, Source]:
    """Mapping table for a torchvision ``resnet18/34`` state dict onto ``vision.ResNet(cfg)``
    params with ``cfg.norm == 'frozen_bn'`` (BatchNorms folded into per-channel affines).

    ``prefix`` is the path of the ResNet inside a larger params tree (``"vision/"``). The 1x1
    ``proj`` layer is ours and stays at its initial value.
    """
    if cfg.norm != "frozen_bn":
        raise WeightLoadError("torchvision ResNet weights need config.model.vision.norm = "
                              f"'frozen_bn' (got {cfg.norm!r})")
    scale, bias = fold_batchnorm()
    table: dict[str, Source] = {}

    def conv(ours, theirs):
        table[f"{prefix}{ours}/kernel"] = ((f"{theirs}.weight",), conv_from_torch)

    def bn(ours, theirs):
        names = tuple(f"{theirs}.{n}" for n in ("weight", "bias", "running_mean", "running_var"))
        table[f"{prefix}{ours}/scale"] = (names, scale)
        table[f"{prefix}{ours}/bias"] = (names, bias)

    conv("conv1", "conv1")
    bn("bn1", "bn1")
    in_width = cfg.stem_width
    for s, (blocks, width) in enumerate(zip(cfg.stage_sizes, cfg.widths)):
        for b in range(blocks):
            ours, theirs = f"layer{s + 1}_{b}", f"layer{s + 1}.{b}"
            for i in (1, 2):
                conv(f"{ours}/conv{i}", f"{theirs}.conv{i}")
                bn(f"{ours}/bn{i}", f"{theirs}.bn{i}")
            if b == 0 and (s > 0 or in_width != width):
                conv(f"{ours}/downsample_conv", f"{theirs}.downsample.0")
                bn(f"{ours}/downsample_bn", f"{theirs}.downsample.1")
        in_width = width
    return table


# ----------------------------------------------------------------------------------------------
# timm ViT -> vision.ViT

def linear_from_torch(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight [out, in] -> Flax Dense kernel [in, out]."""
    return w.T


MAX_PREFIX_TOKENS = 8    # class + register tokens a timm pos_embed may start with


def resize_pos_embed(grid_hw: tuple[int, int]):
    """timm ``pos_embed`` [1, P + grid, D] (P <= 8 class/register-token rows first) -> ours
    [1, gh*gw, D]: the prefix rows dropped (our ViT has no class token); a grid of another size
    (square, as pretrained) resized bicubically, as timm's ``resample_abs_pos_embed`` does.
    Rows = gh*gw + P: the same grid; otherwise the largest square below the row count."""
    gh, gw = grid_hw

    def convert(pos):
        rows, dim = pos.shape[-2:]
        pos = pos.reshape(rows, dim)
        if 0 <= rows - gh * gw <= MAX_PREFIX_TOKENS:
            return pos[rows - gh * gw:].reshape(1, gh * gw, dim)
        n = math.isqrt(rows)
        if rows - n * n > MAX_PREFIX_TOKENS:
            return pos[None]            # the shape check reports it
        grid = pos[rows - n * n:].reshape(n, n, dim).astype(np.float32)
        grid = jax.image.resize(grid, (gh, gw, dim), "bicubic")
        grid = grid if isinstance(pos, jax.core.Tracer) else np.asarray(grid)
        return grid.reshape(1, gh * gw, dim)
    return convert


def vit_timm_mapping(cfg: Any, grid_hw: tuple[int, int], prefix: str = "") -> dict[str, Source]:
    """Mapping table for a timm ``vit_*`` state dict (``patch_embed.proj``, ``pos_embed``,
    ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``) onto
    ``vision.ViT(cfg)`` params whose patch grid is ``grid_hw`` (``vision.feature_hw``).

    The fused ``qkv`` [3D, D] splits into q/k/v [D, heads, head_dim]; ``cls_token`` and the
    classifier ``head`` are not used; ``proj`` is ours and stays at its initial value.
    """
    heads, width = cfg.heads, cfg.width
    hd = width // heads
    table: dict[str, Source] = {}

    def qkv(i):
        return lambda w: w[i * width:(i + 1) * width].T.reshape(width, heads, hd)

    def qkv_bias(i):
        return lambda b: b[i * width:(i + 1) * width].reshape(heads, hd)

    table[f"{prefix}patch_embed/kernel"] = (("patch_embed.proj.weight",), conv_from_torch)
    table[f"{prefix}patch_embed/bias"] = "patch_embed.proj.bias"
    table[f"{prefix}pos_embed"] = (("pos_embed",), resize_pos_embed(grid_hw))
    for b in range(cfg.depth):
        ours, theirs = f"{prefix}blocks_{b}", f"blocks.{b}"
        for n in ("norm1", "norm2"):
            table[f"{ours}/{n}/scale"] = f"{theirs}.{n}.weight"
            table[f"{ours}/{n}/bias"] = f"{theirs}.{n}.bias"
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            table[f"{ours}/attn/{name}/kernel"] = ((f"{theirs}.attn.qkv.weight",), qkv(i))
            table[f"{ours}/attn/{name}/bias"] = ((f"{theirs}.attn.qkv.bias",), qkv_bias(i))
        table[f"{ours}/attn/o_proj/kernel"] = ((f"{theirs}.attn.proj.weight",),
                                               lambda w: w.T.reshape(heads, hd, width))
        table[f"{ours}/attn/o_proj/bias"] = f"{theirs}.attn.proj.bias"
        for n in ("fc1", "fc2"):
            table[f"{ours}/mlp/{n}/kernel"] = ((f"{theirs}.mlp.{n}.weight",), linear_from_torch)
            table[f"{ours}/mlp/{n}/bias"] = f"{theirs}.mlp.{n}.bias"
    table[f"{prefix}norm/scale"] = "norm.weight"
    table[f"{prefix}norm/bias"] = "norm.bias"
    return table
