package main

import (
	"fmt"
	"io"
)

type daemonizedResult struct {
	ServicesPerMode int                     `json:"services_per_mode"`
	Series          map[series]*crashResult `json:"series"`
	Systemd         string                  `json:"systemd,omitempty"`
	Verdicts        []daemonVerdict         `json:"verdicts"`
}

// daemonVerdict is one acceptance figure of issue 14 on one runtime.
type daemonVerdict struct {
	Runtime string  `json:"runtime"`
	What    string  `json:"what"`
	Op      string  `json:"op"` // how Value must compare with Target
	Value   float64 `json:"value"`
	Target  float64 `json:"target"`
	Met     bool    `json:"met"`
}

func newDaemonizedResult() *daemonizedResult {
	return &daemonizedResult{ServicesPerMode: perMode, Series: map[series]*crashResult{}}
}

// verdicts computes the acceptance figures of each runtime whose series
// are complete.
func (d *daemonizedResult) verdicts() []daemonVerdict {
	var out []daemonVerdict
	full := func(k series) (stats, bool) {
		c := d.Series[k]
		if c == nil || c.Serve.N == 0 {
			return stats{}, false
		}
		return c.Serve, true
	}
	monit, haveMonit := full(seriesMonit)
	for _, rt := range []struct {
		name          string
		pidfile, fore series
	}{{runtimeExec, seriesPidfileExec, seriesForeExec}, {runtimeSystemd, seriesPidfileSysd, seriesForeSysd}} {
		pf, ok := full(rt.pidfile)
		if !ok {
			continue
		}
		if fg, ok := full(rt.fore); ok {
			diff := pf.P99 - fg.P99
			out = append(out, daemonVerdict{Runtime: rt.name, What: "p99(pidfile) - p99(foreground), ms",
				Op: "<=", Value: diff, Target: ms(targetPidfileOverForeground), Met: diff <= ms(targetPidfileOverForeground)})
		}
		if haveMonit && pf.P50 > 0 {
			ratio := monit.P50 / pf.P50
			out = append(out, daemonVerdict{Runtime: rt.name, What: "p50(monit) / p50(pidfile)",
				Op: ">=", Value: ratio, Target: targetMonitOverPidfile, Met: ratio >= targetMonitOverPidfile})
		}
	}
	return out
}

func reportDaemonized(w io.Writer, d *daemonizedResult, s settings) {
	fmt.Fprintf(w, "\nDaemonized service (test/standin --launcher: the start program returns at once, the service writes its own pidfile\n")
	fmt.Fprintf(w, "and refuses to start while one exists): SIGKILL until a NEW pid answers GET / on its port (polled every %s)\n", s.ServePoll)
	fmt.Fprintf(w, "  %d services per series, kills rotating over them, a random 0-%s wait before each; dhagent's two modes interleaved in one agent\n", d.ServicesPerMode, s.JitterMax)
	fmt.Fprintf(w, "  floor: a bash `while true` loop running the same launcher, waiting (1ms builtin poll) for the pid to die, removing the pidfile\n")
	fmt.Fprintf(w, "  dhagent: start: [dh-standin --launcher --pidfile P ...], pidfile: P, %s; systemd: Type=forking, PIDFile= in a real systemd (%s)\n", benchRestartYAML, d.Systemd)
	fmt.Fprintf(w, "  monit: %s, check process with pidfile P, start program = the launcher after `rm -f P` (monit leaves a stale pidfile), if failed port\n", s.MonitDaemon)
	statsHeader(w)
	for _, k := range seriesOrder {
		if c := d.Series[k]; c != nil && c.Serve.N > 0 {
			statsRow(w, seriesLabel[k], c.Serve, "")
		}
	}
	for _, v := range d.Verdicts {
		fmt.Fprintf(w, "  target (%s): %s %s %g ... %s (%.2f)\n", v.Runtime, v.What, v.Op, v.Target, verdict(v.Met), v.Value)
	}
}
