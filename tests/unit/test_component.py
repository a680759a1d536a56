"""Components: decorators, names, snapshots, and how a Service binds them."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import pytest

from dominoes import Component, Context, Service, on, query, update
from dominoes.testing import Cluster


class Counter(Component):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @update
    def incr(self, ctx: Context, key: str, by: int = 1) -> int:
        self.counts[key] = self.counts.get(key, 0) + by
        return self.counts[key]

    @query
    def get(self, key: str) -> int:
        return self.counts.get(key, 0)


class Audit(Component):
    """Listens to Counter's event through a descriptor ref, ahead of and after it."""

    def __init__(self) -> None:
        self.trace: list[str] = []

    @on(Counter.incr, order=-1)
    def before_incr(self, ctx: Context, key: str, by: int = 1) -> None:
        self.trace.append(f"before {key}")

    @on(Counter.incr, order=1)
    def after_incr(self, ctx: Context, key: str, by: int = 1) -> None:
        self.trace.append(f"after {key}")

    @on("ping")
    @on("pong", order=5)
    def either(self, ctx: Context, what: str) -> str:
        self.trace.append(f"either {what}")
        return what.upper()

    @on("tagged", label="static")
    def tagged(self, ctx: Context, *, label: str) -> str:
        return label


class Renamed(Component):
    name = "kv"

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    @update
    def put(self, ctx: Context, key: str, value: str) -> None:
        self.data[key] = value

    @query
    def read(self, key: str) -> str | None:
        return self.data.get(key)


class RenamedChild(Renamed):
    pass


class Annotated(Component):
    """State declared as class annotations: restored with exact types."""

    tags: set[str]
    pair: tuple[int, str]
    groups: dict[str, frozenset[int]]
    plain: list[int]

    def __init__(self) -> None:
        self.tags = set()
        self.pair = (0, "")
        self.groups = {}
        self.plain = []


