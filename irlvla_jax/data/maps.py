"""nuPlan GeoPackage map reader and the slice of the nuPlan map API that NAVSIM/PDM relies on.

Reads ``map.gpkg`` without nuplan-devkit (spec NAVSIM_FORMAT.md "Map 2", "Map 5"-"Map 7"):

* every layer is read with pyogrio (``fid_as_index``) and reprojected from its *declared* SRS to
  ``meta.projectedCoordSystem`` (a no-op when they agree; a layer without an SRS is taken as
  already projected);
* every object id is the **string** of the GeoPackage integer fid; fid spaces of different layers
  overlap, so lookups always name the layer;
* objects keep file (fid) order, because PDM tie-breaks depend on it.

Semantic layer names (the keys of :data:`LAYER_FILES`) are nuPlan's ``SemanticMapLayer`` names.
Geometry queries use shapely 2 ``STRtree``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyogrio
import shapely
from shapely.geometry import LineString, Point, Polygon

from irlvla_jax.data.errors import BadInputError

MAP_VERSION = "nuplan-maps-v1.0"
#: Log ``map_location`` values that are not folder names (navsim_scenario.py).
LOCATION_ALIASES = {"las_vegas": "us-nv-las-vegas-strip"}

ROADBLOCK, ROADBLOCK_CONNECTOR = "ROADBLOCK", "ROADBLOCK_CONNECTOR"
LANE, LANE_CONNECTOR = "LANE", "LANE_CONNECTOR"
INTERSECTION, CARPARK_AREA = "INTERSECTION", "CARPARK_AREA"
CROSSWALK, WALKWAYS, STOP_LINE = "CROSSWALK", "WALKWAYS", "STOP_LINE"

#: Semantic layer -> gpkg layer whose geometry answers proximity / nearest queries (as the devkit:
#: LANE_CONNECTOR queries use the connector *line* layer; its polygon is a separate layer).
LAYER_FILES = {
    LANE: "lanes_polygons",
    LANE_CONNECTOR: "lane_connectors",
    ROADBLOCK: "lane_groups_polygons",
    ROADBLOCK_CONNECTOR: "lane_group_connectors",
    INTERSECTION: "intersections",
    CARPARK_AREA: "carpark_areas",
    CROSSWALK: "crosswalks",
    WALKWAYS: "walkways",
    STOP_LINE: "stop_polygons",
}
_REQUIRED = ("lanes_polygons", "lane_connectors", "gen_lane_connectors_scaled_width_polygons",
             "baseline_paths", "lane_groups_polygons", "lane_group_connectors")


def resolve_location(location: str) -> str:
    """Log ``map_location`` -> map folder name (alias table, ``.gpkg`` suffix stripped)."""
    loc = location[:-5] if location.endswith(".gpkg") else location
    return LOCATION_ALIASES.get(loc, loc)


def find_gpkg(maps_root: str | os.PathLike, location: str) -> Path:
    """Path of ``map.gpkg`` for ``location`` under ``maps_root``.

    ``maps_root`` is ``$NUPLAN_MAPS_ROOT`` (holding ``nuplan-maps-v1.0.json``) or its parent.
    The version comes from the JSON (``[location]["version"]``); without a JSON the single
    ``<location>/<version>/map.gpkg`` found is used.
    """
    root = Path(maps_root)
    if not (root / f"{MAP_VERSION}.json").exists() and (root / MAP_VERSION).is_dir():
        root = root / MAP_VERSION
    loc = resolve_location(location)
    meta = root / f"{MAP_VERSION}.json"
    if meta.exists():
        try:
            version = json.loads(meta.read_text())[loc]["version"]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise BadInputError(meta, "missing_map", f"no version for map location {loc!r} ({e!r})",
                                "add the location to the JSON or check the log's map_location")
        path = root / loc / version / "map.gpkg"
    else:
        found = sorted((root / loc).glob("*/map.gpkg"))
        if len(found) != 1:
            raise BadInputError(root / loc, "missing_map",
                                f"expected exactly one <version>/map.gpkg for map location "
                                f"{loc!r}, found {len(found)}",
                                f"set data.maps_root to the folder holding {MAP_VERSION}.json")
        path = found[0]
    if not path.exists():
        raise BadInputError(path, "missing_map", f"no map file for map location {loc!r}",
                            "download the nuPlan maps (nuplan-maps-v1.1) into data.maps_root")
    return path


def discrete_path(line: LineString) -> np.ndarray:
    """nuPlan ``baseline_path.discrete_path``: one (x, y, heading) per vertex -> float64 [N, 3].

    heading_i = atan2 of segment i -> i+1; the last vertex repeats the previous heading.
    """
    xy = np.asarray(line.coords, np.float64)[:, :2]
    d = np.diff(xy, axis=0)
    h = np.arctan2(d[:, 1], d[:, 0])
    h = np.concatenate([h, h[-1:]])
    return np.concatenate([xy, h[:, None]], axis=1)


# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Lane:
    """A lane or a lane connector (``is_connector``). ``roadblock_id`` is the lane group (lanes)
    or lane-group connector (connectors). ``incoming``/``outgoing`` are lane / connector ids."""
    id: str
    is_connector: bool
    roadblock_id: str
    polygon: Polygon
    baseline: LineString
    speed_limit: float | None
    incoming: list[str]
    outgoing: list[str]
    lane_index: int = -1   # lanes only; smaller = further left

    @functools.cached_property
    def discrete_path(self) -> np.ndarray:
        """float64 [N, 3] (x, y, heading), see :func:`discrete_path`."""
        return discrete_path(self.baseline)


@dataclasses.dataclass
class Roadblock:
    """A roadblock (lane group) or roadblock connector (``is_connector``); ``interior`` are its
    lane (or lane-connector) ids in file order; ``incoming``/``outgoing`` are block ids."""
    id: str
    is_connector: bool
    polygon: Polygon
    interior: list[str]
    incoming: list[str]
    outgoing: list[str]


def _fid_str(v) -> str | None:
    """A numeric ``*_fid`` cell as the devkit's string id (NaN/None -> None)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(int(v))


