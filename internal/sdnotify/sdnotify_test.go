package sdnotify

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestPingsOnlyWhileTheProbeSucceeds: a hung probe (the daemon's loop
// blocked) and a failing one stop the pings; a bare timer would not.
func TestPingsOnlyWhileTheProbeSucceeds(t *testing.T) {
	var healthy, hung atomic.Bool
	healthy.Store(true)
	// run pings right after a probe returns and before it starts the next,
	// so a probe started means every earlier probe's ping is counted.
	var probes, pings atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), 5*time.Millisecond, func(pctx context.Context) error {
			probes.Add(1)
			if hung.Load() {
				<-pctx.Done()
				return pctx.Err()
			}
			if !healthy.Load() {
				return errors.New("not serving")
			}
			return nil
		}, func() { pings.Add(1) })
	}()
	waitFor := func(n *atomic.Int32, min int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for n.Load() < min {
			if time.Now().After(deadline) {
				t.Fatalf("%d, want at least %d", n.Load(), min)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(&pings, 3)
	for _, stuck := range []func(){func() { healthy.Store(false) }, func() { hung.Store(true) }} {
		stuck()
		// The probe that starts after this one is the first to see the
		// change; once it starts, the one in flight has pinged or not.
		waitFor(&probes, probes.Load()+2)
		before, from := pings.Load(), probes.Load()
		waitFor(&probes, from+10)
		if n := pings.Load(); n != before {
			t.Fatalf("%d pings in %d probes that failed or hung", n-before, probes.Load()-from)
		}
		healthy.Store(true)
		hung.Store(false)
		waitFor(&pings, before+2)
	}
	cancel()
	<-done
}
