"""``python -m marginbench`` is the ``marginbench`` command."""

from marginbench.bench.cli import main

raise SystemExit(main())
