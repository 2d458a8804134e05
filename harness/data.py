"""What every table and chart draws from: the samples frame, enriched once.

`harness.results.frame()` gives one row per sample. A report also needs, per row:

- `kind` — what the backend *is* (`process`, `container`, `vm`), read from the backend's
  metadata in the result (`"kind"` key). Nothing here knows a backend by name: a backend
  whose metadata says nothing is `unknown` (a VM is recognised by its `accel` key, which
  only hypervisor backends record), and the claims that need a kind leave it out.
- `emulated` — a VM without hardware acceleration (metadata `emulated: true` or
  `accel: tcg`), or any cell of a host that is itself emulated (the sample's own
  flag): its timings say little about KVM, so every chart and table marks it.
- `writable_layer` — where the backend's writes to the root filesystem landed in that run,
  "disk" or "tmpfs" ("" when not recorded; `harness.core.records.writable_layer`, which
  reads older results too): a cell in RAM is marked "(writable layer in RAM)" in every
  chart and table (`in_ram`), and never compared with a cell of the same name on disk
  without saying so.
- `not_applied` — the parts of the spec the backend ignores, from its metadata
  ("limits,mounts,network"; "" when it applies all): `applied` reads it, so a backend
  that applies no limit is shown as such, never as an enforced limit or a zero.
- `cell_variant`, `tried`, `failed`, `reason` — the measured samples of the cell the row
  comes from (`harness.results.with_attempts`): a sample that failed has no row, so these
  say over how many of how many tried a figure is; `tally` reads them.
- `dataset` — results are grouped by host fingerprint, so two hosts are put side by side;
  the runs of different studies on one host form one dataset (labelled with their date,
  or their first and last dates). Only when a study was run more than once on a host are
  its runs split by date (two days side by side), and by time within one day.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.core.records import writable_layer
from harness.core.units import format_size
from harness.results import ATTEMPT_COLUMNS, FAILURE_LIMIT, Loaded, with_attempts

KINDS = ("process", "container", "vm", "unknown")  # order of presentation
DEFAULT_VARIANT = "default"
RAM_MARK = "(writable layer in RAM)"
# Keys of a variant that name the storage target of an I/O cell, in order of preference.
TARGET_KEYS = ("target", "storage", "io.target", "mount")


def backend_kind(meta: Mapping[str, Any]) -> str:
    kind = meta.get("kind")
    if isinstance(kind, str) and kind in KINDS:
        return kind
    if "accel" in meta:  # only hypervisor backends say how their guests are accelerated
        return "vm"
    return "unknown"


def is_emulated(meta: Mapping[str, Any]) -> bool:
    return bool(meta.get("emulated")) or str(meta.get("accel", "")).lower() == "tcg"


def applied(not_applied: str, part: str) -> bool:
    """Whether a backend applies `part` ("limits.cpus", "network.host") given its
    `not_applied` column: neither the part nor any part above it ("limits") is listed."""
    listed = set(not_applied.split(","))
    pieces = part.split(".")
    return not any(".".join(pieces[:i]) in listed for i in range(1, len(pieces) + 1))


def backend_meta(docs: Iterable[Loaded]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(run id, backend) -> the backend's metadata as recorded in that run."""
    return {(doc.run_id, b): meta for _, doc in docs for b, meta in doc.backends.items()}


def latest(docs: Sequence[Loaded]) -> list[Loaded]:
    """The newest result of each scenario per host (by fingerprint), in the given order:
    one run of each study per machine, the picture a results directory gives today."""
    newest: dict[tuple[str, str], Loaded] = {}
    for item in docs:
        _, doc = item
        key = (str(doc.host.get("id")), str(doc.scenario_name))
        if key not in newest or _when(doc) > _when(newest[key][1]):
            newest[key] = item
    keep = {id(x) for x in newest.values()}
    return [x for x in docs if id(x) in keep]


def _when(doc: Any) -> pd.Timestamp:
    t = pd.to_datetime(doc.created, utc=True, errors="coerce")
    return pd.Timestamp.min.tz_localize("UTC") if pd.isna(t) else t


