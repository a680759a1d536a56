"""Geo commands: GEOADD, GEOPOS, GEODIST, GEOHASH, GEORADIUS, GEORADIUS_RO,
GEORADIUSBYMEMBER, GEORADIUSBYMEMBER_RO, GEOSEARCH, GEOSEARCHSTORE.

As in Redis, a geo key *is* a sorted set (:class:`~._zsets.ZSet`, ``TYPE``
says ``zset``, ZRANGE and the rest work on it): a member's score is the
52-bit geohash of its position, longitude and latitude interleaved, 26 bits
each, over -180..180 and -85.05112878..85.05112878 (Web Mercator's limits).
GEOADD turns coordinates into scores and hands over to ZADD (NX, XX and CH
are ZADD's).

Everything numeric is Redis 7.0's (``geo.c``, ``geohash.c``,
``geohash_helper.c``), step for step in IEEE doubles, so replies are the same
bits, not just close:

* a position read back is the centre of its 26-bit cell (clamped to the
  limits), written as Redis writes a ``long double`` for humans: ``%.17Lf``
  with the trailing zeros cut (``13.36138933897018433``), a bulk string in
  RESP2 and a RESP3 double with that same text (:class:`~._resp.Double`);
* a score that GEOADD did not write is converted to a 64-bit cell number the
  way the C cast does it on x86-64 (negative: two's complement, 2**64 and
  over: 0), and decoded with the C code's 32-bit wrap-around;
* distances are the haversine formula on a sphere of radius 6372797.560856 m
  (the latitude-only shortcut when the longitudes' sine difference is 0),
  answered with 4 decimals (``llrint(d * 10000)``, Redis's
  ``fixedpoint_d2string``); units M, KM, FT, MI (0.3048 and 1609.34 m);
* a search (GEORADIUS and kin, GEOSEARCH BYRADIUS and BYBOX) estimates a
  geohash step from the radius (or half the box's diagonal) and the
  latitude, takes the centre's cell at that step and its 8 neighbours (one
  step coarser if a neighbour does not reach the search's bounding box),
  drops the neighbours the bounding box does not reach, walks each cell's
  score range (in the order centre, N, S, E, W, NE, NW, SE, SW, skipping a
  cell equal to the one walked just before) and keeps the members within
  the radius or the box.  So the members found, and their order without ASC
  or DESC, are Redis's; COUNT ... ANY stops at the COUNT-th found;
* ASC/DESC sort by distance as Redis does: a stable sort (glibc's merge sort)
  when every result is returned, Redis's partial quicksort (``pqsort``,
  ported) when COUNT keeps fewer, so ties come out in Redis's order too.

Arguments are checked in Redis's order, with its texts (``ERR invalid
longitude,latitude pair 200.000000,100.000000``, ``ERR need numeric
radius``, ``ERR unsupported unit provided. please use M, KM, FT, MI``, ...);
option words compare like ``strcasecmp`` (up to a NUL).

GEORADIUS and GEORADIUSBYMEMBER are writes (their STORE and STOREDIST
options), so they run in a log entry on every replica; the _RO forms,
GEOSEARCH, GEOPOS, GEODIST and GEOHASH are reads.  The STORE key replaces
whatever was there (of any type, its TTL goes); an empty result deletes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

from dominoes import Component, Context

from ._errors import KvError, parse_int, syntax_error
from ._keyspace import now_ms
from ._resp import NULL_ARRAY, Double
from ._table import command
from ._zsets import ZSet, Zsets, parse_score

if TYPE_CHECKING:
    from ._keyspace import Keyspace

__all__ = ("Geo", "decode_score", "distance", "encode")

LONG_MIN: Final = -180.0
LONG_MAX: Final = 180.0
LAT_MIN: Final = -85.05112878
LAT_MAX: Final = 85.05112878
#: bits per coordinate in a score (52 bits in all)
STEP_MAX: Final = 26
EARTH_RADIUS: Final = 6372797.560856
_MERCATOR_MAX: Final = 20037726.37
_D_R: Final = math.pi / 180.0
_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF
_TWO63: Final = 9223372036854775808.0
_BASE32: Final = b"0123456789bcdefghjkmnpqrstuvwxyz"
_UNITS: Final = {b"m": 1.0, b"km": 1000.0, b"ft": 0.3048, b"mi": 1609.34}

#: a geohash cell: (bits, step); (0, 0) is "none" (Redis's GZERO)
Cell = tuple[int, int]
#: a point found: [member, score, longitude, latitude, distance]
Point = list[Any]


# --- C's math, NaN instead of Python's exceptions ---------------------------------------------


def _cos(x: float) -> float:
    try:
        return math.cos(x)
    except ValueError:
        return math.nan


def _sin(x: float) -> float:
    try:
        return math.sin(x)
    except ValueError:
        return math.nan


def _asin(x: float) -> float:
    try:
        return math.asin(x)
    except ValueError:
        return math.nan


def _sqrt(x: float) -> float:
    try:
        return math.sqrt(x)
    except ValueError:
        return math.nan


def _u64(x: float) -> int:
    """``(uint64_t)x`` as gcc compiles it on x86-64 (``cvttsd2si``, out of range: 2**63)."""
    if x < _TWO63:
        if not x >= -_TWO63:  # below the range, or -inf
            return 1 << 63
        return int(x) & _U64
    x -= _TWO63
    if x >= _TWO63:  # 2**64 and over, inf: the "indefinite" value, xored away
        return 0
    return int(x) ^ (1 << 63)


# --- geohash.c ------------------------------------------------------------------------------

_SPREAD: Final = (
    (16, 0x0000FFFF0000FFFF),
    (8, 0x00FF00FF00FF00FF),
    (4, 0x0F0F0F0F0F0F0F0F),
    (2, 0x3333333333333333),
    (1, 0x5555555555555555),
)
_SQUASH: Final = (
    (0, 0x5555555555555555),
    (1, 0x3333333333333333),
    (2, 0x0F0F0F0F0F0F0F0F),
    (4, 0x00FF00FF00FF00FF),
    (8, 0x0000FFFF0000FFFF),
    (16, 0x00000000FFFFFFFF),
)


def _interleave(x: int, y: int) -> int:
    """``interleave64``: x's bits in the even positions, y's in the odd ones."""
    for shift, mask in _SPREAD:
        x = (x | (x << shift)) & mask
        y = (y | (y << shift)) & mask
    return x | (y << 1)


def _deinterleave(v: int) -> int:
    """``deinterleave64``: the even bits in the low 32, the odd ones in the high 32."""
    x, y = v, v >> 1
    for shift, mask in _SQUASH:
        x = (x | (x >> shift)) & mask
        y = (y | (y >> shift)) & mask
    return x | (y << 32)


def _encode(
    lon: float, lat: float, step: int, lat_lo: float = LAT_MIN, lat_hi: float = LAT_MAX
) -> int | None:
    """``geohashEncode``: the cell's bits, or None where Redis fails."""
    if lon > LONG_MAX or lon < LONG_MIN or lat > LAT_MAX or lat < LAT_MIN:
        return None
    if lat < lat_lo or lat > lat_hi:
        return None
    lat_offset = (lat - lat_lo) / (lat_hi - lat_lo)
    long_offset = (lon - LONG_MIN) / (LONG_MAX - LONG_MIN)
    scale = float(1 << step)
    lat_offset *= scale
    long_offset *= scale
    return _interleave(int(lat_offset) & _U32, int(long_offset) & _U32)


