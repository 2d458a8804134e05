"""harness.core.record: the classes it makes behave as the dataclasses they stand in for
(each check is what @dataclass does with the same class body)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from harness.core.record import (
    FrozenInstanceError,
    defaults,
    field,
    fields,
    mutable_record,
    record,
    replace,
)


@record
class Point:
    x: int
    y: int = 2
    tags: tuple[str, ...] = ()


@mutable_record
class Box:
    name: str
    items: list[int] = field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class DPoint:
    x: int
    y: int = 2
    tags: tuple[str, ...] = ()


def test_construction_repr_eq_hash_as_a_dataclass() -> None:
    p, d = Point(1, tags=("a",)), DPoint(1, tags=("a",))
    assert repr(p) == repr(d).replace("DPoint", "Point")
    assert (p.x, p.y, p.tags) == (d.x, d.y, d.tags)
    assert p == Point(1, 2, ("a",)) and p != Point(1, 3, ("a",)) and p != d
    assert hash(p) == hash(Point(1, 2, ("a",)))
    assert fields(Point) == tuple(f.name for f in dataclasses.fields(DPoint))
    assert defaults(Point) == {"y": 2, "tags": ()}
    for bad in (lambda: Point(), lambda: Point(1, 2, (), 4), lambda: Point(1, z=3),  # type: ignore[call-arg]
                lambda: Point(1, x=2)):  # type: ignore[misc]
        with pytest.raises(TypeError):
            bad()


def test_frozen_refuses_assignment_and_replace_makes_a_copy() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y  # type: ignore[misc]
    q = replace(p, y=7)
    assert (q.x, q.y, p.y) == (1, 7, 2)
    with pytest.raises(TypeError):
        replace(p, z=1)


def test_pickle_and_copy_keep_the_values() -> None:
    p = Point(1, tags=("a",))
    assert pickle.loads(pickle.dumps(p, pickle.HIGHEST_PROTOCOL)) == p
    assert copy.deepcopy(p) == p and copy.copy(p) == p


def test_mutable_record_factory_per_instance_and_unhashable() -> None:
    a, b = Box("a"), Box("b")
    a.items.append(1)
    assert b.items == [] and a.items == [1]
    a.name = "c"
    assert a == Box("c", [1])
    with pytest.raises(TypeError):
        hash(a)


def test_a_record_of_a_field_without_default_after_a_default_is_refused() -> None:
    class Bad:
        x: int = 1
        y: int

    with pytest.raises(TypeError, match="non-default field 'y'"):
        record(Bad)


def test_the_dataclasses_module_takes_a_record() -> None:
    """mypy checks a record as a dataclass, so dataclasses.replace/fields/asdict on one
    pass the type check: they must work at run time too (and import nothing for a
    record nobody asks them of)."""
    import dataclasses

    from harness.core.record import field, record

    @record
    class R:
        a: int
        b: list[int] = field(default_factory=list)
        c: str = "x"

    r = R(1)
    assert dataclasses.is_dataclass(r)
    assert [f.name for f in dataclasses.fields(r)] == ["a", "b", "c"]
    assert dataclasses.replace(r, c="y") == R(1, [], "y")
    assert dataclasses.asdict(R(2, [3])) == {"a": 2, "b": [3], "c": "x"}
