"""Pretrained weights from local files into Flax params, by an explicit key-mapping table.

A mapping table is ``{param_path: source}``: ``param_path`` is a "/"-joined path into the params
pytree (``"conv1/kernel"``); ``source`` is either a tensor name in the file, or
``(names, fn)`` where ``fn(*arrays) -> array`` converts (transposes a conv kernel, folds a
BatchNorm's statistics ...). Every mapped parameter must exist in the file and come out with the
parameter's exact shape; otherwise :class:`WeightLoadError` names the file, the key and the
problem. Files: ``.safetensors``, ``.npz``, or a directory of ``*.safetensors`` shards (HF).
Nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import flax
import numpy as np

Source = str | tuple[tuple[str, ...] | str, Callable[..., np.ndarray]]


class WeightLoadError(ValueError):
    """A weight file does not fit the model (missing or mis-shaped key, unreadable file)."""


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor in a ``.safetensors`` / ``.npz`` file or a directory of ``.safetensors``."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise WeightLoadError(f"{path}: directory holds no .safetensors file")
        out: dict[str, np.ndarray] = {}
        for f in files:
            out.update(read_tensors(os.path.join(path, f)))
        return out
    if not os.path.exists(path):
        raise WeightLoadError(f"{path}: no such weight file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            return dict(load_file(path))
        except Exception as e:  # the library raises several types for a corrupt header
            raise WeightLoadError(f"{path}: not a readable safetensors file ({e})") from e
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    raise WeightLoadError(f"{path}: unknown weight format (expected .safetensors or .npz)")


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


def apply_mapping(params: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                  mapping: Mapping[str, Source], where: str = "weights") -> dict[str, Any]:
    """Return a copy of ``params`` with every mapped leaf replaced from ``tensors``.

    Leaves not in ``mapping`` keep their value; the replaced ones keep the target's dtype.
    Raises WeightLoadError (naming ``where``) for a mapped path absent from params, a source key
    absent from the file, or a converted array whose shape differs from the parameter's.
    """
    flat = flatten_params(params)
    missing_src: list[str] = []
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
        arr = np.asarray(tensors[names[0]]) if fn is None else fn(*(np.asarray(tensors[n])
                                                                    for n in names))
        target = flat[path]
        if tuple(arr.shape) != tuple(np.shape(target)):
            raise WeightLoadError(f"{where}: key {names[0]!r} -> {path!r} has shape "
                                  f"{tuple(arr.shape)}, the model expects {tuple(np.shape(target))}")
        flat[path] = np.asarray(arr, dtype=np.asarray(target).dtype)
    if missing_src:
        shown = ", ".join(repr(m) for m in missing_src[:8])
        raise WeightLoadError(f"{where}: {len(missing_src)} key(s) the model needs are missing "
                              f"from the file: {shown}{' ...' if len(missing_src) > 8 else ''}")
    return flax.traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def load_weights(params: Mapping[str, Any], path: str,
                 mapping: Mapping[str, Source]) -> dict[str, Any]:
    """Read ``path`` and map it onto ``params`` (see :func:`apply_mapping`)."""
    return apply_mapping(params, read_tensors(path), mapping, where=path)


# ----------------------------------------------------------------------------------------------
# torchvision ResNet -> vision.ResNet

def conv_from_torch(w: np.ndarray) -> np.ndarray:
    """PyTorch conv kernel [O, I, kh, kw] -> Flax [kh, kw, I, O]."""
    return np.transpose(w, (2, 3, 1, 0))


def fold_batchnorm(eps: float = 1e-5):
    """BatchNorm (weight, bias, running_mean, running_var) -> Affine (scale) and (bias)."""
    def scale(w, b, mean, var):
        return w / np.sqrt(var + eps)

    def bias(w, b, mean, var):
        return b - mean * w / np.sqrt(var + eps)
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