def encode(lon: float, lat: float) -> int:
    """The score GEOADD gives a position (within the limits)."""
    bits = _encode(lon, lat, STEP_MAX)
    assert bits is not None
    return bits


Area = tuple[float, float, float, float]  # lat_min, lat_max, lon_min, lon_max


def _decode(bits: int, step: int) -> Area:
    """``geohashDecode`` over the WGS84 ranges."""
    sep = _deinterleave(bits)
    ilato = sep & _U32
    ilono = (sep >> 32) & _U32
    scale = float(1 << step)
    lat_scale = LAT_MAX - LAT_MIN
    long_scale = LONG_MAX - LONG_MIN
    return (
        LAT_MIN + (ilato * 1.0 / scale) * lat_scale,
        LAT_MIN + (((ilato + 1) & _U32) * 1.0 / scale) * lat_scale,
        LONG_MIN + (ilono * 1.0 / scale) * long_scale,
        LONG_MIN + (((ilono + 1) & _U32) * 1.0 / scale) * long_scale,
    )


def decode_score(score: float) -> tuple[float, float]:
    """A score's position: its 26-bit cell's centre, clamped to the limits."""
    lat_min, lat_max, lon_min, lon_max = _decode(_u64(score), STEP_MAX)
    lon = (lon_min + lon_max) / 2
    lon = LONG_MAX if lon > LONG_MAX else LONG_MIN if lon < LONG_MIN else lon
    lat = (lat_min + lat_max) / 2
    lat = LAT_MAX if lat > LAT_MAX else LAT_MIN if lat < LAT_MIN else lat
    return lon, lat


