// Package systemd runs services as transient systemd units in dhvisor.slice,
// driven over D-Bus. The units are systemd's, not the agent's children: an
// agent that restarts (or is killed) leaves them running and finds them
// again by unit name, main pid and start time. systemd's own Restart= is off
// for them; dhvisor's restart policy, checks and ordering decide, as with
// the exec runtime. Unit state changes arrive as D-Bus signals, so a death
// is seen when systemd reports it, never at the next poll.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/cgroup"
	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/runtime/daemon"
	"github.com/dhvisor/dhvisor/internal/atomicfile"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/envfile"
)

// Slice holds every unit dhvisor starts: `systemctl status dhvisor.slice`
// shows them together, and the package's removal stops them all at once.
const Slice = "dhvisor.slice"

// UnitName is the unit of a service: dhvisor-<service>.service, with
// anything a unit name cannot hold escaped as systemd does.
func UnitName(service string) string {
	var b strings.Builder
	b.WriteString("dhvisor-")
	for i := 0; i < len(service); i++ {
		c := service[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == ':' || (c == '.' && i > 0) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, `\x%02x`, c)
	}
	b.WriteString(".service")
	return b.String()
}

const (
	ifaceUnit    = "org.freedesktop.systemd1.Unit"
	ifaceService = "org.freedesktop.systemd1.Service"
	ifaceProps   = "org.freedesktop.DBus.Properties"
	unitPathRoot = "/org/freedesktop/systemd1/unit/"

	// resyncEvery re-reads every watched unit's state: the safety net
	// under the signals (a connection lost and regained, a signal that
	// never came).
	resyncEvery = 30 * time.Second
)

// Runtime is the systemd runtime. Its zero value is not usable: New.
type Runtime struct {
	log    *slog.Logger
	owner  string // the agent whose units Adopt takes over
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	conn    *sd.Conn // method calls
	sig     *dbus.Conn
	signals chan *dbus.Signal
	watched map[dbus.ObjectPath]*process
	// retired is, by unit, the invocation id of its run that ended last:
	// that run's last signals may still wait to be read when the next run
	// under the same name is watched, and must not end it.
	retired     map[dbus.ObjectPath]string
	execType    bool // systemd ≥ 240: Type=exec, so a failed exec fails the start
	credentials bool // systemd ≥ 247: LoadCredential=
	// envDir holds the services' environment files (EnvDir; tests use
	// their own).
	envDir string
}

// EnvDir is where the runtime writes each unit's environment file: on
// /run (memory, gone at reboot), root's alone.
const EnvDir = "/run/dhvisor/env"

var _ runtime.Runtime = (*Runtime)(nil)

// New connects to systemd (its private socket as root, else the system
// bus) and starts following unit state changes until Close. owner is the
// agent's identity (its state directory), which its units carry.
func New(ctx context.Context, log *slog.Logger, owner string) (*Runtime, error) {
	r := &Runtime{log: log.With("runtime", "systemd"), owner: owner, watched: map[dbus.ObjectPath]*process{}, retired: map[dbus.ObjectPath]string{}, done: make(chan struct{}), envDir: EnvDir}
	if err := r.connect(ctx); err != nil {
		return nil, err
	}
	ctx, r.cancel = context.WithCancel(context.Background())
	go r.follow(ctx)
	return r, nil
}

// Close stops following units and closes the connections. Units keep
// running.
func (r *Runtime) Close() {
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	r.disconnect()
}

func privateSocket() bool {
	return os.Geteuid() == 0 && func() bool { _, err := os.Stat("/run/systemd/private"); return err == nil }()
}

// connect opens the method and signal connections and subscribes.
func (r *Runtime) connect(ctx context.Context) error {
	private := privateSocket()
	var conn *sd.Conn
	var err error
	if private {
		conn, err = sd.NewSystemdConnectionContext(ctx)
	} else {
		conn, err = sd.NewSystemConnectionContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("systemd: connect: %w", err)
	}
	sig, signals, v, err := dialSignals(private)
	if err != nil {
		conn.Close()
		return err
	}
	r.mu.Lock()
	r.disconnect()
	r.conn, r.sig, r.signals = conn, sig, signals
	r.execType = versionAtLeast(v, 240)
	r.credentials = versionAtLeast(v, 247)
	r.mu.Unlock()
	return nil
}

