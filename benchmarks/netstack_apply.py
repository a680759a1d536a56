"""What a netstack replica does per TCP segment, as owner and as non-owner.

The replicated stack splits a segment's work: the replica that reads it from its
TUN queue checks the checksums once (at ingress, before the log); every replica
re-parses the header without the checksum and runs the TCP engine (the state
delta); the owner alone builds the reply packets (checksums, IPv4 headers).
This measures those parts on one connection receiving a bulk transfer, in
process, with no log and no I/O, so the ratio is the design's, not the
machine's::

    python benchmarks/netstack_apply.py [--segments 20000] [--size 1460]

It prints microseconds per segment for the owner's whole path (ingress checks
+ engine + building the ACKs it sends) and a non-owner's (header parse +
engine), and their ratio.  Timing is process CPU time, the median of 5 runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Final

from dominoes.components.netstack import _wire as wire
from dominoes.components.netstack._tcp import Tcb
from dominoes.components.netstack._types import ACK, SYN, Segment

LOCAL: Final = wire.ip_aton("192.0.2.2")
REMOTE: Final = wire.ip_aton("192.0.2.1")


def _packets(n: int, size: int) -> tuple[Segment, list[bytes]]:
    """A SYN and ``n`` in-order data segments of ``size`` bytes, as the peer sends them."""
    syn = Segment(40000, 7, 1000, 0, SYN, 65535, mss=1460, wscale=7)
    payload = bytes(range(256)) * (size // 256 + 1)
    out = []
    seq = 1001
    for _ in range(n):
        seg = Segment(40000, 7, seq, 0, ACK, 4096, payload=payload[:size])
        out.append(seg)
        seq += size
    return syn, [wire.build_tcp(REMOTE, LOCAL, s) for s in out]


def _run(syn: Segment, data: list[bytes], owner: bool) -> float:
    """CPU seconds for the segments, on a fresh connection (established first)."""
    tcb, acts = Tcb.passive(7, 40000, syn, 5000, 0.0)
    ack = acts.segments[0].seq + 1
    handshake = Segment(40000, 7, 1001, ack, ACK, 4096)
    tcb.on_segment(handshake, 0.0)
    fixed = [wire.parse_tcp(REMOTE, LOCAL, d) for d in data]
    # the peer's ACK field must acknowledge our SYN: rebuild with it
    raws = [
        wire.build_tcp(
            REMOTE, LOCAL, Segment(s.src_port, s.dst_port, s.seq, ack, s.flags, s.window, s.payload)
        )
        for s in fixed
    ]
    now = 0.001
    start = time.process_time()
    for raw in raws:
        if owner:
            seg = wire.parse_tcp(REMOTE, LOCAL, raw)  # ingress: checksum verified
            actions = tcb.on_segment(seg, now)
            tcb.consumed(len(actions.delivered), now)
            for out in actions.segments:
                tcp = wire.build_tcp(LOCAL, REMOTE, out)
                wire.build_ipv4(LOCAL, REMOTE, wire.PROTO_TCP, tcp, ident=1)
        else:
            seg = wire.parse_tcp(REMOTE, LOCAL, raw, verify=False)
            actions = tcb.on_segment(seg, now)
            tcb.consumed(len(actions.delivered), now)
        now += 0.00001
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1460)
    args = parser.parse_args()
    syn, data = _packets(args.segments, args.size)
    owner = statistics.median(_run(syn, data, True) for _ in range(5))
    other = statistics.median(_run(syn, data, False) for _ in range(5))
    n = args.segments
    print(f"{n} segments of {args.size} bytes, one connection, median of 5 (CPU time)")
    print(f"  owner     {owner / n * 1e6:7.2f} us/segment  (checksum, engine, ACK built)")
    print(f"  non-owner {other / n * 1e6:7.2f} us/segment  (header parse, engine)")
    print(f"  non-owner/owner = {other / owner:.2f}")


if __name__ == "__main__":
    main()
