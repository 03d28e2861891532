package procfs

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// A real line from a shell, used as the template for crafted ones.
const bashStat = "2223 (bash) S 2221 2223 2223 0 -1 4194560 1265 25735 0 2 1 5 69 82 20 0 1 0 17269 5124096 992 18446744073709551615 94278119006208 94278119795613 140735110622864 0 0 0 65536 4 1132560123 1 0 0 17 0 0 0 0 0 0 94278120028912 94278120077156 94278281289728 140735110626139 140735110626154 140735110626154 140735110627306 0\n"

func TestParseStat(t *testing.T) {
	want := Stat{
		PID: 2223, PPID: 2221, PGID: 2223, SID: 2223, State: 'S', Comm: "bash",
		UTime: 1, STime: 5, CUTime: 69, CSTime: 82, NumThreads: 1,
		StartTicks: 17269, RSSBytes: 992 * pageSize,
	}
	withComm := func(comm string) Stat { s := want; s.Comm = comm; return s }
	tests := []struct {
		name    string
		line    string
		want    Stat
		wantErr bool
	}{
		{name: "plain", line: bashStat, want: want},
		{name: "no trailing newline", line: strings.TrimSuffix(bashStat, "\n"), want: want},
		{
			name: "comm with parens and spaces",
			line: strings.Replace(bashStat, "(bash)", "(a) (b ) Z 1 (c)", 1),
			want: withComm("a) (b ) Z 1 (c"),
		},
		{name: "comm ending in paren", line: strings.Replace(bashStat, "(bash)", "(x))", 1), want: withComm("x)")},
		{name: "empty comm", line: strings.Replace(bashStat, "(bash)", "()", 1), want: withComm("")},
		{name: "empty", line: "", wantErr: true},
		{name: "no parens", line: "2223 bash S 2221", wantErr: true},
		{name: "truncated", line: "2223 (bash) S 2221 2223 2223 0 -1", wantErr: true},
		{name: "bad pid", line: strings.Replace(bashStat, "2223 (", "x (", 1), wantErr: true},
		{name: "bad state", line: strings.Replace(bashStat, ") S ", ") SS ", 1), wantErr: true},
		{name: "bad number", line: strings.Replace(bashStat, " 17269 ", " 17z69 ", 1), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat(tt.line)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseStat succeeded with %+v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("parseStat =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestParseUptime(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    time.Duration
		wantErr bool
	}{
		{name: "present", in: "12345.67 2345.00\n", want: 12345670 * time.Millisecond},
		{name: "no idle field", in: "42.50", want: 42500 * time.Millisecond},
		{name: "empty", in: "", wantErr: true},
		{name: "garbage", in: "soon 1\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseUptime([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && got.Round(time.Millisecond) != tt.want {
				t.Errorf("uptime = %v, want %v", got, tt.want)
			}
		})
	}
}

// missingPID returns a pid no process can have.
func missingPID(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return max + 1
}

func TestReadStatSelf(t *testing.T) {
	s, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != os.Getpid() || s.PPID != os.Getppid() {
		t.Errorf("pid/ppid = %d/%d, want %d/%d", s.PID, s.PPID, os.Getpid(), os.Getppid())
	}
	if s.PGID != syscall.Getpgrp() {
		t.Errorf("pgid = %d, want %d", s.PGID, syscall.Getpgrp())
	}
	// The state is that of the main thread, which may be asleep while
	// another thread runs this test.
	if s.State != 'R' && s.State != 'S' {
		t.Errorf("state = %c, want R or S", s.State)
	}
	if want := "procfs.test"; s.Comm != want {
		t.Errorf("comm = %q, want %q", s.Comm, want)
	}
	if s.RSSBytes == 0 || s.NumThreads < 1 || s.StartTicks == 0 {
		t.Errorf("implausible stat %+v", s)
	}
}

