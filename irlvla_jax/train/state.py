"""The TrainState every stage carries, and the optimizer factory they share.

``TrainState`` is a ``flax.struct.dataclass`` (a pytree): step, params, optimizer state and the
model's mutable collections (e.g. BatchNorm statistics). The optimizer itself is static (not a
pytree node), so a jitted step takes the whole state as one argument.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any   # mutable collections ({} when the model has none)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation,
               model_state: Any = None) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   model_state={} if model_state is None else model_state, tx=tx)

    def apply_gradients(self, grads: Any, model_state: Any = None) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state,
                            model_state=self.model_state if model_state is None else model_state)


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices/kernels only: biases, norm scales and embeddings of rank <= 1
    are left alone (decaying a LayerNorm scale toward 0 hurts)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_schedule(lr: float, warmup_steps: int, total_steps: int,
                  end_factor: float = 0.01) -> optax.Schedule:
    """Linear warmup to ``lr`` then cosine decay to ``lr * end_factor`` at ``total_steps``."""
    warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else lr, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=max(int(total_steps), warmup_steps + 1), end_value=lr * end_factor)


def make_optimizer(cfg: Mapping[str, Any], total_steps: int | None = None
                   ) -> optax.GradientTransformation:
    """AdamW with warmup-cosine learning rate and global-norm clipping.

    ``cfg`` fields: lr, warmup_steps, weight_decay, clip_norm (<= 0: no clipping), and
    num_steps (the schedule's length unless ``total_steps`` is given); optional b1, b2,
    end_lr_factor.
    """
    for k in ("lr", "warmup_steps", "weight_decay", "clip_norm"):
        if k not in cfg:
            raise ValueError(f"optimizer config is missing field {k!r}")
    total = int(total_steps if total_steps is not None else cfg["num_steps"])
    sched = make_schedule(cfg["lr"], cfg["warmup_steps"], total, cfg.get("end_lr_factor", 0.01))
    parts = []
    if cfg["clip_norm"] and cfg["clip_norm"] > 0:
        parts.append(optax.clip_by_global_norm(cfg["clip_norm"]))
    parts.append(optax.adamw(sched, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                             weight_decay=cfg["weight_decay"], mask=_decay_mask))
    return optax.chain(*parts)
