package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
)

// Set at build time: go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc1234".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	context.AfterFunc(ctx, stop) // a second signal terminates at once
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "podmeta-ambassador:", err)
		os.Exit(1)
	}
}

// run parses args, then serves until ctx is done. It returns nil after a graceful
// shutdown, for --version and for --help.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("podmeta-ambassador", flag.ContinueOnError)
	cfg.BindFlags(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard) // parse errors are returned, and printed once by main
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			_, _ = fmt.Fprintln(stdout, "Usage: podmeta-ambassador [flags]")
			fs.PrintDefaults()
			return nil
		}
		return fmt.Errorf("%w (see --help)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if *showVersion {
		_, err := fmt.Fprintf(stdout, "podmeta-ambassador %s (commit %s, %s)\n", version, commit, runtime.Version())
		return err
	}
	cfg.completeUpstream(getenv)
	if err := cfg.Validate(); err != nil {
		return err
	}

	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	s, err := newServer(cfg, logger)
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	proxyLn, err := lc.Listen(ctx, "tcp", net.JoinHostPort(cfg.ListenAddress, strconv.Itoa(cfg.Port)))
	if err != nil {
		return err
	}
	healthLn, err := lc.Listen(ctx, "tcp", net.JoinHostPort(cfg.HealthAddress, strconv.Itoa(cfg.HealthPort)))
	if err != nil {
		_ = proxyLn.Close()
		return err
	}
	logger.Info("starting podmeta-ambassador",
		"version", version,
		"commit", commit,
		"proxy", proxyLn.Addr().String(),
		"health", healthLn.Addr().String(),
		"upstream", s.upstream.String(),
		"mode", cfg.Mode,
		"allowPrivilegedPaths", cfg.AllowPrivilegedPaths,
		"tokenFile", cfg.TokenFile,
		"caFile", cfg.CAFile,
		"readyCheckPath", cfg.ReadyCheckPath,
		"readyCheckInterval", cfg.ReadyCheckInterval.String(),
		"readyCheckTimeout", cfg.ReadyCheckTimeout.String(),
		"shutdownTimeout", cfg.ShutdownTimeout.String(),
		"logLevel", cfg.LogLevel.String(),
	)
	return s.serve(ctx, proxyLn, healthLn)
}
