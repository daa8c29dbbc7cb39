"""Putting instance ids (and the user) on spans: ``tag``, ``@watched``, ``bound`` and the processor.

crosstalk learns which user each object serves from spans that carry both: the user
(``user.id``, anywhere in the trace) and the object's id under the attribute its watch reads.
Three ways to get the id there, from least to most automatic:

* ``tag(obj, kind)`` sets it on the current span, once;
* ``@watched(kind)`` on a class tags the current span whenever a public method (or one of the
  named ones) is called, and records where each instance was constructed;
* ``with bound(obj, kind):`` makes every span *started* in that context carry it (a context
  variable read by :class:`CrosstalkSpanProcessor`, so it follows ``await`` and tasks created
  inside). ``bound_user`` does the same for the user.

Every tagged span also carries the creation site under the companion ``.origin`` attribute, which
crosstalk copies into the finding's evidence.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .ids import _identify, attribute_for, call_site, origin_attribute

__all__ = ["CrosstalkSpanProcessor", "bound", "bound_user", "tag", "watched"]

T = TypeVar("T")
C = TypeVar("C", bound=type)

#: Attribute pairs every span started in the current context receives.
_BINDINGS: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "crosstalk_bindings", default=()
)


def _pairs(
    obj: object, kind: str, skip: frozenset[str] = frozenset()
) -> tuple[tuple[str, str], ...]:
    attribute = attribute_for(kind)
    entry = _identify(obj, lambda: call_site(obj, skip))
    if entry.origin is None:
        return ((attribute, entry.ident),)
    return ((attribute, entry.ident), (origin_attribute(attribute), entry.origin))


def _set(span: trace.Span, pairs: Sequence[tuple[str, str]]) -> None:
    for key, value in pairs:
        span.set_attribute(key, value)


def tag(obj: T, kind: str, span: trace.Span | None = None) -> T:
    """Put ``obj``'s id (and creation site) on ``span``, by default the current span.

    Returns ``obj``, so ``self.db = tag(Session(), "db_session")`` records the line that made
    the session as its origin. Nothing is done for a span that is not recording.
    """
    target = span if span is not None else trace.get_current_span()
    if target.is_recording():
        _set(target, _pairs(obj, kind))
    else:
        _identify(obj, lambda: call_site(obj))  # still remember where it was first seen
    return obj


@contextmanager
def bound(obj: T, kind: str) -> Iterator[T]:
    """Within the block, every span started (also in tasks created there) carries ``obj``'s id.

    The current span is tagged too: the code entering the block is using the object.
    """
    pairs = _pairs(obj, kind)
    current = trace.get_current_span()
    if current.is_recording():
        _set(current, pairs)
    token = _BINDINGS.set(_BINDINGS.get() + pairs)
    try:
        yield obj
    finally:
        _BINDINGS.reset(token)


@contextmanager
def bound_user(
    user_id: str | None, tenant_id: str | None = None, *, attribute: str = "user.id"
) -> Iterator[None]:
    """Within the block, every span started carries the user (``user.id``, crosstalk's default
    ``identity.user_attributes``) and, if given, ``tenant.id``; the current span gets them too.
    """
    pairs: tuple[tuple[str, str], ...] = ()
    if user_id:
        pairs += ((attribute, str(user_id)),)
    if tenant_id:
        pairs += (("tenant.id", str(tenant_id)),)
    current = trace.get_current_span()
    if pairs and current.is_recording():
        _set(current, pairs)
    token = _BINDINGS.set(_BINDINGS.get() + pairs)
    try:
        yield
    finally:
        _BINDINGS.reset(token)


class CrosstalkSpanProcessor(SpanProcessor):
    """Stamps the ids and user bound with ``bound``/``bound_user`` on every span as it starts.

    Install once: ``tracer_provider.add_span_processor(CrosstalkSpanProcessor())``.
    """

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        for key, value in _BINDINGS.get():
            span.set_attribute(key, value)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def watched(
    kind: str, methods: Sequence[str] | None = None, *, origin_skip: Sequence[str] = ()
) -> Callable[[C], C]:
    """Class decorator: calling a method of an instance tags the current span with its id.

    ``methods``: the names to wrap; by default every public method (no leading ``_``), inherited
    ones included. Construction records the creation site: the caller of the constructor,
    stepping over the packages the class inherits from (so a SQLAlchemy session made by
    ``async_sessionmaker`` points at the application line that asked for it) and ``origin_skip``.
    """
    attribute = attribute_for(kind)

    def decorate(cls: C) -> C:
        skip = _inherited_packages(cls) | frozenset(origin_skip)
        _wrap_init(cls, kind, skip)
        for name in methods if methods is not None else _public_methods(cls):
            raw = inspect.getattr_static(cls, name, None)
            if not inspect.isfunction(raw):
                if methods is not None:
                    raise TypeError(f"@watched: {cls.__name__}.{name} is not a plain method")
                continue
            setattr(cls, name, _wrap_method(getattr(cls, name), kind, skip))
        cls.__crosstalk_attribute__ = attribute
        return cls

    return decorate


def _inherited_packages(cls: type) -> frozenset[str]:
    own = cls.__module__.partition(".")[0]
    packages = {base.__module__.partition(".")[0] for base in cls.__mro__[1:]}
    return frozenset(packages - {own, "builtins"})


def _public_methods(cls: type) -> list[str]:
    names = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        if inspect.isfunction(inspect.getattr_static(cls, name, None)):
            names.append(name)
    return names


def _wrap_init(cls: type, kind: str, skip: frozenset[str]) -> None:
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _identify(self, lambda: call_site(self, skip))
        original(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]


def _wrap_method(fn: Callable[..., Any], kind: str, skip: frozenset[str]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_method(self: Any, *args: Any, **kwargs: Any) -> Any:
            _tag_current(self, kind, skip)
            return await fn(self, *args, **kwargs)

        return async_method

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        _tag_current(self, kind, skip)
        return fn(self, *args, **kwargs)

    return method


def _tag_current(obj: object, kind: str, skip: frozenset[str]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        _set(span, _pairs(obj, kind, skip))
