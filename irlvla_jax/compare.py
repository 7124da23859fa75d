"""Compare trained policies on the same held-out scenes: paired per-scene bootstrap CIs.

    python -m irlvla_jax.compare --baseline=IL=runs/tiny:il_policy \\
        RL=runs/tiny:rl_policy,runs/tiny_s1:rl_policy  "RL scorer=runs/scorer_reward_s0:rl_policy"

Each entry is NAME=RUN:POLICY[,RUN:POLICY...]: the plans a run's eval stage saved
(``<run>/eval/plans.npz``) for that policy; several runs (e.g. seeds) are averaged per scene.
Every plan is re-scored with the JAX EPDMS scorer on ``config.data.eval_split`` (EC against the
same run's plan for the previous frame, as the eval stage does). Printed and returned per entry:
mean EPDMS and sub-scores, mean |jerk| of the plans, and against the baseline the mean per-scene
EPDMS difference with a 95% paired bootstrap CI over scenes (10,000 resamples, seed 0), plus the
difference of each run alone where the entry has several.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

import numpy as np

from irlvla_jax import evaluate, tracking, types

PLAN_DT = 0.5


def mean_abs_jerk(plans: np.ndarray) -> np.ndarray:
    """[N,8,3] plans (from the origin at t = 0) -> [N] mean |jerk| (m/s^3): the norm of the
    third finite difference of the positions, the ego at rest at the origin not assumed (the
    first difference starts from the origin, jerk from the third pose on)."""
    xy = np.concatenate([np.zeros_like(plans[:, :1, :2]), plans[:, :, :2]], 1)
    vel = np.diff(xy, axis=1) / PLAN_DT
    acc = np.diff(vel, axis=1) / PLAN_DT
    jerk = np.diff(acc, axis=1) / PLAN_DT
    return np.linalg.norm(jerk, axis=-1).mean(-1)


def paired_bootstrap(diff: np.ndarray, num: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of the mean of per-scene differences [N], resampling scenes."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.shape[0], (num, diff.shape[0]))
    means = diff[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def parse_entry(text: str) -> tuple[str, list[tuple[str, str]]]:
    """'NAME=RUN:POLICY[,RUN:POLICY]' -> (NAME, [(run, policy), ...])."""
    if "=" not in text:
        raise ValueError(f"compare: entry {text!r} is not NAME=RUN:POLICY[,RUN:POLICY...]")
    name, rest = text.split("=", 1)
    runs = []
    for part in rest.split(","):
        if ":" not in part:
            raise ValueError(f"compare: {part!r} in {text!r} is not RUN:POLICY "
                             f"(e.g. runs/tiny:rl_policy)")
        run, policy = part.rsplit(":", 1)
        runs.append((run, policy))
    return name, runs


def _run_scores(run: str, policy: str, scenes: types.Scene, tokens: Sequence[str], prev
                ) -> dict[str, np.ndarray]:
    path = os.path.join(run, evaluate.PLANS_FILE)
    if not os.path.exists(path):
        raise SystemExit(f"compare: no plans at {path}: run `python launch.py eval` for that "
                         f"run first")
    toks, _, plans = evaluate.load_plans(path)
    if policy not in plans:
        raise SystemExit(f"compare: {path} has no plans of {policy!r} (it has "
                         f"{', '.join(plans)})")
    where = {t: i for i, t in enumerate(toks)}
    missing = [t for t in tokens if t not in where]
    if missing:
        raise SystemExit(f"compare: {path} misses {len(missing)} scenes of the eval split "
                         f"(e.g. {missing[0]}): was it evaluated on another split or subset?")
    p = plans[policy][[where[t] for t in tokens]]
    out = evaluate.score_plans(scenes, p, prev)
    out["jerk"] = mean_abs_jerk(p)
    return out


def compare(config, entries: Mapping[str, list[tuple[str, str]]], baseline: str
            ) -> dict[str, dict]:
    """entries: name -> [(run dir, policy)]; baseline: one of the names. Returns per name the
    mean metrics and, for the others, the paired difference in EPDMS vs the baseline."""
    from irlvla_jax.data.loader import load_split_numpy
    limit = config.eval.num_scenes or None
    scenes, metas = load_split_numpy(config, config.data.eval_split, limit=limit)
    tokens = [m.token for m in metas]
    prev = evaluate.previous_index(metas)
    per = {name: [_run_scores(r, p, scenes, tokens, prev) for r, p in runs]
           for name, runs in entries.items()}
    base = np.mean([s["epdms"] for s in per[baseline]], 0)
    result = {}
    for name, scores in per.items():
        row = {k: float(np.mean([s[k].mean() for s in scores]))
               for k in ("epdms", "nc", "dac", "ddc", "ep", "ttc", "lk", "hc", "jerk")}
        ecw = [s["ec_weight"] > 0 for s in scores]
        row["ec"] = float(np.mean([s["ec"][w].mean() for s, w in zip(scores, ecw)]))
        row["runs"] = len(scores)
        if name != baseline:
            diff = np.mean([s["epdms"] for s in scores], 0) - base
            lo, hi = paired_bootstrap(diff)
            row.update(d_epdms=float(diff.mean()), ci_lo=lo, ci_hi=hi)
            if len(scores) > 1:
                row["d_epdms_per_run"] = [float((s["epdms"] - base).mean()) for s in scores]
        result[name] = row
    result["_meta"] = {"num_scenes": len(tokens), "split": config.data.eval_split,
                       "baseline": baseline, "bootstrap": "paired over scenes, 10000, seed 0"}
    return result


COLUMNS = ["runs", "epdms", "d_epdms", "ci_lo", "ci_hi", "nc", "dac", "ddc", "ep", "ttc", "ec",
           "jerk"]


def main(argv):
    from absl import flags
    f = flags.FLAGS
    if len(argv) < 2 or not f.baseline:
        raise SystemExit(__doc__)
    entries = dict(parse_entry(a) for a in argv[1:])
    bname, bruns = parse_entry(f.baseline)
    entries = {bname: bruns, **entries}
    result = compare(f.config, entries, bname)
    meta = result.pop("_meta")
    tracking.print_table(f"{meta['split']} ({meta['num_scenes']} scenes), paired vs {bname}",
                         result, COLUMNS)
    if f.out:
        tracking.write_json(f.out, {**result, "_meta": meta})
    return 0


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config_flags.DEFINE_config_file("config", os.path.join(repo, "configs", "tiny.py"),
                                    "Config whose eval split the runs were evaluated on.")
    flags.DEFINE_string("baseline", None, "NAME=RUN:POLICY[,RUN:POLICY...] to compare against.")
    flags.DEFINE_string("out", None, "Also write the result as JSON here.")
    tracking.configure_console()
    sys.exit(app.run(main))
