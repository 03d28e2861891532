package supervise

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// progressLog collects the progress of requests, which may come from
// several goroutines.
type progressLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *progressLog) add(p Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, p.Service+": "+p.Message)
}

func (l *progressLog) has(substr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if strings.Contains(m, substr) {
			return true
		}
	}
	return false
}

func (l *progressLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.msgs, "\n")
}

func startsOf(rt *fakeRuntime, name string) int {
	n := 0
	for _, s := range rt.startLog() {
		if s == name {
			n++
		}
	}
	return n
}

// TestOpTokenActsOnce: a re-sent operation step acts on no service twice; a
// new step, or a request without a token, acts again.
func TestOpTokenActsOnce(t *testing.T) {
	tests := []struct {
		name       string
		act        Action
		svc        []string
		tokens     []string       // one request each, in turn
		wantStarts map[string]int // starts after the services were first OK
		wantToken  string         // recorded on every named service at the end
		wantNote   bool           // a later request reports the step as already done
	}{
		{name: "restart, same token twice", act: Restart, svc: []string{"a"}, tokens: []string{"op1/s1", "op1/s1"}, wantStarts: map[string]int{"a": 1, "b": 0}, wantToken: "op1/s1", wantNote: true},
		{name: "restart, new token", act: Restart, svc: []string{"a"}, tokens: []string{"op1/s1", "op1/s2"}, wantStarts: map[string]int{"a": 2, "b": 0}, wantToken: "op1/s2"},
		{name: "restart without token", act: Restart, svc: []string{"a"}, tokens: []string{"", ""}, wantStarts: map[string]int{"a": 2, "b": 0}},
		{name: "multi-service restart, same token twice", act: Restart, svc: []string{"a", "b"}, tokens: []string{"op1/s1", "op1/s1", "op1/s1"}, wantStarts: map[string]int{"a": 1, "b": 1}, wantToken: "op1/s1", wantNote: true},
		{name: "multi-service restart, new token", act: Restart, svc: []string{"a", "b"}, tokens: []string{"op1/s1", "op1/s2"}, wantStarts: map[string]int{"a": 2, "b": 2}, wantToken: "op1/s2"},
		{name: "stop, same token twice", act: Stop, svc: []string{"all"}, tokens: []string{"op2/s1", "op2/s1"}, wantStarts: map[string]int{"a": 0, "b": 0}, wantToken: "op2/s1", wantNote: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := newFakeRuntime()
			m, _ := startManager(t, testNode(t, "  a: {}\n  b: {depends_on: [a]}\n"), rt)
			waitState(t, m, "b", OK)
			base := map[string]int{"a": startsOf(rt, "a"), "b": startsOf(rt, "b")}
			pids := map[string]int{"a": m.sup("a").Status().PID, "b": m.sup("b").Status().PID}
			var later progressLog
			for i, tok := range tt.tokens {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				p := func(Progress) {}
				if i > 0 {
					p = later.add
				}
				err := m.ControlStep(ctx, tok, 0, tt.act, tt.svc, true, p)
				cancel()
				if err != nil {
					t.Fatalf("request %d (token %q): %v", i+1, tok, err)
				}
			}
			for name, want := range tt.wantStarts {
				if got := startsOf(rt, name) - base[name]; got != want {
					t.Errorf("%s started %d times, want %d", name, got, want)
				}
				st := m.sup(name).Status()
				if tt.act == Restart && want == 0 && st.PID != pids[name] {
					t.Errorf("%s: pid %d -> %d without a start", name, pids[name], st.PID)
				}
			}
			sups, _ := m.lookup(tt.svc)
			for _, s := range sups {
				if got := s.Status().LastOpToken; got != tt.wantToken {
					t.Errorf("%s: last op token %q, want %q", s.name, got, tt.wantToken)
				}
				if got := s.remembered().LastOpToken; got != tt.wantToken {
					t.Errorf("%s: remembered op token %q, want %q", s.name, got, tt.wantToken)
				}
			}
			if got := later.has(errAlreadyDone.Error()); got != tt.wantNote {
				t.Errorf("later requests' progress says already done: %v, want %v:\n%s", got, tt.wantNote, later.String())
			}
		})
	}
}

