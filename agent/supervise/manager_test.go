package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/internal/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeRuntime records starts and hands out processes the test ends at will.
type fakeRuntime struct {
	mu      sync.Mutex
	nextPID int
	starts  []string
	procs   map[string]*fakeProc
	failing map[string]error // Start fails for these services
	gates   map[string]*gate // Start waits for these services' gate to open
	// bounds is, for each start, how long its context gave it (0: no
	// deadline).
	bounds []time.Duration
	// found holds processes started by someone else (an operator, monit),
	// which Find finds and Adopt takes.
	found map[string]*fakeProc
	// restarts counts runs of services' restart programs.
	restarts []string
}

// gate holds a service's start until the test opens it.
type gate struct {
	entered chan struct{} // receives when a start is waiting
	open    chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}, 1), open: make(chan struct{})} }

type fakeProc struct {
	rt   *fakeRuntime
	name string
	id   procfs.Identity
	once sync.Once
	done chan struct{}
	exit runtime.Exit
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{nextPID: 1000, procs: map[string]*fakeProc{}, failing: map[string]error{}, gates: map[string]*gate{}, found: map[string]*fakeProc{}}
}

func (f *fakeRuntime) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	f.mu.Lock()
	var bound time.Duration
	if dl, ok := ctx.Deadline(); ok {
		bound = time.Until(dl)
	}
	f.bounds = append(f.bounds, bound)
	g := f.gates[spec.Name]
	f.mu.Unlock()
	if g != nil {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.open
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts = append(f.starts, spec.Name)
	if err := f.failing[spec.Name]; err != nil {
		return nil, err
	}
	return f.newProc(spec.Name), nil
}

// newProc is a new running process of the service name; f.mu held.
func (f *fakeRuntime) newProc(name string) *fakeProc {
	f.nextPID++
	p := &fakeProc{rt: f, name: name, id: procfs.Identity{PID: f.nextPID, StartTicks: 1}, done: make(chan struct{})}
	f.procs[name] = p
	return p
}

// external runs a process of the service that the agent did not start.
func (f *fakeRuntime) external(name string) *fakeProc {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.newProc(name)
	f.found[name] = p
	return p
}

// Adopt finds a process this runtime started that is still running, as a
// new agent finds the one its predecessor left behind.
func (f *fakeRuntime) Adopt(_ context.Context, _ runtime.Spec, id procfs.Identity) (runtime.Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.procs {
		select {
		case <-p.done:
			continue
		default:
		}
		if p.id == id {
			return p, nil
		}
	}
	return nil, errors.New("no such process")
}

func (f *fakeRuntime) Find(spec runtime.Spec) (procfs.Identity, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.found[spec.Name]; p != nil {
		select {
		case <-p.done:
		default:
			return p.id, true
		}
	}
	return procfs.Identity{}, false
}

func (f *fakeRuntime) proc(name string) *fakeProc {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.procs[name]
}

func (f *fakeRuntime) startLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.starts)
}

func (p *fakeProc) end(code int) {
	p.once.Do(func() { p.exit = runtime.Exit{Code: code, At: time.Now()}; close(p.done) })
}
func (p *fakeProc) Identity() procfs.Identity { return p.id }
func (p *fakeProc) Done() <-chan struct{}     { return p.done }
func (p *fakeProc) Exit() runtime.Exit        { return p.exit }
func (p *fakeProc) Release()                  {}
func (p *fakeProc) Kill() error               { p.end(-1); return nil }

// Restart plays a restart program: the process ends, another replaces it.
func (p *fakeProc) Restart(context.Context) (runtime.Process, error) {
	p.end(0)
	p.rt.mu.Lock()
	defer p.rt.mu.Unlock()
	p.rt.restarts = append(p.rt.restarts, p.name)
	return p.rt.newProc(p.name), nil
}

func (p *fakeProc) Stop(context.Context, time.Duration) (runtime.Exit, error) {
	p.end(0)
	return p.exit, nil
}

