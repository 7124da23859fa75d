"""EPDMS evaluation: policies (and baselines) planned on held-out scenes, scored by the JAX scorer.

    python launch.py eval          # IL vs RL policy (+ baselines) -> <workdir>/eval/eval.json
                                   # (+ bev_*.png, plans.npz) and <workdir>/report.html

A *planner* is any callable ``plan(scene_batch) -> np.ndarray [B, 8, 3]`` (rear-axle poses in
the t = 0 ego frame). ``evaluate_planners`` plans every held-out scene, scores the plans with
:func:`jitted_scorer` in fixed-size chunks, and reduces per-scene sub-scores to the per-policy
table (EPDMS, v1 PDMS and each sub-metric's mean) with :func:`irlvla_jax.sim.report.summarise`.
Submission pickles are scored by ``irlvla_jax.submission``.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from irlvla_jax import tracking, types
from irlvla_jax.sim import report

Planner = Callable[[types.Scene], np.ndarray]
#: Every planner's plans of the eval stage, for ``python launch.py submit`` (:func:`save_plans`).
PLANS_FILE = os.path.join("eval", "plans.npz")
#: The headline table's columns (keys of a :func:`irlvla_jax.sim.report.summarise` row).
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

@functools.cache
def jitted_scorer(mesh: jax.sharding.Mesh | None = None) -> Callable:
    """The scorer with EC against the previous frame's plan, jitted (one program per mesh).

    Returns ``score(scene, plans, prev_scene=None, prev_plans=None) -> (SubScores [B, K],
    ScoreDetails)``: scene Scene [B]; plans [B, K, 8, 3]; prev_scene Scene [B] (each scene's
    previous frame) and prev_plans [B, 8, 3] (the plan made there), simulated for EC (which
    counts where ``scene.has_previous``); without them EC is not scored (``ec_weight`` 0). With
    ``mesh`` the inputs are split over its 'data' axis (B divisible by its size; pass the
    arguments positionally).
    """
    from irlvla_jax.sim import scorer, simulate

    def score(scene, plans, prev_scene=None, prev_plans=None):
        prev_states = None
        if prev_scene is not None:
            prev_states = jax.vmap(simulate.simulate_plan)(prev_scene, prev_plans)
        return scorer.score(scene, plans, prev_states)
    if mesh is None:
        return jax.jit(score)
    from irlvla_jax import parallel
    return jax.jit(score, in_shardings=parallel.data_sharding(mesh))


@functools.cache
def jitted_simulate() -> Callable:
    """``simulate(scene [B], plans [B, 8, 3]) -> [B, 41, 11]``: each plan simulated in its own
    scene (what EC compares against in the next frame), jitted."""
    from irlvla_jax.sim import simulate
    return jax.jit(jax.vmap(simulate.simulate_plan))


@functools.cache
def jitted_score_states() -> Callable:
    """``score(scene [B], plans [B, K, 8, 3], prev_states [B, 41, 11]) -> (SubScores [B, K],
    ScoreDetails)``: the scorer with the previous frame's plan given as its simulated states
    (:func:`jitted_simulate` in that frame), jitted; EC counts where ``scene.has_previous``."""
    from irlvla_jax.sim import scorer
    return jax.jit(lambda scene, plans, prev_states: scorer.score(scene, plans, prev_states))


def select_scenes(scenes: types.Scene, idx) -> types.Scene:
    """Scene [N] of numpy arrays -> the scenes ``idx`` (an index array [M], or one index)."""
    return jax.tree.map(lambda x: np.asarray(x)[idx], scenes)


def previous_index(metas) -> np.ndarray:
    """[N] index of the scene whose token is each scene's previous frame (-1: not in the set).

    NAVSIM's extended comfort compares a plan with the plan the agent made for the frame 0.5 s
    earlier, so EC counts only where that frame is also evaluated."""
    return previous_index_of([m.token for m in metas], [m.previous_token for m in metas])


def previous_index_of(tokens: Sequence[str], previous: Sequence[str | None]) -> np.ndarray:
    """:func:`previous_index` from the scenes' tokens and previous tokens."""
    where = {t: i for i, t in enumerate(tokens)}
    return np.asarray([where.get(p or "", -1) for p in previous], np.int64)


