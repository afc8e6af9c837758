"""``python -m wsfs``: the same as the ``wsfs`` console script."""

from wsfs.cli import main

raise SystemExit(main())
