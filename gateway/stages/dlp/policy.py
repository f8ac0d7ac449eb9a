"""DLP policy: the YAML files in `policies_dir`, their typed model, and the decision they give.

Each file is one policy set, evaluated on its own with the matching mode it states
(``match: first`` or ``match: highest_severity``) and the protection mode it states (``protect:
all``, the default: every recipient needs protected delivery unless the rule that decides for it
is an ``allow``; ``protect: sensitive``: only recipients an ``encrypt`` rule decides for), per
recipient (a rule may name the recipients
it is for). When several files decide differently for a recipient, the strongest action wins:
block > hold > encrypt > notify > tag > allow, so adding a file can only make policy stricter.
Headers to add and compliance notifications are collected from every rule that was applied.

Validation happens at load with ``file:line`` errors: unknown keys, a rule naming a detector that
does not exist, a regular expression that does not compile, a `notify` without an address.
"""

from __future__ import annotations

import contextvars
import fnmatch
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from gateway import typedyaml
from gateway.errors import ConfigError, ConfigErrors
from gateway.stages.dlp.clinical import NAMES as CLINICAL_NAMES
from gateway.stages.dlp.detectors import BUILT_IN
from gateway.stages.dlp.extract import FACTS

Action = Literal["encrypt", "block", "hold", "tag", "notify", "allow"]
Method = Literal["tls", "smime", "pgp", "portal"]
PROTECTION_ORDER: tuple[Method, ...] = ("tls", "smime", "pgp", "portal")
ErrorAction = Literal["hold", "block", "encrypt", "tempfail"]
Fact = Literal["encrypted_attachment", "unreadable_attachment", "unscanned_attachment", "scan_incomplete"]
assert set(typing.get_args(Fact)) == set(FACTS)

# How strong an action is, when several apply; "tempfail" is only an on_error choice.
STRENGTH = {"allow": 0, "tag": 1, "notify": 2, "encrypt": 3, "hold": 4, "tempfail": 5, "block": 6}
_DEFAULT_SEVERITY = {"allow": 0, "tag": 20, "notify": 40, "encrypt": 60, "hold": 80, "block": 100}
VALIDATORS = ("luhn", "ssn", "npi", "dea", "mbi", "aba_routing", "payment_card")
BUILT_IN_NAMES = frozenset(d.name for d in BUILT_IN) | frozenset(CLINICAL_NAMES)
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")

# Detector names known while a set of files loads (built-in plus every file's custom ones), so a
# rule in one file may use a detector defined in another and still get a file:line error if unknown.
_known_detectors: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "known_detectors", default=BUILT_IN_NAMES)


@dataclass(frozen=True)
class CustomDetector:
    """A detector defined in YAML: a regular expression or a keyword list, optionally validated
    by a check-digit function, required to be near context words, and to occur `min_count` times."""

    name: str
    pattern: str | None = None
    keywords: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    window: int = 60
    validator: Literal["luhn", "ssn", "npi", "dea", "mbi", "aba_routing", "payment_card"] | None = None
    ignore_case: bool = True
    min_count: int = 1

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", self.name):
            found.append(("name", "detector names are lower-case letters, digits and _"))
        elif self.name in BUILT_IN_NAMES:
            found.append(("name", f"{self.name!r} is a built-in detector"))
        if (self.pattern is None) == (not self.keywords):
            found.append(("pattern", "give either pattern or keywords"))
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                found.append(("pattern", f"not a valid regular expression: {exc}"))
        if not 1 <= self.window <= 1000:
            found.append(("window", "window must be 1 to 1000 characters"))
        if self.min_count < 1:
            found.append(("min_count", "min_count must be at least 1"))
        return found


@dataclass(frozen=True)
class Condition:
    """What a rule needs; every condition given must hold (an empty `when` always holds)."""

    detectors: Mapping[str, int] = field(default_factory=dict)  # any of these, at least N each
    all_detectors: Mapping[str, int] = field(default_factory=dict)  # every one of these
    min_total: int = 0  # findings of `detectors` added up (of every detector if none listed)
    senders: tuple[str, ...] = ()  # envelope sender patterns, e.g. "*@billing.example.com"
    recipients: tuple[str, ...] = ()  # the rule is for recipients matching one of these
    subject_tags: tuple[str, ...] = ()  # e.g. "[secure]", anywhere in the subject, any case
    facts: tuple[Fact, ...] = ()  # any of these facts about the attachments
    attachment_types: tuple[str, ...] = ()  # file extensions, e.g. "xlsx", "csv"

    def problems(self) -> list[tuple[str, str]]:
        known = _known_detectors.get()
        found = []
        for key, names in (("detectors", self.detectors), ("all_detectors", self.all_detectors)):
            for name, count in names.items():
                if name not in known:
                    found.append((key, f"unknown detector {name!r} (known: {', '.join(sorted(known))})"))
                elif count < 1:
                    found.append((key, f"{name}: the count must be at least 1"))
        return found


