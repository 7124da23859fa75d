"""One page per run: ``<workdir>/report.html``, self-contained (pictures inline as base64 PNGs).

    python -m irlvla_jax.report WORKDIR        # (re)write WORKDIR/report.html

The eval stage writes it at its end; this regenerates it from the files the stages left in the
workdir (what is missing is left out):

* training curves of each stage, from ``<stage>/metrics.jsonl``: IL loss and held-out L2 /
  EPDMS; the reward world model's losses, reward MAE and expert preference; PPO's reward from
  the RWM and from the scorer, its losses and KL to the IL policy;
* the RWM's held-out quality next to the training-mean baseline (``irl/eval.json``);
* the per-policy EPDMS table (``eval/eval.json``) and the BEV pictures (``eval/bev_*.png``);
* the config (the one given, else the newest ``<stage>/config.json``, eval's included) and the
  commands that wrote the workdir (``commands.txt``, appended by ``launch.py``).
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import html
import io
import json
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from irlvla_jax import types

STAGES = ("il", "irl", "rl")
STAGE_TITLES = {"il": "Stage 1: imitation learning (IL)",
                "irl": "Stage 2: reward world model (inverse RL)",
                "rl": "Stage 3: RL (PPO against the reward world model)"}
#: The per-policy table's columns (keys of an eval.json row).
TABLE_COLUMNS = ("epdms", "pdms_v1", *types.SUBSCORE_NAMES, "l2_2s")


@dataclasses.dataclass(frozen=True)
class Panel:
    """One plot of a stage's curves: every metric whose key is in ``keys`` (a key ending in '*'
    matches all keys with that prefix) against the step."""
    title: str
    keys: tuple[str, ...]
    ylabel: str = ""


PANELS = {
    "il": (Panel("training loss", ("loss",)),
           Panel("trajectory losses", ("traj_cls", "traj_l1")),
           Panel("held-out L2 to the expert", ("eval/l2_1s", "eval/l2_2s", "eval/l2_4s"), "m"),
           Panel("held-out EPDMS", ("eval/epdms",))),
    "irl": (Panel("training loss", ("loss", "irl_hinge", "irl_maxent")),
            Panel("per-metric losses", ("loss/*",)),
            Panel("reward MAE (train batch)", ("reward_mae",)),
            Panel("expert preferred over candidates", ("expert_preferred",), "fraction")),
    "rl": (Panel("reward per step", ("reward/rwm", "reward/scorer")),
           Panel("reward of the first plan", ("reward_first_step/rwm",
                                              "reward_first_step/scorer")),
           Panel("PPO losses", ("pg_loss", "value_loss")),
           # ppo.bc_weight > 0: IL's trajectory loss on the logged future (classification, L1)
           Panel("BC term (IL's trajectory loss)", ("bc_cls", "bc_l1")),
           Panel("KL to the IL policy, mode entropy", ("kl_il", "mode_entropy"))),
}


# ----------------------------------------------------------------------------------------------
# Reading a workdir

def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``metrics.jsonl`` -> key -> (steps [M], values [M]) over the records holding a finite
    number for it, in file order. A torn last line (a killed run) is skipped."""
    series: dict[str, tuple[list, list]] = {}
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            step = rec.get("step")
            for k, v in rec.items():
                if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if step is not None and math.isfinite(v):
                    xs, ys = series.setdefault(k, ([], []))
                    xs.append(step)
                    ys.append(v)
    return {k: (np.asarray(x), np.asarray(y, np.float64)) for k, (x, y) in series.items()}


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _wall_time(path: str) -> float | None:
    """Seconds between the first and the last record of a metrics.jsonl."""
    times = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    times.append(float(json.loads(line)["time"]))
                except (ValueError, KeyError, TypeError):
                    continue
    return times[-1] - times[0] if len(times) > 1 else None


# ----------------------------------------------------------------------------------------------
# Pictures

