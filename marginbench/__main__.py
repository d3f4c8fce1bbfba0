"""``python -m marginbench`` is the ``marginbench`` command."""

from marginbench.bench.cli import main

if __name__ == "__main__":  # not when a spawned worker process re-imports the main module
    raise SystemExit(main())
