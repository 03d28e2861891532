package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dhvisor/dhvisor/agent/check"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/internal/config"
)

// Action is what an operator asks of services.
type Action int

// The operator's actions.
const (
	Start Action = iota + 1
	Stop
	Restart
	Monitor
	Unmonitor
)

func (a Action) String() string {
	return [...]string{"", "start", "stop", "restart", "monitor", "unmonitor"}[a]
}

// Progress reports one service's way to the goal of a request.
type Progress struct {
	Service string
	State   State
	Message string
	Done    bool
	Failed  bool
}

// UnknownServiceError names services the node does not run.
type UnknownServiceError struct {
	Names []string
	Known []string
}

func (e *UnknownServiceError) Error() string {
	return fmt.Sprintf("unknown service %s (this node runs: %s)", strings.Join(e.Names, ", "), strings.Join(e.Known, ", "))
}

// Runtimes are the runtimes a node's services run in, by the name a
// service's runtime: field gives.
type Runtimes map[string]runtime.Runtime

// Manager supervises all services of a node.
type Manager struct {
	rts   Runtimes
	log   *slog.Logger
	store *state.Store

	mu     sync.Mutex
	node   *config.Node
	sups   map[string]*Supervisor
	wake   chan struct{} // closed and replaced on every status change
	ready  bool          // every supervisor loaded: a save is complete
	dirty  chan struct{} // a save is wanted (capacity 1: requests coalesce)
	saveMu sync.Mutex
	// saveErr is why the last save failed, nil once one succeeds;
	// guarded by saveMu. While it is set no service is started.
	saveErr error
	// OnStateError, when set before Run, hears every change of the
	// state file's health (nil: it persists again); the agent tells
	// systemd.
	OnStateError func(error)

	ctx     context.Context // the Run context: owns supervisors and background work
	wg      sync.WaitGroup
	running chan struct{} // closed once Run has set ctx

	steps map[string]chan struct{} // operation steps in flight, by token (closed when done); guarded by mu

	// alertHook runs when a service fails for good; tests replace it.
	alertHook func(st Status, event, description string)
	// view is the cluster's services (nil: the node does not gossip);
	// set before Run.
	view ClusterView
	// externalProbe probes an external dependency; tests replace it.
	externalProbe func(config.External) (check.Probe, error)
}

// NewManager prepares supervisors for node; nothing runs before Run.
func NewManager(node *config.Node, rts Runtimes, store *state.Store, log *slog.Logger) *Manager {
	m := &Manager{rts: rts, log: log, store: store, node: node, sups: map[string]*Supervisor{}, wake: make(chan struct{}), dirty: make(chan struct{}, 1),
		running: make(chan struct{}), steps: map[string]chan struct{}{}}
	m.alertHook = m.alert
	m.externalProbe = newExternalProbe
	return m
}

// Load reads the state file and re-adopts the processes an earlier agent
// left running. It must finish before anything asks for status, and before
// Run starts anything, or a service could be started twice.
func (m *Manager) Load(ctx context.Context) {
	mem, err := m.store.Load()
	if err != nil {
		m.log.Error("state file", "err", err)
	}
	rebooted := m.store.Rebooted()
	if rebooted {
		m.log.Info("the host rebooted since the state was saved; applying each service's on_boot")
	}
	sups := map[string]*Supervisor{}
	for _, name := range m.node.Names() {
		spec := m.node.Services[name]
		rec, ok := mem[name]
		switch {
		case !ok:
			rec = initialRecord(spec)
		case rebooted:
			rec = afterReboot(spec, rec)
		}
		s := newSupervisor(spec, rec, m.node.Agent.StateDir, m.rts, m.log, m.hooks())
		s.adopt(ctx)
		sups[name] = s
	}
	m.mu.Lock()
	m.sups = sups
	m.ready = true
	m.mu.Unlock()
	m.save()
}

// Run starts what should run in dependency order and supervises until ctx
// ends. Services keep running after it returns. Load must have been called.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	for _, s := range m.sups {
		m.goRun(s)
	}
	m.mu.Unlock()
	close(m.running)
	m.background(m.saver)
	var pending []string
	for _, name := range m.node.Names() {
		if m.sup(name).needsStart() {
			pending = append(pending, name)
		}
	}
	if len(pending) > 0 {
		m.log.Info("starting services", "services", pending)
		m.startOwn(ctx, pending)
	}
	<-ctx.Done()
	m.wg.Wait()
	m.save()
	return nil
}

