package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// registerEvery is how often a registering stand-in sends its set again,
// well within its 30 s lease, as a dispatcher's hook does.
const registerEvery = 10 * time.Second

// register plays a dispatcher's hook: it PUTs the stand-in's fake workers
// to the agent's workers socket, then again every registerEvery until ctx
// ends, and logs each answer. The agent decides from the kernel whether
// this process may register as cfg.registerAs.
func (s *service) register(ctx context.Context) {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.cfg.registerSocket)
	}}}
	defer c.CloseIdleConnections()
	body := s.workersBody()
	for {
		code, answer, err := put(ctx, c, "http://workers/v1/workers/"+s.cfg.registerAs, body)
		switch {
		case err != nil:
			s.log.Printf("register-socket: %v", err)
		default:
			s.log.Printf("register-socket: %d workers as %s: %d %s", s.cfg.registerWorkers, s.cfg.registerAs, code, strings.TrimSpace(answer))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(registerEvery):
		}
	}
}

func (s *service) workersBody() string {
	var b strings.Builder
	b.WriteString(`{"leaseTtlMs": 30000, "workers": [`)
	for i := range s.cfg.registerWorkers {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name": "%s-w%d", "port": %d, "kind": "DeephavenCommunity", "nonce": "standin-%d-%d"}`, s.cfg.registerAs, i, s.cfg.ports[0], s.pid, i)
	}
	b.WriteString("]}")
	return b.String()
}

func put(ctx context.Context, c *http.Client, url, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, "PUT", url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b), nil
}
