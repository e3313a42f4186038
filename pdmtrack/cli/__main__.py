"""``python -m pdmtrack.cli``: the ``pdmtrack`` command."""

from pdmtrack.cli import main

main()
