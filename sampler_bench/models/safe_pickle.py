"""Static checks of an untrusted pickle before anything is unpickled, and a reader for torch's
legacy storage format that never calls ``torch.load``.

``scan_pickle`` walks the opcode stream (reading only short arguments; long byte strings are
skipped, their declared lengths checked against what the file holds) and runs an abstract copy of
the pickle machine that tracks, for every stack item, its nesting depth and what it is (a scalar, a
container, a global, the result of calling a global). It refuses, before any object is built:

- any opcode outside a small allow-list (no ``INST``/``OBJ``, no out-of-band buffers, no ``EXT``,
  no text-mode numbers, no ``LONG4``);
- any global outside the caller's allow-list;
- nesting deeper than ``max_depth`` (the C unpickler and ``repr``/``hash`` recurse on it: a key
  nested 10^6 deep crashes the interpreter);
- dict keys and set items that are not scalars (hashing a shared tuple tree costs 2^depth);
- ``REDUCE``/``NEWOBJ`` on anything but a global, and ``BUILD`` (``__setstate__``) on anything but
  the caller's allowed types (a tensor's ``__setstate__`` can set hooks or ``set_()`` a view; a
  record could be rewritten after it was checked);
- declared lengths beyond the end of the file, and more than ``max_bytes`` of byte strings.

``load_legacy_storage`` parses the bytes of ``torch.storage._load_from_bytes`` (what
``torch.save(storage, _use_new_zipfile_serialization=False)`` writes: five small pickles, then the
raw data with its element count) with the same checks. The data is taken from the file's own bytes,
so nothing larger than the file is ever allocated; zip archives (and their compressed records) are
refused outright.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from dataclasses import dataclass

import torch


class PickleRefused(Exception):
    """The pickle is refused; the message is one short line, safe to print."""


def short_repr(v, limit: int = 40) -> str:
    """A bounded, escape-free description of an untrusted value (no recursion, no raw control chars)."""
    if isinstance(v, (str, bytes, int, float, bool)) or v is None:
        r = repr(v) if not isinstance(v, int) or v.bit_length() < 200 else f"<int of {v.bit_length()} bits>"
        return r if len(r) <= limit else r[: limit - 3] + "..."
    return f"<{type(v).__name__}>"


@dataclass(frozen=True)
class _Item:
    depth: int  # 0: scalar, 1 + deepest child otherwise
    kind: str  # "scalar", "str", "container", "global", "obj", "mark"
    value: object = None  # str value (short strings), global / callable name


_SCALAR = _Item(0, "scalar")
# opcode name -> number of bytes of its length prefix (data skipped, not read)
_BYTES = {"SHORT_BINBYTES": 1, "BINBYTES": 4, "BINBYTES8": 8}
_UNICODE = {"SHORT_BINUNICODE": 1, "BINUNICODE": 4, "BINUNICODE8": 8}
_FIXED_SCALARS = {"NONE": 0, "NEWTRUE": 0, "NEWFALSE": 0, "BININT": 4, "BININT1": 1, "BININT2": 2, "BINFLOAT": 8}
_EMPTY = {"EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET"}
_MEMO_IDX = {"BINPUT": 1, "LONG_BINPUT": 4, "BINGET": 1, "LONG_BINGET": 4}


def scan_pickle(f, *, allowed_globals: set[tuple[str, str]], build_targets: set[str] = frozenset(),
                max_depth: int = 64, max_bytes: int | None = None, allow_persid: bool = False,
                protocols: tuple[int, ...] = (2, 3, 4, 5)) -> int:
    """Check one pickle from the binary file ``f`` (positioned at its start) without unpickling it.

    Leaves ``f`` just after the pickle's STOP and returns the total length of its byte strings."""
    start = f.seek(0, io.SEEK_CUR)
    end = f.seek(0, io.SEEK_END)
    f.seek(start)
    stack: list[_Item] = []
    marks: list[int] = []
    memo: dict[int, _Item] = {}
    total_bytes = 0

    def read(n: int) -> bytes:
        if n > end - f.tell():
            raise PickleRefused("a length beyond the end of the file (truncated or forged)")
        b = f.read(n)
        if len(b) != n:
            raise PickleRefused("a length beyond the end of the file (truncated or forged)")
        return b

    def uint(n: int) -> int:
        return int.from_bytes(read(n), "little")

    def pop(k: int = 1) -> list[_Item]:
        base = marks[-1] if marks else 0
        if len(stack) - k < base:
            raise PickleRefused("a malformed pickle (stack underflow)")
        out = stack[len(stack) - k:]
        del stack[len(stack) - k:]
        return out

    def pop_mark() -> list[_Item]:
        if not marks:
            raise PickleRefused("a malformed pickle (no MARK)")
        base = marks.pop()
        out = stack[base:]
        del stack[base:]
        return out

    def push(item: _Item) -> None:
        if item.depth > max_depth:
            raise PickleRefused(f"data nested more than {max_depth} levels deep")
        stack.append(item)

    def container(children) -> _Item:
        return _Item(1 + max((c.depth for c in children), default=0), "container")

    def top() -> _Item:
        if len(stack) <= (marks[-1] if marks else 0):
            raise PickleRefused("a malformed pickle (stack underflow)")
        return stack[-1]

    def grow(children) -> None:
        t = top()
        if t.kind not in ("container", "obj"):
            raise PickleRefused("items added to something that is not a container")
        stack[-1] = _Item(max(t.depth, 1 + max((c.depth for c in children), default=0)), t.kind, t.value)
        if stack[-1].depth > max_depth:
            raise PickleRefused(f"data nested more than {max_depth} levels deep")

    def keys_scalar(items) -> None:
        if any(k.kind not in ("scalar", "str") for k in items):
            raise PickleRefused("a dict key or set item that is not a plain value")

    while True:
        code = f.read(1)
        if not code:
            raise PickleRefused("a truncated pickle (no STOP)")
        op = pickletools.code2op.get(code.decode("latin-1"))
        name = op.name if op else f"0x{code[0]:02x}"
        if name == "PROTO":
            p = uint(1)
            if p not in protocols:
                raise PickleRefused(f"pickle protocol {p}")
        elif name == "FRAME":
            if uint(8) > end - f.tell():
                raise PickleRefused("a length beyond the end of the file (truncated or forged)")
        elif name == "STOP":
            if len(stack) != 1 or marks:
                raise PickleRefused("a malformed pickle (unbalanced stack at STOP)")
            return total_bytes
        elif name in _FIXED_SCALARS:
            read(_FIXED_SCALARS[name])
            push(_SCALAR)
        elif name == "LONG1":
            read(uint(1))
            push(_SCALAR)
        elif name in _UNICODE:
            n = uint(_UNICODE[name])
            if n <= 256:
                try:
                    push(_Item(0, "str", read(n).decode("utf-8")))
                except UnicodeDecodeError:
                    raise PickleRefused("malformed UTF-8 text") from None
            else:  # long text (module sources): skipped, never decoded here
                if n > end - f.tell():
                    raise PickleRefused("a length beyond the end of the file (truncated or forged)")
                f.seek(n, io.SEEK_CUR)
                push(_Item(0, "str"))
        elif name in _BYTES:
            n = uint(_BYTES[name])
            if n > end - f.tell():
                raise PickleRefused("a length beyond the end of the file (truncated or forged)")
            f.seek(n, io.SEEK_CUR)
            total_bytes += n
            if max_bytes is not None and total_bytes > max_bytes:
                raise PickleRefused(f"more than {max_bytes} bytes of data")
            push(_SCALAR)
        elif name in _EMPTY:
            push(_Item(1, "container"))
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("TUPLE", "LIST"):
            push(container(pop_mark()))
        elif name in ("DICT", "FROZENSET"):
            items = pop_mark()
            keys_scalar(items[0::2] if name == "DICT" else items)
            push(container(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            push(container(pop(int(name[-1]))))
        elif name == "APPEND":
            grow(pop(1))
        elif name == "APPENDS":
            grow(pop_mark())
        elif name == "SETITEM":
            k, v = pop(2)
            keys_scalar([k])
            grow([k, v])
        elif name == "SETITEMS":
            items = pop_mark()
            if len(items) % 2:
                raise PickleRefused("a malformed pickle (odd SETITEMS)")
            keys_scalar(items[0::2])
            grow(items)
        elif name == "ADDITEMS":
            items = pop_mark()
            keys_scalar(items)
            grow(items)
        elif name in ("STACK_GLOBAL", "GLOBAL"):
            if name == "GLOBAL":
                mod, nm = _text_line(f, end), _text_line(f, end)
            else:
                m, n_ = pop(2)
                if m.kind != "str" or n_.kind != "str" or m.value is None or n_.value is None:
                    raise PickleRefused("a global named by something other than short text")
                mod, nm = m.value, n_.value
            if (mod, nm) not in allowed_globals:
                raise PickleRefused(f"the global {short_repr(mod, 60)[1:-1]}.{short_repr(nm, 60)[1:-1]} is not allowed")
            push(_Item(0, "global", f"{mod}.{nm}"))
        elif name == "REDUCE":
            fn, args = pop(2)
            if fn.kind != "global" or args.kind != "container":
                raise PickleRefused("a call of something that is not an allowed global")
            push(_Item(1 + args.depth, "obj", fn.value))
        elif name == "NEWOBJ":
            cls, args = pop(2)
            if cls.kind != "global" or args.kind != "container":
                raise PickleRefused("an object of something that is not an allowed global")
            push(_Item(1 + args.depth, "obj", cls.value))
        elif name == "BUILD":
            (state,) = pop(1)
            t = top()
            if t.kind != "obj" or t.value not in build_targets:
                what = t.value if t.kind in ("obj", "global") else t.kind
                raise PickleRefused(f"setting the state (BUILD) of {short_repr(what, 60)}")
            grow([state])
        elif name == "BINPERSID" and allow_persid:
            (pid,) = pop(1)
            push(_Item(1 + pid.depth, "obj", "persistent"))
        elif name == "MEMOIZE":
            memo[len(memo)] = top()
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[uint(_MEMO_IDX[name])] = top()
        elif name in ("BINGET", "LONG_BINGET"):
            idx = uint(_MEMO_IDX[name])
            if idx not in memo:
                raise PickleRefused("a malformed pickle (memo key missing)")
            push(memo[idx])
        elif name == "POP":
            pop(1)
        elif name == "POP_MARK":
            pop_mark()
        else:
            raise PickleRefused(f"the pickle opcode {name}" + (" (a persistent id)" if "PERSID" in name else ""))


def _text_line(f, end: int, limit: int = 256) -> str:
    b = f.readline(limit + 1)
    if not b.endswith(b"\n"):
        raise PickleRefused("a malformed global name")
    try:
        return b[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise PickleRefused("a malformed global name") from None


# ---------------------------------------------------------------------------------------------
# torch's legacy storage format (the payload of torch.storage._load_from_bytes)
# ---------------------------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
                  "BFloat16Storage": torch.bfloat16}


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class StorageRecord:
    """A flat CPU tensor holding one storage's elements; immutable from the pickle's side."""

    __slots__ = ("dtype", "flat")

    def __init__(self, dtype, flat):
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "flat", flat)

    def __setattr__(self, *_):
        raise PickleRefused("the file tries to modify a storage")

    def __setstate__(self, _state):
        raise PickleRefused("the file tries to modify a storage")


class _StorageUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.refs: list[tuple] = []

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        raise PickleRefused(f"the global {short_repr(module)[1:-1]}.{short_repr(name)[1:-1]} in a tensor storage")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and pid[3] == "cpu" and isinstance(pid[4], int) and pid[4] >= 0 and pid[5] is None):
            raise PickleRefused("a malformed storage record in a tensor storage")
        self.refs.append(pid)
        return pid