// testNode builds a node from YAML service definitions; every service gets
// a placeholder command and the checks default to the process check.
func testNode(t *testing.T, services string) *config.Node {
	t.Helper()
	n, err := config.ParseAgent(filepath.Join(t.TempDir(), "agent.yaml"), []byte("node: t\nroles_dir: none\ndefaults: {command: [x]}\nservices:\n"+services))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type alertLog struct {
	mu     sync.Mutex
	events []string
}

func startManager(t *testing.T, node *config.Node, rt runtime.Runtime) (*Manager, *alertLog) {
	t.Helper()
	m, alerts, stop := runManager(node, rt, filepath.Join(t.TempDir(), "state.json"))
	t.Cleanup(stop)
	return m, alerts
}

// runManager runs a manager on the state file stateFile until stop, as one
// agent's life.
func runManager(node *config.Node, rt runtime.Runtime, stateFile string) (*Manager, *alertLog, func()) {
	return runManagerOn(node, Runtimes{config.RuntimeExec: rt}, stateFile)
}

func runManagerOn(node *config.Node, rts Runtimes, stateFile string) (*Manager, *alertLog, func()) {
	m := NewManager(node, rts, state.New(stateFile), slog.New(slog.NewTextHandler(io.Discard, nil)))
	alerts := &alertLog{}
	m.alertHook = func(st Status, event, desc string) {
		alerts.mu.Lock()
		alerts.events = append(alerts.events, st.Name+" "+event)
		alerts.mu.Unlock()
	}
	m.Load(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	return m, alerts, func() { cancel(); <-done }
}

func waitState(t *testing.T, m *Manager, name string, want State) Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := m.waitFor(ctx, name, func(s Status) (bool, error) { return s.State == want, nil })
	if err != nil {
		t.Fatalf("%s: waiting for %s: %v (now %s: %s)", name, want, err, st.State, st.Message)
	}
	return st
}

func TestStartsInDependencyOrder(t *testing.T) {
	rt := newFakeRuntime()
	m, _ := startManager(t, testNode(t, `
  config: {}
  auth: {depends_on: [config]}
  web: {depends_on: [auth, config]}
  tailer: {depends_on: [config]}
`), rt)
	for _, s := range []string{"config", "auth", "web", "tailer"} {
		waitState(t, m, s, OK)
	}
	order := rt.startLog()
	pos := func(s string) int { return slices.Index(order, s) }
	if pos("config") != 0 || pos("auth") > pos("web") || pos("tailer") < pos("config") {
		t.Fatalf("start order %v breaks dependencies", order)
	}
}

func TestRestartPolicy(t *testing.T) {
	tests := []struct {
		name       string
		svc        string
		exits      []int // exit codes of successive runs
		wantState  State
		wantStarts int
		wantAlerts int
	}{
		{name: "long run restarts at once", svc: "s: {restart: {min_uptime: 1ms}}", exits: []int{1, 1, 1}, wantState: OK, wantStarts: 4},
		{name: "limit reached fails once", svc: "s: {restart: {min_uptime: 1h, backoff_initial: 1ms, backoff_max: 2ms, limit: 2, window: 1h}}", exits: []int{1, 1, 1}, wantState: Failed, wantStarts: 3, wantAlerts: 1},
		{name: "permanent exit code", svc: "s: {restart: {permanent_exit_codes: [78]}}", exits: []int{78}, wantState: Failed, wantStarts: 1, wantAlerts: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := newFakeRuntime()
			m, alerts := startManager(t, testNode(t, "  "+tt.svc+"\n"), rt)
			waitState(t, m, "s", OK)
			for i, code := range tt.exits {
				p := rt.proc("s")
				p.end(code)
				if i < len(tt.exits)-1 || tt.wantState == OK {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := m.waitFor(ctx, "s", func(s Status) (bool, error) {
						return s.State == OK && s.PID != p.id.PID || s.State == Failed, nil
					})
					cancel()
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			st := waitState(t, m, "s", tt.wantState)
			time.Sleep(20 * time.Millisecond) // a wrong extra restart would show now
			if got := len(rt.startLog()); got != tt.wantStarts {
				t.Errorf("%d starts, want %d", got, tt.wantStarts)
			}
			alerts.mu.Lock()
			if len(alerts.events) != tt.wantAlerts {
				t.Errorf("alerts %v, want %d", alerts.events, tt.wantAlerts)
			}
			alerts.mu.Unlock()
			if tt.wantState == Failed && (st.Monitored || st.PID != 0) {
				t.Errorf("Failed service still monitored or running: %+v", st)
			}
		})
	}
}

func TestOperatorActions(t *testing.T) {
	rt := newFakeRuntime()
	m, _ := startManager(t, testNode(t, "  a: {}\n  b: {depends_on: [a]}\n"), rt)
	waitState(t, m, "b", OK)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if err := m.Control(ctx, Stop, []string{"all"}, true, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"a", "b"} {
		if st := waitState(t, m, s, Stopped); st.PID != 0 || st.DesiredRunning {
			t.Fatalf("%s after stop: %+v", s, st)
		}
	}

	err := m.Control(ctx, Start, []string{"a", "nosuch"}, true, nil)
	var unknown *UnknownServiceError
	if !errors.As(err, &unknown) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("unknown name: %v", err)
	}
	if st := waitState(t, m, "a", Stopped); st.PID != 0 {
		t.Fatal("a started although the request named an unknown service")
	}

	if err := m.Control(ctx, Start, []string{"all"}, true, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Control(ctx, Unmonitor, []string{"a"}, false, nil); err != nil {
		t.Fatal(err)
	}
	rt.proc("a").end(1)
	st := waitState(t, m, "a", NotMonitored)
	time.Sleep(20 * time.Millisecond)
	if st = m.sup("a").Status(); st.PID != 0 || st.Restarts != 0 {
		t.Fatalf("unmonitored service was restarted: %+v", st)
	}
	if err := m.Control(ctx, Monitor, []string{"a"}, false, nil); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", OK)

	// Start on a running, unmonitored service puts it back under its checks.
	if err := m.Control(ctx, Unmonitor, []string{"a"}, false, nil); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", NotMonitored)
	if err := m.Control(ctx, Start, []string{"a"}, true, nil); err != nil {
		t.Fatal(err)
	}
	if st := waitState(t, m, "a", OK); !st.Monitored || st.PID == 0 {
		t.Fatalf("after start: %+v", st)
	}
}

func TestStartFailureIsExecutionFailed(t *testing.T) {
	rt := newFakeRuntime()
	rt.failing["a"] = errors.New(`run user "irisadmin": unknown user`)
	m, _ := startManager(t, testNode(t, "  a: {restart: {backoff_initial: 1h, backoff_max: 1h}}\n"), rt)
	st := waitState(t, m, "a", ExecFailed)
	if !strings.Contains(st.Message, "unknown user") || !strings.Contains(st.Message, "restarting in") {
		t.Fatalf("message %q", st.Message)
	}
}

// TestExecCheckForUnknownUserFails: an exec check for a service whose user
// does not exist fails rather than running as the agent's user, so the
// service never shows OK on it.
func TestExecCheckForUnknownUserFails(t *testing.T) {
	rt := newFakeRuntime()
	m, _ := startManager(t, testNode(t, `  a:
    user: no-such-user-dhv
    checks: [{type: exec, command: [/bin/true], interval: 50ms, failures: 1}]
    start_grace: 1h
`), rt)
	st := waitState(t, m, "a", Initializing)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := m.waitFor(ctx, "a", func(s Status) (bool, error) { return s.LastCheck.Name != "", nil })
	if err != nil {
		t.Fatal(err)
	}
	if st.LastCheck.OK || !strings.Contains(st.LastCheck.Message, "no-such-user-dhv") || st.State == OK {
		t.Fatalf("check %+v, state %s; want a failed check naming the user", st.LastCheck, st.State)
	}
}

// TestRuntimeSelection: each service starts on the runtime its config
// names, and a running process stays with the runtime that started it when
// the configuration switches runtimes: the next agent adopts it there
// instead of starting a second copy on the new one.
func TestRuntimeSelection(t *testing.T) {
	execRT, sysRT := newFakeRuntime(), newFakeRuntime()
	sysRT.nextPID = 5000 // pids of the two apart
	rts := Runtimes{config.RuntimeExec: execRT, config.RuntimeSystemd: sysRT}
	stateFile := filepath.Join(t.TempDir(), "state.json")
	m, _, stop := runManagerOn(testNode(t, "  a: {runtime: systemd}\n  b: {}\n"), rts, stateFile)
	waitState(t, m, "a", OK)
	waitState(t, m, "b", OK)
	if err := m.Ping(context.Background()); err != nil {
		t.Fatalf("ping: %v", err)
	}
	stop()
	if got := sysRT.startLog(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("systemd runtime started %v, want [a]", got)
	}
	if got := execRT.startLog(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("exec runtime started %v, want [b]", got)
	}

	// Both switch runtimes; the next agent adopts each where it runs.
	m, _, stop = runManagerOn(testNode(t, "  a: {}\n  b: {runtime: systemd}\n"), rts, stateFile)
	defer stop()
	for _, name := range []string{"a", "b"} {
		if st := waitState(t, m, name, OK); st.Restarts != 0 {
			t.Errorf("%s restarted", name)
		}
	}
	if len(sysRT.startLog()) != 1 || len(execRT.startLog()) != 1 {
		t.Fatalf("after the switch: systemd started %v, exec started %v; want nothing new", sysRT.startLog(), execRT.startLog())
	}
	// A restart applies the new runtime.
	if err := m.Control(context.Background(), Restart, []string{"a"}, true, nil); err != nil {
		t.Fatal(err)
	}
	if got := execRT.startLog(); !slices.Equal(got, []string{"b", "a"}) {
		t.Fatalf("after restart, exec runtime started %v, want [b a]", got)
	}
}

// TestStateWithoutRuntimeIsExec: a state file from before runtimes were
// recorded held only exec processes; an agent configured for another
// runtime since adopts the process on exec rather than starting a second
// copy beside it.
func TestStateWithoutRuntimeIsExec(t *testing.T) {
	execRT, sysRT := newFakeRuntime(), newFakeRuntime()
	rts := Runtimes{config.RuntimeExec: execRT, config.RuntimeSystemd: sysRT}
	stateFile := filepath.Join(t.TempDir(), "state.json")
	m, _, stop := runManagerOn(testNode(t, "  a: {}\n"), rts, stateFile)
	waitState(t, m, "a", OK)
	stop()
	b, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Version  int                       `json:"version"`
		Services map[string]map[string]any `json:"services"`
	}
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	if file.Services["a"]["runtime"] != config.RuntimeExec {
		t.Fatalf("state records runtime %v, want exec", file.Services["a"]["runtime"])
	}
	delete(file.Services["a"], "runtime")
	if b, err = json.Marshal(file); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stateFile, b, 0o600); err != nil {
		t.Fatal(err)
	}

	m, _, stop = runManagerOn(testNode(t, "  a: {runtime: systemd}\n"), rts, stateFile)
	defer stop()
	if st := waitState(t, m, "a", OK); st.Restarts != 0 || st.PID != execRT.proc("a").id.PID {
		t.Errorf("a: pid %d restarts %d, want the exec process %d adopted", st.PID, st.Restarts, execRT.proc("a").id.PID)
	}
	if got := sysRT.startLog(); len(got) != 0 {
		t.Fatalf("systemd runtime started %v beside the running exec process", got)
	}
}

