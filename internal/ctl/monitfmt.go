package ctl

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// This file prints what monit 5.33 prints for `summary` and `status`, byte
// for byte where the values are the same: Deephaven's runbooks and scripts
// read that output (grep for "OK", columns cut by position). The layout was
// taken from the real /usr/bin/monit 5.33 on a terminal and through a pipe;
// test/e2e compares the two on the same services.

// monit's service types, the summary's third column and the status block's
// heading.
type monitKind string

const (
	monitProcess monitKind = "Process"
	monitSystem  monitKind = "System"
)

// monit's status words. dhvisor's own states are monit's words already,
// except the ones monit does not have (see monitStatusWord).
const (
	monitOK           = "OK"
	monitInitializing = "Initializing"
	monitNotMonitored = "Not monitored"
	monitDoesNotExist = "Does not exist"
	monitMonitored    = "Monitored"
	monitModeActive   = "active"
)

// The summary's column widths (monit's TextBox): a value longer than its
// column is cut to width-3 characters and "...".
const (
	monitNameWidth   = 31
	monitStatusWidth = 26
	monitTypeWidth   = 13
)

// monit's terminal colours.
const (
	ansiReset     = "\x1b[0m"
	ansiBorder    = "\x1b[0;90m"
	ansiHeader    = "\x1b[1;36m"
	ansiGreen     = "\x1b[0;92m"
	ansiBlue      = "\x1b[0;94m"
	ansiYellow    = "\x1b[0;93m"
	ansiRed       = "\x1b[0;91m"
	ansiCollected = "\x1b[0;39m"
)

// monitTimeLayout is monit's "data collected" time (local time, no zone).
const monitTimeLayout = "Mon, 02 Jan 2006 15:04:05"

// monitService is one row of `monit summary`, one block of `monit status`.
type monitService struct {
	name       string
	kind       monitKind
	status     string // monit's word
	monitoring string // Monitored, Not monitored, Initializing
	mode       string
	onReboot   string
	proc       *monitProc // nil: no process lines (none runs, or not monitored)
	collected  time.Time
}

// monitProc is what `monit status` prints about a running process. Fields
// that could not be read are negative and not printed.
type monitProc struct {
	pid, ppid, uid, euid, gid, threads, children int
	uptime                                       time.Duration
	cpu                                          float64 // percent; negative: not measured yet
	memBytes                                     uint64
	memPercent                                   float64
}

// monitStatusWord maps a dhvisor state to the word monit shows in the same
// situation. Stopped is monit's unmonitored stop; Restarting is a process
// gone and about to be started again, which monit shows as does-not-exist;
// Failed is the restart limit, which monit meets with unmonitor; Waiting (a
// cold boot's start held for a dependency) is Initializing. dhctl status
// keeps dhvisor's own words.
func monitStatusWord(s *pb.ServiceStatus) string {
	switch s.State {
	case "Stopped", "Failed":
		return monitNotMonitored
	case "Restarting":
		return monitDoesNotExist
	case "", "Waiting":
		// Waiting is a start held for a dependency elsewhere: monit's
		// word for a service not yet up is Initializing.
		return monitInitializing
	}
	if !s.Monitored {
		return monitNotMonitored
	}
	return s.State
}

func monitMonitoringWord(status string) string {
	switch status {
	case monitNotMonitored, monitInitializing:
		return status
	}
	return monitMonitored
}

// monitMode is the monitoring mode monit prints: it shows manual services as
// active (seen from monit 5.33 with `mode manual`).
func monitMode(mode string) string {
	if mode == "" || mode == "manual" {
		return monitModeActive
	}
	return mode
}

// monitOnReboot is the on-reboot word; dhvisor's default (laststate) is
// what monit shows for a service without an onreboot statement as start.
func monitOnReboot(onBoot string) string {
	if onBoot == "" || onBoot == "laststate" {
		return "start"
	}
	return onBoot
}

func monitColor(status string) string {
	switch {
	case strings.HasPrefix(status, monitOK):
		return ansiGreen
	case strings.HasPrefix(status, monitInitializing):
		return ansiBlue
	case strings.HasPrefix(status, monitNotMonitored):
		return ansiYellow
	}
	return ansiRed
}

// monitUptime is monit's Time_uptime: days and hours only when not zero,
// minutes always, and nothing at all for under a second.
func monitUptime(d time.Duration) string {
	sec := int64(d / time.Second)
	if sec <= 0 {
		return ""
	}
	var parts []string
	if days := sec / 86400; days > 0 {
		parts = append(parts, strconv.FormatInt(days, 10)+"d")
		sec -= days * 86400
	}
	if hours := sec / 3600; hours > 0 {
		parts = append(parts, strconv.FormatInt(hours, 10)+"h")
		sec -= hours * 3600
	}
	parts = append(parts, strconv.FormatInt(sec/60, 10)+"m")
	return strings.Join(parts, " ")
}

