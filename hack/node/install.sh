#!/usr/bin/env bash
# Installs what the node tests (make test-node) need from Debian: containerd (1.6),
# runc, the CNI plugins (bridge, host-local, loopback in /usr/lib/cni) and iproute2.
# Skips apt entirely when they are already there. Needs root.
set -euo pipefail
need=()
command -v containerd >/dev/null && command -v containerd-shim-runc-v2 >/dev/null && command -v ctr >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
echo "hack/node/install.sh: installing ${need[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