// disconnect closes the connections; r.mu held.
func (r *Runtime) disconnect() {
	if r.conn != nil {
		r.conn.Close()
		r.sig.Close()
		r.conn, r.sig = nil, nil
	}
}

// dialSignals opens the connection unit state changes arrive on, and
// returns systemd's version too. On the private socket systemd sends every
// signal to every client; on the bus it sends them only once someone
// subscribed, and the bus passes on only what a match asks for.
func dialSignals(private bool) (*dbus.Conn, chan *dbus.Signal, string, error) {
	var c *dbus.Conn
	var err error
	// No dbus.WithContext: with it (godbus v5.2.2) calls on the private
	// socket get no reply.
	if private {
		c, err = dbus.Dial("unix:path=/run/systemd/private")
	} else {
		c, err = dbus.SystemBusPrivate()
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("systemd: connect: %w", err)
	}
	fail := func(err error) (*dbus.Conn, chan *dbus.Signal, string, error) {
		c.Close()
		return nil, nil, "", fmt.Errorf("systemd: subscribe: %w", err)
	}
	if err := c.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		return fail(err)
	}
	if !private {
		if err := c.Hello(); err != nil {
			return fail(err)
		}
		if err := c.AddMatchSignal(dbus.WithMatchInterface(ifaceProps), dbus.WithMatchMember("PropertiesChanged"),
			dbus.WithMatchPathNamespace("/org/freedesktop/systemd1/unit")); err != nil {
			return fail(err)
		}
	}
	obj := c.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
	// The version is asked first for a reason: a Subscribe sent as the
	// very first message on the private socket never gets its reply.
	var version string
	if err := obj.Call(ifaceProps+".Get", 0, "org.freedesktop.systemd1.Manager", "Version").Store(&version); err != nil {
		return fail(err)
	}
	// Sized for bursts: godbus delivers in order only while there is room.
	signals := make(chan *dbus.Signal, 4096)
	c.Signal(signals)
	if err := obj.Call("org.freedesktop.systemd1.Manager.Subscribe", 0).Err; err != nil {
		return fail(err)
	}
	return c, signals, version, nil
}

// versionAtLeast reads systemd's Version property ("252.39-1~deb12u2",
// "239 (239-74.el8_8)") as a number.
func versionAtLeast(v string, want int) bool {
	v = strings.Trim(v, `"`)
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	n, err := strconv.Atoi(v[:end])
	return err == nil && n >= want
}

// follow handles unit state changes until ctx ends, reconnecting when
// systemd goes away (daemon-reexec during its own upgrade) and re-reading
// every watched unit after a reconnect and now and then.
func (r *Runtime) follow(ctx context.Context) {
	defer close(r.done)
	tick := time.NewTicker(resyncEvery)
	defer tick.Stop()
	for {
		r.mu.Lock()
		signals := r.signals
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case s, ok := <-signals:
			if !ok {
				r.reconnect(ctx)
				continue
			}
			r.handle(s)
		case <-tick.C:
			r.resync(ctx)
		}
	}
}