@dataclass(frozen=True)
class Tag:
    header: str = "X-Mailward-DLP"
    value: str = ""  # default: the rule's name

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not _HEADER_NAME.fullmatch(self.header):
            found.append(("header", "not a valid header field name"))
        if any(c in self.value for c in "\r\n") or len(self.value) > 200:
            found.append(("value", "one line of at most 200 characters"))
        return found


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    when: Condition = Condition()
    severity: int | None = None  # default by action: block 100, hold 80, encrypt 60 ...
    tag: Tag | None = None  # a header to add, with any action (action "tag" adds X-Mailward-DLP)
    notify: bool = False  # mail the policy's notify_to address (action "notify" implies it)
    reply: str = "Message refused by data loss prevention policy"  # the 5xx text for "block"
    # For "encrypt": the protection methods to try per recipient, strongest first.
    protection: tuple[Method, ...] = PROTECTION_ORDER
    receipt: bool = False  # mail the sender how each recipient was protected, once delivered
    pool: str | None = None  # send from this egress pool (delivery.pools), e.g. a marketing stream

    @property
    def rank(self) -> int:
        return self.severity if self.severity is not None else _DEFAULT_SEVERITY[self.action]

    @property
    def header(self) -> tuple[str, str] | None:
        tag = self.tag if self.tag is not None else Tag() if self.action == "tag" else None
        return None if tag is None else (tag.header, tag.value or self.name)

    @property
    def notifies(self) -> bool:
        return self.notify or self.action == "notify"

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if any(c in self.reply for c in "\r\n") or not self.reply.isascii() or len(self.reply) > 200:
            found.append(("reply", "one line of ASCII text, at most 200 characters"))
        if not self.protection or len(set(self.protection)) != len(self.protection):
            found.append(("protection", "list each method (tls, smime, pgp, portal) at most once"))
        return found


@dataclass(frozen=True)
class PolicyFile:
    match: Literal["first", "highest_severity"]
    # all: every recipient is protected unless an `allow` rule decides for it; sensitive: only
    # when an `encrypt` rule does (then detection accuracy decides everything).
    protect: Literal["all", "sensitive"] = "all"
    rules: tuple[Rule, ...] = ()
    detectors: tuple[CustomDetector, ...] = ()
    on_error: ErrorAction = "hold"  # when the scan fails or runs out of time
    notify_to: str | None = None  # compliance address for rules that notify
    source: str = field(default="", init=False, compare=False)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        names = [rule.name for rule in self.rules]
        for i, name in enumerate(names):
            if name in names[:i]:
                found.append((f"rules[{i}]", f"rule name {name!r} is used twice"))
        if self.notify_to is None:
            found += [(f"rules[{i}]", f"rule {rule.name!r} notifies, but the file has no notify_to")
                      for i, rule in enumerate(self.rules) if rule.notifies]
        elif not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", self.notify_to):
            found.append(("notify_to", "expected an email address"))
        return found


@dataclass(frozen=True)
class Policies:
    """Every policy file, in file-name order, and the custom detectors they define."""

    files: tuple[PolicyFile, ...] = ()

    @property
    def detectors(self) -> tuple[CustomDetector, ...]:
        return tuple(d for f in self.files for d in f.detectors)

    @property
    def subject_tags(self) -> tuple[str, ...]:
        return tuple(sorted({t.lower() for f in self.files for r in f.rules for t in r.when.subject_tags}))

    @property
    def on_error(self) -> ErrorAction:
        return max((f.on_error for f in self.files), key=STRENGTH.__getitem__, default="hold")


def load_policies(directory: Path) -> Policies:
    """Every ``*.yaml``/``*.yml`` file of `directory`, validated together; a missing directory
    means no policy (the caller warns). Raises ConfigErrors naming every problem at file:line."""
    if not directory.is_dir():
        return Policies()
    paths = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    nodes = []
    errors: list[ConfigError] = []
    for path in paths:
        try:
            nodes.append((path, typedyaml.compose(path.read_text(encoding="utf-8"), str(path))))
        except ConfigError as exc:
            errors.append(exc)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(ConfigError(f"cannot read policy file: {exc}", file=str(path)))
    token = _known_detectors.set(BUILT_IN_NAMES | _custom_names(node for _, node in nodes))
    files = []
    try:
        for path, node in nodes:
            try:
                loaded = typedyaml.load(PolicyFile, node, file=str(path), base_dir=directory)
            except ConfigErrors as exc:
                errors += exc.errors
                continue
            object.__setattr__(loaded, "source", str(path))
            files.append(loaded)
    finally:
        _known_detectors.reset(token)
    errors += _duplicate_detectors(files)
    if errors:
        raise ConfigErrors(errors)
    return Policies(tuple(files))


def _custom_names(nodes: Iterable[yaml.Node | None]) -> frozenset[str]:
    """Names under `detectors:` in the composed files, read before the files are loaded."""
    names: set[str] = set()
    for node in nodes:
        if not isinstance(node, yaml.MappingNode):
            continue
        for key, value in node.value:
            if key.value == "detectors" and isinstance(value, yaml.SequenceNode):
                for item in value.value:
                    if isinstance(item, yaml.MappingNode):
                        names.update(v.value for k, v in item.value
                                     if k.value == "name" and isinstance(v, yaml.ScalarNode))
    return frozenset(names)


def _duplicate_detectors(files: list[PolicyFile]) -> list[ConfigError]:
    seen: dict[str, str] = {}
    errors = []
    for policy in files:
        for detector in policy.detectors:
            if detector.name in seen:
                errors.append(ConfigError(f"detector {detector.name!r} is also defined in "
                                          f"{seen[detector.name]}", file=policy.source))
            seen.setdefault(detector.name, policy.source)
    return errors


def matches_address(address: str, patterns: tuple[str, ...]) -> bool:
    """Shell-style patterns, case-insensitive: "*@example.org", "billing@*", "*"."""
    lowered = address.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in patterns)