func (m *Manager) goRun(s *Supervisor) {
	ctx, cancel := context.WithCancel(m.ctx)
	s.stop = cancel
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer cancel()
		s.run(ctx)
	}()
}

// background runs f under the Run context, tracked so Run waits for it.
func (m *Manager) background(f func(ctx context.Context)) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f(m.ctx)
	}()
}

func (m *Manager) hooks() hooks {
	return hooks{changed: m.broadcast, persist: m.persist, durable: m.durable, alert: m.alertHook}
}

func (m *Manager) broadcast() {
	m.mu.Lock()
	close(m.wake)
	m.wake = make(chan struct{})
	m.mu.Unlock()
}

// persist saves the remembered state: at once when now is set (a new pid,
// which must be on disk before the agent can die with it unrecorded), else
// soon, off the supervisor's path, so that bookkeeping writes (counters,
// a pid cleared) never delay a restart.
func (m *Manager) persist(now bool) {
	if now {
		m.save()
		return
	}
	select {
	case m.dirty <- struct{}{}:
	default:
	}
}

func (m *Manager) saver(ctx context.Context) {
	retry := time.NewTicker(saveRetry)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.dirty:
			m.save()
		case <-retry.C:
			if m.StateError() != nil {
				m.save()
			}
		}
	}
}

// saveRetry paces saves while the state file cannot be written.
const saveRetry = time.Second

// save writes the remembered state of every service.
func (m *Manager) save() error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	if !m.ready {
		// Until every service is loaded, a save would drop the others.
		m.mu.Unlock()
		return nil
	}
	recs := make(map[string]state.Service, len(m.sups))
	for name, s := range m.sups {
		recs[name] = s.remembered()
	}
	m.mu.Unlock()
	err := m.store.Save(recs)
	if err != nil {
		err = fmt.Errorf("the state file %s cannot be written: %w", m.store.Path(), err)
	}
	switch {
	case err != nil && m.saveErr == nil:
		m.log.Error("cannot save state: no service is started until it can be; retrying", "err", err, "every", saveRetry)
	case err == nil && m.saveErr != nil:
		m.log.Info("state saved again; starts resume", "file", m.store.Path())
	}
	changed := (err == nil) != (m.saveErr == nil)
	m.saveErr = err
	if changed {
		if m.OnStateError != nil {
			m.OnStateError(err)
		}
		m.broadcast()
	}
	return err
}

// StateError is why the state file cannot be written, nil while it can.
func (m *Manager) StateError() error {
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	return m.saveErr
}

// durable reports whether what the agent remembers is on disk, saving
// again first if the last save failed. A process started while it is not
// would be unknown to the next agent, which would start a second copy.
func (m *Manager) durable() error {
	if m.StateError() == nil {
		return nil
	}
	return m.save()
}

