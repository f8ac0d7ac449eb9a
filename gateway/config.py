"""Configuration: YAML -> typed, frozen objects, with every default and validation in this module.

The field defaults *are* the embedded development defaults of SPEC §2 (listener 127.0.0.1:2525
with STARTTLS offered, relay for 127.0.0.0/8, state under ``./var``), so a file only states what
differs. Relative paths are resolved against the config file's directory (the current directory for
the embedded defaults), which keeps a config and its state together wherever it is started from.

Lookup order (SPEC §3): ``-c FILE``, ``$MAILWARD_CONFIG``, ``./mailward.yaml``,
``/etc/mailward/config.yaml``, then the embedded defaults.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import ipaddress
import os
import re
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway import typedyaml
from gateway.crypto import dkim
from gateway.errors import ConfigError
from gateway.typedyaml import ByteSize, Duration, HostPort, IPNetwork

SYSTEM_CONFIG = Path("/etc/mailward/config.yaml")
LOCAL_CONFIG = Path("mailward.yaml")
TlsMode = Literal["off", "optional", "required"]
AuthMode = Literal["off", "optional", "required"]


def _port_problems(key: str, port: int, *, lowest: int) -> list[tuple[str, str]]:
    if lowest <= port < 65536:
        return []
    return [(key, f"port {port} is out of range {lowest}-65535")]


# Set while `mailward keygen` loads the config that names the keys it is about to create.
KEYS_MAY_BE_MISSING: contextvars.ContextVar[bool] = contextvars.ContextVar("keys_may_be_missing",
                                                                           default=False)


def _empty_mapping() -> Mapping[str, Any]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class ListenerRelayConfig:
    """Who may relay through one listener, in place of the global relay.networks and
    relay.client_cert_subjects (e.g. a port 25 listener for the Exchange Online connector's
    certificate only). relay.sender_domains still applies."""

    networks: tuple[IPNetwork, ...] = ()
    client_cert_subjects: tuple[str, ...] = ()
    auth: bool = True  # SMTP AUTH users may relay through this listener


@dataclass(frozen=True)
class ListenerConfig:
    address: str = "127.0.0.1"
    port: int = 2525
    starttls: TlsMode = "optional"
    auth: AuthMode = "optional"
    name: str | None = None  # label in logs and metrics; default "address:port"
    # Behind a load balancer: HAProxy PROXY protocol v1/v2 from these addresses only; relay
    # control, limits, logs and the audit then see the real client address.
    proxy_protocol: bool = False
    proxy_from: tuple[IPNetwork, ...] = ()
    relay: ListenerRelayConfig | None = None  # None: the global relay block

    @property
    def label(self) -> str:
        return self.name or f"{self.address}:{self.port}"

    def problems(self) -> list[tuple[str, str]]:
        found = []
        found += _port_problems("port", self.port, lowest=0)  # 0: any free port (tests)
        if self.proxy_protocol and not self.proxy_from:
            found.append(("proxy_from", "list the load balancers allowed to send PROXY headers"))
        if self.auth != "off" and self.starttls == "off":
            found.append(("auth", "AUTH is only offered after STARTTLS: set starttls to "
                                  "optional or required, or auth to off"))
        return found


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path | None = None  # None: a self-signed certificate is made under ./var/tls
    key_file: Path | None = None
    client_ca_file: Path | None = None  # trust anchors for client certificates; None: system store
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    selfsigned_dir: Path = Path("var/tls")  # where the self-signed pair lives when no cert_file

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if (self.cert_file is None) != (self.key_file is None):
            found.append(("cert_file", "cert_file and key_file go together: set both or neither"))
        for key in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                found.append((key, f"file not found: {path}"))
        return found


@dataclass(frozen=True)
class RelayConfig:
    networks: tuple[IPNetwork, ...] = (IPNetwork("127.0.0.0/8"),)
    client_cert_subjects: tuple[str, ...] = ()
    users_file: Path = Path("var/users.yaml")
    sender_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: ByteSize = ByteSize(50 * 1024 * 1024)
    # Bytes of messages over 1 MB that one process works on in memory at once (policy scan,
    # spool write, delivery); more wait their turn on disk. One larger message still goes alone.
    message_memory: ByteSize = ByteSize(32 * 1024 * 1024)
    max_recipients: int = 1000
    max_connections: int = 500
    max_connections_per_ip: int = 20  # relay.networks are held only to max_connections
    # Slots of max_connections that only relay.networks may take, so that idle connections from
    # elsewhere cannot lock out the relaying Postfix or Exchange host (at most half of them).
    reserved_connections: int = 50
    command_timeout: Duration = Duration(300)  # idle time allowed between commands
    # Idle time allowed before the first MAIL (or AUTH) of a client outside relay.networks.
    idle_before_mail: Duration = Duration(30)
    data_timeout: Duration = Duration(600)  # time allowed for the whole DATA transfer
    max_errors: int = 20  # error replies in one session before it is disconnected
    drain_timeout: Duration = Duration(30)  # SIGTERM: how long open transactions may finish
    auth_failures_per_ip: int = 10  # failed AUTH from one address within auth_lockout: 454 after
    auth_failures_per_user: int = 10  # failed AUTH for one user name within auth_lockout
    auth_lockout: Duration = Duration(900)

    def problems(self) -> list[tuple[str, str]]:
        found = [(key, "must be at least 1") for key in
                 ("max_message_size", "message_memory", "max_recipients", "max_connections",
                  "max_connections_per_ip", "max_errors", "auth_failures_per_ip",
                  "auth_failures_per_user") if getattr(self, key) < 1]
        if self.reserved_connections < 0:
            found.append(("reserved_connections", "must be at least 0"))
        return found


@dataclass(frozen=True)
class SpoolConfig:
    dir: Path = Path("var/spool")
    key_file: Path = Path("var/keys/spool.key")
    min_free: ByteSize = ByteSize(100 * 1024 * 1024)  # /healthz is 503 below this much free space


@dataclass(frozen=True)
class EgressIpConfig:
    """One source address of a pool: connections bind it and greet with its own EHLO name (whose
    PTR record should name it back)."""

    address: str
    ehlo: str
    weight: int = 1  # share of the pool's new connections
    warmup: str | None = None  # a schedule in delivery.warmup; none: fully warm
    warmup_start: str | None = None  # YYYY-MM-DD, day 1 of the schedule

    def problems(self) -> list[tuple[str, str]]:
        found = []
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            found.append(("address", "an IP address of this machine"))
        if not re.fullmatch(r"[A-Za-z0-9.-]+", self.ehlo):
            found.append(("ehlo", "a host name"))
        if self.weight < 1:
            found.append(("weight", "at least 1"))
        if self.warmup is not None:
            try:
                datetime.date.fromisoformat(self.warmup_start or "")
            except ValueError:
                found.append(("warmup_start", "the first day of the warm-up, YYYY-MM-DD"))
        return found


@dataclass(frozen=True)
class PoolConfig:
    ips: tuple[EgressIpConfig, ...]
    # marketing: List-Unsubscribe (RFC 8058 one-click) is added and each recipient gets its own copy.
    stream: Literal["transactional", "marketing"] = "transactional"
    # When an IP reaches its warm-up cap for a provider: spill to another IP of the pool, or wait.
    at_cap: Literal["spill", "wait"] = "spill"

    def problems(self) -> list[tuple[str, str]]:
        if not self.ips:
            return [("ips", "a pool needs at least one IP")]
        return []


@dataclass(frozen=True)
class PoolSelectionConfig:
    """Which pool a message leaves from: the X-Mailward-Pool header of a relaying client (removed
    before sending), else the DLP rule's `pool`, else its sender domain's, else `default`."""

    default: str | None = None  # none: the first pool listed
    sender_domains: Mapping[str, str] = field(default_factory=_empty_mapping)
    header: bool = True


@dataclass(frozen=True)
class WarmupSchedule:
    # Messages per day and destination provider for day 1, 2, ...; no cap after the last day.
    per_day: tuple[int, ...]

    def problems(self) -> list[tuple[str, str]]:
        if not self.per_day or any(n < 1 for n in self.per_day):
            return [("per_day", "daily caps of 1 or more")]
        return []


@dataclass(frozen=True)
class ShapingRule:
    """Limits for one destination: the entry's name as a recipient domain, `domains`, or every
    domain whose MX hosts match `mx` (a provider group such as all Google-hosted domains)."""

    mx: tuple[str, ...] = ()  # MX host name patterns, e.g. "*.google.com"
    domains: tuple[str, ...] = ()
    max_connections: int | None = None  # at once, from all our IPs together
    messages_per_connection: int | None = None
    per_minute: int | None = None  # messages
    per_hour: int | None = None
    backoff: Duration = Duration(60)  # pause after a throttling reply (421/451), doubled while they last

    def problems(self) -> list[tuple[str, str]]:
        return [(key, "at least 1") for key in ("max_connections", "messages_per_connection",
                                                 "per_minute", "per_hour")
                if getattr(self, key) is not None and getattr(self, key) < 1]


@dataclass(frozen=True)
class SuppressionConfig:
    file: Path = Path("var/suppression.sqlite")
    # Hard bounces are suppressed for the sender domain that met them, or for everyone.
    scope: Literal["sender_domain", "global"] = "sender_domain"
    dsn: bool = True  # tell the sender when a suppressed recipient is dropped


@dataclass(frozen=True)
class TlsReportsConfig:
    """SMTP TLS reporting (RFC 8460) to recipient domains that publish ``_smtp._tls``."""

    enabled: bool = False
    dir: Path = Path("var/tlsrpt")  # the day's counts, kept across restarts
    organization: str = ""  # "organization-name" of the reports; default the hostname
    contact: str = ""  # "contact-info", e.g. mailto:postmaster@example.com
    sender: str | None = None  # From of mailed reports; default tlsrpt-noreply@HOSTNAME


@dataclass(frozen=True)
class DeliveryConfig:
    nameservers: tuple[HostPort, ...] = ()
    smtp_port: int = 25
    routes: Mapping[str, HostPort] = field(default_factory=_empty_mapping)
    ca_file: Path | None = None
    retry_schedule: tuple[Duration, ...] = tuple(
        Duration(s) for s in (60, 300, 900, 1800, 3600, 7200, 14400))
    max_queue_age: Duration = Duration(5 * 86400)
    delay_warning: Duration | None = Duration(4 * 3600)  # null: never warn about a delay
    connect_timeout: Duration = Duration(30)
    command_timeout: Duration = Duration(300)  # for each reply: greeting, EHLO, MAIL, RCPT
    data_timeout: Duration = Duration(600)  # for the reply to the end of the message
    max_connections: int = 100  # outbound SMTP connections in total
    max_connections_per_destination: int = 20  # per recipient domain
    max_messages_per_connection: int = 100  # then the connection is closed and a new one made
    connection_idle_time: Duration = Duration(5)  # an idle connection is kept this long for reuse
    max_active: int = 1000  # messages being delivered at once (the rest wait in the queue)
    paused: bool = False  # queue everything, deliver nothing (maintenance)
    # Capture mode (on in the embedded defaults only): each copy goes through DLP, protection
    # and DKIM and is written here as an .eml instead of being sent. For trying Mailward out.
    capture_dir: Path | None = None
    # Per recipient domain (".example.org" covers subdomains): none, may, encrypt, verify, secure.
    tls_policy: Mapping[str, Literal["none", "may", "encrypt", "verify", "secure"]] = field(
        default_factory=_empty_mapping)
    mta_sts: bool = True  # honour recipient domains' MTA-STS policies (RFC 8461)
    dane: bool = True  # honour MX hosts' TLSA records (RFC 7672) that the resolver authenticated
    tls_reports: TlsReportsConfig = TlsReportsConfig()
    tls_cache_file: Path = Path("var/tls-cache.json")  # learned TLS outcomes per domain and MX host
    mta_sts_cache_file: Path = Path("var/mta-sts-cache.json")  # MTA-STS policies, kept for max_age
    tls_cache_ttl: Duration = Duration(600)  # a verified-TLS failure is trusted this long
    mta_sts_port: int = 443  # HTTPS port of mta-sts.DOMAIN (tests point it elsewhere)
    separate_process: bool = True  # `mailward run` delivers from a second process (a second core)
    pools: Mapping[str, PoolConfig] = field(default_factory=_empty_mapping)
    pool_selection: PoolSelectionConfig = PoolSelectionConfig()
    warmup: Mapping[str, WarmupSchedule] = field(default_factory=_empty_mapping)
    warmup_file: Path = Path("var/warmup.json")  # the day's counts per IP and provider
    shaping: Mapping[str, ShapingRule] = field(default_factory=_empty_mapping)
    suppression: SuppressionConfig = SuppressionConfig()
    egress_state_file: Path = Path("var/egress-state.json")  # IPs drained or disabled at runtime

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.retry_schedule:
            found.append(("retry_schedule", "needs at least one interval"))
        found += [(key, "must be at least 1") for key in
                  ("max_connections", "max_connections_per_destination",
                   "max_messages_per_connection", "max_active") if getattr(self, key) < 1]
        found += _port_problems("smtp_port", self.smtp_port, lowest=1)
        found += _port_problems("mta_sts_port", self.mta_sts_port, lowest=1)
        selection = self.pool_selection
        for where, chosen in [("pool_selection.default", selection.default)] + [
                (f"pool_selection.sender_domains.{d}", p) for d, p in selection.sender_domains.items()]:
            if chosen is not None and chosen not in self.pools:
                found.append((where, f"no pool {chosen!r} in delivery.pools"))
        for name, pool in self.pools.items():
            for i, ip in enumerate(pool.ips):
                if ip.warmup is not None and ip.warmup not in self.warmup:
                    found.append((f"pools.{name}.ips[{i}].warmup", f"no schedule {ip.warmup!r} in "
                                                                   "delivery.warmup"))
        return found


@dataclass(frozen=True)
class DlpConfig:
    """Scanning before the 250: the budget, the scan workers and the extraction bounds."""

    enabled: bool = True
    time_budget: Duration = Duration(30)  # then the policy's on_error decides (default hold)
    # Scan processes: one per core but the one the gateway's own loop needs (at least one);
    # 0 scans in the gateway process (small sites, tests).
    workers: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))
    inline_max: ByteSize = ByteSize(64 * 1024)  # smaller messages are first scanned on the loop
    max_depth: int = 5  # nested messages and archives
    max_parts: int = 1000  # MIME parts and archive members
    max_inflated: ByteSize = ByteSize(100 * 1024 * 1024)  # decompressed from archives, per message
    max_ratio: int = 200  # a zip member claiming a higher compression ratio is not inflated
    max_text: ByteSize = ByteSize(64 * 1024 * 1024)  # characters of text scanned per message
    max_pdf_pages: int = 2000
    notify_from: str | None = None  # sender of compliance notifications; default postmaster@hostname

    def problems(self) -> list[tuple[str, str]]:
        found = [(key, "must be at least 1") for key in
                 ("max_depth", "max_parts", "max_inflated", "max_ratio", "max_text", "max_pdf_pages")
                 if getattr(self, key) < 1]
        if self.workers < 0:
            found.append(("workers", "must be 0 or more"))
        if self.time_budget <= 0:
            found.append(("time_budget", "must be more than 0s"))
        return found


@dataclass(frozen=True)
class DkimKeyConfig:
    selector: str
    key_file: Path
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"
    # The active key of each algorithm signs; an inactive one stays listed (and published in DNS)
    # while a rotation settles, and `dns check` still checks its record.
    active: bool = True

    def problems(self) -> list[tuple[str, str]]:
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*", self.selector):
            return [("selector", "letters, digits, hyphens and dots, as in a DNS name")]
        if not self.key_file.is_file():
            if KEYS_MAY_BE_MISSING.get():  # `mailward keygen dkim` is about to make it
                return []
            return [("key_file", f"DKIM key file not found: {self.key_file} "
                                 f"(mailward keygen dkim DOMAIN --selector {self.selector})")]
        try:
            dkim.load_key(self.key_file, self.algorithm)
        except dkim.DkimKeyError as exc:
            return [("key_file", str(exc))]
        return []


@dataclass(frozen=True)
class DomainConfig:
    dkim: tuple[DkimKeyConfig, ...] = ()

    def problems(self) -> list[tuple[str, str]]:
        found = []
        for algorithm in ("rsa-sha256", "ed25519-sha256"):
            active = [key.selector for key in self.dkim if key.active and key.algorithm == algorithm]
            if len(active) > 1:
                found.append(("dkim", f"{len(active)} active {algorithm} keys ({', '.join(active)}); "
                                      "one signs, set active: false on the others"))
        if self.dkim and not any(key.active for key in self.dkim):
            found.append(("dkim", "no active key: mail from this domain would go unsigned"))
        selectors = [key.selector for key in self.dkim]
        if len(set(selectors)) != len(selectors):
            found.append(("dkim", "a selector is listed twice"))
        return found


@dataclass(frozen=True)
class KeysConfig:
    pgp_dir: Path = Path("var/keys/pgp")
    smime_dir: Path = Path("var/keys/smime")
    # Certificates never to use: SHA-256 fingerprints of S/MIME certificates, OpenPGP fingerprints.
    revoked: tuple[str, ...] = ()
    # The outer Subject of an end-to-end encrypted message (the real one travels inside).
    neutral_subject: str = "Secure message"
    # Recipients whose S/MIME clients read AES-256-GCM AuthEnvelopedData (RFC 5083/5084), as
    # address patterns ("*@example.org"); the others get AES-256-CBC EnvelopedData.
    smime_gcm: tuple[str, ...] = ()
    wkd: bool = False  # look OpenPGP keys up in the recipient domain's Web Key Directory
    dns_keys: bool = False  # OPENPGPKEY and SMIMEA records, when the resolver authenticates them
    discovery_ttl: Duration = Duration(3600)  # how long a discovered key (or its absence) is kept
    wkd_port: int = 443  # HTTPS port for WKD (tests point it elsewhere)

    def problems(self) -> list[tuple[str, str]]:
        if any(c in self.neutral_subject for c in "\r\n") or not self.neutral_subject.strip():
            return [("neutral_subject", "one line of text")]
        return []

    @property
    def revoked_fingerprints(self) -> frozenset[str]:
        return frozenset(f.replace(":", "").replace(" ", "").lower() for f in self.revoked)


@dataclass(frozen=True)
class AuditConfig:
    enabled: bool = True
    dir: Path = Path("var/audit")
    retention: Duration = Duration(6 * 31536000)
    key_file: Path = Path("var/keys/audit.key")  # HMAC key of the chain (0600, made on first start)

    def problems(self) -> list[tuple[str, str]]:
        if int(self.retention) < 86400:
            return [("retention", "at least 1d")]
        return []


WEBHOOK_EVENTS = ("received", "delivered", "deferred", "bounced", "expired", "held", "released",
                  "deleted", "protection", "portal_stored", "portal_viewed", "portal_downloaded",
                  "portal_replied", "portal_code_failed", "portal_locked", "portal_expired",
                  "portal_revoked")


@dataclass(frozen=True)
class WebhookConfig:
    """One receiver of delivery events: POSTed JSON, signed with HMAC-SHA256 under the secret."""

    url: str
    secret_file: Path
    events: tuple[str, ...] = ("delivered", "bounced", "expired", "deferred", "held", "portal_viewed")
    name: str = ""  # in logs and the cursor file name; default: the URL's host

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.url.startswith(("https://", "http://127.", "http://localhost", "http://[::1]")):
            found.append(("url", "events carry addresses: use https:// (http only on loopback)"))
        unknown = sorted(set(self.events) - set(WEBHOOK_EVENTS) - {"*"})
        if unknown:
            found.append(("events", f"unknown event(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(WEBHOOK_EVENTS)}"))
        if not self.secret_file.is_file():
            found.append(("secret_file", f"file not found: {self.secret_file}"))
        return found


@dataclass(frozen=True)
class FeedbackConfig:
    """Addresses at `hostname` the gateway answers for itself, from anyone: complaint reports
    (ARF, RFC 5965) and mailto: unsubscribes (unsubscribe+TOKEN@hostname)."""

    fbl_address: str | None = None  # e.g. fbl@mailward.example.com; register it with the providers
    unsubscribe_local_part: str = "unsubscribe"
    unsubscribe_url: str | None = None  # where /u/TOKEN is served; default: portal.base_url
    key_file: Path = Path("var/keys/unsubscribe.key")  # signs unsubscribe tokens (0600, made on first use)


def _certificate_problems(cert_file: Path | None, key_file: Path | None) -> list[tuple[str, str]]:
    """An HTTPS listener's own certificate: both files or neither, and both there."""
    found = []
    if (cert_file is None) != (key_file is None):
        found.append(("tls_cert_file", "tls_cert_file and tls_key_file go together"))
    for key, path in (("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        if path is not None and not path.is_file():
            found.append((key, f"file not found: {path}"))
    return found


@dataclass(frozen=True)
class ApiConfig:
    """The JSON status API (`docs/openapi.yaml`); off unless `listen` is set."""

    listen: HostPort | None = None
    tokens_file: Path = Path("var/keys/api-tokens")  # one bearer token per line (0600)
    search_days: int = 7  # how far back finished messages are looked up in the audit log
    # The sending API (POST /api/v1/messages, tokens with the send scope):
    max_request_size: ByteSize = ByteSize(25 * 1024 * 1024)  # the JSON body
    max_recipients: int = 10_000  # per request; each becomes its own message
    requests_per_minute: int = 600  # per token; then 429 with Retry-After
    state_dir: Path = Path("var/api")  # idempotency keys (kept 24 h)
    # The API's own HTTPS certificate; without it, plain HTTP (keep `listen` on loopback then,
    # or put a TLS proxy in front).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def problems(self) -> list[tuple[str, str]]:
        found = _certificate_problems(self.tls_cert_file, self.tls_key_file)
        # A missing tokens_file is no error: the API answers 401 until `mailward api token add`
        # makes the first token (the running gateway reads the file again when it changes).
        return found


@dataclass(frozen=True)
class PortalBranding:
    """How the portal and its notification emails look and whom they name."""

    organization: str = "Mailward"
    logo_url: str | None = None  # an https URL; shown in emails and pages
    colour: str = "#1a56db"  # buttons and links
    support_contact: str = ""  # e.g. "the front desk, +1 555 0100, help@example.com"
    sender: str | None = None  # From of notifications; default no-reply@HOSTNAME

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", self.colour):
            found.append(("colour", "expected a colour such as #1a56db"))
        if self.logo_url is not None and not self.logo_url.startswith("https://"):
            found.append(("logo_url", "expected an https:// URL"))
        return found


@dataclass(frozen=True)
class PortalConfig:
    enabled: bool = False  # off: recipients who need the portal are held for an admin instead
    listen: HostPort = HostPort("127.0.0.1:8080")
    base_url: str = "http://127.0.0.1:8080"
    store_dir: Path = Path("var/portal")
    message_ttl: Duration = Duration(30 * 86400)
    key_file: Path = Path("var/keys/portal.key")  # master key of the store (0600, made on first use)
    branding: PortalBranding = PortalBranding()
    # The portal's own HTTPS certificate; without it, serve it through a TLS reverse proxy.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Reverse proxies (e.g. the documented nginx) whose X-Forwarded-For names the real client;
    # from anyone else the header is ignored, so a client cannot pick its own address.
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def problems(self) -> list[tuple[str, str]]:
        found = _certificate_problems(self.tls_cert_file, self.tls_key_file)
        if self.enabled and not self.base_url.startswith(("https://", "http://127.", "http://localhost")):
            found.append(("base_url", "recipients must reach the portal over https"))
        return found


@dataclass(frozen=True)
class ConsoleConfig:
    """The compliance console (docs/console.md): held-message review, message trace, reports,
    for users of `mailward console user add`. Off unless `listen` is set."""

    listen: HostPort | None = None
    users_file: Path = Path("var/keys/console-users.json")  # 0600; hashes and TOTP secrets
    idle_timeout: Duration = Duration(900)  # a session unused this long signs out
    held_flag_age: Duration = Duration(86400)  # held mail older than this is flagged
    # Its own HTTPS certificate; without it, serve it through a TLS reverse proxy (as the portal).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()  # whose X-Forwarded-For names the client

    def problems(self) -> list[tuple[str, str]]:
        found = _certificate_problems(self.tls_cert_file, self.tls_key_file)
        if self.listen is not None and self.tls_cert_file is None and not self.trusted_proxies:
            host = self.listen.host
            if not (host.startswith("127.") or host in ("::1", "localhost")):
                found.append(("listen", "the console serves HTTPS (tls_cert_file, tls_key_file) or sits on "
                                        "loopback behind a TLS reverse proxy (trusted_proxies)"))
        return found


_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _url_problems(key: str, url: str | None, schemes: tuple[str, ...]) -> list[tuple[str, str]]:
    if url is None:
        return []
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in schemes:
        return [(key, f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")]
    if "@" in rest.partition("/")[0] and ":" in rest.partition("@")[0]:
        return [(key, "no password in the URL: put it in a 0600 file named by " + key + "_password_file")]
    return []


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes behaving as one sender (docs/cluster.md): limits, leases, counters and
    heartbeats in Redis; suppression, the portal store, API tokens and the audit copy in
    PostgreSQL. Each node keeps its own encrypted spool."""

    node_id: str = ""
    redis: str | None = None  # redis://HOST:PORT/DB, rediss:// for TLS
    postgres: str | None = None  # postgresql://USER@HOST:PORT/DB
    redis_password_file: Path | None = None  # 0600; the URL carries none
    postgres_password_file: Path | None = None
    ca_file: Path | None = None  # trust anchors for rediss:// and sslmode=verify-full

    @property
    def enabled(self) -> bool:
        return self.redis is not None or self.postgres is not None

    def problems(self) -> list[tuple[str, str]]:
        found = [*_url_problems("redis", self.redis, ("redis", "rediss")),
                 *_url_problems("postgres", self.postgres, ("postgresql", "postgres"))]
        if self.enabled and not _NODE_ID.fullmatch(self.node_id):
            found.append(("node_id", "each node needs its own node_id: letters, digits, '.', '_', '-'"))
        for key in ("redis_password_file", "postgres_password_file", "ca_file"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                found.append((key, f"file not found: {path}"))
        return found


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort | None = HostPort("127.0.0.1:9464")  # null turns the endpoint off


@dataclass(frozen=True)
class Config:
    hostname: str = field(default_factory=socket.getfqdn)
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    tls: TlsConfig = TlsConfig()
    relay: RelayConfig = RelayConfig()
    limits: LimitsConfig = LimitsConfig()
    spool: SpoolConfig = SpoolConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    domains: Mapping[str, DomainConfig] = field(default_factory=_empty_mapping)
    keys: KeysConfig = KeysConfig()
    policies_dir: Path | None = None  # None: the built-in healthcare policy of the package
    dlp: DlpConfig = DlpConfig()
    audit: AuditConfig = AuditConfig()
    webhooks: tuple[WebhookConfig, ...] = ()
    api: ApiConfig = ApiConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    portal: PortalConfig = PortalConfig()
    metrics: MetricsConfig = MetricsConfig()
    cluster: ClusterConfig = ClusterConfig()
    console: ConsoleConfig = ConsoleConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # SMTP ingest processes sharing the listeners (SO_REUSEPORT); delivery and DLP scanning have
    # processes of their own. One per core left over after those is a good start.
    ingest_processes: int = 1
    # Where this configuration came from; None for the embedded defaults. Not a YAML key.
    source: Path | None = field(default=None, init=False, compare=False)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.listeners:
            found.append(("listeners", "at least one listener is needed"))
        if not 1 <= self.ingest_processes <= 64:
            found.append(("ingest_processes", "from 1 to 64"))
        if self.webhooks and not self.audit.enabled:
            found.append(("webhooks", "webhooks read their events from the audit log: set audit.enabled"))
        seen: set[tuple[str, int]] = set()
        for i, listener in enumerate(self.listeners):
            if (listener.address, listener.port) in seen:
                found.append((f"listeners[{i}]", f"{listener.label} is listed twice"))
            seen.add((listener.address, listener.port))
        return found


def find_config_file(explicit: str | None) -> Path | None:
    """The config file to use by SPEC §3's lookup order, or None for the embedded defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILWARD_CONFIG")
    if env:
        return Path(env)
    for candidate in (LOCAL_CONFIG, SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None) -> Config:
    """Load and validate `path` (None: embedded defaults); raise ConfigError naming file:line."""
    if path is None:
        # Trying it out: nothing leaves the machine, each message is written to var/capture.
        embedded = Config(delivery=DeliveryConfig(capture_dir=Path("var/capture")),
                          api=ApiConfig(listen=HostPort("127.0.0.1:8025")))
        return typing.cast(Config, _resolve_paths(embedded, Path.cwd()))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=str(path)) from None
    return parse_config(text, file=str(path), base_dir=path.resolve().parent)


def parse_config(text: str, *, file: str, base_dir: Path) -> Config:
    node = typedyaml.compose(text, file)
    config = typedyaml.load(Config, node, file=file, base_dir=base_dir)
    config = typing.cast(Config, _resolve_paths(config, base_dir))
    object.__setattr__(config, "source", Path(file))
    return config


def _resolve_paths(obj: Any, base_dir: Path) -> Any:
    """Make every relative Path in the (frozen) tree absolute against `base_dir`."""
    if isinstance(obj, Path):
        return obj if obj.is_absolute() else base_dir / obj
    if isinstance(obj, tuple):
        return tuple(_resolve_paths(item, base_dir) for item in obj)
    if isinstance(obj, Mapping):
        return types.MappingProxyType({k: _resolve_paths(v, base_dir) for k, v in obj.items()})
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _resolve_paths(getattr(obj, f.name), base_dir)
                   for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj
