package supervise

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/dhvisor/dhvisor/agent/check"
	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/state"
	"github.com/dhvisor/dhvisor/internal/config"
)

type probeResult struct {
	index int
	err   error
	at    time.Time
	took  time.Duration
}

// checkRunner probes a service's checks, each on its own interval, off the
// supervisor's loop so that a slow probe never delays handling of an exit.
type checkRunner struct {
	results chan probeResult
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	probes  []check.Probe
}

// logFacts are what a log check needs to know of the process it watches.
type logFacts struct {
	since time.Time                // the process's start
	marks map[string]check.LogMark // the files before this agent started it
	seen  []string                 // log checks it already passed
}

func newProbe(spec *config.Service, c config.Check, lf logFacts) (check.Probe, error) {
	addr := func() string {
		port, _ := spec.ResolvePort(c.Port) // validated with the config
		return net.JoinHostPort(c.Host, strconv.Itoa(port))
	}
	switch c.Type {
	case config.CheckTCP:
		return check.NewTCP(addr()), nil
	case config.CheckHTTP, config.CheckHTTPS:
		return check.NewHTTP(check.HTTPOptions{
			URL:                c.Type + "://" + addr() + c.Path,
			ExpectStatus:       c.ExpectStatus,
			ExpectBody:         c.ExpectBody,
			InsecureSkipVerify: c.TLSSkipVerify,
			CAFile:             c.CAFile,
		})
	case config.CheckGRPC:
		return check.NewGRPC(check.GRPCOptions{Addr: addr(), Service: c.GRPCService, TLS: c.TLS, InsecureSkipVerify: c.TLSSkipVerify, CAFile: c.CAFile})
	case config.CheckExec:
		// An exec check runs as the service does; never as the agent's
		// root because the user could not be found.
		cred, _, err := runtime.Credential(spec.User, spec.Group)
		if err != nil {
			return nil, err
		}
		opts := check.ExecOptions{Argv: c.Command, Env: []string{"DHVISOR_SERVICE=" + spec.Name}}
		if cred != nil {
			opts.Uid, opts.Gid = &cred.Uid, &cred.Gid
		}
		return check.NewExec(opts), nil
	case config.CheckLog:
		return newLogProbe(spec, c, lf)
	}
	return nil, nil // process checks are the exit event itself
}

func newLogProbe(spec *config.Service, c config.Check, lf logFacts) (check.Probe, error) {
	opts := check.LogOptions{Path: c.Path, Since: lf.since, Seen: slices.Contains(lf.seen, c.Name)}
	var err error
	if opts.Pattern, err = regexp.Compile(c.Pattern); err != nil {
		return nil, err // validated with the config
	}
	if c.FatalPattern != "" {
		if opts.Fatal, err = regexp.Compile(c.FatalPattern); err != nil {
			return nil, err
		}
	}
	if m, ok := lf.marks[c.Name]; ok {
		opts.Before = &m
	}
	// The service writes its log as its user; root and the agent may have
	// created it. A file of anyone else's is a link the user made to it.
	cred, _, err := runtime.Credential(spec.User, spec.Group)
	if err != nil {
		return nil, err
	}
	opts.Owners = []uint32{0, uint32(os.Geteuid())}
	if cred != nil {
		opts.Owners = append(opts.Owners, cred.Uid)
	}
	return check.NewLog(opts)
}

// assumeLogsSeen takes a process found running, not started by this
// agent, as past its log checks' lines: whoever ran it judged its
// readiness, and the line may be in a file its logger left long ago.
func (s *Supervisor) assumeLogsSeen() {
	s.logMarks = nil
	if names := s.spec.LogCheckNames(); len(names) > 0 {
		s.remember(func(m *state.Service) { m.LogsSeen = names })
	}
}

// markLogs records the log checks' files before the process starts, so
// that their checks skip exactly what an earlier run wrote.
func (s *Supervisor) markLogs() {
	s.logMarks = nil
	if len(s.remembered().LogsSeen) > 0 {
		s.remember(func(m *state.Service) { m.LogsSeen = nil }) // a new process: its lines are still to come
	}
	for _, c := range s.spec.Checks {
		if c.Type != config.CheckLog {
			continue
		}
		if s.logMarks == nil {
			s.logMarks = map[string]check.LogMark{}
		}
		s.logMarks[c.Name] = check.MarkLog(c.Path)
	}
}

// failingProbe stands for a check whose probe could not be built.
type failingProbe struct{ err error }

func (f failingProbe) Probe(context.Context) error { return f.err }

