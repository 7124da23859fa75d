"""Orbax checkpointing: every stage saves its TrainState and resumes from its latest step."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    """A thin wrapper over ``orbax.checkpoint.CheckpointManager``.

    ``save(step, state, extra)`` stores the pytree ``state`` and a JSON dict ``extra`` (e.g. the
    data-iterator position or the stage's anchors); ``restore_latest(abstract_state)`` returns
    ``(state, step, extra)`` or None when there is no checkpoint yet.
    """

    def __init__(self, directory: str, max_to_keep: int = 2, save_every: int = 1):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               save_interval_steps=max(1, int(save_every)),
                                               create=True)
        self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "extra"))

    @property
    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state: Any, extra: dict | None = None, force: bool = False) -> bool:
        saved = self._mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})), force=force)
        return bool(saved)

    def restore_latest(self, abstract_state: Any):
        step = self._mgr.latest_step()
        if step is None:
            return None
        return self.restore(step, abstract_state)

    def restore(self, step: int, abstract_state: Any):
        out = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
        return out["state"], step, dict(out["extra"] or {})

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
