"""NAVSIM submission pickles: write them from a run, read them safely, score them on a split.

    python launch.py submit    # <workdir>/eval/submission.pkl from the eval stage's plans
    python -m irlvla_jax.submission --submission sub.pkl --config configs/navsim.py
        [--partial]            # score a submission that misses scenes (they count as EPDMS 0)
        [--first_stage_only]   # a two-stage (navhard) submission: score its first stage alone

A leaderboard submission (NAVSIM's ``run_create_submission_pickle``) is a pickled dict::

    {"team_name", "authors", "email", "institution", "country / region": str,
     "first_stage_predictions": [{token: Trajectory}],
     "second_stage_predictions": [{token: Trajectory}]}      # NAVSIM v1: "predictions" only

where ``navsim.common.dataclasses.Trajectory`` holds ``poses`` [8, 3] (x, y, heading of the rear
axle in the t = 0 ego frame, at 0.5 .. 4 s) and nuplan's ``TrajectorySampling``. A plain
``{token: poses [8, 3]}`` pickle is accepted too.

Loading a pickle can run any code it names, so :class:`SubmissionUnpickler` builds only what a
submission holds: plain containers, numpy arrays, and NAVSIM's two classes (as the
:class:`Trajectory` / :class:`TrajectorySampling` dataclasses here, so navsim need not be
installed). Any other global (``builtins.eval``, ``os.system``, ...) is refused by name.

:func:`write_submission` writes the same structure: its trajectories are those two dataclasses
pickled under NAVSIM's and nuplan's names (:data:`OFFICIAL_NAMES`), by ``data.numpy1_pickle``
(numpy's globals under their numpy-1 paths: NAVSIM pins numpy 1.23), so the file unpickles as
``navsim.common.dataclasses.Trajectory`` where navsim is installed (the leaderboard) and as
plain data through :func:`read_submission` where it is not.
"""

from __future__ import annotations

import codecs
import collections
import copyreg
import dataclasses
import functools
import importlib
import os
import pickle
from typing import Any, Mapping, Sequence

import numpy as np

from irlvla_jax import evaluate, tracking, types
from irlvla_jax.data import numpy1_pickle
from irlvla_jax.sim import report

#: The metadata keys of a leaderboard submission.
METADATA_KEYS = ("team_name", "authors", "email", "institution", "country / region")
#: How many tokens an error message or summary line lists.
SHOW = 5
#: NAVSIM's trajectory sampling: 8 poses at 0.5 s (4 s).
NAVSIM_SAMPLING = dict(num_poses=types.PLAN_LEN, time_horizon=4.0, interval_length=0.5)


@dataclasses.dataclass
class TrajectorySampling:
    """nuplan's ``TrajectorySampling`` as plain data (NAVSIM: 8 poses, 4 s, 0.5 s)."""
    num_poses: int | None = None
    time_horizon: float | None = None
    interval_length: float | None = None


@dataclasses.dataclass
class Trajectory:
    """``navsim.common.dataclasses.Trajectory`` as plain data: poses [8, 3] and its sampling."""
    poses: Any = None
    trajectory_sampling: TrajectorySampling | None = None


@dataclasses.dataclass
class Submission:
    """A read submission. first_stage / second_stage: token -> poses [8, 3] float32 (finite);
    second_stage is empty for one-stage submissions and plain pickles."""
    first_stage: dict[str, np.ndarray]
    second_stage: dict[str, np.ndarray]