def check_plans(plans: np.ndarray, n: int | None = None, rows=None) -> np.ndarray:
    """float32 [N, 8, 3] plans; ValueError naming the scenes (``rows``: their indices) whose
    plan is not finite."""
    plans = np.asarray(plans, np.float32)
    n = plans.shape[0] if n is None else n
    if plans.shape != (n, types.PLAN_LEN, 3):
        raise ValueError(f"plans must be [N, {types.PLAN_LEN}, 3], got {plans.shape}")
    if not np.isfinite(plans).all():
        bad = np.where(~np.isfinite(plans).all(axis=(1, 2)))[0]
        bad = bad if rows is None else np.asarray(rows)[bad]
        raise ValueError(f"plans of scenes {bad[:10].tolist()} hold NaN/inf; a planner must "
                         f"return finite poses")
    return plans


def simulate_plans(scenes: types.Scene, plans: np.ndarray, chunk: int = 16) -> np.ndarray:
    """[N, 41, 11]: every plan [N, 8, 3] simulated in its scene, in chunks padded to ``chunk``."""
    n = plans.shape[0]
    out = []
    for start in range(0, n, chunk):
        idx = np.minimum(np.arange(start, start + chunk), n - 1)
        states = jitted_simulate()(select_scenes(scenes, idx), plans[idx])
        out.append(np.asarray(states)[: min(chunk, n - start)])
    return np.concatenate(out)


def score_with_previous(scenes: types.Scene, plans: np.ndarray, prev_states: np.ndarray,
                        has_prev: np.ndarray, chunk: int = 16) -> dict[str, np.ndarray]:
    """Score one plan per scene given the simulated previous-frame plan of each (``has_prev``
    [N]: EC counts there) -> :func:`irlvla_jax.sim.report.score_columns` of [N] arrays.
    Chunks are padded to ``chunk`` so the scorer compiles once."""
    n = plans.shape[0]
    scenes = scenes.replace(has_previous=np.asarray(scenes.has_previous) & has_prev)
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, chunk):
        idx = np.arange(start, start + chunk)
        real = idx < n
        idx = np.where(real, idx, n - 1)
        sub, details = jitted_score_states()(select_scenes(scenes, idx), plans[idx][:, None],
                                             prev_states[idx])
        for k, v in report.score_columns(sub, details).items():
            out.setdefault(k, []).append(v[:, 0][real])
    return {k: np.concatenate(v) for k, v in out.items()}


def score_plans(scenes: types.Scene, plans: np.ndarray, prev_index: np.ndarray | None = None,
                chunk: int = 16) -> dict[str, np.ndarray]:
    """Score one plan per scene. scenes [N] (numpy), plans [N, 8, 3], prev_index [N] (index of
    each scene's previous frame among the N, -1 for none; None: EC is not scored) -> dict of
    [N] arrays (:func:`irlvla_jax.sim.report.score_columns`: every sub-metric, ``epdms``,
    ``pdms_v1``, ``ec_weight``). Chunks are padded to ``chunk`` so the scorer compiles once."""
    plans = check_plans(plans)
    n = plans.shape[0]
    prev_index = np.full(n, -1) if prev_index is None else np.asarray(prev_index)
    # EC counts only where the previous frame's plan exists.
    prev_safe = np.where(prev_index >= 0, prev_index, np.arange(n))
    states = simulate_plans(scenes, plans, chunk)
    return score_with_previous(scenes, plans, states[prev_safe], prev_index >= 0, chunk)


def l2_errors(plans: np.ndarray, scenes: types.Scene) -> dict[str, float]:
    """Mean L2 displacement to the expert at 1, 2, 3, 4 s (metres)."""
    d = np.linalg.norm(np.asarray(plans)[..., :2] - expert_plan(scenes)[..., :2], axis=-1)
    return {f"l2_{s}s": float(d[:, 2 * s - 1].mean()) for s in (1, 2, 3, 4)}