func TestReadStatMissing(t *testing.T) {
	_, err := ReadStat(missingPID(t))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
	if _, err := IdentityOf(missingPID(t)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("IdentityOf err = %v, want fs.ErrNotExist", err)
	}
}

// startSleep starts a child that lives until the test ends.
func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// waitState polls until pid reaches state, because a freshly started or
// exiting child gets there asynchronously.
func waitState(t *testing.T, pid int, state byte) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := ReadStat(pid)
		if err == nil && s.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not reach state %c (last %+v, %v)", pid, state, s, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestIdentityAlive(t *testing.T) {
	self, err := IdentityOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}

	sleeper := startSleep(t)
	child, err := IdentityOf(sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	// Reaped child: its pid is gone (or, in theory, reused by then).
	reaped := exec.Command("true")
	if err := reaped.Run(); err != nil {
		t.Fatal(err)
	}

	// Zombie: exited but deliberately not waited for yet.
	zombie := exec.Command("true")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	defer zombie.Wait()
	zombieID, err := IdentityOf(zombie.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, zombie.Process.Pid, 'Z')

	tests := []struct {
		name string
		id   Identity
		want bool
	}{
		{name: "self", id: self, want: true},
		{name: "child sleep", id: child, want: true},
		{name: "reused pid", id: Identity{PID: self.PID, StartTicks: self.StartTicks + 1}, want: false},
		{name: "missing pid", id: Identity{PID: missingPID(t), StartTicks: 1}, want: false},
		{name: "reaped child", id: Identity{PID: reaped.Process.Pid, StartTicks: child.StartTicks}, want: false},
		{name: "zombie", id: zombieID, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.Alive(); got != tt.want {
				t.Errorf("%+v.Alive() = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestStartTime(t *testing.T) {
	before := time.Now()
	cmd := startSleep(t)
	after := time.Now()
	s, err := ReadStat(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.StartTime()
	if err != nil {
		t.Fatal(err)
	}
	// Start ticks and uptime both have 10 ms resolution; allow for the
	// scheduler too, but not the second /proc/stat's btime would cost.
	const slack = 100 * time.Millisecond
	if got.Before(before.Add(-slack)) || got.After(after.Add(slack)) {
		t.Errorf("start time %v not within [%v, %v] ± %v", got, before, after, slack)
	}
}

// startTree starts sh with two sleeping children: three processes in all.
func startTree(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 60 & sleep 60 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		u, err := treeUsageScan(cmd.Process.Pid)
		if err == nil && u.Procs == 3 {
			return cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("tree of %d never had 3 processes: %+v, %v", cmd.Process.Pid, u, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTreeUsage(t *testing.T) {
	if !childrenFileSupported() {
		// The children walk is TreeUsage's main path: CI must test it.
		if os.Getenv("CI") == "true" {
			t.Fatal("kernel lacks /proc/<pid>/task/<tid>/children; CI must test the children walk")
		}
		t.Log("kernel lacks /proc/<pid>/task/<tid>/children; TreeUsage uses the scan")
	}
	impls := []struct {
		name string
		fn   func(int) (Usage, error)
	}{
		{name: "TreeUsage", fn: TreeUsage},
		{name: "scan", fn: treeUsageScan},
	}
	if childrenFileSupported() {
		impls = append(impls, struct {
			name string
			fn   func(int) (Usage, error)
		}{name: "children", fn: treeUsageChildren})
	}

	shell := startTree(t)
	tests := []struct {
		name      string
		pid       int
		wantProcs int
		wantErr   bool
	}{
		{name: "shell with two children", pid: shell, wantProcs: 3},
		// The test binary is multi-threaded and sh may have been forked by
		// any of its threads; nothing else is running as its child.
		{name: "test process", pid: os.Getpid(), wantProcs: 4},
		{name: "missing root", pid: missingPID(t), wantErr: true},
	}
	for _, impl := range impls {
		for _, tt := range tests {
			t.Run(impl.name+"/"+tt.name, func(t *testing.T) {
				u, err := impl.fn(tt.pid)
				if tt.wantErr {
					if !errors.Is(err, fs.ErrNotExist) {
						t.Fatalf("err = %v, want fs.ErrNotExist", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if u.Procs != tt.wantProcs {
					t.Errorf("procs = %d, want %d", u.Procs, tt.wantProcs)
				}
				if u.RSSBytes == 0 {
					t.Errorf("tree rss is 0")
				}
			})
		}
	}
}

// TestTreeUsageCPUTicks checks the units against the kernel's rusage, which
// counts the same time in microseconds.
func TestTreeUsageCPUTicks(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	u0, err := TreeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r0 := rusage()
	for start := time.Now(); time.Since(start) < 300*time.Millisecond; {
	}
	u1, err := TreeUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	r1 := rusage()

	ticks := time.Duration(u1.CPUTicks-u0.CPUTicks) * (time.Second / ClockTicks)
	want := r1 - r0
	if diff := (ticks - want).Abs(); diff > 50*time.Millisecond {
		t.Errorf("CPUTicks advanced %v, rusage %v", ticks, want)
	}
}

func TestCPUMeter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type sample struct {
		ticks  uint64
		at     time.Duration // since t0
		reset  bool          // Reset before observing
		want   float64
		wantOK bool
	}
	tests := []struct {
		name    string
		samples []sample
	}{
		{name: "first sample has no interval", samples: []sample{{ticks: 500, at: 0}}},
		{name: "one core busy", samples: []sample{
			{ticks: 500, at: 0},
			{ticks: 600, at: time.Second, want: 100, wantOK: true},
		}},
		{name: "two cores over two seconds then idle", samples: []sample{
			{ticks: 0, at: 0},
			{ticks: 400, at: 2 * time.Second, want: 200, wantOK: true},
			{ticks: 400, at: 3 * time.Second, want: 0, wantOK: true},
		}},
		{name: "quarter core", samples: []sample{
			{ticks: 10, at: 0},
			{ticks: 35, at: time.Second, want: 25, wantOK: true},
		}},
		{name: "ticks going backwards rebase", samples: []sample{
			{ticks: 900, at: 0},
			{ticks: 100, at: time.Second},
			{ticks: 150, at: 2 * time.Second, want: 50, wantOK: true},
		}},
		{name: "clock not advancing", samples: []sample{
			{ticks: 100, at: time.Second},
			{ticks: 200, at: time.Second},
			{ticks: 300, at: 0},
			{ticks: 310, at: time.Second, want: 10, wantOK: true},
		}},
		{name: "reset after restart", samples: []sample{
			{ticks: 100, at: 0},
			{ticks: 200, at: time.Second, want: 100, wantOK: true},
			{ticks: 250, at: 2 * time.Second, reset: true},
			{ticks: 260, at: 3 * time.Second, want: 10, wantOK: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m CPUMeter
			for i, s := range tt.samples {
				if s.reset {
					m.Reset()
				}
				got, ok := m.Observe(Usage{CPUTicks: s.ticks}, t0.Add(s.at))
				if got != s.want || ok != s.wantOK {
					t.Errorf("sample %d: Observe = %v, %v; want %v, %v", i, got, ok, s.want, s.wantOK)
				}
			}
		})
	}
}

// BenchmarkTreeUsage measures the per-service cost of one sampling tick
// with the test binary as root (multi-threaded, as a JVM would be).
func BenchmarkTreeUsage(b *testing.B) {
	for b.Loop() {
		if _, err := TreeUsage(os.Getpid()); err != nil {
			b.Fatal(err)
		}
	}
}

func TestMemTotal(t *testing.T) {
	total, err := MemTotal()
	if err != nil || total < 64<<20 {
		t.Fatalf("MemTotal() = %d, %v; want the host's memory", total, err)
	}
}
