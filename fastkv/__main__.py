"""``python -m fastkv``: the same as the ``fastkv`` console script."""

from fastkv.cli import main

raise SystemExit(main())
