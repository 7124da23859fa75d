"""Bad input: the one exception type the data layer raises, and the report of skipped scenes.

A reader either yields a correct scene or says, in one message, which file is wrong, what is
wrong with it and what to do. With ``skip_bad=True`` the scene is dropped instead and counted in
a :class:`SkipReport` (reason -> count + a few examples), never silently altered.
"""

from __future__ import annotations

import dataclasses
import os


class BadInputError(ValueError):
    """An input file (log pickle, image, point cloud, map) is unusable.

    Attributes:
      path: the offending file (or folder).
      reason: a short, stable category (the key of :class:`SkipReport`), e.g. ``"corrupt_pickle"``.
      problem: what is wrong, in words.
      fix: what the user can do about it.
    """

    def __init__(self, path: str | os.PathLike, reason: str, problem: str, fix: str = ""):
        self.path, self.reason, self.problem, self.fix = str(path), reason, problem, fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" -- {fix}"
        super().__init__(msg)


@dataclasses.dataclass
class SkipReport:
    """Scenes skipped for bad input: ``reason -> count`` plus up to ``max_examples`` messages."""
    max_examples: int = 3
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, err: BadInputError, count: int = 1) -> None:
        """Count ``count`` scenes lost to ``err``."""
        self.counts[err.reason] = self.counts.get(err.reason, 0) + count
        ex = self.examples.setdefault(err.reason, [])
        if len(ex) < self.max_examples:
            ex.append(str(err))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        if not self.counts:
            return "no scenes skipped"
        lines = [f"{self.total} scene(s) skipped for bad input:"]
        for reason, n in sorted(self.counts.items()):
            lines.append(f"  {reason}: {n}")
            lines.extend(f"    e.g. {e}" for e in self.examples.get(reason, []))
        return "\n".join(lines)
