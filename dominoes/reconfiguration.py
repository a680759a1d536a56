"""Change a live service's configuration through its log.

A reconfiguration is an update of the built-in event :data:`EVENT` whose
argument is a *spec* made by :func:`add`, :func:`remove`, :func:`bind`,
:func:`unbind`, :func:`copies` (how many replicas hold each partition of a
partitioned component) or :func:`mode` (an event's ownership mode).  Every
replica applies it at the same log position, so they all switch at once,
between the same two entries::

    from dominoes import connect, reconfiguration

    async with await connect("kv") as client:
        await client.submit(reconfiguration.EVENT, reconfiguration.add("audit:Audit"))

It works wherever an update does: ``Replica.submit``, ``State.call``,
``Cluster.call``, a local client, and ``dominoes reconfigure NAME ...`` on the
command line.  The module named in a spec is imported by every replica, so it
must be importable where the service runs.  A spec that cannot be applied is an
error on every replica and changes nothing.  Snapshots carry the
reconfigurations, so a replica that joins or restarts later has the same
components and bindings.
"""

from __future__ import annotations

from ._core._reconfigure import ADDED, EVENT, REMOVED, add, bind, copies, mode, remove, unbind

__all__ = ("ADDED", "EVENT", "REMOVED", "add", "bind", "copies", "mode", "remove", "unbind")
