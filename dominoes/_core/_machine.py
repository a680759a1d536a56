"""One replica's state machine: components, registry and replicated bookkeeping.

``StateMachine.apply`` is the only way replicated state changes.  It is a pure
function of (state, entry): it reads no clock, no randomness and no I/O, and
every replica calls it with the same entries in the same order.

Applying one entry
------------------
1. ``ctx.now`` becomes ``max(previous now, entry.ts)`` (and, for a timer, at
   least its deadline), so replicated time never runs backwards even though
   appenders' clocks differ.
2. An entry whose ``request_id`` was applied within the last
   ``dedup_window`` entries that carried one is a retry: it is not applied
   again, and its recorded outcome is returned.
3. The event's handlers run (:func:`~._registry.dispatch`).  An exception is
   part of the replicated outcome: every replica raises it at the same point,
   keeps whatever state changes happened before it (there is no rollback), and
   drops the entry's effects and pending ``raise_async`` events.
4. ``raise_async`` events run, in the order raised, each to completion.
5. If this replica owns the entry, its queued effects are handed back to the
   caller (the runtime or ``testing.Cluster``), which runs them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from types import CoroutineType
from typing import Any, Final

import msgspec

from . import _reconfigure as reconfigure
from ._codec import Batch, Call, Control, Entry, Fire, Mode, Scoped
from ._component import Component, EventRef, query, resolve
from ._context import Context
from ._errors import DominoesError, PoisonedEntryError, QueryWroteStateError, UnknownEventError
from ._partition import Held, Outcomes, PartitionError, Router, combined
from ._registry import Registry, dispatch, drive
from ._timers import Timers

__all__ = ("Applied", "Divergence", "RemoteError", "StateMachine")

#: How many request ids are remembered for de-duplicating retries.  A retry
#: older than this is applied again, so clients must retry within the window.
#: Each id costs a dict slot plus its recorded result on every replica.
DEFAULT_DEDUP_WINDOW: Final = 65536


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    """Two replicas digested different state at the same log position."""

    seq: int
    replicas: tuple[int, int]
    component: str


class RemoteError(DominoesError):
    """An error raised elsewhere, reported here by its type name and message.

    A retried request gets the error recorded for its id this way, and a
    local client (``dominoes.connect``) gets a handler's exception this way.
    """


class Applied:
    """What applying one entry produced on this replica (an outcome of ``ReplicaCore.poll``).

    The machine fills it while applying; drivers only read it.
    """

    __slots__ = (
        "batch",
        "control",
        "digest",
        "digest_due",
        "divergence",
        "duplicate",
        "effects",
        "entry",
        "error",
        "late",
        "owner",
        "parts",
        "published",
        "result",
        "seq",
        "snapshot",
        "snapshot_for",
        "sub",
        "waiter",
    )

    def __init__(self, seq: int, entry: Entry | None, owner: bool, sub: int = -1) -> None:
        self.seq = seq
        #: the call's index inside a ``Batch`` entry (-1: not in a batch)
        self.sub = sub
        #: for a ``Batch``: what each of its calls produced, in order
        self.batch: list[Applied] | None = None
        self.entry = entry
        self.owner = owner
        self.result: Any = None
        self.error: BaseException | None = None
        self.effects: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        #: ``ctx.publish`` calls, delivered on every replica (None: none)
        self.published: list[tuple[str, Any]] | None = None
        self.duplicate = False
        self.snapshot: bytes | None = None
        #: a snapshot of this replica's state is asked for this joiner (-1: none)
        self.snapshot_for = -1
        #: this entry crossed a digest point on this replica
        self.digest_due = False
        #: this replica's state digest, when this entry crossed a digest point
        self.digest: dict[str, str] | None = None
        #: set when a digest report from another replica disagrees with ours
        self.divergence: Divergence | None = None
        #: what the driver registered to learn this outcome (``ReplicaCore``'s
        #: pending table: a future, a ``Pending``), or None
        self.waiter: Any = None
        #: a call with partitioned parts: what they did here, what to forward
        #: and what to wait for (``Outcomes``)
        self.parts: Outcomes | None = None
        #: what a partitions' control entry asks of this replica's core:
        #: ``("results", partials for its calls)`` or ``("transfer", [(gainer,
        #: component, fetch seq, partition, state)])``; None: nothing
        self.control: tuple[str, list[Any]] | None = None
        #: the late outcome of a call whose last partial just arrived (its
        #: entry was applied and reported earlier)
        self.late = False

    def __repr__(self) -> str:
        what = f"error={self.error!r}" if self.error else f"result={self.result!r}"
        return f"<Applied seq={self.seq} owner={self.owner} {what}>"


class _Snapshot(msgspec.Struct, array_like=True):
    service: str
    cursor: int
    now: float
    next_timer: int
    timers: list[tuple[int, float, str, list[Any], dict[str, Any]]]
    recent: list[tuple[str, Any]]  # bytes (a result) or str (an error)
    components: dict[str, Any]
    poisoned: list[tuple[int, str]] = []
    #: the reconfigurations applied so far, in order (see ``_reconfigure``)
    config: list[Any] = []


#: Poison entries remembered in the replicated state (seq, event), newest last.
POISONED_KEPT: Final = 64

#: Digests kept for comparison with other replicas' reports.
_DIGESTS_KEPT: Final = 8

_snap_encoder: Final = msgspec.msgpack.Encoder()
_snap_decoder: Final = msgspec.msgpack.Decoder(_Snapshot)
_result_encoder: Final = msgspec.msgpack.Encoder()
_result_decoder: Final = msgspec.msgpack.Decoder()
_digest_encoder: Final = msgspec.msgpack.Encoder(order="deterministic")
_plain_encoder: Final = msgspec.msgpack.Encoder()


def _hash(state: Any) -> str:
    """A digest of ``state`` that does not depend on set iteration order.

    Sets may iterate differently on a replica restored from a snapshot, so
    they are hashed sorted.  msgspec's deterministic order does that (and
    sorts dict keys) but accepts only string keys; other states are
    canonicalised by hand first.
    """
    try:
        data = _digest_encoder.encode(state)
    except TypeError:
        data = _plain_encoder.encode(_canonical(state))
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        items = [(_canonical(k), _canonical(v)) for k, v in obj.items()]
        return ["map", sorted(items, key=_plain_encoder.encode)]
    if isinstance(obj, set | frozenset):
        return ["set", sorted((_canonical(x) for x in obj), key=_plain_encoder.encode)]
    if isinstance(obj, list | tuple):
        return [_canonical(x) for x in obj]
    if isinstance(obj, msgspec.Struct):
        return _canonical(msgspec.structs.asdict(obj))
    return obj


def _wire(outcome: tuple[bool, Any]) -> tuple[bool, bytes | str]:
    """A part's outcome as another replica gets it: (True, msgpack) or (False, error text)."""
    ok, value = outcome
    if ok:
        try:
            return True, _result_encoder.encode(value)
        except TypeError as exc:
            return False, f"TypeError: a partitioned result must be msgpack-encodable: {exc}"
    if isinstance(value, RemoteError):
        return False, str(value)
    return False, f"{type(value).__name__}: {value}"


