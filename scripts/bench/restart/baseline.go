package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// baseline times a stand-in with no supervisor at all: from fork/exec to
// its pid answering GET / on its port, with the same poller as the crash
// test. No supervisor can restart a service faster than this, so it is the
// floor under both supervisors' numbers.
func baseline(ctx context.Context, b *bench, t target, n int) ([]float64, error) {
	dir := filepath.Join(b.tmp, "baseline")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := portsFree([]target{t}); err != nil {
		return nil, err
	}
	var out []float64
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := b.reaper.start("dh-standin", filepath.Join(dir, "standin.log"),
			b.bin("dh-standin"), "--name="+t.name, "--ports="+joinInts(t.ports))
		if err != nil {
			return out, err
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		pid, at, err := waitServing(sctx, t.checkPort, 0, start)
		cancel()
		c.kill()
		if !c.wait(5 * time.Second) {
			return out, fmt.Errorf("baseline stand-in pid %d did not die on SIGKILL", c.pid)
		}
		if err != nil {
			return out, fmt.Errorf("baseline stand-in did not answer on port %d: %w\n%s", t.checkPort, err, tail(filepath.Join(dir, "standin.log"), 5))
		}
		if pid != c.pid {
			return out, fmt.Errorf("port %d answered by pid %d, not by the stand-in just started (pid %d)", t.checkPort, pid, c.pid)
		}
		out = append(out, at)
		if err := waitPortsFree([]target{t}, 5*time.Second); err != nil {
			return out, err
		}
	}
	return out, nil
}