def _move(bits: int, step: int, dx: int, dy: int) -> int:
    """``geohash_move_x`` then ``geohash_move_y`` (x: the odd bits, y: the even ones)."""
    shift = 64 - step * 2
    if dx:
        x = bits & 0xAAAAAAAAAAAAAAAA
        y = bits & 0x5555555555555555
        zz = 0x5555555555555555 >> shift
        x = (x + (zz + 1)) & _U64 if dx > 0 else ((x | zz) - (zz + 1)) & _U64
        bits = (x & (0xAAAAAAAAAAAAAAAA >> shift)) | y
    if dy:
        x = bits & 0xAAAAAAAAAAAAAAAA
        y = bits & 0x5555555555555555
        zz = 0xAAAAAAAAAAAAAAAA >> shift
        y = (y + (zz + 1)) & _U64 if dy > 0 else ((y | zz) - (zz + 1)) & _U64
        bits = x | (y & (0x5555555555555555 >> shift))
    return bits


# --- geohash_helper.c -----------------------------------------------------------------------


def _lat_distance(lat1: float, lat2: float) -> float:
    return EARTH_RADIUS * abs(lat2 * _D_R - lat1 * _D_R)


def distance(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """``geohashGetDistance``: haversine, in meters."""
    lon1r = lon1 * _D_R
    lon2r = lon2 * _D_R
    v = _sin((lon2r - lon1r) / 2)
    if v == 0.0:
        return _lat_distance(lat1, lat2)
    lat1r = lat1 * _D_R
    lat2r = lat2 * _D_R
    u = _sin((lat2r - lat1r) / 2)
    a = u * u + _cos(lat1r) * _cos(lat2r) * v * v
    return 2.0 * EARTH_RADIUS * _asin(_sqrt(a))


def _steps_for(range_meters: float, lat: float) -> int:
    """``geohashEstimateStepsByRadius``."""
    if range_meters == 0:
        return 26
    step = 1
    while range_meters < _MERCATOR_MAX:
        range_meters *= 2
        step += 1
    step -= 2
    if lat > 66 or lat < -66:
        step -= 1
        if lat > 80 or lat < -80:
            step -= 1
    return max(1, min(26, step))


class _Shape:
    """``GeoShape``: a centre, a radius or a box (width, height), the unit's meters."""

    __slots__ = ("box", "conversion", "height", "lat", "lon", "radius", "width")

    def __init__(self) -> None:
        self.lon = self.lat = 0.0
        self.box = False
        self.radius = self.width = self.height = 0.0
        self.conversion = 0.0

    def bounds(self) -> tuple[float, float, float, float]:
        """``geohashBoundingBox``: min lon, min lat, max lon, max lat."""
        lon, lat = self.lon, self.lat
        height = self.conversion * (self.height / 2 if self.box else self.radius)
        width = self.conversion * (self.width / 2 if self.box else self.radius)
        lat_delta = height / EARTH_RADIUS / _D_R
        top = width / EARTH_RADIUS / _cos((lat + lat_delta) * _D_R) / _D_R
        bottom = width / EARTH_RADIUS / _cos((lat - lat_delta) * _D_R) / _D_R
        delta = bottom if lat < 0 else top
        return lon - delta, lat - lat_delta, lon + delta, lat + lat_delta

    def cells(self) -> list[Cell]:
        """``geohashCalculateAreasByShapeWGS84``: the centre's cell and its 8 neighbours
        (N, S, E, W, NE, NW, SE, SW), the useless ones (0, 0)."""
        min_lon, min_lat, max_lon, max_lat = self.bounds()
        if self.box:
            half_w, half_h = self.width / 2, self.height / 2
            radius = _sqrt(half_w * half_w + half_h * half_h)
        else:
            radius = self.radius
        steps = _steps_for(radius * self.conversion, self.lat)
        bits = _encode(self.lon, self.lat, steps)
        assert bits is not None  # the centre is within the limits
        n, s, e, w = (
            _decode(_move(bits, steps, 0, 1), steps),
            _decode(_move(bits, steps, 0, -1), steps),
            _decode(_move(bits, steps, 1, 0), steps),
            _decode(_move(bits, steps, -1, 0), steps),
        )
        if steps > 1 and (n[1] < max_lat or s[0] > min_lat or e[3] < max_lon or w[2] > min_lon):
            steps -= 1
            bits = _encode(self.lon, self.lat, steps)
            assert bits is not None
        moves = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1))
        cells: list[Cell] = [(bits, steps)]
        cells += [(_move(bits, steps, dx, dy), steps) for dx, dy in moves]
        if steps >= 2:
            area = _decode(bits, steps)
            none = (0, 0)
            if area[0] < min_lat:  # S, SW, SE
                cells[2] = cells[8] = cells[7] = none
            if area[1] > max_lat:  # N, NE, NW
                cells[1] = cells[5] = cells[6] = none
            if area[2] < min_lon:  # W, SW, NW
                cells[4] = cells[8] = cells[6] = none
            if area[3] > max_lon:  # E, SE, NE
                cells[3] = cells[7] = cells[5] = none
        return cells

    def within(self, score: float) -> Point | None:
        """``geoWithinShape``: [None, score, lon, lat, distance] if inside, else None."""
        lon, lat = decode_score(score)
        if self.box:
            if _lat_distance(lat, self.lat) > self.height * self.conversion / 2:
                return None
            if distance(lon, lat, self.lon, lat) > self.width * self.conversion / 2:
                return None
            dist = distance(self.lon, self.lat, lon, lat)
        else:
            dist = distance(self.lon, self.lat, lon, lat)
            if dist > self.radius * self.conversion:
                return None
        return [None, score, lon, lat, dist]

    def search(self, z: ZSet, limit: int) -> list[Point]:
        """``membersOfAllNeighbors``: the members inside, cell after cell (``limit``: ANY)."""
        found: list[Point] = []
        cells = self.cells()
        order = z.order
        last = 0
        for i, (bits, step) in enumerate(cells):
            if not bits and not step:
                continue
            if last and cells[last] == (bits, step):
                continue
            if found and limit and len(found) >= limit:
                break
            shift = 52 - step * 2
            lo = float(bits << shift)
            hi = float((bits + 1) << shift)
            for score, member in order.islice(order.bisect_left((lo, b""))):
                if score >= hi:
                    break
                point = self.within(score)
                if point is not None:
                    point[0] = member
                    found.append(point)
                if found and limit and len(found) >= limit:
                    break
            last = i
        return found


