package main

import (
	"github.com/dhvisor/dhvisor/agent/procfs"

	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// target is one stand-in service, run the same way under both supervisors.
type target struct {
	name      string
	ports     []int // every port it listens on
	checkPort int   // the port its health check probes; 0 for none (tailer1)
	daemon    bool  // started through a start program that daemonizes it
}

// svcStatus is what a supervisor itself says about a service.
type svcStatus struct {
	pid      int
	restarts int  // -1: the supervisor does not report one (monit)
	ok       bool // running and healthy by the supervisor's own checks
	// When the supervisor saw the last exit and started the current
	// process, where it says (dhagent, to the millisecond); zero if not.
	exitAt, startedAt time.Time
}

// statusSource is what the crash loop asks about the services it kills.
type statusSource interface {
	status(ctx context.Context, svc string) (svcStatus, error)
	// statusPoll is how often the crash loop asks status while waiting.
	statusPoll() time.Duration
}

// supervisor is what the benchmark needs from dhagent or monit.
type supervisor interface {
	statusSource
	pid() int
	stop() error
}

// sample is one kill.
type sample struct {
	Service   string  `json:"service"`
	KilledPID int     `json:"killed_pid"`
	NewPID    int     `json:"new_pid"`
	JitterMS  float64 `json:"jitter_ms"` // random wait before the kill
	ServeMS   float64 `json:"serve_ms"`  // kill -> the new pid answers GET / on the port
	StatusMS  float64 `json:"status_ms"` // kill -> the supervisor's status shows the new pid
	SettleMS  float64 `json:"settle_ms"` // kill -> the supervisor calls the service OK again
	// Where the supervisor reports them (dhagent, 1ms resolution): kill ->
	// it recorded the exit, and kill -> it started the new process.
	ExitSeenMS *float64 `json:"exit_seen_ms,omitempty"`
	StartedMS  *float64 `json:"started_ms,omitempty"`
}

const sampleTimeout = 30 * time.Second // one kill, from SIGKILL to settled

// settled waits until the supervisor reports svc OK with the pid that
// serves its port, and returns that pid.
func settled(ctx context.Context, sup statusSource, t target, timeout time.Duration) (svcStatus, error) {
	var st svcStatus
	err := pollUntil(ctx, max(sup.statusPoll(), 10*time.Millisecond), timeout, func() (bool, error) {
		var err error
		st, err = sup.status(ctx, t.name)
		if err != nil || !st.ok || st.pid == 0 {
			return false, err
		}
		serving, err := servingPID(ctx, t.checkPort)
		return err == nil && serving == st.pid, err
	})
	if err != nil {
		return st, fmt.Errorf("%s not settled (status pid %d, ok %v): %w", t.name, st.pid, st.ok, err)
	}
	return st, nil
}

// crashLoop kills services one after another and times their comeback.
// Before each kill it waits a random time in [0, jitter): monit acts once per
// cycle, so killing at a fixed delay after the previous restart would always
// hit the same phase of its cycle and bias its latency; the random wait
// samples the phase uniformly. dhagent gets the same waits.
func crashLoop(ctx context.Context, sup statusSource, targets []target, n int, minUptime, jitter time.Duration, rng *rand.Rand, progress func(i int, s sample)) ([]sample, error) {
	var out []sample
	for i := 0; i < n; i++ {
		t := targets[i%len(targets)]
		st0, err := settled(ctx, sup, t, sampleTimeout)
		if err != nil {
			return out, err
		}
		// The restart policy restarts at once only after min_uptime; a
		// process killed younger is a crash loop and is backed off.
		before, err := procfs.ReadStat(st0.pid)
		if err != nil {
			return out, fmt.Errorf("%s pid %d: %w", t.name, st0.pid, err)
		}
		startedAt, err := before.StartTime()
		if err != nil {
			return out, err
		}
		age := time.Since(startedAt)
		wait := time.Duration(rng.Int64N(int64(jitter)))
		if need := minUptime + 250*time.Millisecond - age; need > wait {
			wait = need
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return out, err
		}
		// Still the same process (a pid with the same start time), so
		// the kill below cannot hit anything else.
		if now, err := procfs.ReadStat(st0.pid); err != nil || now.StartTicks != before.StartTicks {
			return out, fmt.Errorf("sample %d: %s pid %d went away on its own before the kill", i+1, t.name, st0.pid)
		}

		s := sample{Service: t.name, KilledPID: st0.pid, JitterMS: ms(wait)}
		start := time.Now()
		if err := unix.Kill(st0.pid, unix.SIGKILL); err != nil {
			return out, fmt.Errorf("kill %s pid %d: %w", t.name, st0.pid, err)
		}
		sctx, cancel := context.WithTimeout(ctx, sampleTimeout)
		serveC := make(chan error, 1)
		go func() {
			var err error
			s.NewPID, s.ServeMS, err = waitServing(sctx, t.checkPort, st0.pid, start)
			serveC <- err
		}()
		statusErr := pollUntil(sctx, sup.statusPoll(), sampleTimeout, func() (bool, error) {
			st, err := sup.status(sctx, t.name)
			if err != nil {
				return false, err
			}
			if st.pid != 0 && st.pid != st0.pid && (st0.restarts < 0 || st.restarts > st0.restarts) {
				s.StatusMS = ms(time.Since(start))
				if !st.exitAt.IsZero() && !st.startedAt.IsZero() {
					e, r := ms(st.exitAt.Sub(start)), ms(st.startedAt.Sub(start))
					s.ExitSeenMS, s.StartedMS = &e, &r
				}
				return true, nil
			}
			return false, nil
		})
		serveErr := <-serveC
		cancel()
		if serveErr != nil {
			return out, fmt.Errorf("sample %d: %s killed (pid %d) but no new process answered on port %d: %w", i+1, t.name, st0.pid, t.checkPort, serveErr)
		}
		if statusErr != nil {
			return out, fmt.Errorf("sample %d: %s restarted as pid %d but the supervisor's status did not show it: %w", i+1, t.name, s.NewPID, statusErr)
		}
		st1, err := settled(ctx, sup, t, sampleTimeout)
		if err != nil {
			return out, fmt.Errorf("sample %d: %w", i+1, err)
		}
		if st1.pid != s.NewPID {
			return out, fmt.Errorf("sample %d: %s: pid %d answered first, but the supervisor settled on pid %d", i+1, t.name, s.NewPID, st1.pid)
		}
		s.SettleMS = ms(time.Since(start))
		out = append(out, s)
		if progress != nil {
			progress(i, s)
		}
	}
	return out, nil
}

// portsFree fails if anything listens on the targets' ports: the two
// supervisors run one after the other on the same ports, and so does a
// leftover `make demo`.
func portsFree(targets []target) error {
	for _, t := range targets {
		for _, p := range t.ports {
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), 200*time.Millisecond)
			if err == nil {
				c.Close()
				return fmt.Errorf("port %d (%s) is already in use on 127.0.0.1; stop whatever holds it (a running `make demo`? then `make demo-stop`)", p, t.name)
			}
		}
	}
	return nil
}

// waitPortsFree waits, bounded, for a stopped supervisor's services to let
// go of their ports before the next one starts.
func waitPortsFree(targets []target, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := portsFree(targets)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
