# Stacks (bench run stack): Podman's DNS for its user-defined networks (aardvark-dns:
# netavark starts it for a network with dns_enabled; without it, services cannot find
# each other by name), and Debian's docker-compose (1.29), against which the example
# stack (examples/compose.yaml) is checked.
. "$here/provision.d/lib.sh"
stack_packages=(aardvark-dns docker-compose)
stack_missing=()
for p in "${stack_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || stack_missing+=("$p")
done
if [ ${#stack_missing[@]} -eq 0 ]; then
  say "stacks: ${stack_packages[*]} installed"
else
  say "stacks: installing ${stack_missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${stack_missing[@]}" \
    >"$CVBENCH_PROVISION_LOG/apt-stacks.log" 2>&1 \
    || { tail -n 30 "$CVBENCH_PROVISION_LOG/apt-stacks.log" >&2; exit 1; }
  # A running Podman service found its helpers when it started: 40-podman.sh restarts
  # the services it started, so that their networks get aardvark-dns.
  [[ " ${stack_missing[*]} " == *" aardvark-dns "* ]] && podman_restart_wanted=1
fi