def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _matching(series: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    out = []
    for k in keys:
        if k.endswith("*"):
            out += sorted(s for s in series if s.startswith(k[:-1]))
        elif k in series:
            out.append(k)
    return out


#: Curves with more points than this are drawn faint, under their :func:`smooth` version.
SMOOTH_ABOVE = 30
_COLORS = [f"C{i}" for i in range(10)]


def smooth(y: np.ndarray) -> np.ndarray:
    """[M] -> [M] exponential moving average over about M / 20 points, bias-corrected at the
    start (as TensorBoard smooths)."""
    alpha = 1.0 / max(2.0, len(y) / 20.0)
    out, acc, norm = np.empty(len(y)), 0.0, 0.0
    for i, v in enumerate(y):
        acc = (1 - alpha) * acc + alpha * v
        norm = (1 - alpha) * norm + alpha
        out[i] = acc / norm
    return out


def plot_curves(stage: str, series: Mapping[str, tuple[np.ndarray, np.ndarray]]
                ) -> Figure | None:
    """The stage's :data:`PANELS` in a row (panels without data left out); None when none has
    data. series: :func:`read_metrics` of the stage."""
    panels = [(p, _matching(series, p.keys)) for p in PANELS[stage]]
    panels = [(p, keys) for p, keys in panels if keys]
    if not panels:
        return None
    fig = Figure(figsize=(4.0 * len(panels), 3.0), dpi=90)
    FigureCanvasAgg(fig)
    for i, (panel, keys) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        labels = [k.rsplit("/", 1)[-1] for k in keys]
        if len(set(labels)) < len(labels):
            labels = keys
        positive = True
        for k, label, color in zip(keys, labels, _COLORS):
            x, y = series[k]
            if len(x) > SMOOTH_ABOVE:           # noisy per-step figures: raw, faint + smoothed
                ax.plot(x, y, lw=0.8, alpha=0.25, color=color)
                ax.plot(x, smooth(y), lw=1.6, color=color, label=label)
            else:
                ax.plot(x, y, marker="o" if len(x) < 12 else None, ms=3, lw=1.4, color=color,
                        label=label)
            positive &= bool((y > 0).all())
        steps = np.concatenate([series[k][0] for k in keys])
        if steps.min() == steps.max():             # one logged step: a readable axis around it
            ax.set_xlim(steps.min() - 1, steps.max() + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        lo, hi = (min(series[k][1].min() for k in keys), max(series[k][1].max() for k in keys))
        if positive and hi > 30 * lo:           # losses that fall by orders of magnitude
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("update" if stage == "rl" else "step", fontsize=8)
        if panel.ylabel:
            ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=6 if len(keys) > 4 else 7, ncol=2 if len(keys) > 4 else 1)
    fig.tight_layout()
    return fig


def plot_rwm_quality(quality: Mapping[str, Mapping[str, float]]) -> Figure | None:
    """Bars of the RWM's held-out AUC per sub-metric and its ranking figures, next to the
    training-mean baseline. quality: ``irl/eval.json`` ({'rwm': {...}, 'mean_baseline': {...}})."""
    rwm, base = quality.get("rwm") or {}, quality.get("mean_baseline") or {}
    aucs = [k for k in rwm if k.startswith("auc_")]
    ranking = [k for k in ("spearman", "regret", "expert_vs_all", "expert_top_all") if k in rwm]
    if not aucs and not ranking:
        return None
    groups = [(f"AUC per sub-metric ({rwm.get('num_scenes', '?')} held-out scenes)", aucs),
              ("ranking the candidates", ranking)]
    groups = [(t, keys) for t, keys in groups if keys]
    fig = Figure(figsize=(5.5 * len(groups), 3.0), dpi=90)
    FigureCanvasAgg(fig)
    for i, (title, keys) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        x = np.arange(len(keys))
        for j, (name, row, color) in enumerate((("RWM", rwm, "#5e3c99"),
                                                ("training-mean baseline", base, "#bdbdbd"))):
            vals = [row.get(k) if row.get(k) is not None else np.nan for k in keys]
            ax.bar(x + (j - 0.5) * 0.38, vals, 0.38, label=name, color=color)
        ax.set_xticks(x, [k.removeprefix("auc_") for k in keys], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# The page

def _table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str]) -> str:
    """An HTML table, the best value of each score column in bold (L2: the lowest, the human
    log's zero left out)."""
    columns = [c for c in columns if any(c in r for r in rows.values())]
    best = {}
    for c in columns:
        vals = {n: r.get(c) for n, r in rows.items() if isinstance(r.get(c), (int, float))}
        if c.startswith("l2_"):
            vals = {n: v for n, v in vals.items() if v > 0}
            best[c] = min(vals.values()) if vals else None
        else:
            best[c] = max(vals.values()) if vals else None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for name, r in rows.items():
        cells = []
        for c in columns:
            v = r.get(c)
            text = "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
            if v is not None and v == best[c] and len(rows) > 1:
                text = f"<b>{text}</b>"
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _img(b64: str, alt: str, width: str = "100%") -> str:
    return f'<img alt="{html.escape(alt)}" style="max-width:{width}" ' \
           f'src="data:image/png;base64,{b64}">'


def config_lines(tree: Any, prefix: str = "") -> list[str]:
    """A nested config dict -> ``a.b.c = value`` lines (values as JSON), one per leaf."""
    if isinstance(tree, Mapping) and tree:
        return [line for k, v in tree.items() for line in config_lines(v, f"{prefix}{k}.")]
    return [f"{prefix[:-1]} = {json.dumps(tree, default=str)}"]