class StateMachine:
    """The replicated state of one replica and the rules that change it."""

    def __init__(
        self,
        service_name: str,
        index: int,
        components: list[Component],
        registry: Registry,
        queries: dict[str, Callable[..., Any]],
        names: dict[object, str],
        *,
        local_queries: frozenset[str] = frozenset(),
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
        debug: bool = False,
        digest_every: int = 0,
    ) -> None:
        self.service_name = service_name
        self.index = index
        self.components: dict[str, Component] = {c.name: c for c in components}
        #: the partitioned components (their templates stay in ``components``)
        self.partitioned: dict[str, Held] = {
            c.name: Held(c, spec)
            for c in components
            if (spec := getattr(type(c), "partition", None)) is not None
        }
        if len(self.partitioned) > 256:  # a partition's timer ids carry its component's index
            raise ValueError("a service has at most 256 partitioned components")
        self._held_index = {name: i for i, name in enumerate(self.partitioned)}
        #: partitions that started empty when this replica restored a
        #: snapshot, since no live replica held a copy: (component, partition)
        self.lost: list[tuple[str, int]] = []
        self._replicas = 1
        # replaying a snapshot's reconfigurations (``restore``)
        self._restoring = False
        for held in self.partitioned.values():
            held.place(index, 1)
        self.registry = registry
        self._queries = queries
        #: queries that read this replica's state as it is, without first
        #: catching up to the completed tail (``@query.local``, ``reads="local"``)
        self.local_queries = local_queries
        self._names = names
        self.dedup_window = dedup_window
        self.debug = debug
        #: next seq to apply
        self.cursor = 1
        #: replicated time: the newest ``ctx.now`` applied
        self.now = 0.0
        #: replicated timers (and this replica's local bookkeeping of them)
        self.timers = Timers()
        # request id -> its encoded result (bytes) or error text (str), oldest first
        self._recent: dict[str, bytes | str] = {}
        #: poison entries applied as errors (seq -> event), the last POISONED_KEPT
        self.poisoned: dict[int, str] = {}
        # Divergence detection (local): digest the state after the first entry
        # at or past every multiple of ``digest_every`` -- the same entry on
        # every replica -- and keep the last few to compare with reports.
        self._digest_every = digest_every
        self._next_digest = digest_every
        #: apply() leaves snapshots and digests to the caller's :meth:`finish`
        #: (``ReplicaCore`` does, outside its apply timing); False: apply()
        #: calls it itself.  A replay of already-applied entries calls neither.
        self.defer_outputs = False
        #: the driver's way to write a snapshot asked through the log without
        #: encoding it here: ``writer(seq, joiner)`` starts writing the state
        #: as it is now (after entry ``seq``) and returns True; None or False:
        #: the snapshot is encoded into ``Applied.snapshot``
        self.snapshot_writer: Callable[[int, int], bool] | None = None
        #: the driver's way to digest the state without stopping for it:
        #: ``writer(seq)`` starts digesting the state as it is now (after entry
        #: ``seq``) and returns True; the driver then calls :meth:`digest_done`.
        #: None or False: the digest is computed here, into ``Applied.digest``
        self.digest_writer: Callable[[int], bool] | None = None
        self._digests: dict[int, dict[str, str]] = {}
        # digests being computed by the driver, and other replicas' reports
        # for them that arrived first (compared once ours is done)
        self._digest_pending: set[int] = set()
        # (at -> reporter -> digest: a replay after a rollback re-applies a
        # report, and must not keep it twice)
        self._early_reports: dict[int, dict[int, dict[str, str]]] = {}
        self.divergences = 0
        #: the reconfigurations applied, in log order (replicated: snapshots
        #: carry them and restoring replays them; see ``_reconfigure``)
        self.config: list[Any] = []
        #: events whose calls' ownership mode a reconfiguration set, whatever
        #: mode the caller asked for (``reconfiguration.mode``)
        self.modes: dict[str, Mode] = {}
        #: the driver's claim of an entry's slot, for a call of a batch whose mode
        #: was set to ``race`` (None: the batch's owner owns it)
        self.claim: Callable[[int], bool] | None = None
        # the configuration the service defined, which a restore goes back to
        # before it replays a snapshot's reconfigurations (a rollback restores
        # into this machine, which may have been reconfigured since)
        self._defined = (
            dict(self.components),
            registry.save(),
            dict(queries),
            dict(names),
            local_queries,
        )
        # local statistics
        self.applied_entries = 0
        self.errors = 0
        #: scoped entries passed over without decoding (none of their partitions here)
        self.skipped_entries = 0

    @property
    def replicas(self) -> int:
        """How many replicas the service runs: where partitions are placed."""
        return self._replicas

    @replicas.setter
    def replicas(self, n: int) -> None:
        if n < 1:
            raise ValueError("replicas must be >= 1")
        self._replicas = n
        for held in self.partitioned.values():
            held.place(self.index, n)

    @property
    def digest_every(self) -> int:
        """Digest the state every this many log positions (0: never)."""
        return self._digest_every

    @digest_every.setter
    def digest_every(self, every: int) -> None:
        if every < 0:
            raise ValueError("digest_every must be >= 0")
        self._digest_every = every
        self._next_digest = -(-self.cursor // every) * every if every else 0  # next multiple

    @property
    def timers_fired(self) -> int:
        return self.timers.fired

    @timers_fired.setter
    def timers_fired(self, n: int) -> None:
        self.timers.fired = n

    @property
    def query_names(self) -> frozenset[str]:
        """The names of this service's ``@query`` functions."""
        return frozenset(self._queries)

    # --- apply ---------------------------------------------------------------------

    def apply(self, entry: Entry, owner: bool, nslots: int = 1) -> Applied:
        """Apply ``entry`` (at ``entry.seq == self.cursor``); see the module doc."""
        seq = entry.seq
        if seq != self.cursor:
            raise RuntimeError(f"replica {self.index} applies seq {seq} at cursor {self.cursor}")
        self.cursor = seq + nslots
        self.applied_entries += 1
        out = Applied(seq, entry, owner)
        now = entry.ts if entry.ts > self.now else self.now
        if _APPLY[type(entry)](self, entry, out, now):
            return out  # not a digest point
        if self._digest_every and seq >= self._next_digest:
            self._next_digest = (seq // self._digest_every + 1) * self._digest_every
            out.digest_due = True
        if not self.defer_outputs:
            self.finish(out)
        return out

    # --- scoped entries: partitions in the header ------------------------------------

    def scope(
        self, event: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]
    ) -> tuple[str, list[int]] | None:
        """The partitioned component and partitions a call of ``event`` touches, when
        replicas that hold none of them may pass over its entry (:class:`Scoped`).

        None when it cannot help or cannot be known: an event with a handler
        that is not a partitioned handler of one component (a replicated
        component applies it everywhere), fewer than two replicas that hold
        no copy of a partition (with ``copies`` of N, N - copies replicas hold
        none; the origin, one of them perhaps, always applies), a call of
        every partition, or arguments the routing refuses (the apply then
        fails alike everywhere).
        """
        if self._replicas < 3:  # copies >= 1: at most one replica holds no copy
            return None
        routers = self._scoped_routers(event)
        if routers is None:
            return None
        held = self.partitioned[routers[0].component]
        if self._replicas - held.copies < 2:
            return None
        pids: set[int] = set()
        try:
            for router in routers:
                pids.update(router.split_items(args, kwargs)[0])
        except Exception:  # noqa: BLE001 - the apply reports it, as it would unscoped
            return None
        if len(pids) >= held.spec.partitions:
            return None
        return held.name, sorted(pids)

    def _scoped_routers(self, event: str) -> list[Router] | None:
        """``event``'s handlers if every one is a partitioned update of one component, else None."""
        routers: list[Router] = []
        for b in self.registry.handlers(event):
            router = b.handler
            if type(router) is not Router or router.query or b.static:
                return None
            if routers and router.component != routers[0].component:
                return None
            routers.append(router)
        return routers or None

    def _apply_scoped(self, entry: Scoped, out: Applied, now: float) -> bool | None:
        """A scoped entry: passed over unless this replica is its origin, holds (or is
        loading) one of its partitions, or its event's handlers changed since."""
        origin = entry.origin
        if origin != self.index and origin < self._replicas:
            routers = self._scoped_routers(entry.event)
            if routers is not None and routers[0].component == entry.component:
                held = self.partitioned[entry.component]  # a router's: partitioned
                parts, journal = held.parts, held.journal
                for pid in entry.pids:
                    if pid in parts or pid in journal:
                        break
                else:
                    # what applying it would change here: the replicated clock
                    self.now = now
                    self.skipped_entries += 1
                    return None
        inner = entry.inner()
        out.entry = inner
        return _APPLY[type(inner)](self, inner, out, now)

    def _apply_batch(self, entry: Batch, out: Applied, now: float) -> None:
        subs = []
        seq, owner, modes = out.seq, out.owner, self.modes
        for i, call in enumerate(entry.calls):
            if modes and call.event in modes:  # its mode was changed by a reconfiguration
                sub = Applied(seq, call, self._owner_as(modes[call.event], call, seq, owner), i)
            else:
                sub = Applied(seq, call, owner, i)
            self._call(call, sub, call.ts if call.ts > self.now else self.now)
            subs.append(sub)
        out.batch = subs

    def _apply_fire(self, entry: Fire, out: Applied, now: float) -> bool:
        if entry.timer_id < 0:
            return self._fire_part(entry, out, now)
        timer = self.timers.take(entry.timer_id)
        if timer is None:  # already fired or cancelled: a no-op everywhere
            self.now = now
            return True
        deadline, event, args, kwargs = timer
        if deadline > now:
            now = deadline
        self.now = now
        self.timers.fired += 1
        ctx = Context(
            self, seq=out.seq, now=now, origin=entry.origin, mode=Mode.RACE, is_owner=out.owner
        )
        self._run(ctx, out, event, args, kwargs)
        return False

    def _apply_control(self, entry: Control, out: Applied, now: float) -> bool:
        self.now = now
        if entry.op == "snapshot" and entry.arg and entry.arg[0] == self.index:
            out.snapshot_for = int(entry.arg[1])
        elif entry.op == "digest":
            self._compare(out, entry)
            return True  # a report is not itself a digest point
        elif (
            entry.op == "snapshot"
            and len(entry.arg) > 2
            and isinstance(entry.arg[2], list)
            and self.index in entry.arg[2]
        ):
            # partitions the joiner holds and the source does not: this
            # replica writes its snapshot for them too, at the same position
            out.snapshot_for = int(entry.arg[1])
        elif entry.op == "fetch":
            self._fetch(entry, out)
            return True
        elif entry.op == "parts":
            self._loaded(entry, out)
            return True
        elif entry.op == "results":
            # ours, and those for local clients' calls (their owner collects them)
            index, replicas = self.index, self._replicas
            try:
                mine = [item for item in entry.arg[1] if item[0] == index or item[0] >= replicas]
            except (IndexError, TypeError):  # not a results entry this code wrote
                return True
            if mine:
                out.control = ("results", mine)
            return True
        return False

    def finish(self, out: Applied) -> None:
        """Produce what applying ``out``'s entry asked of this replica: a
        snapshot for a joiner, a digest at a digest point.

        It runs right after the apply, before the next entry, so it sees the
        state at exactly that log position; a driver that times applies
        (the apply timeout) calls it outside the timed window, since its cost
        is the state's size, not the entry's (``defer_outputs``).  A writer
        the driver set may take the work elsewhere (a forked child).
        """
        seq = out.seq
        if out.snapshot_for >= 0:
            writer = self.snapshot_writer
            if writer is None or not writer(seq, out.snapshot_for):
                out.snapshot = self.snapshot()
        if out.digest_due:
            digest_writer = self.digest_writer
            if digest_writer is not None and digest_writer(seq):
                self._digest_pending.add(seq)
            else:
                out.digest = self.digest()
                self._keep_digest(seq, out.digest)

    def _keep_digest(self, seq: int, digest: dict[str, str]) -> None:
        self._digests[seq] = digest
        if len(self._digests) > _DIGESTS_KEPT:
            del self._digests[next(iter(self._digests))]

    def _compare(self, out: Applied, entry: Control) -> None:
        reporter, at, theirs = entry.arg
        if reporter == self.index:
            return
        if at in self._digest_pending:  # ours is still being computed: compare later
            self._early_reports.setdefault(at, {})[reporter] = theirs
            if len(self._early_reports) > _DIGESTS_KEPT:
                del self._early_reports[next(iter(self._early_reports))]
            return
        mine = self._digests.get(at)
        if mine is not None:
            out.divergence = self._check(at, reporter, theirs, mine)

    def _check(
        self, at: int, reporter: int, theirs: dict[str, str], mine: dict[str, str]
    ) -> Divergence | None:
        # a partition held by one of the two only is not compared
        for name in sorted(mine):
            if name in theirs and theirs[name] != mine[name]:
                self.divergences += 1
                return Divergence(seq=at, replicas=(reporter, self.index), component=name)
        return None

    def digest_done(self, seq: int, digest: dict[str, str] | None) -> list[Divergence]:
        """The driver's digest of the state at ``seq`` (None: it failed).

        Compares it with the reports other replicas made for ``seq`` while it
        was being computed; what disagrees is returned.  Local bookkeeping
        only: divergence detection is an observation, not replicated state.
        """
        self._digest_pending.discard(seq)
        early = self._early_reports.pop(seq, {})
        if digest is None:
            return []
        self._keep_digest(seq, digest)
        found = [self._check(seq, reporter, theirs, digest) for reporter, theirs in early.items()]
        return [d for d in found if d is not None]

    def _call(self, call: Call, out: Applied, now: float) -> None:
        """Apply one call (an entry, or one call of a batch) into ``out``."""
        rid = call.request_id
        self.now = now
        if rid:
            seen = self._recent.get(rid)
            if seen is not None:
                out.duplicate = True
                if isinstance(seen, bytes):
                    out.result = _result_decoder.decode(seen)
                else:
                    out.error = RemoteError(seen)
                return
        ctx = Context(
            self,
            seq=out.seq,
            now=now,
            origin=call.origin,
            mode=self.modes.get(call.event, call.mode) if self.modes else call.mode,
            is_owner=out.owner,
            request_id=rid,
            sub=out.sub,
        )
        self._run(ctx, out, call.event, call.args, call.kwargs)
        parts = ctx._parts
        if parts is not None and out.error is None:
            self._settle(parts, out, call.origin)
        elif rid:
            self._remember(rid, out)

    # --- partitioned components ------------------------------------------------------

    def _run_parts(
        self, router: Router, ctx: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Run the parts of a call this replica holds (``Router.__call__``)."""
        held = self.partitioned[router.component]
        shares, items = router.split_items(args, kwargs)
        rec = ctx._parts
        if rec is None:
            rec = ctx._parts = Outcomes()
        name = router.component
        rec.routers[name] = (router, items)
        parts, replicas, rid, origin = held.parts, self._replicas, ctx.request_id, ctx.origin
        owner, fn, is_query = ctx.is_owner, router.fn, router.query
        for pid, share in shares.items():
            part = (name, pid)
            rec.order.append(part)
            inst = parts.get(pid)
            if inst is None:
                if held.loading and not is_query and pid in held.journal:
                    # being loaded here: applied once its state arrives
                    a, kw = router.with_share(args, kwargs, share)
                    item = ("call", ctx.seq, ctx.sub, ctx.now, origin, ctx.mode, rid, router, a, kw)
                    held.journal[pid].append(item)
                continue
            holders = held.holders(pid, replicas)
            if origin not in holders:
                rec.forward.append(part)
            recent = held.recent[pid]
            if rid and rid in recent:
                seen = recent[rid]
                rec.outcomes[part] = (
                    (True, _result_decoder.decode(seen))
                    if isinstance(seen, bytes)
                    else (False, RemoteError(seen))
                )
                continue
            a, kw = router.with_share(args, kwargs, share)
            ctx.is_owner = router.owns(ctx, holders)
            ctx._part = part
            try:
                r = fn(inst, *a, **kw) if is_query else fn(inst, ctx, *a, **kw)
                if type(r) is CoroutineType:
                    r = drive(r)
                outcome: tuple[bool, Any] = (True, r)
            except Exception as exc:  # noqa: BLE001 - the part's outcome
                self.errors += 1
                outcome = (False, exc)
            except SystemExit as exc:
                self.errors += 1
                outcome = (False, RuntimeError(f"a handler called sys.exit({exc.code!r})"))
            finally:
                ctx.is_owner = owner
                ctx._part = None
            rec.outcomes[part] = outcome
            if rid:
                recent[rid] = _wire(outcome)[1]
                if len(recent) > self.dedup_window:
                    del recent[next(iter(recent))]

    # A partition's timer lives with the partition's state (``Held.timers``) and
    # fires into that partition only, on its holders.  Its id, as handlers see it,
    # is negative: -((local id << 24 | component << 16 | partition) + 1).

    def arm_part_timer(
        self, part: tuple[str, int], deadline: float, event: str, args: Any, kwargs: Any
    ) -> int:
        name, pid = part
        if not any(
            type(b.handler) is Router and b.handler.component == name
            for b in self.registry.handlers(event)
        ):
            raise PartitionError(
                f"a timer armed in {name} fires into its partition: {event!r} must be an "
                f"@update of {name}"
            )
        local = self.partitioned[name].timers[pid].arm(deadline, event, args, kwargs)
        return -(((local << 24) | (self._held_index[name] << 16) | pid) + 1)

    def _part_timer(self, tid: int) -> tuple[Held, int, int]:
        x = -tid - 1
        helds = list(self.partitioned.values())
        if tid >= 0 or (x >> 16) & 0xFF >= len(helds):
            raise PartitionError(f"{tid} is not a partition's timer")
        return helds[(x >> 16) & 0xFF], x & 0xFFFF, x >> 24

    def cancel_part_timer(self, part: tuple[str, int], tid: int) -> bool:
        held, pid, local = self._part_timer(tid)
        if (held.name, pid) != part:
            raise PartitionError(
                f"timer {tid} belongs to partition {pid} of {held.name}; a partition's "
                f"handler cancels its own timers only (this is {part[0]}, partition {part[1]})"
            )
        return held.timers[pid].cancel(local)

    def part_timer_deadline(self, tid: int) -> float | None:
        held, pid, local = self._part_timer(tid)
        timers = held.timers.get(pid)
        return None if timers is None else timers.deadline(local)

    def _fire_part(self, entry: Fire, out: Applied, now: float) -> bool:
        """A partition's timer is due: its holders run it on the partition's instance.

        The other replicas skip it.  Its entry's time is at least the deadline
        (the holder that appended it sees to that), so ``now`` is the same on
        every replica; and it is never a digest point, since only holders know
        whether the timer was still pending.
        """
        self.now = now
        try:
            held, pid, local = self._part_timer(entry.timer_id)
        except PartitionError:  # no such component (a damaged entry): nothing to fire
            return True
        timers = held.timers.get(pid)
        if timers is None and pid in held.journal:  # being loaded here
            held.journal[pid].append(("fire", out.seq, -1, now, entry.origin, Mode.RACE, local))
        timer = None if timers is None else timers.take(local)
        if timer is None:
            return True
        self._fire_into(held, pid, timer, entry.origin, out, now)
        return True

    def _fire_into(
        self,
        held: Held,
        pid: int,
        timer: tuple[float, str, list[Any], dict[str, Any]],
        origin: int,
        out: Applied,
        now: float,
        replay: bool = False,
    ) -> None:
        _, event, args, kwargs = timer
        router = next(
            (
                b.handler
                for b in self.registry.handlers(event)
                if type(b.handler) is Router and b.handler.component == held.name
            ),
            None,
        )
        self.timers.fired += 1
        if router is None:
            self.errors += 1
            out.error = UnknownEventError(f"no handler of {held.name} is bound to {event!r}")
            return
        ctx = Context(self, seq=out.seq, now=now, origin=origin, mode=Mode.RACE, is_owner=False)
        ctx.is_owner = not replay and router.owns(ctx, held.holders(pid, self._replicas))
        ctx._part = (held.name, pid)
        try:
            r = router.fn(held.parts[pid], ctx, *args, **kwargs)
            if type(r) is CoroutineType:
                drive(r)
        except Exception as exc:  # noqa: BLE001 - the timer's outcome, on its holders
            self.errors += 1
            out.error = exc
            return
        out.effects = ctx._effects

    # --- changing copies: partitions gained are loaded from a holder ------------------
    #
    # At the reconfiguration's position every replica marks the gainers of each
    # partition as loading it (``Held.loading``, replicated).  A gainer journals
    # the partition's calls and appends a ``fetch`` entry naming a ready holder;
    # that holder, applying it, sends the partition's state at that position in
    # a ``parts`` entry; applying that, every replica counts the gainer as a
    # ready holder from there on, and the gainer loads the state and replays
    # what it journaled after the fetch.

    def set_copies(self, name: str, copies: int) -> int:
        """Change a partitioned component's ``copies`` at this log position.

        Returns how many partition copies the replicas gained (to load), the
        same on every replica.
        """
        held = self.partitioned.get(name)
        if held is None:
            raise ValueError(f"no partitioned component named {name!r} in this service")
        if self._restoring:  # a snapshot's reconfigurations: its own state says the rest
            held.copies = copies
            held.place(self.index, self._replicas)
            return 0
        gained, total = held.resize(self.index, self._replicas, copies)
        for pid in gained:
            held.journal[pid] = []
        return total

    def fetches_needed(self) -> list[tuple[str, int]]:
        """The partitions this replica is loading: (component, partition)."""
        return [
            (held.name, pid)
            for held in self.partitioned.values()
            if held.loading
            for pid in held.loading_here(self.index)
        ]

    def _fetch(self, entry: Control, out: Applied) -> None:
        try:
            gainer, writer, name, pids = entry.arg
            held = self.partitioned.get(name)
            pids = [pid for pid in pids if isinstance(pid, int)]
        except (TypeError, ValueError):  # not a fetch this code wrote: a no-op everywhere
            return
        if held is None:
            return
        for pid in pids:
            busy = held.loading.get(pid)
            if busy is not None and gainer in busy:
                busy[gainer] = entry.seq  # the position its state is taken at
                if gainer == self.index:
                    held.journal[pid] = []  # the state at this position includes the rest
                if writer == self.index and pid in held.parts:
                    if out.control is None:
                        out.control = ("transfer", [])
                    out.control[1].append((gainer, name, entry.seq, pid, held.part_state(pid)))

    def _loaded(self, entry: Control, out: Applied) -> None:
        try:
            gainer, name, at, pid, state = entry.arg
            held = self.partitioned.get(name)
            busy = None if held is None else held.loading.get(pid)
        except (TypeError, ValueError):  # not a transfer this code wrote: a no-op everywhere
            return
        if held is None or busy is None or busy.get(gainer) != at:
            return  # a stale transfer (asked again since), or not loading any more
        del busy[gainer]
        if not busy:
            del held.loading[pid]
        if gainer != self.index:
            return
        held.load_part(pid, state)
        for item in held.journal.pop(pid, []):
            self._replay(held, pid, item, out)

    def _replay(self, held: Held, pid: int, item: tuple[Any, ...], out: Applied) -> None:
        """Apply, on a partition just loaded, a part journaled while it was loading."""
        kind, seq, sub, now, origin, mode, rest = item[0], *item[1:6], item[6:]
        if kind == "fire":
            timer = held.timers[pid].take(rest[0])
            if timer is not None:
                self._fire_into(held, pid, timer, origin, Applied(seq, None, False), now, True)
            return
        rid, router, args, kwargs = rest
        recent = held.recent[pid]
        if rid and rid in recent:
            return
        ctx = Context(
            self, seq=seq, now=now, origin=origin, mode=mode, is_owner=False, request_id=rid,
            sub=sub,
        )  # fmt: skip
        ctx._part = (held.name, pid)
        outcome: tuple[bool, Any]
        try:
            r = router.fn(held.parts[pid], ctx, *args, **kwargs)
            if type(r) is CoroutineType:
                r = drive(r)
            outcome = (True, r)
        except Exception as exc:  # noqa: BLE001 - the part's outcome, as its holders had it
            self.errors += 1
            outcome = (False, exc)
        if rid:
            recent[rid] = _wire(outcome)[1]
            if len(recent) > self.dedup_window:
                del recent[next(iter(recent))]

    def _settle(self, rec: Outcomes, out: Applied, origin: int) -> None:
        """After a call with parts: its result here, what to forward, what to wait for.

        The replica that collects the result is the call's origin, or, for a
        local client's call (its origin is a client line, above the
        replicas), the replica that owns the entry and answers the client.
        """
        out.parts = rec
        if rec.forward:
            outcomes = rec.outcomes
            rec.sends = [(name, pid, *_wire(outcomes[(name, pid)])) for name, pid in rec.forward]
        if origin != self.index and not (origin >= self._replicas and out.owner):
            return
        missing = {part for part in rec.order if part not in rec.outcomes}
        if missing:
            rec.waiting = missing
            return
        try:
            out.result = combined(rec.order, rec.outcomes, rec.routers)
        except Exception as exc:  # noqa: BLE001 - a part's error is the call's
            out.error = exc

    def fill(self, out: Applied, name: str, pid: int, ok: bool, value: bytes | str) -> bool:
        """A partial another replica forwarded for ``out`` (a call of ours that waits).

        Returns True once every part is known; ``out`` then holds the result.
        """
        rec = out.parts
        waiting = None if rec is None else rec.waiting
        part = (name, pid)
        if waiting is None or rec is None or part not in waiting:
            return False  # a second copy's partial, or not ours
        waiting.discard(part)
        if ok:
            assert isinstance(value, bytes)
            rec.outcomes[part] = (True, _result_decoder.decode(value))
        else:
            rec.outcomes[part] = (False, RemoteError(value))
        if waiting:
            return False
        rec.waiting = None
        try:
            out.result = combined(rec.order, rec.outcomes, rec.routers)
        except Exception as exc:  # noqa: BLE001
            out.error = exc
        return True

    def answers_part(self, origin: int, part: tuple[str, int]) -> bool:
        """``Context.answers`` in a part: the origin if it holds it, else every holder."""
        holders = self.partitioned[part[0]].holders(part[1], self._replicas)
        return self.index == origin if origin in holders else True

    def local_part(self, name: str, pid: int) -> Component | None:
        """This replica's instance of partition ``pid`` of ``name``, if it holds it, ready."""
        held = self.partitioned.get(name)
        if held is None:
            raise LookupError(f"{name!r} is not a partitioned component of this service")
        return held.parts.get(pid)

    def holds(self, ref: str | query[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Whether this replica can answer the query locally (it holds every partition it reads)."""
        fn = self._queries.get(resolve(self._names, ref))
        if type(fn) is not Router:
            return True
        parts = self.partitioned[fn.component].parts
        return all(pid in parts for pid in fn.split(args, kwargs))

    def _query_parts(self, name: str, router: Router, args: Any, kwargs: dict[str, Any]) -> Any:
        held = self.partitioned[router.component]
        shares, items = router.split_items(args, kwargs)
        missing = sorted(pid for pid in shares if pid not in held.parts)
        if missing:
            where = sorted({h for pid in missing for h in held.holders(pid, self._replicas)})
            raise PartitionError(
                f"{name} reads partitions {missing} of {router.component}, which replica "
                f"{self.index} does not hold (replicas {where} do): await State.read() "
                "forwards the read to a holder"
            )
        partials = []
        for pid, share in shares.items():
            a, kw = router.with_share(args, kwargs, share)
            partials.append((pid, router.fn(held.parts[pid], *a, **kw)))
        return router.merge(items, partials)

    def apply_poisoned(self, entry: Entry, owner: bool, nslots: int = 1) -> Applied:
        """Apply ``entry`` as a :class:`PoisonedEntryError` instead of running it.

        Called on every replica for an entry the supervisor declared poison
        (each live replica gave up on it and rolled back to just before it),
        so the outcome is the same everywhere: no handler runs, every call
        of the entry fails with the error, a request id remembers it, and the
        entry is recorded in ``poisoned``.
        """
        seq = entry.seq
        if seq != self.cursor:
            raise RuntimeError(f"replica {self.index} applies seq {seq} at cursor {self.cursor}")
        if type(entry) is Scoped:  # every replica fails each of its calls
            entry = entry.inner()
        self.cursor = seq + nslots
        self.applied_entries += 1
        if entry.ts > self.now:
            self.now = entry.ts
        if type(entry) is Fire:  # the timer is spent: it must not fire (and hang) again
            self.timers.take(entry.timer_id)
        calls = entry.calls if type(entry) is Batch else [entry]
        what = ", ".join(sorted({getattr(c, "event", type(c).__name__) for c in calls}))
        self.poisoned[seq] = what
        if len(self.poisoned) > POISONED_KEPT:
            del self.poisoned[next(iter(self.poisoned))]
        error = PoisonedEntryError(
            f"entry {seq} ({what}) was abandoned: applying it did not finish within the "
            "apply timeout on any replica; the state is as it was before it"
        )
        out = Applied(seq, entry, owner)
        subs = [Applied(seq, c, owner, i) for i, c in enumerate(calls)]
        for sub in subs:
            sub.error = error
            rid = getattr(sub.entry, "request_id", "")
            if rid:
                self._remember(rid, sub)
        self.errors += 1
        if type(entry) is Batch:
            out.batch = subs
        else:
            out.error = error
        return out

    def skip(self, seq: int, nslots: int = 1) -> None:
        """Pass over a no-op slot (a reservation whose producer died)."""
        if seq != self.cursor:
            raise RuntimeError(f"replica {self.index} skips seq {seq} at cursor {self.cursor}")
        self.cursor = seq + nslots

    def _run(
        self,
        ctx: Context,
        out: Applied,
        event: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        try:
            result = self._dispatch(ctx, event, args, kwargs)
            while ctx._async:
                ev, a, kw = ctx._async.pop(0)
                self._dispatch(ctx, ev, a, kw)
        except Exception as exc:  # noqa: BLE001 - the error is the replicated outcome
            self.errors += 1
            out.error = exc
            return
        except SystemExit as exc:  # a handler's sys.exit() must not end the replica
            self.errors += 1
            out.error = RuntimeError(f"a handler of {event!r} called sys.exit({exc.code!r})")
            return
        out.result = ctx._reply if ctx._replied else result
        out.effects = ctx._effects
        out.published = ctx._published

    def _dispatch(
        self,
        ctx: Context,
        event: EventRef,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        name = event if isinstance(event, str) else resolve(self._names, event)
        bindings = self.registry.handlers(name)
        if not bindings:
            raise UnknownEventError(f"no handler is bound to event {name!r}")
        return dispatch(bindings, ctx, args, kwargs)

    def _remember(self, rid: str, out: Applied) -> None:
        # The result is recorded encoded: a retry must get it as it was (not as
        # the state it may alias is now), and snapshots must be able to hold it.
        recent = self._recent
        if out.error is None:
            try:
                recent[rid] = _result_encoder.encode(out.result)
            except TypeError as exc:
                recent[rid] = f"the result of request {rid!r} cannot be replayed: {exc}"
        else:
            recent[rid] = f"{type(out.error).__name__}: {out.error}"
        if len(recent) > self.dedup_window:
            del recent[next(iter(recent))]

    # --- timers --------------------------------------------------------------------

    @property
    def pending_timers(self) -> int:
        return len(self.timers) + sum(
            len(t) for held in self.partitioned.values() for t in held.timers.values()
        )

    def next_deadline(self) -> float | None:
        """The earliest pending timer's deadline (replicated time), or None."""
        deadlines = [self.timers.next_deadline()]
        for held in self.partitioned.values():
            deadlines += [t.next_deadline() for t in held.timers.values() if t.pending]
        return min((d for d in deadlines if d is not None), default=None)

    def due_timers(
        self, local_now: float, replicas: int, grace: float, resend: float | None = None
    ) -> list[int]:
        """Timers this replica should ask to fire now (:meth:`Timers.due`).

        A partition's timers are asked for by its holders, first by one of
        them and by the others ``grace`` later.
        """
        due = self.timers.due(local_now, self.index, replicas, grace, resend)
        for ci, held in enumerate(self.partitioned.values()):
            for pid, timers in held.timers.items():
                if timers.pending:
                    holders = held.holders(pid, replicas)
                    position = holders.index(self.index)
                    due += [
                        -(((local << 24) | (ci << 16) | pid) + 1)
                        for local in timers.due(local_now, position, len(holders), grace, resend)
                    ]
        return due

    def fire_time(self, timer_id: int, local_now: float) -> float:
        """The time a ``Fire`` entry for ``timer_id`` carries: a partition's timer
        fires at its deadline at the earliest on every replica (see ``_fire_part``)."""
        if timer_id >= 0:
            return local_now
        deadline = self.part_timer_deadline(timer_id)
        return local_now if deadline is None else max(local_now, deadline)

    def timers_refused(self) -> None:
        """The log refused this replica's timer asks: ask for every due timer again."""
        self.timers.refused()
        for held in self.partitioned.values():
            for timers in held.timers.values():
                timers.refused()

    # --- queries ---------------------------------------------------------------------

    def resolve(self, ref: EventRef | query[..., Any]) -> str:
        """The event (or query) name ``ref`` stands for in this service."""
        return resolve(self._names, ref)

    def query(self, ref: str | query[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a ``@query`` against this replica's state, without the log."""
        name = resolve(self._names, ref)
        fn = self._queries.get(name)
        if fn is None:
            raise UnknownEventError(f"no query named {name!r}")
        if type(fn) is Router:
            fn = functools.partial(self._query_parts, name, fn)
            return fn(args, kwargs) if not self.debug else self._checked(name, fn, args, kwargs)
        if not self.debug:
            return fn(*args, **kwargs)
        before = self.digest()
        result = fn(*args, **kwargs)
        after = self.digest()
        changed = [k for k in before if before[k] != after[k]]
        if changed:
            raise QueryWroteStateError(f"query {name} changed the state of {', '.join(changed)}")
        return result

    def _checked(self, name: str, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        before = self.digest()
        result = fn(args, kwargs)
        if before != self.digest():
            raise QueryWroteStateError(f"query {name} changed the state")
        return result

    def component(self, which: type[Component] | str) -> Component:
        name = which if isinstance(which, str) else which.name
        if name in self.partitioned:
            raise PartitionError(
                f"{name} is partitioned: this replica holds only some of its state; "
                "read it through its queries"
            )
        try:
            return self.components[name]
        except KeyError:
            raise LookupError(f"no component named {name!r} in this service") from None

    # --- snapshots and digests ---------------------------------------------------------

    def snapshot(self) -> bytes:
        """Encode the whole replicated state at ``cursor - 1``."""
        return _snap_encoder.encode(
            _Snapshot(
                service=self.service_name,
                cursor=self.cursor,
                now=self.now,
                next_timer=self.timers.next_id,
                timers=self.timers.dump(),
                recent=list(self._recent.items()),
                poisoned=list(self.poisoned.items()),
                components={name: self._state_of(name, c) for name, c in self.components.items()},
                config=list(self.config),
            )
        )

    def restore(self, data: bytes, more: Sequence[bytes] = ()) -> None:
        """Load a :meth:`snapshot` into this (fresh) machine; it continues at its cursor.

        ``more``: snapshots other replicas wrote at the same log position,
        for the partitions this replica holds and ``data``'s writer does not.
        A partition none of them holds starts empty, and is listed in
        :attr:`lost` (its only copies died with their replicas).
        """
        snap = _snap_decoder.decode(data)
        if snap.service != self.service_name:
            raise ValueError(f"snapshot of service {snap.service!r}, not {self.service_name!r}")
        if snap.config != self.config:
            # back to the service's own configuration, then the components and
            # bindings the snapshot's reconfigurations made
            if self.config:
                components, saved, queries, names, local = self._defined
                self.components = dict(components)
                self.registry.load(saved)
                self._queries, self._names = dict(queries), dict(names)
                self.local_queries = local
                self.config = []
                self.modes = {}
            self._restoring = True
            try:
                for spec in snap.config:
                    reconfigure.apply(self, spec)
            finally:
                self._restoring = False
        if set(snap.components) != set(self.components):
            raise ValueError("snapshot's components differ from this service's")
        self.cursor = snap.cursor
        self.now = snap.now
        self.timers.load(snap.next_timer, snap.timers)  # a partition's: with its state
        self._recent = dict(snap.recent)
        self.poisoned = dict(snap.poisoned)
        missing: dict[str, list[int]] = {}
        for name, state in snap.components.items():
            held = self.partitioned.get(name)
            if held is None:
                self.components[name].restore(state)
            else:
                missing[name] = held.restore(state)
        for extra in map(_snap_decoder.decode, more):
            if extra.cursor != snap.cursor or extra.service != snap.service:
                raise ValueError("the snapshots to restore together are of different positions")
            for name, pids in missing.items():
                if pids:
                    missing[name] = self.partitioned[name].restore(extra.components[name], pids)
        for name, pids in missing.items():
            for pid in pids:
                self.partitioned[name].reset(pid)
                self.lost.append((name, pid))

    def digest(self) -> dict[str, str]:
        """A hash of each component's state (and of the machine's own, as ``"_dominoes"``).

        Dicts and sets are hashed in sorted order, so a replica restored from a
        snapshot digests like the one it came from.
        """
        out = {}
        for name, c in self.components.items():
            held = self.partitioned.get(name)
            if held is None:
                out[name] = _hash(c.snapshot())
            else:
                for part, state in held.digest_items().items():
                    out[part] = _hash(state)
        out["_dominoes"] = _hash(
            [
                self.timers.next_id,
                self.timers.digest_items(),
                list(self._recent.items()),
                list(self.poisoned.items()),
                self.config,
            ]
        )
        return out

    def _owner_as(self, mode: Mode, call: Call, seq: int, owner: bool) -> bool:
        """Whether this replica owns ``call`` (of the entry at ``seq``) in ``mode``."""
        if mode == Mode.EVERY:
            return True
        if mode == Mode.AFFINITY:
            return call.origin == self.index
        return self.claim(seq) if self.claim is not None else owner

    def _state_of(self, name: str, component: Component) -> Any:
        held = self.partitioned.get(name)
        return component.snapshot() if held is None else held.snapshot()

    def reconfigure(self, spec: Any) -> Any:
        """Apply one reconfiguration now (the built-in event's handler calls this)."""
        return reconfigure.apply(self, spec)


#: How each entry type is applied; an applier returns True when the entry is
#: not a digest point (a fired-already timer, a digest report).
_APPLY: Final[dict[type, Callable[[StateMachine, Any, Applied, float], bool | None]]] = {
    Call: StateMachine._call,
    Batch: StateMachine._apply_batch,
    Fire: StateMachine._apply_fire,
    Control: StateMachine._apply_control,
    Scoped: StateMachine._apply_scoped,
}
