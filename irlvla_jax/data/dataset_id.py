"""Which TFDS dataset a run config means, and where it lives: names, config hashing, paths.

Shared by the TFDS builder (``data/navsim_tfds``), the ``data`` stage (``prepare.py``) and the
loader, so that none of them imports another for it. Layout under ``config.data.dir``
("" = ``<repo>/data``)::

    navsim/                 synthetic NAVSIM-format root (source == "synthetic")
    maps/                   synthetic nuPlan maps          (source == "synthetic")
    tfds/navsim_tfds/<name>/<version>/   the built dataset (+ skip_report.json)

``<name>`` is ``<source>_<hash>`` where the hash covers everything that changes the examples
(the Scene contract's fields, the sizes, the splits, the source and its settings, how cameras
are stored, ``skip_bad`` when it is set), so a config change builds a new dataset next to the
old one instead of silently reusing a stale one. ``<version>`` is :data:`DATASET_VERSION`, the
builder's record layout: a folder holding only another version was written by other code and is
refused with the command to rebuild. TFDS itself treats a finished ``<name>/<version>`` folder
as the "already built" marker.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from irlvla_jax import types

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILDER_NAME = "navsim_tfds"       # TFDS names the builder after its package folder
SOURCES = ("synthetic", "navsim", "random")
#: The builder's record layout (``data/navsim_tfds`` VERSION). 1.0.0: cameras as raw uint8
#: tensors; 2.0.0: cameras as one JPEG per camera (``camera_jpeg_quality``; 0 keeps raw uint8);
#: 3.0.0: agents and light states at 0 .. 5 s (``types.NUM_AGENT_STEPS`` = 11, was 9).
DATASET_VERSION = "3.0.0"
DEFAULT_JPEG_QUALITY = 90
#: The stored feature holding the cameras as JPEG bytes, one per camera (quality > 0).
CAMERAS_JPEG = "cameras_jpeg"


def camera_jpeg_quality(config) -> int:
    """``config.data.camera_jpeg_quality``: 1..100 stores each camera as a JPEG of that quality
    (decoded by the loader); 0 stores raw uint8 (exact, ~10x larger)."""
    q = int(config.data.get("camera_jpeg_quality", DEFAULT_JPEG_QUALITY))
    if not 0 <= q <= 100:
        raise ValueError(f"config.data.camera_jpeg_quality is {q}; expected 0 (raw uint8) or a "
                         f"JPEG quality 1..100")
    return q


def data_dir(config) -> Path:
    """``config.data.dir`` resolved; "" means the repo's ``data/`` folder."""
    d = config.data.dir
    return Path(d).expanduser().resolve() if d else REPO_ROOT / "data"


def splits(config) -> tuple[str, ...]:
    """The splits a run needs: train and eval (once each)."""
    return tuple(dict.fromkeys([config.data.train_split, config.data.eval_split]))


def tfds_split(split: str) -> str:
    """The TFDS name of a split. TFDS reads back only names of word characters and ``-``; a
    split is any folder name (``navsim_reader``), so other characters become ``_`` and a short
    hash of the name keeps two folders apart (``my.split`` -> ``my_split_1a2b3c4d``)."""
    if re.fullmatch(r"[\w-]+", split):
        return split
    safe = re.sub(r"[^\w-]", "_", split)
    return f"{safe}_{hashlib.sha1(split.encode()).hexdigest()[:8]}"


def source_roots(config) -> tuple[str, str]:
    """(navsim_root, maps_root) the reader reads from."""
    src = config.data.source
    if src == "synthetic":
        root = data_dir(config)
        return str(root / "navsim"), str(root / "maps")
    if src == "navsim":
        for field in ("navsim_root", "maps_root"):
            if not config.data[field]:
                raise ValueError(f"config.data.{field} is empty; set it (or $OPENSCENE_DATA_ROOT / "
                                 f"$NUPLAN_MAPS_ROOT before loading configs/navsim.py) when "
                                 f"config.data.source == 'navsim'")
        return str(Path(config.data.navsim_root).expanduser().resolve()), \
            str(Path(config.data.maps_root).expanduser().resolve())
    return "", ""


def jsonable(x: Any) -> Any:
    """A ConfigDict / dict / sequence as plain JSON values, dict keys sorted."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def build_fingerprint(config) -> dict[str, Any]:
    """Everything that changes the built examples (and nothing that does not, e.g. batch size)."""
    src = config.data.source
    if src not in SOURCES:
        raise ValueError(f"config.data.source is {src!r}; expected one of {SOURCES}")
    sizes = types.SceneSizes.from_config(config.data.sizes)
    fp = {
        "scene_spec": {k: [list(s), str(np.dtype(d))]
                       for k, (s, d) in types.scene_spec(sizes).items()},
        "sizes": jsonable(config.data.sizes),
        "source": src,
        "splits": list(splits(config)),
        "camera_jpeg_quality": camera_jpeg_quality(config),
    }
    if src == "synthetic":
        fp["synthetic"] = jsonable(config.data.synthetic)
    elif src == "navsim":
        fp["roots"] = list(source_roots(config))
    else:
        fp["random_scenes"] = int(config.data.random_scenes)
    # A skip_bad build may lack scenes a strict run must not silently go without. Only set
    # when true, so that the default (strict) datasets keep their names.
    if src != "random" and config.data.get("skip_bad", False):
        fp["skip_bad"] = True
    return fp


def tfds_config_name(config) -> str:
    """``<source>_<10 hex>``: the TFDS BuilderConfig name (and folder) of this config's data."""
    blob = json.dumps(build_fingerprint(config), sort_keys=True).encode()
    return f"{config.data.source}_{hashlib.sha1(blob).hexdigest()[:10]}"


def dataset_path(config) -> Path:
    """The built dataset's folder (``.../navsim_tfds/<name>/<version>``).

    Raises ``FileNotFoundError`` with the command to run when it has not been built.
    """
    base = data_dir(config) / "tfds" / BUILDER_NAME / tfds_config_name(config)
    path = base / DATASET_VERSION
    if (path / "dataset_info.json").is_file():
        return path
    other = sorted(p.parent.name for p in base.glob("*/dataset_info.json")
                   if not p.parent.name.startswith("incomplete"))
    if other:
        raise FileNotFoundError(
            f"the dataset at {base} was built as version(s) {other}, with another record layout "
            f"than this code reads ({DATASET_VERSION}); rebuild it with `python launch.py data` "
            f"and the same config")
    raise FileNotFoundError(
        f"no built dataset at {base} for this config (source={config.data.source!r}, "
        f"splits={list(splits(config))}); run `python launch.py data` with the same config")
