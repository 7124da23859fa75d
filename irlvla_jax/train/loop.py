"""The one training loop every stage runs: resume, step, log, evaluate, checkpoint.

    result = loop.run(LoopSpec.of("irl", config.irl), out_dir, step_fn, state, batches, rng)

A stage supplies a pure, jitted ``step_fn(state, batch, rng) -> (state, metrics)`` and a
deterministic ``batches(start_step)`` iterator; the loop owns everything around them, the same
way for IL, IRL and PPO:

* **resume**: the latest orbax checkpoint under ``<out_dir>/checkpoints`` (state, step and the
  stage's JSON extras); step ``s`` uses ``fold_in(rng, s)`` and ``batches(s)``, so a resumed run
  repeats an uninterrupted one. The resolved config is saved as ``<out_dir>/config.json``; a
  resume whose model differs from the checkpoint's says which fields changed.
* **no per-step host sync**: metrics stay on device until a log (or checkpoint) step; then the
  pending steps are fetched at once. ``running_means`` (a key prefix) keeps exact means of those
  metrics over every step of the run (IRL's label statistics), saved with each checkpoint.
* **logging** on log steps only: ``metrics.jsonl`` + TensorBoard (process 0), samples/s, a tqdm
  bar; after a resume the records past the restored step are dropped, not repeated.
* **evaluation hooks**: ``periodic_eval(state, step) -> dict`` every ``eval_every`` steps and
  ``final_eval(state)`` at the end (scalars logged under ``eval/``); the stage writes the final
  result with ``tracking.write_result`` (process 0 only).
* **checkpoints** every ``ckpt_every`` steps and at the end; a failed save (also one that failed
  in the background, checked on log steps) raises ``CheckpointError`` naming the directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping

import jax

from irlvla_jax import tracking
from irlvla_jax.checkpoint import Checkpointer

log = logging.getLogger(__name__)

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, jax.Array]]]

# Per stage, the config fields that fix the shapes of its state: a checkpoint trained with other
# values cannot be restored, and a later stage cannot load it.
STRUCTURAL_FIELDS = {"il": ("model", "data.sizes", "il.freeze"),
                     "irl": ("rwm", "data.sizes"),
                     "rl": ("model", "data.sizes", "ppo.value_hidden")}
# Fields under those that change how the state is computed, not its shapes: a resume may
# switch them (the remat switches and the BEV attention's query chunks: memory against
# recomputation, same params).
RUNTIME_FIELDS = ("model.vision.remat", "model.semantic.llm.remat", "model.bev.remat",
                  "model.planner.remat", "model.bev.attn_q_chunk")


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """How long a stage trains and how often it logs, evaluates and checkpoints."""
    stage: str                  # "il" | "irl" | "rl": progress-bar label and log prefix
    num_steps: int
    log_every: int
    ckpt_every: int
    keep_ckpts: int = 2
    eval_every: int = 0         # 0: no periodic evaluation
    samples_per_step: int = 0   # for samples_per_s (0: not reported)

    @classmethod
    def of(cls, stage: str, section: Mapping[str, Any], num_steps_key: str = "num_steps",
           samples_per_step: int = 0) -> "LoopSpec":
        """The spec of a config section (``config.il`` / ``.irl`` / ``.ppo``)."""
        spec = cls(stage=stage, num_steps=int(section[num_steps_key]),
                   log_every=int(section["log_every"]), ckpt_every=int(section["ckpt_every"]),
                   keep_ckpts=int(section.get("keep_ckpts", 2)),
                   eval_every=int(section.get("eval_every", 0)),
                   samples_per_step=int(samples_per_step))
        spec.validate(f"config.{'ppo' if stage == 'rl' else stage}", num_steps_key)
        return spec

    def validate(self, where: str = "loop", num_steps_key: str = "num_steps") -> None:
        """Raise ValueError naming the field when a step count or interval is not positive."""
        for name, value, low in ((num_steps_key, self.num_steps, 1),
                                 ("log_every", self.log_every, 1),
                                 ("ckpt_every", self.ckpt_every, 1),
                                 ("keep_ckpts", self.keep_ckpts, 1),
                                 ("eval_every", self.eval_every, 0)):
            if value < low:
                raise ValueError(f"{where}.{name} = {value}: must be >= {low}")


@dataclasses.dataclass
class LoopResult:
    state: Any
    start_step: int                     # the step the run resumed from (0: fresh)
    extra: dict                         # the last checkpoint's extras
    running_means: dict[str, float]     # see ``running_means`` in :func:`run`
    final: Any = None                   # what ``final_eval`` returned


# ----------------------------------------------------------------------------------------------
# The run's config, saved next to its checkpoints.

def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, tuple):
        tree = list(tree)
    return {prefix[:-1]: tree}


def config_dict(config: Any) -> dict:
    """A JSON-able dict of an ml_collections config (tuples become lists)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(raw, default=str))


