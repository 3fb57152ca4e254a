"""Durations and "host:port" addresses, parsed and formatted: values that are useful on their own.

The CLI, discovery and the dataplane use them as well as the config walk; they report what was expected through
ValueError and know nothing of config keys.
"""
from __future__ import annotations

import math
import re
import socket
import struct


ADDRESS = '"host:port"'
DURATION = 'a duration like "250ms", "1s", "2m" or "1h"'
MAX_WEIGHT = 1000
MAX_PRIORITY = 65535     # an SRV priority is 16 bits

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Hostname labels; "_" is allowed because container and /etc/hosts names use it and resolvers accept it.
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# A canonical dotted-quad IPv4 address (no leading zeros): what ipaddress accepts, matched without building an object,
# so that configs with many endpoints (10,000 from discovery) validate quickly.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


def ip_literal(text: str) -> tuple[int, str] | None:
    """(4 or 6, the address's one spelling) when text is an IP literal, None otherwise: what ipaddress.ip_address
    accepts and str() spells ("0:0::1" is "::1"; an IPv6 scope, "%eth0", is kept), without loading ipaddress (0.3 MiB
    in the supervisor and every worker). IPv6 goes through the C library's inet_pton."""
    if IPV4_RE.fullmatch(text):
        return 4, text
    address, percent, scope = text.partition("%")
    if ":" not in address or (percent and (not scope or "%" in scope)):
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, address)
    except (OSError, UnicodeEncodeError, ValueError):
        return None
    return 6, _compressed(struct.unpack("!8H", packed)) + percent + scope


def _is_ipv6(text: str) -> bool:
    literal = ip_literal(text)
    return literal is not None and literal[0] == 6


def _compressed(groups: tuple[int, ...]) -> str:
    """Eight 16-bit groups in RFC 5952's shape, as ipaddress spells them: lower-case hex without leading zeros, and
    the first longest run of two or more zero groups written "::"."""
    best_start, best_length, start = 0, 0, -1
    for i, group in enumerate(groups):
        if group:
            start = -1
            continue
        if start < 0:
            start = i
        if i - start + 1 > best_length:
            best_start, best_length = start, i - start + 1
    hextets = [f"{group:x}" for group in groups]
    if best_length < 2:
        return ":".join(hextets)
    return ":".join(hextets[:best_start]) + "::" + ":".join(hextets[best_start + best_length:])


def parse_duration(text: str) -> float:
    """"250ms", "1.5s", "2m", "1h" -> seconds; ValueError for anything else."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(DURATION)
    number, unit = match.groups()
    seconds = float(number) * _UNIT_SECONDS[unit] if unit != "ms" else float(number) / 1000.0
    if not math.isfinite(seconds):
        raise ValueError(DURATION)
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest duration string that parses back to exactly the same float."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    candidates = [f"{int(seconds // scale)}{unit}" for unit, scale in (("h", 3600), ("m", 60), ("s", 1))
                  if (seconds / scale).is_integer()]
    if seconds < 1:
        candidates.append(f"{round(seconds * 1000)}ms")
    for text in candidates:
        if parse_duration(text) == seconds:
            return text
    return f"{plain_decimal(seconds)}s"


def plain_decimal(value: float) -> str:
    """repr(value), the shortest decimal that reads back as value, spelled without an exponent (which the parser
    refuses): 1e-05 -> "0.00001". What Decimal(repr(value)) formats with "f", without loading decimal."""
    text = repr(float(value))
    mantissa, exponent = text.split("e") if "e" in text else (text, "0")
    sign = "-" if mantissa.startswith("-") else ""
    whole, _, fraction = mantissa.lstrip("-").partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent)      # where the decimal point falls in digits
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def shortest_decimal(value: float) -> str:
    """plain_decimal without trailing zeros: 10.0 -> "10", 2.50 -> "2.5"."""
    text = plain_decimal(value)
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_address(text: str) -> tuple[str, int]:
    """"host:port" or "[ipv6]:port" -> (host, port); ValueError whose message says what was expected."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            raise ValueError(ADDRESS)
        host, port_text = text[1:close], text[close + 2:]
        if not _is_ipv6(host):
            raise ValueError('"[host]:port" with an IPv6 address in the brackets')
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(ADDRESS)
        if ":" in host:
            raise ValueError('"host:port" with IPv6 in brackets ("[::1]:80")')
        if not _is_host(host):
            raise ValueError('"host:port" where host is an IP address or a hostname')
    if not port_text:
        raise ValueError(ADDRESS)
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError('"host:port" with a numeric port')
    port = int(port_text) if len(port_text) <= 5 else 0
    if not 1 <= port <= 65535:
        raise ValueError('"host:port" with a port from 1 to 65535')
    return host, port


def format_address(host: str, port: int) -> str:
    """(host, port) -> "host:port", bracketing IPv6 so the port stays unambiguous."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_host(host: str) -> bool:
    if IPV4_RE.fullmatch(host):
        return True
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return False
    # An all-digit last label is a mistyped IPv4 address ("10.0.0.256"), never a name.
    return not labels[-1].isdigit()


def _is_ip_host(text: str) -> bool:
    """An IP literal as a Host header spells it: IPv4, or IPv6 in brackets."""
    if text.startswith("[") and text.endswith("]"):
        return _is_ipv6(text[1:-1])
    return IPV4_RE.fullmatch(text) is not None


def _same_address(host: str, port: int) -> tuple[str, int]:
    """A comparable form: IP literals normalised ("0:0::1" is "::1"), names in lower case without a final dot."""
    literal = ip_literal(host)
    return (literal[1], port) if literal else (host.lower().rstrip("."), port)
