"""The module paths of swin_ext 0.1 that moved into the package's rooms, kept for one release.

Each old module (``swin_ext/model.py`` ...) is a two-line file that calls
:func:`alias`: it warns once with a ``DeprecationWarning`` naming the new path
and makes the old name *the same module object* as the new one (in
``sys.modules``), so attribute access, ``isinstance`` checks, pickles that
name the old path and ``monkeypatch.setattr`` on the old path all keep
working -- timm did the same for ``timm.models.layers``.
"""
from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "alias"]

#: old module path -> new module path
MOVED = {
    "swin_ext.model": "swin_ext.models.swin",
    "swin_ext.model_v2": "swin_ext.models.swin_v2",
    "swin_ext.variants": "swin_ext.models.variants",
    "swin_ext.reference": "swin_ext.ops.reference",
    "swin_ext._validate": "swin_ext.ops._validate",
    "swin_ext.checkpoint": "swin_ext.weights.checkpoint",
    "swin_ext.convert": "swin_ext.weights.convert",
    "swin_ext.data": "swin_ext.train.data",
}


def alias(old: str) -> ModuleType:
    """Replace the module ``old`` (being imported) by its new home, with a ``DeprecationWarning``."""
    new = MOVED[old]
    warnings.warn(f"{old} is deprecated and will be removed in the next release; import {new} instead",
                  DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module