def enrich(df: pd.DataFrame, docs: Sequence[Loaded]) -> pd.DataFrame:
    """The frame with `kind`, `emulated`, `writable_layer`, `not_applied`, the cell's
    attempts, `dataset`, `date`; a copy, rows unchanged."""
    meta = backend_meta(docs)
    out = with_attempts(df, docs)
    keys = list(zip(out["run_id"].astype(str), out["backend"].astype(str), strict=True))
    out["kind"] = [backend_kind(meta.get(k, {})) for k in keys]
    out["writable_layer"] = [writable_layer(meta.get(k, {})) or "" for k in keys]
    out["not_applied"] = [",".join(sorted(meta.get(k, {}).get("not_applied") or ()))
                          for k in keys]
    out["emulated"] = pd.Series([is_emulated(meta.get(k, {})) or bool(e)
                                 for k, e in zip(keys, out["emulated"], strict=True)],
                                index=out.index, dtype=bool)
    created = pd.to_datetime(out["created"], utc=True, errors="coerce")
    out["date"] = created.dt.strftime("%Y-%m-%d").fillna("undated")
    out["dataset"] = _datasets(out, created)
    return out


def _datasets(df: pd.DataFrame, created: pd.Series) -> pd.Series:
    runs = df.assign(_created=created).drop_duplicates("run_id")
    host = runs["host"].fillna("?").astype(str)
    hid = runs["host_id"].fillna("?").astype(str)
    # Two machines with one hostname are still two hosts: add the fingerprint then.
    clash = runs.groupby(host)["host_id"].transform("nunique") > 1
    name = host.where(~clash, host + " (" + hid.str[:6] + ")")
    # A study run twice on a host: its runs are compared, so each day is a dataset.
    by_day = runs.groupby([hid, runs["scenario"]])["run_id"].transform("count") > 1
    by_day = by_day.groupby(hid).transform("any")
    dates = runs.groupby(hid)["date"].agg(_span)
    label = name + " " + runs["date"].where(by_day, hid.map(dates))
    # The same study twice on one host and day: tell the runs apart by time.
    twice = runs.groupby([hid, runs["date"], runs["scenario"]])["run_id"].transform("count") > 1
    when = runs["_created"].dt.strftime("%H:%M").fillna("")
    label = label.where(~twice, label + " " + when + " #" + runs["run_id"].astype(str).str[:4])
    by_run = dict(zip(runs["run_id"], label, strict=True))
    return df["run_id"].map(by_run)


def _span(dates: pd.Series) -> str:
    """"2026-01-10", or "2026-01-10…2026-01-12" for runs of several days."""
    days = sorted(set(dates))
    return days[0] if len(days) == 1 else f"{days[0]}…{days[-1]}"


def datasets(df: pd.DataFrame) -> list[str]:
    """Dataset labels, oldest first."""
    if df.empty:
        return []
    first = df.groupby("dataset")["created"].min().sort_values(kind="stable")
    return [str(d) for d in first.index]


def in_ram(rows: pd.DataFrame) -> bool:
    """Whether any of these rows (of an enriched frame) had its writable layer in RAM."""
    return "writable_layer" in rows.columns and bool((rows["writable_layer"] == "tmpfs").any())


def backend_order(df: pd.DataFrame) -> list[str]:
    """One order for every chart and table: by kind (process, containers, VMs), then name."""
    kinds = df.drop_duplicates("backend").set_index("backend")["kind"]
    return sorted((str(b) for b in kinds.index),
                  key=lambda b: (KINDS.index(str(kinds[b])), b))


