package supervise

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/internal/config"
)

func (a *alertLog) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.events)
}

func waitAlert(t *testing.T, a *alertLog, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !slices.Contains(a.list(), want); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no alert %q; alerts %v", want, a.list())
		}
	}
}

func control(t *testing.T, m *Manager, act Action, names ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Control(ctx, act, names, false, nil); err != nil {
		t.Fatal(err)
	}
}

// The agent leaves a missing passive service, or one whose missing
// process is only alerted on, to others: it reports it, finds it when it
// appears, and starts it only when an operator says so.
func TestServicesTheAgentDoesNotStart(t *testing.T) {
	for _, svc := range []string{"s: {mode: passive}", "s: {restart: {on_missing: alert}}"} {
		t.Run(svc, func(t *testing.T) {
			rt := newFakeRuntime()
			m, alerts := startManager(t, testNode(t, "  "+svc+"\n"), rt)
			waitState(t, m, "s", DoesNotExist)
			waitAlert(t, alerts, "s Does not exist")
			if n := len(rt.startLog()); n != 0 {
				t.Fatalf("%d starts of a service the agent does not start", n)
			}
			// Someone else starts it: found and followed.
			ext := rt.external("s")
			if st := waitState(t, m, "s", OK); st.PID != ext.id.PID {
				t.Fatalf("following pid %d, want the external %d", st.PID, ext.id.PID)
			}
			waitAlert(t, alerts, "s Exists")
			// It ends: reported again, not restarted.
			ext.end(1)
			waitState(t, m, "s", DoesNotExist)
			time.Sleep(20 * time.Millisecond) // a wrong restart would show now
			if n := len(rt.startLog()); n != 0 {
				t.Fatalf("restarted %d times", n)
			}
			// An operator's start does start it.
			control(t, m, Start, "s")
			waitState(t, m, "s", OK)
			if n := len(rt.startLog()); n != 1 {
				t.Fatalf("%d starts after the operator's start, want 1", n)
			}
		})
	}
}

func TestManualServiceWaitsForTheOperator(t *testing.T) {
	rt := newFakeRuntime()
	m, _ := startManager(t, testNode(t, "  s: {mode: manual}\n  t: {on_boot: nostart}\n  u: {}\n"), rt)
	waitState(t, m, "u", OK)
	for _, name := range []string{"s", "t"} {
		if st := m.sup(name).Status(); st.PID != 0 || st.DesiredRunning {
			t.Fatalf("%s started without an operator: %+v", name, st)
		}
	}
	control(t, m, Start, "s")
	waitState(t, m, "s", OK)
}

