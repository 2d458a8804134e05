# Docker's default seccomp profile as a file, for ns and oci:* (runtimes/ns/seccomp.py).
# dockerd compiles its default in; the same rules ship as profiles/seccomp/default.json in
# the Debian source package of the same version (golang-github-docker-docker-dev). Only that
# file is taken from the package (apt-get download + dpkg-deb), not its Go build tree.
# containers-common's /usr/share/containers/seccomp.json (Podman's) is not the same: it
# lets containers make user namespaces and call keyctl.
. "$here/provision.d/lib.sh"
seccomp_dir=/usr/share/cvbench/seccomp
docker_ver=$(dpkg-query -W -f='${source:Version}' docker.io 2>/dev/null || true)
if [ -z "$docker_ver" ]; then
  say "seccomp: docker.io is not installed; ns falls back to containers-common's profile"
elif [ "$(cat "$seccomp_dir/docker-default.version" 2>/dev/null)" = "$docker_ver" ]; then
  say "seccomp: Docker $docker_ver default profile in $seccomp_dir"
else
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt's _apt user downloads into it
  ( cd "$tmp" && apt-get download -qq "golang-github-docker-docker-dev=$docker_ver" ) \
    >"$CVBENCH_PROVISION_LOG/seccomp.log" 2>&1 \
    || { apt-get update -qq && ( cd "$tmp" && apt-get download -qq \
         "golang-github-docker-docker-dev=$docker_ver" ) >>"$CVBENCH_PROVISION_LOG/seccomp.log" 2>&1; } \
    || { tail -n 20 "$CVBENCH_PROVISION_LOG/seccomp.log" >&2; rm -rf "$tmp"; exit 1; }
  mkdir -p "$seccomp_dir"
  dpkg-deb --fsys-tarfile "$tmp"/golang-github-docker-docker-dev_*.deb \
    | tar -xO ./usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json \
    > "$seccomp_dir/docker-default.json.new"
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$seccomp_dir/docker-default.json.new"
  mv "$seccomp_dir/docker-default.json.new" "$seccomp_dir/docker-default.json"
  echo "$docker_ver" > "$seccomp_dir/docker-default.version"
  rm -rf "$tmp"
  say "seccomp: Docker $docker_ver default profile written to $seccomp_dir"
fi
