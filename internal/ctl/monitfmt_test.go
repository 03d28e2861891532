package ctl

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// The golden files under testdata/monit are real monit 5.33 output (through
// a pipe, and on a pty with `script -qc`, its \r\n made \n) for services
// named and in the states below; the formatter must print them byte for
// byte from the same values.
const monitBannerGolden = "Monit 5.33.0 uptime: 0m"

const longName = "a_very_long_service_name_exceeding_width_x"

func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "monit", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWriteMonitSummary(t *testing.T) {
	initial := []monitService{
		{name: "vm", kind: monitSystem, status: monitInitializing},
		{name: "svc_a", kind: monitProcess, status: "OK - unmonitor pending"},
		{name: longName, kind: monitProcess, status: monitOK},
		{name: "svc_c", kind: monitProcess, status: monitInitializing},
	}
	for _, tc := range []struct {
		name   string
		box    bool
		golden string
	}{
		{"pipe", false, "summary-plain.txt"},
		{"terminal", true, "summary-tty.txt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			writeMonitSummary(&b, monitBannerGolden, initial, tc.box)
			if want := golden(t, tc.golden); b.String() != want {
				t.Errorf("got\n%q\nwant (monit 5.33)\n%q", b.String(), want)
			}
		})
	}
}

func TestWriteMonitStatus(t *testing.T) {
	collected := func(hms string) time.Time {
		at, err := time.ParseInLocation(monitTimeLayout, "Mon, 07 Dec 2026 "+hms, time.Local)
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	unmonitored := func(name string, kind monitKind, status, onReboot, at string) monitService {
		return monitService{name: name, kind: kind, status: status, monitoring: monitMonitoringWord(status), mode: monitModeActive, onReboot: onReboot, collected: collected(at)}
	}
	notMonitored := []monitService{
		unmonitored("svc_a", monitProcess, monitNotMonitored, "start", "06:16:56"),
		unmonitored(longName, monitProcess, monitNotMonitored, "start", "06:16:56"),
		unmonitored("svc_c", monitProcess, monitInitializing, "nostart", "06:16:56"),
		unmonitored("vm", monitSystem, monitNotMonitored, "start", "06:16:56"),
	}
	running := func(name string, pid, threads int, mem uint64) monitService {
		s := unmonitored(name, monitProcess, "OK - unmonitor pending", "start", "06:14:21")
		s.monitoring = monitMonitored
		// 11.6 MB and 0.0% of this machine's memory, as monit measured them.
		s.proc = &monitProc{pid: pid, ppid: 1, threads: threads, uptime: 2*time.Minute + 10*time.Second, cpu: -1, memBytes: mem, memPercent: 0.04}
		return s
	}
	a, b := running("svc_a", 628, 7, 12163481), running(longName, 641, 6, 12268339)
	b.status = monitOK
	for _, tc := range []struct {
		name   string
		color  bool
		svcs   []monitService
		golden string
	}{
		{"not monitored, pipe", false, notMonitored, "status-notmonitored.txt"},
		{"not monitored, terminal", true, notMonitored, "status-tty.txt"},
		{"running, pipe", false, []monitService{a, b}, "status-running.txt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			writeMonitStatus(&out, monitBannerGolden, tc.svcs, tc.color)
			if want := golden(t, tc.golden); out.String() != want {
				t.Errorf("got\n%s\nwant (monit 5.33)\n%s", out.String(), want)
			}
		})
	}
}

func TestMonitUptime(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, ""},
		{500 * time.Millisecond, ""},
		{time.Second, "0m"},
		{59 * time.Second, "0m"},
		{2*time.Minute + 10*time.Second, "2m"},
		{8*time.Hour + 20*time.Minute, "8h 20m"},
		{3 * time.Hour, "3h 0m"},
		{49*time.Hour + 5*time.Minute, "2d 1h 5m"},
		{48*time.Hour + 5*time.Minute, "2d 5m"},
	} {
		if got := monitUptime(tc.d); got != tc.want {
			t.Errorf("monitUptime(%s) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestMonitBytes(t *testing.T) {
	for _, tc := range []struct {
		b    uint64
		want string
	}{
		{0, "0 B"},
		{55, "55 B"},
		{1023, "1023 B"},
		{4096, "4 kB"},
		{8294, "8.1 kB"},
		{12163481, "11.6 MB"},
		{3 << 30, "3 GB"},
	} {
		if got := monitBytes(tc.b); got != tc.want {
			t.Errorf("monitBytes(%d) = %q, want %q", tc.b, got, tc.want)
		}
	}
}

func TestMonitStatusWord(t *testing.T) {
	for _, tc := range []struct {
		state     string
		monitored bool
		want      string
	}{
		{"OK", true, monitOK},
		{"OK", false, monitNotMonitored},
		{"Initializing", true, monitInitializing},
		{"Stopped", false, monitNotMonitored},
		{"Failed", false, monitNotMonitored},
		{"Restarting", true, monitDoesNotExist},
		{"Execution failed", true, "Execution failed"},
		{"Connection failed", true, "Connection failed"},
		{"Does not exist", true, monitDoesNotExist},
		{"Resource limit matched", true, "Resource limit matched"},
		{"", true, monitInitializing},
		{"Waiting", true, monitInitializing},
	} {
		if got := monitStatusWord(&pb.ServiceStatus{State: tc.state, Monitored: tc.monitored}); got != tc.want {
			t.Errorf("state %q monitored %v: got %q, want %q", tc.state, tc.monitored, got, tc.want)
		}
	}
}

func TestMonitCut(t *testing.T) {
	for _, tc := range []struct {
		s     string
		width int
		want  string
	}{
		{"svc_a", monitNameWidth, "svc_a"},
		{longName, monitNameWidth, "a_very_long_service_name_exc..."},
		{"Initializing - monitor pending", monitStatusWidth, "Initializing - monitor ..."},
		{"Not monitored - unmonitor pending", monitStatusWidth, "Not monitored - unmonit..."},
		{"exactly_thirty_one_characters__", monitNameWidth, "exactly_thirty_one_characters__"},
	} {
		if got := monitCut(tc.s, tc.width); got != tc.want {
			t.Errorf("monitCut(%q, %d) = %q, want %q", tc.s, tc.width, got, tc.want)
		}
	}
}