// TestPingWaitsOnlyForIdleLoops: a loop blocked in a start (on purpose,
// within its bound) does not fail the watchdog's probe.
func TestPingWaitsOnlyForIdleLoops(t *testing.T) {
	rt := newFakeRuntime()
	g := newGate()
	rt.gates["slow"] = g
	m, _ := startManager(t, testNode(t, "  slow: {}\n  quick: {}\n"), rt)
	<-g.entered
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.Ping(ctx); err != nil {
		t.Fatalf("ping with a start in progress: %v", err)
	}
	close(g.open)
	waitState(t, m, "slow", OK)
}

// A runtime's start is bounded by the time the loop tells the watchdog it
// may be blocked: an image pull that hangs fails the start, rather than
// have systemd kill the whole agent.
func TestStartIsBounded(t *testing.T) {
	rt := newFakeRuntime()
	m, _ := startManager(t, testNode(t, "  s: {}\n"), rt)
	waitState(t, m, "s", OK)
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for i, b := range rt.bounds {
		if b <= 0 || b > startLimit {
			t.Errorf("start %d had %s to run, want at most %s", i, b, startLimit)
		}
	}
	if len(rt.bounds) == 0 {
		t.Error("no start")
	}
}

// An unmonitored service the next agent adopts shows as not monitored, with
// its process, and is still stopped by an operator's stop.
func TestUnmonitoredAdoptedAsNotMonitored(t *testing.T) {
	rt := newFakeRuntime()
	stateFile := filepath.Join(t.TempDir(), "state.json")
	node := testNode(t, "  a: {}\n")
	m, _, stop := runManager(node, rt, stateFile)
	waitState(t, m, "a", OK)
	ctx := context.Background()
	if err := m.Control(ctx, Unmonitor, []string{"a"}, false, nil); err != nil {
		t.Fatal(err)
	}
	stop()

	m, _, stop = runManager(node, rt, stateFile)
	defer stop()
	if st := waitState(t, m, "a", NotMonitored); st.PID != rt.proc("a").id.PID || st.Monitored {
		t.Fatalf("after the agent restart: %+v, want pid %d not monitored", st, rt.proc("a").id.PID)
	}
	if err := m.Control(ctx, Stop, []string{"a"}, true, nil); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", Stopped)
	select {
	case <-rt.proc("a").done:
	default:
		t.Fatal("stop left the adopted process running")
	}
	if got := rt.startLog(); len(got) != 1 {
		t.Fatalf("started %v, want the one first start", got)
	}
}