_STORAGE_GLOBALS = {("torch", n) for n in STORAGE_DTYPES}


def _small_pickle(f, **scan):
    pos = f.tell()
    scan_pickle(f, allowed_globals=scan.pop("allowed_globals", set()), max_depth=8, max_bytes=0, **scan)
    f.seek(pos)
    u = _StorageUnpickler(f)
    return u.load(), u.refs


def load_legacy_storage(b) -> StorageRecord:
    """Parse ``torch.save(storage, _use_new_zipfile_serialization=False)`` bytes into a StorageRecord."""
    if not isinstance(b, (bytes, bytearray)):
        raise PickleRefused("a tensor storage that is not bytes")
    if bytes(b[:2]) == b"PK":
        raise PickleRefused("a tensor storage in zip format (EDM stores the legacy format; compressed records are never read)")
    f = io.BytesIO(b)
    try:
        magic, _ = _small_pickle(f)
        version, _ = _small_pickle(f)
        if magic != LEGACY_MAGIC or version != LEGACY_PROTOCOL:
            raise PickleRefused("a tensor storage that is not in torch's legacy format")
        sys_info, _ = _small_pickle(f)
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise PickleRefused("a big-endian or malformed tensor storage header")
        obj, refs = _small_pickle(f, allowed_globals=_STORAGE_GLOBALS, allow_persid=True)
        keys, _ = _small_pickle(f)
    except PickleRefused:
        raise
    except Exception as exc:  # noqa: BLE001 -- malformed small pickles of any kind
        raise PickleRefused(f"a malformed tensor storage ({type(exc).__name__})") from None
    if len(refs) != 1 or obj is not refs[0] or keys != [refs[0][2]]:
        raise PickleRefused("a tensor storage record that does not hold exactly one storage")
    dtype, numel = refs[0][1].dtype, refs[0][4]
    head = f.read(8)
    if len(head) != 8 or struct.unpack("<q", head)[0] != numel:
        raise PickleRefused("a tensor storage whose element count does not match its header")
    itemsize = torch.empty((), dtype=dtype).element_size()
    rest = len(b) - f.tell()
    if rest != numel * itemsize:
        raise PickleRefused(f"a tensor storage declaring {numel} elements but holding {rest} bytes")
    data = bytearray(memoryview(b)[f.tell():])
    flat = torch.frombuffer(data, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
    return StorageRecord(dtype, flat)