// startChecks (re)starts probing with the current spec.
func (s *Supervisor) startChecks() {
	s.stopChecks()
	ctx, cancel := context.WithCancel(context.Background())
	r := &checkRunner{results: make(chan probeResult), cancel: cancel}
	s.hyst = make([]*check.Hysteresis, len(s.spec.Checks))
	s.mu.Lock()
	lf := logFacts{since: s.status.StartedAt, marks: s.logMarks, seen: s.mem.LogsSeen}
	s.mu.Unlock()
	for i, c := range s.spec.Checks {
		s.hyst[i] = &check.Hysteresis{FailuresToBad: c.Failures, SuccessesToGood: c.Successes}
		p, err := newProbe(s.spec, c, lf)
		if err != nil {
			// A check that cannot run fails, so the service is not
			// reported OK on checks that never ran.
			s.log.Error("cannot build check", "check", c.Name, "err", err)
			p = failingProbe{fmt.Errorf("check %s cannot run: %w", c.Name, err)}
		}
		if p == nil {
			continue
		}
		r.probes = append(r.probes, p)
		r.wg.Add(1)
		go r.loop(ctx, i, p, c.Interval.D(), c.Timeout.D())
	}
	s.checks = r
	// A service with only a process check is healthy as soon as it runs.
	s.evaluate(context.Background())
}

func (s *Supervisor) stopChecks() {
	if s.checks == nil {
		return
	}
	// Probes in flight end on their own once cancelled; waiting for them
	// here would put a probe's teardown on the restart path. shutdown
	// waits for every retired runner.
	r := s.checks
	r.cancel()
	s.retired.Add(1)
	go func() {
		defer s.retired.Done()
		r.wg.Wait()
		for _, p := range r.probes {
			_ = check.Close(p)
		}
	}()
	s.checks = nil
}

// startProbeCap is the longest pause between probes of a service that has
// not passed its check yet.
const startProbeCap = 50 * time.Millisecond

func (r *checkRunner) loop(ctx context.Context, index int, p check.Probe, interval, timeout time.Duration) {
	defer r.wg.Done()
	// The first probe runs at once: a fast service should be OK in
	// milliseconds, not after a whole interval.
	t := time.NewTimer(0)
	defer t.Stop()
	started := false
	// Until the first success, retry quickly and then less so: a restarted
	// stand-in listens within ~20 ms, a JVM within seconds. The cap is what
	// an ordered start (up, a restart or an upgrade) waits, on average half
	// of it, per dependency level after the service listens: a local probe
	// every 50 ms while a service starts costs nothing worth saving.
	retry := 10 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := p.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		select {
		case r.results <- probeResult{index: index, err: err, at: start, took: time.Since(start)}:
		case <-ctx.Done():
			return
		}
		// Until the first success, probe often so a starting service turns
		// OK soon after it listens; after that, the configured interval
		// keeps "N failures" meaning N intervals, as in monit.
		if err == nil {
			started = true
		}
		next := interval
		if !started {
			next = min(interval, retry)
			retry = min(2*retry, startProbeCap)
		}
		t.Reset(next)
	}
}

func (s *Supervisor) onCheck(ctx context.Context, r probeResult) {
	if r.index >= len(s.hyst) || s.proc == nil {
		return
	}
	c := s.spec.Checks[r.index]
	s.hyst[r.index].Observe(r.err)
	if c.Type == config.CheckLog && r.err == nil && !slices.Contains(s.remembered().LogsSeen, c.Name) {
		s.remember(func(m *state.Service) { m.LogsSeen = append(m.LogsSeen, c.Name) })
	}
	res := CheckResult{Name: c.Name, OK: r.err == nil, At: r.at, Duration: r.took, Message: "ok"}
	if r.err != nil {
		res.Message = r.err.Error()
	}
	s.mu.Lock()
	s.status.LastCheck = res
	s.mu.Unlock()
	s.evaluate(ctx)
}

// evaluate turns the checks' verdicts into the service's state.
func (s *Supervisor) evaluate(ctx context.Context) {
	if s.proc == nil || !s.remembered().Monitored {
		return
	}
	healthy, known := true, true
	var bad string
	alertOnly := true // every failing check says "then alert"
	for i, h := range s.hyst {
		if s.spec.Checks[i].Type == config.CheckProcess {
			continue
		}
		ok, k := h.Healthy()
		if !k {
			known = false
			continue
		}
		if !ok {
			healthy = false
			alertOnly = alertOnly && s.spec.Checks[i].Action == config.ActionAlert
			if err := h.LastError(); err != nil && bad == "" {
				bad = fmt.Sprintf("check %s failed %d times: %v", s.spec.Checks[i].Name, h.ConsecutiveFailures(), err)
			}
		}
	}
	switch {
	case !healthy:
		if !s.graceOver && time.Now().Before(s.graceEnd) {
			s.setState(Initializing, "within start grace period; "+bad)
			return
		}
		if alertOnly {
			s.alertUnhealthy(ConnFailed, bad)
			return
		}
		s.restartUnhealthy(ctx, ConnFailed, bad)
	case known:
		s.graceOver = true
		if st := s.Status().State; st != OK {
			s.setState(OK, s.runNote)
		}
	}
}

