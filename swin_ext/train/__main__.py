"""``python -m swin_ext.train``."""
import sys

from .cli import cli

sys.exit(cli())
