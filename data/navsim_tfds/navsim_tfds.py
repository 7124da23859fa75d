"""TFDS builder: NAVSIM scenes (the :class:`irlvla_jax.types.Scene` contract) as ArrayRecord.

One example = one scene: every ``types.scene_spec(sizes)`` field as a fixed-shape ``Tensor``
feature (exact shape and dtype) plus the host metadata strings of :class:`types.SceneMeta`,
except the cameras: with ``jpeg_quality`` > 0 (the default, 90) they are stored as
``cameras_jpeg``, a [C] tensor of JPEG bytes at the model's resolution (Pillow-encoded here,
decoded by the loader in its grain workers: ``loader.decode_example``); with 0 as the raw uint8
``cameras`` tensor. No TensorFlow is needed to build or read it (see
``irlvla_jax/data/prepare.py``).

The sizes come from the run config, so the config is a :class:`NavsimConfig` made from it
(``NavsimConfig.from_run_config(config)``); its name hashes everything that changes the examples
(``irlvla_jax/data/dataset_id.py``). There are no predefined ``BUILDER_CONFIGS``: TFDS refuses a
run-made config named like a predefined one, and a predefined config would pin the roots of the
machine that imported it. Build and read through ``irlvla_jax.data.prepare.prepare_data`` /
``irlvla_jax.data.loader``.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from irlvla_jax import types
from irlvla_jax.data import dataset_id
from irlvla_jax.data.errors import SkipReport
from irlvla_jax.data.sensor_io import encode_jpeg

# Large fields are mostly padding (masks, rasters, empty polygon slots): zlib shrinks them a lot
# and decodes at memory speed. Small ones are stored raw (zlib framing would cost more).
_ZLIB_MIN_ELEMENTS = 256
META_TEXT = ("token", "log_name", "map_location", "previous_token")
CAMERAS_JPEG = dataset_id.CAMERAS_JPEG    # [C] JPEG bytes, when jpeg_quality > 0


def features(sizes: types.SceneSizes, jpeg_quality: int = dataset_id.DEFAULT_JPEG_QUALITY
             ) -> tfds.features.FeaturesDict:
    """The FeaturesDict of one example: Scene fields (``scene_spec``) + metadata strings; the
    cameras as ``cameras_jpeg`` [C] JPEG bytes when ``jpeg_quality`` > 0."""
    feats: dict[str, Any] = {}
    for name, (shape, dtype) in types.scene_spec(sizes).items():
        if name == "cameras" and jpeg_quality > 0:
            feats[CAMERAS_JPEG] = tfds.features.Tensor(shape=shape[:1], dtype=np.object_)
            continue
        big = int(np.prod(shape, dtype=np.int64)) >= _ZLIB_MIN_ELEMENTS
        feats[name] = tfds.features.Tensor(
            shape=shape, dtype=dtype,
            encoding=tfds.features.Encoding.ZLIB if big else tfds.features.Encoding.NONE)
    for name in META_TEXT:
        feats[name] = tfds.features.Text()       # previous_token: "" when there is none
    feats["track_tokens"] = tfds.features.Sequence(tfds.features.Text())
    return tfds.features.FeaturesDict(feats)


@dataclasses.dataclass(eq=False)
class NavsimConfig(tfds.core.BuilderConfig):
    """What to build. ``source``: "synthetic" | "navsim" (both read by ``SceneReader``) or
    "random" (random-content scenes from :func:`random_scene`, for pipeline tests)."""
    sizes: types.SceneSizes = dataclasses.field(default_factory=types.SceneSizes)
    source: str = "synthetic"
    navsim_root: str = ""
    maps_root: str = ""
    splits: tuple[str, ...] = ()
    skip_bad: bool = False
    random_scenes: int = 16
    jpeg_quality: int = dataset_id.DEFAULT_JPEG_QUALITY

    @classmethod
    def from_run_config(cls, config) -> "NavsimConfig":
        """From a run config (``configs/*.py``); the name changes whenever the examples would."""
        navsim_root, maps_root = dataset_id.source_roots(config)
        return cls(
            name=dataset_id.tfds_config_name(config),
            description=f"{config.data.source} scenes, splits {list(dataset_id.splits(config))}",
            sizes=types.SceneSizes.from_config(config.data.sizes),
            source=config.data.source,
            navsim_root=navsim_root,
            maps_root=maps_root,
            splits=dataset_id.splits(config),
            skip_bad=bool(config.data.skip_bad),
            random_scenes=int(config.data.random_scenes),
            jpeg_quality=dataset_id.camera_jpeg_quality(config),
        )


class Builder(tfds.core.GeneratorBasedBuilder):
    """NAVSIM scenes; configs are made from run configs (``NavsimConfig.from_run_config``)."""

    VERSION = tfds.core.Version(dataset_id.DATASET_VERSION)
    RELEASE_NOTES = {"1.0.0": "Scene contract of irlvla_jax/types.py, ArrayRecord, no TF.",
                     "2.0.0": "Cameras as JPEG bytes at the model's resolution (cameras_jpeg).",
                     "3.0.0": "Agents and traffic-light states at 0 .. 5 s (11 frames, was 9)."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS's default probes the optional ``importlib_resources`` backport (absent here);
        # this file is where the builder lives, which is all TFDS wants to know.
        return epath.Path(__file__)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: The scenes the reader skipped for bad input (all splits), after a build.
        self.skip_report = SkipReport()

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="NAVSIM v2 scenes for IRL-VLA (irlvla_jax.types.Scene), fixed shapes.",
            features=features(self.builder_config.sizes, self.builder_config.jpeg_quality),
            homepage="https://github.com/autonomousvision/navsim",
        )

    def _split_generators(self, dl_manager):
        del dl_manager   # inputs are local folders, nothing to download
        cfg = self.builder_config
        if not cfg.splits:
            raise ValueError(f"builder config {cfg.name!r} names no splits")
        return {dataset_id.tfds_split(split): self._generate_examples(split)
                for split in cfg.splits}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        cfg = self.builder_config
        if cfg.source == "random":
            for i in range(cfg.random_scenes):
                scene, meta = random_scene(cfg.sizes, split, i)
                yield meta.token, _example(scene, meta, cfg.jpeg_quality)
            return
        from irlvla_jax.data.navsim_reader import SceneReader   # heavy; only for real builds
        reader = SceneReader(cfg.navsim_root, cfg.maps_root, cfg.sizes, cfg.skip_bad)
        for scene, meta in reader.iter_split(split):
            types.check_scene(scene, cfg.sizes, where=f"{split} scene {meta.token}", batch=())
            yield meta.token, _example(scene, meta, cfg.jpeg_quality)
        self.skip_report.merge(reader.skip_report)


def _example(scene: dict[str, np.ndarray], meta: types.SceneMeta, jpeg_quality: int
             ) -> dict[str, Any]:
    ex = {k: np.asarray(scene[k]) for k in scene}
    if jpeg_quality > 0:
        cams = ex.pop("cameras")
        ex[CAMERAS_JPEG] = np.array([encode_jpeg(c, jpeg_quality) for c in cams], dtype=object)
    ex.update(token=meta.token, log_name=meta.log_name, map_location=meta.map_location,
              previous_token=meta.previous_token or "", track_tokens=list(meta.track_tokens))
    return ex


# ----------------------------------------------------------------------------------------------
def random_scene(sizes: types.SceneSizes, split: str, index: int
                 ) -> tuple[dict[str, np.ndarray], types.SceneMeta]:
    """A random-content scene with every ``scene_spec`` shape/dtype, deterministic in
    (split, index). Not geometrically meaningful: it exercises storage and loading only. The
    cameras are smooth pictures (gradients and flat boxes, :func:`_random_pictures`), so that
    their JPEG round trip is within the tolerance of camera images, not of white noise.

    Returns (dict of numpy arrays matching ``scene_spec(sizes)``, its SceneMeta).
    """
    rng = np.random.default_rng([zlib.crc32(split.encode()), index])
    enum_sizes = {"agent_class": len(types.AGENT_CLASSES),
                  "map_polygon_type": len(types.MAP_POLYGON_TYPES),
                  "meta_action": types.NUM_META_ACTIONS}
    scene = {}
    for name, (shape, dtype) in types.scene_spec(sizes).items():
        if dtype == np.bool_:
            v = rng.random(shape) < 0.5
        elif name == "cameras":
            v = _random_pictures(rng, shape)
        elif dtype == np.uint8:
            v = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype == np.int32:
            v = rng.integers(0, enum_sizes.get(name, 100), shape).astype(np.int32)
        else:
            v = rng.normal(0.0, 10.0, shape).astype(np.float32)
        scene[name] = np.asarray(v, dtype)
    n_tracks = int(scene["agent_valid"].any(-1).sum())
    meta = types.SceneMeta(
        token=f"{index:016x}", log_name=f"random_{split}", map_location="us-nv-las-vegas-strip",
        previous_token=None if index == 0 else f"{index - 1:016x}",
        track_tokens=[f"track{index}_{j}" for j in range(n_tracks)], split=split,
        scene_index=index)
    return scene, meta


def _random_pictures(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 [..., H, W, 3]: per picture a colour gradient, two boxes a brightness step off
    it, and mild noise (sigma 1 level): smooth like camera images, not like white noise."""
    *lead, h, w, _ = shape
    n = int(np.prod(lead, dtype=np.int64))
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        a, gx, gy = rng.uniform(60, 190, 3), rng.uniform(-50, 50, 3), rng.uniform(-50, 50, 3)
        img = a + gx * xx[..., None] + gy * yy[..., None]
        for _ in range(2):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            img[y0:y0 + max(1, h // 3), x0:x0 + max(1, w // 3)] += rng.uniform(-60, 60)
        out[i] = img + rng.normal(0.0, 1.0, img.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(shape)