def evaluate_planners(planners: Mapping[str, Planner], scenes: types.Scene,
                      batch_size: int = 8, metas=None
                      ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Plan and score every scene with every planner; with ``metas`` (SceneMeta per scene) EC
    compares each plan with the same planner's plan for the previous frame.

    Returns (table: name -> :func:`irlvla_jax.sim.report.summarise` row plus L2 errors,
    plans: name -> [N, 8, 3])."""
    prev = previous_index(metas) if metas is not None else None
    n = int(np.shape(scenes.speed_limit)[0])
    table, all_plans = {}, {}
    for name, planner in planners.items():
        chunks = []
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            chunks.append(np.asarray(planner(select_scenes(scenes, idx)), np.float32))
        plans = np.concatenate(chunks)
        per_scene = score_plans(scenes, plans, prev)
        table[name] = {**report.summarise(per_scene), **l2_errors(plans, scenes)}
        all_plans[name] = plans
    return table, all_plans


# ---------------------------------------------------------------------------------------------
# Streaming: batch by batch from the loader, each process its rows of each batch

def split_batches(config, split: str, mesh: jax.sharding.Mesh | None = None,
                  limit: int | None = None) -> Callable[[], Iterator]:
    """``batches()`` -> iterator of this process's rows of the split's global batches
    (``config.data.batch_size`` scenes, stored order, the first ``limit`` scenes; the last
    batch padded): ``(Scene [b] numpy, b SceneMeta or None for padding rows, b positions)``,
    a position being the scene's index in the split. Only a batch at a time is in memory."""
    from irlvla_jax import parallel
    from irlvla_jax.data import loader
    b = int(config.data.batch_size)
    if mesh is not None:
        parallel.check_batch_divisible(b, mesh)
    rows = loader.process_rows(mesh, b) if mesh is not None else (0, b)

    def batches():
        it = loader.host_batches(config, split, seed=0, shuffle=False, num_epochs=1, rows=rows,
                                 limit=limit, drop_remainder=False)
        for k, (arrays, metas) in enumerate(it):
            yield (types.Scene.from_dict(arrays), metas,
                   k * b + np.arange(rows[0], rows[1]))
    return batches


def _allgather(tree):
    """Every process's numpy arrays (same shapes everywhere) concatenated in process order."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _strings(values: Sequence[str]) -> np.ndarray:
    """Strings as a uint8 [N, L] array (zero padded; L agreed by every process) to gather."""
    raw = [v.encode("utf-8") for v in values]
    width = int(np.max(_allgather(np.asarray([max((len(r) for r in raw), default=0)]))))
    out = np.zeros((len(raw), max(width, 1)), np.uint8)
    for i, r in enumerate(raw):
        out[i, :len(r)] = np.frombuffer(r, np.uint8)
    return out


def _unstrings(a: np.ndarray) -> list[str]:
    return [bytes(row).rstrip(b"\0").decode("utf-8") for row in a]


def evaluate_stream(planners: Mapping[str, Planner], batches: Callable[[], Iterator],
                    keep: int = 0) -> tuple[dict[str, dict], dict[str, np.ndarray], dict]:
    """:func:`evaluate_planners` batch by batch: ``batches()`` (:func:`split_batches`) is read
    twice, and never more than a batch of scenes is in memory.

    Pass 1 plans every scene with every planner and simulates each plan in its scene (the input
    of the next frame's EC: [41, 11] floats per scene and planner); the per-scene plans, states,
    L2 errors and tokens are then gathered from every process (``process_allgather``) in split
    order. Pass 2 scores each batch's plans against the simulated plan of each scene's previous
    frame (where that frame is evaluated). Per-scene columns are gathered and reduced as
    :func:`evaluate_planners` does, so the table is the same.

    Returns (table, plans: name -> [N, 8, 3] in split order, info: ``tokens``, ``stages``
    [N], and ``scenes`` / ``scene_index``: the first ``keep`` scenes this process read (Scene
    [<= keep] numpy, their split indices), e.g. for pictures).
    """
    names = list(planners)
    pos, tokens, prev_tokens, stages = [], [], [], []
    plans = {k: [] for k in names}
    states = {k: [] for k in names}
    l2 = {k: [] for k in names}
    kept: list[types.Scene] = []
    kept_index: list[int] = []
    for scene, metas, where in batches():
        real = np.asarray([m is not None for m in metas])
        for name in names:
            p = check_plans(planners[name](scene), len(metas), where)
            plans[name].append(p)
            states[name].append(np.asarray(jitted_simulate()(scene, p)))
            d = np.linalg.norm(p[..., :2] - expert_plan(scene)[..., :2], axis=-1)
            l2[name].append(d)
        pos.append(np.where(real, where, -1))
        tokens += [m.token if m else "" for m in metas]
        prev_tokens += [(m.previous_token or "") if m else "" for m in metas]
        stages += [getattr(m, "stage", 1) if m else 0 for m in metas]
        for r in np.nonzero(real)[0][: max(0, keep - len(kept_index))]:
            kept.append(select_scenes(scene, r))
            kept_index.append(int(where[r]))
    if not pos:
        raise ValueError("evaluate_stream: the split yielded no batches")
    local_pos = np.concatenate(pos)
    g = _allgather({"pos": local_pos, "tokens": _strings(tokens),
                    "prev": _strings(prev_tokens), "stages": np.asarray(stages, np.int32),
                    "plans": {k: np.concatenate(v) for k, v in plans.items()},
                    "states": {k: np.concatenate(v) for k, v in states.items()},
                    "l2": {k: np.concatenate(v) for k, v in l2.items()}})
    order = np.argsort(g["pos"], kind="stable")
    order = order[g["pos"][order] >= 0]                  # split order, padding rows dropped
    n = len(order)
    rank = np.full(int(g["pos"].max()) + 1, -1)
    rank[g["pos"][order]] = np.arange(n)                  # split position -> row of the result
    tok = _unstrings(g["tokens"][order])
    prev = previous_index_of(tok, _unstrings(g["prev"][order]))
    prev_safe = np.where(prev >= 0, prev, np.arange(n))
    all_plans = {k: g["plans"][k][order] for k in names}
    all_states = {k: g["states"][k][order] for k in names}

    # pass 2: score each batch against the previous frames' simulated plans
    cols: dict[str, dict[str, list[np.ndarray]]] = {k: {} for k in names}
    done = []
    for scene, metas, where in batches():
        real = np.asarray([m is not None for m in metas])
        j = np.zeros(len(metas), np.int64)            # padding rows: any scene, dropped
        j[real] = rank[where[real]]
        for name in names:
            sc = score_with_previous(scene, all_plans[name][j], all_states[name][prev_safe[j]],
                                     prev[j] >= 0, chunk=len(metas))
            for k, v in sc.items():
                cols[name].setdefault(k, []).append(v)
        done.append(np.where(real, where, -1))
    g2 = _allgather({"pos": np.concatenate(done),
                     "cols": {name: {k: np.concatenate(v) for k, v in c.items()}
                              for name, c in cols.items()}})
    order2 = np.argsort(g2["pos"], kind="stable")
    order2 = order2[g2["pos"][order2] >= 0]
    table = {}
    for name in names:
        per_scene = {k: v[order2] for k, v in g2["cols"][name].items()}
        d = g["l2"][name][order]
        table[name] = {**report.summarise(per_scene),
                       **{f"l2_{t}s": float(d[:, 2 * t - 1].mean()) for t in (1, 2, 3, 4)}}
    info = {"tokens": tok, "stages": g["stages"][order], "scene_index": kept_index,
            "scenes": (jax.tree.map(lambda *x: np.stack(x), *kept) if kept else None)}
    return table, all_plans, info


# ---------------------------------------------------------------------------------------------
# The eval stage

def save_bev_examples(path_prefix: str, scenes: types.Scene, plans: Mapping[str, np.ndarray],
                      count: int = 4, titles: Sequence[str] | None = None) -> list[str]:
    """BEV PNGs of the first ``count`` scenes with every policy's plan (drawn in the order of
    ``plans``, the last on top), each framed on the expert and the plans; ``titles`` default to
    'held-out scene i'."""
    from irlvla_jax import viz
    paths = []
    n = int(np.shape(scenes.speed_limit)[0])
    for i in range(min(count, n)):
        one = select_scenes(scenes, i)
        p = f"{path_prefix}_{i}.png"
        mine = {k: v[i] for k, v in plans.items()}
        expert = one.expert_future[one.expert_future_valid]
        viz.save_scene_bev(p, one, plans=mine,
                           title=titles[i] if titles is not None else f"held-out scene {i}",
                           **viz.fit_view(expert, *mine.values()))
        paths.append(p)
    return paths


def save_plans(path: str, metas: Sequence[types.SceneMeta | str],
               plans: Mapping[str, np.ndarray], stages: Sequence[int] | None = None) -> None:
    """Write each planner's plans [N, 8, 3] with the N scenes' tokens (``metas``: SceneMeta or
    the tokens) and NAVSIM stage (1, or 2 for a navhard two-stage follow-up; default: the
    metas') to an ``.npz`` (:func:`load_plans` reads it)."""
    if stages is None:
        stages = [getattr(m, "stage", 1) for m in metas]
    stages = np.asarray(stages, np.int32)
    tokens = np.asarray([getattr(m, "token", m) for m in metas], dtype=str)
    clash = {"tokens", "stages"} & set(plans)
    if clash:
        raise ValueError(f"save_plans: a planner may not be named {sorted(clash)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, tokens=tokens, stages=stages,
             **{k: np.asarray(v, np.float32) for k, v in plans.items()})


def load_plans(path: str) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(N tokens, stages [N], planner name -> plans [N, 8, 3]) from :func:`save_plans`."""
    with np.load(path) as f:
        return ([str(t) for t in f["tokens"]], f["stages"],
                {k: f[k] for k in f.files if k not in ("tokens", "stages")})


def privileged_inputs(config, names) -> dict[str, dict[str, list[str]]]:
    """Per trained policy in ``names``: the ground truth it reads at inference ("policy":
    ``config.model.privileged``; non-empty = not a valid NAVSIM agent) and, for the RL policy,
    what its training reward read ("reward": the RWM's privileged inputs, or "scorer" for the
    true-scorer ablation; training may use ground truth, inference may not)."""
    from irlvla_jax.models import policy as policy_lib
    from irlvla_jax.models import reward_model as rwm_lib
    pol = list(policy_lib.privileged_inputs(config.model))
    out = {}
    for name in names:
        if name == "il_policy":
            out[name] = {"policy": pol}
        elif name == "rl_policy":
            reward = (["scorer"] if config.ppo.reward == "scorer"
                      else list(rwm_lib.privileged_inputs(config.rwm)))
            out[name] = {"policy": pol, "reward": reward}
    return out


def warn_privileged(what: str, inputs: Sequence[str]) -> None:
    """Say loudly that ``what`` comes from a policy reading ground truth (not a NAVSIM agent)."""
    if inputs:
        bar = "!" * 78
        print(f"{bar}\n{what}: the policy reads privileged ground truth at inference "
              f"({', '.join(inputs)}; config.model.privileged). It is NOT a valid NAVSIM agent: "
              f"a privileged ablation, not a leaderboard entry.\n{bar}", flush=True)


def run(config, workdir: str) -> dict:
    """``python launch.py eval``: every available policy and the baselines on the eval split."""
    from irlvla_jax import parallel
    from irlvla_jax.train import loop, stage_results
    policies = stage_results.trained_planners(config, workdir)
    if not policies:
        raise SystemExit(f"eval: no trained policy found under {workdir} (looked in il/, "
                         f"rl/): run `python launch.py il` first (and `python launch.py rl` for "
                         f"the RL policy), with the same --workdir")
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    limit = config.eval.num_scenes or None
    planners: dict[str, Planner] = {"human": expert_plan, "constant_velocity":
                                    constant_velocity_plan}
    planners.update(policies)
    # batch by batch, each process its rows of each batch (never the split in host memory)
    batches = split_batches(config, config.data.eval_split, parallel.make_mesh(config.mesh),
                            limit)
    table, plans, info = evaluate_stream(planners, batches, keep=4)
    result = {"split": config.data.eval_split, "policies": table,
              "privileged_inputs": privileged_inputs(config, policies)}
    # every trained policy reads config.model's inputs
    warn_privileged("eval", next(iter(result["privileged_inputs"].values()))["policy"])
    # Baselines first, the trained policies last: the last plan is drawn on top.
    result["bev"] = []
    if tracking.is_main_process() and info["scenes"] is not None:
        idx = info["scene_index"]
        result["bev"] = save_bev_examples(
            os.path.join(out_dir, "bev"), info["scenes"],
            {k: v[idx] for k, v in plans.items() if k != "human"}, count=len(idx),
            titles=[f"held-out scene {i}" for i in idx])
    loop.save_config(out_dir, config)
    if tracking.is_main_process():
        tracking.write_json(os.path.join(out_dir, "eval.json"), result)
        save_plans(os.path.join(workdir, PLANS_FILE), info["tokens"], plans,
                   stages=info["stages"])
    tracking.print_table(f"EPDMS on {config.data.eval_split} ({table['human']['num_scenes']} "
                         f"scenes)", table, COLUMNS + ["l2_2s"])
    if tracking.is_main_process():
        from irlvla_jax import report as run_report
        print(f"report: {run_report.write_report(workdir, config)}", flush=True)
    return result


if __name__ == "__main__":
    raise SystemExit("irlvla_jax.evaluate is a library. Evaluate a run's policies with\n"
                     "  python launch.py eval [--config FILE] [--workdir DIR]\n"
                     "and score a NAVSIM submission pickle with\n"
                     "  python -m irlvla_jax.submission --submission FILE [--config FILE]\n"
                     "(--help on either says more).")
