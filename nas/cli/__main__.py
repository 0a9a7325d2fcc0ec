"""``python -m nas.cli``: the ``nas`` command."""

from . import entry

entry()
