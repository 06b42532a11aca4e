"""Record every non-loopback network attempt made by Python code, in this process and in child processes.

The guard is a ``sys.addaudithook`` hook on CPython's socket audit events (``socket.connect``,
``socket.sendto``, ``socket.sendmsg``, ``socket.getaddrinfo``, ``socket.gethostbyname``, ...). It sees
every connection and every name lookup made from Python, whatever library makes it. An attempt whose
target is not loopback (127.0.0.0/8, ::1, ``localhost``, this machine's own host name, the
unspecified address a server binds to, a Unix socket) is appended as one JSON line to
``$VIDRIP_NETGUARD_DIR/<pid>.jsonl``.

Child processes (Ray's GCS, raylet, dashboard and worker processes are started from Python or run
Python) install the guard through ``netguard_site/sitecustomize.py``: :func:`guard_env` returns the
environment (``PYTHONPATH`` and ``VIDRIP_NETGUARD_DIR``) that makes every Python process started with it
record into the same folder. Ray's C++ processes (GCS server, raylet) are not Python and are not seen.

    env = guard_env(log_dir)             # for subprocesses, e.g. `ray start`
    install(log_dir)                      # in this process
    ...
    assert attempts(log_dir) == []
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import socket
import sys
import threading
import traceback
from pathlib import Path

__all__ = ["ENV_VAR", "attempts", "guard_env", "install", "is_loopback_target"]

ENV_VAR = "VIDRIP_NETGUARD_DIR"
SITE_DIR = Path(__file__).resolve().parent / "netguard_site"

_EVENTS = {
    "socket.connect": 1,
    "socket.sendto": 1,
    "socket.sendmsg": 1,
    "socket.getaddrinfo": 0,
    "socket.gethostbyname": 0,
    "socket.gethostbyname_ex": 0,
    "socket.gethostbyaddr": 0,
    "socket.getnameinfo": 0,
}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}
_installed: set[str] = set()
_lock = threading.Lock()


def is_loopback_target(target: object) -> bool:
    """True when ``target`` (a host string, an address tuple or a Unix socket path) stays on this machine."""
    if target is None:
        return True
    if isinstance(target, (bytes, bytearray)):
        target = bytes(target).decode(errors="replace")
    if isinstance(target, tuple):
        if not target:
            return True
        target = target[0]
        if isinstance(target, (bytes, bytearray)):
            target = bytes(target).decode(errors="replace")
    if not isinstance(target, str):
        return True  # netlink and other non-IP families
    if target.startswith("/") or target.startswith("\0"):
        return True  # Unix socket
    host = target.strip("[]").split("%", 1)[0].lower()
    if host in _LOOPBACK_NAMES or host.endswith(".localhost") or host == _own_hostname():
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name that is not loopback: resolving it leaves the machine
    # The unspecified address (0.0.0.0, ::) is what a server binding to every interface looks up.
    return addr.is_loopback or addr.is_unspecified


@functools.cache
def _own_hostname() -> str:
    """This machine's own name: looking it up names this machine, not another host."""
    return socket.gethostname().lower()


def _socket_family(args: tuple) -> int | None:
    sock = args[0] if args else None
    return getattr(sock, "family", None)


def _make_hook(log_dir: Path):
    path = log_dir / f"{os.getpid()}.jsonl"
    in_hook = threading.local()

    def hook(event: str, args: tuple) -> None:
        pos = _EVENTS.get(event)
        if pos is None or getattr(in_hook, "active", False):
            return
        in_hook.active = True
        try:
            if pos == 1 and _socket_family(args) == socket.AF_UNIX:
                return
            target = args[pos] if len(args) > pos else None
            if is_loopback_target(target):
                return
            record = {
                "pid": os.getpid(),
                "event": event,
                "target": repr(target),
                "argv": sys.argv[:3],
                "stack": "".join(traceback.format_stack(limit=12)[:-1]),
            }
            with _lock, open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        finally:
            in_hook.active = False

    return hook


def install(log_dir: str | Path) -> None:
    """Start recording non-loopback attempts of this process into ``log_dir`` (idempotent per folder)."""
    log_dir = Path(log_dir).resolve()
    key = f"{os.getpid()}:{log_dir}"
    if key in _installed:
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    sys.addaudithook(_make_hook(log_dir))
    _installed.add(key)


def guard_env(log_dir: str | Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment that makes every Python child process record into ``log_dir``."""
    env = dict(os.environ if base is None else base)
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    env[ENV_VAR] = str(log_dir)
    parts = [str(SITE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def attempts(log_dir: str | Path) -> list[dict]:
    """Every attempt recorded in ``log_dir`` by any process."""
    out = []
    for f in sorted(Path(log_dir).glob("*.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    return out
