"""Instance ids that are never reused, the attribute names crosstalk watches, and creation sites.

Why not ``id(obj)``: CPython hands the address of a collected object to the next object of the
same size, so a correct per-request factory reports the same ``id()`` for a later user and
crosstalk (policy ``exclusive``) raises a false finding. Here every object gets a number from a
process-wide counter the first time it is asked about, kept in a table keyed by address and
guarded by a weak reference: the entry goes when the object dies, and a later object at the same
address gets a fresh number. Ids carry a random per-process prefix (new after ``fork``), so two
processes never hand out the same id.

Objects that cannot be weakly referenced (``dict``, ``list``, classes with ``__slots__`` and no
``__weakref__``) are held strongly in a bounded table instead, so their address cannot be reused
while they are known; past the bound the oldest is forgotten (counted) and gets a new id if seen
again, which can hide a leak but never invents one.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from types import FrameType
from typing import Any

__all__ = ["attribute_for", "instance_id", "origin_attribute", "origin_of", "stats"]

#: Watch names of crosstalk's default config (and a few spellings) → the attribute it watches.
KNOWN_KINDS = {
    "agent_factory": "agent_factory.instance_id",
    "db_session": "db.session.instance_id",
    "db.session": "db.session.instance_id",
    "ws_emitter": "websocket.emitter.id",
    "websocket.emitter": "websocket.emitter.id",
    "session": "session.id",
}

#: Objects without weak-reference support held at most (their ids stay stable while held).
STRONG_CAPACITY = 4096

#: Longest creation site sent; crosstalk bounds it too.
MAX_ORIGIN_CHARS = 200


@lru_cache(maxsize=256)
def attribute_for(kind: str) -> str:
    """The span attribute that carries the id of an object of ``kind``.

    A watch name of crosstalk's default config (``agent_factory``, ``db_session``, ``ws_emitter``,
    ``session``) maps to the attribute that watch reads; a name already ending in
    ``.instance_id`` or ``.id`` is used as is; anything else gets ``.instance_id`` appended.
    """
    if kind in KNOWN_KINDS:
        return KNOWN_KINDS[kind]
    if not kind:
        raise ValueError("kind must not be empty")
    if kind.endswith(".instance_id") or kind.endswith(".id"):
        return kind
    return f"{kind}.instance_id"


@lru_cache(maxsize=256)
def origin_attribute(attribute: str) -> str:
    """The companion attribute naming where the object was made; crosstalk applies the same rule.

    ``.instance_id`` or else ``.id`` at the end is replaced by ``.origin``
    (``agent_factory.instance_id`` → ``agent_factory.origin``, ``websocket.emitter.id`` →
    ``websocket.emitter.origin``); any other name gets ``.origin`` appended.
    """
    for suffix in (".instance_id", ".id"):
        if attribute.endswith(suffix) and len(attribute) > len(suffix):
            return attribute[: -len(suffix)] + ".origin"
    return f"{attribute}.origin"


class _Entry:
    __slots__ = ("ident", "origin", "ref")

    def __init__(self, ref: Any, ident: str, origin: str | None) -> None:
        self.ref = ref  # a weakref.ref, or the object itself in the strong table
        self.ident = ident
        self.origin = origin


class _Registry:
    """Address → (weak reference, id, origin); one per process."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh: a new prefix, empty tables (after ``fork`` the child is a new process)."""
        self._lock = threading.Lock()
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)
        self._weak: dict[int, _Entry] = {}
        self._strong: OrderedDict[int, _Entry] = OrderedDict()
        self.strong_evicted = 0

    def lookup(self, obj: object, origin: Callable[[], str | None] | None) -> _Entry:
        """The entry of ``obj``, made on first sight with ``origin()`` as its creation site."""
        key = id(obj)
        with self._lock:
            entry = self._known(obj, key)
            if entry is not None and (entry.origin is not None or origin is None):
                return entry
        # Walking the stack for the origin happens outside the lock; a racing first sight of the
        # same object is settled below (the first entry stored wins).
        site = origin() if origin is not None else None
        with self._lock:
            return self._insert(obj, key, site)

    def _known(self, obj: object, key: int) -> _Entry | None:
        entry = self._weak.get(key)
        if entry is not None and entry.ref() is obj:
            return entry
        entry = self._strong.get(key)
        if entry is not None and entry.ref is obj:
            self._strong.move_to_end(key)
            return entry
        return None

    def _insert(self, obj: object, key: int, site: str | None) -> _Entry:
        entry = self._known(obj, key)
        if entry is not None:
            # Known by id only (instance_id() asked first): the first tag supplies the origin.
            if entry.origin is None:
                entry.origin = site
            return entry
        ident = f"{self._prefix}-{next(self._counter):x}"
        try:
            ref = weakref.ref(obj, self._forget_callback(key))
        except TypeError:
            entry = _Entry(obj, ident, site)
            self._strong[key] = entry
            while len(self._strong) > STRONG_CAPACITY:
                self._strong.popitem(last=False)
                self.strong_evicted += 1
            return entry
        entry = _Entry(ref, ident, site)
        self._weak[key] = entry
        return entry

    def _forget_callback(self, key: int) -> Callable[[weakref.ref], None]:
        def forget(ref: weakref.ref) -> None:
            # Runs while the object is being freed, before its address can be handed out again.
            with self._lock:
                entry = self._weak.get(key)
                if entry is not None and entry.ref is ref:
                    del self._weak[key]

        return forget

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "tracked": len(self._weak),
                "tracked_strong": len(self._strong),
                "strong_evicted": self.strong_evicted,
            }


_REGISTRY = _Registry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_REGISTRY.reset)


def instance_id(obj: object) -> str:
    """An id for ``obj`` that is unique in this process for its lifetime and never reused.

    Stable while the object lives; ``<12 hex digits of process prefix>-<counter>``.
    """
    return _REGISTRY.lookup(obj, None).ident


def origin_of(obj: object) -> str | None:
    """Where ``obj`` was made (``module:function:line``), if the kit saw it being made or tagged."""
    return _REGISTRY.lookup(obj, None).origin


def stats() -> dict[str, int]:
    """Objects currently tracked, and how many were forgotten from the bounded strong table."""
    return _REGISTRY.stats()


def _identify(obj: object, origin: Callable[[], str | None]) -> _Entry:
    return _REGISTRY.lookup(obj, origin)


_KIT_PACKAGE = __name__.rpartition(".")[0]


def call_site(obj: object, skip_packages: frozenset[str] = frozenset()) -> str | None:
    """``module:function:line`` of the nearest caller that is not the kit, not a constructor of
    ``obj`` itself (``__init__``/``__new__`` of a subclass calling up), and not in one of
    ``skip_packages`` (the libraries the object's class comes from, e.g. SQLAlchemy's
    sessionmaker): the line of application code that made or first used the object.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", "?"))
        if not _skipped(frame, module, obj, skip_packages):
            code = frame.f_code
            function = getattr(code, "co_qualname", code.co_name)
            return f"{module}:{function}:{frame.f_lineno}"[:MAX_ORIGIN_CHARS]
        frame = frame.f_back
    return None


def _skipped(frame: FrameType, module: str, obj: object, skip: frozenset[str]) -> bool:
    if module == _KIT_PACKAGE or module.startswith(_KIT_PACKAGE + "."):
        return True
    if module.partition(".")[0] in skip:
        return True
    code = frame.f_code
    if code.co_name in ("__init__", "__new__", "__post_init__") and code.co_argcount > 0:
        return frame.f_locals.get(code.co_varnames[0]) is obj
    return False