class Shaped(Component):
    """No class annotations: a restored value keeps the fresh instance's container type.

    (Annotating ``self.x`` in ``__init__`` declares nothing at run time.)
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.frozen: frozenset[str] = frozenset()
        self.point: tuple[int, ...] = ()
        self.items: list[int] = []
        self.mapping: dict[str, list[int]] = {}


class WithTransient(Component):
    transient = ("subscribers", "cache")

    def __init__(self) -> None:
        self.value = 0
        self.subscribers: list[str] = []
        self.cache: dict[str, int] = {}

    @update
    def set(self, ctx: Context, value: int) -> None:
        self.value = value
        self.cache[str(ctx.replica)] = value  # local only: excluded from comparison


C = TypeVar("C", bound=Component)


def roundtrip(comp: Component, fresh: C) -> C:
    """Snapshot ``comp`` through msgpack and restore it into ``fresh``."""
    data = msgspec.msgpack.encode(comp.snapshot())
    fresh.restore(msgspec.msgpack.decode(data))
    return fresh


# --- @update, @query -------------------------------------------------------------------


def test_update_names_its_event_after_the_component() -> None:
    assert Counter.incr.event == "Counter.incr"
    assert Counter.incr.name == "incr"
    assert Counter.incr.owner is Counter


def test_update_on_an_instance_is_a_plain_bound_method() -> None:
    c = Counter()
    assert c.incr(None, "k", by=2) == 2
    assert c.counts == {"k": 2}


def test_update_runs_on_every_replica_and_returns_to_the_caller() -> None:
    cluster = Cluster(Service("c", [Counter()]), replicas=3)

    assert cluster.call(1, Counter.incr, "k", by=5) == 5
    assert cluster.call(2, Counter.incr, "k") == 6

    cluster.assert_converged()
    assert [r.component(Counter).counts for r in cluster] == [{"k": 6}] * 3


def test_update_event_can_be_named_by_string() -> None:
    cluster = Cluster(Service("c", [Counter()]), replicas=2)
    assert cluster.call(0, "Counter.incr", "k") == 1


def test_query_reads_local_state_without_the_log() -> None:
    cluster = Cluster(Service("c", [Counter()]), replicas=2)
    cluster.call(0, Counter.incr, "k", by=3)
    tail = cluster.log.tail

    assert cluster.query(1, Counter.get, "k") == 3
    assert cluster.query(1, "Counter.get", "missing") == 0
    assert cluster.log.tail == tail


def test_a_local_query_sees_only_what_its_replica_applied() -> None:
    cluster = Cluster(Service("c", [Counter()], reads="local"), replicas=2)
    cluster.submit_nowait(0, Counter.incr, "k")
    cluster.step(0)

    assert cluster.query(0, Counter.get, "k") == 1
    assert cluster.query(1, Counter.get, "k") == 0


def test_a_query_sees_what_any_replica_applied() -> None:
    cluster = Cluster(Service("c", [Counter()]), replicas=2)
    cluster.submit_nowait(0, Counter.incr, "k")
    cluster.step(0)

    assert cluster.query(1, Counter.get, "k") == 1


def test_reads_and_query_consistency_are_checked() -> None:
    with pytest.raises(ValueError, match="reads must be one of"):
        Service("c", [Counter()], reads="eventual")
    with pytest.raises(ValueError, match="consistency must be one of"):
        query(lambda self: 0, "sometimes")


def test_query_is_not_an_event() -> None:
    assert "Counter.get" not in Service("c", [Counter()]).events()


def test_update_and_query_outside_a_component_have_no_event() -> None:
    def loose(ctx: Context) -> None:
        pass

    with pytest.raises(TypeError, match="not defined in a Component"):
        _ = update(loose).event  # type: ignore[arg-type]  # misuse on purpose
    with pytest.raises(TypeError, match="not defined in a Component"):
        _ = query(loose).event


# --- @on --------------------------------------------------------------------------------


def test_on_with_a_descriptor_ref_binds_around_the_update() -> None:
    cluster = Cluster(Service("c", [Counter(), Audit()]), replicas=2)

    assert cluster.call(0, Counter.incr, "k") == 1

    cluster.assert_converged()
    assert cluster[1].component(Audit).trace == ["before k", "after k"]


def test_on_orders_run_around_the_update_in_the_registry() -> None:
    machine = Service("c", [Counter(), Audit()]).new_machine(0)
    handlers = machine.registry.handlers("Counter.incr")
    assert [(b.order, b.handler.__name__) for b in handlers] == [
        (-1, "before_incr"),
        (0, "incr"),
        (1, "after_incr"),
    ]


def test_stacked_on_binds_one_method_to_several_events() -> None:
    svc = Service("c", [Counter(), Audit()])
    assert {"ping", "pong"} <= set(svc.events())
    machine = svc.new_machine(0)
    assert [b.order for b in machine.registry.handlers("pong")] == [5]

    cluster = Cluster(svc, replicas=1)
    assert cluster.call(0, "ping", "a") == "A"
    assert cluster.call(0, "pong", "b") == "B"
    assert cluster[0].component(Audit).trace == ["either a", "either b"]


def test_on_passes_static_args() -> None:
    cluster = Cluster(Service("c", [Audit()]), replicas=1)
    assert cluster.call(0, "tagged") == "static"


def test_on_keeps_the_function_callable() -> None:
    a = Audit()
    assert a.either(None, "x") == "X"  # type: ignore[arg-type]


def test_on_ref_to_a_component_not_in_the_service_uses_the_class_name() -> None:
    svc = Service("c", [Audit()])
    assert "Counter.incr" in svc.events()


# --- names -------------------------------------------------------------------------------


def test_name_defaults_to_the_class_name() -> None:
    assert Counter.name == "Counter"
    assert Counter().name == "Counter"


def test_name_can_be_overridden() -> None:
    assert Renamed.name == "kv"
    assert Renamed.put.event == "kv.put"
    svc = Service("c", [Renamed()])
    assert svc.events() == ["kv.put"]

    cluster = Cluster(svc, replicas=2)
    cluster.call(0, Renamed.put, "a", "b")
    assert cluster.query(1, "kv.read", "a") == "b"
    assert cluster[1].component("kv") is cluster[1].component(Renamed)


def test_a_subclass_gets_its_own_default_name() -> None:
    assert RenamedChild.name == "RenamedChild"
    cluster = Cluster(Service("c", [RenamedChild()]), replicas=1)
    # The inherited descriptor names the event of the component that has it.
    cluster.call(0, Renamed.put, "a", "b")
    assert cluster.query(0, "RenamedChild.read", "a") == "b"
    assert cluster.query(0, RenamedChild.read, "a") == "b"


# --- transient state and snapshots -------------------------------------------------------------


def test_transient_attributes_are_not_snapshotted() -> None:
    c = WithTransient()
    c.value = 3
    c.subscribers.append("conn-1")

    assert c.snapshot() == {"value": 3}


def test_restore_leaves_transient_attributes_alone() -> None:
    c = WithTransient()
    c.value = 3
    c.subscribers.append("conn-1")
    fresh = WithTransient()
    fresh.subscribers.append("local")

    roundtrip(c, fresh)

    assert fresh.value == 3
    assert fresh.subscribers == ["local"]


def test_transient_attributes_are_not_compared() -> None:
    cluster = Cluster(Service("c", [WithTransient()]), replicas=3)
    cluster.call(0, WithTransient.set, 7)

    assert [r.component(WithTransient).cache for r in cluster] == [
        {"0": 7},
        {"1": 7},
        {"2": 7},
    ]
    cluster.assert_converged()


def test_restore_uses_class_annotations_for_exact_types() -> None:
    c = Annotated()
    c.tags = {"a", "b"}
    c.pair = (1, "x")
    c.groups = {"g": frozenset({1, 2})}
    c.plain = [3, 4]

    fresh = roundtrip(c, Annotated())

    assert fresh.tags == {"a", "b"}
    assert type(fresh.tags) is set
    assert fresh.pair == (1, "x")
    assert type(fresh.pair) is tuple
    assert fresh.groups == {"g": frozenset({1, 2})}
    assert type(fresh.groups["g"]) is frozenset
    assert fresh.plain == [3, 4]
    assert type(fresh.plain) is list


def test_restore_without_annotations_keeps_the_fresh_instances_container_types() -> None:
    c = Shaped()
    c.seen = {1, 2}
    c.frozen = frozenset({"x"})
    c.point = (1, 2)
    c.items = [5]
    c.mapping = {"k": [1]}

    fresh = roundtrip(c, Shaped())

    assert (fresh.seen, type(fresh.seen)) == ({1, 2}, set)
    assert (fresh.frozen, type(fresh.frozen)) == (frozenset({"x"}), frozenset)
    assert (fresh.point, type(fresh.point)) == ((1, 2), tuple)
    assert (fresh.items, type(fresh.items)) == ([5], list)
    assert fresh.mapping == {"k": [1]}


def test_restore_sets_attributes_missing_from_the_fresh_instance() -> None:
    fresh = Counter()
    fresh.restore({"counts": {"k": 1}, "added_later": [1, 2]})
    assert fresh.counts == {"k": 1}
    assert fresh.added_later == [1, 2]  # type: ignore[attr-defined]


def test_snapshot_restore_through_the_machine_keeps_types() -> None:
    svc = Service("c", [Annotated(), Shaped()])
    a = svc.new_machine(0)
    a.component(Annotated).tags.update({"x", "y"})  # type: ignore[attr-defined]
    a.component(Shaped).seen.add(9)  # type: ignore[attr-defined]

    b = svc.new_machine(1)
    b.restore(a.snapshot())

    assert b.component(Annotated).tags == {"x", "y"}  # type: ignore[attr-defined]
    assert type(b.component(Shaped).seen) is set  # type: ignore[attr-defined]
    assert b.digest() == a.digest()


# --- ambiguity -----------------------------------------------------------------------------


class Base(Component):
    def __init__(self) -> None:
        self.n = 0

    @update
    def bump(self, ctx: Context) -> int:
        self.n += 1
        return self.n


class Derived(Base):
    pass


class ListensToBase(Component):
    @on(Base.bump)
    def seen(self, ctx: Context) -> None:
        pass


def test_descriptor_shared_by_a_class_and_its_subclass_is_ambiguous() -> None:
    cluster = Cluster(Service("c", [Base(), Derived()]), replicas=1)

    with pytest.raises(LookupError, match="several components"):
        cluster.submit_nowait(0, Base.bump)
    with pytest.raises(LookupError, match="several components"):
        cluster.submit_nowait(0, Derived.bump)
    assert cluster.log.tail == 1


def test_an_ambiguous_event_can_be_named_by_string() -> None:
    cluster = Cluster(Service("c", [Base(), Derived()]), replicas=2)

    assert cluster.call(0, "Derived.bump") == 1
    assert cluster.call(0, "Derived.bump") == 2
    assert cluster.call(0, "Base.bump") == 1

    assert cluster[1].component(Base).n == 1
    assert cluster[1].component(Derived).n == 2


def test_on_with_an_ambiguous_ref_fails_when_the_service_is_built() -> None:
    svc = Service("c", [Base(), Derived(), ListensToBase()])
    with pytest.raises(LookupError, match="several components"):
        svc.new_machine(0)


def test_service_resolve_names_descriptor_refs() -> None:
    assert Service("c", [Derived()]).resolve(Base.bump) == "Derived.bump"
    assert Service("c", [Base()]).resolve(Base.bump) == "Base.bump"
    assert Service("c", [Base()]).resolve("anything") == "anything"
    with pytest.raises(LookupError):
        Service("c", [Base(), Derived()]).resolve(Base.bump)


def test_an_event_ref_must_be_a_string_or_a_descriptor() -> None:
    with pytest.raises(TypeError, match="not an event"):
        Service("c", [Counter()]).resolve(42)  # type: ignore[arg-type]


# --- Service ------------------------------------------------------------------------------------


def test_service_rejects_two_components_with_one_name() -> None:
    with pytest.raises(ValueError, match="two components are named 'Counter'"):
        Service("c", [Counter(), Counter()])


def test_service_rejects_a_class_instead_of_an_instance() -> None:
    with pytest.raises(TypeError, match="instance of Counter, not the class"):
        Service("c", [Counter])  # type: ignore[list-item]


def test_service_rejects_non_components() -> None:
    with pytest.raises(TypeError, match="not a dominoes Component"):
        Service("c", [object()])  # type: ignore[list-item]


@pytest.mark.parametrize("name", ["", "has space", "1leading-digit", "semi;colon"])
def test_service_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        Service(name)


@pytest.mark.parametrize("name", ["counter", "my-service", "a.b"])
def test_service_accepts_identifier_like_names(name: str) -> None:
    assert Service(name).name == name


def test_each_machine_gets_its_own_copy_of_the_components() -> None:
    template = Counter()
    svc = Service("c", [template])
    a, b = svc.new_machine(0), svc.new_machine(1)

    assert svc.components == (template,)
    assert a.component(Counter) is not template
    assert a.component(Counter) is not b.component(Counter)
    a.component(Counter).incr(None, "k")  # type: ignore[attr-defined]
    assert b.component(Counter).counts == {}  # type: ignore[attr-defined]
    assert template.counts == {}


def test_service_bind_adds_a_free_function_with_order_and_static_args() -> None:
    seen: list[tuple[Any, ...]] = []

    def audit(ctx: Context, key: str, by: int = 1, *, label: str) -> None:
        seen.append((ctx.replica, label, key, ctx.component(Counter).counts.get(key)))

    svc = Service("c", [Counter()])
    svc.bind(Counter.incr, audit, order=-1, label="pre")
    svc.bind("Counter.incr", audit, order=1, label="post")
    cluster = Cluster(svc, replicas=2)

    cluster.call(0, Counter.incr, "k")

    assert seen == [
        (0, "pre", "k", None),
        (0, "post", "k", 1),
        (1, "pre", "k", None),
        (1, "post", "k", 1),
    ]


def test_service_bind_can_define_a_new_event() -> None:
    svc = Service("c", [Counter()])

    def double(ctx: Context, key: str) -> int:
        return int(ctx.raise_event(Counter.incr, key, by=2))

    svc.bind("double", double)
    cluster = Cluster(svc, replicas=2)

    assert "double" in svc.events()
    assert cluster.call(1, "double", "k") == 2
    cluster.assert_converged()


def test_service_unbind_affects_machines_created_afterwards() -> None:
    calls: list[int] = []

    def spy(ctx: Context, *args: Any, **kwargs: Any) -> None:
        calls.append(ctx.replica)

    svc = Service("c", [Counter()])
    bid = svc.bind(Counter.incr, spy)
    before = Cluster(svc, replicas=1)
    svc.unbind(bid)
    after = Cluster(svc, replicas=1)

    after.call(0, Counter.incr, "k")
    assert calls == []
    before.call(0, Counter.incr, "k")
    assert calls == [0]


def test_service_unbind_of_an_unknown_id_raises_key_error() -> None:
    with pytest.raises(KeyError):
        Service("c").unbind(123)


def test_service_bind_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="not callable"):
        Service("c").bind("e", "not a function")  # type: ignore[arg-type]


def test_service_binding_order_is_the_same_on_every_machine() -> None:
    svc = Service("c", [Counter(), Audit()])
    svc.bind(Counter.incr, lambda ctx, *a, **k: None)

    def shape(index: int) -> list[tuple[float, int, str]]:
        reg = svc.new_machine(index).registry
        return [(b.order, b.id, b.event) for e in reg.events() for b in reg.handlers(e)]

    assert shape(0) == shape(1) == shape(2)


# --- @update combined with @on ------------------------------------------------------------


def test_on_under_update_also_binds_the_update_to_the_other_event() -> None:
    class Both(Component):
        def __init__(self) -> None:
            self.n = 0

        @update
        @on("tick")
        def bump(self, ctx: Context) -> None:
            self.n += 1

    # Either it should bind (as here) or decorating should fail loudly.
    assert "tick" in Service("c", [Both()]).events()


def test_on_over_update_binds_both_events() -> None:
    class Both(Component):
        def __init__(self) -> None:
            self.n = 0

        @on("tick")  # type: ignore[arg-type]
        @update
        def bump(self, ctx: Context) -> None:
            self.n += 1

    assert {"tick", "Both.bump"} <= set(Service("c", [Both()]).events())
