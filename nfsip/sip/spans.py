"""Byte spans: half-open ``[start, end)`` offsets into ``SipMessage.raw``.

Kept in its own module so that :mod:`nfsip.sip.sdp` and :mod:`nfsip.sip.message`
can share it without an import cycle; re-exported by :mod:`nfsip.sip.message`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

__all__ = ["Record", "Span", "fast_ctor", "new_span"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Span:
    """Half-open byte offsets into ``SipMessage.raw``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        # Deliberately not ``__len__``: an empty span must not be falsy.
        return self.end - self.start

    def slice(self, data: bytes) -> bytes:
        """The bytes this span covers in ``data``."""
        return data[self.start : self.end]


def fast_ctor(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor for a frozen slots dataclass that skips ``__init__``.

    The generated ``__init__`` of a frozen dataclass goes through
    ``object.__setattr__`` for every field. Here the object is made as an
    instance of a twin class with the same slots and no frozen ``__setattr__``,
    its fields are stored as plain attributes, and then it becomes a ``cls``
    (``__class__`` assignment between two classes of the same layout, which
    changes nothing but the type). About a third of the cost of setting each
    slot through its descriptor (``Pinhole``: 0.52 -> 0.19 µs), which matters
    when a parse builds ~50 small objects per packet and a decision several
    pinholes. Every field must be passed (defaults are not applied); only for
    internal use by the parsers and the engine. Where the layouts do not
    match (a class with a ``__dict__`` or another base), the slots are set
    through their descriptors instead.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    twin = type(f"_{cls.__name__}Twin", cls.__bases__, {"__slots__": cls.__dict__.get("__slots__", ())})
    try:
        probe = object.__new__(twin)
        probe.__class__ = cls
    except TypeError:
        for name in names:
            ns["_set_" + name] = getattr(cls, name).__set__
        body = "".join(f"    _set_{name}(o, {name})\n" for name in names)
        src = f"def make({', '.join(names)}):\n    o = _new(_cls)\n{body}    return o\n"
    else:
        ns["_twin"] = twin
        body = "".join(f"    o.{name} = {name}\n" for name in names)
        src = f"def make({', '.join(names)}):\n    o = _new(_twin)\n{body}    o.__class__ = _cls\n    return o\n"
    exec(src, ns)  # same technique as dataclasses itself; static source
    make: Callable[..., _T] = ns["make"]
    make.__qualname__ = f"fast_ctor({cls.__name__})"
    return make


new_span: Callable[[int, int], Span] = fast_ctor(Span)


class Record:
    """Base of the parsed-value classes: value equality, hash and repr over ``_fields``.

    The parsers build these objects by setting their slots directly (about half
    the cost of calling a generated dataclass ``__init__``) and several fields
    are properties computed on first access (spans, parameters), so they are
    plain slotted classes rather than dataclasses. Treat them as immutable.
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _astuple(self) -> tuple[Any, ...]:
        return tuple([getattr(self, f) for f in self._fields])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._astuple() == other._astuple()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({inner})"