// startSampling watches CPU and memory on a timer, but only for a service
// with a limit to enforce: everyone else's usage is read when status is
// asked for, which keeps an idle agent idle.
func (s *Supervisor) startSampling() {
	s.stopSampling()
	s.observeUsage(time.Now())
	l := s.spec.Limits
	if l.Memory == 0 && l.MemoryPercent == 0 && l.CPUPercent == 0 {
		return
	}
	s.sampleT = time.NewTicker(l.Interval.D())
	s.sampling.Store(true)
}

func (s *Supervisor) stopSampling() {
	s.sampling.Store(false)
	if s.sampleT != nil {
		s.sampleT.Stop()
		s.sampleT = nil
	}
}

// observeUsage reads the service's memory and CPU into the status: from
// the runtime when it measures them itself (a unit's cgroup), else from the
// process tree. CPU is the share since the previous reading, or, when that
// is missing or more than a minute old, the average since the process
// started (as ps shows it).
func (s *Supervisor) observeUsage(now time.Time) (procfs.Usage, float64, bool) {
	s.mu.Lock()
	p, started := s.metered, s.status.StartedAt
	s.mu.Unlock()
	if p == nil {
		return procfs.Usage{}, 0, false
	}
	var u procfs.Usage
	var err error
	if m, ok := p.(runtime.Metered); ok {
		u, err = m.Usage()
	} else {
		u, err = procfs.TreeUsage(p.Identity().PID)
	}
	if err != nil {
		return procfs.Usage{}, 0, false // the exit event follows
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.metered != p {
		return u, 0, false
	}
	if now.Sub(s.usageAt) > time.Minute {
		s.cpu.Reset()
	}
	s.usageAt = now
	pct, ok := s.cpu.Observe(u, now)
	if !ok {
		if up := now.Sub(started).Seconds(); up > 0 {
			pct = float64(u.CPUTicks) / procfs.ClockTicks / up * 100
		}
	}
	s.status.RSSBytes, s.status.CPUPercent = u.RSSBytes, pct
	return u, pct, ok
}

// refreshUsage updates memory and CPU for status if no timer does, at most
// once a second however often status is polled.
func (s *Supervisor) refreshUsage() {
	s.mu.Lock()
	fresh := time.Since(s.usageAt) < time.Second
	s.mu.Unlock()
	if !fresh && !s.sampling.Load() {
		s.observeUsage(time.Now())
	}
}

func (s *Supervisor) setLimits() {
	l := s.spec.Limits
	limit := float64(l.Memory)
	if l.MemoryPercent > 0 {
		if total, err := procfs.MemTotal(); err == nil {
			limit = float64(total) * l.MemoryPercent / 100
		} else {
			s.log.Warn("cannot read the host's memory; the memory limit in percent is not enforced", "err", err)
		}
	}
	s.memLimit = check.Threshold{Limit: limit, Cycles: l.MemoryCycles}
	s.cpuLimit = check.Threshold{Limit: l.CPUPercent, Cycles: l.CPUCycles}
}

func (s *Supervisor) sample(ctx context.Context, now time.Time) {
	// Read even when unmonitored: the timer is then the only reader.
	u, pct, ok := s.observeUsage(now)
	if u.Procs == 0 || !s.remembered().Monitored {
		return
	}
	l := s.spec.Limits
	if s.memLimit.Observe(float64(u.RSSBytes)) {
		s.limitMatched(ctx, l.MemoryAction, fmt.Sprintf("memory %s above limit %s for %d checks", config.ByteSize(u.RSSBytes), config.ByteSize(s.memLimit.Limit), l.MemoryCycles))
		return
	}
	if ok && s.cpuLimit.Observe(pct) {
		s.limitMatched(ctx, l.CPUAction, fmt.Sprintf("cpu %.0f%% above limit %.0f%% for %d checks", pct, l.CPUPercent, l.CPUCycles))
	}
}

// limitMatched acts on a resource limit: monit's "then restart" or
// "then alert".
func (s *Supervisor) limitMatched(ctx context.Context, action, why string) {
	if action == config.ActionAlert {
		s.alertUnhealthy(ResourceLimit, why)
		return
	}
	s.restartUnhealthy(ctx, ResourceLimit, why)
}