func (r *Runtime) reconnect(ctx context.Context) {
	r.log.Warn("lost the connection to systemd; reconnecting")
	delay := 100 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := r.connect(cctx)
		cancel()
		if err == nil {
			r.log.Info("reconnected to systemd")
			r.resync(ctx)
			return
		}
		r.log.Warn("cannot reconnect to systemd", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// handle applies one signal to the unit it is about, if watched.
func (r *Runtime) handle(s *dbus.Signal) {
	if s.Name != ifaceProps+".PropertiesChanged" || len(s.Body) < 2 {
		return
	}
	iface, _ := s.Body[0].(string)
	changed, _ := s.Body[1].(map[string]dbus.Variant)
	// Every Unit signal carries the invocation id of the run it is about
	// (systemd ≥ 232).
	inv, _ := changed["InvocationID"].Value().([]byte)
	r.mu.Lock()
	p := r.watched[s.Path]
	stale := iface == ifaceUnit && len(inv) > 0 && r.retired[s.Path] == string(inv)
	r.mu.Unlock()
	if p == nil || stale {
		return
	}
	switch iface {
	case ifaceService:
		p.noteExit(changed)
	case ifaceUnit:
		p.noteInvocation(inv)
		st, ok := changed["ActiveState"].Value().(string)
		if !ok {
			return
		}
		// A new transient unit is first announced inactive: only an end
		// after its process ran is one.
		if !ended(st) {
			p.setRunning()
		} else if p.hasRun() {
			exit := r.exitOf(p)
			// Collected before the end is told: the restart that follows
			// reuses the unit's name.
			if st == "failed" {
				r.collect(p.unit)
			}
			p.finish(exit)
		}
	}
}

// collect resets a failed unit, which unloads it (its exit was read).
func (r *Runtime) collect(unit string) {
	conn, err := r.connection()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.ResetFailedUnitContext(ctx, unit)
}

// ended reports whether a unit in ActiveState st has no process left.
func ended(st string) bool { return st == "inactive" || st == "failed" }

// resync reads the state of every watched unit, for changes a lost
// connection or a dropped signal hid.
func (r *Runtime) resync(ctx context.Context) {
	r.mu.Lock()
	ps := make([]*process, 0, len(r.watched))
	for _, p := range r.watched {
		if p.hasRun() {
			ps = append(ps, p)
		}
	}
	r.mu.Unlock()
	for _, p := range ps {
		st, err := r.unitState(ctx, p.unit)
		if err != nil {
			continue
		}
		if ended(st.active) || st.load == "not-found" {
			r.log.Warn("unit ended without a signal; caught by the re-check", "unit", p.unit)
			p.noteStatus(st)
			exit := r.exitOf(p)
			if st.active == "failed" {
				r.collect(p.unit)
			}
			p.finish(exit)
		}
	}
}

// exitOf is how p's main process ended, from the signals or, failing that,
// from systemd (gone once the unit is collected: then unknown).
func (r *Runtime) exitOf(p *process) runtime.Exit {
	if e, ok := p.recordedExit(); ok {
		return e
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if st, err := r.unitState(ctx, p.unit); err == nil {
		p.noteStatus(st)
	}
	e, _ := p.recordedExit()
	return e
}

// unitStatus is what the runtime reads of a unit.
type unitStatus struct {
	load, active, result string
	invocation           string // the run's invocation id (raw bytes)
	mainPID, execPID     uint32
	execCode, execStatus int32
	env                  []string
}

func (r *Runtime) unitState(ctx context.Context, unit string) (unitStatus, error) {
	conn, err := r.connection()
	if err != nil {
		return unitStatus{}, err
	}
	u, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return unitStatus{}, fmt.Errorf("systemd: %s: %w", unit, err)
	}
	st := unitStatus{}
	st.load, _ = u["LoadState"].(string)
	st.active, _ = u["ActiveState"].(string)
	if inv, ok := u["InvocationID"].([]byte); ok {
		st.invocation = string(inv)
	}
	if st.load != "loaded" {
		return st, nil
	}
	s, err := conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
	if err != nil {
		return unitStatus{}, fmt.Errorf("systemd: %s: %w", unit, err)
	}
	st.result, _ = s["Result"].(string)
	st.mainPID, _ = s["MainPID"].(uint32)
	st.execPID, _ = s["ExecMainPID"].(uint32)
	st.execCode, _ = s["ExecMainCode"].(int32)
	st.execStatus, _ = s["ExecMainStatus"].(int32)
	st.env, _ = s["Environment"].([]string)
	return st, nil
}

func (r *Runtime) connection() (*sd.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return nil, errors.New("systemd: not connected")
	}
	return r.conn, nil
}

func unitPath(unit string) dbus.ObjectPath {
	return dbus.ObjectPath(unitPathRoot + sd.PathBusEscape(unit))
}

// watch registers p for signals. It happens before the unit is started or
// read, so that no state change falls between the two.
func (r *Runtime) watch(p *process) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watched[p.path] = p
}

func (r *Runtime) unwatch(p *process) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watched[p.path] == p {
		delete(r.watched, p.path)
	}
}

// retire unwatches p, whose run ended, and ignores from now on what is
// still to come about that run.
func (r *Runtime) retire(p *process) {
	r.unwatch(p)
	p.mu.Lock()
	inv := p.invocation
	p.mu.Unlock()
	if inv != "" {
		r.mu.Lock()
		r.retired[p.path] = inv
		r.mu.Unlock()
	}
}

