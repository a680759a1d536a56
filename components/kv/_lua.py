"""The Lua side of scripting: one sandboxed Lua 5.1 runtime per replica, through ``lupa``.

Redis 7.0 runs scripts in Lua 5.1; ``lupa.lua51`` embeds the same version.
:class:`Engine` builds one runtime, once, and keeps the scripts it compiled
by SHA1.  What a script sees is Redis's sandbox:

* the globals Redis 7.0 offers (``redis``, ``KEYS``, ``ARGV``, ``cjson``,
  ``bit``, ``math``, ``string``, ``table``, ``coroutine``, ``pcall``, ...),
  and not ``os``, ``io``, ``require``, ``loadfile``, ``dofile``, ``print``,
  ``debug``, ``setfenv``/``getfenv`` nor lupa's ``python``;
* readonly globals and libraries: creating or changing a global fails with
  Redis 7.0.15's ``Attempt to modify a readonly table`` and reading a missing
  one with ``Script attempted to access nonexistent global variable 'x'``;
* ``pcall`` turning a Redis error table into its message, as Redis's does.

Determinism (every replica runs every write script)
---------------------------------------------------
* ``math.random`` / ``math.randomseed`` draw from a Python ``random.Random``
  that the caller seeds for each run (from ``ctx.random`` for a write), not
  from C's ``rand()``.
* A runaway script is stopped by an instruction count, not by wall time: a
  count hook fires every :data:`HOOK_STEP` VM instructions and, once the
  budget is spent, raises at every instruction until the script's stack is
  unwound, so every replica stops it at the same instruction.  The hook is
  installed on the coroutines a script creates too.
* ``collectgarbage("count")`` and ``gcinfo()`` answer 0 (a replica's heap is
  its own business).  What stays replica-specific is what Lua gives away by
  address: ``tostring`` of a table or function, and the iteration order of a
  table keyed by tables or functions.
* The Lua heap is bounded (:data:`DEFAULT_MAX_MEMORY`), a guard against a
  script eating the machine rather than a quota: each replica's heap also
  holds what its own read-only scripts compiled, so a script that needs
  nearly all of it might fail on one replica and not another.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from lupa import lua51  # type: ignore[import-untyped]

from ._errors import KvError

__all__ = ("DEFAULT_INSTRUCTION_LIMIT", "HOOK_STEP", "Engine", "LibraryFunction", "sha1hex")

#: The VM instructions between two calls of the budget hook.
HOOK_STEP: Final = 1000
#: Instructions a script may run before it is stopped: about 0.25 s of plain Lua
#: on one core, well inside the replicas' apply timeout (``--apply-timeout``,
#: 2 s by default).  A limit past it never decides: the apply timeout would
#: abandon the entry first, on every replica, as poison (rolled back, after a
#: 2 s stall), instead of this deterministic stop that keeps the writes made.
DEFAULT_INSTRUCTION_LIMIT: Final = 50_000_000
#: The Lua heap's bound (a script that needs more fails with "not enough memory").
DEFAULT_MAX_MEMORY: Final = 1024 * 1024 * 1024
#: Deepest nesting of a script's reply (deeper parts answer Redis's error).
MAX_REPLY_DEPTH: Final = 200

_INT64_MIN: Final = -(2**63)
_TWO63: Final = 2.0**63


class LibraryFunction(NamedTuple):
    """A function a library registered (``redis.register_function``)."""

    name: bytes
    #: the Lua function (local to this replica's runtime)
    callback: Any
    description: bytes | None
    #: its flags, in Redis's order (``no-writes``, ``allow-oom``, ...)
    flags: tuple[bytes, ...]


def sha1hex(data: bytes) -> bytes:
    return hashlib.sha1(data).hexdigest().encode()


# The sandbox, run once per runtime with the Python callbacks as arguments.  Every
# Python object stays an upvalue here: scripts only ever see Lua functions.
_BOOT: Final = r"""
local pyredis, pyunwrap, pyrandom, pyseed, pycjson, pybit = ...
local G = _G
local type, tostring, error, select, next, unpack = type, tostring, error, select, next, unpack
local rawget, rawset, setmetatable, getmetatable = rawget, rawset, setmetatable, getmetatable
local pcall, xpcall, setfenv, loadstring, load = pcall, xpcall, setfenv, loadstring, load
local sethook, getinfo = debug.sethook, debug.getinfo
local cocreate, cowrap = coroutine.create, coroutine.wrap
local strformat, strbyte, strsub, strgsub = string.format, string.byte, string.sub, string.gsub
local tconcat, floor, huge = table.concat, math.floor, math.huge
local STEP = %(step)d

local readonly = setmetatable({}, {__mode = "k"})
local function refuse() error("Attempt to modify a readonly table", 2) end
local function protect(lib)
  local p = setmetatable({}, {__index = lib, __newindex = refuse, __metatable = false})
  readonly[p] = true
  return p
end

-- the script's globals: `real` holds them, `env` is what scripts get
local real = {}
local env = setmetatable({}, {
  __index = function(t, n)
    local v = real[n]
    if v == nil then
      error("Script attempted to access nonexistent global variable '" .. tostring(n) .. "'", 2)
    end
    return v
  end,
  __newindex = refuse,
  __metatable = false,
})
readonly[env] = true

