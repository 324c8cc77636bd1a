"""The viewer's port: its range on the command line, and whether it can be listened on before the server says so.

Trame binds only once the page is built and the "serving on" line printed; a busy port then ends in an
aiohttp traceback. Binding a throwaway socket first (with the same SO_REUSEADDR the server uses, so a port
in TIME_WAIT still counts as free) turns that into one sentence, before anything slow starts.
"""

from __future__ import annotations

import argparse
import errno
import socket

MAX_PORT = 65535
BIND_ERRNOS = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)  # the ones bind_problem words itself


def port_number(text: str) -> int:
    """argparse type for --port: an integer 0–65535 (0: a free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-{MAX_PORT})") from None
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: give 0-{MAX_PORT} (0 picks a free one)")
    return value


def bind_problem(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another duald-view?); "
                "pick another with --port, or --port 0 for a free one")
    if error.errno == errno.EACCES:
        return f"port {port} needs administrator rights on this machine; pick one above 1023 with --port"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine"
    return f"cannot listen on {host} port {port}: {error.strerror or error}"


def _addresses(host: str, port: int) -> list[tuple]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)


def _try_bind(family: int, kind: int, proto: int, address: tuple) -> int:
    """Bind and release one socket as the server would; the port it got."""
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(address)
        return probe.getsockname()[1]


def usable_port(host: str, port: int) -> tuple[int, str | None]:
    """The port to serve on (a free one for 0) and None, or the port and the one-sentence reason it can't be."""
    try:
        addresses = _addresses(host, port)
    except socket.gaierror:
        return port, f"--host {host} is not a known host name or address"
    try:
        if port == 0:  # choose on the first address, then check that port on the others too
            family, kind, proto, _name, address = addresses[0]
            port = _try_bind(family, kind, proto, address)
            addresses = _addresses(host, port)
        for family, kind, proto, _name, address in addresses:
            _try_bind(family, kind, proto, address)
    except OSError as error:
        return port, bind_problem(host, port, error)
    return port, None