// Start runs spec as a transient unit and returns once systemd has
// started its main process (or failed to).
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	command := spec.Command
	var want daemon.Want
	if spec.Daemon != nil {
		var err error
		if want, err = r.prepareDaemon(spec); err != nil {
			return nil, err
		}
		command = spec.Daemon.Start.Command
	}
	if len(command) == 0 {
		return nil, errors.New("no command")
	}
	conn, err := r.connection()
	if err != nil {
		return nil, err
	}
	// Resolved here as the exec runtime does, for the same environment
	// and the same error for a missing user.
	cred, home, err := runtime.Credential(spec.User, spec.Group)
	if err != nil {
		return nil, err
	}
	unit := UnitName(spec.Name)
	secrets, err := r.secretProps(spec, unit)
	if err != nil {
		return nil, err
	}
	props := []sd.Property{
		sd.PropDescription("dhvisor: " + spec.Name),
		sd.PropSlice(Slice),
		sd.PropExecStart(literal(command), false),
		// Environment= is every local user's to read (systemctl show,
		// D-Bus): only the base and the marks go there; the service's
		// own variables in secretProps' file.
		{Name: "Environment", Value: dbus.MakeVariant(runtime.BaseEnvironment(spec, home))},
		{Name: "WorkingDirectory", Value: dbus.MakeVariant(runtime.WorkDir(spec))},
		// dhvisor decides about restarts. A unit that ended cleanly is
		// collected at once; a failed one stays until the runtime has read
		// how it ended, then is reset (collected) so its name is free.
		{Name: "Restart", Value: dbus.MakeVariant("no")},
		{Name: "StartLimitIntervalUSec", Value: dbus.MakeVariant(uint64(0))},
		// A stop reaches everything in the unit: a launcher and its JVM.
		{Name: "KillMode", Value: dbus.MakeVariant("control-group")},
		{Name: "TimeoutStopUSec", Value: dbus.MakeVariant(uint64(max(spec.StopTimeout, 100*time.Millisecond) / time.Microsecond))},
		{Name: "MemoryAccounting", Value: dbus.MakeVariant(true)},
		{Name: "CPUAccounting", Value: dbus.MakeVariant(true)},
		{Name: "TasksAccounting", Value: dbus.MakeVariant(true)},
		{Name: "SyslogIdentifier", Value: dbus.MakeVariant(spec.Name)},
	}
	props = append(props, secrets...)
	switch {
	case spec.Daemon != nil:
		props = append(props, daemonProps(spec.Daemon)...)
	case r.execType:
		props = append(props, sd.PropType("exec"))
	}
	if spec.User != "" {
		props = append(props, sd.Property{Name: "User", Value: dbus.MakeVariant(spec.User)})
	}
	if spec.Group != "" {
		props = append(props, sd.Property{Name: "Group", Value: dbus.MakeVariant(spec.Group)})
	}
	if spec.Output == config.OutputJournal {
		props = append(props,
			sd.Property{Name: "StandardOutput", Value: dbus.MakeVariant("journal")},
			sd.Property{Name: "StandardError", Value: dbus.MakeVariant("journal")})
	} else {
		// systemd gets a descriptor (systemd < 240 has no append:
		// output).
		out, release, err := output(spec, cred)
		if err != nil {
			return nil, err
		}
		defer release()
		fd := dbus.MakeVariant(dbus.UnixFD(out.Fd()))
		props = append(props,
			sd.Property{Name: "StandardOutputFileDescriptor", Value: fd},
			sd.Property{Name: "StandardErrorFileDescriptor", Value: fd})
	}

	p := r.newProcess(unit)
	r.watch(p)
	result, err := r.startUnit(ctx, conn, unit, props)
	if err != nil {
		r.unwatch(p)
		return nil, err
	}
	st, err := r.unitState(ctx, unit)
	if err != nil && result == "done" {
		r.unwatch(p)
		return nil, err
	}
	p.noteStatus(st)
	if st.active == "failed" {
		r.collect(unit) // read above
	}
	if result != "done" && !p.ranAndEnded() {
		r.unwatch(p)
		msg := p.startFailure(result, st.result)
		if spec.Daemon != nil && st.result == "timeout" {
			// systemd waited for the start program and the pidfile; one
			// naming a process outside the unit, from a pidfile not
			// root's, it refuses and goes on waiting.
			msg += fmt.Sprintf(": no process of the unit named in %s within the start timeout of %s (a pid outside the unit is refused)", spec.Daemon.Pidfile, spec.Daemon.StartTimeout)
		}
		return nil, fmt.Errorf("unit %s did not start: %s", unit, msg)
	}
	if result != "done" || st.mainPID == 0 || ended(st.active) {
		// Started and already over: the exit is the supervisor's to see.
		p.arm(procfs.Identity{PID: int(st.execPID)}, st.invocation, nil)
		p.finish(r.exitOf(p))
		return p, nil
	}
	id, err := procfs.IdentityOf(int(st.mainPID))
	if err != nil {
		// Ended between systemd's answer and this read; its signal follows.
		id = procfs.Identity{PID: int(st.mainPID)}
	}
	if spec.Daemon != nil && err == nil {
		if inUnit, err := r.trustMain(ctx, conn, unit, id, want); err != nil {
			// Stopping a unit signals its main pid: never one that is
			// not the unit's. That unit stays for an operator to see.
			if inUnit {
				_, _ = p.Stop(ctx, spec.StopTimeout)
			}
			r.unwatch(p)
			return nil, err
		}
	}
	g, err := cgroup.Of(id.PID)
	if err != nil {
		r.log.Warn("cannot read the unit's cgroup; no CPU or memory for it", "unit", unit, "err", err)
	}
	p.arm(id, st.invocation, g)
	return p, nil
}

