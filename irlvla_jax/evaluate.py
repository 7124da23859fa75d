"""EPDMS evaluation: policies (and baselines) planned on held-out scenes, scored by the JAX scorer.

    python launch.py eval                          # IL vs RL policy (+ baselines) -> <workdir>/eval/eval.json
    python -m irlvla_jax.evaluate --submission sub.pkl --config configs/navsim.py

A *planner* is any callable ``plan(scene_batch) -> np.ndarray [B, 8, 3]`` (rear-axle poses in
the t = 0 ego frame). ``evaluate_planners`` plans every held-out scene, scores the plans with
:func:`irlvla_jax.sim.scorer.score` in jitted chunks, and reduces per-scene sub-scores to the
per-policy table (EPDMS, v1 PDMS and each sub-metric's mean).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Mapping

import jax
import numpy as np

from irlvla_jax import tracking, types

Planner = Callable[[types.Scene], np.ndarray]
COLUMNS = ["epdms", "pdms_v1", *types.SUBSCORE_NAMES]


# ---------------------------------------------------------------------------------------------
# Baselines

def constant_velocity_plan(scene: types.Scene) -> np.ndarray:
    """Keep the current body-frame velocity and heading for 4 s: [B, 8, 3] (NAVSIM's CV agent)."""
    v = np.asarray(scene.ego_velocity, np.float32)                      # [B, 2]
    t = 0.5 * np.arange(1, types.PLAN_LEN + 1, dtype=np.float32)        # [8]
    xy = v[:, None, :] * t[None, :, None]
    return np.concatenate([xy, np.zeros_like(xy[..., :1])], axis=-1)


def expert_plan(scene: types.Scene) -> np.ndarray:
    """The logged human trajectory (the 'human' row of NAVSIM's tables): [B, 8, 3]."""
    return np.asarray(scene.expert_future)[:, : types.PLAN_LEN]


# ---------------------------------------------------------------------------------------------
# Scoring

_score_jit = None


def _scorer():
    """scorer.score with the previous frame's simulated plan for EC, jitted once."""
    global _score_jit
    if _score_jit is None:
        from irlvla_jax.sim import scorer, simulate

        def fn(scene, plans, prev_scene, prev_plans):
            prev_states = jax.vmap(simulate.simulate_plan)(prev_scene, prev_plans)
            return scorer.score(scene, plans, prev_states)
        _score_jit = jax.jit(fn)
    return _score_jit


def _take(scene: types.Scene, idx: np.ndarray) -> types.Scene:
    return jax.tree.map(lambda x: np.asarray(x)[idx], scene)


def previous_index(metas) -> np.ndarray:
    """[N] index of the scene whose token is each scene's previous frame (-1: not in the set).

    NAVSIM's extended comfort compares a plan with the plan the agent made for the frame 0.5 s
    earlier, so EC counts only where that frame is also evaluated."""
    where = {m.token: i for i, m in enumerate(metas)}
    return np.asarray([where.get(m.previous_token or "", -1) for m in metas], np.int64)


def score_plans(scenes: types.Scene, plans: np.ndarray, prev_index: np.ndarray | None = None,
                chunk: int = 16) -> dict[str, np.ndarray]:
    """Score one plan per scene. scenes [N] (numpy), plans [N, 8, 3], prev_index [N] (index of
    each scene's previous frame among the N, -1 for none; None: EC is not scored) -> dict of
    [N] arrays (every sub-metric, ``epdms``, ``pdms_v1``, ``ec_weight``). Chunks are padded to
    ``chunk`` so the scorer compiles once."""
    plans = np.asarray(plans, np.float32)
    n = plans.shape[0]
    if plans.shape != (n, types.PLAN_LEN, 3):
        raise ValueError(f"plans must be [N, {types.PLAN_LEN}, 3], got {plans.shape}")
    if not np.isfinite(plans).all():
        bad = np.where(~np.isfinite(plans).all(axis=(1, 2)))[0]
        raise ValueError(f"plans of scenes {bad[:10].tolist()} hold NaN/inf; a planner must "
                         f"return finite poses")
    prev_index = np.full(n, -1) if prev_index is None else np.asarray(prev_index)
    # EC counts only where the previous frame's plan exists.
    scenes = scenes.replace(has_previous=np.asarray(scenes.has_previous) & (prev_index >= 0))
    prev_safe = np.where(prev_index >= 0, prev_index, np.arange(n))
    out: dict[str, list[np.ndarray]] = {}
    fn = _scorer()
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk)
        real = idx < n
        idx = np.where(real, idx, n - 1)
        sub, details = fn(_take(scenes, idx), plans[idx][:, None],
                          _take(scenes, prev_safe[idx]), plans[prev_safe[idx]])
        cols = {name: getattr(sub, name) for name in (*types.SUBSCORE_NAMES, "ec_weight")}
        cols["epdms"] = details.epdms
        cols["pdms_v1"] = details.pdms_v1
        for k, v in cols.items():
            out.setdefault(k, []).append(np.asarray(v)[:, 0][real])
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize(per_scene: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Scene means; EC is averaged only over scenes where it counts (has_previous)."""
    res = {k: float(np.mean(per_scene[k])) for k in ("epdms", "pdms_v1", *types.SUBSCORE_NAMES)}
    w = per_scene["ec_weight"]
    res["ec"] = float(np.sum(per_scene["ec"] * w) / np.sum(w)) if np.sum(w) > 0 else None
    res["ec_scenes"] = int(np.sum(w))
    res["num_scenes"] = int(len(per_scene["epdms"]))
    return res


def l2_errors(plans: np.ndarray, scenes: types.Scene) -> dict[str, float]:
    """Mean L2 displacement to the expert at 1, 2, 3, 4 s (metres)."""
    d = np.linalg.norm(np.asarray(plans)[..., :2] - expert_plan(scenes)[..., :2], axis=-1)
    return {f"l2_{s}s": float(d[:, 2 * s - 1].mean()) for s in (1, 2, 3, 4)}


def evaluate_planners(planners: Mapping[str, Planner], scenes: types.Scene,
                      batch_size: int = 8, metas=None
                      ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Plan and score every scene with every planner; with ``metas`` (SceneMeta per scene) EC
    compares each plan with the same planner's plan for the previous frame.

    Returns (table: name -> summary dict, plans: name -> [N, 8, 3])."""
    prev = previous_index(metas) if metas is not None else None
    n = int(np.shape(scenes.speed_limit)[0])
    table, all_plans = {}, {}
    for name, planner in planners.items():
        chunks = []
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            chunks.append(np.asarray(planner(_take(scenes, idx)), np.float32))
        plans = np.concatenate(chunks)
        per_scene = score_plans(scenes, plans, prev)
        table[name] = {**summarize(per_scene), **l2_errors(plans, scenes)}
        all_plans[name] = plans
    return table, all_plans


# ---------------------------------------------------------------------------------------------
# The eval stage

def _policy_planners(config, workdir: str) -> dict[str, Planner]:
    """The trained policies found under workdir (IL always tried first, then RL)."""
    found = {}
    for name, module, sub in (("il_policy", "irlvla_jax.train.il", "il"),
                              ("rl_policy", "irlvla_jax.train.ppo", "rl")):
        if not os.path.isdir(os.path.join(workdir, sub)):
            continue
        try:
            mod = __import__(module, fromlist=["load_planner"])
        except ImportError:
            continue
        loader = getattr(mod, "load_planner", None)
        if loader is not None:
            found[name] = loader(config, workdir)
    return found


def save_bev_examples(path_prefix: str, scenes: types.Scene, plans: Mapping[str, np.ndarray],
                      count: int = 4) -> list[str]:
    """BEV PNGs of the first ``count`` scenes with every policy's plan."""
    from irlvla_jax import viz
    paths = []
    n = int(np.shape(scenes.speed_limit)[0])
    for i in range(min(count, n)):
        one = jax.tree.map(lambda x: np.asarray(x)[i], scenes)
        p = f"{path_prefix}_{i}.png"
        viz.save_scene_bev(p, one, plans={k: v[i] for k, v in plans.items()},
                           title=f"held-out scene {i}")
        paths.append(p)
    return paths


def run(config, workdir: str) -> dict:
    """``python launch.py eval``: every available policy and the baselines on the eval split."""
    from irlvla_jax.data.loader import load_split_numpy
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    limit = config.eval.num_scenes or None
    scenes, metas = load_split_numpy(config, config.data.eval_split, limit=limit)
    planners: dict[str, Planner] = {"human": expert_plan, "constant_velocity":
                                    constant_velocity_plan}
    policies = _policy_planners(config, workdir)
    if not policies:
        print("eval: no trained policy under", workdir, "- run `python launch.py il` first; "
              "scoring the baselines only")
    planners.update(policies)
    table, plans = evaluate_planners(planners, scenes, metas=metas)
    result = {"split": config.data.eval_split, "policies": table}
    result["bev"] = save_bev_examples(os.path.join(out_dir, "bev"), scenes,
                                      {k: v for k, v in plans.items() if k != "human"})
    tracking.write_json(os.path.join(out_dir, "eval.json"), result)
    tracking.print_table(f"EPDMS on {config.data.eval_split} ({table['human']['num_scenes']} "
                         f"scenes)", table, COLUMNS + ["l2_2s"])
    return result


# ---------------------------------------------------------------------------------------------
# NAVSIM-style submission pickles

class _LenientUnpickler(pickle.Unpickler):
    """Reads submission pickles without the navsim package: unknown classes become dicts."""

    def find_class(self, module, name):
        if module.startswith(("numpy", "builtins", "collections", "copyreg", "_codecs")):
            return super().find_class(module, name)
        return type(name, (dict,), {"__setstate__": lambda self, st: self.update(
            st if isinstance(st, dict) else {"state": st})})


def read_submission(path: str) -> dict[str, np.ndarray]:
    """token -> poses [8, 3] from a NAVSIM submission pickle (first_stage_predictions, the
    Trajectory objects' ``poses``) or a plain ``{token: array}`` pickle."""
    try:
        with open(path, "rb") as f:
            obj = _LenientUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the submission pickle ({e})") from e
    preds: dict[str, Any] = {}
    if isinstance(obj, dict) and "first_stage_predictions" in obj:
        for part in obj["first_stage_predictions"]:
            preds.update(part)
    elif isinstance(obj, dict):
        preds = obj
    else:
        raise ValueError(f"{path}: expected a dict (NAVSIM submission or token -> poses), "
                         f"got {type(obj).__name__}")
    out = {}
    for token, traj in preds.items():
        poses = traj.get("poses") if isinstance(traj, dict) else traj
        poses = np.asarray(poses, np.float32)
        if poses.shape != (types.PLAN_LEN, 3):
            raise ValueError(f"{path}: token {token}: poses have shape {poses.shape}, expected "
                             f"({types.PLAN_LEN}, 3)")
        out[str(token)] = poses
    return out


def score_submission(config, path: str) -> dict:
    """Score a submission on ``config.data.eval_split``; prints and returns the table."""
    from irlvla_jax.data.loader import load_split_numpy
    preds = read_submission(path)
    scenes, metas = load_split_numpy(config, config.data.eval_split)
    keep = [i for i, m in enumerate(metas) if m.token in preds]
    missing = len(metas) - len(keep)
    if not keep:
        raise ValueError(f"{path}: none of its {len(preds)} tokens are scenes of "
                         f"{config.data.eval_split}")
    sub = _take(scenes, np.asarray(keep))
    plans = np.stack([preds[metas[i].token] for i in keep])
    per_scene = score_plans(sub, plans, previous_index([metas[i] for i in keep]))
    summary = {**summarize(per_scene), "missing_tokens": missing}
    tracking.print_table(f"{os.path.basename(path)} on {config.data.eval_split}",
                         {"submission": summary}, COLUMNS)
    return summary


def main(argv):
    from absl import flags
    path = flags.FLAGS.submission
    if not path:
        raise SystemExit("usage: python -m irlvla_jax.evaluate --submission FILE [--config ...]")
    score_submission(flags.FLAGS.config, path)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags
    _repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config_flags.DEFINE_config_file("config", os.path.join(_repo, "configs", "tiny.py"))
    flags.DEFINE_string("submission", None, "a NAVSIM submission pickle")
    app.run(main)