def _edges(ids, sources, targets) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Graph edges ``ids[i]: sources[i] -> targets[i]`` as (outgoing, incoming) id lists per
    node, in file order (PDM's tie-breaks depend on it)."""
    out: dict[str, list[str]] = {}
    inc: dict[str, list[str]] = {}
    for eid, a, b in zip(ids, sources, targets):
        out.setdefault(a, []).append(eid)
        inc.setdefault(b, []).append(eid)
    return out, inc


def _optional_column(df, name: str) -> list:
    """A column's values, or None per row when the layer lacks that column."""
    return df[name].tolist() if name in df else [None] * len(df)


def _speed(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


class MapAPI:
    """One nuPlan map location, loaded once (see :meth:`load`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.crs = self._projected_crs()
        frames = {name: self._read(name, required=name in _REQUIRED)
                  for name in set(LAYER_FILES.values()) | set(_REQUIRED)}
        self._build(frames)

    @classmethod
    def load(cls, maps_root: str | os.PathLike, location: str) -> "MapAPI":
        """The map of ``location`` under ``maps_root``, cached per (root, location)."""
        return _load_cached(str(Path(maps_root).resolve()), resolve_location(location))

    # -- reading ----------------------------------------------------------------------------------
    def _projected_crs(self) -> str:
        try:
            meta = pyogrio.read_dataframe(self.path, layer="meta", read_geometry=False)
        except Exception as e:  # pyogrio raises DataSourceError/DataLayerError subclasses
            raise BadInputError(self.path, "bad_map", f"cannot read the 'meta' table ({e})",
                                "the file is not a nuPlan map.gpkg or is corrupt")
        row = meta[meta["key"] == "projectedCoordSystem"]
        if len(row) != 1:
            raise BadInputError(self.path, "bad_map", "table 'meta' has no single "
                                "'projectedCoordSystem' row", "the file is not a nuPlan map")
        return str(row["value"].iloc[0])

    def _read(self, layer: str, required: bool):
        try:
            gdf = pyogrio.read_dataframe(self.path, layer=layer, fid_as_index=True)
        except Exception as e:
            if required:
                raise BadInputError(self.path, "bad_map", f"cannot read layer {layer!r} ({e})",
                                    "the map file is incomplete or corrupt")
            return None
        if gdf.crs is not None and len(gdf):
            gdf = gdf.to_crs(self.crs)
        gdf.index = gdf.index.astype(str)
        gdf["fid"] = gdf.index
        return gdf

    def _build(self, f) -> None:
        def col(df, name, layer):
            if name not in df.columns:
                raise BadInputError(self.path, "bad_map", f"layer {layer!r} lacks column {name!r}",
                                    "the map file does not follow the nuPlan schema")
            return df[name].tolist()

        base = f["baseline_paths"]
        lane_base, conn_base = {}, {}
        for fid_l, fid_c, geom in zip(col(base, "lane_fid", "baseline_paths"),
                                      col(base, "lane_connector_fid", "baseline_paths"),
                                      base.geometry):
            if _fid_str(fid_l) is not None:
                lane_base[_fid_str(fid_l)] = geom
            elif _fid_str(fid_c) is not None:
                conn_base[_fid_str(fid_c)] = geom
        cpoly = f["gen_lane_connectors_scaled_width_polygons"]
        conn_poly = {_fid_str(v): g for v, g in zip(
            col(cpoly, "lane_connector_fid", "gen_lane_connectors_scaled_width_polygons"),
            cpoly.geometry)}

        lanes_df, conns_df = f["lanes_polygons"], f["lane_connectors"]
        exit_ids = [_fid_str(v) for v in col(conns_df, "exit_lane_fid", "lane_connectors")]
        entry_ids = [_fid_str(v) for v in col(conns_df, "entry_lane_fid", "lane_connectors")]
        # a connector leaves its exit lane and enters its entry lane
        lane_out, lane_in = _edges(conns_df.index, exit_ids, entry_ids)

        self.lanes: dict[str, Lane] = {}
        speeds = _optional_column(lanes_df, "speed_limit_mps")
        for lid, rb, idx, sp, geom in zip(
                lanes_df.index, col(lanes_df, "lane_group_fid", "lanes_polygons"),
                col(lanes_df, "lane_index", "lanes_polygons"), speeds, lanes_df.geometry):
            if lid not in lane_base:
                raise BadInputError(self.path, "bad_map", f"lane {lid} has no baseline_paths row",
                                    "the map file is incomplete")
            self.lanes[lid] = Lane(lid, False, _fid_str(rb), geom, lane_base[lid], _speed(sp),
                                   lane_in.get(lid, []), lane_out.get(lid, []),
                                   int(idx) if idx is not None and not
                                   (isinstance(idx, float) and math.isnan(idx)) else -1)
        speeds = _optional_column(conns_df, "speed_limit_mps")
        self.lane_connectors: dict[str, Lane] = {}
        for cid, rb, ex, en, sp in zip(conns_df.index, col(conns_df, "lane_group_connector_fid",
                                                            "lane_connectors"),
                                       exit_ids, entry_ids, speeds):
            if cid not in conn_base or cid not in conn_poly:
                raise BadInputError(self.path, "bad_map", f"lane connector {cid} lacks a baseline "
                                    "or a gen_lane_connectors_scaled_width_polygons row",
                                    "the map file is incomplete")
            self.lane_connectors[cid] = Lane(cid, True, _fid_str(rb), conn_poly[cid],
                                             conn_base[cid], _speed(sp),
                                             [ex] if ex else [], [en] if en else [])

        rb_df, rbc_df = f["lane_groups_polygons"], f["lane_group_connectors"]
        frm = [_fid_str(v) for v in col(rbc_df, "from_lane_group_fid", "lane_group_connectors")]
        to = [_fid_str(v) for v in col(rbc_df, "to_lane_group_fid", "lane_group_connectors")]
        rb_out, rb_in = _edges(rbc_df.index, frm, to)
        rb_lanes: dict[str, list[str]] = {}
        for lane in self.lanes.values():
            rb_lanes.setdefault(lane.roadblock_id, []).append(lane.id)
        rbc_lanes: dict[str, list[str]] = {}
        for c in self.lane_connectors.values():
            rbc_lanes.setdefault(c.roadblock_id, []).append(c.id)
        self.roadblocks = {i: Roadblock(i, False, g, rb_lanes.get(i, []), rb_in.get(i, []),
                                        rb_out.get(i, [])) for i, g in zip(rb_df.index, rb_df.geometry)}
        self.roadblock_connectors = {
            i: Roadblock(i, True, g, rbc_lanes.get(i, []), [a] if a else [], [b] if b else [])
            for i, g, a, b in zip(rbc_df.index, rbc_df.geometry, frm, to)}

        # Per semantic layer: ids (file order), geometries, STRtree.
        self._ids: dict[str, np.ndarray] = {}
        self._geoms: dict[str, np.ndarray] = {}
        self._trees: dict[str, shapely.STRtree] = {}
        self.stop_line_types: dict[str, int] = {}
        for layer, fname in LAYER_FILES.items():
            df = f[fname]
            ids = np.asarray(df.index if df is not None else [], dtype=object)
            geoms = np.asarray(df.geometry.values if df is not None else [], dtype=object)
            self._ids[layer], self._geoms[layer] = ids, geoms
            self._trees[layer] = shapely.STRtree(geoms)
            if layer == STOP_LINE and df is not None and "stop_polygon_type_fid" in df:
                self.stop_line_types = dict(zip(ids, df["stop_polygon_type_fid"].astype(int)))
        self._layer_geom = {layer: dict(zip(self._ids[layer], self._geoms[layer]))
                            for layer in LAYER_FILES}

    # -- the API ----------------------------------------------------------------------------------
    def ids(self, layer: str) -> list[str]:
        """All ids of a semantic layer, file order."""
        return list(self._ids[layer])

    def geometry(self, object_id: str, layer: str):
        """The geometry a layer's query sees (LANE_CONNECTOR: its line); None if absent."""
        return self._layer_geom[layer].get(object_id)

    def polygon(self, object_id: str, layer: str) -> Polygon | None:
        """The object's polygon (LANE_CONNECTOR: the scaled-width polygon); None if absent."""
        if layer == LANE_CONNECTOR:
            c = self.lane_connectors.get(object_id)
            return None if c is None else c.polygon
        return self._layer_geom[layer].get(object_id)

    def proximal_objects(self, xy: Sequence[float], radius: float,
                         layers: Iterable[str]) -> dict[str, list[str]]:
        """Ids per layer whose geometry intersects the axis-aligned square [x +- r] x [y +- r],
        in file order (nuPlan ``get_proximal_map_objects``). xy: (2,) metres, map frame."""
        x, y = float(xy[0]), float(xy[1])
        box = shapely.box(x - radius, y - radius, x + radius, y + radius)
        out = {}
        for layer in layers:
            idx = np.sort(self._trees[layer].query(box, predicate="intersects"))
            out[layer] = [self._ids[layer][i] for i in idx]
        return out

    def nearest_object(self, xy: Sequence[float], layer: str) -> tuple[str | None, float]:
        """(id, distance) of the layer object nearest to xy (2,); the first in file order on a
        tie; (None, inf) for an empty layer (nuPlan ``get_distance_to_nearest_map_object``)."""
        geoms = self._geoms[layer]
        if len(geoms) == 0:
            return None, math.inf
        d = shapely.distance(geoms, Point(float(xy[0]), float(xy[1])))
        i = int(np.argmin(d))
        return self._ids[layer][i], float(d[i])

    def roadblock(self, block_id: str) -> Roadblock | None:
        """ROADBLOCK first, then ROADBLOCK_CONNECTOR (PDM's ``_get_roadblock`` fallback)."""
        return self.roadblocks.get(block_id) or self.roadblock_connectors.get(block_id)

    # Graph edges alternate layers (lane -> connector -> lane, block -> block connector ->
    # block) and fid spaces overlap between layers, so neighbours are resolved by object kind.
    def interior(self, block: Roadblock) -> list[Lane]:
        """The block's lanes (roadblock) or lane connectors (roadblock connector), file order."""
        table = self.lane_connectors if block.is_connector else self.lanes
        return [table[i] for i in block.interior]

    def lane_successors(self, lane: Lane) -> list[Lane]:
        table = self.lanes if lane.is_connector else self.lane_connectors
        return [table[i] for i in lane.outgoing if i in table]

    def block_neighbours(self, block: Roadblock, forward: bool) -> list[Roadblock]:
        """Outgoing (forward) or incoming roadblocks / roadblock connectors of ``block``."""
        table = self.roadblocks if block.is_connector else self.roadblock_connectors
        return [table[i] for i in (block.outgoing if forward else block.incoming) if i in table]


@functools.lru_cache(maxsize=16)
def _load_cached(root: str, location: str) -> MapAPI:
    return MapAPI(find_gpkg(root, location))
