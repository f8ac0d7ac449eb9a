"""YAML -> frozen dataclasses, with every error located at ``file:line``.

The loader walks PyYAML's *composed* node tree (not the constructed Python objects) so that each
value keeps its line number and its literal text: ``starttls: off`` stays the word ``off`` where a
field expects a word, although YAML 1.1 would make it the boolean False.

Field types drive conversion: ``str``, ``int``, ``bool``, ``float``, :class:`Duration`,
:class:`ByteSize`, :class:`HostPort`, :class:`IPNetwork`, ``Path`` (resolved against a base
directory), ``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]`` and nested
dataclasses. Unknown keys, wrong types and missing required keys are all collected, so one run of
``mailward check-config`` names every problem, then raised together as :class:`ConfigErrors`.

A dataclass may define ``problems(self) -> list[tuple[str, str]]`` returning ``(key, message)``
pairs for cross-field checks; the loader locates them at that key's line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from gateway.errors import ConfigError, ConfigErrors

T = TypeVar("T")

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)\s*$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KB|MB|GB)?\s*$", re.IGNORECASE)


class Duration(float):
    """Seconds, written in YAML as ``30s``, ``5m``, ``2h``, ``5d``, ``6y`` (or a bare number)."""

    @classmethod
    def parse(cls, text: str) -> Duration:
        match = _DURATION_RE.match(text)
        if match is None:
            raise ValueError(f"expected a duration such as 30s, 5m, 2h, 5d, got {text!r}")
        return cls(float(match.group(1)) * _DURATION_UNITS[match.group(2)])

    def __str__(self) -> str:
        for unit in ("y", "d", "h", "m", "s"):
            size = _DURATION_UNITS[unit]
            if self >= size and self % size == 0:
                return f"{int(self // size)}{unit}"
        return f"{float(self)}s"


class ByteSize(int):
    """Bytes, written in YAML as ``512KB``, ``50MB`` (or a bare number of bytes)."""

    @classmethod
    def parse(cls, text: str) -> ByteSize:
        match = _SIZE_RE.match(text)
        if match is None:
            raise ValueError(f"expected a size such as 512KB or 50MB, got {text!r}")
        return cls(int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])


class HostPort(str):
    """``host:port`` or ``[v6addr]:port``; `host` and `port` are parsed once here."""

    host: str
    port: int

    def __new__(cls, text: str) -> HostPort:
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", text)
        if match is None:
            raise ValueError(f"expected host:port, got {text!r}")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        obj = super().__new__(cls, text)
        obj.host, obj.port = host, port
        return obj


class IPNetwork(str):
    """A CIDR network such as ``127.0.0.0/8`` or ``2001:db8::/32``; `network` is parsed."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    def __new__(cls, text: str) -> IPNetwork:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ValueError(f"expected a network such as 10.0.0.0/8, got {text!r}") from exc
        obj = super().__new__(cls, str(network))
        obj.network = network
        return obj


