// Command printenv is the node tests' application: it prints its environment and the
// files of its metadata volume to stdout (read back with `kubectl logs`), then prints
// the labels and annotations files again each time they change, until SIGTERM.
//
// It must fit in a 4Mi memory limit, so it uses the standard library's smallest parts
// only (no fmt, no net).
//
// Output lines:
//
//	env NAME=VALUE            once per variable, sorted
//	file PATH "QUOTED"        once per file at start, then again after each change
//	ready                     after the first listing
package main

import (
	"os"
	"os/signal"
	"sort"
	"strconv"
	"syscall"
	"time"
)

func main() {
	dir := os.Getenv("PODINFO_DIR")
	if dir == "" {
		dir = "/etc/podinfo"
	}
	env := os.Environ()
	sort.Strings(env)
	for _, kv := range env {
		os.Stdout.WriteString("env " + kv + "\n")
	}
	watched := []string{"labels", "annotations"}
	last := map[string]string{}
	for _, name := range []string{"name", "namespace", "uid", "labels", "annotations"} {
		b, err := os.ReadFile(dir + "/" + name)
		if err != nil {
			os.Stdout.WriteString("file " + name + " error " + strconv.Quote(err.Error()) + "\n")
			continue
		}
		last[name] = string(b)
		os.Stdout.WriteString("file " + name + " " + strconv.Quote(string(b)) + "\n")
	}
	os.Stdout.WriteString("ready\n")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		for _, name := range watched {
			b, err := os.ReadFile(dir + "/" + name)
			if err != nil || string(b) == last[name] {
				continue
			}
			last[name] = string(b)
			os.Stdout.WriteString("file " + name + " " + strconv.Quote(string(b)) + "\n")
		}
	}
}