// Ping proves the supervisor works, for systemd's watchdog: the manager's
// lock is free and every service's loop answers (or is blocked on purpose,
// within its bound). It blocks while the manager is stuck: ctx bounds only
// the wait for the loops.
func (m *Manager) Ping(ctx context.Context) error {
	m.mu.Lock()
	sups := make([]*Supervisor, 0, len(m.sups))
	for _, s := range m.sups {
		sups = append(sups, s)
	}
	m.mu.Unlock()
	for _, s := range sups {
		if err := s.ping(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Freeze blocks the manager for good, as a deadlock would: nothing gets
// status and the watchdog probe hangs. It exists for the watchdog test
// only (the agent's test hooks) and is never called otherwise.
func (m *Manager) Freeze() {
	m.mu.Lock()
	select {}
}

// Node returns the configuration in force.
func (m *Manager) Node() *config.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.node
}

// Status returns the named services' status (all when names is empty) in
// start order, with CPU and memory read now if no timer keeps them fresh:
// what an operator asks for.
func (m *Manager) Status(names []string) ([]Status, error) {
	return m.statuses(names, true)
}

// Snapshot is Status without reading CPU and memory, for callers that do
// not show them (gossip publishes on every change).
func (m *Manager) Snapshot() []Status {
	out, _ := m.statuses(nil, false)
	return out
}

func (m *Manager) statuses(names []string, usage bool) ([]Status, error) {
	sups, err := m.lookup(names)
	if err != nil {
		return nil, err
	}
	out := make([]Status, len(sups))
	for i, s := range sups {
		if usage {
			s.refreshUsage()
		}
		out[i] = s.Status()
	}
	return out, nil
}

// lookup resolves names ("all" or empty: every service) in start order,
// failing on any unknown name before anything is done.
func (m *Manager) lookup(names []string) ([]*Supervisor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	order := m.node.Names()
	want := map[string]bool{}
	all := len(names) == 0
	var unknown []string
	for _, n := range names {
		if n == "all" {
			all = true
			continue
		}
		if _, ok := m.sups[n]; !ok {
			unknown = append(unknown, strconv.Quote(n))
			continue
		}
		want[n] = true
	}
	if len(unknown) > 0 {
		return nil, &UnknownServiceError{Names: unknown, Known: order}
	}
	var out []*Supervisor
	for _, n := range order {
		if all || want[n] {
			out = append(out, m.sups[n])
		}
	}
	return out, nil
}

func (m *Manager) sup(name string) *Supervisor {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sups[name]
}

func names(sups []*Supervisor) []string {
	out := make([]string, len(sups))
	for i, s := range sups {
		out[i] = s.name
	}
	return out
}

// Control applies action to services. Start and restart of several services
// follow dependency order and stop follows its reverse; with block, it
// returns once every service reached its goal (OK or Stopped).
func (m *Manager) Control(ctx context.Context, act Action, svc []string, block bool, progress func(Progress)) error {
	return m.control(ctx, act, svc, block, "", progress)
}

// control is Control, as a step of an operation when token is set: services
// on which the step already took effect are not acted on again.
func (m *Manager) control(ctx context.Context, act Action, svc []string, block bool, token string, progress func(Progress)) error {
	sups, err := m.lookup(svc)
	if err != nil {
		return err
	}
	if progress == nil {
		progress = func(Progress) {}
	}
	switch act {
	case Start:
		return m.startOrdered(ctx, names(sups), block, token, progress)
	case Stop:
		return m.stopOrdered(ctx, names(sups), block, command{act: actStop, token: token}, progress)
	case Restart:
		if len(sups) == 1 {
			return m.one(ctx, sups[0], command{act: actRestart, token: token}, block, progress)
		}
		// Several services: stop dependants first, then start in order, so
		// nothing runs against a dependency that is going away. The step is
		// done for a service only once it runs again, so the stop half
		// leaves the token unrecorded.
		if err := m.stopOrdered(ctx, names(sups), true, command{act: actStop, token: token, noRecord: true}, progress); err != nil {
			return err
		}
		return m.startOrdered(ctx, names(sups), block, token, progress)
	case Monitor, Unmonitor:
		a := actMonitor
		if act == Unmonitor {
			a = actUnmonitor
		}
		for _, s := range sups {
			if err := m.one(ctx, s, command{act: a, token: token}, false, progress); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unknown action %v", act)
}

func (m *Manager) one(ctx context.Context, s *Supervisor, c command, block bool, progress func(Progress)) error {
	err := s.do(ctx, c)
	already := errors.Is(err, errAlreadyDone)
	if err != nil && !already {
		progress(Progress{Service: s.name, State: s.Status().State, Message: err.Error(), Failed: true})
		return err
	}
	if block && (c.act == actRestart || c.act == actStart) {
		if already {
			progress(Progress{Service: s.name, State: s.Status().State, Message: errAlreadyDone.Error()})
		}
		if err := m.waitHealthy(ctx, s, progress); err != nil {
			progress(Progress{Service: s.name, State: s.Status().State, Message: err.Error(), Failed: true})
			return fmt.Errorf("%s: %w", s.name, err)
		}
		return nil
	}
	st := s.Status()
	msg := st.Message
	if already {
		msg = errAlreadyDone.Error()
	}
	progress(Progress{Service: s.name, State: st.State, Message: msg, Done: true})
	return nil
}

// Up starts every service of the node in dependency order.
func (m *Manager) Up(ctx context.Context, block bool, progress func(Progress)) error {
	return m.Control(ctx, Start, nil, block, progress)
}

// Down stops every service in reverse dependency order.
func (m *Manager) Down(ctx context.Context, block bool, progress func(Progress)) error {
	return m.Control(ctx, Stop, nil, block, progress)
}

// walk is one ordered pass over a set of services: each service waits for
// its prerequisites, then takes its step; independent services go in
// parallel.
type walk struct {
	scheduled string                                      // progress text when not blocking
	prereqs   func(name string) []string                  // services to wait for first
	waiting   string                                      // progress text while waiting, after the prerequisite's name
	ready     func(dep string) func(Status) (bool, error) // when a prerequisite is satisfied
	step      func(ctx context.Context, s *Supervisor, progress func(Progress)) error
	// onWait, when set, hears that a service waits for a prerequisite.
	onWait func(ctx context.Context, s *Supervisor, dep string)
	// token is the operation step the walk belongs to: a service it
	// already took goes straight to its step, which only waits for the
	// goal, as its prerequisites may never be met again (a dependant
	// restarted by the step runs on).
	token string
}

// startOrdered starts each service once its local dependencies among the
// running or to-be-started services are OK (Deephaven's dh_monit up:
// configuration_server first and waited for, then authentication_server,
// then the rest).
func (m *Manager) startOrdered(ctx context.Context, svc []string, block bool, token string, progress func(Progress)) error {
	return m.startWalk(ctx, svc, block, token, false, progress)
}

// startOwn starts, in the background, services the agent starts on its own
// (at its start, or added by a reload) rather than for an operator or a
// coordinator: each waits first for its dependencies on other nodes and its
// external ones, within its dependency_wait, so that a cluster booting all
// at once comes up in order. An operator's start in the meantime wins.
func (m *Manager) startOwn(ctx context.Context, svc []string) {
	_ = m.startWalk(ctx, svc, false, "", true, nil)
}

func (m *Manager) startWalk(ctx context.Context, svc []string, block bool, token string, own bool, progress func(Progress)) error {
	g := m.Node().Graph()
	inSet := setOf(svc)
	w := walk{
		token:     token,
		scheduled: "start scheduled in dependency order",
		prereqs: func(name string) []string {
			var out []string
			for _, d := range g.DependsOn(name) {
				// A dependency the operator keeps stopped is not ours to wait for.
				if inSet[d] || m.sup(d).Status().DesiredRunning {
					out = append(out, d)
				}
			}
			return out
		},
		ready: func(d string) func(Status) (bool, error) {
			return func(st Status) (bool, error) {
				if st.State == Failed {
					return false, fmt.Errorf("dependency %s failed: %s", d, st.Message)
				}
				if !st.DesiredRunning && !inSet[d] {
					return false, fmt.Errorf("dependency %s was stopped", d)
				}
				return st.State == OK, nil
			}
		},
		step: func(ctx context.Context, s *Supervisor, progress func(Progress)) error {
			note := ""
			if own {
				spec := m.Node().Services[s.name]
				if spec == nil || !s.needsStart() {
					return nil // removed by a reload, or started or stopped by an operator meanwhile
				}
				why, err := m.awaitOutside(ctx, spec, func(msg string) {
					progress(Progress{Service: s.name, State: Waiting, Message: msg})
					_ = s.do(ctx, command{act: actWait, note: msg})
				})
				if err != nil {
					return err
				}
				if !s.needsStart() {
					return nil
				}
				note = why
			}
			switch err := s.do(ctx, command{act: actStart, token: token, note: note}); {
			case errors.Is(err, errAlreadyDone):
				progress(Progress{Service: s.name, State: s.Status().State, Message: err.Error()})
			case err != nil:
				return err
			default:
				progress(Progress{Service: s.name, State: s.Status().State, Message: "started"})
			}
			return m.waitHealthy(ctx, s, progress)
		},
	}
	if own {
		w.onWait = func(ctx context.Context, s *Supervisor, dep string) {
			_ = s.do(ctx, command{act: actWait, note: "Waiting for " + dep + " (this node)"})
		}
	}
	return m.ordered(ctx, svc, block, progress, w)
}

// stopOrdered stops each service once every local service depending on it
// is stopped: the reverse of the start order. stop is the command sent to
// each service (actStop, with the operation step's token if any).
func (m *Manager) stopOrdered(ctx context.Context, svc []string, block bool, stop command, progress func(Progress)) error {
	g := m.Node().Graph()
	inSet := setOf(svc)
	return m.ordered(ctx, svc, block, progress, walk{
		token:     stop.token,
		scheduled: "stop scheduled in reverse dependency order",
		waiting:   " to stop",
		prereqs: func(name string) []string {
			var out []string
			for _, d := range g.Dependents(name) {
				// A dependant the step already took is not stopped again (a
				// restarted one runs on), so it is nothing to wait for.
				if inSet[d] && !m.stepDone(d, stop.token) {
					out = append(out, d)
				}
			}
			return out
		},
		ready: func(string) func(Status) (bool, error) {
			return func(st Status) (bool, error) {
				// A dependant can become done under the step while this
				// service waits (a request that timed out left its start
				// under way).
				done := stop.token != "" && st.LastOpToken == stop.token
				return done || !st.Running() && !st.DesiredRunning, nil
			}
		},
		step: func(ctx context.Context, s *Supervisor, progress func(Progress)) error {
			err := s.do(ctx, stop)
			switch {
			case errors.Is(err, errAlreadyDone) && stop.noRecord:
				progress(Progress{Service: s.name, State: s.Status().State, Message: "already restarted by this operation step"})
				return nil
			case errors.Is(err, errAlreadyDone):
				st, err := m.waitFor(ctx, s.name, func(st Status) (bool, error) {
					if st.DesiredRunning {
						return false, errors.New("started again after this operation step stopped it")
					}
					return !st.Running(), nil
				})
				if err != nil {
					return err
				}
				progress(Progress{Service: s.name, State: st.State, Message: errAlreadyDone.Error(), Done: true})
				return nil
			case err != nil:
				return err
			}
			st := s.Status()
			progress(Progress{Service: s.name, State: st.State, Message: st.Message, Done: true})
			return nil
		},
	})
}

// ordered runs w over svc. Without block it returns at once and the walk
// goes on in the background, owned by the agent rather than the request.
func (m *Manager) ordered(ctx context.Context, svc []string, block bool, progress func(Progress), w walk) error {
	if progress == nil {
		progress = func(Progress) {}
	}
	if !block {
		m.background(func(bctx context.Context) { _ = m.runWalk(bctx, svc, func(Progress) {}, w) })
		for _, n := range svc {
			progress(Progress{Service: n, State: m.sup(n).Status().State, Message: w.scheduled, Done: true})
		}
		return nil
	}
	return m.runWalk(ctx, svc, progress, w)
}

func (m *Manager) runWalk(ctx context.Context, svc []string, progress func(Progress), w walk) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	failed := func(s *Supervisor, err error) {
		progress(Progress{Service: s.name, State: s.Status().State, Message: err.Error(), Failed: true})
		mu.Lock()
		errs = append(errs, fmt.Errorf("%s: %w", s.name, err))
		mu.Unlock()
	}
	for _, name := range svc {
		s := m.sup(name)
		if s == nil {
			continue // removed by a reload meanwhile
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m.stepDone(name, w.token) {
				if err := w.step(ctx, s, progress); err != nil {
					failed(s, err)
				}
				return
			}
			for _, d := range w.prereqs(name) {
				progress(Progress{Service: name, State: s.Status().State, Message: "waiting for " + d + w.waiting})
				if w.onWait != nil {
					w.onWait(ctx, s, d)
				}
				if _, err := m.waitFor(ctx, d, w.ready(d)); err != nil {
					failed(s, fmt.Errorf("not done: %w", err))
					return
				}
			}
			if err := w.step(ctx, s, progress); err != nil {
				failed(s, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func setOf(names []string) map[string]bool {
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out
}

func (m *Manager) waitHealthy(ctx context.Context, s *Supervisor, progress func(Progress)) error {
	if _, err := m.waitFor(ctx, s.name, func(st Status) (bool, error) {
		switch {
		case st.State == Failed:
			return false, errors.New(st.Message)
		case !st.DesiredRunning:
			return false, errors.New("stopped while starting")
		}
		return st.State == OK, nil
	}); err != nil {
		return err
	}
	progress(Progress{Service: s.name, State: OK, Message: "running and healthy", Done: true})
	return nil
}

// waitFor blocks until pred accepts the service's status or fails.
func (m *Manager) waitFor(ctx context.Context, name string, pred func(Status) (bool, error)) (Status, error) {
	s := m.sup(name)
	for {
		wake := m.Changed()
		st := s.Status()
		ok, err := pred(st)
		if err != nil || ok {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-wake:
		}
	}
}

// Changed returns a channel closed at the next status change of any
// service. Take it before reading status, so no change falls in between.
func (m *Manager) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wake
}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	Added, Removed, Changed, RestartNeeded []string
}

// Reload switches to a new, already validated configuration: new services
// are started, removed ones stopped, changed ones take their new checks,
// limits and policy at once and their new command at their next start.
func (m *Manager) Reload(ctx context.Context, node *config.Node) (ReloadResult, error) {
	var res ReloadResult
	m.mu.Lock()
	old := m.node
	m.mu.Unlock()
	for _, name := range old.ServiceNames() {
		if _, ok := node.Services[name]; !ok {
			res.Removed = append(res.Removed, name)
		}
	}
	for _, name := range node.ServiceNames() {
		prev, ok := old.Services[name]
		switch {
		case !ok:
			res.Added = append(res.Added, name)
		case !reflect.DeepEqual(prev, node.Services[name]):
			res.Changed = append(res.Changed, name)
			n := node.Services[name]
			// A container's runtime applies such changes itself (it
			// recreates the container once).
			if n.Container == nil && (!reflect.DeepEqual(prev.Command, n.Command) || !reflect.DeepEqual(prev.Env, n.Env) || !reflect.DeepEqual(prev.EnvFiles, n.EnvFiles) || !reflect.DeepEqual(prev.Credentials, n.Credentials) || prev.User != n.User || prev.Group != n.Group || prev.WorkDir != n.WorkDir) {
				res.RestartNeeded = append(res.RestartNeeded, name)
			}
		}
	}
	// Removed services are stopped while the old graph still orders them.
	if len(res.Removed) > 0 {
		if err := m.stopOrdered(ctx, res.Removed, true, command{act: actStop}, nil); err != nil {
			return res, err
		}
	}
	added := map[string]*Supervisor{}
	for _, name := range res.Added {
		s := newSupervisor(node.Services[name], initialRecord(node.Services[name]), node.Agent.StateDir, m.rts, m.log, m.hooks())
		s.adopt(ctx)
		added[name] = s
	}
	m.mu.Lock()
	for _, name := range res.Removed {
		m.sups[name].stop() // stopped above; its loop ends with nothing to release
		delete(m.sups, name)
	}
	m.node = node
	for name, s := range added {
		m.sups[name] = s
		m.goRun(s)
	}
	m.mu.Unlock()
	for _, name := range res.Changed {
		if err := m.sup(name).do(ctx, command{act: actUpdate, spec: node.Services[name]}); err != nil {
			return res, err
		}
	}
	m.save()
	if len(res.Added) > 0 {
		var pending []string
		for _, n := range res.Added {
			if m.sup(n).needsStart() {
				pending = append(pending, n)
			}
		}
		m.startOwn(ctx, pending)
	}
	sort.Strings(res.RestartNeeded)
	return res, nil
}

// alert runs the configured hook with monit's environment variables, so
// scripts written for monit's exec action keep working.
func (m *Manager) alert(st Status, event, description string) {
	a := m.Node().Agent.Alert
	if len(a.Command) == 0 {
		return
	}
	host, _ := os.Hostname()
	env := append(os.Environ(),
		"MONIT_SERVICE="+st.Name,
		"MONIT_EVENT="+event,
		"MONIT_DESCRIPTION="+description,
		"MONIT_HOST="+host,
		"MONIT_DATE="+time.Now().Format(time.RFC1123Z),
		"MONIT_PROCESS_PID="+strconv.Itoa(st.PID),
		"MONIT_PROCESS_MEMORY="+strconv.FormatUint(st.RSSBytes/1024, 10),
		"MONIT_PROCESS_CPU_PERCENT="+strconv.FormatFloat(st.CPUPercent, 'f', 1, 64),
		"DHVISOR_NODE="+m.Node().Agent.Node,
	)
	m.background(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, a.Timeout.D())
		defer cancel()
		cmd := osexec.CommandContext(ctx, a.Command[0], a.Command[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			m.log.Error("alert hook failed", "service", st.Name, "err", err, "output", strings.TrimSpace(string(out)))
			return
		}
		m.log.Info("alert hook ran", "service", st.Name, "event", event)
	})
}

// Logs writes a service's output as its runtime keeps it (a container's):
// the last tail lines (all when tail < 0), then new output with follow,
// until ctx ends. Services whose output goes to their log directory have
// none to give here.
func (m *Manager) Logs(ctx context.Context, name string, tail int, follow bool, w io.Writer) error {
	if _, err := m.lookup([]string{name}); err != nil {
		return err // an unknown service
	}
	node := m.Node()
	spec := node.Services[name]
	if spec == nil {
		return fmt.Errorf("%s was removed by a reload", name)
	}
	lr, ok := m.rts.named(spec.Runtime).(runtime.LogReader)
	if !ok {
		return fmt.Errorf("%s writes its output to %s, not to its runtime", name, filepath.Join(spec.LogDir, name+".log.YYYY-MM-DD"))
	}
	return lr.Logs(ctx, runtimeSpec(node.Agent.StateDir, spec), tail, follow, w)
}
