"""Run outputs a program and a person can read: metrics as JSON lines + TensorBoard, tables, and
a console that shows the run's events rather than its libraries' chatter."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

#: Libraries that log routine progress at INFO (orbax's checkpoint manager and TFDS's dataset
#: info through absl, grain, pyogrio's map writes): off unless ``--verbosity=0`` or more. jax's
#: loggers are left at their default level, which follows the root logger's: jax reads the
#: "jax" logger's level when it is imported, and a level set there makes it add a second handler.
LIBRARY_LOGGERS = ("absl", "orbax", "tensorflow_datasets", "grain", "etils", "pyogrio")
#: Library warnings that every run of this project triggers and that need no action (TFDS on
#: our builder's custom config and on a dataset folder it is about to write), by message start.
ROUTINE_WARNINGS = ("Using custom data configuration", "Variant folder")
#: The project's own logger: its INFO records are stage events (a resume, anchors written).
PROJECT_LOGGER = "irlvla_jax"


class _DropRoutineWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING
                    and str(record.msg).startswith(ROUTINE_WARNINGS))


class _PlainStderr(logging.StreamHandler):
    """The message alone, on whatever ``sys.stderr`` is at the time (tests swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_console(verbosity: int = -1) -> None:
    """What a run prints, by absl's verbosity scale (``--verbosity``).

    -1 (launch.py's default): libraries log warnings and errors only, less the
    :data:`ROUTINE_WARNINGS`; 0: their INFO logs too (absl's default); 1: DEBUG. At every level
    the project's own INFO records print as plain lines (no absl prefix): they are the run's
    events. Errors and tracebacks are never filtered.
    """
    level = (logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0
             else logging.DEBUG)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(verbosity)
    logging.getLogger().setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    absl_logger = logging.getLogger("absl")
    for f in [f for f in absl_logger.filters if isinstance(f, _DropRoutineWarnings)]:
        absl_logger.removeFilter(f)
    if verbosity < 0:
        absl_logger.addFilter(_DropRoutineWarnings())
    ours = logging.getLogger(PROJECT_LOGGER)
    ours.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    ours.propagate = False
    if not any(isinstance(h, _PlainStderr) for h in ours.handlers):
        ours.addHandler(_PlainStderr())


def _plain(v: Any) -> Any:
    """JSON-friendly scalar (numpy/jax scalars to float/int; NaN kept as null)."""
    if hasattr(v, "item") and np.ndim(v) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


#: The command-line flags that ask for help (absl's, and the usual short one).
HELP_FLAGS = frozenset({"-h", "--help", "-?", "--helpshort"})


def run_app(main, usage: str) -> None:
    """``absl.app.run(main)`` for an entry point a person runs: ``-h`` / ``--help`` print
    ``usage`` (not absl's flag dump; ``--helpfull`` still lists every flag), and ``--verbosity``
    is -1 unless given, and sets up the console (:func:`configure_console`) before ``main``."""
    from absl import app, flags
    if HELP_FLAGS & set(sys.argv[1:]):
        print(usage.rstrip())
        sys.exit(0)

    def configured_main(argv):
        given = flags.FLAGS["verbosity"].present
        configure_console(flags.FLAGS.verbosity if given else -1)
        return main(argv)
    app.run(configured_main)


def _drop_records_after(path: str, step: int) -> None:
    """Keep only the records of ``path`` (JSON lines) up to ``step``; a run that resumes from
    ``step`` writes the later ones again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, AttributeError):
            continue                    # a torn last line of a killed run
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


class MetricWriter:
    """Writes ``metrics.jsonl`` (one JSON object per line: step, wall time, metrics) and
    TensorBoard event files into ``directory``. Only process 0 writes on multi-host runs."""

    def __init__(self, directory: str, enabled: bool | None = None, resume_step: int = 0):
        """resume_step: the step a resumed run restarts from; records written after it by the
        interrupted run are dropped (JSON lines) or purged (TensorBoard), not repeated."""
        self.directory = directory
        self.enabled = is_main_process() if enabled is None else enabled
        self._tb = None
        self._f = None
        if self.enabled:
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, "metrics.jsonl")
            _drop_records_after(path, resume_step)
            self._f = open(path, "a", buffering=1)
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(directory, "tb"),
                                         purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # TensorBoard output is optional; JSON lines are not
                self._tb = None

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), "time": time.time()}
        rec.update({k: _plain(v) for k, v in metrics.items()})
        self._f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def is_main_process() -> bool:
    """Process 0 writes the run's files; the others compute only."""
    import jax
    return jax.process_index() == 0


def write_result(path: str, obj: Mapping[str, Any]) -> None:
    """:func:`write_json` from process 0 only (a stage's ``eval.json``, ``config.json``)."""
    if is_main_process():
        write_json(path, obj)


def write_json(path: str, obj: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_plain)


def print_table(title: str, rows: Mapping[str, Mapping[str, Any]], columns: list[str] | None = None
                ) -> None:
    """A rich table: one row per key of ``rows`` (e.g. a policy), one column per metric."""
    from rich.console import Console
    from rich.table import Table
    columns = columns or sorted({c for r in rows.values() for c in r})
    t = Table(title=title)
    t.add_column("")
    for c in columns:
        t.add_column(c, justify="right")
    for name, r in rows.items():
        cells = []
        for c in columns:
            v = _plain(r.get(c))
            cells.append("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        t.add_row(name, *cells)
    console = Console()
    if not console.is_terminal:       # logs and pipes: do not squeeze the table into 80 columns
        console = Console(width=max(100, 12 * (len(columns) + 1)))
    console.print(t)
