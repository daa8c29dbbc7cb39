"""instance_id: unique for an object's life, never reused, distinct across processes; the
attribute naming rule matches crosstalk's default watches."""

import gc
import os
import re
import threading
from pathlib import Path

import pytest

from crosstalk_instrument import attribute_for, instance_id, origin_attribute, stats
from crosstalk_instrument import ids as ids_module


class Obj:
    pass


class Slotted:
    __slots__ = ("x",)


def test_same_object_same_id_and_live_objects_differ():
    a, b = Obj(), Obj()
    assert instance_id(a) == instance_id(a)
    assert instance_id(a) != instance_id(b)
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", instance_id(a))


def test_ids_are_never_reused_even_when_addresses_are():
    addresses, kit_ids = [], set()
    for _ in range(2000):
        obj = Obj()
        addresses.append(id(obj))
        kit_ids.add(instance_id(obj))
        del obj
        gc.collect(0)
    assert len(set(addresses)) < len(addresses), "CPython reused an address (the naive trap)"
    assert len(kit_ids) == 2000, "the kit gave every object its own id"


def test_dead_objects_leave_the_table():
    before = stats()["tracked"]
    objs = [Obj() for _ in range(100)]
    for o in objs:
        instance_id(o)
    assert stats()["tracked"] >= before + 100
    del objs, o
    gc.collect()
    assert stats()["tracked"] <= before


def test_objects_without_weakrefs_are_held_and_keep_their_id():
    d, s = {}, Slotted()
    assert instance_id(d) == instance_id(d)
    assert instance_id(s) == instance_id(s)
    assert instance_id(d) != instance_id(s)


def test_strong_table_is_bounded_and_counts_evictions(monkeypatch):
    monkeypatch.setattr(ids_module, "STRONG_CAPACITY", 8)
    before = stats()["strong_evicted"]
    held = [[] for _ in range(20)]
    first = instance_id(held[0])
    for lst in held:
        instance_id(lst)
    assert stats()["tracked_strong"] <= 8
    assert stats()["strong_evicted"] >= before + 12
    assert instance_id(held[0]) != first, "an evicted object is a new instance, never a merged one"


def test_concurrent_first_sight_gives_one_id_per_object():
    objs = [Obj() for _ in range(200)]
    seen: list[list[str]] = [[] for _ in range(4)]

    def worker(i):
        seen[i] = [instance_id(o) for o in objs]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[0] == seen[1] == seen[2] == seen[3]
    assert len(set(seen[0])) == 200


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_another_prefix():
    parent = instance_id(Obj()).split("-")[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, instance_id(Obj()).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode().split("-")[0]
    os.waitpid(pid, 0)
    assert child and child != parent


def test_naming_rule():
    assert attribute_for("agent_factory") == "agent_factory.instance_id"
    assert attribute_for("cache.entry") == "cache.entry.instance_id"
    assert attribute_for("cache.entry.id") == "cache.entry.id"
    assert origin_attribute("agent_factory.instance_id") == "agent_factory.origin"
    assert origin_attribute("websocket.emitter.id") == "websocket.emitter.origin"
    assert origin_attribute("session.id") == "session.origin"
    assert origin_attribute("emitter_key") == "emitter_key.origin"
    with pytest.raises(ValueError):
        attribute_for("")


def test_every_default_watch_of_crosstalk_is_a_known_kind():
    src = Path(__file__).resolve().parents[3] / "src"
    [default] = src.glob("**/default.toml")  # crosstalk's embedded default config
    text = default.read_text()
    watches = dict(re.findall(r'name\s*=\s*"([^"]+)"\s*\nattribute\s*=\s*"([^"]+)"', text))
    assert set(watches) >= {"agent_factory", "db_session", "ws_emitter", "session"}
    for name, attribute in watches.items():
        assert attribute_for(name) == attribute, name
