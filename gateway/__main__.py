"""``python -m gateway`` is the ``mailward`` command."""

from gateway.cli import main

raise SystemExit(main())
