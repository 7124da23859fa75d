"""The reward world model's held-out quality (host side, numpy): per-metric accuracy, balanced
accuracy, AUC and MAE, EPDMS ranking (Spearman per scene, regret of the predicted best) and how
the reward ranks the expert, each next to a training-mean baseline.

    rows = quality_metrics(outs, train_means)     # {"rwm": {...}, "mean_baseline": {...}}
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import scipy.stats

from irlvla_jax.models import reward_model as rwm_lib
from irlvla_jax.train import candidates as cand_lib

THREE_CLASS = ("nc", "ddc")     # the sub-scores in {0, 0.5, 1}; the others are pass / fail


def _auc(score, y):
    """ROC AUC via the Mann-Whitney statistic; NaN when only one class is present."""
    y = np.asarray(y) > 0.5
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(score)
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _spearman_per_scene(pred, true):
    """Mean over scenes of Spearman's rho between pred [N,K] and true [N,K]; a constant
    prediction (or truth) ranks nothing: rho counts as 0 there."""
    rhos = []
    for p, t in zip(pred, true):
        if np.ptp(t) == 0:
            continue                   # nothing to rank: the scene does not count
        rhos.append(0.0 if np.ptp(p) == 0 else float(scipy.stats.spearmanr(p, t)[0]))
    return float(np.mean(rhos)) if rhos else float("nan")


def _regret(pred, true):
    """Mean over scenes of best true EPDMS minus the true EPDMS of the predicted best; ties of
    the prediction are broken uniformly (expected regret), so a constant predictor is not
    credited with the slot order."""
    best = true.max(-1)
    top = pred >= pred.max(-1, keepdims=True) - 1e-9
    chosen = (true * top).sum(-1) / top.sum(-1)
    return float(np.mean(best - chosen))


def _balanced_accuracy(pred, y, num_classes):
    """Mean over the classes present in y of the recall of that class (int arrays)."""
    recalls = [np.mean(pred[y == c] == c) for c in range(num_classes) if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def _expert_ranking(pred, true, source, sources):
    """How the predicted reward ranks the expert (slot 0) against the candidates of
    ``sources`` that the scorer ranks no higher than it (true[j] <= true[expert]).

    pred, true [N,K], source [K]. Returns (pairwise, scene_top):
      pairwise  fraction of those (expert, j) pairs with pred[expert] > pred[j], ties 1/2
                (0.5 for a constant predictor);
      scene_top mean over scenes with at least one such j of the probability that the
                expert comes first among itself and them by pred, ties broken uniformly
                (1 / (1 + n) for a constant predictor).
    """
    cand = np.isin(source, [cand_lib.SOURCE_NAMES.index(s) for s in sources]) & \
        (source != cand_lib.EXPERT)
    pairs = cand[None] & (true[:, :1] >= true)                             # [N,K]
    if not pairs.any():
        return float("nan"), float("nan")
    gap = pred[:, :1] - pred
    win = np.where(gap > 1e-9, 1.0, np.where(gap >= -1e-9, 0.5, 0.0))
    pairwise = float((win * pairs).sum() / pairs.sum())
    tops = []
    for g, pr in zip(gap, pairs):
        if not pr.any():
            continue
        if (g[pr] < -1e-9).any():
            tops.append(0.0)
        else:
            tops.append(1.0 / (1 + int((np.abs(g[pr]) <= 1e-9).sum())))
    return pairwise, float(np.mean(tops))


def quality_metrics(outs: Mapping[str, np.ndarray], train_means: Mapping[str, float] | None = None
                    ) -> dict[str, dict[str, float]]:
    """Held-out quality of the RWM and of the training-mean baseline.

    outs: the eval step's arrays concatenated over scenes ([N,K] ...), plus ``source`` [K].
    train_means: the ``label/*`` statistics of training. Returns {"rwm": {...},
    "mean_baseline": {...}} with, per binary metric, acc_ (decision p > 0.5), bacc_ (balanced
    accuracy: mean recall of pass and fail, decision p > the training pass rate, the Bayes
    decision for it) and auc_; for NC and DDC acc_ (argmax of the probabilities) and bacc_
    (argmax of p / training class frequency); mae_ep; over the predicted EPDMS mae_epdms,
    spearman (per scene, over its candidates), regret; and how the reward ranks the expert
    against the policy samples (expert_vs_policy pairwise, expert_top_policy per scene) and
    against all candidates (expert_vs_all, expert_top_all) that the scorer ranks no higher
    than the expert (:func:`_expert_ranking`). The baseline predicts the training means: the
    majority class for accuracy, a constant (AUC 0.5, balanced accuracy 1 / classes present).
    """
    rows = {"rwm": {}, "mean_baseline": {}}
    tm = dict(train_means or {})
    for i, n in enumerate(rwm_lib.BINARY_METRICS):
        y = outs[f"y_{n}"]
        mask = outs["ec_weight"] > 0 if n == "ec" else np.ones(y.shape, bool)
        if not mask.any():
            continue
        p, yy = outs["binary_prob"][..., i][mask], y[mask] > 0.5
        prior = tm.get(f"label/{n}", float(np.mean(yy)))
        rows["rwm"][f"acc_{n}"] = float(np.mean((p > 0.5) == yy))
        rows["rwm"][f"bacc_{n}"] = _balanced_accuracy((p > prior).astype(int), yy.astype(int), 2)
        rows["rwm"][f"auc_{n}"] = _auc(p, yy)
        const = np.full(yy.shape, int(prior > 0.5))
        rows["mean_baseline"][f"acc_{n}"] = float(np.mean(const == yy))
        rows["mean_baseline"][f"bacc_{n}"] = _balanced_accuracy(const, yy.astype(int), 2)
        rows["mean_baseline"][f"auc_{n}"] = 0.5 if 0 < yy.mean() < 1 else float("nan")
    for n in THREE_CLASS:
        y = np.clip(np.round(2 * outs[f"y_{n}"]), 0, 2).astype(int)
        prob = outs[f"{n}_prob"]
        freqs = np.asarray([tm.get(f"label/{n}_class{c}", 0.0) for c in range(3)])
        if freqs.sum() <= 0:
            freqs = np.bincount(y.ravel(), minlength=3) / y.size
        balanced = np.argmax(prob / np.maximum(freqs, 1e-3), -1)
        rows["rwm"][f"acc_{n}"] = float(np.mean(np.argmax(prob, -1) == y))
        rows["rwm"][f"bacc_{n}"] = _balanced_accuracy(balanced, y, 3)
        const = np.full(y.shape, int(np.argmax(freqs)))
        rows["mean_baseline"][f"acc_{n}"] = float(np.mean(const == y))
        rows["mean_baseline"][f"bacc_{n}"] = _balanced_accuracy(const, y, 3)
    rows["rwm"]["mae_ep"] = float(np.mean(np.abs(outs["ep_pred"] - outs["y_ep"])))
    rows["mean_baseline"]["mae_ep"] = float(np.mean(np.abs(
        tm.get("label/ep", float(np.mean(outs["y_ep"]))) - outs["y_ep"])))
    const = np.full_like(outs["true"], tm.get("label/epdms", 0.0))
    source = outs.get("source")
    for name, pred in (("rwm", outs["reward"]), ("mean_baseline", const)):
        rows[name]["mae_epdms"] = float(np.mean(np.abs(pred - outs["true"])))
        rows[name]["spearman"] = _spearman_per_scene(pred, outs["true"])
        rows[name]["regret"] = _regret(pred, outs["true"])
        if source is not None:
            for tag, srcs in (("policy", ("policy",)), ("all", ("vocab", "policy", "perturb"))):
                pw, top = _expert_ranking(pred, outs["true"], np.asarray(source), srcs)
                rows[name][f"expert_vs_{tag}"], rows[name][f"expert_top_{tag}"] = pw, top
    return rows
