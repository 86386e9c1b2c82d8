//go:build tools

// Package tools pins the etcd main package (the root of the
// go.etcd.io/etcd/server/v3 module) that hack/build-k8s.sh builds, so that
// `go mod tidy` keeps its dependencies in go.sum.
package tools

import _ "go.etcd.io/etcd/server/v3"
