"""The mem study's buffer against the last-level cache of the host that runs it: the
cache read from a (fake) sysfs tree, recorded as unknown with its reason when it cannot
be read, and a buffer below twice its size refused before the run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import scenario, validate
from harness.core import hostinfo
from harness.core.errors import ScenarioError
from harness.report import apps

REPO = Path(__file__).resolve().parents[2]
# CPU 0 of this kind of host: L1 data and instruction, L2, and a 480 MiB L3.
CACHES = [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "2048K"),
          ("3", "Unified", "491520K")]


def sysfs(root: Path, caches: list[tuple[str, str, str]]) -> Path:
    for i, (level, kind, size) in enumerate(caches):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    return root


def test_the_last_level_is_the_highest_data_or_unified_cache(tmp_path: Path) -> None:
    assert hostinfo.last_level_cache(str(sysfs(tmp_path, CACHES))) == \
        hostinfo.Cache(3, 480 << 20)
    # a big instruction cache holds no data buffer: not the last level for data
    other = sysfs(tmp_path / "b", [("1", "Data", "48K"), ("2", "Instruction", "4M")])
    assert hostinfo.last_level_cache(str(other)) == hostinfo.Cache(1, 48 << 10)


def test_an_unreadable_cache_is_unknown_with_its_reason_never_zero(tmp_path: Path) -> None:
    root = sysfs(tmp_path, CACHES)
    (root / "index3" / "size").unlink()
    llc = hostinfo.last_level_cache(str(root))
    assert llc.size is None and "index3/size" in llc.reason
    assert llc.as_dict() == {"bytes": None, "unknown": llc.reason}
    (root / "index3" / "size").write_text("\n")
    assert "is not a cache size" in hostinfo.last_level_cache(str(root)).reason
    missing = hostinfo.last_level_cache(str(tmp_path / "none"))
    assert missing.size is None and "No such file" in missing.reason
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no data or unified cache" in hostinfo.last_level_cache(str(empty)).reason


def _mem(tmp_path: Path, block: str) -> scenario.Scenario:
    text = (REPO / "scenarios" / "mem.toml").read_text()
    path = tmp_path / "mem.toml"
    path.write_text(text.replace('block_size = "1G"', f'block_size = "{block}"'))
    return scenario.load(str(path))


def test_a_buffer_below_twice_the_cache_is_refused(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostinfo, "CACHE_ROOT", str(sysfs(tmp_path / "cpu0", CACHES)))
    validate.check(_mem(tmp_path, "1G"))  # 1 GiB >= 2 x 480 MiB
    with pytest.raises(ScenarioError, match=r"mem.toml: params.block_size: 512.0 MiB is less "
                       r"than 2x this host's last-level cache \(L3, 480.0 MiB, from .*\): "
                       r"the sweep would measure the cache, not the memory; give at least "
                       r"960.0 MiB") as e:
        validate.check(_mem(tmp_path, "512M"))
    assert "\n" not in str(e.value)


def test_an_unknown_cache_is_not_refused_and_the_fingerprint_records_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostinfo, "CACHE_ROOT", str(tmp_path / "none"))
    validate.check(_mem(tmp_path, "512M"))
    llc = hostinfo.fingerprint()["llc"]
    assert llc["bytes"] is None and "No such file" in llc["unknown"]


def test_the_report_shows_the_buffer_next_to_the_cache() -> None:
    def doc(llc: dict[str, object]) -> SimpleNamespace:
        return SimpleNamespace(samples=[SimpleNamespace(extra={"llc": llc,
                                                               "block_size": 1 << 30})])

    assert apps.cache_note(doc({"level": 3, "bytes": 480 << 20})) == \
        "; buffer 1.0 GiB, last-level cache L3 480.0 MiB"
    assert apps.cache_note(doc({"bytes": None, "unknown": "x: gone"})) == \
        "; buffer 1.0 GiB, last-level cache unknown (x: gone): the buffer was not " \
        "checked against it"
    assert apps.cache_note(SimpleNamespace(samples=[SimpleNamespace(extra={})])) == ""