def _config_text(workdir: str, config: Any) -> tuple[str, str]:
    """(where it came from, the config as ``a.b = value`` lines)."""
    if config is not None:
        raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return "of the command that wrote this report", "\n".join(config_lines(raw))
    saved = [p for p in (os.path.join(workdir, s, "config.json") for s in (*STAGES, "eval"))
             if os.path.exists(p)]
    if not saved:
        return "not found: no <stage>/config.json", ""
    newest = max(saved, key=os.path.getmtime)
    return os.path.relpath(newest, workdir), "\n".join(config_lines(_read_json(newest) or {}))


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto;max-height:480px}
.bev{display:flex;flex-wrap:wrap;gap:8px}.bev img{width:440px}.note{color:#666;font-size:13px}"""


def build_html(workdir: str, config: Any = None) -> str:
    """The report page of ``workdir`` (see the module docstring)."""
    workdir = os.path.abspath(workdir)
    name = getattr(config, "name", None) or (_read_json(os.path.join(
        workdir, "eval", "eval.json")) or {}).get("split", "")
    parts = [f"<h1>irlvla_jax run: {html.escape(os.path.basename(workdir))}</h1>",
             f"<p class=note>{html.escape(workdir)} &middot; {html.escape(str(name))} &middot; "
             f"report written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"]

    ev = _read_json(os.path.join(workdir, "eval", "eval.json"))
    if ev and ev.get("policies"):
        n = next(iter(ev["policies"].values())).get("num_scenes", "?")
        parts.append(f"<h2>Held-out EPDMS ({html.escape(str(ev.get('split', '')))}, {n} scenes)"
                     f"</h2>" + _table(ev["policies"], TABLE_COLUMNS) +
                     "<p class=note>eval/eval.json; bold: the best of each column (L2 at 2 s: "
                     "the lowest, the human log left out).</p>")

    for stage in STAGES:
        mpath = os.path.join(workdir, stage, "metrics.jsonl")
        series = read_metrics(mpath)
        fig = plot_curves(stage, series) if series else None
        extra = ""
        if stage == "irl":
            quality = _read_json(os.path.join(workdir, "irl", "eval.json"))
            qfig = plot_rwm_quality(quality) if isinstance(quality, dict) else None
            if qfig is not None:
                extra = ("<p>Held-out quality of the reward world model (irl/eval.json):</p>"
                         + _img(_png(qfig), "RWM quality"))
        if stage == "rl":
            rl_eval = _read_json(os.path.join(workdir, "rl", "eval.json"))
            if isinstance(rl_eval, dict) and isinstance(rl_eval.get("policies"), dict):
                extra = ("<p>At the end of RL (rl/eval.json):</p>"
                         + _table(rl_eval["policies"], TABLE_COLUMNS))
        if fig is None and not extra:
            continue
        seconds = _wall_time(mpath)
        last = max((int(x[-1]) for x, _ in series.values()), default=0)
        took = f", {seconds / 60:.1f} min between its first and last log" if seconds else ""
        parts.append(f"<h2>{STAGE_TITLES[stage]}</h2><p class=note>{stage}/metrics.jsonl: "
                     f"{last} {'updates' if stage == 'rl' else 'steps'}{took}</p>")
        if fig is not None:
            parts.append(_img(_png(fig), f"{stage} curves"))
        parts.append(extra)

    bevs = sorted(glob.glob(os.path.join(workdir, "eval", "bev_*.png")),
                  key=lambda p: int("".join(filter(str.isdigit, os.path.basename(p))) or 0))
    if bevs:
        imgs = []
        for p in bevs:
            with open(p, "rb") as f:
                imgs.append(_img(base64.b64encode(f.read()).decode("ascii"),
                                 os.path.basename(p), "440px"))
        parts.append("<h2>Plans on held-out scenes</h2><div class=bev>" + "".join(imgs) +
                     "</div><p class=note>eval/bev_*.png: ego frame, forward up; later plans "
                     "are drawn over earlier, narrower ones.</p>")

    source, cfg = _config_text(workdir, config)
    commands = ""
    cpath = os.path.join(workdir, "commands.txt")
    if os.path.exists(cpath):
        with open(cpath) as f:
            commands = f.read()
    parts.append("<h2>How it was made</h2><p>Commands that wrote this workdir "
                 f"(commands.txt):</p><pre>{html.escape(commands or 'not recorded')}</pre>"
                 f"<details><summary>Config ({html.escape(source)})</summary>"
                 f"<pre>{html.escape(cfg)}</pre></details>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>irlvla_jax "
            f"{html.escape(os.path.basename(workdir))}</title><style>{CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def write_report(workdir: str, config: Any = None) -> str:
    """Write ``<workdir>/report.html`` (:func:`build_html`); returns its path."""
    path = os.path.join(workdir, "report.html")
    page = build_html(workdir, config)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python -m irlvla_jax.report WORKDIR   (writes WORKDIR/report.html "
                         "from the run's metrics.jsonl, eval.json and bev_*.png files)")
    print(write_report(sys.argv[1]))
