package benchkit

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The stand-in (test/standin) answers GET / on each of its ports with JSON
// that holds its pid: how the harnesses tell that a restarted service
// serves again, and from which process.

// ServePoll is how often WaitServing asks.
const ServePoll = time.Millisecond

// httpClient never reuses a connection (each answer must come from whoever
// holds the port now) and ignores any proxy settings. It closes with
// SO_LINGER 0, a reset: polling at 1kHz with ordinary closes leaves
// thousands of TIME_WAIT sockets, and a new connection that happens to reuse
// one's port numbers can stall for a SYN retransmission, which would be
// timed as restart latency.
var httpClient = &http.Client{
	Transport: &http.Transport{
		DisableKeepAlives: true,
		Proxy:             nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			return c, err
		},
	},
	Timeout: time.Second,
}

// WaitServing polls port every ServePoll until a process other than old
// answers, and returns its pid and the time since start in milliseconds.
// Each attempt runs on its own, so one that stalls (say, connected to the
// dying process just before its socket closed) cannot delay seeing the new
// process; the number in flight is bounded.
func WaitServing(ctx context.Context, port, old int, start time.Time) (int, float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	type hit struct {
		pid int
		at  float64
	}
	hits := make(chan hit, 1)
	inflight := make(chan struct{}, 32)
	tick := time.NewTicker(ServePoll)
	defer tick.Stop()
	for {
		select {
		case inflight <- struct{}{}:
			wg.Add(1)
			go func() {
				defer func() { <-inflight; wg.Done() }()
				pid, err := ServingPID(ctx, port)
				if err == nil && pid != old {
					select {
					case hits <- hit{pid, MS(time.Since(start))}:
					default: // another attempt got there first
					}
				}
			}()
		default: // too many attempts stalled: skip this tick
		}
		select {
		case h := <-hits:
			return h.pid, h.at, nil
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-tick.C:
		}
	}
}

// ServingPID asks the stand-in on port for its pid (GET / answers JSON).
func ServingPID(ctx context.Context, port int) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(port)+"/", nil)
	if err != nil {
		return 0, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v struct {
		PID int `json:"pid"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, err
	}
	if v.PID <= 0 {
		return 0, errors.New("no pid in answer")
	}
	return v.PID, nil
}
