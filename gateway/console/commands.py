"""``mailward console user add|remove|list``: the console's users (`console.users_file`)."""

from __future__ import annotations

import argparse

from gateway.audit.events import Audit, os_user
from gateway.cli import read_password
from gateway.config import Config
from gateway.console.users import ConsoleUsers
from gateway.errors import EXIT_OK, MailwardError


def cmd_console_user(config: Config, args: argparse.Namespace) -> int:
    users = ConsoleUsers(config.console.users_file)
    if args.action == "list":
        for user in users.all():
            state = "locked" if user.locked() else "enrolled" if user.totp_secret else "not enrolled"
            print(f"{user.name}\t{user.role}\t{state}")
        return EXIT_OK
    audit = Audit.open(config.audit)
    try:
        if args.action == "add":
            try:
                new = users.add(args.name, args.role, read_password(args))
            except ValueError as exc:
                raise MailwardError(str(exc)) from None
            audit.write_sync({"event": "console_user_added" if new else "console_user_changed",
                              "queue_id": None, "console_user": args.name, "role": args.role,
                              "user": os_user(), "by": "admin"})
            print(f"{args.name}: {'added' if new else 'changed'} as {args.role}; the second factor (TOTP) is "
                  "set up at the first sign-in")
            return EXIT_OK
        if not users.remove(args.name):
            raise MailwardError(f"{args.name}: no such console user")
        audit.write_sync({"event": "console_user_removed", "queue_id": None, "console_user": args.name,
                          "user": os_user(), "by": "admin"})
        print(f"{args.name}: removed")
        return EXIT_OK
    finally:
        audit.close()
