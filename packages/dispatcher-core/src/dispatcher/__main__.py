"""``python -m dispatcher``: the ``dispatcher`` command (see :mod:`dispatcher._cli`)."""

from ._cli import main

raise SystemExit(main())
