// Package supervise keeps each of a node's services in the state the
// operator asked for: one event-driven loop per service (process exit, check
// result, timer, command) and a Manager that orders them by dependencies.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dhvisor/dhvisor/agent/check"
	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/internal/config"
)

type action int

const (
	actStart action = iota + 1
	actStop
	actRestart
	actMonitor
	actUnmonitor
	actUpdate
	actPing // answered at once: the loop is alive (the watchdog's probe)
	actWait // show that the start waits for a dependency (note says which)
)

type command struct {
	act  action
	spec *config.Service // actUpdate
	// token names the operation step the command belongs to: the command
	// is refused with errAlreadyDone if the service already took a step
	// under it, and otherwise records it once it takes effect, unless
	// noRecord is set (the stop half of a multi-service restart, after
	// which the step is not done yet).
	token    string
	noRecord bool
	// note is actWait's status message, and for actStart why the start
	// happens without a dependency (status keeps it while the process runs).
	note  string
	reply chan error
}

// errAlreadyDone refuses a command whose operation step already took
// effect on the service.
var errAlreadyDone = errors.New("already done by this operation step")

// hooks connect a supervisor to its manager.
type hooks struct {
	changed func()                                     // status changed: wake waiters
	persist func(now bool)                             // remembered state changed; now: before going on
	durable func() error                               // nil when the remembered state is on disk
	alert   func(st Status, event, description string) // the service failed for good
}

// Supervisor runs the loop of one service.
type Supervisor struct {
	name  string
	owner string // this agent, as processes are marked with it
	rts   Runtimes
	log   *slog.Logger
	hooks hooks
	cmds  chan command
	stop  context.CancelFunc // ends run; set by the manager that runs it
	// busyUntil (unix ns, 0 when idle) bounds an operation the loop is
	// blocked in on purpose (a stop waiting out stop_timeout): until then
	// the watchdog does not expect it to answer.
	busyUntil atomic.Int64

	mu      sync.Mutex // guards status, mem and usage; the loop is the only writer of status and mem
	status  Status
	mem     state.Service
	cpu     procfs.CPUMeter
	usageAt time.Time
	metered runtime.Process // the process usage is read from (the loop's proc)

	// Owned by the loop goroutine.
	spec      *config.Service
	proc      runtime.Process
	graceEnd  time.Time
	graceOver bool
	checks    *checkRunner
	hyst      []*check.Hysteresis
	stepToken string // the token of the command being handled, recorded with a new pid
	startNote string // why the next start goes without a dependency (actStart's note)
	runNote   string // startNote of the running process, its status message when OK
	staleWhy  string // the process must be replaced to take a change (held while unmonitored)
	restartC  <-chan time.Time
	restartT  *time.Timer
	findT     *time.Timer // looks again for a missing process the agent does not start
	findC     <-chan time.Time
	sampleT   *time.Ticker
	sampling  atomic.Bool    // a timer samples usage (the service has limits)
	retired   sync.WaitGroup // stopped check runners still winding down
	memLimit  check.Threshold
	cpuLimit  check.Threshold
	jitter    func() float64
	// logMarks are the log checks' files as they were just before this
	// agent started the process (by check name); nil for a process it
	// adopted.
	logMarks map[string]check.LogMark
}

// newSupervisor prepares the loop of one service; owner is the agent's
// identity on the host (its state directory), which marks its processes.
func newSupervisor(spec *config.Service, mem state.Service, owner string, rts Runtimes, log *slog.Logger, h hooks) *Supervisor {
	s := &Supervisor{
		name:   spec.Name,
		owner:  owner,
		rts:    rts,
		log:    log.With("service", spec.Name),
		hooks:  h,
		cmds:   make(chan command),
		spec:   spec,
		mem:    mem,
		jitter: randomJitter,
	}
	s.status = Status{Name: spec.Name, State: Stopped, Since: time.Now(), Monitored: mem.Monitored, DesiredRunning: mem.DesiredRunning, Restarts: mem.Restarts, User: spec.User, Ports: spec.PortNumbers(), DependsOn: slices.Clone(spec.DependsOn), LastOpToken: mem.LastOpToken}
	s.setLimits()
	return s
}

