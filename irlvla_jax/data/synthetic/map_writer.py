"""Write a :class:`~irlvla_jax.data.synthetic.road.RoadMap` as a nuPlan ``map.gpkg``.

Layout and columns follow spec/NAVSIM_FORMAT.md (Map 1-5): ``{maps_root}/{location}/{version}/
map.gpkg`` plus ``{maps_root}/nuplan-maps-v1.0.json``. Like the real files, the vector layers are
stored in geographic WGS84 (EPSG:4326) while the ``meta`` table names the location's UTM zone as
``projectedCoordSystem``; a reader reprojects to it and gets back the world's metres. Feature ids
are the world's ids (one id space across layers, so ids never collide); rows are written in fid
order, which is the "file order" NAVSIM's tie-breaks depend on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
from shapely.geometry import LineString, Point

from irlvla_jax.data.synthetic.polyline import offset_polyline
from irlvla_jax.data.synthetic.road import LANE_WIDTH, MAP_LOCATIONS, RoadMap

MAP_VERSION = "nuplan-maps-v1.0"
NAN = float("nan")
_TURN_TYPE = {"straight": 0, "left": 1, "right": 2}


def write_versions_json(maps_root: Path) -> Path:
    """``{maps_root}/nuplan-maps-v1.0.json`` naming every location's version."""
    path = Path(maps_root) / f"{MAP_VERSION}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({loc: {"version": v[2]} for loc, v in
                                sorted(MAP_LOCATIONS.items())}, indent=2, sort_keys=True))
    return path


def map_path(maps_root: Path, location: str) -> Path:
    return Path(maps_root) / location / MAP_LOCATIONS[location][2] / "map.gpkg"


def _layers(road: RoadMap) -> dict[str, tuple[list[dict], str]]:
    """layer name -> (rows with 'fid' and 'geometry', geometry type)."""
    el = road.elements
    ids = iter(range(max(el) + 10_000, 10**9))   # fids for rows that have no world object
    lanes = sorted(road.lanes(), key=lambda e: e.fid)
    conns = sorted(road.connectors(), key=lambda e: e.fid)
    boundaries = [dict(fid=f, boundary_type_fid=t, geometry=g)
                  for f, (g, t) in sorted(road.boundaries.items())]
    L = {}
    L["lanes_polygons"] = ([dict(
        fid=e.fid, lane_fid=e.fid, lane_group_fid=e.group, lane_index=e.index,
        left_boundary_fid=e.left_boundary, right_boundary_fid=e.right_boundary,
        speed_limit_mps=e.speed_limit, lane_type_fid=0, width=e.width, geometry=e.polygon)
        for e in lanes], "Polygon")
    gen_polys, conn_rows = [], []
    for c in conns:
        lb, rb = next(ids), next(ids)
        boundaries += [dict(fid=lb, boundary_type_fid=3,
                            geometry=LineString(offset_polyline(c.xy, LANE_WIDTH / 2))),
                       dict(fid=rb, boundary_type_fid=3,
                            geometry=LineString(offset_polyline(c.xy, -LANE_WIDTH / 2)))]
        gen_polys.append(dict(fid=next(ids), lane_connector_fid=c.fid, left_boundary_fid=lb,
                              right_boundary_fid=rb, geometry=c.polygon))
        stop = el[c.exit_lane].stop_line
        conn_rows.append(dict(
            fid=c.fid, exit_lane_fid=c.exit_lane, entry_lane_fid=c.entry_lane,
            lane_group_connector_fid=c.group, speed_limit_mps=c.speed_limit,
            traffic_light_stop_line_fids=str(stop) if c.arm >= 0 else "",
            intersection_fid=c.node, exit_lane_group_fid=el[c.exit_lane].group,
            entry_lane_group_fid=el[c.entry_lane].group, turn_type_fid=_TURN_TYPE[c.turn],
            geometry=LineString(c.xy)))
    L["lane_connectors"] = (conn_rows, "LineString")
    L["gen_lane_connectors_scaled_width_polygons"] = (gen_polys, "Polygon")
    L["baseline_paths"] = ([dict(fid=next(ids), lane_fid=float(e.fid) if e.kind == "lane"
                                 else NAN,
                                 lane_connector_fid=float(e.fid) if e.kind == "connector"
                                 else NAN, path_type_fid=0 if e.kind == "lane" else 1,
                                 geometry=LineString(e.xy)) for e in lanes + conns],
                           "LineString")
    L["lane_groups_polygons"] = ([dict(fid=g.fid, left_boundary_fid=g.left_boundary,
                                       right_boundary_fid=g.right_boundary, geometry=g.polygon)
                                  for g in sorted(road.groups.values(), key=lambda g: g.fid)],
                                 "Polygon")
    L["lane_group_connectors"] = ([dict(fid=g.fid, from_lane_group_fid=g.from_group,
                                        to_lane_group_fid=g.to_group, intersection_fid=g.node,
                                        geometry=g.polygon)
                                   for g in sorted(road.group_connectors.values(),
                                                   key=lambda g: g.fid)], "Polygon")
    nodes = sorted(road.nodes.values(), key=lambda n: n.fid)
    L["intersections"] = ([dict(fid=n.fid, intersection_type_fid=0 if n.signalised else 1,
                                is_mini=False, geometry=n.box) for n in nodes], "Polygon")
    L["stop_polygons"] = ([dict(fid=f, stop_polygon_type_fid=2, lane_fid=lf, geometry=p)
                           for f, (p, lf) in sorted(road.stop_polygons.items())], "Polygon")
    cross = []
    for n in nodes:
        for ai, poly, _, _ in n.crosswalks:
            lanes_here = [lf for g in n.arms[ai][1:] for lf in road.groups[g].lanes]
            cross.append(dict(fid=next(ids), intersection_fids=str(n.fid),
                              lane_fids=",".join(map(str, lanes_here)), is_marked=True,
                              geometry=poly))
    L["crosswalks"] = (cross, "Polygon")
    L["walkways"] = ([dict(fid=f, geometry=p) for f, p in sorted(road.walkways.items())],
                     "Polygon")
    L["carpark_areas"] = ([dict(fid=f, heading=float(math.atan2(*(seg[-1] - seg[0])[::-1])),
                                geometry=p) for f, (p, seg, _) in sorted(road.carparks.items())],
                          "Polygon")
    L["generic_drivable_areas"] = ([dict(fid=f, geometry=p)
                                    for f, p in sorted(road.generic_areas.items())], "Polygon")
    L["road_segments"] = ([dict(fid=f, lane_group_fids=",".join(map(str, gs)), geometry=p)
                           for f, (p, gs) in sorted(road.road_segments.items())], "Polygon")
    L["boundaries"] = (sorted(boundaries, key=lambda r: r["fid"]), "LineString")
    L["traffic_lights"] = ([dict(fid=f, ori_mean_yaw=yaw, lane_fid=lf, geometry=Point(x, y))
                            for f, (x, y, yaw, lf) in sorted(road.traffic_light_points.items())],
                           "Point")
    L["dubins_nodes"] = ([dict(fid=next(ids), heading=float(e.heading[0]), lane_fid=e.fid,
                               geometry=Point(e.xy[0])) for e in lanes], "Point")
    return L


