"""Orbax checkpointing: every stage saves its TrainState and resumes from its latest step.

Saves are asynchronous (orbax writes in background threads while training goes on). A save that
fails in the background (a full or unwritable disk) is reported at the next save, at the next
:meth:`Checkpointer.check_for_errors` or at :meth:`Checkpointer.wait` as a
:class:`CheckpointError` naming the directory. Orbax's threads of a failed save keep waiting for
a commit signal that never comes, and the interpreter would wait for them at exit (for orbax's
600 s barrier timeout): :func:`exit_on_checkpoint_error` ends the process at once instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (the message names the directory and the step)."""


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
        self._failed: BaseException | None = None
        self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "extra"))

    @property
    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def _fail(self, what: str, e: BaseException) -> CheckpointError:
        self._failed = e
        return CheckpointError(f"{what} under {self.directory} failed: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''} (is the disk full "
                               f"or the directory unwritable?)")

    def check_for_errors(self) -> None:
        """Raise CheckpointError if an earlier background save failed."""
        if self._failed is not None:
            raise CheckpointError(f"an earlier checkpoint save under {self.directory} failed: "
                                  f"{self._failed}")
        try:
            self._mgr.check_for_errors()
        except Exception as e:      # orbax re-raises the background thread's error as is
            raise self._fail("a background checkpoint save", e) from e

    def save(self, step: int, state: Any, extra: dict | None = None, force: bool = False) -> bool:
        self.check_for_errors()
        try:
            saved = self._mgr.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})),
                force=force)
        except Exception as e:
            raise self._fail(f"saving checkpoint step {step}", e) from e
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
        """Wait for the background saves; CheckpointError if one failed."""
        self.check_for_errors()
        try:
            self._mgr.wait_until_finished()
        except Exception as e:
            raise self._fail("finishing a checkpoint save", e) from e

    def close(self) -> None:
        """Wait for pending saves and release the manager. After a failed save this does not
        wait (orbax's threads of that save never finish)."""
        if self._failed is not None:
            return
        try:
            self.wait()
        finally:
            if self._failed is None:
                self._mgr.close()


@contextlib.contextmanager
def exit_on_checkpoint_error(code: int = 3) -> Iterator[None]:
    """Print a CheckpointError and end the process with ``code`` at once (``os._exit``), without
    waiting for orbax's background threads of the failed save. For entry points only."""
    try:
        yield
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)