for _, n in ipairs({"assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget",
                    "select", "tonumber", "tostring", "type", "unpack", "xpcall", "_VERSION"}) do
  real[n] = G[n]
end
real._G = env

-- the instruction budget
local budget, killed, kill_err, kill_line = 0, false, nil, nil
local function hook()
  budget = budget - 1
  if budget < 0 then
    -- never inside the sandbox's own functions (the runner must get to clear the hook)
    local i = getinfo(2, "Sl")
    if i and i.source == "=redis" then
      if not killed then killed = true; sethook(hook, "", 1) end
      return
    end
    if not killed then
      killed = true
      kill_line = i and i.currentline or 0
      sethook(hook, "", 1)
    end
    if not kill_line then kill_line = i and i.currentline or 0 end
    error(kill_err, 0)
  end
end

real.coroutine = protect({
  create = function(f) local co = cocreate(f); sethook(co, hook, "", STEP); return co end,
  wrap = function(f)
    local co = cocreate(f)
    sethook(co, hook, "", STEP)
    return function(...)
      local r = {coroutine.resume(co, ...)}
      if not r[1] then error(r[2], 0) end
      return unpack(r, 2, table.maxn(r))
    end
  end,
  resume = coroutine.resume, running = coroutine.running,
  status = coroutine.status, yield = coroutine.yield,
})

