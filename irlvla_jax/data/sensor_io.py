"""The NAVSIM sensor-blob file formats: JPEG camera images and binary PCD v0.7 point clouds.

Written by the synthetic world (``irlvla_jax.data.synthetic``) and read by the NAVSIM reader
(``navsim_reader.py``), with the layout nuPlan/NAVSIM's ``LidarPointCloud`` uses. Also the
in-memory JPEG codec of the TFDS dataset's cameras (:func:`encode_jpeg`, :func:`decode_jpeg`).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

_PCD_FIELDS = ("x", "y", "z", "intensity", "ring", "lidar_info")


def write_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int = 90) -> None:
    """Write uint8 [H,W,3] RGB as a JPEG (creating parent folders)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"write_jpeg({path}): expected uint8 [H,W,3], got {image.dtype} "
                         f"{image.shape}")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=quality)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """uint8 [H,W,3] RGB -> JPEG bytes (Pillow/libjpeg, baseline, 4:2:0 chroma, ``quality``)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_jpeg: expected uint8 [H,W,3], got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpeg(data: bytes, hw: tuple[int, int]) -> np.ndarray:
    """JPEG bytes -> uint8 [H,W,3] RGB; deterministic for one Pillow/libjpeg build.

    Raises ValueError when the bytes do not decode (truncated or corrupt) or the image is not
    ``hw`` (height, width).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise ValueError(f"not a JPEG ({im.format})")
            im.load()                       # a truncated stream raises here
            arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot decode JPEG of {len(data)} bytes: {e}") from None
    if arr.shape != (*hw, 3):
        raise ValueError(f"JPEG is {arr.shape[1]}x{arr.shape[0]}, expected {hw[1]}x{hw[0]}")
    return arr


def write_pcd(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write float32 [6,N] points (x, y, z, intensity, ring, lidar_info) as a binary PCD v0.7
    file, the layout nuPlan/NAVSIM ``LidarPointCloud`` reads (one interleaved record a point)."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[0] != len(_PCD_FIELDS):
        raise ValueError(f"write_pcd({path}): expected [6,N] points, got {points.shape}")
    n = points.shape[1]
    header = "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format",
        "VERSION 0.7",
        "FIELDS " + " ".join(_PCD_FIELDS),
        "SIZE " + " ".join(["4"] * 6),
        "TYPE " + " ".join(["F"] * 6),
        "COUNT " + " ".join(["1"] * 6),
        f"WIDTH {n}",
        "HEIGHT 1",
        "VIEWPOINT 0 0 0 1 0 0 0",
        f"POINTS {n}",
        "DATA binary",
        "",
    ]).encode("ascii")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(points.T, dtype="<f4").tobytes())


_PCD_TYPES = {"F": "f", "I": "i", "U": "u"}


def read_pcd(path: str | os.PathLike) -> np.ndarray:
    """Read a binary PCD file -> float32 [6,N] (x, y, z, intensity, ring, lidar_info).

    Accepts any field sizes/types the format allows (F/I/U, COUNT 1) as long as those six fields
    are present. Raises ValueError naming the file for a malformed header, ascii/compressed
    data, missing fields or a truncated body.
    """
    with open(path, "rb") as f:
        raw = f.read()
    header: dict[str, list[str]] = {}
    pos = 0
    while "data" not in header:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{path}: PCD header ends before its DATA line (truncated or not a "
                             "PCD file)")
        try:
            line = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: PCD header has non-text bytes at offset {pos}") from None
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        header[key.lower()] = vals
    for key in ("fields", "size", "type", "points"):
        if key not in header:
            raise ValueError(f"{path}: PCD header lacks {key.upper()}")
    fields, data = header["fields"], header["data"]
    if data != ["binary"]:
        raise ValueError(f"{path}: PCD DATA {' '.join(data)!r} not supported (binary expected)")
    count = header.get("count", ["1"] * len(fields))
    if not len(fields) == len(header["size"]) == len(header["type"]) == len(count):
        raise ValueError(f"{path}: PCD FIELDS/SIZE/TYPE/COUNT have different lengths")
    if any(c != "1" for c in count):
        raise ValueError(f"{path}: PCD COUNT must be 1 for every field, got {count}")
    try:
        dtype = np.dtype([(name, f"<{_PCD_TYPES[t]}{int(s)}")
                          for name, t, s in zip(fields, header["type"], header["size"])])
        n = int(header["points"][0])
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad PCD SIZE/TYPE/POINTS ({e})") from None
    missing = [k for k in _PCD_FIELDS if k not in fields]
    if missing:
        raise ValueError(f"{path}: PCD lacks fields {missing} (has {fields})")
    body = raw[pos:]
    if len(body) < n * dtype.itemsize:
        raise ValueError(f"{path}: truncated PCD: {n} points need {n * dtype.itemsize} bytes, "
                         f"file has {len(body)}")
    # Trailing bytes past the points are tolerated: real nuPlan files carry zero padding.
    rec = np.frombuffer(body, dtype, count=n)
    return np.stack([rec[k].astype(np.float32) for k in _PCD_FIELDS], 0)
