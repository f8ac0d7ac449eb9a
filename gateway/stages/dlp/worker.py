"""A DLP scan worker process: ``python -m gateway.stages.dlp.worker FD PARENT_PID``.

Started by `scanpool` with one end of a socket pair as FD; it serves scans on it until the
gateway closes its end, and dies with the gateway (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import multiprocessing.connection
import signal
import sys


def main(argv: list[str]) -> int:
    from gateway.lifeline import die_with_parent
    from gateway.memory import tune_allocator
    from gateway.stages.dlp.scanpool import serve

    descriptor, parent = int(argv[0]), int(argv[1])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the gateway, which stops us
    tune_allocator()
    serve(multiprocessing.connection.Connection(descriptor))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
