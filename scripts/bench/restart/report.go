package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

type results struct {
	Started   time.Time               `json:"started"`
	Finished  time.Time               `json:"finished,omitzero"`
	Host      hostInfo                `json:"host"`
	Settings  settings                `json:"settings"`
	Baseline  *baselineResult         `json:"baseline,omitempty"`
	Crash     map[string]*crashResult `json:"crash"`     // by supervisor: dhagent, monit
	Footprint map[string]*footprint   `json:"footprint"` // by supervisor
	// Daemonized is the pidfile-mode comparison (issue 14).
	Daemonized *daemonizedResult `json:"daemonized,omitempty"`
	Targets    targets           `json:"targets"`
	Notes      []string          `json:"notes,omitempty"`
}

type hostInfo struct {
	LoadStart string `json:"load1_start"`
	LoadEnd   string `json:"load1_end"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	Monit     string `json:"monit"`
	Dhagent   string `json:"dhagent"`
}

type settings struct {
	Samples       int      `json:"samples"`
	Services      int      `json:"services"`
	Killed        []string `json:"killed_in_rotation"`
	MinUptime     string   `json:"min_uptime"`
	RestartPolicy string   `json:"dhagent_restart_policy"`
	MonitDaemon   string   `json:"monit_daemon"`
	JitterMax     string   `json:"jitter_max"`
	ServePoll     string   `json:"serve_poll"`
	Settle        string   `json:"footprint_settle"`
	Idle          string   `json:"footprint_idle"`
	Seed          uint64   `json:"seed"`
	OrphansReaped int      `json:"orphans_reaped"`
}

// baselineResult is a stand-in started by the harness itself, no
// supervisor: exec to answering on its port.
type baselineResult struct {
	Service   string    `json:"service"`
	Stats     stats     `json:"stats"`
	SamplesMS []float64 `json:"samples_ms"`
}

type crashResult struct {
	Serve   stats    `json:"serve"`  // kill -> new pid answers on the port
	Status  stats    `json:"status"` // kill -> status shows the new pid
	Samples []sample `json:"samples"`
}

func (c *crashResult) set(s []sample) {
	c.Samples = s
	var serve, status []float64
	for _, x := range s {
		serve = append(serve, x.ServeMS)
		status = append(status, x.StatusMS)
	}
	c.Serve, c.Status = summarise(serve), summarise(status)
}

// breakdown returns the medians of when dhagent saw the exit and started
// the new process, relative to the kill.
func (c *crashResult) breakdown() (exitSeen, started float64, ok bool) {
	var e, st []float64
	for _, x := range c.Samples {
		if x.ExitSeenMS != nil && x.StartedMS != nil {
			e, st = append(e, *x.ExitSeenMS), append(st, *x.StartedMS)
		}
	}
	if len(e) == 0 {
		return 0, 0, false
	}
	return summarise(e).P50, summarise(st).P50, true
}

type targets struct {
	P99MS      float64 `json:"crash_to_restart_p99_ms"`
	RSSBytes   uint64  `json:"agent_rss_bytes"`
	CPUPercent float64 `json:"idle_cpu_percent"`
	P99Met     *bool   `json:"p99_met,omitempty"`
	RSSMet     *bool   `json:"rss_met,omitempty"`
	CPUMet     *bool   `json:"cpu_met,omitempty"`
}

// report prints the tables and fills in r.Targets, so that the JSON written
// afterwards carries the same verdicts.
func report(w io.Writer, r *results) {
	r.Targets = targets{P99MS: ms(targetP99), RSSBytes: targetRSS, CPUPercent: targetCPUPct}
	fmt.Fprintf(w, "\n== dhagent vs monit: restart latency and footprint ==\n")
	fmt.Fprintf(w, "host: %d CPUs, Linux %s; %s; dhagent %s; 1-min load %s at start, %s at end (other work on the host is noise)\n",
		r.Host.CPUs, r.Host.Kernel, r.Host.Monit, strings.TrimPrefix(r.Host.Dhagent, "dhagent "), r.Host.LoadStart, r.Host.LoadEnd)

	a, m := r.Crash["dhagent"], r.Crash["monit"]
	if a != nil && a.Serve.N > 0 {
		fmt.Fprintf(w, "\nCrash to restart: SIGKILL of a service process until a NEW pid answers GET / on its port (polled every %s)\n", r.Settings.ServePoll)
		fmt.Fprintf(w, "  %d kills per supervisor, rotating over %d of the %d single-node services; a random 0-%s wait before each kill\n",
			r.Settings.Samples, len(r.Settings.Killed), r.Settings.Services, r.Settings.JitterMax)
		fmt.Fprintf(w, "  dhagent restart policy (bench agent.yaml defaults): %s; every killed process was older than min_uptime\n", r.Settings.RestartPolicy)
		fmt.Fprintf(w, "  monit: %s, `if failed port` test per service; stand-ins daemonized with pidfiles; same ports, run after dhagent\n", r.Settings.MonitDaemon)
		fmt.Fprintf(w, "  percentiles are nearest-rank (each one a measured kill); with fewer than 100 kills p99 is the max\n")
		table(w, r.Host.Monit, a.Serve, statsOrNil(m, false))
		if r.Baseline != nil && r.Baseline.Stats.N > 0 {
			statsRow(w, "stand-in alone", r.Baseline.Stats, "   <- floor: dh-standin alone, fork/exec to answering, no supervisor")
		}
		if e, st, ok := a.breakdown(); ok {
			fmt.Fprintf(w, "  dhagent medians from the kill: exit seen %s, new process started %s (dhagent's own timestamps, 1ms resolution),\n", fmtMS(e), fmtMS(st))
			fmt.Fprintf(w, "  status shows it %s, new process answering %s\n", fmtMS(a.Status.P50), fmtMS(a.Serve.P50))
		}
		met := a.Serve.P99 < ms(targetP99)
		r.Targets.P99Met = &met
		fmt.Fprintf(w, "  target: dhagent p99 < %s ... %s (%s)\n", targetP99, verdict(met), fmtMS(a.Serve.P99))

		fmt.Fprintf(w, "\nUntil the supervisor's status shows the restart\n")
		fmt.Fprintf(w, "  dhagent: gRPC Status (what `dhctl status` shows) has the new pid and restarts+1, polled every 1ms\n")
		fmt.Fprintf(w, "  monit:   HTTP _status (what `monit status` shows) has the new pid, polled every 20ms\n")
		table(w, r.Host.Monit, a.Status, statsOrNil(m, true))
	}

	fa, fm := r.Footprint["dhagent"], r.Footprint["monit"]
	if fa != nil && fa.WindowS > 0 {
		fmt.Fprintf(w, "\nFootprint: %d services (12 single-node + 3 extra), checks and resource sampling every 1s\n", fa.Services)
		fmt.Fprintf(w, "  after a %s settle, over a %s idle window; the supervisor's own process only (/proc/PID/stat utime+stime, /proc/PID/status)\n", r.Settings.Settle, r.Settings.Idle)
		fmt.Fprintf(w, "  %-16s %10s %12s %12s %10s\n", "", "RSS", "max RSS", "peak (HWM)", "CPU")
		row := func(name string, f *footprint) {
			fmt.Fprintf(w, "  %-16s %10s %12s %12s %9.2f%%\n", name, mb(f.RSSBytes), mb(f.MaxRSSBytes), mb(f.HWMBytes), f.CPUPercent)
		}
		row("dhagent", fa)
		if fm != nil && fm.WindowS > 0 {
			row("monit", fm)
			cpuRatio := "-"
			if fa.CPUPercent > 0 {
				cpuRatio = fmt.Sprintf("%.2fx", fm.CPUPercent/fa.CPUPercent)
			}
			fmt.Fprintf(w, "  %-16s %10s %12s %12s %10s\n", "monit/dhagent",
				fmt.Sprintf("%.2fx", float64(fm.RSSBytes)/float64(fa.RSSBytes)),
				fmt.Sprintf("%.2fx", float64(fm.MaxRSSBytes)/float64(fa.MaxRSSBytes)),
				fmt.Sprintf("%.2fx", float64(fm.HWMBytes)/float64(fa.HWMBytes)), cpuRatio)
		}
		rssMet, cpuMet := fa.MaxRSSBytes < targetRSS, fa.CPUPercent < targetCPUPct
		r.Targets.RSSMet, r.Targets.CPUMet = &rssMet, &cpuMet
		fmt.Fprintf(w, "  target: dhagent RSS < %s ... %s (max %s)\n", mb(targetRSS), verdict(rssMet), mb(fa.MaxRSSBytes))
		fmt.Fprintf(w, "  target: dhagent idle CPU < %.0f%% with %d services ... %s (%.2f%%, %d ticks in %.1fs)\n", targetCPUPct, fa.Services, verdict(cpuMet), fa.CPUPercent, fa.CPUTicks, fa.WindowS)
	}
	if r.Settings.OrphansReaped > 0 {
		fmt.Fprintf(w, "\nThe harness (a child subreaper) reaped %d orphaned stand-ins, the ones monit daemonized, as an init would.\n", r.Settings.OrphansReaped)
	}
	if r.Daemonized != nil {
		reportDaemonized(w, r.Daemonized, r.Settings)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

func statsOrNil(c *crashResult, status bool) *stats {
	if c == nil || c.Serve.N == 0 {
		return nil
	}
	if status {
		return &c.Status
	}
	return &c.Serve
}

// table prints dhagent, monit and their ratio side by side.
func table(w io.Writer, monit string, a stats, m *stats) {
	statsHeader(w)
	statsRow(w, "dhagent", a, "")
	if m == nil {
		return
	}
	statsRow(w, monit, *m, "")
	ratio := func(x, y float64) string {
		if y <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.0fx", x/y)
	}
	fmt.Fprintf(w, "  %-20s %4s %10s %10s %10s %10s %10s\n", "monit/dhagent", "", ratio(m.P50, a.P50), ratio(m.P90, a.P90), ratio(m.P99, a.P99), ratio(m.Max, a.Max), ratio(m.Mean, a.Mean))
}

func statsHeader(w io.Writer) {
	fmt.Fprintf(w, "  %-20s %4s %10s %10s %10s %10s %10s\n", "", "n", "p50", "p90", "p99", "max", "mean")
}

func statsRow(w io.Writer, name string, s stats, note string) {
	fmt.Fprintf(w, "  %-20s %4d %10s %10s %10s %10s %10s%s\n", name, s.N, fmtMS(s.P50), fmtMS(s.P90), fmtMS(s.P99), fmtMS(s.Max), fmtMS(s.Mean), note)
}

func mb(b uint64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }
