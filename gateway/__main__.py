"""``python -m gateway`` is the ``mailward`` command."""

from gateway.cli import main

if __name__ == "__main__":  # not when multiprocessing's spawn imports this module in a worker
    raise SystemExit(main())
