"""``python -m gateway`` is the ``mailward`` command."""

from gateway.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