# --- replies --------------------------------------------------------------------------------


def _human(x: float) -> Double:
    """``addReplyHumanLongDouble``: ``%.17Lf`` without its trailing zeros."""
    if math.isinf(x):
        return Double(b"inf" if x > 0 else b"-inf")
    text = b"%.17f" % x
    if b"." in text:
        text = text.rstrip(b"0").rstrip(b".")
    return Double(b"0" if text == b"-0" else text)


def _distance_text(d: float) -> bytes:
    """``fixedpoint_d2string(d, 4)``: ``llrint(d * 10000)`` written with 4 decimals."""
    if d == 0:
        return b"0.0000"
    scaled = d * 10000.0
    # llrint: to nearest, ties to even; NaN and out of range give LLONG_MIN
    n = round(scaled) if abs(scaled) < 9223372036854775808.0 else -(2**63)
    sign = b"-" if n < 0 else b""
    whole, frac = divmod(abs(n), 10000)
    return b"%s%d.%04d" % (sign, whole, frac)


def _position(score: float) -> list[Double]:
    lon, lat = decode_score(score)
    return [_human(lon), _human(lat)]


def _geohash(score: float) -> bytes:
    """GEOHASH's 11 characters: the position re-encoded over -90..90, base32, a final '0'."""
    lon, lat = decode_score(score)
    bits = _encode(lon, lat, STEP_MAX, -90.0, 90.0)
    assert bits is not None
    out = bytearray(_BASE32[(bits >> (52 - (i + 1) * 5)) & 0x1F] for i in range(10))
    out.append(_BASE32[0])
    return bytes(out)


