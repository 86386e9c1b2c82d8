// Command pause is the node tests' pod sandbox ("pause") image: it does nothing until
// SIGTERM or SIGINT, then exits 0. It is built as a static binary into an image with
// no other files (see test/harness/node.go), because no image registry is reachable.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
