# Stacks (bench run stack): Podman's DNS for its user-defined networks (aardvark-dns:
# netavark starts it for a network with dns_enabled; without it, services cannot find
# each other by name), and Debian's docker-compose (1.29), against which the example
# stack (examples/compose.yaml) is checked.
. "$here/provision.d/lib.sh"
apt_ensure apt-stacks aardvark-dns docker-compose
# A running Podman service found its helpers when it started: 40-podman.sh restarts the
# services it started, so that their networks get aardvark-dns.
if [[ " ${apt_installed[*]} " == *" aardvark-dns "* ]]; then podman_restart_wanted=1; fi
