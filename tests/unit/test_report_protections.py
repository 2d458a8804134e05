"""The report's protection table: one row per protection, one column per backend."""

from __future__ import annotations

from harness.report.render import protections_table


def test_protections_side_by_side() -> None:
    t = protections_table({
        "ns": {"protections": ["seccomp: docker default profile", "no_new_privs: yes"]},
        "docker": {"protections": ["seccomp: dockerd's built-in default",
                                   "capabilities: CAP_CHOWN, CAP_KILL"]},
        "host": {"kind": "process"},
    })
    assert t is not None
    assert t.columns == ["protection", "docker", "ns"]
    rows = {r[0]: r[1:] for r in t.rows}
    assert rows["seccomp"] == ["dockerd's built-in default", "docker default profile"]
    assert rows["no_new_privs"] == ["—", "yes"]  # what one does not record is a dash
    assert rows["capabilities"] == ["CAP_CHOWN, CAP_KILL", "—"]
    assert protections_table({"host": {"kind": "process"}}) is None
