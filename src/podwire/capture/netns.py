"""Enter a named network namespace in *this thread* just long enough to create sockets.

pyroute2's `pushns()` saves `/proc/self/ns/net` (the main thread's namespace) on a global
stack, which is wrong from any other thread; we save `/proc/thread-self/ns/net` ourselves and
use pyroute2's `setns` (without O_CREAT: a missing namespace is an error, never created).
Sockets keep the namespace they were created in after we return.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def check(name: str | None) -> None:
    """FileNotFoundError (one clear line) unless netns `name` exists; None is our own namespace."""
    if name is None:
        return
    path = name if "/" in name else os.path.join("/var/run/netns", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"network namespace {name!r} does not exist")


@contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Run the body inside netns `name` (a name under /var/run/netns or a path); None: stay here."""
    if name is None:
        yield
        return
    from pyroute2.netns import setns

    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            setns(name, flags=0)
        except FileNotFoundError:
            raise FileNotFoundError(f"network namespace {name!r} does not exist") from None
        try:
            yield
        finally:
            setns(saved, flags=0)
    finally:
        os.close(saved)
