package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"
)

// Modes. They match webhook.ModeReadOnly and webhook.ModeReadWrite; the webhook
// package is not imported because it drags in k8s.io/api, which would multiply the
// size of this binary.
const (
	modeReadOnly  = "read-only"
	modeReadWrite = "read-write"
)

// Config is every setting of the ambassador. Each field has a flag.
type Config struct {
	ListenAddress string // proxy address; must be loopback
	Port          int
	HealthAddress string
	HealthPort    int

	// Upstream is the API server base URL. Empty means
	// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (see completeUpstream).
	Upstream  string
	TokenFile string
	CAFile    string

	Mode string // modeReadOnly or modeReadWrite

	// AllowPrivilegedPaths forwards the paths that run code, reach other endpoints
	// or mint credentials (classifyPath: nodes/proxy, pods/proxy, services/proxy,
	// pods/ephemeralcontainers, serviceaccounts/token), which are refused by
	// default in every mode. The mode still applies to them. pods/exec, attach and
	// portforward stay refused: they need a connection upgrade, never proxied.
	AllowPrivilegedPaths bool

	ReadyCheckInterval time.Duration
	ReadyCheckPath     string
	ReadyCheckTimeout  time.Duration
	ShutdownTimeout    time.Duration
	ReadHeaderTimeout  time.Duration
	IdleTimeout        time.Duration

	LogLevel slog.Level
}

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// DefaultConfig returns the settings used when no flag is given.
func DefaultConfig() Config {
	return Config{
		ListenAddress:      "127.0.0.1",
		Port:               8001,
		HealthAddress:      "0.0.0.0", // Go listens dual-stack for 0.0.0.0, so IPv6-only pods work too
		HealthPort:         8002,
		TokenFile:          serviceAccountDir + "/token",
		CAFile:             serviceAccountDir + "/ca.crt",
		Mode:               modeReadOnly,
		ReadyCheckInterval: 10 * time.Second,
		ReadyCheckPath:     "/version",
		ReadyCheckTimeout:  5 * time.Second,
		ShutdownTimeout:    10 * time.Second,
		ReadHeaderTimeout:  10 * time.Second,
		IdleTimeout:        120 * time.Second,
		LogLevel:           slog.LevelInfo,
	}
}

// BindFlags registers one flag per field on fs, with c's current values as defaults.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ListenAddress, "listen-address", c.ListenAddress, "proxy listen address; must be a loopback address")
	fs.IntVar(&c.Port, "port", c.Port, "proxy listen port")
	fs.StringVar(&c.HealthAddress, "health-address", c.HealthAddress, "listen address of /healthz and /readyz")
	fs.IntVar(&c.HealthPort, "health-port", c.HealthPort, "listen port of /healthz and /readyz")
	fs.StringVar(&c.Upstream, "upstream", c.Upstream, "API server URL (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "service-account token file, re-read when it changes")
	fs.StringVar(&c.CAFile, "ca-file", c.CAFile, "PEM CA bundle the API server is verified against, re-read when it changes")
	fs.StringVar(&c.Mode, "mode", c.Mode, "read-only (GET and HEAD only) or read-write (all methods)")
	fs.BoolVar(&c.AllowPrivilegedPaths, "allow-privileged-paths", c.AllowPrivilegedPaths, "forward nodes/proxy, pods/proxy, services/proxy, pods/ephemeralcontainers and serviceaccounts/token, refused by default in every mode")
	fs.DurationVar(&c.ReadyCheckInterval, "ready-check-interval", c.ReadyCheckInterval, "longest wait between API server checks until the first one succeeds")
	fs.StringVar(&c.ReadyCheckPath, "ready-check-path", c.ReadyCheckPath, "API server path that must answer 2xx before /readyz succeeds")
	fs.DurationVar(&c.ReadyCheckTimeout, "ready-check-timeout", c.ReadyCheckTimeout, "timeout of one API server check")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long in-flight requests may run after SIGTERM before they are cut")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", c.ReadHeaderTimeout, "time allowed to read a request's headers")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "keep-alive timeout of idle client connections")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error; debug logs every request")
}

// completeUpstream fills an empty Upstream from the environment the kubelet gives
// every container. A missing variable leaves it empty for Validate to report.
func (c *Config) completeUpstream(getenv func(string) string) {
	if c.Upstream != "" {
		return
	}
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return
	}
	// JoinHostPort brackets IPv6 literals (fd00::1 → [fd00::1]:443).
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	c.Upstream = "https://" + net.JoinHostPort(host, port)
}

// Validate reports every invalid setting at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	// Whoever can connect to the proxy acts with the pod's service account; only the
	// pod itself may.
	if ip := net.ParseIP(c.ListenAddress); c.ListenAddress != "localhost" && (ip == nil || !ip.IsLoopback()) {
		bad("--listen-address %q: must be a loopback address (127.0.0.1, ::1 or localhost)", c.ListenAddress)
	}
	if c.HealthAddress != "" && net.ParseIP(c.HealthAddress) == nil && c.HealthAddress != "localhost" {
		bad("--health-address %q: not an IP address", c.HealthAddress)
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"--port", c.Port}, {"--health-port", c.HealthPort}} {
		if p.v < 0 || p.v > 65535 {
			bad("%s %d: out of range 0-65535", p.name, p.v)
		}
	}
	if c.Port != 0 && c.Port == c.HealthPort {
		bad("--port and --health-port are both %d", c.Port)
	}
	if _, err := c.upstreamURL(); err != nil {
		errs = append(errs, err)
	}
	if c.TokenFile == "" {
		bad("--token-file is empty")
	}
	if c.CAFile == "" {
		bad("--ca-file is empty")
	}
	if c.Mode != modeReadOnly && c.Mode != modeReadWrite {
		bad("--mode %q: must be %s or %s", c.Mode, modeReadOnly, modeReadWrite)
	}
	if c.ReadyCheckInterval <= 0 {
		bad("--ready-check-interval %v: must be positive", c.ReadyCheckInterval)
	}
	if !strings.HasPrefix(c.ReadyCheckPath, "/") {
		bad("--ready-check-path %q: must start with /", c.ReadyCheckPath)
	}
	if c.ReadyCheckTimeout <= 0 {
		bad("--ready-check-timeout %v: must be positive", c.ReadyCheckTimeout)
	}
	if c.ShutdownTimeout < 0 {
		bad("--shutdown-timeout %v: must not be negative", c.ShutdownTimeout)
	}
	if c.ReadHeaderTimeout <= 0 {
		bad("--read-header-timeout %v: must be positive", c.ReadHeaderTimeout)
	}
	if c.IdleTimeout < 0 {
		bad("--idle-timeout %v: must not be negative", c.IdleTimeout)
	}
	return errors.Join(errs...)
}

// upstreamURL parses and checks Upstream. Only https is accepted: the token must
// never cross the network in clear text.
func (c *Config) upstreamURL() (*url.URL, error) {
	if c.Upstream == "" {
		return nil, errors.New("no API server: set --upstream, or KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT")
	}
	u, err := url.Parse(c.Upstream)
	if err != nil {
		return nil, fmt.Errorf("--upstream: %w", err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("--upstream %q: scheme must be https", c.Upstream)
	case u.Hostname() == "":
		return nil, fmt.Errorf("--upstream %q: no host", c.Upstream)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
		return nil, fmt.Errorf("--upstream %q: must be scheme://host[:port] only", c.Upstream)
	}
	u.Path = ""
	return u, nil
}