def in_order(t: pd.DataFrame, df: pd.DataFrame, then: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of a table with backend, variant and dataset columns in the report's order
    (the order of `cells`: backend by kind, the default variant first, datasets oldest
    first), then by `then`."""
    if t.empty:
        return t
    rank = {b: i for i, b in enumerate(backend_order(df))}
    drank = {d: i for i, d in enumerate(datasets(df))}
    keys = t.assign(_b=t["backend"].map(lambda b: rank.get(b, len(rank))),
                    _v=t["variant"] != DEFAULT_VARIANT,
                    _d=t["dataset"].map(lambda d: drank.get(d, len(drank))))
    return (keys.sort_values(["_b", "backend", "_v", "variant", "_d", *then], kind="stable")
            .drop(columns=["_b", "_v", "_d"]))


def parse_variant(variant: str) -> dict[str, str]:
    """"network=bridge,target=volume" -> {"network": "bridge", "target": "volume"}."""
    if variant == DEFAULT_VARIANT or not variant:
        return {}
    out: dict[str, str] = {}
    for part in variant.split(","):
        key, eq, value = part.partition("=")
        out[key.strip() if eq else "variant"] = value.strip() if eq else key.strip()
    return out


def limit_of(variant: str) -> tuple[str, float] | None:
    """The limit a limits sub-variant asked: "limits.cpus=0.5" -> ("cpus", 0.5)."""
    for key, value in parse_variant(variant).items():
        if key.startswith("limits."):
            try:
                return key.removeprefix("limits."), float(value)
            except ValueError:
                return None
    return None


def limit_name(resource: str, asked: float) -> str:
    """"cpus 0.5", "memory 64.0 MiB": a limit as the report names it."""
    return f"{resource} {format_size(asked) if resource == 'memory' else f'{asked:g}'}"


def short_variant(variant: str) -> str:
    """Values only, for labels: "network=bridge,target=volume" -> "bridge, volume"."""
    return ", ".join(parse_variant(variant).values())


def _axis_key(parts: Mapping[str, str], axis: str) -> str | None:
    """The key of `parts` that carries `axis`: "target" is any of TARGET_KEYS (or a bare
    value), another axis is its own key ("network")."""
    keys = (*TARGET_KEYS, "variant") if axis == "target" else (axis,)
    return next((k for k in keys if k in parts), None)


def axis_of(variant: str, axis: str = "target") -> str | None:
    """The value of one axis of a variant: its storage target, its network mode, …"""
    parts = parse_variant(variant)
    key = _axis_key(parts, axis)
    return None if key is None else parts[key]


def without_axis(variant: str, axis: str = "target") -> str:
    """The variant with one axis removed: what two cells compared along it must share."""
    parts = parse_variant(variant)
    key = _axis_key(parts, axis)
    if key is not None:
        parts.pop(key)
    return ",".join(f"{k}={v}" for k, v in parts.items()) or DEFAULT_VARIANT


@dataclass(frozen=True)
class Tally:
    """The measured samples behind a cell's figures: `ok` of `tried`, and the most common
    reason of the failures."""

    ok: int
    tried: int
    reason: str = ""

    @property
    def failed(self) -> int:
        return self.tried - self.ok

    @property
    def rate(self) -> float:
        return self.failed / self.tried if self.tried else 0.0

    @property
    def too_many(self) -> bool:
        """More failures than a figure can stand for (FAILURE_LIMIT)."""
        return self.rate > FAILURE_LIMIT

    def why(self, who: str) -> str:
        """"ns: 4 ok / 6 tried (33 % failed; most common: …)"."""
        return (f"{who}: {self} ({self.rate:.0%} failed"
                + (f"; most common: {self.reason}" if self.reason else "") + ")")

    def __str__(self) -> str:
        return f"{self.ok} ok / {self.tried} tried"


def tally(rows: pd.DataFrame) -> Tally | None:
    """The attempts of the cells `rows` come from (summed when they are several runs'),
    None when the results hold no count for them. `rows` are samples (with the columns
    `enrich` adds), or rows of a table of cells that carry theirs (`ok`, `tried`,
    `reason`: `tables.ATTEMPTS`)."""
    if "tried" not in rows.columns or rows.empty:
        return None
    known = rows.dropna(subset=["tried"])
    if known.empty:
        return None
    if "cell_variant" not in known.columns:  # a table's rows, one cell's counts on each
        r = known.iloc[0]
        return Tally(int(r["ok"]), int(r["tried"]), str(r["reason"] or ""))
    per = known.drop_duplicates(["run_id", "backend", "cell_variant"])
    tried, failed = int(per["tried"].sum()), int(per["failed"].sum())
    reason = str(per.sort_values("failed", kind="stable")["reason"].iloc[-1]) if failed else ""
    return Tally(tried - failed, tried, reason)


def failed_note(t: Tally | None) -> str:
    """"4 ok / 6 tried" for a cell with failures, "" otherwise."""
    return str(t) if t is not None and t.failed else ""


@dataclass(frozen=True)
class ResultCell:
    """A cell as the results show it (harness.sampling.Cell is the one being sampled): a
    backend, a variant, from one dataset; one thing a chart draws, a table or a claim
    names. `tally`: its measured samples, when the results count them."""

    backend: str
    variant: str
    dataset: str
    kind: str
    emulated: bool
    ram: bool = False  # its writable layer was in RAM (see `in_ram`)
    tally: Tally | None = field(default=None, compare=False)

    def label(self, tag: str | None = None, sep: str = " ", counts: bool = True) -> str:
        """"docker [volume]", plus the dataset's tag (e.g. "#2") when given, plus
        RAM_MARK for a writable layer in RAM, "(TCG, emulated)" for an emulated VM, plus
        "(4 ok / 6 tried)" when samples failed (unless not `counts`)."""
        text = self.backend
        if self.variant != DEFAULT_VARIANT:
            text += f" [{short_variant(self.variant)}]"
        if tag:
            text += f"{sep}{tag}"
        if self.ram:
            text += f"{sep}{RAM_MARK}"
        if self.emulated:
            text += f"{sep}(TCG, emulated)"
        if counts and failed_note(self.tally):
            text += f"{sep}({self.tally})"
        return text

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        return df[(df["backend"] == self.backend) & (df["variant"] == self.variant)
                  & (df["dataset"] == self.dataset)]


def cells(df: pd.DataFrame, order: Sequence[str] | None = None,
          sets: Sequence[str] | None = None) -> list[ResultCell]:
    """The cells present in `df`, in the report's order: backend, variant, dataset."""
    if df.empty:
        return []
    order = list(order) if order is not None else backend_order(df)
    sets = list(sets) if sets is not None else datasets(df)
    first = df.drop_duplicates(["backend", "variant", "dataset"])
    out = []
    for _, r in first.iterrows():
        mine = df[(df["backend"] == r["backend"]) & (df["dataset"] == r["dataset"])]
        out.append(ResultCell(str(r["backend"]), str(r["variant"]), str(r["dataset"]),
                        str(r["kind"]), bool(mine["emulated"].any()), in_ram(mine),
                        tally(mine[mine["variant"] == r["variant"]])))
    rank = {b: i for i, b in enumerate(order)}
    drank = {d: i for i, d in enumerate(sets)}
    return sorted(out, key=lambda c: (rank.get(c.backend, len(rank)), c.backend,
                                      c.variant != DEFAULT_VARIANT, c.variant,
                                      drank.get(c.dataset, len(drank))))


def study_of(metric: str) -> str:
    """"io.seqread.bw" -> "io"."""
    return metric.split(".", 1)[0]


def per_instance_memory(df: pd.DataFrame) -> pd.DataFrame:
    """One row per instance sample: its PSS plus its share of the engine daemons.

    The daemons (dockerd + containerd, the podman service, libvirtd) serve every instance
    of their backend, so each instance carries daemon / N of them, N being the number of
    instances sampled in that round of that cell. Backends without a daemon carry 0 (the
    study records 0 for them); a round without a daemon reading has no daemon share and
    no total (NaN: absent, not 0). Columns: backend, variant, dataset, kind, emulated,
    writable_layer (when `df` has it),
    round, pss, daemon, total.
    """
    keys = ["backend", "variant", "dataset", "round"]
    pss = df[df["metric"] == "memory.pss"]
    if pss.empty:
        return pd.DataFrame(columns=[*keys, "kind", "emulated", "pss", "daemon", "total"])
    n = pss.groupby(keys)["value"].transform("count")
    daemon = (df[df["metric"] == "memory.daemon"].groupby(keys)["value"].sum()
              .rename("daemon_total"))
    # The cell's attempts go along, so what is drawn from these rows still says them.
    counts = [c for c in ("run_id", *ATTEMPT_COLUMNS) if c in pss.columns]
    out = pss[[*keys, "kind", "emulated",
               *(["writable_layer"] if "writable_layer" in pss.columns else []),
               *counts]].copy()
    out["pss"] = pss["value"].astype(float)
    out = out.join(daemon, on=keys)
    out["daemon"] = out["daemon_total"] / n
    out["total"] = out["pss"] + out["daemon"]
    return out.drop(columns="daemon_total").reset_index(drop=True)


def split_sub(df: pd.DataFrame, studies: Collection[str]) -> pd.DataFrame:
    """The samples of `studies` (application studies) with `variant` the cell's own (the
    sub-case removed) and `sub` the sub-case ("" when none): a sub-case is a figure of
    the cell, not another cell."""
    d = df[df["metric"].map(study_of).isin(list(studies))].copy()
    sub = d["sub"].fillna("").astype(str) if "sub" in d else pd.Series("", index=d.index)

    def cell_variant(v: str, s: str) -> str:
        if not s or v == s:
            return DEFAULT_VARIANT if s else v
        return v[: -len(s) - 1] if v.endswith("," + s) else v

    d["variant"] = [cell_variant(str(v), s) for v, s in zip(d["variant"], sub, strict=True)]
    d["sub"] = sub
    return d


def cpusets(doc: Any) -> tuple[list[str], list[str]]:
    """The instance's and the load generator's cpusets a run recorded: each sample's
    (`cpuset`, `client_cpuset` beside its figures), else the scenario's `limits.cpuset`."""
    server = sorted({str(x) for smp in doc.samples if (x := smp.extra.get("cpuset"))})
    client = sorted({str(x) for smp in doc.samples if (x := smp.extra.get("client_cpuset"))})
    if not server and (x := (doc.scenario.get("limits") or {}).get("cpuset")):
        server = [str(x)]
    return server, client