local function lib(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end
local str = lib(string)
local mathlib = lib(math)
mathlib.random, mathlib.randomseed = pyrandom, pyseed
real.math = protect(mathlib)
real.string = protect(str)
real.table = protect(lib(table))
-- ("x"):upper() finds `string` through the string metatable: hide the real one
getmetatable("").__metatable = protect({__index = real.string})

real.collectgarbage = function(opt, arg)
  if opt == "count" then return 0 end
  return collectgarbage(opt, arg)
end
real.gcinfo = function() return 0 end
real.rawset = function(t, k, v)
  if readonly[t] then error("Attempt to modify a readonly table", 0) end
  return rawset(t, k, v)
end
real.setmetatable = function(t, mt)
  if readonly[t] then error("Attempt to modify a readonly table", 0) end
  return setmetatable(t, mt)
end
real.getmetatable = getmetatable
local function no_bytecode(s)
  return type(s) == "string" and strbyte(s, 1) == 27
end
real.loadstring = function(s, name)
  if no_bytecode(s) then return nil, "binary chunks are not allowed" end
  local f, e = loadstring(s, name)
  if f then setfenv(f, env) end
  return f, e
end
real.load = function(fn, name)
  local parts = {}
  while true do
    local piece = fn()
    if piece == nil or piece == "" then break end
    parts[#parts + 1] = piece
  end
  return real.loadstring(tconcat(parts), name)
end

-- pcall: an error table answers its message (Redis 7.0's luaRedisPcall)
local function pack(...) return {n = select("#", ...), ...} end
real.pcall = function(f, ...)
  local r = pack(pcall(f, ...))
  if not r[1] then
    local e = r[2]
    if type(e) == "userdata" then
      local t, msg = pyunwrap(e)
      if t then e = t elseif msg then e = msg end
    end
    if type(e) == "table" then
      local m = rawget(e, "err")
      if type(m) == "string" then e = m end
    end
    r[2] = e
  end
  return unpack(r, 1, r.n)
end

-- the redis library: Python functions (C functions to Lua, so that a tail call
-- `return redis.call(...)` keeps the script's frame, as Redis's C functions do)
local redis = {}
for k, v in next, pyredis do redis[k] = v end
redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING = 0, 1, 2, 3
redis.REPL_NONE, redis.REPL_AOF, redis.REPL_SLAVE = 0, 1, 2
redis.REPL_REPLICA, redis.REPL_ALL = 2, 3
redis.REDIS_VERSION, redis.REDIS_VERSION_NUM = "7.0.15", 458767
real.redis = protect(redis)

-- cjson: encoding in Lua (a table's keys come in Lua's own order, as in Redis)
local null = newproxy(false)
local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["/"] = "\\/", ["\b"] = "\\b",
                 ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}
for c = 0, 31 do
  local ch = string.char(c)
  if not escapes[ch] then escapes[ch] = strformat("\\u%%04x", c) end
end
escapes["\127"] = "\\u007f"
local function quote(s) return '"' .. strgsub(s, '[%%c"\\/]', escapes) .. '"' end
local function number(x)
  if x ~= x or x == huge or x == -huge then
    error("Cannot serialise number: must not be NaN or Inf", 0)
  end
  return strformat("%%.14g", x)
end
local encode
local function encode_table(t, depth, out)
  if depth > 1000 then error("Cannot serialise, excessive nesting (" .. depth .. ")", 0) end
  local max, items, array = 0, 0, true
  for k in next, t do
    if type(k) == "number" and k > 0 and floor(k) == k then
      if k > max then max = k end
      items = items + 1
    else
      array = false
      break
    end
  end
  if array and max > 10 and max > items * 2 then
    error("Cannot serialise table: excessively sparse array", 0)
  end
  if array and max > 0 then
    out[#out + 1] = "["
    for i = 1, max do
      if i > 1 then out[#out + 1] = "," end
      encode(rawget(t, i), depth, out)
    end
    out[#out + 1] = "]"
    return
  end
  out[#out + 1] = "{"
  local first = true
  for k, v in next, t do
    local tk = type(k)
    if tk == "string" then k = quote(k)
    elseif tk == "number" then k = '"' .. number(k) .. '"'
    else error("Cannot serialise table: table key must be a number or string", 0) end
    if not first then out[#out + 1] = "," end
    first = false
    out[#out + 1] = k
    out[#out + 1] = ":"
    encode(v, depth, out)
  end
  out[#out + 1] = "}"
end
encode = function(v, depth, out)
  local t = type(v)
  if t == "string" then out[#out + 1] = quote(v)
  elseif t == "number" then out[#out + 1] = number(v)
  elseif t == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif t == "nil" or v == null then out[#out + 1] = "null"
  elseif t == "table" then encode_table(v, depth + 1, out)
  else error("Cannot serialise " .. t .. ": type not supported", 0) end
end
local function encode_safe(v)
  local out = {}
  local ok, e = pcall(encode, v, 0, out)
  if not ok then return false, e end
  return true, tconcat(out)
end
real.cjson = protect({encode = pycjson.encode, decode = pycjson.decode, null = null})

-- bit (LuaBitOp), computed in Python on 32-bit integers
local bitlib = pybit
real.bit = protect(bitlib)

-- running a script
local function handler(err)
  if killed then return kill_err end
  local level = 2
  local i = getinfo(level, "nSl")
  while i and (i.what == "C" or i.what == "tail" or i.source == "=redis") do
    level = level + 1
    i = getinfo(level, "nSl")
  end
  if type(err) == "userdata" then
    local t, msg = pyunwrap(err)
    if t then
      err = t
    elseif msg then
      if i and i.currentline > 0 then
        msg = strsub(i.source, 2) .. ":" .. i.currentline .. ": " .. msg
      end
      err = msg
    end
  end
  if type(err) ~= "table" then err = {err = "ERR " .. tostring(err)} end
  if i then
    err.source = i.source
    err.line = i.currentline
  end
  return err
end

local function compile(body)
  if no_bytecode(body) then return nil, "user_script: binary chunks are not allowed" end
  local f, e = loadstring(body, "@user_script")
  if not f then return nil, e end
  setfenv(f, env)
  return f, nil
end

local function run(f, keys, argv, limit, err)
  real.KEYS, real.ARGV = keys, argv
  budget, killed, kill_err, kill_line = limit, false, err, nil
  sethook(hook, "", STEP)
  local ok, v = xpcall(f, handler)
  sethook()
  real.KEYS, real.ARGV = nil, nil
  if killed then return 2, kill_err, kill_line end
  if ok then return 0, v, nil end
  return 1, v, nil
end

-- Python callables are userdata to Lua: a script sees them as the functions they are in Redis
local pyfns = {}
for _, t in ipairs({redis, bitlib, pycjson}) do
  for _, v in next, t do if type(v) == "userdata" then pyfns[v] = true end end
end
pyfns[pyrandom], pyfns[pyseed] = true, true
real.type = function(...)
  local t = type(...)
  if t == "userdata" and pyfns[...] then return "function" end
  return t
end

-- functions (FUNCTION LOAD, FCALL).  A library's chunk runs with only the library API in
-- sight (redis.register_function, redis.log, the LOG_* and version constants), where a
-- missing name is an error as for a missing global; the functions it registers run later
-- with the scripts' globals, less KEYS, ARGV and the debugger's redis.breakpoint/debug.
local function nonexistent(n)
  error("Script attempted to access nonexistent global variable '" .. tostring(n) .. "'", 3)
end
local function strict(t)
  local p = setmetatable({}, {
    __index = function(_, n) local v = t[n]; if v == nil then nonexistent(n) end; return v end,
    __newindex = refuse, __metatable = false})
  readonly[p] = true
  return p
end
local loading = nil
local FLAGS = {"no-writes", "allow-oom", "allow-stale", "no-cluster", "allow-cross-slot-keys"}
local KNOWN = {}
for i, f in ipairs(FLAGS) do KNOWN[f] = i end
local function regerr(msg) error({err = "ERR " .. msg}, 0) end
local function isstr(v) local t = type(v); return t == "string" or t == "number" end
local strfind = string.find
local function register_function(...)
  if not loading then
    regerr("redis.register_function can only be called on FUNCTION LOAD command")
  end
  local n = select("#", ...)
  local name, callback, desc, flags = nil, nil, false, {}
  if n == 1 then
    local t = ...
    if type(t) ~= "table" then
      regerr("calling redis.register_function with a single argument is only applicable to " ..
             "Lua table (representing named arguments).")
    end
    for k, v in next, t do
      if not isstr(k) then
        regerr("named argument key given to redis.register_function is not a string")
      end
      k = tostring(k)
      if k == "function_name" then
        if not isstr(v) then
          regerr("function_name argument given to redis.register_function must be a string")
        end
        name = tostring(v)
      elseif k == "description" then
        if not isstr(v) then
          regerr("description argument given to redis.register_function must be a string")
        end
        desc = tostring(v)
      elseif k == "callback" then
        if type(v) ~= "function" then
          regerr("callback argument given to redis.register_function must be a function")
        end
        callback = v
      elseif k == "flags" then
        if type(v) ~= "table" then
          regerr("flags argument to redis.register_function must be a table representing " ..
                 "function flags")
        end
        local seen = {}
        for _, f in next, v do
          local i = isstr(f) and KNOWN[tostring(f)]
          if not i then regerr("unknown flag given") end
          seen[i] = true
        end
        flags = {}
        for i, f in ipairs(FLAGS) do if seen[i] then flags[#flags + 1] = f end end
      else
        regerr("unknown argument given to redis.register_function")
      end
    end
    if name == nil then regerr("redis.register_function must get a function name argument") end
    if callback == nil then regerr("redis.register_function must get a callback argument") end
  elseif n == 2 then
    name, callback = ...
    if not isstr(name) then regerr("first argument to redis.register_function must be a string") end
    if type(callback) ~= "function" then
      regerr("second argument to redis.register_function must be a function")
    end
    name = tostring(name)
  else
    regerr("wrong number of arguments to redis.register_function")
  end
  -- (Redis 7.0 words a bad function name as a bad library name)
  if not strfind(name, "^[A-Za-z0-9_]+$") then
    regerr("Library names can only contain letters, numbers, or underscores(_) and must be " ..
           "at least one character long")
  end
  if loading.names[name] then regerr("Function already exists in the library") end
  loading.names[name] = true
  loading.n = loading.n + 1
  loading[loading.n] = {name, callback, desc, flags}
end
local libredis = {register_function = register_function, log = redis.log}
for _, k in ipairs({"LOG_DEBUG", "LOG_VERBOSE", "LOG_NOTICE", "LOG_WARNING", "REDIS_VERSION",
                    "REDIS_VERSION_NUM"}) do
  libredis[k] = redis[k]
end
local libglobals = {redis = strict(libredis)}
local fredis = {}
for k, v in next, redis do fredis[k] = v end
fredis.breakpoint, fredis.debug, fredis.replicate_commands = nil, nil, nil
local fglobals = {}
local fenv = setmetatable({}, {
  __index = function(_, n)
    local v
    if loading then v = libglobals[n] else v = fglobals[n] end
    if v == nil then nonexistent(n) end
    return v
  end,
  __newindex = refuse,
  __metatable = false,
})
readonly[fenv] = true
for k, v in next, real do fglobals[k] = v end
fglobals.redis, fglobals._G = protect(fredis), fenv

local function load_library(body, limit, err)
  local f, e = loadstring(body, "@user_function")
  if not f then return 1, e end
  setfenv(f, fenv)
  local reg = {n = 0, names = {}}
  loading = reg
  budget, killed, kill_err, kill_line = limit, false, err, nil
  sethook(hook, "", STEP)
  local ok, v = xpcall(f, handler)
  sethook()
  loading = nil
  if killed then return 2, kill_err end
  if not ok then return 3, v end
  return 0, reg
end

local function call_function(f, keys, argv, limit, err)
  budget, killed, kill_err, kill_line = limit, false, err, nil
  sethook(hook, "", STEP)
  local ok, v = xpcall(function() return f(keys, argv) end, handler)
  sethook()
  if killed then return 2, kill_err, kill_line end
  if ok then return 0, v, nil end
  return 1, v, nil
end

return compile, run, rawget, next, encode_safe, null, load_library, call_function
"""


def _c_int(x: float) -> int:
    """C's ``(long long)`` cast of a double, as x86-64 does it (out of range: INT64_MIN)."""
    if x != x or not -_TWO63 <= x < _TWO63:
        return _INT64_MIN
    return int(x)


def _number_arg(x: float) -> bytes:
    """A Lua number passed to redis.call: Redis formats it with ``%.17g``."""
    return b"%.17g" % x


class Engine:
    """One replica's Lua runtime and its compiled scripts."""

    def __init__(
        self,
        dispatch: Callable[[list[bytes]], Any],
        *,
        instruction_limit: int = DEFAULT_INSTRUCTION_LIMIT,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
    ) -> None:
        #: runs one redis.call (args already checked to be strings); returns the
        #: command's reply, or raises KvError
        self.dispatch = dispatch
        self.instruction_limit = instruction_limit
        self.random = random.Random(0)
        #: the running script's redis.setresp
        self.resp = 2
        self.lua = lua51.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_no_attributes,
            max_memory=max_memory,
        )
        self._table = self.lua.table_from
        self.functions: dict[bytes, Any] = {}
        chunk = self.lua.globals().loadstring((_BOOT % {"step": HOOK_STEP}).encode(), b"=redis")
        if isinstance(chunk, tuple):  # pragma: no cover - the sandbox is fixed text
            raise RuntimeError(f"the Lua sandbox does not compile: {chunk!r}")
        (
            self._compile,
            self._run,
            self._rawget,
            self._next,
            self._encode,
            self._null,
            self._load,
            self._call,
        ) = chunk(*self._callbacks())

    def compile(self, sha: bytes, body: bytes) -> Any:
        """The compiled function of ``body`` (cached by ``sha``); KvError if it does not compile."""
        fn = self.functions.get(sha)
        if fn is not None:
            return fn
        fn, err = self._compile(body)  # (function, nil) or (nil, message)
        if fn is None:
            message = err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)
            raise KvError(f"ERR Error compiling script (new function): {message}")
        self.functions[sha] = fn
        return fn

    def load_library(self, code: bytes) -> list[LibraryFunction]:
        """Run a library's code (what follows its ``#!lua name=...`` line) and return the
        functions it registered, in order; KvError with Redis's text if it does not
        compile, fails, registers badly or runs past the busy-script limit."""
        self.random.seed(0)
        kill = self._table({b"err": b"ERR FUNCTION LOAD timeout"})
        try:
            status, value = self._load(code, self._budget(), kill)
        except lua51.LuaMemoryError:
            raise KvError("ERR Error registering functions: not enough memory") from None
        if status == 1:
            raise KvError(f"ERR Error compiling function: {_text(value)}")
        if status != 0:
            raise KvError(f"ERR Error registering functions: {self._error_text(value)}")
        found: list[LibraryFunction] = []
        for i in range(1, int(value[b"n"]) + 1):
            name, callback, desc, flags = (value[i][j] for j in (1, 2, 3, 4))
            found.append(
                LibraryFunction(
                    bytes(name),
                    callback,
                    bytes(desc) if desc else None,
                    tuple(bytes(flags[j]) for j in range(1, len(flags) + 1)),
                )
            )
        return found

    def _budget(self) -> int:
        return max(1, self.instruction_limit // HOOK_STEP)

    def run(
        self,
        fn: Any,
        sha: bytes,
        keys: list[bytes],
        argv: list[bytes],
        seed: int,
        *,
        function: bool = False,
    ) -> Any:
        """Run a compiled script (``sha`` names it in errors), or with ``function`` a
        library's function (``sha`` is its name), called as ``fn(KEYS, ARGV)``; its
        reply (a KvError if it failed)."""
        self.random.seed(seed)
        self.resp = 2
        t = self._table
        kill = t(
            {
                b"err": b"ERR Script killed: it ran more than %d Lua instructions "
                b"(the replicas' busy-script limit)" % self.instruction_limit
            }
        )
        runner = self._call if function else self._run
        try:
            status, value, extra = runner(fn, t(keys), t(argv), self._budget(), kill)
        except lua51.LuaMemoryError:
            return KvError(f"ERR Error running script {sha.decode()}, not enough memory")
        if status == 0:
            return self.reply(value, self.resp, 0)
        if status == 2:
            chunk = "@user_function" if function else "@user_script"
            where = f" script: {sha.decode()}, on {chunk}:{_c_int(extra or 0)}."
            return KvError(self._error_text(value) + where)
        if isinstance(value, bytes):  # an error the handler could not see (not enough memory)
            return KvError(
                f"ERR Error running script {sha.decode()}, {value.decode('utf-8', 'replace')}"
            )
        text = self._error_text(value)
        source = self._rawget(value, b"source")
        line = self._rawget(value, b"line")
        if source is not None and line is not None:
            text += f" script: {sha.decode()}, on {_text(source)}:{_c_int(line)}."
        return KvError(text)

    def _error_text(self, table: Any) -> str:
        err = self._rawget(table, b"err")
        return _text(err) if isinstance(err, bytes) else "ERR unknown error"

    # --- Lua -> reply ----------------------------------------------------------------------

    def reply(self, value: Any, resp: int, depth: int) -> Any:
        """Redis's conversion of a script's return value to a reply."""
        t = type(value)
        if t is bytes:
            return value
        if t is bool:
            if resp == 3:
                return value
            return 1 if value else None
        if t is int or t is float:
            return _c_int(value)
        if value is None or lua51.lua_type(value) != "table":
            return None
        if depth >= MAX_REPLY_DEPTH:
            return KvError("ERR reached lua stack limit")
        raw = self._rawget
        err = raw(value, b"err")
        if type(err) is bytes:
            return KvError(_text(err))
        ok = raw(value, b"ok")
        if type(ok) is bytes:
            return _status(ok)
        double = raw(value, b"double")
        if type(double) is int or type(double) is float:
            return float(double)
        big = raw(value, b"big_number")
        if type(big) is bytes:
            return big
        mapping = raw(value, b"map")
        if mapping is not None and lua51.lua_type(mapping) == "table":
            out: dict[Any, Any] = {}
            for k, v in self._pairs(mapping):
                out[_hashable(self.reply(k, resp, depth + 1))] = self.reply(v, resp, depth + 1)
            return out
        members = raw(value, b"set")
        if members is not None and lua51.lua_type(members) == "table":
            return {_hashable(self.reply(k, resp, depth + 1)) for k, _ in self._pairs(members)}
        items = []
        i = 1
        while True:
            item = raw(value, i)
            if item is None:
                break
            items.append(self.reply(item, resp, depth + 1))
            i += 1
        return items

    def _pairs(self, table: Any) -> list[tuple[Any, Any]]:
        out = []
        nxt = self._next
        pair = nxt(table, None)
        while type(pair) is tuple:
            out.append(pair)
            pair = nxt(table, pair[0])
        return out

    # --- reply -> Lua ----------------------------------------------------------------------

    def to_lua(self, value: Any, resp: int) -> Any:
        """Redis's conversion of a command's reply for the script (RESP2 or RESP3 rules)."""
        t = type(value)
        if t is bytes:
            return value
        if t is int:
            return value
        if value is None:
            return None if resp == 3 else False
        from ._resp import NULL_ARRAY, Pairs, Status, Verbatim

        table = self._table
        if t is Status:
            return table({b"ok": bytes(value)})
        if t is bool:
            return value if resp == 3 else int(value)
        if t is float:
            return table({b"double": value}) if resp == 3 else b"%.17g" % value
        if t is str:
            return value.encode()
        if value is NULL_ARRAY:
            return None if resp == 3 else False
        if t is Verbatim:
            if resp == 3:
                return table(
                    {b"verbatim_string": table({b"format": b"txt", b"string": bytes(value)})}
                )
            return bytes(value)
        if isinstance(value, KvError):
            return table({b"err": _error_field(str(value))})
        if t is dict:
            if resp == 3:
                return table({b"map": table({k: self.to_lua(v, resp) for k, v in value.items()})})
            flat: list[Any] = []
            for k, v in value.items():
                flat += (self.to_lua(k, resp), self.to_lua(v, resp))
            return table(flat)
        if t is set or t is frozenset:
            if resp == 3:
                return table({b"set": table({k: True for k in value})})
            return table([self.to_lua(v, resp) for v in value])
        if t is Pairs and resp == 3:
            return table(
                [
                    table([self.to_lua(value[i], resp), self.to_lua(value[i + 1], resp)])
                    for i in range(0, len(value) - 1, 2)
                ]
            )
        if isinstance(value, (list, tuple)):
            items = [self.to_lua(v, resp) for v in value]
            if resp == 3 and None in items:  # a RESP3 null is a hole in the table
                return table({i + 1: v for i, v in enumerate(items) if v is not None})
            return table(items)
        if isinstance(value, bytes):
            return bytes(value)
        return table({b"err": b"ERR cannot convert a reply of type " + t.__name__.encode()})

    # --- callbacks for the boot chunk ------------------------------------------------------

    def _callbacks(self) -> tuple[Any, ...]:
        t = self._table
        err = functools.partial(_error_table, t)
        library = t(
            {
                b"call": self._rcall,
                b"pcall": self._pcall,
                b"sha1hex": functools.partial(_sha1hex, err),
                b"error_reply": self._error_reply,
                b"status_reply": self._status_reply,
                b"log": functools.partial(_log, err),
                b"setresp": self._setresp,
                b"set_repl": functools.partial(_set_repl, err),
                b"replicate_commands": _replicate_commands,
                b"breakpoint": _breakpoint,
                b"debug": _debug,
            }
        )
        cjson = t({b"encode": self._cjson_encode, b"decode": self._cjson_decode})
        bit = t({name.encode(): functools.partial(_bit, name) for name in _BIT_OPS})
        return (library, _unwrap, self._random, self._seed, cjson, bit)

    def _error(self, message: str) -> Any:
        """Redis's error table for ``message`` (luaPushErrorBuff: ``-CODE msg`` or ``msg``)."""
        return self._table({b"err": _error_field(message)})

    def _command_error(self, message: str) -> Any:
        """The error table of a command's error (Redis marks it: its stats were counted)."""
        table = self._error(message)
        table[b"ignore_error_stats_update"] = True
        return table

    def _invoke(self, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """One redis.call / redis.pcall: (True, the reply) or (False, an error table)."""
        if not args:
            return False, self._error(
                "Please specify at least one argument for this redis lib call"
            )
        words: list[bytes] = []
        for a in args:
            t = type(a)
            if t is bytes:
                words.append(a)
            elif t is int or t is float:
                words.append(_number_arg(a))
            else:
                return False, self._error(
                    "Lua redis lib command arguments must be strings or integers"
                )
        try:
            value = self.dispatch(words)
        except KvError as exc:
            return False, self._command_error("-" + str(exc))
        except Exception as exc:  # noqa: BLE001 - a command's bug is that call's error
            return False, self._command_error(f"-ERR internal error: {type(exc).__name__}: {exc}")
        if isinstance(value, KvError):
            return False, self._command_error("-" + str(value))
        try:
            return True, self.to_lua(value, self.resp)
        except Exception as exc:  # noqa: BLE001
            return False, self._error(f"-ERR internal error: {type(exc).__name__}: {exc}")

    def _rcall(self, *args: Any) -> Any:
        ok, value = self._invoke(args)
        if not ok:
            raise _Raise(value)
        return value

    def _pcall(self, *args: Any) -> Any:
        return self._invoke(args)[1]

    def _error_reply(self, *args: Any) -> Any:
        if len(args) != 1 or type(args[0]) is not bytes:
            return self._error("wrong number or type of arguments")
        text = args[0].decode("utf-8", "surrogateescape")
        return self._error(text if text.startswith("-") else "-" + text)

    def _status_reply(self, *args: Any) -> Any:
        if len(args) != 1 or type(args[0]) is not bytes:
            return self._error("wrong number or type of arguments")
        return self._table({b"ok": args[0]})

    def _setresp(self, *args: Any) -> None:
        if len(args) != 1:
            raise _Raise(self._error("redis.setresp() requires one argument."))
        if args[0] not in (2, 3) or type(args[0]) is bool:
            raise _Raise(self._error("RESP version must be 2 or 3."))
        self.resp = int(args[0])

    def _random(self, *args: Any) -> Any:
        """math.random, from the run's seeded generator (Lua 5.1's argument rules)."""
        for i, a in enumerate(args[:2]):
            if type(a) not in (int, float):
                raise _Raise(
                    b"bad argument #%d to 'random' (number expected, got %s)"
                    % (i + 1, _lua_type_name(a).encode()),
                    where=True,
                )
        r = self.random
        if not args:
            return r.random()
        if len(args) == 1:
            m = math.floor(args[0])
            if m < 1:
                raise _Raise(b"bad argument #1 to 'random' (interval is empty)", where=True)
            return r.randint(1, m)
        if len(args) == 2:
            low, high = math.floor(args[0]), math.floor(args[1])
            if low > high:
                raise _Raise(b"bad argument #2 to 'random' (interval is empty)", where=True)
            return r.randint(low, high)
        raise _Raise(b"wrong number of arguments", where=True)

    def _seed(self, *args: Any) -> None:
        x = args[0] if args else None
        if type(x) not in (int, float):
            raise _Raise(
                b"bad argument #1 to 'randomseed' (number expected, got %s)"
                % _lua_type_name(x).encode(),
                where=True,
            )
        self.random.seed(x)

    def _cjson_encode(self, *args: Any) -> bytes:
        if len(args) != 1:
            raise _Raise(b"bad argument #1 to 'encode' (expected 1 argument)", where=True)
        ok, text = self._encode(args[0])
        if not ok:
            raise _Raise(text if type(text) is bytes else b"cannot encode", where=True)
        return text  # type: ignore[no-any-return]

    def _cjson_decode(self, *args: Any) -> Any:
        if len(args) != 1:
            raise _Raise(b"bad argument #1 to 'decode' (expected 1 argument)", where=True)
        text = args[0]
        if type(text) in (int, float):
            text = b"%.14g" % text
        if type(text) is not bytes:
            raise _Raise(
                b"bad argument #1 to 'decode' (string expected, got %s)"
                % _lua_type_name(text).encode(),
                where=True,
            )
        try:
            obj = json.loads(text.decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as exc:
            raise _Raise(
                b"Expected value but found invalid token at character %d" % (exc.pos + 1),
                where=True,
            ) from None
        except (ValueError, RecursionError):
            raise _Raise(b"Found too many nested data structures", where=True) from None
        try:
            return self._lua_value(obj, 0)
        except RecursionError:
            raise _Raise(b"Found too many nested data structures", where=True) from None

    def _lua_value(self, o: Any, depth: int) -> Any:
        if depth > 1000:
            raise RecursionError
        if o is None:
            return self._null
        t = type(o)
        if t is str:
            return o.encode("utf-8", "surrogateescape")
        if t is int:
            return float(o) if abs(o) > 2**53 else o
        if t is list:
            return self._table([self._lua_value(x, depth + 1) for x in o])
        if t is dict:
            return self._table(
                {
                    k.encode("utf-8", "surrogateescape"): self._lua_value(v, depth + 1)
                    for k, v in o.items()
                }
            )
        return o


def _no_attributes(obj: Any, name: Any, setting: bool) -> Any:
    raise AttributeError("Python attributes are not available to scripts")


def _text(b: Any) -> str:
    text = b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)
    return text.replace("\r", " ").replace("\n", " ")


def _status(text: bytes) -> Any:
    from ._resp import Status

    return Status(text)


def _hashable(v: Any) -> Any:
    if type(v) is list:
        return tuple(_hashable(x) for x in v)
    if type(v) is dict:
        return tuple(v.items())
    if type(v) is set:
        return frozenset(v)
    return v


def _error_field(message: str) -> bytes:
    """The ``err`` of Redis's error table for ``message`` (``luaPushErrorBuff``):
    ``-CODE msg`` keeps its code, anything else gets ``ERR``; newlines at the end go."""
    if message.startswith("-"):
        space = message.find(" ")
        if space < 0:
            code, msg = "ERR", message[1:]
        else:
            code, msg = message[1:space], message[space + 1 :]
    else:
        code, msg = "ERR", message
    return f"{code} {msg.strip(chr(13) + chr(10))}".encode("utf-8", "surrogateescape")


class _Raise(Exception):  # noqa: N818 - a Lua error on its way through lupa, not a failure
    """Raised by a library function to raise ``value`` in the script: an error table, or
    (``where``) a message Lua prefixes with the script's position."""

    def __init__(self, value: Any, where: bool = False) -> None:
        super().__init__("script error")
        self.value = value
        self.where = where


def _unwrap(error: Any) -> tuple[Any, Any]:
    """The Lua error a Python exception stands for: (error table, None) or (None, message)."""
    if isinstance(error, _Raise):
        return (None, error.value) if error.where else (error.value, None)
    if isinstance(error, BaseException):
        text = f"Error running script: {type(error).__name__}: {error}"
        return None, text.encode("utf-8", "replace")
    return None, None


def _sha1hex(err: Callable[[bytes], Any], *args: Any) -> bytes:
    if len(args) != 1:
        raise _Raise(err(b"ERR wrong number of arguments"))
    a = args[0]
    if type(a) is bytes:
        return sha1hex(a)
    if type(a) is int or type(a) is float:
        return sha1hex(b"%.14g" % a)
    return sha1hex(b"")


def _error_table(table: Callable[..., Any], err: bytes) -> Any:
    return table({b"err": err})


def _log(err: Callable[[bytes], Any], *args: Any) -> None:
    """redis.log: checked, then dropped (a replica's log is not the place for a script's)."""
    if len(args) < 2:
        raise _Raise(err(b"ERR redis.log() requires two arguments or more."))
    level = args[0]
    if type(level) not in (int, float):
        raise _Raise(err(b"ERR First argument must be a number (log level)."))
    if not 0 <= level <= 3:
        raise _Raise(err(b"ERR Invalid debug level."))


def _set_repl(err: Callable[[bytes], Any], *args: Any) -> None:
    if len(args) != 1:
        raise _Raise(err(b"ERR redis.set_repl() requires one argument."))
    if type(args[0]) not in (int, float) or not 0 <= args[0] <= 3:
        raise _Raise(
            err(
                b"ERR Invalid replication flags. Use REPL_AOF, REPL_REPLICA, REPL_ALL or REPL_NONE."
            )
        )


def _replicate_commands(*args: Any) -> bool:
    return True


def _breakpoint(*args: Any) -> bool:
    return False


def _debug(*args: Any) -> None:
    return None


_MASK32: Final = 0xFFFFFFFF


def _tobit(x: Any) -> int:
    if type(x) is bytes:
        try:
            x = float(x)
        except ValueError:
            raise ValueError("bad argument (number expected, got string)") from None
    if type(x) is bool or not isinstance(x, (int, float)):
        raise ValueError(f"bad argument (number expected, got {_lua_type_name(x)})")
    if isinstance(x, float):
        if not math.isfinite(x):
            return 0
        x = round(x)  # LuaBitOp: x + 2^52 + 2^51, round half to even
    return int(x) & _MASK32


def _signed(n: int) -> int:
    n &= _MASK32
    return n - (1 << 32) if n >= 1 << 31 else n


def _lua_type_name(x: Any) -> str:
    if x is None:
        return "no value"
    if type(x) is bool:
        return "boolean"
    return lua51.lua_type(x) or "userdata"


_BIT_OPS: Final = (
    "tobit", "bnot", "band", "bor", "bxor", "lshift", "rshift", "arshift", "rol", "ror",
    "bswap", "tohex",
)  # fmt: skip


def _bit(op: str, *args: Any) -> Any:
    """LuaBitOp's ``bit.<op>`` on 32-bit integers."""
    if not args:
        raise _Raise(b"bad argument #1 to '%s' (number expected, got no value)" % op.encode(), True)
    a = []
    for i, x in enumerate(args):
        try:
            a.append(_tobit(x))
        except ValueError:
            raise _Raise(
                b"bad argument #%d to '%s' (number expected, got %s)"
                % (i + 1, op.encode(), _lua_type_name(x).encode()),
                True,
            ) from None
    x = a[0]
    if op == "tobit":
        return _signed(x)
    if op == "bnot":
        return _signed(~x)
    if op in ("band", "bor", "bxor"):
        r = x
        for y in a[1:]:
            r = r & y if op == "band" else r | y if op == "bor" else r ^ y
        return _signed(r)
    if op == "bswap":
        return _signed(int.from_bytes(x.to_bytes(4, "little"), "big"))
    if op == "tohex":
        n = _signed(a[1]) if len(a) > 1 else 8
        digits = f"{x:08X}" if n < 0 else f"{x:08x}"
        n = min(abs(n), 8)
        return digits[8 - n :].encode()
    if len(a) < 2:
        raise _Raise(b"bad argument #2 to '%s' (number expected, got no value)" % op.encode(), True)
    s = a[1] & 31
    if op == "lshift":
        return _signed(x << s)
    if op == "rshift":
        return _signed(x >> s)
    if op == "arshift":
        return _signed(_signed(x) >> s)
    if op == "rol":
        return _signed((x << s) | (x >> (32 - s)))
    return _signed((x >> s) | (x << (32 - s)))  # ror
