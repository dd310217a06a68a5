"""Host names: which ``Host`` headers the HTTP server answers (``[server] allowed_hosts``).

The check stops DNS rebinding: a page on another site re-points its own host name at
127.0.0.1, and the victim's browser then reads a loopback server's unauthenticated answers
(``/metrics``, ``/healthz``, the OpenAPI document) as that site's own. The browser still sends
the attacker's name in ``Host``, so a server that answers only its own names is out of reach.

Pure functions, shared by the config validator, the middleware and ``serve``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable

__all__ = [
    "LOOPBACK_NAMES",
    "allowed_patterns",
    "host_allowed",
    "host_name",
    "is_loopback",
    "normalize_pattern",
]

LOOPBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
"""Names always allowed: no page can re-point them, and local health checks use them."""

# One DNS label (underscores too: container and service names use them), then dotted labels.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``[server] host``) listens on this machine's loopback only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name (or "" = every interface): it may resolve anywhere
        return False


def _name(text: str) -> str | None:
    """``text`` as a comparable host name: lower case, no trailing dot, IPv6 in brackets
    (compressed); None when it is no host name."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    elif ":" not in text:
        text = text.lower()
        text = text[:-1] if text.endswith(".") else text  # "example.com." is the same name
        return text if len(text) <= 253 and _NAME_RE.fullmatch(text) else None
    try:
        return f"[{ipaddress.IPv6Address(text).compressed}]"
    except ValueError:
        return None


def normalize_pattern(entry: str) -> str:
    """One ``allowed_hosts`` entry, normalised: ``"*"``, ``"*.example.com"`` (any name under
    ``example.com``, not ``example.com`` itself), or a name or an IP address (IPv6 with or
    without brackets), without a port: any port is allowed.

    Raises :class:`ValueError` with what was expected.
    """
    if entry == "*":
        return entry
    wildcard = entry.startswith("*.")
    name = _name(entry[2:] if wildcard else entry)
    if name is None or (wildcard and name.startswith("[")):
        if ":" in entry and host_name(entry) is not None:  # "example.com:8000", "[::1]:8000"
            raise ValueError(
                f"expected a host name without a port (any port is allowed), got {json.dumps(entry)}"
            )
        raise ValueError(
            f'expected a host name, an IP address, "*.example.com" or "*", got {json.dumps(entry)}'
        )
    return f"*.{name}" if wildcard else name


def host_name(header: str) -> str | None:
    """The host name of a ``Host`` header (``"Example.COM.:8000"`` -> ``"example.com"``,
    ``"[::1]:8000"`` -> ``"[::1]"``); None when the header is malformed."""
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        name, rest = header[: end + 1], header[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
    else:
        name, _, port = header.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    return _name(name) if name else None


def allowed_patterns(
    configured: Iterable[str] | None, listen_host: str | None
) -> tuple[str, ...] | None:
    """The patterns a server answers, or None for any host.

    ``configured`` is ``[server] allowed_hosts`` (None when unset); ``listen_host`` is the
    address ``serve`` binds, None when the app runs under another server (mounted in a host
    app, or ``uvicorn`` run by hand), which may check hosts itself and whose address this
    app does not know. Unset, a loopback ``listen_host`` allows only the loopback names (that
    is what stops rebinding); anything else allows any host, so a server reached through a
    proxy or by a LAN name keeps working.
    """
    local = list(LOOPBACK_NAMES)
    on_loopback = False
    if listen_host is not None and is_loopback(listen_host):
        on_loopback = True
        own = _name(listen_host)  # "127.0.0.2": the address clients then connect to
        if own is not None and own not in local:
            local.append(own)
    if configured is None:
        return tuple(local) if on_loopback else None
    patterns = [normalize_pattern(entry) for entry in configured]
    if "*" in patterns:
        return None
    return tuple(dict.fromkeys([*patterns, *local]))


def host_allowed(name: str, patterns: Iterable[str]) -> bool:
    """Whether the host name ``name`` (from :func:`host_name`) matches one of ``patterns``."""
    for pattern in patterns:
        if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False