// monitBytes is monit's byte count: 1024-based units with one decimal,
// the decimal dropped when it is zero ("4 kB", "11.6 MB").
func monitBytes(b uint64) string {
	units := []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}
	v := float64(b)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[i]
}

func monitCut(s string, width int) string {
	r := []rune(s)
	if len(r) <= width {
		return s
	}
	return string(r[:width-3]) + "..."
}

func pad(s string, width int) string {
	if n := len([]rune(s)); n < width {
		return s + strings.Repeat(" ", width-n)
	}
	return s
}

// monitBanner is the line both commands start with. monit's reads
// "Monit 5.33.0 uptime: 2h 5m"; ours names dhagent and its version, since
// that is what answers.
func monitBanner(version string, uptime time.Duration) string {
	return fmt.Sprintf("dhagent %s uptime: %s", version, monitUptime(uptime))
}

// writeMonitSummary prints `monit summary`: a box-drawn, coloured table on a
// terminal, plain columns otherwise or in batch mode (-B).
func writeMonitSummary(w io.Writer, banner string, svcs []monitService, box bool) {
	fmt.Fprintln(w, banner)
	if !box {
		fmt.Fprintf(w, " %s %s %s \n", pad("Service Name", monitNameWidth+1), pad("Status", monitStatusWidth+1), pad("Type", monitTypeWidth))
		for _, s := range svcs {
			fmt.Fprintf(w, " %s %s %s \n", pad(monitCut(s.name, monitNameWidth), monitNameWidth+1),
				pad(monitCut(s.status, monitStatusWidth), monitStatusWidth+1), pad(monitCut(string(s.kind), monitTypeWidth), monitTypeWidth))
		}
		return
	}
	rule := func(left, mid, right string) {
		fmt.Fprintf(w, "%s%s%s%s%s%s%s%s\n", ansiBorder, left, strings.Repeat("─", monitNameWidth+2), mid,
			strings.Repeat("─", monitStatusWidth+2), mid, strings.Repeat("─", monitTypeWidth+2), right+ansiReset)
	}
	bar := ansiBorder + "│" + ansiReset
	rule("┌", "┬", "┐")
	fmt.Fprintf(w, "%s %s%s%s %s %s%s%s %s %s%s%s %s\n", bar, ansiHeader, pad("Service Name", monitNameWidth), ansiReset,
		bar, ansiHeader, pad("Status", monitStatusWidth), ansiReset, bar, ansiHeader, pad("Type", monitTypeWidth), ansiReset, bar)
	for _, s := range svcs {
		rule("├", "┼", "┤")
		status := monitCut(s.status, monitStatusWidth)
		fmt.Fprintf(w, "%s %s%s %s%s%s%s %s%s\n", bar, pad(monitCut(s.name, monitNameWidth), monitNameWidth+1),
			bar, monitColor(status), pad(status, monitStatusWidth+1), ansiReset, bar, pad(monitCut(string(s.kind), monitTypeWidth), monitTypeWidth+1), bar)
	}
	rule("└", "┴", "┘")
}

// writeMonitStatus prints `monit status`: a block per service, each line a
// 28-wide key and its value.
func writeMonitStatus(w io.Writer, banner string, svcs []monitService, color bool) {
	fmt.Fprintln(w, banner)
	paint := func(code, s string) string {
		if !color {
			return s
		}
		return code + s + ansiReset
	}
	line := func(key, value string) { fmt.Fprintf(w, "  %-28s %s\n", key, value) }
	for _, s := range svcs {
		fmt.Fprintf(w, "\n%s\n", paint(ansiHeader, fmt.Sprintf("%s '%s'", s.kind, s.name)))
		line("status", paint(monitColor(s.status), s.status))
		line("monitoring status", paint(monitColor(s.monitoring), s.monitoring))
		line("monitoring mode", s.mode)
		line("on reboot", s.onReboot)
		if p := s.proc; p != nil {
			for _, kv := range []struct {
				key string
				v   int
			}{{"pid", p.pid}, {"parent pid", p.ppid}, {"uid", p.uid}, {"effective uid", p.euid}, {"gid", p.gid}} {
				if kv.v >= 0 {
					line(kv.key, strconv.Itoa(kv.v))
				}
			}
			line("uptime", monitUptime(p.uptime))
			if p.threads >= 0 {
				line("threads", strconv.Itoa(p.threads))
			}
			if p.children >= 0 {
				line("children", strconv.Itoa(p.children))
			}
			cpu := "-" // monit's before its second sample
			if p.cpu >= 0 {
				cpu = fmt.Sprintf("%.1f%%", p.cpu)
			}
			line("cpu", cpu)
			line("cpu total", cpu)
			mem := fmt.Sprintf("%.1f%% [%s]", p.memPercent, monitBytes(p.memBytes))
			line("memory", mem)
			line("memory total", mem)
		}
		line("data collected", paint(ansiCollected, s.collected.Format(monitTimeLayout)))
	}
	fmt.Fprintln(w)
}