// TestStaleRecordFallsBackToSearch: the state file names a process that is
// gone (a later start could not be recorded: a full disk), while the
// service's current process runs. The next agent adopts that one, found by
// the runtime's search, instead of starting a second copy beside it.
func TestStaleRecordFallsBackToSearch(t *testing.T) {
	rt := newFakeRuntime()
	stateFile := filepath.Join(t.TempDir(), "state.json")
	node := testNode(t, "  a: {}\n")
	m, _, stop := runManager(node, rt, stateFile)
	waitState(t, m, "a", OK)
	stop()
	rt.proc("a").end(0)
	current := rt.external("a")

	m, _, stop = runManager(node, rt, stateFile)
	defer stop()
	if st := waitState(t, m, "a", OK); st.PID != current.id.PID {
		t.Fatalf("pid %d, want the running process %d adopted", st.PID, current.id.PID)
	}
	if got := rt.startLog(); len(got) != 1 {
		t.Fatalf("started %v, want only the first agent's start", got)
	}
}

// TestNoStartWhileStateCannotBeWritten: a process the state file does
// not record would be started again by the next agent, so while the file
// cannot be written (a full disk; here its directory is a file) nothing
// starts, the status says why, and starts resume once a save succeeds.
func TestNoStartWhileStateCannotBeWritten(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(dir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rt := newFakeRuntime()
	m, _, stop := runManager(testNode(t, "  s: {}\n"), rt, filepath.Join(dir, "state.json"))
	defer stop()
	st := waitState(t, m, "s", ExecFailed)
	if !strings.Contains(st.Message, "cannot be written") || m.StateError() == nil {
		t.Fatalf("status %q, state error %v; want the state file named as the reason", st.Message, m.StateError())
	}
	if n := len(rt.startLog()); n != 0 {
		t.Fatalf("%d starts while the state could not be saved", n)
	}
	// The disk is freed: the next retry saves, and s starts.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "s", OK)
	if err := m.StateError(); err != nil {
		t.Fatalf("state error %v after a save succeeded", err)
	}
}