// secretProps hands the service's variables (env: and env_files:) and
// credentials to systemd without showing them to anyone: the variables in
// a file of unit's, 0600 in a 0700 directory of root's, that systemd reads
// at each exec (EnvironmentFile=); the credentials as LoadCredential=,
// which only names the files. The file is rewritten at every start, so a
// secret changed in an env file takes effect with the next start.
func (r *Runtime) secretProps(spec runtime.Spec, unit string) ([]sd.Property, error) {
	var props []sd.Property
	if len(spec.Credentials) > 0 {
		if !r.credentials {
			return nil, errors.New("credentials need systemd 247 or later (LoadCredential=); this host's is older: use env_files")
		}
		if err := runtime.CheckCredentials(spec); err != nil {
			return nil, err
		}
		type cred struct{ ID, Path string }
		var creds []cred
		for _, name := range slices.Sorted(maps.Keys(spec.Credentials)) {
			creds = append(creds, cred{name, spec.Credentials[name]})
		}
		props = append(props, sd.Property{Name: "LoadCredential", Value: dbus.MakeVariant(creds)})
	}
	vars, err := runtime.ServiceVars(spec)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(r.envDir, unit+".env")
	if len(vars) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("environment file: %w", err)
		}
		return props, nil
	}
	if err := os.MkdirAll(r.envDir, 0o700); err != nil {
		return nil, fmt.Errorf("environment file: %w", err)
	}
	// Made by an earlier agent, or by hand: root's alone all the same.
	if err := os.Chmod(r.envDir, 0o700); err != nil {
		return nil, fmt.Errorf("environment file: %w", err)
	}
	if err := atomicfile.Write(path, envfile.Format(vars), 0o600); err != nil {
		return nil, fmt.Errorf("environment file: %w", err)
	}
	type envFile struct {
		Path   string
		Ignore bool // systemd's "-" prefix: a missing file is not an error
	}
	return append(props, sd.Property{Name: "EnvironmentFiles", Value: dbus.MakeVariant([]envFile{{Path: path}})}), nil
}

// literal keeps systemd from expanding $VARIABLES in the command, which the
// exec runtime passes as they are (systemd turns $$ into $).
func literal(argv []string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		out[i] = strings.ReplaceAll(a, "$", "$$")
	}
	return out
}

// startUnit asks for the unit and waits for systemd's verdict on the
// start job ("done", "failed", ...). A unit of the same name that ended
// but is not collected yet is cleared away first.
func (r *Runtime) startUnit(ctx context.Context, conn *sd.Conn, unit string, props []sd.Property) (string, error) {
	for attempt := 0; ; attempt++ {
		ch := make(chan string, 1)
		_, err := conn.StartTransientUnitContext(ctx, unit, "fail", props, ch)
		if err == nil {
			select {
			case res := <-ch:
				return res, nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		var de dbus.Error
		if !errors.As(err, &de) || de.Name != "org.freedesktop.systemd1.UnitExists" || attempt == 50 {
			return "", fmt.Errorf("systemd: start %s: %w", unit, err)
		}
		st, serr := r.unitState(ctx, unit)
		if serr == nil && !ended(st.active) && st.load == "loaded" {
			return "", fmt.Errorf("systemd: %s is already %s (main pid %d); not starting a second copy", unit, st.active, st.mainPID)
		}
		// Ended, waiting to be collected: reset-failed collects it now.
		_ = conn.ResetFailedUnitContext(ctx, unit)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Duration(attempt+1) * time.Millisecond):
		}
	}
}

