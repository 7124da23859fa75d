"""Per-metric summaries of scorer output: a JSON-able dict and a rich table.

    rows = {"agent": summarise(sub), "pdm_closed": summarise(ref_sub)}
    print_table(rows, title="navtest EPDMS")
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import rich.console
import rich.table

from irlvla_jax import types

#: Column order of the table: the nine sub-scores, then the aggregates.
COLUMNS = types.SUBSCORE_NAMES + ("epdms", "pdms_v1", "count")


def summarise(sub: types.SubScores, pdms_v1=None, mask=None) -> dict[str, float]:
    """Mean of each sub-score, EPDMS (and v1 PDMS if given) over all entries.

    sub: SubScores [...] (e.g. [B, K]); pdms_v1: [...] or None; mask: bool [...] or None
    (entries to include). EC is averaged over entries whose EC weight is 1 (it does not count
    elsewhere). Returns a JSON-able dict: name -> float, plus ``count``.
    """
    m = np.ones(np.shape(sub.nc), bool) if mask is None else np.asarray(mask, bool)
    if not m.any():
        raise ValueError("summarise: the mask selects no entries")
    out = {n: float(np.asarray(getattr(sub, n))[m].mean()) for n in types.SUBSCORE_NAMES}
    ec_m = m & (np.asarray(sub.ec_weight) > 0)
    out["ec"] = float(np.asarray(sub.ec)[ec_m].mean()) if ec_m.any() else float("nan")
    out["epdms"] = float(np.asarray(sub.epdms())[m].mean())
    if pdms_v1 is not None:
        out["pdms_v1"] = float(np.asarray(pdms_v1)[m].mean())
    out["count"] = int(m.sum())
    return out


def make_table(rows: Mapping[str, Mapping[str, float]], title: str = "EPDMS") -> rich.table.Table:
    """A rich table: one row per entry of ``rows`` (name -> :func:`summarise` dict); scores in
    percent, missing values as '-'."""
    table = rich.table.Table(title=title)
    table.add_column("")
    for c in COLUMNS:
        table.add_column(c.upper(), justify="right")
    for name, row in rows.items():
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                cells.append("-")
            elif c == "count":
                cells.append(str(int(v)))
            else:
                cells.append(f"{100.0 * v:.1f}")
        table.add_row(name, *cells)
    return table


def print_table(rows: Mapping[str, Mapping[str, float]], title: str = "EPDMS",
                console: rich.console.Console | None = None) -> None:
    """Print :func:`make_table` to ``console`` (stdout by default)."""
    (console or rich.console.Console()).print(make_table(rows, title))
