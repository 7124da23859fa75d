"""Pickles that numpy 1.x can read, written under numpy 2.

NAVSIM pins numpy 1.23 (spec/NAVSIM_FORMAT.md "Written by us, read by the official devkit").
Under numpy 2 an array pickles as ``numpy._core.multiarray._reconstruct(...)``; numpy 1 has no
``numpy._core`` and cannot unpickle it. The official logs hold numpy arrays (NAVSIM slices
``gt_boxes`` etc.), so the arrays stay arrays: only the module path of the numpy globals changes
to the one numpy 1 uses (``numpy.core...``). numpy 2 keeps ``numpy.core.multiarray._reconstruct``
and ``.scalar`` importable, without a warning, for exactly this purpose, so the bytes read back
identically under both.

The C pickler takes a global's module from its ``__module__`` and offers no hook to rename it,
so this uses the pure-Python pickler (``pickle._Pickler``): about 0.1 s per synthetic log.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any, BinaryIO, Mapping

PROTOCOL = 4            # numpy 1.23 runs on Python >= 3.8: protocol 4 is safe; 5 adds nothing here
_NUMPY2, _NUMPY1 = "numpy._core", "numpy.core"


class _Numpy1Pickler(pickle._Pickler):
    """Writes ``numpy._core.<m>.<name>`` globals as ``numpy.core.<m>.<name>``, and the objects
    of ``names`` under the (module, qualname) given there (e.g. another package's class whose
    pickled state a local stand-in shares)."""

    def __init__(self, file, protocol, names=None):
        super().__init__(file, protocol=protocol)
        self._names = dict(names or {})

    def save_global(self, obj, name=None):
        if obj in self._names:
            module, qualname = self._names[obj]
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        module = getattr(obj, "__module__", None) or ""
        if not (module == _NUMPY2 or module.startswith(_NUMPY2 + ".")):
            return super().save_global(obj, name)
        name = name or obj.__qualname__
        legacy = _NUMPY1 + module[len(_NUMPY2):]
        # Only names numpy 2 still resolves at the numpy-1 path (so the file reads back here).
        try:
            same = getattr(importlib.import_module(legacy), name) is obj
        except (ImportError, AttributeError):
            same = False
        if not same:
            raise pickle.PicklingError(f"cannot write {module}.{name} for numpy 1: "
                                       f"{legacy}.{name} is not the same object")
        self.save(legacy)
        self.save(name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def dump(obj: Any, file: BinaryIO, names: Mapping[Any, tuple[str, str]] | None = None) -> None:
    """Pickle ``obj`` into ``file`` (protocol 4) with numpy-1 module paths; names: object ->
    (module, qualname) to write for it instead of its own (``submission.OFFICIAL_NAMES``)."""
    _Numpy1Pickler(file, protocol=PROTOCOL, names=names).dump(obj)


def dumps(obj: Any) -> bytes:
    """``obj`` pickled (protocol 4) with numpy-1 module paths."""
    f = io.BytesIO()
    dump(obj, f)
    return f.getvalue()