# --- pqsort.c: Redis's partial quicksort (NetBSD's qsort), for COUNT's ties ------------------


def _pqsort(a: list[Point], cmp: Callable[[Point, Point], int], lrange: int, rrange: int) -> None:
    """Sort ``a`` in place enough that ranks ``lrange..rrange`` hold what a full sort would
    put there, moving elements exactly as Redis's ``pqsort`` does."""

    def med3(i: int, j: int, k: int) -> int:
        if cmp(a[i], a[j]) < 0:
            return j if cmp(a[j], a[k]) < 0 else (k if cmp(a[i], a[k]) < 0 else i)
        return j if cmp(a[j], a[k]) > 0 else (i if cmp(a[i], a[k]) < 0 else k)

    def vecswap(i: int, j: int, n: int) -> None:
        for t in range(n):
            a[i + t], a[j + t] = a[j + t], a[i + t]

    def sort(base: int, n: int) -> None:
        while True:
            if n < 7:
                for pm in range(base + 1, base + n):
                    pl = pm
                    while pl > base and cmp(a[pl - 1], a[pl]) > 0:
                        a[pl], a[pl - 1] = a[pl - 1], a[pl]
                        pl -= 1
                return
            pm = base + n // 2
            if n > 7:
                pl = base
                pn = base + n - 1
                if n > 40:
                    d = n // 8
                    pl = med3(pl, pl + d, pl + 2 * d)
                    pm = med3(pm - d, pm, pm + d)
                    pn = med3(pn - 2 * d, pn - d, pn)
                pm = med3(pl, pm, pn)
            a[base], a[pm] = a[pm], a[base]
            pa = pb = base + 1
            pc = pd = base + n - 1
            while True:
                while pb <= pc:
                    c = cmp(a[pb], a[base])
                    if c > 0:
                        break
                    if c == 0:
                        a[pa], a[pb] = a[pb], a[pa]
                        pa += 1
                    pb += 1
                while pb <= pc:
                    c = cmp(a[pc], a[base])
                    if c < 0:
                        break
                    if c == 0:
                        a[pc], a[pd] = a[pd], a[pc]
                        pd -= 1
                    pc -= 1
                if pb > pc:
                    break
                a[pb], a[pc] = a[pc], a[pb]
                pb += 1
                pc -= 1
            pn = base + n
            r = min(pa - base, pb - pa)
            vecswap(base, pb - r, r)
            r = min(pd - pc, pn - pd - 1)
            vecswap(pb, pn - r, r)
            r = pb - pa
            if r > 1 and not (
                (lrange < base and rrange < base)
                or (lrange > base + r - 1 and rrange > base + r - 1)
            ):
                sort(base, r)
            r = pd - pc
            if r <= 1:
                return
            base, n = pn - r, r
            if (lrange < base and rrange < base) or (
                lrange > base + r - 1 and rrange > base + r - 1
            ):
                return

    sort(0, len(a))


