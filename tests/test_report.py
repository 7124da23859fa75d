"""The run's report (``irlvla_jax.report``): one self-contained HTML page with each stage's curves,
the RWM's quality, the per-policy table, the BEV pictures, the config and the commands, built
from the files a run leaves in its workdir; ``python -m irlvla_jax.report WORKDIR`` rewrites it."""

import base64
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from irlvla_jax import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir as the five stages leave it (metrics, eval.json files, one BEV picture, the
    eval config and the commands), with made-up numbers."""
    w = tmp_path_factory.mktemp("run")
    t = 1.7e9
    _jsonl(w / "il" / "metrics.jsonl",
           [{"step": s, "time": t + s, "loss": 50.0 / s, "traj_cls": 1.0 / s, "traj_l1": 0.5}
            for s in range(10, 410, 10)] +
           [{"step": s, "time": t + s, "eval/l2_2s": 3.0 - s / 400, "eval/epdms": 0.3 + s / 1e3}
            for s in (100, 200, 400)])
    _jsonl(w / "irl" / "metrics.jsonl",
           [{"step": s, "time": t + s, "loss": 2.0 - s / 100, "loss/dac": 0.5, "loss/nc": 0.4,
             "reward_mae": 0.3, "expert_preferred": 0.8, "grad_norm": None} for s in (10, 20)])
    with open(w / "irl" / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "loss"')                     # a killed run's torn last line
    json.dump({"rwm": {"auc_dac": 0.7, "auc_nc": 0.8, "spearman": 0.6, "num_scenes": 16},
               "mean_baseline": {"auc_dac": 0.5, "auc_nc": 0.5, "spearman": 0.0}},
              open(w / "irl" / "eval.json", "w"))
    _jsonl(w / "rl" / "metrics.jsonl",
           [{"step": s, "time": t + s, "reward/rwm": 0.5 + s / 1e3, "reward/scorer": 0.4,
             "pg_loss": -0.01, "value_loss": 0.1, "kl_il": 1e-3, "mode_entropy": 2.0,
             "bc_cls": 0.2, "bc_l1": 0.3}
            for s in range(1, 51)])
    os.makedirs(w / "eval")
    json.dump({"split": "synthetic_val", "policies": {
        "human": {"epdms": 0.93, "nc": 1.0, "num_scenes": 216, "l2_2s": 0.0},
        "il_policy": {"epdms": 0.527, "nc": 0.829, "num_scenes": 216, "l2_2s": 1.11},
        "rl_policy": {"epdms": 0.603, "nc": 0.935, "num_scenes": 216, "l2_2s": 3.69}}},
        open(w / "eval" / "eval.json", "w"))
    Image.new("RGB", (40, 30), (200, 30, 120)).save(w / "eval" / "bev_0.png")
    json.dump({"name": "tiny", "ppo": {"reward": "rwm", "num_updates": 50}},
              open(w / "eval" / "config.json", "w"))
    (w / "commands.txt").write_text("2025-01-01 00:00:00  (cd /repo) python launch.py --workdir "
                                    "runs/x\n")
    return w


def _images(page):
    return re.findall(r'<img alt="([^"]+)"[^>]* src="([^"]+)"', page)


def test_the_report_is_one_self_contained_page(workdir):
    path = report.write_report(str(workdir))
    assert path == os.path.join(str(workdir), "report.html")
    page = open(path).read()
    images = _images(page)
    assert [alt for alt, _ in images] == ["il curves", "irl curves", "RWM quality", "rl curves",
                                          "bev_0.png"]
    for alt, src in images:                  # every picture inline, and a real PNG
        assert src.startswith("data:image/png;base64,"), alt
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and img.width >= 40
    assert "http" not in page.replace("http-equiv", "")      # nothing fetched from anywhere
    # the per-policy table, the best EPDMS and NC in bold, L2's best is the lowest non-human
    assert "<th>rl_policy</th><td><b>0.603</b></td>" not in page     # human is best on epdms
    assert "<th>human</th><td><b>0.930</b></td>" in page
    assert "<td><b>1.110</b></td>" in page
    assert "400 steps" in page and "50 updates" in page
    assert "python launch.py --workdir runs/x" in page
    assert "ppo.reward = &quot;rwm&quot;" in page and "(eval/config.json)" in page


def test_curves_read_every_finite_record_and_label_by_metric(workdir):
    series = report.read_metrics(str(workdir / "irl" / "metrics.jsonl"))
    assert list(series["loss"][0]) == [10, 20]               # the torn line is skipped
    assert "grad_norm" not in series                          # null values are not points
    fig = report.plot_curves("rl", report.read_metrics(str(workdir / "rl" / "metrics.jsonl")))
    reward = fig.axes[0]
    assert reward.get_title() == "reward per step"
    assert [t.get_text() for t in reward.get_legend().get_texts()] == ["rwm", "scorer"]
    # 50 points: each drawn faint, under its smoothed version
    assert len(reward.get_lines()) == 4
    bc = [ax for ax in fig.axes if ax.get_title() == "BC term (IL's trajectory loss)"]
    assert [t.get_text() for t in bc[0].get_legend().get_texts()] == ["bc_cls", "bc_l1"]
    assert report.plot_curves("il", {}) is None


def test_smooth_is_a_bias_corrected_moving_average():
    y = np.r_[np.zeros(50), np.ones(50)]
    s = report.smooth(y)
    assert s[0] == 0.0 and s[49] == 0.0 and 0.9 < s[-1] < 1.0
    np.testing.assert_allclose(report.smooth(np.full(40, 3.0)), 3.0)


def test_python_m_report_rewrites_the_page(workdir):
    os.remove(workdir / "report.html")
    proc = subprocess.run([sys.executable, "-m", "irlvla_jax.report", str(workdir)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(workdir / "report.html")
    assert len(_images(open(workdir / "report.html").read())) == 5
    usage = subprocess.run([sys.executable, "-m", "irlvla_jax.report"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode != 0 and "usage: python -m irlvla_jax.report WORKDIR" in usage.stderr
