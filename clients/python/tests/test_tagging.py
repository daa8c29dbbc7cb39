"""tag, @watched, bound and bound_user put the right attributes on real SDK spans."""

import asyncio
import inspect

import fakelib
import pytest

from crosstalk_instrument import bound, bound_user, instance_id, origin_of, tag, watched


def next_line_site() -> str:
    """``module:function:line`` of the line after the caller's: the origin the kit should report."""
    frame = inspect.currentframe().f_back
    return f"{__name__}:{frame.f_code.co_name}:{frame.f_lineno + 1}"


@watched("agent_factory")
class Factory:
    def __init__(self, user=None):
        self.user = user

    def create_agent(self):
        return "agent"

    async def create_agent_async(self):
        await asyncio.sleep(0)
        return "agent"

    def _private(self):
        return "private"


@watched("ws_emitter", methods=["emit"])
class Emitter:
    def emit(self):
        return "sent"

    def other(self):
        return "other"


class SubFactory(Factory):
    def __init__(self):
        super().__init__(user="sub")


@watched("db_session")
class Session(fakelib.Base):
    pass


def test_tag_sets_id_and_origin_on_the_current_span(spans):
    obj = object.__new__(Factory)  # not constructed through the decorator: origin = first tag
    with spans.tracer.start_as_current_span("use"):
        origin = next_line_site()
        assert tag(obj, "agent_factory") is obj
    attrs = spans.finished()["use"]
    assert attrs["agent_factory.instance_id"] == instance_id(obj)
    assert attrs["agent_factory.origin"] == origin


def test_tag_on_a_non_recording_span_is_a_no_op(spans):
    obj = Factory()
    assert tag(obj, "agent_factory") is obj  # no current span: nothing to do, no error
    assert spans.finished() == {}


def test_watched_tags_public_methods_with_the_constructor_caller_as_origin(spans):
    origin = next_line_site()
    factory = Factory()
    with spans.tracer.start_as_current_span("sync"):
        factory.create_agent()
    with spans.tracer.start_as_current_span("private"):
        factory._private()
    attrs = spans.finished()
    assert attrs["sync"]["agent_factory.instance_id"] == instance_id(factory)
    assert attrs["sync"]["agent_factory.origin"] == origin
    assert "agent_factory.instance_id" not in attrs["private"]


def test_watched_async_methods_stay_coroutines_and_tag(spans):
    factory = Factory()
    assert inspect.iscoroutinefunction(Factory.create_agent_async)

    async def main():
        with spans.tracer.start_as_current_span("async"):
            return await factory.create_agent_async()

    assert asyncio.run(main()) == "agent"
    assert spans.finished()["async"]["agent_factory.instance_id"] == instance_id(factory)


def test_watched_named_methods_only(spans):
    emitter = Emitter()
    with spans.tracer.start_as_current_span("emit"):
        emitter.emit()
    with spans.tracer.start_as_current_span("other"):
        emitter.other()
    attrs = spans.finished()
    assert attrs["emit"]["websocket.emitter.id"] == instance_id(emitter)
    assert "websocket.emitter.origin" in attrs["emit"]
    assert "websocket.emitter.id" not in attrs["other"]


def test_watched_rejects_names_that_are_not_plain_methods():
    with pytest.raises(TypeError):

        @watched("x", methods=["missing"])
        class Nope:
            pass


def test_origin_steps_over_the_subclass_constructor_chain():
    origin = next_line_site()
    sub = SubFactory()
    assert origin_of(sub) == origin


def test_origin_steps_over_the_library_the_class_inherits_from():
    origin = next_line_site()
    session = fakelib.make(Session)  # the library's helper constructs it
    assert origin_of(session) == origin


def test_per_request_objects_never_share_an_id_on_spans(spans):
    for i in range(500):
        with spans.tracer.start_as_current_span(f"request-{i}"):
            Factory(user=f"user-{i % 2}").create_agent()
    ids = {a["agent_factory.instance_id"] for a in spans.finished().values()}
    assert len(ids) == 500


def test_bound_reaches_spans_started_inside_across_await_and_tasks(spans):
    session = Session()

    async def child():
        await asyncio.sleep(0)
        with spans.tracer.start_as_current_span("in-task"):
            pass

    async def main():
        with spans.tracer.start_as_current_span("outer"):
            with bound(session, "db_session"):
                await asyncio.sleep(0)
                with spans.tracer.start_as_current_span("after-await"):
                    pass
                await asyncio.create_task(child())
            with spans.tracer.start_as_current_span("after-block"):
                pass

    asyncio.run(main())
    attrs = spans.finished()
    sid = instance_id(session)
    for name in ("outer", "after-await", "in-task"):
        assert attrs[name]["db.session.instance_id"] == sid, name
        assert attrs[name]["db.session.origin"].startswith(f"{__name__}:"), name
    assert "db.session.instance_id" not in attrs["after-block"]


def test_bound_user_stamps_every_span_started_inside(spans):
    with spans.tracer.start_as_current_span("root"):
        with bound_user("alice", "acme"):
            with spans.tracer.start_as_current_span("child"):
                pass
        with spans.tracer.start_as_current_span("outside"):
            pass
    attrs = spans.finished()
    assert attrs["root"]["user.id"] == "alice"
    assert attrs["child"]["user.id"] == "alice"
    assert attrs["child"]["tenant.id"] == "acme"
    assert "user.id" not in attrs["outside"]