def _ascending(p: Point, q: Point) -> int:
    return 1 if p[4] > q[4] else 0 if p[4] == q[4] else -1


def _descending(p: Point, q: Point) -> int:
    return -_ascending(p, q)


# --- parsing --------------------------------------------------------------------------------


def _word(arg: bytes) -> bytes:
    """An option word as ``strcasecmp`` sees it: up to a NUL, any case."""
    return arg.split(b"\0", 1)[0].lower()


def _lonlat(lon: bytes, lat: bytes) -> tuple[float, float]:
    """``extractLongLatOrReply``."""
    x, y = parse_score(lon), parse_score(lat)
    if x < LONG_MIN or x > LONG_MAX or y < LAT_MIN or y > LAT_MAX:
        raise KvError(f"ERR invalid longitude,latitude pair {x:f},{y:f}")
    return x, y


def _unit(arg: bytes) -> float:
    """``extractUnitOrReply``: the unit's meters."""
    meters = _UNITS.get(_word(arg))
    if meters is None:
        raise KvError("ERR unsupported unit provided. please use M, KM, FT, MI")
    return meters


def _radius(value: bytes, unit: bytes) -> tuple[float, float]:
    """``extractDistanceOrReply``: (radius, the unit's meters)."""
    radius = parse_score(value, "ERR need numeric radius")
    if radius < 0:
        raise KvError("ERR radius cannot be negative")
    return radius, _unit(unit)


_COORDS, _MEMBER, _NOSTORE, _SEARCH, _SEARCHSTORE = 1, 2, 4, 8, 16
_NONE, _ASC, _DESC = 0, 1, 2


class _Store:
    """What a search with STORE, STOREDIST or GEOSEARCHSTORE writes: ``zset`` at ``key``."""

    __slots__ = ("key", "zset")

    def __init__(self, key: bytes, zset: ZSet) -> None:
        self.key = key
        self.zset = zset


# --- the component --------------------------------------------------------------------------


