"""Deprecated: moved to :mod:`swin_ext.ops._validate` (this path is removed in the next release)."""
from ._deprecated import alias

alias(__name__)
