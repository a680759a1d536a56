"""One queue of a (multi-queue) TUN device: the netstack's wire.

Every replica opens its own queue of the same device with ``IFF_MULTI_QUEUE``;
the kernel spreads flows over the queues by a hash of their addresses and ports
and accepts a packet written to any queue.  With ``IFF_NO_PI`` each ``read``
returns exactly one IPv4 (or IPv6) packet and each ``write`` injects one.

The device is usually made beforehand, with the kernel side's address, by the
operator or the test (``ip tuntap add dev dn0 mode tun multi_queue``, ``ip addr
add 192.0.2.1/24 dev dn0``, ``ip link set dn0 up``); a queue attached to a
device that does not exist creates it, without an address, and it disappears
with its last queue.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Final

__all__ = ("TunQueue", "open_queue")

TUNSETIFF: Final = 0x400454CA
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_MULTI_QUEUE: Final = 0x0100
#: Longest packet a read returns (the device's MTU is at most this).
MAX_PACKET: Final = 65535


def open_queue(name: str, *, multi_queue: bool = True) -> int:
    """A non-blocking fd on a new queue of TUN device ``name`` (OSError: no
    /dev/net/tun, no CAP_NET_ADMIN, or a device of another kind by that name)."""
    if not name or len(name.encode()) > 15:
        raise ValueError(f"a network device name is 1 to 15 bytes, not {name!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


class TunQueue:
    """A queue's fd with counted, non-blocking reads and writes."""

    __slots__ = ("fd", "name", "read_packets", "write_drops", "written_packets")

    def __init__(self, name: str, *, multi_queue: bool = True) -> None:
        self.name = name
        self.fd = open_queue(name, multi_queue=multi_queue)
        self.read_packets = 0
        self.written_packets = 0
        #: writes the device refused (its queue full: EAGAIN, or down): TCP retransmits
        self.write_drops = 0

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` packets waiting now (none when the queue is empty)."""
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        for _ in range(limit):
            try:
                out.append(read(fd, MAX_PACKET))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    break
                raise
        self.read_packets += len(out)
        return out

    def write(self, packet: bytes) -> bool:
        """Inject one packet; False (counted) when the device does not take it now."""
        try:
            os.write(self.fd, packet)
        except OSError:
            self.write_drops += 1
            return False
        self.written_packets += 1
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
