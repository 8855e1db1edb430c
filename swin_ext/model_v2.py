"""Deprecated: moved to :mod:`swin_ext.models.swin_v2` (this path is removed in the next release)."""
from ._deprecated import alias

alias(__name__)
