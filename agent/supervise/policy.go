package supervise

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/internal/config"
)

// initialRecord is what the agent starts from for a service it has no
// record of: it runs, as monit starts everything, unless the service is
// started only by an operator (mode manual, or on_boot nostart).
func initialRecord(spec *config.Service) state.Service {
	if spec.Mode == config.ModeManual || spec.OnBoot == config.OnBootNoStart {
		return state.Service{}
	}
	return state.Service{DesiredRunning: true, Monitored: true}
}

// afterReboot applies the service's on_boot to its record from before the
// host rebooted: start runs it again (a Failed verdict from the last boot
// cleared), nostart leaves it stopped and unmonitored, laststate keeps
// what the operator last asked for. A manual service is never started by a
// reboot. The restart history of the last boot does not count.
func afterReboot(spec *config.Service, rec state.Service) state.Service {
	rec.FastFailures, rec.RecentRestarts = 0, nil
	switch {
	case spec.OnBoot == config.OnBootLastState:
	case spec.OnBoot == config.OnBootStart && spec.Mode != config.ModeManual:
		rec.DesiredRunning, rec.Monitored, rec.Failed, rec.FailedReason = true, true, false, ""
	default:
		rec.DesiredRunning, rec.Monitored = false, false
	}
	return rec
}

// restartDecision is what the restart policy says about one unplanned end of
// a service's process.
type restartDecision struct {
	giveUp       bool          // the restart limit is reached: Failed
	delay        time.Duration // wait this long before starting again
	fastFailures int           // consecutive runs shorter than min_uptime
	recent       []time.Time   // restarts within the window, this one included
}

// decideRestart applies the design's policy: restart at once after a run of
// at least min_uptime; otherwise back off exponentially (with ±20% jitter so
// a node's services do not retry in lockstep) up to backoff_max; and give up
// when limit restarts already happened within window, as monit's
// "if 5 restarts within 5 cycles then unmonitor" does.
func decideRestart(p config.RestartPolicy, uptime time.Duration, fastFailures int, recent []time.Time, now time.Time, jitter func() float64) restartDecision {
	kept := slices.DeleteFunc(slices.Clone(recent), func(t time.Time) bool { return now.Sub(t) >= p.Window.D() })
	if p.Limit > 0 && len(kept) >= p.Limit {
		return restartDecision{giveUp: true, fastFailures: fastFailures, recent: kept}
	}
	d := restartDecision{recent: append(kept, now)}
	if uptime >= p.MinUptime.D() {
		return d
	}
	d.fastFailures = fastFailures + 1
	delay := p.BackoffInitial.D()
	for i := 1; i < d.fastFailures && delay < p.BackoffMax.D(); i++ {
		delay *= 2
	}
	delay = min(delay, p.BackoffMax.D())
	d.delay = time.Duration(float64(delay) * (0.8 + 0.4*jitter()))
	return d
}

func randomJitter() float64 { return rand.Float64() }

func isPermanent(p config.RestartPolicy, code int) bool {
	return code >= 0 && slices.Contains(p.PermanentExitCodes, code)
}
