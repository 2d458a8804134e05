"""Classes of plain fields (what @dataclass makes) without the dataclasses module.

Why: `cvbench-ns` (runtimes/ns/oci_cli.py) is a new interpreter for each call of an
engine, and `import dataclasses` brings inspect with it (ast, dis, tokenize...), while
each @dataclass compiles its methods anew at import: for the ten classes `create`
imports (ContainerConfig and the rest), a third of that call's CPU time. `record` makes
the same kind of class with generic methods, nothing compiled: the fields are the class
annotations in order, their defaults the class body's values (`field(default_factory=)`
for a fresh one per instance); __init__ (keywords or positions), __repr__, __eq__ on the
fields of the same class; `frozen` (the default): assignment refused, and __hash__ of
the fields. `replace` is dataclasses.replace for them (which works on them too, as do
fields, asdict and is_dataclass: a lazy `__dataclass_fields__`). mypy checks them as
dataclasses (typing.dataclass_transform).
"""

from __future__ import annotations

TYPE_CHECKING = False  # (typing's import is what this module saves the callers)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_kw: object) -> Callable[[T], T]:
        return lambda f: f


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (dataclasses' error of the same name)."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made for each instance (dataclasses.field's default_factory)."""
    return _Factory(default_factory)  # type: ignore[return-value]


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    names: tuple[str, ...] = cls.__record_fields__
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments "
                        f"but {len(args)} were given")
    values = dict(zip(names, args, strict=False))  # (fewer: the rest by keyword)
    for k, v in kwargs.items():
        if k not in names:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {k!r}")
        if k in values:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {k!r}")
        values[k] = v
    defaults: dict[str, Any] = cls.__record_defaults__
    for name in names:
        if name not in values:
            if name not in defaults:
                raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
            d = defaults[name]
            values[name] = d.make() if isinstance(d, _Factory) else d
    self.__dict__.update(values)  # (not setattr: a frozen one refuses it)


def _repr(self: Any) -> str:
    fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__record_fields__)
    return f"{type(self).__qualname__}({fields})"


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, n) for n in self.__record_fields__)


def _eq(self: Any, other: object) -> object:  # (bool, or NotImplemented)
    if type(other) is not type(self):
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _refuse(self: Any, name: str, value: object = None) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


class _DataclassFields:
    """`__dataclass_fields__`, made on first use: dataclasses.replace, fields, asdict and
    is_dataclass then take a record as the dataclass mypy checks it as (a
    dataclasses.replace that mypy accepts must not fail at run time). Nothing on
    cvbench-ns's path asks for it, so the dataclasses module is imported only by a
    caller that uses it anyway."""

    def __get__(self, obj: object, cls: type) -> dict[str, Any]:
        import dataclasses

        made: dict[str, Any] = {}
        for name in cls.__record_fields__:  # type: ignore[attr-defined]
            d = cls.__record_defaults__.get(name, dataclasses.MISSING)  # type: ignore[attr-defined]
            f: Any = dataclasses.field(default_factory=d.make) if isinstance(d, _Factory) \
                else dataclasses.field(default=d)
            f.name, f.type = name, cls.__annotations__.get(name)
            f._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # (private)
            made[name] = f
        return made


def _make(cls: type[T], frozen: bool) -> type[T]:
    if cls.__bases__ != (object,):  # (no inherited fields to merge: none is needed)
        raise TypeError(f"{cls.__name__}: a record derives from no other class")
    names = tuple(getattr(cls, "__annotations__", {}))
    defaults = {n: getattr(cls, n) for n in names if hasattr(cls, n)}
    for n, d in defaults.items():
        if isinstance(d, _Factory):
            delattr(cls, n)  # (the instance's own value, always set by __init__)
    seen_default = False
    for n in names:  # a field without a default after one with: as dataclasses refuses
        if n in defaults:
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: non-default field {n!r} after a default one")
    attrs: dict[str, Any] = {"__record_fields__": names, "__record_defaults__": defaults,
                             "__init__": _init, "__repr__": _repr, "__eq__": _eq,
                             "__dataclass_fields__": _DataclassFields()}
    if frozen:
        attrs.update(__setattr__=_refuse, __delattr__=_refuse, __hash__=_hash)
    else:
        attrs["__hash__"] = None  # (mutable and compared by value: unhashable)
    for k, v in attrs.items():
        setattr(cls, k, v)
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """A frozen record (@dataclass(frozen=True))."""
    return _make(cls, frozen=True)


@dataclass_transform(field_specifiers=(field,))
def mutable_record(cls: type[T]) -> type[T]:
    """A record whose fields may be assigned (@dataclass)."""
    return _make(cls, frozen=False)


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of the record `obj` with `changes` (dataclasses.replace)."""
    values = {n: getattr(obj, n) for n in type(obj).__record_fields__}  # type: ignore[attr-defined]
    return type(obj)(**{**values, **changes})


def fields(cls_or_obj: object) -> tuple[str, ...]:
    """The names of the record's fields, in order."""
    names: tuple[str, ...] = cls_or_obj.__record_fields__  # type: ignore[attr-defined]
    return names


def defaults(cls: type) -> dict[str, object]:
    """Field name -> its default, of the fields that have one (a factory's: made anew)."""
    given: dict[str, object] = cls.__record_defaults__  # type: ignore[attr-defined]
    return {n: d.make() if isinstance(d, _Factory) else d for n, d in given.items()}