#: The names NAVSIM's own pickles give the classes above.
OFFICIAL_NAMES = {
    Trajectory: ("navsim.common.dataclasses", "Trajectory"),
    TrajectorySampling: ("nuplan.planning.simulation.trajectory.trajectory_sampling",
                         "TrajectorySampling"),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _numpy_core(name: str):
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:                               # numpy < 1.26
        return importlib.import_module(f"numpy.core.{name}")


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> what the unpickler builds for it; nothing else is loadable."""
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed = {
        # containers and scalars that pickle protocols 0-3 build by name
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray, ("builtins", "complex"): complex,
        ("builtins", "object"): object, ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
        # numpy arrays, dtypes and scalars (numpy 1 pickles name numpy.core, numpy 2 numpy._core)
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        # NAVSIM's classes
        ("navsim.common.dataclasses", "Trajectory"): Trajectory,
        ("navsim.common.dataclasses", "TrajectorySampling"): TrajectorySampling,
        ("nuplan.planning.simulation.trajectory.trajectory_sampling", "TrajectorySampling"):
            TrajectorySampling,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


#: Python 2 module names that pickle protocols 0-2 write.
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class SubmissionUnpickler(pickle.Unpickler):
    """An unpickler that loads only the globals of :func:`_allowed_globals`."""

    def find_class(self, module: str, name: str) -> Any:
        key = (_MODULE_ALIASES.get(module, module), name)
        allowed = _allowed_globals()
        if key not in allowed:
            raise pickle.UnpicklingError(
                f"refused to load the global {module}.{name}: a submission holds only plain "
                f"containers, numpy arrays and navsim Trajectory objects, and loading this "
                f"global could run code")
        return allowed[key]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: submissions do not use them")


def _first(tokens: Sequence[str]) -> str:
    more = f", ... ({len(tokens) - SHOW} more)" if len(tokens) > SHOW else ""
    return ", ".join(map(str, tokens[:SHOW])) + more


def _poses(path: str, where: str, predictions: Any) -> dict[str, np.ndarray]:
    """token -> poses [8, 3] from ``[{token: Trajectory}, ...]`` (or one ``{token: ...}``)."""
    parts = [predictions] if isinstance(predictions, Mapping) else predictions
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, Mapping) for p in parts):
        raise ValueError(f"{path}: {where} must be a list of {{token: Trajectory}} dicts, got "
                         f"{type(predictions).__name__}")
    out: dict[str, np.ndarray] = {}
    for part in parts:
        for token, traj in part.items():
            token = str(token)
            if token in out:
                raise ValueError(f"{path}: token {token} appears in more than one entry of "
                                 f"{where} (multi-seed submissions are not supported)")
            if isinstance(traj, Trajectory):
                traj = traj.poses
            elif isinstance(traj, Mapping):
                traj = traj.get("poses")
            try:
                poses = np.asarray(traj, np.float32)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: {where}: token {token}: poses are not an array of "
                                 f"numbers ({e})") from None
            if poses.shape != (types.PLAN_LEN, 3):
                raise ValueError(f"{path}: {where}: token {token}: poses have shape "
                                 f"{poses.shape}, expected ({types.PLAN_LEN}, 3)")
            out[token] = poses
    bad = [t for t, p in out.items() if not np.isfinite(p).all()]
    if bad:
        raise ValueError(f"{path}: {where}: the poses of {len(bad)} tokens hold NaN/inf: "
                         f"{_first(bad)}")
    return out


def read_submission(path: str) -> Submission:
    """Read a NAVSIM submission pickle (see the module docstring) or a plain
    ``{token: poses [8, 3]}`` pickle. Raises ValueError naming the file for a pickle that
    needs anything but submission data, a malformed one, or non-finite poses (by token)."""
    try:
        with open(path, "rb") as f:
            obj = SubmissionUnpickler(f).load()
    except Exception as e:          # any failure to load is the file's, reported as such
        raise ValueError(f"{path}: cannot read the submission pickle ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict (NAVSIM submission or token -> poses), "
                         f"got {type(obj).__name__}")
    if "first_stage_predictions" in obj:
        return Submission(_poses(path, "first_stage_predictions", obj["first_stage_predictions"]),
                          _poses(path, "second_stage_predictions",
                                 obj.get("second_stage_predictions") or []))
    if "predictions" in obj:                          # NAVSIM v1
        return Submission(_poses(path, "predictions", obj["predictions"]), {})
    if any(k in obj for k in METADATA_KEYS):
        raise ValueError(f"{path}: a submission dict without first_stage_predictions")
    return Submission(_poses(path, "the token -> poses dict", obj), {})


# ---------------------------------------------------------------------------------------------
# Writing

def write_submission(path: str, first_stage: Mapping[str, Any],
                     second_stage: Mapping[str, Any] | None = None,
                     metadata: Mapping[str, str] | None = None) -> str:
    """Write a leaderboard submission pickle; returns ``path``.

    first_stage / second_stage: token -> poses [8, 3] (x, y, heading of the rear axle in the
    scene's t = 0 ego frame at 0.5 .. 4 s); second_stage only for two-stage (navhard) splits.
    metadata: :data:`METADATA_KEYS` -> str (a missing key is written empty). The structure is
    NAVSIM's ``run_create_submission_pickle``: the metadata, ``first_stage_predictions =
    [{token: Trajectory}]`` and ``second_stage_predictions = [{token: Trajectory}]`` (``[{}]``
    for a one-stage split, as NAVSIM writes it), each Trajectory with poses float32 [8, 3] and
    ``TrajectorySampling(num_poses=8, time_horizon=4.0, interval_length=0.5)``. Raises
    ValueError for malformed or non-finite poses (by token) or an unknown metadata key.
    """
    metadata = dict(metadata or {})
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown submission metadata {unknown}; the keys are "
                         f"{list(METADATA_KEYS)}")
    sampling = TrajectorySampling(**NAVSIM_SAMPLING)

    def trajectories(where: str, preds: Mapping[str, Any]) -> dict[str, Trajectory]:
        return {t: Trajectory(p, sampling) for t, p in _poses(path, where, [dict(preds)]).items()}

    obj = {**{k: str(metadata.get(k, "")) for k in METADATA_KEYS},
           "first_stage_predictions": [trajectories("first_stage", first_stage)],
           "second_stage_predictions": [trajectories("second_stage", second_stage or {})]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        # numpy 1.x (NAVSIM pins 1.23) reads it: numpy's globals as numpy.core.*.
        numpy1_pickle.dump(obj, f, names=OFFICIAL_NAMES)
    os.replace(tmp, path)
    return path


#: config.eval field -> submission metadata key.
CONFIG_METADATA = {"team_name": "team_name", "authors": "authors", "email": "email",
                   "institution": "institution", "country": "country / region"}
def run(config, workdir: str) -> dict[str, Any]:
    """``python launch.py submit``: the plans of ``config.eval.submission_policy`` from the eval
    stage (``<workdir>/eval/plans.npz``) -> ``<workdir>/eval/submission.pkl``, with the
    metadata of ``config.eval`` (team_name, authors, email, institution, country).

    Scenes of stage 2 (navhard two-stage) go into the second stage. Returns a summary dict."""
    plans_path = os.path.join(workdir, evaluate.PLANS_FILE)
    if not os.path.exists(plans_path):
        raise SystemExit(f"submit: no plans at {plans_path}: run `python launch.py eval` first "
                         f"(with the same --workdir)")
    ecfg = config.eval
    policy = ecfg.get("submission_policy", "rl_policy")
    tokens, stages, all_plans = evaluate.load_plans(plans_path)
    if policy not in all_plans:
        raise SystemExit(f"submit: {plans_path} holds no plans of {policy!r} (it has "
                         f"{', '.join(all_plans)}): pass --config.eval.submission_policy=NAME, "
                         f"or train that policy and run `python launch.py eval` again")
    plans = all_plans[policy]
    first = {t: p for t, p, s in zip(tokens, plans, stages) if s != 2}
    second = {t: p for t, p, s in zip(tokens, plans, stages) if s == 2}
    metadata = {key: str(ecfg.get(field, "")) for field, key in CONFIG_METADATA.items()}
    path = os.path.join(workdir, "eval", "submission.pkl")
    privileged = _privileged_of(os.path.dirname(plans_path), policy)
    evaluate.warn_privileged(f"submit {policy}", privileged)
    if tracking.is_main_process():
        write_submission(path, first, second, metadata)
    stage2 = f" + {len(second)} second-stage" if second else ""
    print(f"submit: {policy} plans of {len(first)} scenes{stage2} -> {path}", flush=True)
    empty = [f for f, key in CONFIG_METADATA.items() if not metadata[key]]
    if empty:
        print(f"submit: set {', '.join(empty)} before uploading it "
              f"(--config.eval.{empty[0]}=...)", flush=True)
    return {"path": path, "policy": policy, "first_stage": len(first),
            "second_stage": len(second), "privileged_inputs": privileged}


def _privileged_of(eval_dir: str, policy: str) -> list[str]:
    """The privileged inputs eval.json (beside the plans / submission) recorded for ``policy``
    ([] when it recorded none or there is no eval.json)."""
    import json
    path = os.path.join(eval_dir, "eval.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rec = json.load(f).get("privileged_inputs", {})
    return list(rec.get(policy, {}).get("policy", []))


def score_predictions(preds: Mapping[str, np.ndarray], scenes: types.Scene,
                      metas: Sequence[types.SceneMeta], *, allow_partial: bool = False,
                      source: str = "submission", split: str = "the split") -> dict[str, Any]:
    """Score token -> poses [8, 3] on scenes [N] (numpy) with their N SceneMeta.

    Every scene needs a prediction: a submission that misses some is refused unless
    ``allow_partial``, and then each missing scene counts as a failure (every sub-score and
    EPDMS 0; EC does not count there), as the leaderboard scores them. EC compares a plan with
    the submission's plan for the previous frame where both are scored.
    Returns the :func:`irlvla_jax.sim.report.summarise` row over all N scenes plus
    ``missing_tokens`` (scenes without a prediction) and ``unknown_tokens`` (predictions for
    tokens that are not scenes of the split, ignored).
    """
    tokens = [m.token for m in metas]
    known = set(tokens)
    unknown = [t for t in preds if t not in known]
    covered = [i for i, t in enumerate(tokens) if t in preds]
    missing = [t for t in tokens if t not in preds]
    if not covered:
        raise ValueError(f"{source}: none of its {len(preds)} tokens are scenes of {split} "
                         f"(first: {_first(list(preds))})")
    if missing and not allow_partial:
        raise ValueError(f"{source}: {len(missing)} of the {len(tokens)} scenes of {split} have "
                         f"no prediction: {_first(missing)}. Plan every scene, or pass "
                         f"--partial (allow_partial=True) to score them as failures (EPDMS 0)")
    idx = np.asarray(covered)
    per_scene = evaluate.score_plans(evaluate.select_scenes(scenes, idx),
                                     np.stack([preds[tokens[i]] for i in covered]),
                                     evaluate.previous_index([metas[i] for i in covered]))
    if missing:
        full = {k: np.zeros(len(tokens), v.dtype) for k, v in per_scene.items()}
        for k, v in per_scene.items():
            full[k][idx] = v
        per_scene = full
    return {**report.summarise(per_scene), "missing_tokens": missing, "unknown_tokens": unknown}


def score_submission(config, path: str, *, allow_partial: bool = False,
                     first_stage_only: bool = False) -> dict[str, Any]:
    """Score a submission pickle on ``config.data.eval_split``; prints and returns the row
    (:func:`score_predictions`). A non-empty second stage (navhard two-stage) is refused unless
    ``first_stage_only``: scoring the second stage is not supported yet."""
    sub = read_submission(path)
    split = config.data.eval_split
    # A submission written by `launch.py submit` has the run's eval.json beside it (IL and RL
    # share config.model.privileged).
    evaluate.warn_privileged(f"{os.path.basename(path)} (per the eval.json beside it)",
                             _privileged_of(os.path.dirname(path), "il_policy"))
    if sub.second_stage and not first_stage_only:
        raise ValueError(f"{path}: holds {len(sub.second_stage)} second-stage (navhard "
                         f"two-stage) predictions; scoring the second stage is not supported "
                         f"yet. Pass --first_stage_only (first_stage_only=True) to score the "
                         f"first stage alone")
    from irlvla_jax.data.loader import load_split_numpy
    scenes, metas = load_split_numpy(config, split)
    summary = score_predictions(sub.first_stage, scenes, metas, allow_partial=allow_partial,
                                source=path, split=split)
    summary["second_stage_not_scored"] = len(sub.second_stage)
    tracking.print_table(f"{os.path.basename(path)} on {split} ({summary['num_scenes']} scenes)",
                         {"submission": summary}, evaluate.COLUMNS)
    if summary["missing_tokens"]:
        print(f"{len(summary['missing_tokens'])} scenes without a prediction count as failures "
              f"(EPDMS 0): {_first(summary['missing_tokens'])}")
    if summary["unknown_tokens"]:
        print(f"{len(summary['unknown_tokens'])} predicted tokens are not scenes of {split} and "
              f"were ignored: {_first(summary['unknown_tokens'])}")
    if sub.second_stage:
        print(f"second stage: {len(sub.second_stage)} predictions not scored (first stage only)")
    return summary


USAGE = """\
usage: python -m irlvla_jax.submission --submission FILE [--config FILE] [--config.a.b=V ...]
                                       [--partial] [--first_stage_only]

Score a NAVSIM submission pickle on config.data.eval_split with the JAX EPDMS scorer.
  --submission FILE   NAVSIM v2 (first/second stage), v1 ("predictions") or {token: poses [8, 3]}
  --config FILE       configs/tiny.py (default: the synthetic world) or configs/navsim.py
  --config.data.eval_split=navtest    the split to score on (its scenes are the tokens)
  --partial           score a submission that misses scenes: each counts as EPDMS 0
  --first_stage_only  a two-stage (navhard) submission: score its first stage alone
  --verbosity=0       show the libraries' INFO logs too
Write one from a trained run: python launch.py submit [--config.eval.submission_policy=il_policy]
  -> <workdir>/eval/submission.pkl (set --config.eval.team_name=... etc. before uploading)
"""


def main(argv):
    from absl import flags
    f = flags.FLAGS
    if len(argv) > 1 or not f.submission:
        raise SystemExit(USAGE)
    score_submission(f.config, f.submission, allow_partial=f.partial,
                     first_stage_only=f.first_stage_only)


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags
    _repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config_flags.DEFINE_config_file("config", os.path.join(_repo, "configs", "tiny.py"))
    flags.DEFINE_string("submission", None, "a NAVSIM submission pickle")
    flags.DEFINE_bool("partial", False, "score a submission that misses scenes of the split, "
                      "counting each missing scene as a failure (EPDMS 0)")
    flags.DEFINE_bool("first_stage_only", False, "score only the first stage of a two-stage "
                      "(navhard) submission")
    tracking.run_app(main, USAGE)
