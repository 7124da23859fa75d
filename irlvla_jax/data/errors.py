"""Bad input: the one exception type the data layer raises, and the report of skipped scenes.

A reader either yields a correct scene or says, in one message, which file is wrong (and where
in it: frame and field), what is wrong with it and what to do. With ``skip_bad=True`` the scene
is dropped instead and counted in a :class:`SkipReport`, never silently altered.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any


class BadInputError(ValueError):
    """An input file (log pickle, image, point cloud, map) is unusable.

    Attributes:
      path: the offending file (or folder).
      reason: a short, stable category (the key of :class:`SkipReport`), e.g. ``"corrupt_pickle"``.
      problem: what is wrong, in words.
      fix: what the user can do about it.
      frame: where in a log: the frame's index (or, where only that is known, its token).
      field: the frame's field, dotted for nested ones (``"anns.gt_boxes"``).
    """

    def __init__(self, path: str | os.PathLike, reason: str, problem: str, fix: str = "", *,
                 frame: int | str | None = None, field: str | None = None):
        self.path, self.reason, self.problem, self.fix = str(path), reason, problem, fix
        self.frame, self.field = frame, field
        where = self.path
        if frame is not None:   # an index, or a token (quoted)
            where += f" frame {frame!r}"
        if field is not None:
            where += f" field {field!r}"
        msg = f"{where}: {problem}"
        if fix:
            msg += f" -- {fix}"
        super().__init__(msg)


@dataclasses.dataclass
class _Loss:
    reason: str
    scenes: int             # scenes this bad input removed (known ones)
    up_to: int | None       # None: the count is known; else at most this many (unreadable file)


@dataclasses.dataclass
class SkipReport:
    """Scenes skipped for bad input, counted in scenes and in bad inputs.

    A bad input (one message: file, frame, field) can remove several scenes: a bad frame is in
    every window that holds it, and a log that cannot be read loses all of its windows -- how
    many is then unknown, and an upper bound (the windows its sensor files allow) is kept.
    ``counts``: reason -> scenes lost (known counts); ``inputs``: reason -> distinct bad inputs;
    ``examples``: reason -> up to ``max_examples`` messages.
    """
    max_examples: int = 3
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    inputs: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    _losses: dict[str, _Loss] = dataclasses.field(default_factory=dict, repr=False)

    def add(self, err: BadInputError, scenes: int | None = 1, up_to: int = 0) -> None:
        """Count ``scenes`` scenes lost to ``err`` (None: unknown, at most ``up_to``)."""
        self._add(str(err), err.reason, scenes, up_to)

    def _add(self, msg: str, reason: str, scenes: int | None, up_to: int = 0) -> None:
        loss = self._losses.get(msg)
        if loss is None:
            loss = self._losses[msg] = _Loss(reason, 0, None)
            self.inputs[reason] = self.inputs.get(reason, 0) + 1
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.max_examples:
                ex.append(msg)
        loss.scenes += scenes or 0
        self.counts[reason] = self.counts.get(reason, 0) + (scenes or 0)
        if scenes is None:
            loss.up_to = (loss.up_to or 0) + up_to

    def merge(self, other: "SkipReport") -> None:
        """Add ``other``'s bad inputs (another split's) to this report."""
        for msg, loss in other._losses.items():
            self._add(msg, loss.reason, loss.scenes if loss.up_to is None else None,
                      loss.up_to or 0)

    @property
    def lost(self) -> dict[str, int]:
        """message -> scenes that bad input removed (known counts; 0 where unknown)."""
        return {m: loss.scenes for m, loss in self._losses.items()}

    @property
    def unknown(self) -> dict[str, int]:
        """message -> at most how many scenes it removed, for inputs of unknown count."""
        return {m: loss.up_to for m, loss in self._losses.items() if loss.up_to is not None}

    @property
    def total(self) -> int:
        """Scenes lost (known counts)."""
        return sum(self.counts.values())

    @property
    def num_inputs(self) -> int:
        return len(self._losses)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"total" (scenes), "bad_inputs", "unknown_inputs", "scenes_up_to",
        "counts", "inputs", "examples", "lost": [{"error", "reason", "scenes"[, "up_to"]}]}``
        (``scenes`` is null where unknown)."""
        lost = []
        for msg, loss in self._losses.items():
            entry: dict[str, Any] = {"error": msg, "reason": loss.reason, "scenes": loss.scenes}
            if loss.up_to is not None:
                entry.update(scenes=None, up_to=loss.up_to)
            lost.append(entry)
        unknown = self.unknown
        return {"total": self.total, "bad_inputs": self.num_inputs,
                "unknown_inputs": len(unknown), "scenes_up_to": sum(unknown.values()),
                "counts": dict(self.counts), "inputs": dict(self.inputs),
                "examples": {r: list(e) for r, e in self.examples.items()}, "lost": lost}

    def __str__(self) -> str:
        if not self._losses:
            return "no scenes skipped"
        unknown = self.unknown
        lines = [f"{self.total} scene(s) lost to {self.num_inputs} bad input(s)"
                 + (f", plus up to {sum(unknown.values())} in {len(unknown)} unreadable "
                    "file(s)" if unknown else "") + ":"]
        for reason in sorted(self.inputs):
            lines.append(f"  {reason}: {self.counts.get(reason, 0)} scene(s), "
                         f"{self.inputs[reason]} input(s)")
            for e in self.examples.get(reason, []):
                more = (f"count unknown, up to {unknown[e]}" if e in unknown
                        else f"{self._losses[e].scenes}")
                lines.append(f"    e.g. ({more} scene(s)) {e}")
        return "\n".join(lines)