// named returns the runtime of that name; one the node lacks fails every
// start with a message rather than the agent.
func (rts Runtimes) named(name string) runtime.Runtime {
	if rt, ok := rts[name]; ok {
		return rt
	}
	return missingRuntime(name)
}

// Status returns a copy of the current status.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Supervisor) remembered() state.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mem
}

// do sends a command to the loop and waits for its immediate effect (a
// process started or stopped), not for the service to become healthy.
func (s *Supervisor) do(ctx context.Context, c command) error {
	c.reply = make(chan error, 1)
	select {
	case s.cmds <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-c.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// adopt takes over the process an earlier agent left running, if it is
// still that exact process. It stays with the runtime that started it,
// whatever the configuration says now (a changed runtime: takes effect at
// the next start). Called before run.
func (s *Supervisor) adopt(ctx context.Context) {
	var id procfs.Identity
	rtName := s.mem.Runtime
	if rtName == "" {
		rtName = config.RuntimeExec // a state file from before runtimes were recorded: exec ran everything then
	}
	if s.mem.PID != 0 {
		id = procfs.Identity{PID: s.mem.PID, StartTicks: s.mem.StartTicks}
	} else if name, found, ok := s.find(); ok {
		// No record (state lost, or another supervisor such as monit ran
		// it): the process is the service's, and starting another copy
		// would fight it for its ports.
		id, rtName = found, name
		s.log.Warn("found running process without a state record; adopting it", "pid", id.PID, "runtime", name)
		s.assumeLogsSeen()
	} else {
		return
	}
	p, err := s.rts.named(rtName).Adopt(ctx, s.runtimeSpec(), id)
	if err != nil {
		s.log.Info("process from before the agent restart not adopted", "pid", id.PID, "err", err)
		s.mu.Lock()
		s.mem.PID, s.mem.StartTicks = 0, 0
		s.mu.Unlock()
		// The recorded process is gone, but the service may run all the
		// same: a later start the state could not record (a full disk),
		// or for a daemonizing one, monit's start that its pidfile names.
		s.adoptFound(ctx)
		return
	}
	started := processStart(id, s.mem.StartedAt)
	s.log.Info("re-adopted running process", "pid", id.PID, "started", started, "runtime", rtName)
	if s.mem.Monitored {
		s.setState(Initializing, "re-adopted after agent restart; waiting for checks")
	} else {
		s.setState(NotMonitored, "re-adopted after agent restart; not monitored")
	}
	s.attach(p, rtName, started)
}

// adoptFound adopts the unrecorded process find finds, if any.
func (s *Supervisor) adoptFound(ctx context.Context) bool {
	name, id, ok := s.find()
	if !ok {
		return false
	}
	p, err := s.rts.named(name).Adopt(ctx, s.runtimeSpec(), id)
	if err != nil {
		s.log.Info("running process not adopted", "pid", id.PID, "runtime", name, "err", err)
		return false
	}
	s.log.Info("adopted the service's running process instead of starting another", "pid", id.PID, "runtime", name)
	s.setState(Initializing, "found running; adopted, waiting for checks")
	s.assumeLogsSeen()
	s.attach(p, name, processStart(id, time.Now()))
	return true
}

// processStart is when the process id started, else fallback.
func processStart(id procfs.Identity, fallback time.Time) time.Time {
	if st, err := procfs.ReadStat(id.PID); err == nil && st.StartTicks == id.StartTicks {
		if t, err := st.StartTime(); err == nil {
			return t
		}
	}
	return fallback
}

// find asks every runtime, the service's own first and then in name
// order, for an unrecorded process of the service.
func (s *Supervisor) find() (string, procfs.Identity, bool) {
	names := make([]string, 0, len(s.rts))
	for name := range s.rts {
		if name != s.spec.Runtime {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if _, ok := s.rts[s.spec.Runtime]; ok {
		names = append([]string{s.spec.Runtime}, names...)
	}
	spec := s.runtimeSpec()
	for _, name := range names {
		if id, ok := s.rts[name].Find(spec); ok {
			return name, id, true
		}
	}
	return "", procfs.Identity{}, false
}

// needsStart reports whether the service should run but has no process.
func (s *Supervisor) needsStart() bool {
	m := s.remembered()
	return m.DesiredRunning && m.Monitored && !m.Failed && s.Status().PID == 0 && !s.leavesMissing()
}

// leavesMissing reports whether a missing process is only reported, never
// started by the agent on its own: monit's "mode passive", or "if does not
// exist then alert". An operator's start still starts it.
func (s *Supervisor) leavesMissing() bool {
	return s.spec.IsPassive() || s.spec.CannotStart() || s.spec.Restart.OnMissing == config.ActionAlert
}

// findInterval paces the search for a missing process the agent leaves
// to others: a pidfile or a command line to look at, as monit's cycle does.
const findInterval = 2 * time.Second

// missing reports a process the agent does not start on its own, and
// looks for it again until it appears.
func (s *Supervisor) missing(why string) {
	reason := "on_missing: alert"
	switch {
	case s.spec.IsPassive():
		reason = "mode passive"
	case s.spec.CannotStart():
		reason = "it has no start program"
	}
	msg := fmt.Sprintf("%s; not started by the agent (%s)", why, reason)
	if s.Status().State != DoesNotExist {
		s.hooks.alert(s.Status(), string(DoesNotExist), msg)
	}
	s.setState(DoesNotExist, msg)
	s.armFind()
}

func (s *Supervisor) armFind() {
	s.stopFind()
	s.findT = time.NewTimer(findInterval)
	s.findC = s.findT.C
}

func (s *Supervisor) stopFind() {
	if s.findT != nil {
		s.findT.Stop()
		s.findT, s.findC = nil, nil
	}
}

// lookAgain adopts the missing process if someone started it.
func (s *Supervisor) lookAgain(ctx context.Context) {
	m := s.remembered()
	if s.proc != nil || !m.DesiredRunning || !m.Monitored {
		return
	}
	if s.adoptFound(ctx) {
		s.hooks.alert(s.Status(), "Exists", fmt.Sprintf("process found running (pid %d)", s.Status().PID))
		return
	}
	s.armFind()
}

func (s *Supervisor) run(ctx context.Context) {
	defer s.shutdown()
	if m := s.remembered(); s.proc == nil && s.leavesMissing() && m.DesiredRunning && m.Monitored {
		s.missing("not running at the agent's start")
	}
	for {
		var procDone <-chan struct{}
		if s.proc != nil {
			procDone = s.proc.Done()
		}
		var results <-chan probeResult
		if s.checks != nil {
			results = s.checks.results
		}
		var sampleC <-chan time.Time
		if s.sampleT != nil {
			sampleC = s.sampleT.C
		}
		var noticed <-chan struct{}
		if w, ok := s.proc.(runtime.Watched); ok {
			noticed = w.Noticed()
		}
		select {
		case <-ctx.Done():
			return
		case c := <-s.cmds:
			c.reply <- s.handle(ctx, c)
		case <-procDone:
			s.onExit(ctx)
		case r := <-results:
			s.onCheck(ctx, r)
		case <-s.restartC:
			s.restartC = nil
			_ = s.start(ctx) // a failure schedules the next try itself
		case <-s.findC:
			s.findC = nil
			s.lookAgain(ctx)
		case now := <-sampleC:
			s.sample(ctx, now)
		case <-noticed:
			s.onNotices(ctx, s.proc.(runtime.Watched).Notices())
		}
	}
}

// shutdown leaves the process running: the next agent adopts it.
func (s *Supervisor) shutdown() {
	s.stopChecks()
	s.stopSampling()
	s.cancelRestart()
	s.stopFind()
	if s.proc != nil {
		s.proc.Release()
	}
	s.retired.Wait()
}

func (s *Supervisor) handle(ctx context.Context, c command) error {
	if c.token == "" {
		return s.apply(ctx, c)
	}
	if s.remembered().LastOpToken == c.token {
		return errAlreadyDone
	}
	if !c.noRecord {
		s.stepToken = c.token
		defer func() { s.stepToken = "" }()
	}
	if err := s.apply(ctx, c); err != nil {
		return err
	}
	if !c.noRecord && s.remembered().LastOpToken != c.token {
		// Actions that start no process (stop, start of a running one)
		// take effect here; a new process recorded the token with its pid.
		s.rememberNow(func(m *state.Service) { m.LastOpToken = c.token })
	}
	return nil
}

// apply carries out an operator's command.
func (s *Supervisor) apply(ctx context.Context, c command) error {
	switch c.act {
	case actWait:
		if st := s.Status().State; s.proc == nil && (st == Stopped || st == Waiting) {
			s.setState(Waiting, c.note)
		}
		return nil
	case actStart:
		s.startNote = c.note
		s.remember(func(m *state.Service) {
			m.DesiredRunning, m.Monitored, m.Failed, m.FailedReason = true, true, false, ""
			// An operator's start after a failure is a fresh start, as
			// systemctl reset-failed then start is.
			m.FastFailures, m.RecentRestarts = 0, nil
		})
		if s.proc != nil {
			s.resumeMonitoring(ctx)
			return nil
		}
		s.cancelRestart()
		return s.start(ctx)
	case actStop:
		s.remember(func(m *state.Service) { m.DesiredRunning = false; m.Failed = false })
		s.cancelRestart()
		if err := s.stopProcess(ctx, "stopped by operator"); err != nil {
			return err
		}
		s.setState(Stopped, "stopped by operator")
		return nil
	case actRestart:
		s.remember(func(m *state.Service) {
			m.DesiredRunning, m.Monitored, m.Failed, m.FailedReason = true, true, false, ""
			m.FastFailures, m.RecentRestarts = 0, nil
		})
		s.cancelRestart()
		if s.proc != nil {
			s.setState(Restarting, "restart requested by operator")
			if done, err := s.restartProgram(ctx, "restart requested by operator", false); done || err != nil {
				return err
			}
			if err := s.stopProcess(ctx, "restart requested by operator"); err != nil {
				return err
			}
		}
		return s.start(ctx)
	case actMonitor:
		s.remember(func(m *state.Service) { m.Monitored = true; m.Failed = false })
		if s.proc != nil {
			s.resumeMonitoring(ctx)
			return nil
		}
		if s.remembered().DesiredRunning {
			return s.start(ctx)
		}
		s.setState(Stopped, "")
		return nil
	case actUnmonitor:
		s.remember(func(m *state.Service) { m.Monitored = false })
		s.cancelRestart()
		s.stopChecks()
		s.setState(NotMonitored, "monitoring disabled by operator")
		return nil
	case actPing:
		return nil
	case actUpdate:
		s.spec = c.spec
		s.setLimits()
		if w, ok := s.proc.(runtime.Watched); ok {
			w.Retarget(s.runtimeSpec())
		}
		s.mu.Lock()
		s.status.User, s.status.Ports, s.status.DependsOn = c.spec.User, c.spec.PortNumbers(), slices.Clone(c.spec.DependsOn)
		s.mu.Unlock()
		if s.checks != nil {
			s.startChecks()
		}
		s.changed()
		return nil
	}
	return fmt.Errorf("unknown action %d", c.act)
}

// startLimit bounds a runtime's start (a systemd start job, an image
// pull): the loop is blocked meanwhile, and the watchdog, which would
// otherwise have systemd kill the whole agent, allows it that long. A
// start that takes longer fails, and the restart policy tries again.
const startLimit = 2 * time.Minute

// start launches the process. On failure the restart policy schedules the
// next try, and the error is returned for an operator's request.
func (s *Supervisor) start(ctx context.Context) error {
	if s.proc != nil {
		return nil
	}
	defer s.busy(startLimit)()
	if s.spec.Daemonizing() && s.adoptFound(ctx) {
		// Started by someone else (an operator, monit before the take
		// over): a second copy would find its pidfile and refuse.
		return nil
	}
	if s.spec.CannotStart() {
		// As monit's "start program not defined": watched, never started.
		s.missing("cannot start it")
		return errors.New("the service has no start program: the agent only watches it (it starts when its pidfile names a running process)")
	}
	if err := s.hooks.durable(); err != nil {
		// Not the service failing either, and not counted: the agent
		// cannot record a process, so it starts none.
		s.log.Error("not starting", "err", err)
		s.retryStart(ExecFailed, fmt.Sprintf("not started: %v; retrying every %s", err, unavailableRetry))
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, startLimit)
	defer cancel()
	s.markLogs()
	rtName := s.spec.Runtime
	p, err := s.rts.named(rtName).Start(sctx, s.runtimeSpec())
	if errors.Is(err, runtime.ErrUnavailable) {
		// Not the service failing: what runs it is out of reach (a
		// container engine restarting). Retry without counting.
		s.log.Warn("cannot start yet", "err", err)
		s.retryStart(ConnFailed, fmt.Sprintf("cannot start: %v; retrying every %s", err, unavailableRetry))
		return err
	}
	if err != nil {
		s.log.Error("start failed", "err", err)
		s.scheduleRestart(ctx, 0, ExecFailed, "start failed: "+err.Error())
		return err
	}
	s.log.Info("started", "pid", p.Identity().PID)
	s.runNote, s.startNote = s.startNote, ""
	// Initializing first: attach evaluates the checks, and a service with
	// only a process check is OK at once.
	s.setState(Initializing, joinNote(s.runNote, "started; waiting for checks"))
	started := time.Now()
	if w, ok := p.(runtime.Watched); ok && !w.Container().StartedAt.IsZero() {
		started = w.Container().StartedAt // a running container taken over
	}
	s.attach(p, rtName, started)
	return nil
}

// unavailableRetry paces starts while the runtime is out of reach.
const unavailableRetry = time.Second

// retryStart tries the start again after unavailableRetry, uncounted.
func (s *Supervisor) retryStart(st State, msg string) {
	s.setState(st, msg)
	s.cancelRestart()
	s.restartT = time.NewTimer(unavailableRetry)
	s.restartC = s.restartT.C
}

func (s *Supervisor) runtimeSpec() runtime.Spec { return runtimeSpec(s.owner, s.spec) }

// runtimeSpec is what a runtime needs of a service to run it for owner.
func runtimeSpec(owner string, spec *config.Service) runtime.Spec {
	return runtime.Spec{Name: spec.Name, Owner: owner, Command: spec.Command, Env: spec.Env, EnvFiles: spec.EnvFiles, Credentials: spec.Credentials, Dir: spec.WorkDir, User: spec.User, Group: spec.Group,
		LogDir: spec.LogDir, Output: spec.Output, StopTimeout: spec.StopTimeout.D(), Container: spec.Container, Daemon: daemonSpec(spec)}
}

// daemonSpec is how a daemonizing service runs; nil for the others.
func daemonSpec(spec *config.Service) *runtime.Daemon {
	if !spec.Daemonizing() {
		return nil
	}
	program := func(p *config.Program, def time.Duration) *runtime.Program {
		if p == nil {
			return nil
		}
		return &runtime.Program{Command: p.Command, User: p.User, Group: p.Group, Timeout: config.ProgramTimeout(p, def)}
	}
	d := &runtime.Daemon{
		Start:        *program(spec.Start, spec.StartTimeout.D()),
		Stop:         program(spec.Stop, spec.StopTimeout.D()),
		Restart:      program(spec.RestartProgram, spec.StartTimeout.D()),
		Pidfile:      spec.Pidfile,
		StartTimeout: spec.StartTimeout.D(),
	}
	if spec.Match != "" {
		d.Match = regexp.MustCompile(spec.Match) // validated with the config
	}
	return d
}

// onNotices acts on what the runtime reports of a running process.
func (s *Supervisor) onNotices(ctx context.Context, ns []runtime.Notice) {
	for _, n := range ns {
		if s.proc == nil {
			return
		}
		switch n.Kind {
		case runtime.Unseen:
			// Neither alive nor dead as far as anyone can tell: no checks
			// (a failing probe would restart what cannot be restarted),
			// no restart, until it is seen again or found gone.
			s.stopChecks()
			s.setState(ConnFailed, n.Message)
		case runtime.Seen:
			if !s.remembered().Monitored {
				s.setState(NotMonitored, n.Message)
				continue
			}
			s.setState(Initializing, n.Message+"; waiting for checks")
			s.startChecks()
		case runtime.Stale:
			s.replace(ctx, n.Message)
		case runtime.Unhealthy:
			s.restartUnhealthy(ctx, ConnFailed, n.Message)
		}
	}
}

// replace recreates a running service whose inputs changed: not a failure,
// so the restart policy does not count it.
func (s *Supervisor) replace(ctx context.Context, why string) {
	if m := s.remembered(); !m.DesiredRunning || !m.Monitored {
		// Not monitored: the agent keeps its hands off until an operator
		// monitors or restarts it, which takes the change.
		s.log.Info("not replacing an unmonitored service until it is monitored again", "why", why)
		s.staleWhy = why
		return
	}
	s.log.Info("replacing the service to apply a change", "why", why)
	s.setState(Restarting, why+"; replacing it")
	if err := s.stopProcess(ctx, why); err != nil {
		s.log.Error("could not stop the service to replace it", "err", err)
		return
	}
	_ = s.start(ctx) // a failure schedules the next try itself
}

// attach makes p, run by the runtime named rtName, the service's process
// and starts watching it.
func (s *Supervisor) attach(p runtime.Process, rtName string, started time.Time) {
	s.proc = p
	s.staleWhy = ""
	s.graceEnd = started.Add(s.spec.StartGrace.D())
	s.graceOver = false
	id := p.Identity()
	// A pid must be on disk before anything else happens: an agent killed
	// now must not start a second copy when it comes back. The operation
	// step that started it goes in the same write, so that no crash can
	// leave a new process whose step a new coordinator leader would redo.
	token := s.stepToken
	s.rememberNow(func(m *state.Service) {
		m.PID, m.StartTicks, m.StartedAt, m.Runtime = id.PID, id.StartTicks, started, rtName
		if token != "" {
			m.LastOpToken = token
		}
	})
	s.mu.Lock()
	s.status.PID, s.status.StartedAt = id.PID, started
	s.status.Container = nil
	if w, ok := p.(runtime.Watched); ok {
		c := w.Container()
		s.status.Container = &c
	}
	s.status.CPUPercent, s.status.RSSBytes = 0, 0
	s.metered = p
	s.cpu.Reset()
	s.mu.Unlock()
	s.memLimit.Reset()
	s.cpuLimit.Reset()
	if s.remembered().Monitored {
		s.startChecks()
	}
	s.startSampling()
}

func (s *Supervisor) detach() {
	s.proc = nil
	s.runNote = ""
	s.stopChecks()
	s.stopSampling()
	s.remember(func(m *state.Service) { m.PID, m.StartTicks = 0, 0 })
	s.mu.Lock()
	s.status.PID, s.status.CPUPercent, s.status.RSSBytes = 0, 0, 0
	s.status.Container = nil
	s.metered = nil
	s.mu.Unlock()
}

// stopProcess ends the process on purpose: SIGTERM to its group, SIGKILL
// after stop_timeout.
func (s *Supervisor) stopProcess(ctx context.Context, why string) error {
	if s.proc == nil {
		return nil
	}
	s.stopChecks()
	p := s.proc
	// The runtime runs the stop program, waits out stop_timeout, then
	// kills and waits for the end.
	defer s.busy(config.ProgramTimeout(s.spec.Stop, 0) + s.spec.StopTimeout.D() + time.Minute)()
	exit, err := p.Stop(ctx, s.spec.StopTimeout.D())
	if err != nil {
		return fmt.Errorf("stop %s: %w", s.name, err)
	}
	s.log.Info("stopped", "pid", p.Identity().PID, "why", why, "exit", exitText(exit))
	s.recordExit(exit)
	s.detach()
	return nil
}

func (s *Supervisor) onExit(ctx context.Context) {
	p := s.proc
	exit := p.Exit()
	uptime := exit.At.Sub(s.Status().StartedAt)
	s.recordExit(exit)
	s.detach()
	m := s.remembered()
	desc := fmt.Sprintf("%s after %s", exitText(exit), uptime.Round(time.Millisecond))
	switch {
	case !m.DesiredRunning:
		s.setState(Stopped, desc)
	case !m.Monitored:
		s.setState(NotMonitored, desc+"; not monitored, so not restarted")
	case isPermanent(s.spec.Restart, exit.Code):
		s.fail(fmt.Sprintf("%s: exit code %d is marked permanent, not restarting", desc, exit.Code))
	case s.leavesMissing():
		s.log.Warn("process ended; not restarted by the agent", "pid", p.Identity().PID, "exit", exitText(exit))
		s.missing(desc)
	default:
		s.log.Warn("process ended unexpectedly", "pid", p.Identity().PID, "exit", exitText(exit), "uptime", uptime)
		st := DoesNotExist
		if uptime < s.spec.Restart.MinUptime.D() {
			st = ExecFailed
		}
		s.scheduleRestart(ctx, uptime, st, desc)
	}
}

// scheduleRestart applies the restart policy after an unplanned end.
func (s *Supervisor) scheduleRestart(ctx context.Context, uptime time.Duration, st State, why string) {
	m := s.remembered()
	d := decideRestart(s.spec.Restart, uptime, m.FastFailures, m.RecentRestarts, time.Now(), s.jitter)
	if d.giveUp {
		limit := fmt.Sprintf("%s; %d restarts within %s", why, len(d.recent), s.spec.Restart.Window.D())
		if s.spec.Restart.LimitAction != config.ActionAlert {
			s.fail(limit)
			return
		}
		// monit's "then alert": say so once per window, and go on.
		s.hooks.alert(s.Status(), "Restart limit", limit)
		d = decideRestart(s.spec.Restart, uptime, m.FastFailures, nil, time.Now(), s.jitter)
	}
	s.remember(func(m *state.Service) {
		m.FastFailures, m.RecentRestarts = d.fastFailures, d.recent
		m.Restarts++
	})
	s.mu.Lock()
	s.status.Restarts = s.mem.Restarts
	s.mu.Unlock()
	if d.delay <= 0 {
		s.setState(Restarting, why+"; restarting")
		_ = s.start(ctx) // a failure schedules the next try itself
		return
	}
	s.setState(st, fmt.Sprintf("%s; restarting in %s", why, d.delay.Round(time.Millisecond)))
	s.restartT = time.NewTimer(d.delay)
	s.restartC = s.restartT.C
}

func (s *Supervisor) cancelRestart() {
	if s.restartT != nil {
		s.restartT.Stop()
		s.restartT, s.restartC = nil, nil
	}
}

// fail gives up on the service: Failed, not monitored, one alert.
func (s *Supervisor) fail(why string) {
	s.remember(func(m *state.Service) { m.Failed, m.FailedReason, m.Monitored = true, why, false })
	s.setState(Failed, why)
	s.log.Error("service failed; no more restarts until an operator starts it", "why", why)
	s.hooks.alert(s.Status(), string(Failed), why)
}

func (s *Supervisor) recordExit(e runtime.Exit) {
	s.mu.Lock()
	s.status.LastExit = &e
	s.mu.Unlock()
}

// restartUnhealthy replaces a process that is running but failing.
func (s *Supervisor) restartUnhealthy(ctx context.Context, st State, why string) {
	if !s.remembered().Monitored {
		return
	}
	if s.spec.IsPassive() {
		s.alertUnhealthy(st, why)
		return
	}
	s.setState(st, why+"; restarting")
	s.log.Warn("restarting unhealthy service", "state", st, "why", why)
	uptime := time.Since(s.Status().StartedAt)
	if done, err := s.restartProgram(ctx, why, true); done {
		return
	} else if err != nil {
		s.log.Error("restart program failed; stopping and starting instead", "err", err)
	}
	if err := s.stopProcess(ctx, why); err != nil {
		s.log.Error("could not stop unhealthy service", "err", err)
		return
	}
	s.scheduleRestart(ctx, uptime, st, why)
}

// alertUnhealthy reports a failure the service's configuration only
// alerts on (monit's "then alert", or mode passive): the state says so,
// the hook runs once as the state is entered, nothing is restarted.
func (s *Supervisor) alertUnhealthy(st State, why string) {
	if s.Status().State == st {
		return
	}
	s.log.Warn("service unhealthy; alerting only", "state", st, "why", why)
	s.setState(st, why+"; alert only, not restarted")
	s.hooks.alert(s.Status(), string(st), why)
}

// restartProgram restarts the process through the service's restart
// program when it has one; done says whether it did. A failed restart
// program leaves the process to a stop and a start. counted: the restart
// is the agent's own (not an operator's), which status counts.
func (s *Supervisor) restartProgram(ctx context.Context, why string, counted bool) (done bool, err error) {
	r, ok := s.proc.(runtime.Restarter)
	if !ok || s.spec.RestartProgram == nil {
		return false, nil
	}
	s.stopChecks()
	defer s.busy(config.ProgramTimeout(s.spec.RestartProgram, s.spec.StartTimeout.D()) + s.spec.StopTimeout.D() + s.spec.StartTimeout.D())()
	np, err := r.Restart(ctx)
	if errors.Is(err, runtime.ErrNoRestartProgram) {
		return false, nil
	}
	if err != nil {
		if s.proc.Identity().Alive() {
			return false, err
		}
		// The old process is gone and no new one can be followed: as a
		// failed start.
		s.detach()
		s.scheduleRestart(ctx, 0, ExecFailed, "restart program: "+err.Error())
		return true, err
	}
	rtName := s.remembered().Runtime
	s.log.Info("restarted by the restart program", "why", why, "old_pid", s.proc.Identity().PID, "pid", np.Identity().PID)
	s.detach()
	if counted {
		s.remember(func(m *state.Service) { m.Restarts++ })
		s.mu.Lock()
		s.status.Restarts = s.mem.Restarts
		s.mu.Unlock()
	}
	s.setState(Initializing, "restarted by the restart program; waiting for checks")
	s.attach(np, rtName, time.Now())
	return true, nil
}

// remember changes what survives an agent restart; it is saved shortly.
func (s *Supervisor) remember(f func(*state.Service)) { s.update(f, false) }

// rememberNow changes it and saves before returning.
func (s *Supervisor) rememberNow(f func(*state.Service)) { s.update(f, true) }

func (s *Supervisor) update(f func(*state.Service), now bool) {
	s.mu.Lock()
	f(&s.mem)
	s.status.Monitored, s.status.DesiredRunning, s.status.LastOpToken = s.mem.Monitored, s.mem.DesiredRunning, s.mem.LastOpToken
	s.mu.Unlock()
	s.hooks.persist(now)
}

func (s *Supervisor) setState(st State, msg string) {
	s.mu.Lock()
	if s.status.State != st {
		s.status.Since = time.Now()
	}
	s.status.State, s.status.Message = st, msg
	s.mu.Unlock()
	s.changed()
}

// busy marks the loop as blocked on purpose for at most d; the returned
// function marks it idle again.
func (s *Supervisor) busy(d time.Duration) func() {
	s.busyUntil.Store(time.Now().Add(d).UnixNano())
	return func() { s.busyUntil.Store(0) }
}

// ping checks that the loop answers, unless it is blocked on purpose.
func (s *Supervisor) ping(ctx context.Context) error {
	if until := s.busyUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		return nil
	}
	if err := s.do(ctx, command{act: actPing}); err != nil {
		return fmt.Errorf("the loop of %s does not answer: %w", s.name, err)
	}
	return nil
}

// resumeMonitoring puts a running process back under its checks (after
// unmonitor, or a Failed verdict the operator overrides with start).
func (s *Supervisor) resumeMonitoring(ctx context.Context) {
	if s.checks != nil {
		return // monitored all along
	}
	if why := s.staleWhy; why != "" {
		s.replace(ctx, why+" while not monitored")
		return
	}
	s.setState(Initializing, "monitoring resumed; waiting for checks")
	s.startChecks()
}

func (s *Supervisor) changed() { s.hooks.changed() }

// joinNote puts a start's note before msg.
func joinNote(note, msg string) string {
	if note == "" {
		return msg
	}
	return note + "; " + msg
}

func exitText(e runtime.Exit) string {
	switch {
	case e.Signal != "":
		return "killed by " + e.Signal
	case e.Code >= 0:
		return fmt.Sprintf("exited with code %d", e.Code)
	}
	return "exited (not the agent's child: exit status unknown)"
}

// missingRuntime stands for a runtime the agent was not given.
type missingRuntime string

func (m missingRuntime) Start(context.Context, runtime.Spec) (runtime.Process, error) {
	return nil, fmt.Errorf("runtime %q is not available in this agent", string(m))
}

func (m missingRuntime) Adopt(context.Context, runtime.Spec, procfs.Identity) (runtime.Process, error) {
	return nil, fmt.Errorf("runtime %q is not available in this agent", string(m))
}

func (missingRuntime) Find(runtime.Spec) (procfs.Identity, bool) { return procfs.Identity{}, false }
