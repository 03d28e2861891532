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
	var pings atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), 5*time.Millisecond, func(pctx context.Context) error {
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
	waitPings := func(min int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for pings.Load() < min {
			if time.Now().After(deadline) {
				t.Fatalf("%d pings, want at least %d", pings.Load(), min)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitPings(3)
	for _, stuck := range []func(){func() { healthy.Store(false) }, func() { hung.Store(true) }} {
		stuck()
		time.Sleep(20 * time.Millisecond) // a probe in flight may still ping
		before := pings.Load()
		time.Sleep(50 * time.Millisecond) // ten intervals
		if n := pings.Load(); n != before {
			t.Fatalf("%d pings while the probe fails or hangs", n-before)
		}
		healthy.Store(true)
		hung.Store(false)
		waitPings(before + 2)
	}
	cancel()
	<-done
}