// startFailure explains a failed start job with what systemd recorded.
func (p *process) startFailure(job, result string) string {
	msg := "job " + job
	if result != "" && result != "success" {
		msg += ", result " + result
	}
	p.mu.Lock()
	code, status := p.execCode, p.status
	p.mu.Unlock()
	if code == cldExited && status != 0 {
		msg += fmt.Sprintf(", exit status %d", status)
		if why, ok := spawnFailures[status]; ok {
			msg += " (" + why + ")"
		}
	}
	return msg
}

// ranAndEnded reports whether the unit's command ran and already ended: a
// job that "failed" because the process died before systemd confirmed the
// start. systemd's own exit statuses 200-243 mean the command never ran.
func (p *process) ranAndEnded() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.execCode {
	case cldExited:
		return p.status < 200 || p.status > 243
	case cldKilled, cldDumped:
		return true
	}
	return false
}

// spawnFailures are systemd's exit statuses for a process that never got
// to run the command (systemd.exec(5), "Process exit codes").
var spawnFailures = map[int32]string{
	200: "cannot change to the working directory",
	203: "cannot execute the command",
	216: "cannot set the group",
	217: "cannot set the user",
}

// Adopt takes over the unit whose main process is id, if it is one of
// this agent's: identified by unit, main pid and start time.
func (r *Runtime) Adopt(ctx context.Context, _ runtime.Spec, id procfs.Identity) (runtime.Process, error) {
	conn, err := r.connection()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	unit, err := conn.GetUnitNameByPID(ctx, uint32(id.PID))
	if err != nil {
		return nil, fmt.Errorf("pid %d is in no unit: %w", id.PID, err)
	}
	if !strings.HasPrefix(unit, "dhvisor-") || !strings.HasSuffix(unit, ".service") {
		return nil, fmt.Errorf("pid %d is in %s, not a dhvisor service unit", id.PID, unit)
	}
	p := r.newProcess(unit)
	r.watch(p)
	st, err := r.unitState(ctx, unit)
	if err == nil {
		err = r.check(st, r.owner, unit)
	}
	if err == nil && int(st.mainPID) != id.PID {
		err = fmt.Errorf("unit %s runs pid %d, not %d", unit, st.mainPID, id.PID)
	}
	if err == nil {
		if now, ierr := procfs.IdentityOf(id.PID); ierr != nil || now != id {
			err = fmt.Errorf("pid %d is now a different process", id.PID)
		}
	}
	if err != nil {
		r.unwatch(p)
		return nil, err
	}
	g, gerr := cgroup.Of(id.PID)
	if gerr != nil {
		r.log.Warn("cannot read the unit's cgroup; no CPU or memory for it", "unit", unit, "err", gerr)
	}
	p.arm(id, st.invocation, g)
	return p, nil
}

// check accepts a running unit started by owner.
func (r *Runtime) check(st unitStatus, owner, unit string) error {
	if st.load != "loaded" || ended(st.active) || st.mainPID == 0 {
		return fmt.Errorf("unit %s is not running (%s, %s)", unit, st.load, st.active)
	}
	for _, kv := range st.env {
		if kv == runtime.OwnerEnv+"="+owner {
			return nil
		}
	}
	return fmt.Errorf("unit %s was not started by this agent (%s)", unit, owner)
}

