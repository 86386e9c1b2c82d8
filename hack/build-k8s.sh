#!/usr/bin/env bash
# Builds local Kubernetes control-plane binaries from source through the Go
# module proxy (no release tarballs are reachable here) and caches them.
#
# Usage: hack/build-k8s.sh VERSION OUTDIR [COMPONENT...]
#   VERSION    Kubernetes version; must match k8s.io/kubernetes in hack/k8s/go.mod
#   OUTDIR     e.g. bin/k8s/v1.37.2 (the layout envtest's BinaryAssetsDirectory wants)
#   COMPONENT  kube-apiserver, etcd, kubectl, kubelet
#              (default: kube-apiserver etcd kubectl)
#
# Each binary gets a stamp file next to it; a rerun whose stamp still matches
# skips the build, so the common case costs well under a second.
set -euo pipefail

if (( $# < 2 )); then
  echo "usage: $0 VERSION OUTDIR [kube-apiserver|etcd|kubectl|kubelet...]" >&2
  exit 2
fi
version=$1 outdir=$2
shift 2
(( $# )) || set -- kube-apiserver etcd kubectl

hack=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Version pinned in a tools module's go.mod (read directly: `go list -m` is slow).
pinned() { awk -v m="$2" '{ sub(/^require/, "") } $1 == m { print $2; exit }' "$hack/$1/go.mod"; }

k8s_pinned=$(pinned k8s k8s.io/kubernetes)
if [[ $version != "$k8s_pinned" ]]; then
  echo "hack/k8s/go.mod pins k8s.io/kubernetes $k8s_pinned, not $version:" >&2
  echo "bump it and its replace block (k8s.io/* => v0.<minor>.<patch>), then go mod tidy" >&2
  exit 1
fi
minor=${version#v1.}
minor=${minor%%.*}

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd) # absolute: go -C below changes directory

# Same flags as upstream release builds (hack/lib/golang.sh): static, stripped,
# version stamped into both packages that report it; grpcnotrace keeps grpc
# from linking x/net/trace, which would defeat dead-code elimination.
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
done

tmp=
trap '[[ -z $tmp ]] || rm -f "$tmp"' EXIT
trap 'exit 130' INT TERM # so the EXIT trap also runs on Ctrl-C / kill

for c in "$@"; do
  case $c in
    kube-apiserver|kubectl|kubelet)
      mod=k8s pkg=k8s.io/kubernetes/cmd/$c ver=$version
      flags=(-tags "selinux,notest,grpcnotrace" -ldflags "$k8s_ldflags") ;;
    etcd)
      # The etcd main package is the root of the server module (server/main.go).
      mod=etcd pkg=go.etcd.io/etcd/server/v3 ver=$(pinned etcd go.etcd.io/etcd/server/v3)
      flags=(-ldflags "-s -w") ;;
    *)
      echo "unknown component: $c (want kube-apiserver, etcd, kubectl or kubelet)" >&2
      exit 2 ;;
  esac

  # Rebuild when the version, the module's dependencies or the flags change.
  stamp="$ver $( { echo "${flags[*]}"; cat "$hack/$mod/go.mod" "$hack/$mod/go.sum"; } | sha256sum | cut -c1-16)"
  bin=$outdir/$c
  if [[ -x $bin && -f $bin.stamp && $(<"$bin.stamp") == "$stamp" ]]; then
    echo "$c: up to date ($ver)"
    continue
  fi

  echo "building $c $ver from source (once; cold, all of them take ~30 min on 2 cores, see the README)..."
  start=$SECONDS
  # Build under a temporary name so an interrupted build never leaves a
  # broken binary behind. -mod=readonly: go.sum is committed, never rewritten.
  # GOWORK=off: a go.work at the repo root must not capture these modules.
  tmp=$outdir/.$c.tmp.$$
  # A cold kube-apiserver build is minutes of silence from go: print a line every 20 s.
  GOWORK=off CGO_ENABLED=0 "$hack/progress.sh" "building $c" go -C "$hack/$mod" build -mod=readonly -trimpath \
    "${flags[@]}" -o "$tmp" "$pkg"
  mv -f "$tmp" "$bin"
  tmp=
  echo "$stamp" >"$bin.stamp"
  echo "$c: built in $((SECONDS - start))s ($(du -h "$bin" | cut -f1))"
done