class Geo(Component):
    """Geo commands over sorted-set values."""

    name = "geo"
    transient: ClassVar[tuple[str, ...]] = ("keyspace", "zsets")

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        #: ZADD, the type check and the STORE of the sorted-set commands, reused
        self.zsets = Zsets(keyspace)

    def _geoset(self, key: bytes, now: int) -> ZSet | None:
        return self.zsets._zset(key, now)

    @staticmethod
    def _member(z: ZSet, member: bytes) -> tuple[float, float]:
        score = z.scores.get(member)
        if score is None:
            raise KvError("ERR could not decode requested zset member")
        return decode_score(score)

    # --- GEOADD ---------------------------------------------------------------------------

    @command("GEOADD", -5, write=True, keys=(1, 1, 1))
    def geoadd(self, ctx: Context, args: list[bytes]) -> Any:
        xx = nx = False
        zadd = [b"ZADD", args[1]]
        first = 2
        while first < len(args):
            word = _word(args[first])
            if word == b"nx":
                nx = True
            elif word == b"xx":
                xx = True
            elif word != b"ch":
                break
            zadd.append(word.upper())  # as ZADD reads it (strcasecmp stops at a NUL)
            first += 1
        if (len(args) - first) % 3 or (xx and nx):
            raise syntax_error()
        for j in range(first, len(args), 3):
            lon, lat = _lonlat(args[j], args[j + 1])
            zadd += [b"%d" % encode(lon, lat), args[j + 2]]
        return self.zsets.zadd(ctx, zadd)

    # --- GEOPOS, GEOHASH, GEODIST ---------------------------------------------------------

    @command("GEOPOS", -2, keys=(1, 1, 1))
    def geopos(self, now: int, args: list[bytes]) -> list[Any]:
        z = self._geoset(args[1], now)
        scores = {} if z is None else z.scores
        return [
            NULL_ARRAY if (s := scores.get(member)) is None else _position(s) for member in args[2:]
        ]

    @command("GEOHASH", -2, keys=(1, 1, 1))
    def geohash(self, now: int, args: list[bytes]) -> list[bytes | None]:
        z = self._geoset(args[1], now)
        scores = {} if z is None else z.scores
        return [None if (s := scores.get(member)) is None else _geohash(s) for member in args[2:]]

    @command("GEODIST", -4, keys=(1, 1, 1))
    def geodist(self, now: int, args: list[bytes]) -> bytes | None:
        to_meters = 1.0
        if len(args) == 5:
            to_meters = _unit(args[4])
        elif len(args) > 5:
            raise syntax_error()
        z = self._geoset(args[1], now)
        if z is None:
            return None
        s1, s2 = z.scores.get(args[2]), z.scores.get(args[3])
        if s1 is None or s2 is None:
            return None
        lon1, lat1 = decode_score(s1)
        lon2, lat2 = decode_score(s2)
        return _distance_text(distance(lon1, lat1, lon2, lat2) / to_meters)

    # --- the searches ---------------------------------------------------------------------

    def _search(self, now: int, args: list[bytes], src: int, flags: int) -> Any:
        """``georadiusGeneric``: the reply, or a :class:`_Store` for the caller to apply."""
        z = self._geoset(args[src], now)
        shape = _Shape()
        storekey: bytes | None = None
        if flags & _COORDS:
            base = 6
            shape.lon, shape.lat = _lonlat(args[2], args[3])
            shape.radius, shape.conversion = _radius(args[4], args[5])
        elif flags & _MEMBER:
            base = 5
            if z is not None:
                shape.lon, shape.lat = self._member(z, args[2])
                shape.radius, shape.conversion = _radius(args[3], args[4])
        else:
            base = 2
            if flags & _SEARCHSTORE:
                base = 3
                storekey = args[1]
        withdist = withhash = withcoords = False
        frommember = fromloc = byradius = bybox = False
        storedist = False
        sort = _NONE
        any_ = False
        count = 0
        search = bool(flags & _SEARCH)
        store_ok = not (flags & _NOSTORE) and not search
        remaining = len(args) - base
        i = 0
        while i < remaining:
            at = base + i
            word = _word(args[at])
            if word == b"withdist":
                withdist = True
            elif word == b"withhash":
                withhash = True
            elif word == b"withcoord":
                withcoords = True
            elif word == b"any":
                any_ = True
            elif word == b"asc":
                sort = _ASC
            elif word == b"desc":
                sort = _DESC
            elif word == b"count" and i + 1 < remaining:
                count = parse_int(args[at + 1])
                if count <= 0:
                    raise KvError("ERR COUNT must be > 0")
                i += 1
            elif word in (b"store", b"storedist") and i + 1 < remaining and store_ok:
                storekey = args[at + 1]
                storedist = word == b"storedist"
                i += 1
            elif word == b"storedist" and search and flags & _SEARCHSTORE:
                storedist = True
            elif word == b"frommember" and i + 1 < remaining and search and not fromloc:
                if z is not None:
                    shape.lon, shape.lat = self._member(z, args[at + 1])
                frommember = True
                i += 1
            elif word == b"fromlonlat" and i + 2 < remaining and search and not frommember:
                shape.lon, shape.lat = _lonlat(args[at + 1], args[at + 2])
                fromloc = True
                i += 2
            elif word == b"byradius" and i + 2 < remaining and search and not bybox:
                shape.radius, shape.conversion = _radius(args[at + 1], args[at + 2])
                shape.box = False
                byradius = True
                i += 2
            elif word == b"bybox" and i + 3 < remaining and search and not byradius:
                width = parse_score(args[at + 1], "ERR need numeric width")
                height = parse_score(args[at + 2], "ERR need numeric height")
                if height < 0 or width < 0:
                    raise KvError("ERR height or width cannot be negative")
                shape.width, shape.height = width, height
                shape.conversion = _unit(args[at + 3])
                shape.box = True
                bybox = True
                i += 3
            else:
                raise syntax_error()
            i += 1
        if storekey is not None and (withdist or withhash or withcoords):
            what = "GEOSEARCHSTORE" if flags & _SEARCHSTORE else "STORE option in GEORADIUS"
            raise KvError(
                f"ERR {what} is not compatible with WITHDIST, WITHHASH and WITHCOORD options"
            )
        name = args[0].decode("utf-8", "replace")
        if search and not (frommember or fromloc):
            raise KvError(
                f"ERR exactly one of FROMMEMBER or FROMLONLAT can be specified for {name}"
            )
        if search and not (byradius or bybox):
            raise KvError(f"ERR exactly one of BYRADIUS and BYBOX can be specified for {name}")
        if any_ and not count:
            raise KvError("ERR the ANY argument requires COUNT argument")
        if z is None:
            return [] if storekey is None else _Store(storekey, ZSet())
        if count and sort == _NONE and not any_:
            sort = _ASC
        found = shape.search(z, count if any_ else 0)
        if not found and storekey is None:
            return []
        returned = len(found) if count == 0 or len(found) < count else count
        if sort != _NONE:
            cmp = _ascending if sort == _ASC else _descending
            if returned == len(found):
                found.sort(key=lambda p: p[4], reverse=sort == _DESC)  # stable, as glibc's
            else:
                _pqsort(found, cmp, 0, returned - 1)
        conversion = shape.conversion
        if storekey is not None:
            stored = ZSet(
                (p[0], p[4] / conversion if storedist else p[1]) for p in found[:returned]
            )
            return _Store(storekey, stored)
        if not (withdist or withhash or withcoords):
            return [p[0] for p in found[:returned]]
        out: list[Any] = []
        for member, score, lon, lat, dist in found[:returned]:
            item: list[Any] = [member]
            if withdist:
                item.append(_distance_text(dist / conversion))
            if withhash:
                item.append(int(score))
            if withcoords:
                item.append([_human(lon), _human(lat)])
            out.append(item)
        return out

    def _search_write(self, ctx: Context, args: list[bytes], src: int, flags: int) -> Any:
        result = self._search(now_ms(ctx), args, src, flags)
        if isinstance(result, _Store):
            self.zsets._store(result.key, result.zset)
            return len(result.zset)
        return result

    @command("GEORADIUS", -6, write=True, keys=(1, 1, 1))
    def georadius(self, ctx: Context, args: list[bytes]) -> Any:
        return self._search_write(ctx, args, 1, _COORDS)

    @command("GEORADIUS_RO", -6, keys=(1, 1, 1))
    def georadius_ro(self, now: int, args: list[bytes]) -> Any:
        return self._search(now, args, 1, _COORDS | _NOSTORE)

    @command("GEORADIUSBYMEMBER", -5, write=True, keys=(1, 1, 1))
    def georadiusbymember(self, ctx: Context, args: list[bytes]) -> Any:
        return self._search_write(ctx, args, 1, _MEMBER)

    @command("GEORADIUSBYMEMBER_RO", -5, keys=(1, 1, 1))
    def georadiusbymember_ro(self, now: int, args: list[bytes]) -> Any:
        return self._search(now, args, 1, _MEMBER | _NOSTORE)

    @command("GEOSEARCH", -7, keys=(1, 1, 1))
    def geosearch(self, now: int, args: list[bytes]) -> Any:
        return self._search(now, args, 1, _SEARCH)

    @command("GEOSEARCHSTORE", -8, write=True, keys=(1, 2, 1))
    def geosearchstore(self, ctx: Context, args: list[bytes]) -> Any:
        return self._search_write(ctx, args, 2, _SEARCH | _SEARCHSTORE)
