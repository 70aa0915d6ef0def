"""systemd notifications (the sd_notify protocol, no dependency): READY, STATUS, STOPPING and the watchdog.

deploy/jetson/edgemm.service runs `edgemm run` as Type=notify with WatchdogSec=. edgemm.pipeline calls
``ping()`` from its worker loop: the first call sends READY=1 (sources open, model loaded), later ones
WATCHDOG=1, and only when the pipeline progressed since the last ping (a result, an item from a source, a
lost source opened again): a loop that turns without progress (a camera read that never returns) stops
pinging, and systemd restarts the service after WatchdogSec.
Other long-running code can use the class directly:

    wd = Watchdog()                 # reads NOTIFY_SOCKET / WATCHDOG_USEC; every call is a no-op without them
    ...open sources, load the model...
    wd.ready("running model.edgemm")  # systemd marks the service started only now
    for result in pipeline:           # in the loop that produces results, not in a side thread:
        wd.kick()                     # a stalled pipeline stops the pings and systemd restarts it
    wd.stopping()

kick() is cheap and sends WATCHDOG=1 at most every WatchdogSec/4. Pinging from a separate timer thread
would keep a hung pipeline alive, which is exactly what the watchdog is there to catch.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send one datagram to $NOTIFY_SOCKET. True when sent; False when not under systemd or on failure."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    elif address[0] != "/":
        log.debug("NOTIFY_SOCKET %r is not a unix socket path; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:  # systemd gone, socket full: the service must keep running regardless
        log.debug("sd_notify(%r) failed: %s", state, exc)
        return False


def watchdog_interval_s() -> float | None:
    """WatchdogSec in seconds when systemd armed a watchdog for this very process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # meant for another process (e.g. we are a child of the service's main process)
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


class Watchdog:
    """READY/STATUS/STOPPING and a rate-limited WATCHDOG=1 ping; harmless when not run by systemd."""

    def __init__(self, clock=time.monotonic):
        self.interval_s = watchdog_interval_s()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._clock = clock
        self._last = float("-inf")
        self.pings = 0

    def ready(self, status: str | None = None) -> bool:
        msg = "READY=1" + (f"\nSTATUS={status}" if status else "")
        sent = notify(msg)
        self._last = self._clock()
        return sent

    def status(self, text: str) -> bool:
        return notify(f"STATUS={text}")

    def kick(self) -> bool:
        """Ping the watchdog if a quarter of its interval has passed since the last ping. Cheap to call often."""
        if self.interval_s is None:
            return False
        now = self._clock()
        if now - self._last < self.interval_s / 4:
            return False
        self._last = now
        sent = notify("WATCHDOG=1")
        self.pings += sent
        return sent

    def stopping(self, status: str | None = None) -> bool:
        return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


_process_watchdog: Watchdog | None = None


def ping() -> bool:
    """The pipeline's hook (edgemm.pipeline calls it from step() when it progressed, after its sources and
    model are up).

    The first call tells systemd the service is ready (READY=1); later calls ping the watchdog, rate-limited.
    """
    global _process_watchdog
    if _process_watchdog is None:
        _process_watchdog = Watchdog()
        return _process_watchdog.ready("streaming")
    return _process_watchdog.kick()
