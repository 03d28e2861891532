package supervise

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	testRunning = "s RUNNING\n"
	testFatal   = "FATAL out of memory\n"
)

func appendLine(t *testing.T, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		t.Fatal(err)
	}
}

// waitMessage waits until the service's status message contains want.
func waitMessage(t *testing.T, m *Manager, name, want string) Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := m.waitFor(ctx, name, func(s Status) (bool, error) { return strings.Contains(s.Message, want), nil })
	if err != nil {
		t.Fatalf("%s: waiting for a message with %q: %v (now %s: %s)", name, want, err, st.State, st.Message)
	}
	return st
}

func logsSeen(t *testing.T, stateFile string) []string {
	t.Helper()
	b, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Services map[string]struct {
			LogsSeen []string `json:"logs_seen"`
		} `json:"services"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f.Services["s"].LogsSeen
}

// A service with a log check is OK once its line is written, not on an
// earlier run's line; the agent remembers the line across its own restart
// (the logger may have moved to a new file since); a new process waits
// for a new line.
func TestLogCheckReadiness(t *testing.T) {
	dir := t.TempDir()
	logFile := filepath.Join(dir, "S.log.current")
	appendLine(t, logFile, testRunning) // an earlier run's
	rt := newFakeRuntime()
	stateFile := filepath.Join(t.TempDir(), "state.json")
	node := testNode(t, "  s: {checks: [{type: log, path: "+logFile+", pattern: 's RUNNING$', interval: 100ms}]}\n")
	m, _, stop := runManager(node, rt, stateFile)
	waitMessage(t, m, "s", `no line matching "s RUNNING$" yet`)
	appendLine(t, logFile, "s INITIALIZING\n")
	waitMessage(t, m, "s", `no line matching "s RUNNING$" yet`)
	appendLine(t, logFile, testRunning)
	first := waitState(t, m, "s", OK)
	// Persisted before the next probe at the latest; stop writes it.
	stop()
	if got := logsSeen(t, stateFile); !slices.Equal(got, []string{"log:S.log.current"}) {
		t.Fatalf("logs_seen %v after the line", got)
	}

	// The logger moves to a new file while no agent runs.
	if err := os.Remove(logFile); err != nil {
		t.Fatal(err)
	}
	appendLine(t, logFile, "s ALIVE\n")
	m, _, stop = runManager(node, rt, stateFile)
	defer stop()
	if st := waitState(t, m, "s", OK); st.PID != first.PID {
		t.Fatalf("pid %d after the agent restart, want %d adopted", st.PID, first.PID)
	}

	// A crash: the new process has not written its line yet.
	rt.proc("s").end(1)
	waitMessage(t, m, "s", `no line matching "s RUNNING$" yet`)
	appendLine(t, logFile, testRunning)
	if st := waitState(t, m, "s", OK); st.PID == first.PID {
		t.Fatal("not restarted")
	}
	if n := len(rt.startLog()); n != 2 {
		t.Fatalf("%d starts, want 2", n)
	}
}

// A fatal line after the service was OK fails the check, and the service
// is restarted (its grace ended when it was first OK).
func TestLogCheckFatalRestarts(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "S.log.current")
	rt := newFakeRuntime()
	m, _ := startManager(t, testNode(t, "  s: {start_grace: 1m, restart: {min_uptime: 1ms}, checks: [{type: log, path: "+logFile+
		", pattern: 's RUNNING$', fatal_pattern: '^FATAL', interval: 20ms, timeout: 20ms, failures: 1}]}\n"), rt)
	// Written once the process runs: a line from before it is skipped.
	waitMessage(t, m, "s", "no such file yet")
	appendLine(t, logFile, testRunning)
	first := waitState(t, m, "s", OK)
	appendLine(t, logFile, testFatal)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.waitFor(ctx, "s", func(s Status) (bool, error) { return s.PID != first.PID && s.PID != 0, nil }); err != nil {
		t.Fatalf("not restarted after the fatal line: %v", err)
	}
	// The new process's grace holds it in Initializing: the fatal line is
	// the old run's.
	st := waitMessage(t, m, "s", "no line matching")
	if st.State != Initializing || len(rt.startLog()) != 2 {
		t.Fatalf("after the restart: %s (%s), %d starts", st.State, st.Message, len(rt.startLog()))
	}
}

// A process the agent found running (monit ran it) is not held to a line
// its logger may have left in an older file.
func TestLogCheckFoundProcess(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "S.log.current")
	rt := newFakeRuntime()
	ext := rt.external("s")
	m, _ := startManager(t, testNode(t, "  s: {checks: [{type: log, path: "+logFile+", pattern: 's RUNNING$'}]}\n"), rt)
	if st := waitState(t, m, "s", OK); st.PID != ext.id.PID {
		t.Fatalf("pid %d, want the found %d", st.PID, ext.id.PID)
	}
}
