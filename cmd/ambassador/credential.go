package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errCredentials marks failures to obtain the token or CA bundle, so that they are
// answered 503 rather than blamed on the API server.
var errCredentials = errors.New("credentials unavailable")

// maxCredentialSize bounds what is read from a token or CA file.
const maxCredentialSize = 1 << 20

// credential is a file-backed value (the token or the CA pool) that follows the
// kubelet's rotations.
//
// The kubelet updates projected volumes atomically: it writes a fresh timestamped
// directory and renames the ..data symlink onto it, so after the rename the path
// resolves to new files with new inodes. get therefore stats the path (following the
// symlinks) on every call and re-reads when the resolved file's identity changed.
// A stat is a single cheap syscall, and unlike an inotify watcher or a polling loop it
// leaves no window in which the old value is served after the new file appeared.
// When the file cannot be read, get fails rather than serving the last value: a
// missing or broken token is reported instead of papered over.
type credential[T any] struct {
	what  string // "token" or "CA bundle", for logs and errors
	path  string
	parse func([]byte) (T, error)
	log   *slog.Logger

	cur atomic.Pointer[credentialVersion[T]] // last value read; nil before the first read

	mu sync.Mutex // serializes reads of the file

	errMu   sync.Mutex
	lastErr string // last failure logged, so that a persistent one is logged once
}

type credentialVersion[T any] struct {
	id  fileID
	val T
}

// fileID tells versions of a file apart. The kubelet's swaps always change the inode;
// size and modification time also catch in-place rewrites by other tools.
type fileID struct {
	dev, ino uint64
	size     int64
	mtime    int64 // Unix nanoseconds
}

func fileIDOf(fi fs.FileInfo) fileID {
	dev, ino := inode(fi)
	return fileID{dev: dev, ino: ino, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}

func newCredential[T any](what, path string, parse func([]byte) (T, error), log *slog.Logger) *credential[T] {
	return &credential[T]{what: what, path: path, parse: parse, log: log}
}

// get returns the current value, re-reading the file if it changed since last time.
func (c *credential[T]) get() (T, error) {
	fi, err := os.Stat(c.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// The same race as in load: the stat resolved ..data to the directory the
		// kubelet removed just after the swap. load retries on the new files.
	case err != nil:
		var zero T
		return zero, c.failed(err)
	default:
		if v := c.cur.Load(); v != nil && v.id == fileIDOf(fi) {
			return v.val, nil
		}
	}
	return c.load(false)
}

// reload re-reads the file even if it looks unchanged.
func (c *credential[T]) reload() (T, error) { return c.load(true) }

func (c *credential[T]) load(force bool) (T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	// The kubelet deletes the previous directory right after the swap, so a path
	// resolved just before it can vanish before it is opened; the next try resolves
	// to the new files.
	for range 3 {
		var v *credentialVersion[T]
		if v, err = c.read(force); err == nil {
			return v.val, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	var zero T
	return zero, c.failed(err)
}

// read reads the file and publishes its value. The identity comes from the open file,
// so it always matches the bytes read. Unless force is set, a version that another
// goroutine read meanwhile is reused.
func (c *credential[T]) read(force bool) (*credentialVersion[T], error) {
	f, err := os.Open(c.path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // opened read-only: closing cannot lose data
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	id := fileIDOf(fi)
	old := c.cur.Load()
	if !force && old != nil && old.id == id {
		return old, nil
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCredentialSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxCredentialSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", c.path, maxCredentialSize)
	}
	val, err := c.parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.path, err)
	}
	v := &credentialVersion[T]{id: id, val: val}
	c.cur.Store(v)
	c.errMu.Lock()
	c.lastErr = ""
	c.errMu.Unlock()
	if old == nil || old.id != id {
		// Never log the value itself.
		c.log.Info(c.what+" loaded", "path", c.path, "modified", fi.ModTime().UTC().Format(time.RFC3339Nano), "firstLoad", old == nil)
	}
	return v, nil
}

// failed logs err unless it is the failure logged last, and marks it errCredentials.
func (c *credential[T]) failed(err error) error {
	err = fmt.Errorf("%s: %w", c.what, err)
	msg := err.Error()
	c.errMu.Lock()
	if msg != c.lastErr {
		c.lastErr = msg
		c.log.Warn(c.what+" unavailable", "error", msg)
	}
	c.errMu.Unlock()
	return fmt.Errorf("%w: %w", errCredentials, err)
}

// parseToken accepts one bearer token, surrounded by optional whitespace.
func parseToken(data []byte) (string, error) {
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", errors.New("empty")
	}
	for i := range len(tok) {
		// Also keeps the token from smuggling anything into the header.
		if tok[i] <= ' ' || tok[i] >= 0x7f {
			return "", errors.New("not a single printable-ASCII bearer token")
		}
	}
	return tok, nil
}

// parseCA accepts a PEM bundle with at least one certificate.
func parseCA(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}
