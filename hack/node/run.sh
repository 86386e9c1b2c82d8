#!/usr/bin/env bash
# Runs the node tests (test/node) on a real single node: builds the binaries and the test
# binary, creates a network namespace with a veth interface holding the node IP, runs
# the tests inside it with `nsenter --net=` (not `ip netns exec`, which remounts /sys
# and hides the cgroup mounts from the kubelet and runc), and deletes the namespace
# afterwards, with the bridge, veths and routes in it. Needs root.
#
#   hack/node/run.sh [test binary flags...]      e.g. -test.run TestEnv -test.v
#
# KUBEBUILDER_ASSETS must hold kube-apiserver, etcd and kubelet (make test-node).
set -euo pipefail
cd "$(dirname "$0")/../.."
NODE_IP=10.250.0.1
NS=podmeta-node-$$
WORK=$(mktemp -d /tmp/podmeta-node-run.XXXXXX)

if [ "$(id -u)" != 0 ]; then
	echo "hack/node/run.sh: the node tests run containerd and a kubelet and need root" >&2
	exit 1
fi
: "${KUBEBUILDER_ASSETS:?set KUBEBUILDER_ASSETS to the directory with kube-apiserver, etcd and kubelet}"

# The Go harness stops everything it started (test/harness/node.go, Node.Stop). This is
# the fallback for a test binary that was killed: every process whose command line
# names $WORK (etcd, kube-apiserver, containerd, its shims, the kubelet, podmeta) and
# the containers under those shims, the CNI network namespaces those containers used,
# mounts under $WORK and the pods' cgroup root.
cleanup() {
	set +e
	local pids=() pid ns ino
	for pid in $(grep -l -s -F "$WORK" /proc/[0-9]*/cmdline | cut -d/ -f3); do
		# (grep itself matched too, and is gone by now)
		[ "$pid" != $$ ] && [ -e "/proc/$pid" ] && pids+=("$pid")
	done
	if [ ${#pids[@]} -gt 0 ]; then
		echo "hack/node/run.sh: cleaning up after the tests; killing:" >&2
		for pid in "${pids[@]}"; do
			echo "  $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)" >&2
		done
		for pid in "${pids[@]}"; do
			for c in $(pgrep -P "$pid"); do
				# A container (pause or app) under a shim: drop its CNI netns too.
				ino=$(stat -L -c %i "/proc/$c/ns/net" 2>/dev/null)
				for ns in /run/netns/cni-*; do
					[ -e "$ns" ] && [ -n "$ino" ] && [ "$(stat -L -c %i "$ns" 2>/dev/null)" = "$ino" ] && ip netns delete "$(basename "$ns")"
				done
				kill -KILL "$c" 2>/dev/null
			done
			kill -KILL "$pid" 2>/dev/null
		done
		sleep 1
	fi
	grep -F " $WORK/" /proc/self/mounts | cut -d' ' -f2 | sort -r | while read -r m; do umount -l "$m"; done
	for d in "$WORK"/tmp/pmnode*; do
		[ -e "$d" ] || continue
		find /sys/fs/cgroup/*/"$(basename "$d")" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	ip netns delete "$NS" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT

echo "hack/node/run.sh: building binaries into $WORK"
export CGO_ENABLED=0
mkdir -p "$WORK/bin"
# PODMETA_BIN / AMBASSADOR_BIN: use prebuilt binaries instead (e.g. bin/podmeta from make build).
if [ -n "${AMBASSADOR_BIN:-}" ]; then cp "$AMBASSADOR_BIN" "$WORK/bin/ambassador"; else go build -trimpath -o "$WORK/bin/ambassador" ./cmd/ambassador; fi
if [ -n "${PODMETA_BIN:-}" ]; then cp "$PODMETA_BIN" "$WORK/bin/podmeta"; else go build -trimpath -o "$WORK/bin/podmeta" ./cmd/podmeta; fi
for p in pause printenv apiget; do
	go build -trimpath -ldflags "-s -w" -o "$WORK/bin/$p" ./test/node/images/$p
done
go test -c -o "$WORK/node.test" ./test/node

ip netns add "$NS"
nsenter --net=/run/netns/"$NS" sh -ec "
	ip link set lo up
	# The node IP lives on a veth pair kept inside the namespace (this kernel may have
	# no dummy driver; a veth pair has carrier as soon as both ends are up).
	ip link add pmnode0 type veth peer name pmnode1
	ip link set pmnode1 up
	ip addr add $NODE_IP/24 dev pmnode0
	ip link set pmnode0 up
	sysctl -qw net.ipv4.ip_forward=1
"
echo "hack/node/run.sh: running test/node in network namespace $NS"
cd test/node
mkdir -p "$WORK/tmp"
set +e
TMPDIR="$WORK/tmp" PODMETA_NODE_TEST=1 PODMETA_NODE_BIN="$WORK/bin" \
	nsenter --net=/run/netns/"$NS" "$WORK/node.test" -test.count=1 -test.timeout=30m "$@" 2>&1 | tee "$WORK/node.log"
rc=${PIPESTATUS[0]}
set -e
# A closing count CI can read (the test binary itself ends with a bare PASS/FAIL).
echo "test-node: $(grep -c '^--- PASS' "$WORK/node.log") passed, $(grep -c '^--- FAIL' "$WORK/node.log") failed, $(grep -c '^--- SKIP' "$WORK/node.log") skipped"
exit "$rc"
