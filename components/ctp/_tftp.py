"""TFTP (RFC 1350, with the option extension: RFC 2347 blksize RFC 2348, tsize and
timeout RFC 2349) as a micro-protocol: a codec and a driver over the same
segmentation, sequencing, acknowledgement and flow-control micro-protocols as
the native profiles.

* The service's UDP port is the server's TID for every transfer; transfers are
  told apart by the client's address and port (its TID).  Every replica binds
  the port (``SO_REUSEPORT``), and whichever replica owns an entry answers from
  it, so the client sees one server.
* A read request (RRQ) is checked in the log entry (the name, the mode, the
  options: the same verdict on every replica).  Then the owner looks at the file
  (the only step that touches the disk) and appends ``Tftp.opened`` with its size
  (or ``Tftp.refused``): every replica learns the size from the log, so every
  replica cuts the same blocks.  The owner of each transmission reads its block
  from the file at send time.
* Sequencing maps blocks to seqs (block ``b`` is seq ``b``; the OACK is seq 0;
  16-bit block numbers roll over).  Par keeps the unacknowledged block and its
  retransmission timer, a replicated timer: if the replica that sent a block
  dies, another sends it again.  A window of 1 makes it lock-step.
* The first answer (an OACK, or a WRQ's ACK 0) goes again only when the client
  repeats its request, never on the timer: the client retransmits its ACK 0 or
  DATA 1 itself, and clients take a second OACK for a new start (atftp aborts
  with "unexpected OACK"; curl's upload reads on and sends its *next* block as
  block 1, which a server would store as the whole file).
* A write request (WRQ), when the service allows writes, is received into a
  part file that *every* replica writes as it applies each block (the same bytes
  at the same offset): an acknowledged block is on disk whichever replica dies.
  The last block renames the part file to the name asked for.  A WRQ that
  announces its size (``tsize`` above 0, octet mode) is held to it: a block that
  ends elsewhere (past it, or a last block short of it) is refused.
* Refusals are TFTP ERROR packets: a name outside the root (``..``, absolute
  paths), a write when writes are disabled, an unknown transfer ID, an illegal
  operation, a bad option.  Every refusal and drop is counted.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import struct
from typing import Any, ClassVar, Final

import msgspec

from dominoes import Context, update

from . import _types as t
from ._base import MicroProtocol, register
from ._protocols import Par
from ._transport import Transport
from ._types import Segment

__all__ = ("RRQ", "WRQ", "Tftp", "parse_request", "safe_name")

RRQ: Final = 1
WRQ: Final = 2
DATA: Final = 3
ACK: Final = 4
ERROR: Final = 5
OACK: Final = 6

#: RFC 1350 error codes
NOT_DEFINED, NOT_FOUND, ACCESS, DISK_FULL, ILLEGAL, UNKNOWN_TID, EXISTS, NO_USER, OPTIONS = range(9)

#: ended uploads remembered (by client address), and for how long: a late copy of
#: the last block within that time is acknowledged again
FINISHED_KEPT: Final = 1024
FINISHED_KEPT_S: Final = 300.0

MIN_BLKSIZE: Final = 8
MAX_BLKSIZE: Final = 65464
DEFAULT_BLKSIZE: Final = 512

OP: Final = struct.Struct("!H")
OP_BLOCK: Final = struct.Struct("!HH")


class RefusedError(Exception):
    """A request the server answers with a TFTP error."""

    def __init__(self, code: int, text: str, counter: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.counter = counter


def safe_name(name: str) -> str:
    """The name, relative to the root, or :class:`RefusedError` (access violation) for a
    name that could leave it: absolute, ``..``, a backslash, control characters."""
    if not name or name.startswith("/") or "\\" in name or any(ord(c) < 32 for c in name):
        raise RefusedError(ACCESS, "Access violation", "refused_traversal")
    parts = name.split("/")
    if any(p in ("..", "") for p in parts) or parts == ["."]:
        raise RefusedError(ACCESS, "Access violation", "refused_traversal")
    return posixpath.normpath(name)


def parse_request(data: bytes) -> tuple[str, str, dict[str, str]]:
    """(filename, mode, options) of an RRQ/WRQ body; :class:`RefusedError` if malformed."""
    fields = data[2:].split(b"\0")
    if len(fields) < 3 or fields[-1] != b"" or len(fields) % 2 != 1:
        raise RefusedError(ILLEGAL, "Illegal TFTP operation: malformed request", "malformed")
    try:
        words = [f.decode("utf-8") for f in fields[:-1]]
    except UnicodeDecodeError:
        raise RefusedError(ILLEGAL, "Illegal TFTP operation: bad encoding", "malformed") from None
    name, mode = words[0], words[1].lower()
    options: dict[str, str] = {}
    for key, value in zip(words[2::2], words[3::2], strict=True):
        options[key.lower()] = value
    return name, mode, options


def error_packet(code: int, text: str) -> bytes:
    return OP_BLOCK.pack(ERROR, code) + text.encode("utf-8", "replace")[:400] + b"\0"


class Transfer(msgspec.Struct, omit_defaults=True):
    """One transfer's TFTP state, beside its session."""

    op: int
    name: str
    path: str
    blksize: int = DEFAULT_BLKSIZE
    #: "opening" (RRQ: waiting for the owner's look at the file), "sending",
    #: "receiving", "dallying" (WRQ: done, re-acknowledging a repeated last block)
    state: str = "opening"
    size: int = -1
    #: negotiated options, answered in an OACK (empty: none asked, none sent)
    options: dict[str, str] = {}
    #: WRQ: the part file every replica writes, and the bytes received
    part: str = ""
    received: int = 0
    #: WRQ: the size the client announced (``tsize``, octet mode), -1 if none (or 0)
    expect: int = -1