// Find looks for the service's unit, running and started by its owner.
func (r *Runtime) Find(spec runtime.Spec) (procfs.Identity, bool) {
	owner, unit := spec.Owner, UnitName(spec.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := r.unitState(ctx, unit)
	if err != nil || r.check(st, owner, unit) != nil {
		return procfs.Identity{}, false
	}
	id, err := procfs.IdentityOf(int(st.mainPID))
	return id, err == nil
}

// Exit codes of systemd's ExecMainCode (siginfo's si_code).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// process is one unit's main process as the agent watches it.
type process struct {
	rt   *Runtime
	unit string
	path dbus.ObjectPath

	mu         sync.Mutex
	id         procfs.Identity
	invocation string // the unit's run this process is, when systemd says
	group      *cgroup.Group
	running    bool // the unit was seen running this process
	execPID    uint32
	execCode   int32
	status     int32

	done     chan struct{}
	finished sync.Once
	exit     runtime.Exit
}

func (r *Runtime) newProcess(unit string) *process {
	return &process{rt: r, unit: unit, path: unitPath(unit), done: make(chan struct{})}
}

// arm records the process once systemd has started it (or it was found).
func (p *process) arm(id procfs.Identity, invocation string, g *cgroup.Group) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.id, p.group, p.running = id, g, true
	if invocation != "" {
		p.invocation = invocation
	}
}

// noteInvocation records the run's invocation id from its first signal: a
// run that ends before Start has read it is retired by it too.
func (p *process) noteInvocation(inv []byte) {
	if len(inv) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.invocation == "" {
		p.invocation = string(inv)
	}
}

func (p *process) setRunning() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running = true
}

func (p *process) hasRun() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

// noteExit records ExecMain* from a Service PropertiesChanged signal.
func (p *process) noteExit(changed map[string]dbus.Variant) {
	code, ok := changed["ExecMainCode"].Value().(int32)
	if !ok || code == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.execCode = code
	p.status, _ = changed["ExecMainStatus"].Value().(int32)
	p.execPID, _ = changed["ExecMainPID"].Value().(uint32)
}

func (p *process) noteStatus(st unitStatus) {
	if st.execCode == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.execCode, p.status, p.execPID = st.execCode, st.execStatus, st.execPID
}

// recordedExit is the exit systemd reported for this process, if any.
func (p *process) recordedExit() (runtime.Exit, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := runtime.Exit{Code: -1, At: time.Now()}
	// A status from an earlier run of the unit is not this process's.
	if p.execCode == 0 || p.id.PID != 0 && int(p.execPID) != p.id.PID {
		return e, false
	}
	switch p.execCode {
	case cldExited:
		e.Code = int(p.status)
	case cldKilled, cldDumped:
		e.Signal = signalName(p.status)
	}
	return e, true
}

func (p *process) finish(e runtime.Exit) {
	p.finished.Do(func() {
		p.exit = e
		p.rt.retire(p)
		close(p.done)
	})
}

func (p *process) Identity() procfs.Identity {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.id
}

func (p *process) Done() <-chan struct{} { return p.done }
func (p *process) Exit() runtime.Exit    { return p.exit }

// Release forgets the unit; it keeps running for the next agent.
func (p *process) Release() { p.rt.unwatch(p) }

// Stop has systemd stop the unit: SIGTERM to everything in it, SIGKILL
// after the unit's stop timeout, or after timeout if that is shorter (the
// configuration changed since the start).
func (p *process) Stop(ctx context.Context, timeout time.Duration) (runtime.Exit, error) {
	select {
	case <-p.done:
		return p.exit, nil
	default:
	}
	conn, err := p.rt.connection()
	if err != nil {
		return runtime.Exit{}, err
	}
	return runtime.Escalate(ctx, p.done, p.Exit, timeout, func() error {
		if _, err := conn.StopUnitContext(ctx, p.unit, "replace", nil); err != nil && !noSuchUnit(err) {
			return fmt.Errorf("systemd: stop %s: %w", p.unit, err)
		}
		return nil
	}, p.Kill)
}

// Kill sends SIGKILL to every process of the unit.
func (p *process) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	conn, err := p.rt.connection()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.KillUnitWithTarget(ctx, p.unit, sd.All, 9); err != nil && !noSuchUnit(err) {
		return fmt.Errorf("systemd: kill %s: %w", p.unit, err)
	}
	return nil
}

// Usage reads the unit's cgroup: everything the service runs.
func (p *process) Usage() (procfs.Usage, error) {
	p.mu.Lock()
	g := p.group
	p.mu.Unlock()
	if g == nil {
		return procfs.Usage{}, fmt.Errorf("unit %s: cgroup unknown", p.unit)
	}
	return g.Usage()
}

// signalName names a signal number the way the exec runtime does (SIGKILL).
func signalName(n int32) string {
	if s := unix.SignalName(unix.Signal(n)); s != "" {
		return s
	}
	return "signal " + strconv.Itoa(int(n))
}