def write_map(road: RoadMap, maps_root: Path) -> Path:
    """Write ``road`` to ``{maps_root}/{location}/{version}/map.gpkg`` (replacing it)."""
    path = map_path(maps_root, road.location)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    # SQLite fsyncs every layer's commit otherwise (seconds per map); a crash mid-write only
    # loses this regenerable file.
    old = pyogrio.get_gdal_config_option("OGR_SQLITE_SYNCHRONOUS")
    pyogrio.set_gdal_config_options({"OGR_SQLITE_SYNCHRONOUS": "OFF"})
    try:
        _write_layers(road, path)
    finally:
        pyogrio.set_gdal_config_options({"OGR_SQLITE_SYNCHRONOUS": old})
    return path


def _write_layers(road: RoadMap, path: Path) -> None:
    for name, (rows, geom_type) in _layers(road).items():
        if not rows:
            raise ValueError(f"synthetic map {road.location}: layer {name} would be empty")
        gdf = gpd.GeoDataFrame(pd.DataFrame(rows), geometry="geometry", crs=road.epsg)
        bad = [t for t in gdf.geom_type.unique() if t != geom_type]
        if bad:
            raise ValueError(f"synthetic map {road.location}: layer {name} has {bad} "
                             f"geometries, expected {geom_type}")
        pyogrio.write_dataframe(gdf.to_crs("EPSG:4326"), path, layer=name, driver="GPKG",
                                geometry_type=geom_type)
    meta = pd.DataFrame({"key": ["projectedCoordSystem", "geographicCoordSystem", "version"],
                         "value": [road.epsg, "EPSG:4326", road.version]})
    pyogrio.write_dataframe(meta, path, layer="meta", driver="GPKG")


def read_layer(path: Path, layer: str) -> gpd.GeoDataFrame:
    """A layer the way the nuPlan devkit loads it: reprojected to ``projectedCoordSystem``,
    string index = fid, copied into a ``fid`` column (used by the tests)."""
    meta = gpd.read_file(path, layer="meta", engine="pyogrio")
    proj = meta.loc[meta["key"] == "projectedCoordSystem", "value"].iloc[0]
    gdf = pyogrio.read_dataframe(path, layer=layer, fid_as_index=True).to_crs(proj)
    gdf.index = gdf.index.astype(str)
    gdf["fid"] = gdf.index
    return gdf