func TestRestartLimitThenAlert(t *testing.T) {
	rt := newFakeRuntime()
	m, alerts := startManager(t, testNode(t, "  s: {restart: {min_uptime: 1h, backoff_initial: 1ms, backoff_max: 2ms, limit: 2, window: 1h, limit_action: alert}}\n"), rt)
	waitState(t, m, "s", OK)
	for range 4 {
		p := rt.proc("s")
		p.end(1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := m.waitFor(ctx, "s", func(s Status) (bool, error) { return s.State == OK && s.PID != p.id.PID, nil })
		cancel()
		if err != nil {
			t.Fatalf("not restarted past the limit: %v", err)
		}
	}
	waitAlert(t, alerts, "s Restart limit")
	if st := m.sup("s").Status(); !st.Monitored {
		t.Fatalf("unmonitored at the limit although limit_action is alert: %+v", st)
	}
}

func TestCheckThenAlertDoesNotRestart(t *testing.T) {
	rt := newFakeRuntime()
	m, alerts := startManager(t, testNode(t, "  s: {start_grace: 1ms, checks: [{type: exec, command: [/bin/false], interval: 10ms, failures: 1, action: alert}]}\n"), rt)
	waitState(t, m, "s", ConnFailed)
	waitAlert(t, alerts, "s "+string(ConnFailed))
	time.Sleep(50 * time.Millisecond) // further failures: still one start, one alert
	if n := len(rt.startLog()); n != 1 {
		t.Fatalf("%d starts, want 1: a check that only alerts restarted the service", n)
	}
	if n := len(alerts.list()); n != 1 {
		t.Fatalf("alerts %v, want one as the state was entered", alerts.list())
	}
}

func TestRestartProgram(t *testing.T) {
	rt := newFakeRuntime()
	dir := t.TempDir()
	m, _ := startManager(t, testNode(t, "  s: {command: [], start: [/bin/start], restart_program: [/bin/restart], pidfile: "+filepath.Join(dir, "s.pid")+"}\n"), rt)
	first := waitState(t, m, "s", OK)
	control(t, m, Restart, "s")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.waitFor(ctx, "s", func(s Status) (bool, error) { return s.State == OK && s.PID != first.PID, nil })
	if err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	restarts, starts := slices.Clone(rt.restarts), slices.Clone(rt.starts)
	rt.mu.Unlock()
	if len(restarts) != 1 || len(starts) != 1 {
		t.Fatalf("restart programs %v, starts %v; want the restart done by its program", restarts, starts)
	}
	if st.Restarts != 0 {
		t.Fatalf("an operator's restart counted as the agent's: %+v", st)
	}
}

func TestOnBoot(t *testing.T) {
	stopped := state.Service{DesiredRunning: false, Monitored: false}
	failed := state.Service{DesiredRunning: true, Monitored: false, Failed: true, FailedReason: "x", RecentRestarts: []time.Time{time.Unix(1, 0)}}
	tests := []struct {
		onBoot, mode string
		rec          state.Service
		running      bool
	}{
		{config.OnBootStart, config.ModeActive, stopped, true},
		{config.OnBootStart, config.ModeActive, failed, true},
		{config.OnBootStart, config.ModeManual, failed, false},
		{config.OnBootNoStart, config.ModeActive, failed, false},
		{config.OnBootLastState, config.ModeActive, stopped, false},
		{config.OnBootLastState, config.ModeActive, state.Service{DesiredRunning: true, Monitored: true}, true},
	}
	for _, tt := range tests {
		got := afterReboot(&config.Service{OnBoot: tt.onBoot, Mode: tt.mode}, tt.rec)
		if running := got.DesiredRunning && got.Monitored && !got.Failed; running != tt.running {
			t.Errorf("on_boot %s, mode %s, record %+v: %+v, want running %v", tt.onBoot, tt.mode, tt.rec, got, tt.running)
		}
		if got.RecentRestarts != nil {
			t.Errorf("the last boot's restarts still count: %+v", got)
		}
	}
	for _, tt := range []struct {
		spec config.Service
		want bool
	}{
		{config.Service{Mode: config.ModeActive, OnBoot: config.OnBootLastState}, true},
		{config.Service{Mode: config.ModeManual, OnBoot: config.OnBootStart}, false},
		{config.Service{Mode: config.ModePassive, OnBoot: config.OnBootStart}, true},
		{config.Service{Mode: config.ModeActive, OnBoot: config.OnBootNoStart}, false},
	} {
		if got := initialRecord(&tt.spec).DesiredRunning; got != tt.want {
			t.Errorf("new service %+v: runs %v, want %v", tt.spec, got, tt.want)
		}
	}
}

// A state file from an earlier boot: the service stopped then starts
// again under on_boot start.
func TestRebootAppliesOnBoot(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state.json")
	if err := state.NewForBoot(file, "earlier-boot").Save(map[string]state.Service{"s": {}, "t": {}}); err != nil {
		t.Fatal(err)
	}
	node := testNode(t, "  s: {on_boot: start}\n  t: {on_boot: laststate}\n")
	m := NewManager(node, Runtimes{config.RuntimeExec: newFakeRuntime()}, state.NewForBoot(file, "this-boot"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.Load(context.Background())
	if !m.sup("s").remembered().DesiredRunning || m.sup("t").remembered().DesiredRunning {
		t.Fatalf("after a reboot: s %+v, t %+v; want s to run and t as it was", m.sup("s").remembered(), m.sup("t").remembered())
	}
}
