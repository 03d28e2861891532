package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/check"
	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/internal/config"
)

// fakeView is a cluster whose services the test sets.
type fakeView struct {
	mu      sync.Mutex
	where   map[string]string // service -> node it is seen on
	ok      map[string]bool
	absent  map[string]bool // NotInCluster
	subs    map[chan struct{}]bool
	lookups atomic.Int32
}

func newFakeView() *fakeView {
	return &fakeView{where: map[string]string{}, ok: map[string]bool{}, absent: map[string]bool{}, subs: map[chan struct{}]bool{}}
}

func (v *fakeView) ServiceOK(name string) (string, bool) {
	v.lookups.Add(1)
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.where[name], v.ok[name]
}

func (v *fakeView) NotInCluster(name string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.absent[name]
}

func (v *fakeView) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	v.mu.Lock()
	v.subs[ch] = true
	v.mu.Unlock()
	return ch, func() {
		v.mu.Lock()
		delete(v.subs, ch)
		v.mu.Unlock()
	}
}

// set changes what the view shows of a service and tells the subscribers.
func (v *fakeView) set(name, node string, ok bool) {
	v.mu.Lock()
	v.where[name], v.ok[name] = node, ok
	for ch := range v.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	v.mu.Unlock()
}

// startManagerWith runs a manager with a cluster view (nil: none) and, when
// probe is set, that external probe.
func startManagerWith(t *testing.T, node *config.Node, rt *fakeRuntime, view ClusterView, probe func(config.External) (check.Probe, error)) *Manager {
	t.Helper()
	m := NewManager(node, Runtimes{config.RuntimeExec: rt}, state.New(filepath.Join(t.TempDir(), "state.json")), slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.alertHook = func(Status, string, string) {}
	if view != nil {
		m.SetClusterView(view)
	}
	if probe != nil {
		m.externalProbe = probe
	}
	m.Load(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// TestColdBootWaitsForAnotherNode: a service whose dependency runs on
// another node waits, Waiting, until the view shows it OK, and names the
// node; its local dependant waits for it; the change wakes both at once.
func TestColdBootWaitsForAnotherNode(t *testing.T) {
	rt := newFakeRuntime()
	view := newFakeView()
	m := startManagerWith(t, testNode(t, `
  auth: {depends_on: [configuration_server]}
  web: {depends_on: [auth]}
`), rt, view, nil)
	st := waitState(t, m, "auth", Waiting)
	waitMessage(t, m, "auth", "Waiting for configuration_server (no node yet)")
	waitMessage(t, m, "web", "Waiting for auth (this node)")
	if st.PID != 0 {
		t.Fatalf("auth runs while waiting: %+v", st)
	}
	view.set("configuration_server", "infra-1", false)
	waitMessage(t, m, "auth", "Waiting for configuration_server (infra-1)")
	if got := rt.startLog(); len(got) != 0 {
		t.Fatalf("started %v before configuration_server was OK anywhere", got)
	}
	view.set("configuration_server", "infra-1", true)
	waitState(t, m, "auth", OK)
	waitState(t, m, "web", OK)
	if got := rt.startLog(); !slices.Equal(got, []string{"auth", "web"}) {
		t.Errorf("start order %v, want auth then web", got)
	}
	if st := waitState(t, m, "auth", OK); st.Message != "" {
		t.Errorf("auth's message %q, want none: its dependency was there", st.Message)
	}
}

// TestDependencyWaitExpires: a dependency never OK anywhere: once
// dependency_wait is over the service starts anyway, and its status says
// why.
func TestDependencyWaitExpires(t *testing.T) {
	rt := newFakeRuntime()
	view := newFakeView()
	view.set("configuration_server", "infra-1", false)
	m := startManagerWith(t, testNode(t, `
  auth: {depends_on: [configuration_server], dependency_wait: 200ms}
`), rt, view, nil)
	st := waitState(t, m, "auth", OK)
	if want := "started without configuration_server (infra-1): not there within dependency_wait 200ms"; st.Message != want {
		t.Errorf("message %q, want %q", st.Message, want)
	}
	if got := rt.startLog(); !slices.Equal(got, []string{"auth"}) {
		t.Errorf("starts %v", got)
	}
}

func TestNoWaitWhenNobodyRunsIt(t *testing.T) {
	for _, tc := range []struct {
		name, services string
		view           func() ClusterView
	}{
		{"no node of the cluster runs it", "  auth: {depends_on: [configuration_server]}\n", func() ClusterView {
			v := newFakeView()
			v.absent["configuration_server"] = true
			return v
		}},
		{"no cluster (no gossip)", "  auth: {depends_on: [configuration_server]}\n", func() ClusterView { return nil }},
		{"dependency_wait 0s", "  auth: {depends_on: [configuration_server], dependency_wait: 0s}\n", func() ClusterView { return newFakeView() }},
		{"a local dependency keeps its own semantics", "  configuration_server: {checks: [{type: process}], external: []}\n  auth: {depends_on: [configuration_server]}\n", func() ClusterView { return newFakeView() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newFakeRuntime()
			m := startManagerWith(t, testNode(t, tc.services), rt, tc.view(), nil)
			if st := waitState(t, m, "auth", OK); strings.Contains(st.Message, "without") {
				t.Errorf("message %q", st.Message)
			}
		})
	}
}

// TestOperatorOverridesTheWait: an operator's start starts a waiting
// service at once, and an operator's stop keeps the cold boot from starting
// it later.
func TestOperatorOverridesTheWait(t *testing.T) {
	rt := newFakeRuntime()
	view := newFakeView()
	m := startManagerWith(t, testNode(t, `
  auth: {depends_on: [configuration_server]}
  acl: {depends_on: [configuration_server]}
`), rt, view, nil)
	waitState(t, m, "auth", Waiting)
	waitState(t, m, "acl", Waiting)
	control(t, m, Start, "auth")
	waitState(t, m, "auth", OK)
	control(t, m, Stop, "acl")
	waitState(t, m, "acl", Stopped)
	view.set("configuration_server", "infra-1", true)
	// Both walks look at the view again (2 looks before the change, 2
	// after), then end: auth's finds it running, acl's stopped.
	for view.lookups.Load() < 4 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if st := m.sup("acl").Status(); st.State != Stopped {
		t.Errorf("acl %s (%s), want it left stopped", st.State, st.Message)
	}
	if got := rt.startLog(); !slices.Equal(got, []string{"auth"}) {
		t.Errorf("starts %v, want only the operator's", got)
	}
}

// fakeProbe fails until there is set.
type fakeProbe struct {
	there *atomic.Bool
	err   error
}

func (p fakeProbe) Probe(context.Context) error {
	if p.there.Load() {
		return nil
	}
	return p.err
}

func TestExternalDependency(t *testing.T) {
	var there atomic.Bool
	probe := func(e config.External) (check.Probe, error) {
		if e.Systemd == "absent.service" {
			return fakeProbe{there: new(atomic.Bool), err: fmt.Errorf("systemd absent.service: %w", check.ErrUnitNotFound)}, nil
		}
		return fakeProbe{there: &there, err: errors.New("tcp 127.0.0.1:2379: connection refused")}, nil
	}
	rt := newFakeRuntime()
	m := startManagerWith(t, testNode(t, `
  cfg:
    external:
      - {name: etcd-unit, systemd: absent.service, if_installed: true}
      - {name: etcd, tcp: "127.0.0.1:2379"}
  other: {external: [{name: db, systemd: absent.service}], dependency_wait: 200ms}
`), rt, nil, probe)
	waitMessage(t, m, "cfg", "Waiting for etcd (tcp 127.0.0.1:2379: connection refused)")
	// Without if_installed a unit that is not there is waited for too.
	st := waitState(t, m, "other", OK)
	if want := "started without db (systemd absent.service: unit not installed): not there within dependency_wait 200ms"; st.Message != want {
		t.Errorf("other: message %q, want %q", st.Message, want)
	}
	if got := rt.startLog(); !slices.Equal(got, []string{"other"}) {
		t.Fatalf("starts %v before etcd was there", got)
	}
	there.Store(true)
	waitState(t, m, "cfg", OK)
}

// TestReloadAddedServiceWaits: a service a reload adds is the agent's own
// start too, so it waits like one at boot.
func TestReloadAddedServiceWaits(t *testing.T) {
	rt := newFakeRuntime()
	view := newFakeView()
	m := startManagerWith(t, testNode(t, "  tailer: {}\n"), rt, view, nil)
	waitState(t, m, "tailer", OK)
	res, err := m.Reload(context.Background(), testNode(t, "  tailer: {}\n  auth: {depends_on: [configuration_server]}\n"))
	if err != nil || !slices.Equal(res.Added, []string{"auth"}) {
		t.Fatalf("reload: %+v, %v", res, err)
	}
	waitMessage(t, m, "auth", "Waiting for configuration_server (no node yet)")
	view.set("configuration_server", "infra-1", true)
	waitState(t, m, "auth", OK)
}
