// Command apiget is the node tests' ambassador client: every second it sends
// GET $PODMETA_API_URL/api/v1/namespaces/$POD_NAMESPACE/pods and prints one line per
// request to stdout (read back with `kubectl logs`), each prefixed with the UTC time:
//
//	get N STATUS             e.g. "get 3 403"
//	get N error "MSG"        the request failed before any HTTP status
//	token SHA EXP            $TOKEN_FILE (if set) has new content: the first 12 hex
//	                         digits of its SHA-256 and the JWT's exp (Unix seconds)
package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	url := os.Getenv("PODMETA_API_URL") + "/api/v1/namespaces/" + os.Getenv("POD_NAMESPACE") + "/pods"
	tokenFile := os.Getenv("TOKEN_FILE")
	out("url " + url)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	client := &http.Client{Timeout: 5 * time.Second}
	lastToken := ""
	for n := 1; ; n++ {
		if tokenFile != "" {
			if b, err := os.ReadFile(tokenFile); err == nil && string(b) != lastToken {
				lastToken = string(b)
				sum := sha256.Sum256(b)
				out("token " + hex.EncodeToString(sum[:6]) + " " + strconv.FormatInt(jwtExp(string(b)), 10))
			}
		}
		line := "get " + strconv.Itoa(n) + " "
		resp, err := client.Get(url)
		if err != nil {
			line += "error " + strconv.Quote(err.Error())
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			line += strconv.Itoa(resp.StatusCode)
		}
		out(line)
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}

func out(line string) {
	os.Stdout.WriteString(time.Now().UTC().Format(time.RFC3339) + " " + line + "\n")
}

// jwtExp returns the exp claim of a JWT, 0 if it has none.
func jwtExp(token string) int64 {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		return 0
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return 0
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	_ = json.Unmarshal(b, &claims)
	return claims.Exp
}