func noSuchUnit(err error) bool {
	var de dbus.Error
	return errors.As(err, &de) && (de.Name == "org.freedesktop.systemd1.NoSuchUnit" || de.Name == "org.freedesktop.systemd1.UnitInactive")
}

// prepareDaemon makes way for a daemonizing service's unit, as the exec
// runtime does: its stale pidfile goes, a copy running already (outside
// the unit, or a foreign process its pidfile names) is refused. systemd
// runs its programs as the unit's user, so they must be the service's.
func (r *Runtime) prepareDaemon(spec runtime.Spec) (daemon.Want, error) {
	d := spec.Daemon
	if d.Pidfile == "" {
		return daemon.Want{}, errors.New("a service found by match runs under the exec runtime (systemd follows a daemon through its pidfile)")
	}
	for name, p := range map[string]*runtime.Program{"start": &d.Start, "stop": d.Stop, "restart": d.Restart} {
		if p != nil && (p.User != "" && p.User != spec.User || p.Group != "" && p.Group != spec.Group) {
			return daemon.Want{}, fmt.Errorf("the %s program runs as %s:%s, but systemd runs a unit's programs as the service's user %q: use the exec runtime", name, p.User, p.Group, spec.User)
		}
	}
	want, err := daemon.WantOf(spec)
	if err != nil {
		return daemon.Want{}, err
	}
	note, err := daemon.Prepare(spec, want)
	if err != nil {
		return daemon.Want{}, err
	}
	if note != "" {
		r.log.Info("removed a stale pidfile before the start", "service", spec.Name, "why", note)
	}
	return want, nil
}

// daemonProps make the unit follow the daemon as monit would: systemd
// waits for the start program, then for the pidfile, within the start
// timeout, and runs the stop program before it signals what is left.
func daemonProps(d *runtime.Daemon) []sd.Property {
	props := []sd.Property{
		sd.PropType("forking"),
		{Name: "PIDFile", Value: dbus.MakeVariant(d.Pidfile)},
		{Name: "TimeoutStartUSec", Value: dbus.MakeVariant(uint64(max(d.StartTimeout, 100*time.Millisecond) / time.Microsecond))},
	}
	if d.Stop != nil {
		stop := sd.PropExecStart(literal(d.Stop.Command), false) // the same D-Bus form as every Exec*= line
		stop.Name = "ExecStop"
		props = append(props, stop)
	}
	return props
}

// trustMain accepts the unit's main process only if it is the service's.
// systemd itself refuses a pid outside the unit's cgroup when the pidfile
// is not root's, which is the case of every service user; a root-owned
// pidfile it follows anywhere, so the agent checks the cgroup and the
// user again. inUnit says whether the main process is the unit's own.
func (r *Runtime) trustMain(ctx context.Context, conn *sd.Conn, unit string, id procfs.Identity, want daemon.Want) (inUnit bool, err error) {
	in, err := conn.GetUnitNameByPID(ctx, uint32(id.PID))
	if err != nil || in != unit {
		return false, fmt.Errorf("unit %s: its pidfile names pid %d, which is in %q, not the unit: that process and the unit are left alone, for an operator to look at", unit, id.PID, in)
	}
	p, err := daemon.Inspect(id.PID)
	if err != nil {
		return true, err
	}
	if err := want.Trust(p); err != nil {
		return true, fmt.Errorf("unit %s: its pidfile names %w", unit, err)
	}
	return true, nil
}

// output is what a unit's stdout and stderr are, as for the exec runtime:
// a daemon's start program writes to the day's file, a foreground
// service into a logwriter's pipe (a new file each day); release closes
// the agent's copies once systemd has its own. The writer starts here,
// before the unit: systemd's own job takes tens of ms more, and a writer
// that cannot start then leaves no unit behind.
func output(spec runtime.Spec, cred *syscall.Credential) (out *os.File, release func(), err error) {
	if spec.Daemon != nil {
		f, err := runtime.OpenLog(spec, cred)
		if err != nil {
			return nil, nil, err
		}
		return f, func() { f.Close() }, nil
	}
	o, err := runtime.OpenOutput(spec, cred)
	if err != nil {
		return nil, nil, err
	}
	if err := o.Started(); err != nil {
		o.Close()
		return nil, nil, err
	}
	return o.File, o.Close, nil
}