// TestOpTokenSurvivesAgentRestart: the token is on disk as soon as the
// step takes effect, so the next agent does not redo the step.
func TestOpTokenSurvivesAgentRestart(t *testing.T) {
	rt := newFakeRuntime()
	node := testNode(t, "  a: {}\n")
	file := filepath.Join(t.TempDir(), "state.json")
	m, _, stop := runManager(node, rt, file)
	waitState(t, m, "a", OK)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.ControlStep(ctx, "op1/s1", 0, Restart, []string{"a"}, true, nil); err != nil {
		t.Fatal(err)
	}
	pid := m.sup("a").Status().PID
	starts := startsOf(rt, "a")
	stop()

	m, _, stop = runManager(node, rt, file)
	defer stop()
	if st := waitState(t, m, "a", OK); st.PID != pid || st.LastOpToken != "op1/s1" {
		t.Fatalf("after the agent restart: pid %d (was %d), token %q", st.PID, pid, st.LastOpToken)
	}
	if err := m.ControlStep(ctx, "op1/s1", 0, Restart, []string{"a"}, true, nil); err != nil {
		t.Fatal(err)
	}
	if got := startsOf(rt, "a"); got != starts {
		t.Fatalf("the re-sent step started a %d more times", got-starts)
	}
	if st := m.sup("a").Status(); st.PID != pid {
		t.Fatalf("pid %d, want %d: restarted twice", st.PID, pid)
	}
	if err := m.ControlStep(ctx, "op1/s2", 0, Restart, []string{"a"}, true, nil); err != nil {
		t.Fatal(err)
	}
	if got := startsOf(rt, "a"); got != starts+1 {
		t.Fatalf("a new step started a %d times, want 1", got-starts)
	}
}

// TestOpTokenOutlivesCaller: the coordinator leader that sent a step dies
// mid-way; the step completes anyway. A new leader's repeat that arrives
// while the step still runs waits for it and then only waits for the goal.
func TestOpTokenOutlivesCaller(t *testing.T) {
	for _, repeat := range []bool{false, true} {
		name := "caller gone"
		if repeat {
			name = "repeat while running"
		}
		t.Run(name, func(t *testing.T) { testCallerGone(t, repeat) })
	}
}

func testCallerGone(t *testing.T, repeat bool) {
	rt := newFakeRuntime()
	m, _ := startManager(t, testNode(t, "  a: {}\n  b: {depends_on: [a]}\n"), rt)
	waitState(t, m, "b", OK)
	oldB := m.sup("b").Status().PID
	starts := map[string]int{"a": startsOf(rt, "a"), "b": startsOf(rt, "b")}
	// a's start is held, so the caller goes away before b is started again.
	g := newGate()
	rt.mu.Lock()
	rt.gates["a"] = g
	rt.mu.Unlock()
	opened := false
	open := func() {
		if !opened {
			opened = true
			close(g.open)
		}
	}
	defer open()

	first, cancelFirst := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() {
		firstErr <- m.ControlStep(first, "op1/s1", 5*time.Second, Restart, []string{"a", "b"}, true, nil)
	}()
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("a's start never began")
	}
	cancelFirst()
	select {
	case err := <-firstErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("first request: %v, want canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first request did not return when its caller went away")
	}

	var p progressLog
	secondErr := make(chan error, 1)
	if repeat {
		second, cancelSecond := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelSecond()
		go func() { secondErr <- m.ControlStep(second, "op1/s1", 0, Restart, []string{"a", "b"}, true, p.add) }()
		select {
		case err := <-secondErr:
			t.Fatalf("repeat returned (%v) while the first request was still running", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	open()
	if repeat {
		if err := <-secondErr; err != nil {
			t.Fatalf("repeat: %v\n%s", err, p.String())
		}
		for _, want := range []string{"waiting for an earlier request", errAlreadyDone.Error(), "running and healthy"} {
			if !p.has(want) {
				t.Errorf("repeat's progress lacks %q:\n%s", want, p.String())
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := m.waitFor(ctx, "b", func(st Status) (bool, error) { return st.State == OK && st.LastOpToken == "op1/s1", nil })
	if err != nil || st.PID == oldB {
		t.Fatalf("b after the step: %v, pid %d (was %d), token %q", err, st.PID, oldB, st.LastOpToken)
	}
	for name, before := range starts {
		if got := startsOf(rt, name) - before; got != 1 {
			t.Errorf("%s started %d times, want 1", name, got)
		}
	}
}
