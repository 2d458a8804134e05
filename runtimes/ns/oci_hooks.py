"""OCI hooks (config.md "POSIX-platform Hooks"): each runs in the runtime namespace with
the container's state JSON on its stdin, its own args and env, and its timeout."""

from __future__ import annotations

import json

from runtimes.ns.oci_cli import CliError, warn

TYPE_CHECKING = False  # (typing costs each cvbench-ns call: only mypy reads these)
if TYPE_CHECKING:
    from typing import Any


def run(st: dict[str, Any], kind: str, state: dict[str, Any], fatal: bool) -> None:
    """Run the `kind` hooks in order; the first failure raises CliError when `fatal`
    (prestart, createRuntime), else each failure is a warning (poststart, poststop)."""
    hooks = st["hooks"].get(kind, ())
    if not hooks:
        return
    import subprocess  # (only for a hook: create asks for two kinds, most often none)

    payload = json.dumps(state).encode()
    for i, h in enumerate(hooks):
        try:
            p = subprocess.run(h["args"], executable=h["path"], input=payload,
                               env=dict(e.split("=", 1) for e in h["env"] if "=" in e),
                               capture_output=True, timeout=h["timeout"], check=False)
            why = f"exit status {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}" \
                if p.returncode else ""
        except subprocess.TimeoutExpired:
            why = f"timed out after {h['timeout']} s"
        except OSError as e:
            why = e.strerror or str(e)
        if why:
            msg = f"hooks.{kind}[{i}] ({h['path']}): {why}".strip()
            if fatal:
                raise CliError(msg)
            warn(msg)
