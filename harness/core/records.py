"""Result records: what a result file holds, typed, immutable, and checked when read.

Modelled on pyperf's Run/Benchmark: a record is built once, validated when it is read
(`Result.from_dict`) and written back (`Result.to_dict`) as the same JSON it came from, so
the checksum of a file written before these records existed still verifies.

The schema rule. `SCHEMA` (here, and nowhere else) is the major version a file declares
in its `schema` field. Within one version fields are only added, never renamed, removed
or given another meaning; so a reader ignores the fields it does not know (and keeps them:
they are written back unchanged, e.g. when a result becomes a baseline), and a change
that an older reader would misread needs a new major version, which an older reader
refuses with one line instead of guessing.

Nested parts whose content is the producer's business (the host fingerprint, a backend's
metadata, the resolved scenario, events, artifacts) stay plain mappings; what the
analysis reads by field (samples, the baseline's noise band) is a record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeGuard

from harness.core.errors import ResultError

SCHEMA = 1
DEFAULT_VARIANT = "default"
# A cell whose measured samples failed more often than this is not a figure to draw a
# conclusion from: its claims are "inconclusive: failures", and a regression gate flags it.
FAILURE_LIMIT = 0.10
REASON_CHARS = 160  # a failure's reason: the first line of its error, cut here

JsonObject = Mapping[str, Any]  # a record as read (runtimes.base.Json: any JSON value)


def checksum(doc: JsonObject) -> str:
    """sha256 of the canonical JSON of everything but the checksum itself."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def join_variant(cell_variant: str, sub: str | None) -> str:
    """The variant a sample records: the cell's variant, with the sub-variant a study
    measured within the sample appended ("network=none,target=tmpfs"), or the sub-variant
    alone when the cell's variant is the default one."""
    if not sub:
        return cell_variant
    return sub if cell_variant == DEFAULT_VARIANT else f"{cell_variant},{sub}"


# What results written before `writable_layer` was recorded say instead (ns, oci:*).
_LEGACY_UPPER = re.compile(r"\bupper on (tmpfs|disk)\b")


def writable_layer(meta: JsonObject) -> str | None:
    """Where a backend's instances' writes to their root filesystem land, from its
    metadata in a result: "disk" or "tmpfs" (in RAM); None where it is not recorded.

    `writable_layer` is recorded since plain `ns` (and oci:*) moved their writable layer
    from a tmpfs to disk. Results written before carry only the description
    `"rootfs": "overlay, upper on tmpfs"` (or "on disk", for ns:disk): it is read here,
    so an older `ns` result reads as "tmpfs", which it was. A result that has neither
    (a backend that records none, or an ns before it had a tmpfs mode) is None: unknown,
    never assumed."""
    v = meta.get("writable_layer")
    if isinstance(v, str) and v:
        return v
    m = _LEGACY_UPPER.search(str(meta.get("rootfs", "")))
    return m.group(1) if m else None


def failure_reason(error: str) -> str:
    """What a failed sample is counted under: the first line of its error, cut at
    REASON_CHARS (the tool output after it is kept in the failure's event and artifacts),
    so that the same failure in every round is one reason with a count."""
    first = next((line.strip() for line in error.splitlines() if line.strip()), "")
    first = first or "unknown error"
    return first if len(first) <= REASON_CHARS else first[: REASON_CHARS - 1] + "…"


# --- checks: each names the file and the field -------------------------------------------

def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "not a string"),
    "int": (_is_int, "not an integer"),
    "number": (_is_number, "not a number"),
    "bool": (lambda v: isinstance(v, bool), "not true or false"),
    "object": (lambda v: isinstance(v, dict), "not an object"),
    "list": (lambda v: isinstance(v, list), "not a list"),
}


def _field(data: JsonObject, key: str, kind: str, where: str, required: bool = False) -> Any:
    """data[key] checked to be of `kind`; None when absent (or null) and not required."""
    value = data.get(key)
    if value is None:
        if required:
            raise ResultError(f"{where}{key}: missing")
        return None
    ok, problem = _KINDS[kind]
    if not ok(value):
        raise ResultError(f"{where}{key}: {problem}")
    return value


