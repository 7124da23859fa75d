"""The one reduction of scorer output to the numbers a table reports: per-entry columns -> means.

    sub, details = scorer.score(scene, plans)
    row = summarise(score_columns(sub, details))   # {"epdms": ..., "ec": ..., "num_scenes": ...}
    tracking.print_table("navtest EPDMS", {"agent": row}, evaluate.COLUMNS)

``irlvla_jax.evaluate`` (policies, baselines) and ``irlvla_jax.submission`` (submission pickles)
both summarise through here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from irlvla_jax import types


def score_columns(sub: types.SubScores, details: Any) -> dict[str, np.ndarray]:
    """The scorer's per-entry results as numpy columns.

    sub: SubScores [...] (e.g. [B, K]); details: the scorer's ScoreDetails ([...] ``epdms``,
    ``pdms_v1``). Returns name -> [...] array for every sub-score, ``ec_weight``, ``epdms`` and
    ``pdms_v1``.
    """
    cols = {name: np.asarray(getattr(sub, name)) for name in (*types.SUBSCORE_NAMES, "ec_weight")}
    cols["epdms"] = np.asarray(details.epdms)
    cols["pdms_v1"] = np.asarray(details.pdms_v1)
    return cols


def summarise(per_entry: Mapping[str, Any], mask=None) -> dict[str, Any]:
    """Means over entries (scenes, or scene x candidate): the row of a results table.

    per_entry: name -> [...] arrays of one shape, as :func:`score_columns` returns (every
    sub-score, ``ec_weight``, ``epdms``, ``pdms_v1``); mask: bool [...] or None (entries to
    include). EPDMS, v1 PDMS and the sub-scores are means over all included entries; EC is the
    mean over the entries where its weight counts (a previous frame was scored; None if none).
    Returns a JSON-able dict: those means, ``ec_scenes`` (entries where EC counts) and
    ``num_scenes`` (entries included).
    """
    cols = {k: np.asarray(per_entry[k]) for k in ("epdms", "pdms_v1", *types.SUBSCORE_NAMES,
                                                  "ec_weight")}
    if mask is not None:
        m = np.asarray(mask, bool)
        if not m.any():
            raise ValueError("summarise: the mask selects no entries")
        cols = {k: v[m] for k, v in cols.items()}
    if cols["epdms"].size == 0:
        raise ValueError("summarise: no entries")
    res = {k: float(np.mean(cols[k])) for k in ("epdms", "pdms_v1", *types.SUBSCORE_NAMES)}
    w = cols["ec_weight"]
    res["ec"] = float(np.sum(cols["ec"] * w) / np.sum(w)) if np.sum(w) > 0 else None
    res["ec_scenes"] = int(np.sum(w))
    res["num_scenes"] = int(cols["epdms"].size)
    return res