def address_in(client_ip: str,
               networks: typing.Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether `client_ip` (IPv4-mapped IPv6 counts as IPv4) is in one of `networks`."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclasses.dataclass
class _Context:
    file: str
    base_dir: Path
    errors: list[ConfigError] = dataclasses.field(default_factory=list)

    def error(self, node: yaml.Node | None, where: str, message: str) -> _Invalid:
        line = node.start_mark.line + 1 if node is not None else None
        prefix = f"{where}: " if where else ""
        self.errors.append(ConfigError(prefix + message, file=self.file, line=line))
        return INVALID


class _Invalid:
    """Marks a value that failed to convert; the error is already recorded."""


INVALID = _Invalid()

_SCALAR_TAGS = {
    "str": "tag:yaml.org,2002:str",
    "int": "tag:yaml.org,2002:int",
    "float": "tag:yaml.org,2002:float",
    "bool": "tag:yaml.org,2002:bool",
    "null": "tag:yaml.org,2002:null",
}


def compose(text: str, file: str) -> yaml.Node | None:
    """Parse YAML text to a node tree; a syntax error becomes a located ConfigError."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"YAML syntax error: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None


def load(cls: type[T], node: yaml.Node | None, *, file: str, base_dir: Path) -> T:
    """Build a `cls` dataclass from a composed YAML node, or raise ConfigErrors listing every problem."""
    ctx = _Context(file=file, base_dir=base_dir)
    if node is None:  # an empty file means "all defaults"
        node = yaml.MappingNode("tag:yaml.org,2002:map", [])
    value = _convert(cls, node, "", ctx)
    if ctx.errors:
        raise ConfigErrors(ctx.errors)
    assert not isinstance(value, _Invalid)
    return typing.cast(T, value)


def _convert(tp: Any, node: yaml.Node, where: str, ctx: _Context) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_optional(args, node, where, ctx)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(typing.cast(type, tp), node, where, ctx)
    if origin is tuple:
        return _convert_sequence(args[0], node, where, ctx)
    if origin in (Mapping, dict, typing.Mapping):
        return _convert_mapping(args[1], node, where, ctx)
    if origin is Literal:
        return _convert_literal(args, node, where, ctx)
    return _convert_scalar(tp, node, where, ctx)


def _convert_optional(args: tuple[Any, ...], node: yaml.Node, where: str, ctx: _Context) -> Any:
    if isinstance(node, yaml.ScalarNode) and node.tag == _SCALAR_TAGS["null"]:
        return None
    inner = [a for a in args if a is not type(None)]
    return _convert(inner[0], node, where, ctx)


def _convert_dataclass(cls: type, node: yaml.Node, where: str, ctx: _Context) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return ctx.error(node, where, "expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    key_nodes: dict[str, yaml.Node] = {}
    failed = False
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            ctx.error(key_node, path, f"unknown key (allowed here: {allowed})")
            failed = True
            continue
        if key in values:
            ctx.error(key_node, path, "key given twice")
            failed = True
            continue
        key_nodes[key] = key_node
        values[key] = _convert(hints[key], value_node, path, ctx)
        failed = failed or _contains_invalid(values[key])
    for name, field in fields.items():
        no_default = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if name not in values and no_default:
            ctx.error(node, f"{where}.{name}" if where else name, "required key is missing")
            failed = True
    if failed:
        return INVALID
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        return ctx.error(node, where, str(exc))
    problems: Callable[[], list[tuple[str, str]]] | None = getattr(obj, "problems", None)
    for key, message in problems() if problems else []:
        path = f"{where}.{key}" if where else key
        ctx.error(key_nodes.get(key.split(".")[0].split("[")[0], node), path, message)
        failed = True
    return INVALID if failed else obj


def _contains_invalid(value: Any) -> bool:
    if isinstance(value, _Invalid):
        return True
    if isinstance(value, tuple):
        return any(isinstance(v, _Invalid) for v in value)
    if isinstance(value, Mapping):
        return any(isinstance(v, _Invalid) for v in value.values())
    return False


def _convert_sequence(item_type: Any, node: yaml.Node, where: str, ctx: _Context) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        return ctx.error(node, where, "expected a list")
    return tuple(_convert(item_type, item, f"{where}[{i}]", ctx) for i, item in enumerate(node.value))


def _convert_mapping(value_type: Any, node: yaml.Node, where: str, ctx: _Context) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return ctx.error(node, where, "expected a mapping")
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            ctx.error(key_node, where, "keys must be plain strings")
            continue
        result[key_node.value] = _convert(value_type, value_node, f"{where}.{key_node.value}", ctx)
    return types.MappingProxyType(result)


def _convert_literal(choices: tuple[Any, ...], node: yaml.Node, where: str, ctx: _Context) -> Any:
    # The literal text, so that YAML 1.1 booleans such as `off` stay words.
    if isinstance(node, yaml.ScalarNode) and node.value in choices:
        return node.value
    shown = node.value if isinstance(node, yaml.ScalarNode) else "a " + _kind(node)
    return ctx.error(node, where, f"expected one of {', '.join(choices)}, got {shown!r}")


def _convert_scalar(tp: Any, node: yaml.Node, where: str, ctx: _Context) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return ctx.error(node, where, f"expected {_describe(tp)}, got a {_kind(node)}")
    tag, text = node.tag, node.value
    try:
        if tp is bool:
            if tag != _SCALAR_TAGS["bool"]:
                raise ValueError(f"expected true or false, got {text!r}")
            return text.lower() in ("true", "yes", "on")
        if tp is int:
            if tag != _SCALAR_TAGS["int"]:
                raise ValueError(f"expected a whole number, got {text!r}")
            return int(text.replace("_", ""), 0)
        if tp is float:
            if tag not in (_SCALAR_TAGS["int"], _SCALAR_TAGS["float"]):
                raise ValueError(f"expected a number, got {text!r}")
            return float(text)
        if tp in (Duration, ByteSize):
            if tag == _SCALAR_TAGS["int"]:
                return tp(int(text))
            return tp.parse(text)
        if tag != _SCALAR_TAGS["str"]:
            raise ValueError(f"expected {_describe(tp)}, got {text!r} (quote it if it is text)")
        if tp is Path:
            path = Path(text).expanduser()
            return path if path.is_absolute() else ctx.base_dir / path
        if tp in (str, HostPort, IPNetwork):
            return tp(text)
    except ValueError as exc:
        return ctx.error(node, where, str(exc))
    raise TypeError(f"typedyaml cannot convert to {tp!r}")  # a programming error, not user input


def _kind(node: yaml.Node) -> str:
    return "mapping" if isinstance(node, yaml.MappingNode) else "list"


def _describe(tp: Any) -> str:
    names = {str: "a string", int: "a whole number", bool: "true or false", float: "a number",
             Path: "a file path", Duration: "a duration", ByteSize: "a size",
             HostPort: "host:port", IPNetwork: "a network"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))