@register("tftp")
class Tftp(MicroProtocol):
    """The TFTP codec and driver (see the module doc)."""

    transfers: dict[str, Transfer]
    counters: dict[str, int]
    finished: dict[str, tuple[int, float]]

    transient: ClassVar[tuple[str, ...]] = ("_parts", "write_errors")
    binds = (
        (t.DATAGRAM, "received", 10),
        (t.SEGMENT_TO_NET, "send", 100),
        (t.DELIVER_TO_APP, "write", 20),
        (t.CLOSED, "forget", 80),
        ("tftp.dallied", "dallied", 0),
    )
    requires = ("transport", "segment", "sequence", "par")

    def __init__(self) -> None:
        #: the served directory ("" until configured), and whether WRQ is allowed
        self.root = ""
        self.writable = False
        self.transfers: dict[str, Transfer] = {}
        #: uploads that ended, by client address: the last block's number and when
        #: (a late copy of that block gets its ACK again, not "Unknown transfer ID")
        self.finished: dict[str, tuple[int, float]] = {}
        self.counters: dict[str, int] = {}
        #: this replica's open part files: sid -> fd, and its failed writes
        self._parts: dict[str, int] = {}
        self.write_errors = 0

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    @update
    def configure(self, ctx: Context, root: str, writable: bool) -> None:
        """Set the served directory (an absolute path) and whether uploads are taken."""
        self.root = root
        self.writable = bool(writable)

    # --- datagrams in ---------------------------------------------------------------------------

    def received(
        self,
        ctx: Context,
        data: bytes,
        host: str,
        port: int,
        *,
        max_blksize: int = MAX_BLKSIZE,
        max_file: int = 1 << 32,
    ) -> None:
        ctx.halt()  # this codec owns the service's datagrams
        transport = ctx.component(Transport)
        sid = f"{host}:{port}/0"
        if len(data) < 4:
            self.count("dropped_short")
            if len(data) >= 2 and OP.unpack_from(data)[0] == ERROR:
                return
            self._refuse(
                ctx, host, port, RefusedError(ILLEGAL, "Illegal TFTP operation", "malformed")
            )
            return
        (op,) = OP.unpack_from(data)
        session = transport.sessions.get(sid)
        try:
            if op in (RRQ, WRQ):
                if session is not None:
                    self._repeated_request(ctx, sid)
                    return
                self._request(ctx, op, data, host, port, max_blksize, max_file)
            elif op in (DATA, ACK, ERROR) and session is None:
                if op == ERROR:
                    self.count("dropped_error_unknown_tid")
                    return
                if op == DATA and self._late_last_block(ctx, data, host, port):
                    return
                raise RefusedError(UNKNOWN_TID, "Unknown transfer ID", "refused_unknown_tid")
            elif op == DATA:
                self._data(ctx, sid, data, max_file)
            elif op == ACK:
                self._ack(ctx, sid, data)
            elif op == ERROR:
                self.count("peer_errors")
                transport.end(ctx, sid, "peer-error")
            else:
                raise RefusedError(ILLEGAL, f"Illegal TFTP operation: opcode {op}", "malformed")
        except RefusedError as exc:
            self._refuse(ctx, host, port, exc)
            if sid in transport.sessions and exc.code != UNKNOWN_TID:
                transport.end(ctx, sid, "refused")

    def _late_last_block(self, ctx: Context, data: bytes, host: str, port: int) -> bool:
        """A copy of an ended upload's last block (its final ACK was lost, and the
        client's retries outlasted the dally): acknowledged again."""
        done = self.finished.get(f"{host}:{port}")
        if done is None or len(data) < 4 or ctx.now - done[1] > FINISHED_KEPT_S:
            return False
        (_, block) = OP_BLOCK.unpack_from(data)
        if block != done[0]:
            return False
        self.count("late_last_blocks")
        ctx.component(Transport).transmit_to(ctx, host, port, OP_BLOCK.pack(ACK, block))
        return True

    def _remember_finished(self, ctx: Context, host: str, port: int, block: int) -> None:
        finished = self.finished
        finished.pop(f"{host}:{port}", None)
        finished[f"{host}:{port}"] = (block, ctx.now)
        while len(finished) > FINISHED_KEPT:  # the oldest first: dicts keep insertion order
            del finished[next(iter(finished))]

    def _refuse(self, ctx: Context, host: str, port: int, exc: RefusedError) -> None:
        self.count(exc.counter)
        self.count("errors_sent")
        ctx.component(Transport).transmit_to(ctx, host, port, error_packet(exc.code, exc.text))

    def _request(
        self,
        ctx: Context,
        op: int,
        data: bytes,
        host: str,
        port: int,
        max_blksize: int,
        max_file: int,
    ) -> None:
        name, mode, asked = parse_request(data)
        self.count("rrq" if op == RRQ else "wrq")
        if mode not in ("octet", "netascii"):
            raise RefusedError(ILLEGAL, f"Illegal TFTP operation: mode {mode!r}", "refused_mode")
        if not self.root:
            raise RefusedError(NOT_DEFINED, "server not configured", "refused_unconfigured")
        rel = safe_name(name)
        if op == WRQ and not self.writable:
            raise RefusedError(ACCESS, "Access violation: writes are disabled", "refused_write")
        options: dict[str, str] = {}
        blksize = DEFAULT_BLKSIZE
        if "blksize" in asked:
            try:
                wanted = int(asked["blksize"])
            except ValueError:
                wanted = 0
            if wanted < MIN_BLKSIZE:
                raise RefusedError(OPTIONS, f"bad blksize {asked['blksize']!r}", "refused_option")
            blksize = min(wanted, max_blksize, MAX_BLKSIZE)
            options["blksize"] = str(blksize)
        expect = -1
        timeout = 0
        if "timeout" in asked:
            try:
                timeout = int(asked["timeout"])
            except ValueError:
                timeout = 0
            if 1 <= timeout <= 255:
                options["timeout"] = str(timeout)
            else:
                timeout = 0
        if "tsize" in asked:
            try:
                tsize = int(asked["tsize"])
            except ValueError:
                raise RefusedError(
                    OPTIONS, f"bad tsize {asked['tsize']!r}", "refused_option"
                ) from None
            if op == WRQ:
                if tsize > max_file:
                    raise RefusedError(
                        DISK_FULL, "Disk full or allocation exceeded", "refused_size"
                    )
                options["tsize"] = str(tsize)
                if tsize > 0 and mode == "octet":  # curl announces 0 for a size unknown
                    expect = tsize
            else:
                options["tsize"] = "0"  # answered with the size, once known
        transport = ctx.component(Transport)
        s = transport.session(ctx, host, port, role="rrq" if op == RRQ else "wrq")
        s.mss = blksize
        if timeout:
            s.rto = s.rto_base = float(timeout)
            s.rto_pinned = True
        path = posixpath.join(self.root, rel)
        transfer = Transfer(op, rel, path, blksize, options=options, expect=expect)
        self.transfers[s.sid] = transfer
        if op == RRQ:
            s.snd_next = 0 if options else 1
            s.closing = True  # it ends when the last block is acknowledged
            self._look(ctx, s.sid, path)
        else:
            s.rcv_next = 1
            head, tail = posixpath.split(path)
            transfer.part = posixpath.join(head, f".{tail}.{ctx.seq}.part")
            transfer.state = "receiving"
            if options:
                s.snd_next = 0
                ctx.raise_event(t.SEGMENT_FROM_APP, s.sid, Segment(t.OACK, options=options))
            else:
                ctx.raise_event(t.SEGMENT_TO_NET, s.sid, Segment(t.ACK, ack=1))

    def _repeated_request(self, ctx: Context, sid: str) -> None:
        """The client sent its request again (our first answer was lost, or slow, or
        the network duplicated the request): the first answer goes again while the
        client has not answered it (the only way it goes again, see the module doc)."""
        self.count("repeated_requests")
        transfer = self.transfers.get(sid)
        s = ctx.component(Transport).sessions[sid]
        if transfer is None:
            return
        oack = ctx.component(Par).unacked.get(sid, {}).get(0)
        if transfer.state == "opening":
            self._look(ctx, sid, transfer.path)  # the first owner may have died before
        elif oack is not None and oack.kind == t.OACK:
            self.count("oacks_repeated")
            ctx.component(Par).resend(ctx, sid, oack)
        elif transfer.op == WRQ and not transfer.options and s.rcv_next == 1:
            ctx.raise_event(t.SEGMENT_TO_NET, sid, Segment(t.ACK, ack=1))

    def _look(self, ctx: Context, sid: str, path: str) -> None:
        """On the owner: look at the file, then tell every replica through the log."""
        transport = ctx.component(Transport)
        if ctx.is_owner and transport.submit is not None:
            ctx.effect(self._look_now, transport, sid, path, self.root)

    @staticmethod
    def _look_now(transport: Transport, sid: str, path: str, root: str) -> None:
        submit = transport.submit
        assert submit is not None
        real = os.path.realpath(path)
        if not real.startswith(os.path.realpath(root).rstrip("/") + "/"):
            submit(Tftp.refused, sid, ACCESS, "Access violation")
            return
        try:
            st = os.stat(real)
        except FileNotFoundError:
            submit(Tftp.refused, sid, NOT_FOUND, "File not found")
            return
        except OSError as exc:
            submit(Tftp.refused, sid, ACCESS, f"Access violation: {exc.strerror}")
            return
        if not os.path.isfile(real) or not os.access(real, os.R_OK):
            submit(Tftp.refused, sid, ACCESS, "Access violation")
            return
        submit(Tftp.opened, sid, real, st.st_size)

    @update
    def opened(self, ctx: Context, sid: str, real: str, size: int) -> None:
        """The owner of a read request found the file: every replica starts sending."""
        transfer = self.transfers.get(sid)
        if transfer is None or transfer.state != "opening":
            return  # a second look (a repeated request) or a transfer gone
        transfer.state = "sending"
        transfer.size = size
        transfer.path = real
        if transfer.options:
            if "tsize" in transfer.options:
                if size:
                    transfer.options["tsize"] = str(size)
                else:  # curl refuses an OACK of tsize 0; RFC 2347 lets a server omit one
                    del transfer.options["tsize"]
            ctx.raise_event(t.SEGMENT_FROM_APP, sid, Segment(t.OACK, options=transfer.options))
        ctx.raise_event(t.SEND, sid, b"", real, size)

    @update
    def refused(self, ctx: Context, sid: str, code: int, text: str) -> None:
        """The owner of a read request could not serve the file: an error, and the end."""
        transfer = self.transfers.get(sid)
        transport = ctx.component(Transport)
        s = transport.sessions.get(sid)
        if transfer is None or transfer.state != "opening" or s is None:
            return
        self.count("refused_not_found" if code == NOT_FOUND else "refused_access")
        self.count("errors_sent")
        transport.transmit_to(ctx, s.host, s.port, error_packet(code, text))
        transport.end(ctx, sid, "refused")

    def _data(self, ctx: Context, sid: str, data: bytes, max_file: int) -> None:
        transfer = self.transfers.get(sid)
        transport = ctx.component(Transport)
        s = transport.sessions[sid]
        if transfer is None or transfer.op != WRQ:
            raise RefusedError(ILLEGAL, "Illegal TFTP operation: DATA in a read", "malformed")
        (_, block) = OP_BLOCK.unpack_from(data)
        payload = data[4:]
        if len(payload) > transfer.blksize:
            raise RefusedError(ILLEGAL, "Illegal TFTP operation: block too large", "malformed")
        s.last = ctx.now
        seq = _unwrap(block, s.rcv_next)
        if seq < 1:
            self.count("dropped_stale")
            return
        if seq > s.rcv_next:  # lock-step: a block ahead of the next one is bogus
            self.count("dropped_ahead")
            return
        off = (seq - 1) * transfer.blksize
        end = off + len(payload)
        if end > max_file:
            raise RefusedError(DISK_FULL, "Disk full or allocation exceeded", "refused_size")
        last = len(payload) < transfer.blksize
        if transfer.expect >= 0 and (end > transfer.expect or (last and end != transfer.expect)):
            # not the file the client announced: never renamed into place
            raise RefusedError(
                ILLEGAL,
                f"Illegal TFTP operation: block {block} ends at {end}, tsize {transfer.expect}",
                "refused_tsize",
            )
        if transfer.options and seq == 1:
            # DATA 1 acknowledges the OACK (seq 0)
            ctx.raise_event(t.ACK_RECEIVED, sid, Segment(t.ACK, ack=1))
        total = off + len(payload) if last else off + len(payload) + 1
        seg = Segment(t.DATA, seq=seq, payload=payload, off=off, total=total)
        ctx.raise_event(t.DATAGRAM_FROM_NET, sid, seg)

    def _ack(self, ctx: Context, sid: str, data: bytes) -> None:
        transfer = self.transfers.get(sid)
        s = ctx.component(Transport).sessions[sid]
        if transfer is None or transfer.op != RRQ:
            raise RefusedError(ILLEGAL, "Illegal TFTP operation: ACK in a write", "malformed")
        (_, block) = OP_BLOCK.unpack_from(data)
        s.last = ctx.now
        seq = _unwrap(block, max(s.snd_next - 1, 0))
        ctx.raise_event(t.ACK_RECEIVED, sid, Segment(t.ACK, ack=seq + 1))

    # --- the application end of a write request ---------------------------------------------

    def write(self, ctx: Context, sid: str, seg: Segment) -> None:
        """Every replica writes each block of an upload to the part file, as it applies it."""
        transfer = self.transfers.get(sid)
        if transfer is None or transfer.op != WRQ:
            return
        transport = ctx.component(Transport)
        transfer.received += len(seg.payload)
        last = len(seg.payload) < transfer.blksize
        if last:
            # the replicated state first, the same on every replica whatever its disk
            # does below (a write that fails on one replica only must not leave it in
            # "receiving", with other counters and no dally timer, beside the others)
            transfer.state = "dallying"
            self.count("uploads")
            ctx.raise_later(2 * transport.sessions[sid].rto, "tftp.dallied", sid)
        try:
            self._write_block(sid, transfer, seg, last)
        except OSError as exc:
            # this replica's disk: counted here only (transient); the owner, which
            # answers the client, tells every replica through the log (Tftp.failed)
            self.write_errors += 1
            if ctx.is_owner and transport.submit is not None:
                code = DISK_FULL if exc.errno in (28, 122) else ACCESS
                ctx.effect(transport.submit, Tftp.failed, sid, code, f"{exc.strerror}")

    def _write_block(self, sid: str, transfer: Transfer, seg: Segment, last: bool) -> None:
        fd = self._parts.get(sid)
        if fd is None:
            fd = os.open(transfer.part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._parts[sid] = fd
        os.pwrite(fd, seg.payload, seg.off)
        if last:
            os.ftruncate(fd, seg.off + len(seg.payload))
            os.close(self._parts.pop(sid))
            # another replica may have renamed it first (this one wrote into the same file)
            with contextlib.suppress(FileNotFoundError):
                os.replace(transfer.part, transfer.path)

    @update
    def failed(self, ctx: Context, sid: str, code: int, text: str) -> None:
        """The owner could not write an upload: an error for the client, and the end."""
        transport = ctx.component(Transport)
        s = transport.sessions.get(sid)
        if s is None or sid not in self.transfers:
            return
        self.count("write_failures")
        self.count("errors_sent")
        transport.transmit_to(ctx, s.host, s.port, error_packet(code, text))
        transport.end(ctx, sid, "failed")

    def dallied(self, ctx: Context, sid: str) -> None:
        """After the last block: keep answering a repeated last block (its ACK was
        lost) until the client has been quiet for two of its timeouts, then end."""
        transfer = self.transfers.get(sid)
        s = ctx.component(Transport).sessions.get(sid)
        if transfer is None or transfer.state != "dallying" or s is None:
            return
        # two of the *client's* timeouts: it resends the last block when the
        # final ACK is lost, after its own timeout, which only the timeout
        # option tells; without it, assume the usual 5 s (tftp-hpa's; tftpy's
        # and curl's are shorter).  Our RTO (0.2 s and up) would end the
        # session before a client that waits 1 s resends, and answer its resend
        # with "Unknown transfer ID" for an upload that succeeded.
        client = float(transfer.options["timeout"]) if "timeout" in transfer.options else 5.0
        dally = 2 * max(s.rto_base, client)
        quiet = ctx.now - s.last
        if quiet < dally:
            ctx.raise_later(dally - quiet, "tftp.dallied", sid)
            return
        last_block = (s.rcv_next - 1) & 0xFFFF
        self._remember_finished(ctx, s.host, s.port, last_block)
        ctx.component(Transport).end(ctx, sid, "done")

    # --- datagrams out ----------------------------------------------------------------------------

    def send(self, ctx: Context, sid: str, seg: Segment) -> None:
        transport = ctx.component(Transport)
        if seg.kind == t.DATA:
            block = seg.seq & 0xFFFF
            transport.transmit(
                ctx,
                sid,
                lambda: OP_BLOCK.pack(DATA, block) + transport.payload(sid, seg),
            )
            self.count("data_sent")
        elif seg.kind == t.ACK:
            packet = OP_BLOCK.pack(ACK, (seg.ack - 1) & 0xFFFF)
            transport.transmit(ctx, sid, lambda: packet)
        elif seg.kind == t.OACK:
            body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in seg.options.items())
            packet = OP.pack(OACK) + body
            transport.transmit(ctx, sid, lambda: packet)
        # NAK and parity have no TFTP form: a profile that adds them sends nothing more;
        # errors go out through transmit_to (a refusal may have no session)

    def forget(self, ctx: Context, sid: str, reason: str) -> None:
        transfer = self.transfers.pop(sid, None)
        fd = self._parts.pop(sid, None)
        if fd is not None:
            os.close(fd)
        if transfer is not None and reason == "done":
            self.count("transfers_done")
        elif transfer is not None and transfer.op == WRQ and transfer.state == "receiving":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(transfer.part)

    def report(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "writable": self.writable,
            "transfers": len(self.transfers),
            **self.counters,
        }


def _unwrap(block: int, near: int) -> int:
    """The seq whose low 16 bits are ``block``, closest to ``near`` (rollover)."""
    diff = (block - near) & 0xFFFF
    if diff >= 0x8000:
        diff -= 0x10000
    return near + diff
