"""``mailward keygen dkim`` and ``mailward dns check``: a sender domain's keys and DNS records."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from pathlib import Path

from gateway.config import Config
from gateway.crypto import dkim
from gateway.dnscheck import report
from gateway.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from gateway.keyfiles import write_secret
from gateway.resolver import MxResolver


def cmd_keygen_dkim(config: Config, args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    algorithm: dkim.Algorithm = "rsa-sha256" if args.algorithm == "rsa" else "ed25519-sha256"
    named = [key for key in (config.domains[domain].dkim if domain in config.domains else ())
             if key.selector == args.selector]
    path: Path = args.out or (named[0].key_file if named else
                              config.spool.key_file.parent / "dkim" / f"{domain}.{args.selector}.pem")
    if named and not args.out and named[0].algorithm != algorithm:
        algorithm = named[0].algorithm  # the config says which kind of key it expects
    if path.exists():
        print(f"mailward: {path} exists; keys are never overwritten: pick a new selector to rotate",
              file=sys.stderr)
        return EXIT_FAIL
    key = dkim.generate_key(algorithm, args.bits)
    write_secret(path, dkim.key_pem(key))
    record = dkim.txt_record(key)
    # Zone-file syntax splits the value into strings of at most 255 characters.
    chunks = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    print(f"wrote {path} (0600)\n\npublish this DNS record:\n"
          f"{args.selector}._domainkey.{domain}. IN TXT ( {chunks} )\n\n"
          f"then add to the config under domains:\n  {domain}:\n    dkim:\n"
          f"      - {{selector: {args.selector}, key_file: {path}, algorithm: {algorithm}}}\n"
          f"and check with: mailward dns check {domain}")
    return EXIT_OK


def cmd_dns_check(config: Config, args: argparse.Namespace) -> int:
    try:
        ips = [str(ipaddress.ip_address(ip)) for ip in args.ip]
    except ValueError as exc:
        print(f"mailward: {exc}", file=sys.stderr)
        return EXIT_USAGE
    delivery = config.delivery
    resolver = MxResolver(delivery.nameservers, delivery.smtp_port, {}, timeout=10.0)
    findings = asyncio.run(report.check_domain(config, resolver, args.domain, ips))
    if args.json:
        print(json.dumps({"domain": args.domain.lower(), "findings": [f.as_json() for f in findings],
                          "errors": sum(f.status == "error" for f in findings),
                          "warnings": sum(f.status == "warn" for f in findings)}, indent=1))
    else:
        print(report.render(args.domain.lower(), findings))
    return EXIT_FAIL if any(f.status == "error" for f in findings) else EXIT_OK
