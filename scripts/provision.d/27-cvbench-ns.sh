# cvbench-ns: ns as an OCI runtime (runtimes/ns/oci_cli.py), installed where dockerd and
# Podman can call it: /usr/local/bin/cvbench-ns (30-docker.sh and 40-podman.sh register it).
#
# Provision runs before `make venv` (and CI runs it in a fresh clone at another path), so
# the command cannot be the checkout's .venv/bin/cvbench-ns. It is a small script of its
# own: the interpreter of a venv that provision makes for it, /opt/cvbench/ns-venv (only
# what the CLI imports beyond the standard library: pyseccomp, psutil), and the code of
# THIS checkout, put first on sys.path. Edits in the checkout take effect at once; a
# checkout moved or removed needs `make provision` again, which rewrites the script
# for the checkout it runs from.
#
# Each engine call (create, start, state, kill, delete) is a new interpreter, so the
# script is as cheap to start as it can be: `python -IS` (-I: no user site or PYTHON*
# variables; -S: no site module, which would run the venv's .pth files on every call),
# with the venv's site-packages put on sys.path by the script itself; it calls
# oci_cli.entry() directly (no entry-point machinery), and the checkout's code is
# compiled here, so that no call compiles it. The venv is on the distribution's
# interpreter, whatever `python3` comes first on PATH: Debian's is built with PGO and LTO
# and libpython linked in, where a pyenv or python.org build is most often a shared
# libpython without them; the four calls of a container under dockerd (create, start,
# delete, delete --force) took a sixth less CPU time on it (50 vs 60 ms, measured with
# a pyenv 3.11 on PATH).
NS_VENV=/opt/cvbench/ns-venv
NS_PYTHON=/usr/bin/python3
NS_BIN=/usr/local/bin/cvbench-ns
checkout=$(cd "$here/.." && pwd)
ns_venv_base() {  # the interpreter the venv was made from (its real path), or nothing
  "$NS_VENV/bin/python" -I -c "import os, sys; print(os.path.realpath(sys._base_executable))" \
    2>/dev/null
}
if [ -z "${CVBENCH_NS_PYTHON:-}" ] && { ! "$NS_VENV/bin/python" -c "import pyseccomp, psutil" \
    2>/dev/null || [ "$(ns_venv_base)" != "$(realpath "$NS_PYTHON")" ]; }; then
  mkdir -p "$(dirname "$NS_VENV")"
  "$NS_PYTHON" -m venv --clear "$NS_VENV"
  "$NS_VENV/bin/pip" install --quiet "pyseccomp>=0.1.2" "psutil>=5.9" \
    >"$CVBENCH_PROVISION_LOG/cvbench-ns-venv.log" 2>&1 \
    || { tail -n 20 "$CVBENCH_PROVISION_LOG/cvbench-ns-venv.log" >&2; exit 1; }
  say "cvbench-ns: made $NS_VENV on $NS_PYTHON (pyseccomp, psutil)"
fi
if [ -n "${CVBENCH_NS_PYTHON:-}" ]; then
  # cvbench installed (a wheel in a venv, as `bench fleet` installs it, with scripts/
  # copied apart from the code): that environment's interpreter runs the installed code
  # (-I without -S: its site module finds cvbench, whatever .pth files that takes)
  source_note="installed for $CVBENCH_NS_PYTHON"
  want=$(printf '%s\n' "#!$CVBENCH_NS_PYTHON -I" \
    "# Written by cvbench scripts/provision.d/27-cvbench-ns.sh: the OCI runtime cvbench-ns" \
    "# $source_note" \
    "from runtimes.ns.oci_cli import entry" "entry()")
elif [ -f "$checkout/runtimes/ns/oci_cli.py" ]; then
  source_note="code from $checkout"
  # (pyseccomp and psutil are plain packages: nothing of theirs needs a .pth file)
  site_dirs=$("$NS_VENV/bin/python" -I -c 'import sysconfig
print(sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}))')
  want=$(printf '%s\n' "#!$NS_VENV/bin/python -IS" \
    "# Written by cvbench scripts/provision.d/27-cvbench-ns.sh: the OCI runtime cvbench-ns" \
    "# of the checkout $checkout" \
    "import sys" "sys.path.insert(0, '$checkout')" "sys.path += $site_dirs" \
    "from runtimes.ns.oci_cli import entry" "entry()")
  "$NS_VENV/bin/python" -I -m compileall -q "$checkout/harness/__init__.py" \
    "$checkout/harness/core" "$checkout/runtimes" >/dev/null \
    || { echo "provision: cannot compile the code of $checkout for cvbench-ns" >&2; exit 1; }
else
  echo "provision: no cvbench code beside $here (runtimes/ns/oci_cli.py): run it from a" \
    "checkout, or set CVBENCH_NS_PYTHON to the interpreter of an environment where cvbench" \
    "is installed" >&2
  exit 1
fi
if [ "$(cat "$NS_BIN" 2>/dev/null)" != "$want" ]; then
  printf '%s\n' "$want" > "$NS_BIN.tmp" && chmod 755 "$NS_BIN.tmp" && mv "$NS_BIN.tmp" "$NS_BIN"
  say "cvbench-ns: wrote $NS_BIN ($source_note)"
else
  say "cvbench-ns: $NS_BIN up to date ($source_note)"
fi
"$NS_BIN" --version >/dev/null || { echo "provision: $NS_BIN --version failed" >&2; exit 1; }