def config_changes(saved: Mapping[str, Any], current: Any,
                   prefixes: tuple[str, ...] | None = None) -> list[str]:
    """``'field: saved -> current'`` for every leaf (under ``prefixes``; None: all) that
    differs between a saved config dict and ``current``."""
    a = _flatten(saved)
    b = _flatten(current if isinstance(current, dict) else config_dict(current))
    keys = sorted(k for k in set(a) | set(b)
                  if prefixes is None or any(k == p or k.startswith(p + ".") for p in prefixes))
    missing = "<absent>"

    def same(x, y):     # a field added since the run was saved, left empty, is no change
        empty = (missing, None, "", [], {})
        return x == y or (x in empty and y in empty)
    return [f"{k}: {a.get(k, missing)!r} -> {b.get(k, missing)!r}"
            for k in keys if not same(a.get(k, missing), b.get(k, missing))]


def saved_config(stage_dir: str) -> dict | None:
    path = os.path.join(stage_dir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_config(stage_dir: str, config: Any, what: str) -> None:
    """SystemExit when ``config``'s structural fields (:data:`STRUCTURAL_FIELDS` of the stage
    folder's name) differ from the config saved in ``stage_dir``; the message lists them.

    what: the sentence's subject, e.g. "the IL checkpoint under runs/x/il"."""
    saved = saved_config(stage_dir)
    stage = os.path.basename(os.path.normpath(stage_dir))
    if saved is None or stage not in STRUCTURAL_FIELDS:
        return
    changes = [c for c in config_changes(saved, config, STRUCTURAL_FIELDS[stage])
               if c.split(":", 1)[0] not in RUNTIME_FIELDS]
    if changes:
        raise SystemExit(
            f"{what} was trained with another model configuration; these fields differ "
            f"(saved -> now):\n  " + "\n  ".join(changes) +
            f"\nRun with the saved values (see {os.path.join(stage_dir, 'config.json')}) or use "
            f"a new --workdir.")


def save_config(stage_dir: str, config: Any) -> None:
    if config is not None:
        tracking.write_result(os.path.join(stage_dir, "config.json"), config_dict(config))


# ----------------------------------------------------------------------------------------------
# The loop.

def _restore(ckpt: Checkpointer, state: Any, stage_dir: str, config: Any):
    """(state, start, extra) from the latest checkpoint, or None; a mismatch is explained."""
    if ckpt.latest_step is None:
        return None
    if config is not None:
        check_config(stage_dir, config, f"the {os.path.basename(stage_dir)} checkpoint under "
                                        f"{stage_dir}")
        saved = saved_config(stage_dir)
        other = config_changes(saved, config) if saved is not None else []
        if other:
            print(f"{os.path.basename(stage_dir)}: resuming with changed settings: "
                  + "; ".join(other[:8]) + (" ..." if len(other) > 8 else ""), flush=True)
    try:
        return ckpt.restore_latest(state)
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(
            f"cannot resume from {ckpt.directory} (step {ckpt.latest_step}): its state does "
            f"not match this run's ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            f"It was probably trained with another model configuration: run with that "
            f"configuration or use a new --workdir.") from None


def run(spec: LoopSpec, out_dir: str, step_fn: StepFn, state: Any,
        batches: Callable[[int], Iterator], rng: jax.Array, *,
        config: Any = None,
        place: Callable[[Any], Any] | None = None,
        ckpt_extra: Callable[[], dict] | dict | None = None,
        periodic_eval: Callable[[Any, int], Mapping[str, float]] | None = None,
        final_eval: Callable[[Any], Any] | None = None,
        running_means: str | None = None,
        postfix: Callable[[Mapping[str, float]], Mapping[str, Any]] | None = None,
        show_progress: bool = True) -> LoopResult:
    """Train ``state`` with ``step_fn`` from the latest checkpoint in ``<out_dir>/checkpoints``
    to ``spec.num_steps``.

    step_fn(state, batch, rng) -> (state, metrics of [] arrays); batches(start) -> iterator of
    batches from step ``start`` on; step s uses ``fold_in(rng, s)``. ``config`` (saved as
    ``config.json``, checked on resume), ``place(state)`` puts a restored or fresh state on the
    mesh, ``ckpt_extra()`` is saved with each checkpoint, ``periodic_eval`` runs every
    ``spec.eval_every`` steps (not at the last), ``final_eval(state)`` once at the end (its
    scalar entries logged under ``eval/``, the whole result in ``LoopResult.final``),
    ``running_means`` is the prefix of metrics whose exact means over all steps are kept,
    ``postfix(metrics)`` the progress bar's figures.
    """
    from tqdm import tqdm
    spec.validate()
    os.makedirs(out_dir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), max_to_keep=spec.keep_ckpts)
    writer = None
    try:
        # placed first, so that a checkpoint is restored straight into the state's shardings
        # (multi-host: every process reads only its own shards)
        state = place(state) if place is not None else state
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            if isinstance(x, jax.Array) else x, state)
        restored = _restore(ckpt, abstract, out_dir, config)
        start, extra = 0, {}
        if restored is not None:
            state, start, extra = restored
            log.info("%s: resumed from step %d", spec.stage, start)
        save_config(out_dir, config)
        means = dict(extra.get("running_means", {})) if running_means else {}
        sums = {k: v * start for k, v in means.items()}
        writer = tracking.MetricWriter(out_dir, resume_step=start)
        it = batches(start)
        pending: list[tuple[int, Mapping[str, jax.Array]]] = []
        t0, seen = time.time(), 0

        def flush() -> dict[str, float]:
            """Fetch the pending steps' metrics (one transfer); fold them into the means.
            Returns the last step's metrics as floats."""
            nonlocal means
            fetched = jax.device_get([m for _, m in pending])
            last = {}
            for m in fetched:
                last = {k: float(v) for k, v in m.items()}
                if running_means:
                    for k, v in last.items():
                        if k.startswith(running_means):
                            sums[k] = sums.get(k, 0.0) + v
            if running_means:
                steps_done = pending[-1][0] + 1
                means = {k: v / steps_done for k, v in sums.items()}
            pending.clear()
            return last

        bar = tqdm(total=spec.num_steps, initial=start, desc=spec.stage, dynamic_ncols=True,
                   disable=not show_progress)
        with bar:
            for step in range(start, spec.num_steps):
                state, metrics = step_fn(state, next(it), jax.random.fold_in(rng, step))
                if running_means or not pending:
                    pending.append((step, metrics))
                else:
                    pending[-1] = (step, metrics)
                seen += spec.samples_per_step
                done = step + 1
                last_step = done == spec.num_steps
                if done % spec.log_every == 0 or last_step:
                    m = flush()
                    if spec.samples_per_step:
                        m["samples_per_s"] = seen / max(time.time() - t0, 1e-9)
                    t0, seen = time.time(), 0
                    writer.write(done, m)
                    ckpt.check_for_errors()     # a background save that failed ends the run
                    if postfix is not None:
                        bar.set_postfix(postfix(m))
                if spec.eval_every and done % spec.eval_every == 0 and not last_step:
                    ev = periodic_eval(state, done)
                    writer.write(done, {f"eval/{k}": v for k, v in ev.items()})
                if done % spec.ckpt_every == 0 or last_step:
                    if running_means and pending:
                        flush()
                    ext = dict(ckpt_extra() if callable(ckpt_extra) else (ckpt_extra or {}))
                    if running_means:
                        ext["running_means"] = means
                    ckpt.save(done, state, {"stage": spec.stage, **ext}, force=True)
                bar.update(1)
        ckpt.wait()
        final = None
        if final_eval is not None:
            final = final_eval(state)
            if isinstance(final, Mapping):
                writer.write(spec.num_steps, {f"eval/{k}": v for k, v in final.items()
                                              if isinstance(v, (int, float))})
        return LoopResult(state=state, start_step=start, extra=extra, running_means=means,
                          final=final)
    finally:
        if writer is not None:
            writer.close()
        ckpt.close()