def _objects(data: JsonObject, key: str, where: str) -> tuple[dict[str, Any], ...]:
    """A list of JSON objects (events, artifacts...), empty when absent."""
    items = _field(data, key, "list", where) or []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ResultError(f"{where}{key}[{i}]: not an object")
    return tuple(items)


def _unknown(data: JsonObject, known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "extra")


def _emit(record: object, names: tuple[str, ...]) -> dict[str, Any]:
    """Fields in order, leaving out the optional ones that are not set."""
    return {n: v for n in names if (v := getattr(record, n)) is not None}


# --- records ---------------------------------------------------------------------------

_VERSION_WORD = re.compile(r"\bversion:?\s+v?(\d[^\s,;]*)", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Component:
    """A part a backend runs on, and its version: the engine, the containerd and OCI
    runtime under it, QEMU, libvirt, the kernel. Every backend reports the same typed list
    (`runtimes.base.Availability.components`), recorded per backend in a result as
    `backends.<name>.components`; `bench history` annotates a move with the ones that
    changed between two runs."""

    name: str
    version: str

    @classmethod
    def parse(cls, name: str, text: str) -> Component:
        """From what a tool prints: "crun version 1.8.1\ncommit: ..." -> 1.8.1; text
        without "version N" is kept (first line, stripped)."""
        first = text.strip().splitlines()[0].strip() if text.strip() else "?"
        m = _VERSION_WORD.search(first)
        return cls(name, m.group(1) if m else first)

    @classmethod
    def from_dict(cls, data: object, where: str) -> Component:
        if not isinstance(data, dict):
            raise ResultError(f"{where}: not an object")
        return cls(_field(data, "name", "str", where + ".", True),
                   _field(data, "version", "str", where + ".", True))

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class Sample:
    """One figure of one sample of one cell (backend x variant) in one round.

    `instance` tells apart the instances of one sample (a density ramp's count), `copy`
    the identical copies of a cell in an A/A calibration run, `sub` the sub-variant a
    study measured within the sample (e.g. "target=tmpfs"); `variant` is the cell's
    variant joined with `sub` (see `join_variant`), as it always was on disk. Samples
    written before `sub` existed have none: their cell's variant cannot be told apart
    from the sub-variant, and `cell_variant` is then `variant` itself.
    """

    backend: str
    variant: str
    metric: str
    unit: str
    value: float  # an int stays an int: the checksum covers the JSON as written
    round: int
    instance: int | None = None
    copy: int | None = None
    sub: str | None = None
    # Fields of a newer writer; left out of the hash, so samples can go in sets.
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.sub is not None and self.variant != self.sub \
                and not self.variant.endswith("," + self.sub):
            raise ValueError(f"sub-variant {self.sub!r} is not part of variant "
                             f"{self.variant!r}")

    @classmethod
    def in_cell(cls, backend: str, cell_variant: str, metric: str, unit: str, value: float,
                round: int, *, sub: str | None = None, instance: int | None = None,
                copy: int | None = None, extra: Mapping[str, Any] | None = None) -> Sample:
        """A sample of the cell (backend, cell_variant), of sub-variant `sub` if any."""
        return cls(backend, join_variant(cell_variant, sub), metric, unit, value, round,
                   instance, copy, sub or None, extra or {})

    @property
    def cell_variant(self) -> str:
        """The variant of the cell that took the sample (without the sub-variant)."""
        if self.sub is None:
            return self.variant
        if self.variant == self.sub:
            return DEFAULT_VARIANT
        return self.variant[: -len(self.sub) - 1]

    @classmethod
    def from_dict(cls, data: object, where: str = "sample") -> Sample:
        """`where` names the sample in messages, e.g. "r.json: samples[3]"."""
        fast = _well_formed(data)
        if fast is not None:
            return fast
        if not isinstance(data, dict):
            raise ResultError(f"{where}: not an object")
        at = where + "."
        for key in ("backend", "variant", "metric", "unit", "value", "round"):
            if key not in data:
                raise ResultError(f"{at}{key}: missing")
        text = {k: _field(data, k, "str", at, True)
                for k in ("backend", "variant", "metric", "unit")}
        sub = _field(data, "sub", "str", at)
        try:
            return cls(**text, value=_field(data, "value", "number", at, True),
                       round=_field(data, "round", "int", at, True),
                       instance=_field(data, "instance", "int", at),
                       copy=_field(data, "copy", "int", at), sub=sub,
                       extra=_unknown(data, _SAMPLE_FIELDS))
        except ValueError as e:
            raise ResultError(f"{at}sub: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {**_emit(self, _SAMPLE_FIELDS), **self.extra}


_SAMPLE_FIELDS = _names(Sample)
_SAMPLE_KEYS = frozenset(_SAMPLE_FIELDS)


def _well_formed(data: object) -> Sample | None:
    """The sample, when `data` is one as cvbench writes it (every field there and of its
    type, none unknown), checked in one pass; None sends it through the per-field checks,
    which name what is wrong. Reading hundreds of files (bench history) is mostly this:
    the field-by-field path costs 4x more per sample."""
    if type(data) is not dict or not data.keys() <= _SAMPLE_KEYS:
        return None
    g = data.get
    b, v, m, u = g("backend"), g("variant"), g("metric"), g("unit")
    value, rnd, inst, copy, sub = g("value"), g("round"), g("instance"), g("copy"), g("sub")
    if not (type(b) is str and type(v) is str and type(m) is str and type(u) is str
            and type(value) in (int, float) and type(rnd) is int
            and (inst is None or type(inst) is int) and (copy is None or type(copy) is int)):
        return None
    if sub is None:
        # What the generated __init__ would do for these checked values, without its
        # per-field object.__setattr__ (frozen) calls.
        sample = object.__new__(Sample)
        sample.__dict__.update(backend=b, variant=v, metric=m, unit=u, value=value,
                               round=rnd, instance=inst, copy=copy, sub=None, extra={})
        return sample
    if type(sub) is not str:
        return None
    try:
        return Sample(b, v, m, u, value, rnd, inst, copy, sub)  # type: ignore[arg-type]
    except ValueError:  # a sub that is not part of the variant: let the checks say so
        return None


@dataclass(frozen=True)
class Noise:
    """The calibrated A/A spread of one cell's median from run to run (`bench calibrate`;
    see harness.stats.AASpread): `sigma` (sd of the log median) with `df` degrees of
    freedom is what `bench compare` turns into a noise band."""

    backend: str
    variant: str
    metric: str
    sigma: float
    df: int
    unit: str | None = None
    runs: int | None = None
    sigma_within: float | None = None
    sigma_between: float | None = None
    max_aa_within: float | None = None
    max_aa_cross: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.variant, self.metric)

    @classmethod
    def from_dict(cls, data: object, where: str) -> Noise:
        if not isinstance(data, dict):
            raise ResultError(f"{where}: not an object")
        at = where + "."
        num = {k: _field(data, k, "number", at) for k in
               ("sigma_within", "sigma_between", "max_aa_within", "max_aa_cross")}
        return cls(backend=_field(data, "backend", "str", at, True),
                   variant=_field(data, "variant", "str", at, True),
                   metric=_field(data, "metric", "str", at, True),
                   sigma=_field(data, "sigma", "number", at, True),
                   df=_field(data, "df", "int", at, True),
                   unit=_field(data, "unit", "str", at), runs=_field(data, "runs", "int", at),
                   **num, extra=_unknown(data, _NOISE_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        return {**_emit(self, _NOISE_FIELDS), **self.extra}


# The order the calibration has always written a noise record in.
_NOISE_FIELDS = ("backend", "variant", "metric", "unit", "runs", "sigma_within",
                 "sigma_between", "sigma", "df", "max_aa_within", "max_aa_cross")


@dataclass(frozen=True)
class Baseline:
    """The section that makes a result a baseline (harness.baseline): where its samples
    came from, and the host's calibrated noise band once `bench calibrate` ran."""

    created: str
    source: Mapping[str, Any]  # path, run_id and checksum of the result it was made from
    noise: tuple[Noise, ...] = ()
    calibration: Mapping[str, Any] = field(default_factory=dict)  # runs, run_ids
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: object, where: str) -> Baseline:
        if not isinstance(data, dict):
            raise ResultError(f"{where}: not an object")
        at = where + "."
        noise = _field(data, "noise", "list", at) or []
        return cls(created=_field(data, "created", "str", at, True),
                   source=_field(data, "source", "object", at, True),
                   noise=tuple(Noise.from_dict(r, f"{at}noise[{i}]")
                               for i, r in enumerate(noise)),
                   calibration=_field(data, "calibration", "object", at) or {},
                   extra=_unknown(data, _names(cls)))

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "source": dict(self.source),
                "noise": [n.to_dict() for n in self.noise],
                "calibration": dict(self.calibration), **self.extra}


@dataclass(frozen=True)
class Attempts:
    """How a cell's measured samples went (warmups are not samples): `tried` of them,
    `failed` of those failed, and why, as (reason, count), most common first. A sample
    that failed leaves no figure, so a median is over `ok` of `tried`; this is what says
    so (see `Result.attempts`)."""

    backend: str
    variant: str  # the cell's variant (a sub-variant's samples share their cell's count)
    tried: int
    failed: int
    reasons: tuple[tuple[str, int], ...] = ()
    copy: int | None = None

    @property
    def ok(self) -> int:
        return self.tried - self.failed

    @property
    def rate(self) -> float:
        """The share of the attempts that failed (0 when none was made)."""
        return self.failed / self.tried if self.tried else 0.0

    @property
    def reason(self) -> str:
        """The most common reason ("" when none failed)."""
        return self.reasons[0][0] if self.reasons else ""

    def __str__(self) -> str:
        return f"{self.ok} ok / {self.tried} tried"


def count_reasons(errors: list[str]) -> tuple[tuple[str, int], ...]:
    """(reason, count) of failed samples' errors, most common first (then by first seen)."""
    counts: dict[str, int] = {}
    for e in errors:
        r = failure_reason(e)
        counts[r] = counts.get(r, 0) + 1
    return tuple(sorted(counts.items(), key=lambda kv: -kv[1]))


def _cells(data: JsonObject, at: str) -> tuple[dict[str, Any], ...]:
    """The cells' entries, their counts checked (older files have only some of them)."""
    cells = _objects(data, "cells", at)
    for i, c in enumerate(cells):
        where = f"{at}cells[{i}]."
        for key in ("samples", "failures", "attempts", "warmup_failures"):
            _field(c, key, "int", where)
        reasons = _field(c, "reasons", "object", where) or {}
        for r, n in reasons.items():
            if not _is_int(n):
                raise ResultError(f"{where}reasons.{r}: not an integer")
    return cells


# Fields a run's journal header holds: what is known before the first sample.
HEADER = ("schema", "tool", "run_id", "created", "scenario", "scenario_toml", "host",
          "backends", "skipped", "image")
# Fields the end of a run adds (bench run's finalize).
ENDING = ("finished", "cells", "interrupted", "duration", "rounds", "supersedes")


@dataclass(frozen=True)
class Result:
    """One result file: a run's metadata, every sample, and what happened.

    `checksum` is None until `seal()`; a record read from a file carries the file's own,
    already verified.
    """

    schema: int
    tool: Mapping[str, Any]
    run_id: str
    scenario: Mapping[str, Any]  # the resolved scenario (harness.scenario.as_dict)
    host: Mapping[str, Any]  # the host fingerprint (harness.core.hostinfo)
    backends: Mapping[str, Mapping[str, Any]]  # backend -> its metadata and versions
    image: Mapping[str, Any]  # at least the rootfs digest every backend ran
    samples: tuple[Sample, ...]
    created: str | None = None
    scenario_toml: Mapping[str, Any] | None = None
    skipped: Mapping[str, str] | None = None  # backend -> why it did not run
    finished: str | None = None
    # per cell: status, samples (ok), failures, attempts, reasons ({reason: count}),
    # warmup_failures; `attempts()` reads them (and what older files hold instead)
    cells: tuple[Mapping[str, Any], ...] = ()
    interrupted: bool | None = None
    duration: float | None = None
    rounds: int | None = None
    supersedes: str | None = None  # file name of the interrupted result this one continues
    events: tuple[Mapping[str, Any], ...] = ()  # {"kind", "time", ...}
    artifacts: tuple[Mapping[str, Any], ...] = ()  # raw data of samples (fio's JSON...)
    baseline: Baseline | None = None
    checksum: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields of a newer writer

    @property
    def scenario_name(self) -> str | None:
        name = self.scenario.get("name")
        return name if isinstance(name, str) else None

    @property
    def host_id(self) -> str | None:
        hid = self.host.get("id")
        return hid if isinstance(hid, str) and hid else None

    @property
    def commit(self) -> str | None:
        """The cvbench commit that measured (None: unknown, e.g. an older file)."""
        c = self.tool.get("commit")
        return c if isinstance(c, str) and c else None

    @property
    def dirty(self) -> bool:
        """Whether that commit's tree had uncommitted changes."""
        return self.tool.get("dirty") is True

    def components(self, backend: str) -> tuple[Component, ...]:
        """The parts `backend` ran on, with versions; from the `versions` mapping in
        files written before `components` was recorded."""
        meta = self.backends.get(backend, {})
        if "components" in meta:  # checked when read
            return tuple(Component(c["name"], c["version"]) for c in meta["components"])
        versions = meta.get("versions")
        if not isinstance(versions, dict):
            return ()
        return tuple(Component.parse(str(k), str(v)) for k, v in versions.items())

    def writable_layer(self, backend: str) -> str | None:
        """Where `backend`'s writes to the root filesystem landed in this run (see the
        module's `writable_layer`)."""
        return writable_layer(self.backends.get(backend, {}))

    @property
    def image_digest(self) -> str:
        return str(self.image["digest"])

    def attempts(self) -> tuple[Attempts, ...]:
        """Per cell: its measured samples tried, failed and why. From the cell's own
        counts; a file written before they were recorded has its failures (which then
        counted failed warmups too) and the failures' events, which give the reasons."""
        out = []
        for c in self.cells:
            backend, variant, copy = c.get("backend"), c.get("variant"), c.get("copy")
            if not (isinstance(backend, str) and isinstance(variant, str)):
                continue
            ok, failed = int(c.get("samples") or 0), int(c.get("failures") or 0)
            if "attempts" in c:
                reasons = tuple((str(r), int(n)) for r, n in (c.get("reasons") or {}).items())
                out.append(Attempts(backend, variant, int(c["attempts"]), failed, reasons,
                                    copy))
                continue
            errors = [str(e.get("error", "")) for e in self.events
                      if e.get("kind") == "sample_failed" and e.get("backend") == backend
                      and e.get("variant") == variant and not e.get("warmup")]
            out.append(Attempts(backend, variant, ok + failed, failed,
                                count_reasons(errors), copy))
        return tuple(out)

    @classmethod
    def from_dict(cls, data: object, where: str = "result", *, sealed: bool = True
                  ) -> Result:
        """Check a document and build the record; every problem is a ResultError naming
        `where` (the file) and the field. `sealed`: the document must carry a checksum
        that matches its content (as every file does); a document still being assembled
        (a run's end) has none yet."""
        if not isinstance(data, dict):
            raise ResultError(f"{where}: not a result file (not a JSON object)")
        at = where + ": "
        schema = data.get("schema")
        if _is_int(schema) and schema > SCHEMA:
            raise ResultError(f"{at}schema: {schema} is newer than this cvbench reads "
                              f"({SCHEMA}); upgrade cvbench")
        if not _is_int(schema) or schema != SCHEMA:
            raise ResultError(f"{at}schema: unknown value {schema!r}")
        for key in ("tool", "run_id", "scenario", "host", "backends", "image", "samples"):
            if key not in data:
                raise ResultError(f"{at}{key}: missing")
        if sealed:
            if "checksum" not in data:
                raise ResultError(f"{at}checksum: missing")
            try:
                ok = checksum(data) == data["checksum"]
            except (TypeError, ValueError):  # NaN, or something JSON cannot hold
                ok = False
            if not ok:
                raise ResultError(f"{at}checksum: does not match the content (file "
                                  "corrupted or edited)")
        samples = _field(data, "samples", "list", at, True)
        image = data["image"]
        if not isinstance(image, dict) or not isinstance(image.get("digest"), str):
            raise ResultError(f"{at}image.digest: missing (a result without it is invalid)")
        backends = _field(data, "backends", "object", at, True)
        for name, meta in backends.items():
            if not isinstance(meta, dict):
                raise ResultError(f"{at}backends.{name}: not an object")
            for i, c in enumerate(_field(meta, "components", "list", f"{at}backends.{name}.")
                                  or ()):
                Component.from_dict(c, f"{at}backends.{name}.components[{i}]")
        section = data.get("baseline")
        return cls(
            schema=schema, tool=_field(data, "tool", "object", at, True),
            run_id=_field(data, "run_id", "str", at, True),
            scenario=_field(data, "scenario", "object", at, True),
            host=_field(data, "host", "object", at, True), backends=backends, image=image,
            samples=tuple(Sample.from_dict(s, f"{at}samples[{i}]")
                          for i, s in enumerate(samples)),
            created=_field(data, "created", "str", at),
            scenario_toml=_field(data, "scenario_toml", "object", at),
            skipped=_field(data, "skipped", "object", at),
            finished=_field(data, "finished", "str", at),
            cells=_cells(data, at),
            interrupted=_field(data, "interrupted", "bool", at),
            duration=_field(data, "duration", "number", at),
            rounds=_field(data, "rounds", "int", at),
            supersedes=_field(data, "supersedes", "str", at),
            events=_objects(data, "events", at), artifacts=_objects(data, "artifacts", at),
            baseline=None if section is None else Baseline.from_dict(section, f"{at}baseline"),
            checksum=_field(data, "checksum", "str", at) if sealed else None,
            extra=_unknown(data, _RESULT_FIELDS))

    def to_dict(self) -> dict[str, Any]:
        """The document as `bench run` writes it (same fields, same order); fields this
        version does not know come back as they were read. Events, artifacts and cells
        are always written (a document without them reads as empty ones)."""
        doc = _emit(self, HEADER) | _emit(self, ENDING)
        doc["cells"] = [dict(c) for c in self.cells]
        doc["samples"] = [s.to_dict() for s in self.samples]
        doc["events"] = [dict(e) for e in self.events]
        doc["artifacts"] = [dict(a) for a in self.artifacts]
        doc.update(self.extra)
        if self.baseline is not None:
            doc["baseline"] = self.baseline.to_dict()
        if self.checksum is not None:
            doc["checksum"] = self.checksum
        return doc

    def header(self) -> dict[str, Any]:
        """What a run's journal starts with: everything but the samples and what the end
        of the run adds (to continue an interrupted run under a new file)."""
        skip = {*ENDING, "samples", "events", "artifacts", "checksum"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def seal(self) -> Result:
        """The same record with the checksum of its content."""
        return replace(self, checksum=checksum(replace(self, checksum=None).to_dict()))


_RESULT_FIELDS = _names(Result)

