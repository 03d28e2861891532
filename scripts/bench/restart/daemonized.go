package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// The daemonized comparison (issue 14): a service that daemonizes as
// Deephaven's launcher makes its JVM do (test/standin --launcher: the start
// program returns at once, the service writes its own pidfile and refuses
// to start while one is there), killed with SIGKILL until a new pid answers
// its port, under every way of running it side by side.
type series string

const (
	seriesFloor       series = "floor"
	seriesPidfileExec series = "dhagent-pidfile-exec"
	seriesForeExec    series = "dhagent-foreground-exec"
	seriesPidfileSysd series = "dhagent-pidfile-systemd"
	seriesForeSysd    series = "dhagent-foreground-systemd"
	seriesMonit       series = "monit"
)

// seriesOrder is the report's.
var seriesOrder = []series{seriesFloor, seriesPidfileExec, seriesForeExec, seriesPidfileSysd, seriesForeSysd, seriesMonit}

var seriesLabel = map[series]string{
	seriesFloor:       "floor: sh loop",
	seriesPidfileExec: "pidfile, exec",
	seriesForeExec:    "foreground, exec",
	seriesPidfileSysd: "pidfile, systemd",
	seriesForeSysd:    "foreground, systemd",
	seriesMonit:       "monit",
}

const (
	runtimeExec    = "exec"
	runtimeSystemd = "systemd"

	// perMode services of each mode share the kills, so that none is
	// killed twice in a row.
	perMode = 3

	pidfilePrefix    = "pidfile"
	foregroundPrefix = "foreground"
)

// Acceptance figures of issue 14 for the daemonized comparison.
const (
	targetPidfileOverForeground = 10 * time.Millisecond // p99(pidfile) - p99(foreground)
	targetMonitOverPidfile      = 20.0                  // p50(monit) / p50(pidfile)
)

// daemonLayout is where one agent of the daemonized comparison keeps its
// files, on the host or inside the systemd container.
type daemonLayout struct {
	dir     string // state, socket, logs and the pidfiles below run/
	standin string // the stand-in binary
	runtime string
}

func (l daemonLayout) pidfile(name string) string { return filepath.Join(l.dir, "run", name+".pid") }
func (l daemonLayout) socket() string             { return filepath.Join(l.dir, "agent.sock") }
func (l daemonLayout) config() string             { return filepath.Join(l.dir, "agent.yaml") }

// launcherArgv is the start program of a daemonized stand-in: Deephaven's
// launcher, played by the stand-in.
func (l daemonLayout) launcherArgv(name string, port int) []string {
	return []string{l.standin, "--launcher", "--pidfile", l.pidfile(name), "--name=" + name,
		"--ports=" + strconv.Itoa(port), "--log", filepath.Join(l.dir, "logs", name+".out")}
}

// agentYAML supervises perMode daemonized and perMode foreground stand-ins
// on ports (2*perMode of them), all on l's runtime, with the crash test's
// restart policy and a TCP check each, as the roles have.
func (l daemonLayout) agentYAML(ports []int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `node: bench
roles: []
roles_dir: %[1]s/roles.d   # absent: no role is read from the host
state_dir: %[1]s/state
socket: %[2]s
log_root: %[1]s/logs
defaults:
  user: ""
  log_dir: %[1]s/logs
  checks: [{type: tcp, port: main, interval: 1s}]
  %[3]s
services:
`, l.dir, l.socket(), benchRestartYAML)
	for i := range perMode {
		name, port := fmt.Sprintf("%s%d", pidfilePrefix, i+1), ports[2*i]
		fmt.Fprintf(&b, "  %s:\n    runtime: %s\n    ports: {main: %d}\n    start: {command: %s}\n    stop: {command: %s}\n    pidfile: %s\n    stop_timeout: 10s\n",
			name, l.runtime, port, yamlList(l.launcherArgv(name, port)), yamlList(killPidfile(l.pidfile(name))), l.pidfile(name))
		name, port = fmt.Sprintf("%s%d", foregroundPrefix, i+1), ports[2*i+1]
		fmt.Fprintf(&b, "  %s:\n    runtime: %s\n    ports: {main: %d}\n    command: %s\n    stop_timeout: 10s\n",
			name, l.runtime, port, yamlList([]string{l.standin, "--name=" + name, "--ports=" + strconv.Itoa(port)}))
	}
	return b.String()
}

func yamlList(v []string) string {
	q := make([]string, len(v))
	for i, s := range v {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// write creates l's directories and its agent.yaml, and returns the
// targets as dhagent resolves them, daemonized and foreground interleaved
// (so that both modes see the same moments of the host's load).
func (l daemonLayout) write(ports []int) ([]target, error) {
	for _, d := range []string{"run", "logs"} {
		if err := os.MkdirAll(filepath.Join(l.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(l.config(), []byte(l.agentYAML(ports)), 0o644); err != nil {
		return nil, err
	}
	return interleavedTargets(l.config())
}

func interleavedTargets(config string) ([]target, error) {
	all, err := loadTargets(config)
	if err != nil {
		return nil, err
	}
	var pf, fg []target
	for _, t := range all {
		if t.daemon {
			pf = append(pf, t)
		} else {
			fg = append(fg, t)
		}
	}
	if len(pf) != len(fg) || len(pf) == 0 {
		return nil, fmt.Errorf("%s: %d daemonized and %d foreground services (expected as many of each)", config, len(pf), len(fg))
	}
	var out []target
	for i := range pf {
		out = append(out, pf[i], fg[i])
	}
	return out, nil
}

// daemonizedOnly keeps the daemonized targets.
func daemonizedOnly(ts []target) []target {
	var out []target
	for _, t := range ts {
		if t.daemon {
			out = append(out, t)
		}
	}
	return out
}

// splitSeries files samples of interleaved kills under their series.
func splitSeries(samples []sample, pidfile, foreground series, into map[series]*crashResult) {
	by := map[series][]sample{}
	for _, s := range samples {
		k := foreground
		if strings.HasPrefix(s.Service, pidfilePrefix) {
			k = pidfile
		}
		by[k] = append(by[k], s)
	}
	for _, k := range []series{pidfile, foreground} {
		cr := &crashResult{}
		cr.set(by[k])
		into[k] = cr
	}
}

// daemonizedPhase runs the comparison: the floor, dhagent (both modes at
// once, on the exec runtime) and monit on the host one after the other on
// the same ports, then dhagent on the systemd runtime in a container.
func (b *bench) daemonizedPhase(ctx context.Context, res *daemonizedResult) error {
	ports, err := devcluster.FreePorts(2 * perMode)
	if err != nil {
		return err
	}
	l := daemonLayout{dir: filepath.Join(b.tmp, "daemonized-dhagent"), standin: b.bin("dh-standin"), runtime: runtimeExec}
	both, err := l.write(ports)
	if err != nil {
		return err
	}
	pf := daemonizedOnly(both)
	n := b.o.samples
	fmt.Printf("daemonized: %d kills per series over %d services each; floor, dhagent (pidfile and foreground interleaved), monit, then dhagent on systemd\n", n, perMode)

	floorDir := filepath.Join(b.tmp, "daemonized-floor")
	cr, err := b.crashPhase(ctx, string(seriesFloor), pf, pf, n, func(ctx context.Context) (supervisor, error) {
		return startFloor(ctx, b, floorDir, pf)
	})
	res.Series[seriesFloor] = cr
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}

	cr, err = b.crashPhase(ctx, "dhagent", both, both, 2*n, func(ctx context.Context) (supervisor, error) {
		return startAgent(ctx, b, l.dir, both)
	})
	splitSeries(cr.Samples, seriesPidfileExec, seriesForeExec, res.Series)
	if err != nil {
		return fmt.Errorf("dhagent exec: %w", err)
	}

	monitDir := filepath.Join(b.tmp, "daemonized-monit")
	cr, err = b.crashPhase(ctx, string(seriesMonit), pf, pf, n, func(ctx context.Context) (supervisor, error) {
		return startMonit(ctx, b, monitDir, pf, launcherProgram(b.bin("dh-standin"), monitDir))
	})
	res.Series[seriesMonit] = cr
	if err != nil {
		return fmt.Errorf("monit: %w", err)
	}

	samples, version, err := b.systemdDaemonized(ctx, ports)
	res.Systemd = version
	splitSeries(samples, seriesPidfileSysd, seriesForeSysd, res.Series)
	if err != nil {
		return fmt.Errorf("dhagent systemd: %w", err)
	}
	return nil
}

// launcherProgram is monit's start program for a daemonized stand-in. monit
// never removes a stale pidfile, and the stand-in (as Deephaven's JVM)
// refuses to start while one is there, so the program removes it first, as
// Deephaven's own start script has to: monit runs a start program only when
// it found no process through the pidfile. dhagent gets the bare launcher
// and removes a stale pidfile itself.
func launcherProgram(standin, dir string) func(target, string) string {
	return func(t target, pidfile string) string {
		l := daemonLayout{dir: dir, standin: standin}
		launch := shellCommand(l.launcherArgv(t.name, t.checkPort))
		return shellCommand([]string{"/bin/sh", "-c", "rm -f " + pidfile + "; exec " + launch})
	}
}

// floorScript is the floor: no supervisor, a shell loop that starts the
// same launcher, waits for the process its pidfile names to die, removes
// the stale pidfile and starts it again. It polls every millisecond with
// builtins only (read -t on a pipe nobody writes is a sleep without a
// fork), as fast as a poll can be short of an event.
const floorScript = `#!/bin/bash
pidfile=$1; shift
exec {tick}<> <(:)
while true; do
	"$@"
	until read -r pid < "$pidfile"; do read -t 0.001 -u "$tick"; done 2>/dev/null
	while kill -0 "$pid" 2>/dev/null; do read -t 0.001 -u "$tick"; done
	rm -f "$pidfile"
done
`

// floorSup runs one floor loop per service. What it "reports" is what the
// pidfile names, alive.
type floorSup struct {
	b        *bench
	loops    []*child
	pidfiles map[string]string
}

func startFloor(ctx context.Context, b *bench, dir string, targets []target) (*floorSup, error) {
	if err := portsFree(targets); err != nil {
		return nil, err
	}
	l := daemonLayout{dir: dir, standin: b.bin("dh-standin")}
	for _, d := range []string{"run", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	script := filepath.Join(dir, "floor.sh")
	if err := os.WriteFile(script, []byte(floorScript), 0o755); err != nil {
		return nil, err
	}
	f := &floorSup{b: b, pidfiles: map[string]string{}}
	for _, t := range targets {
		f.pidfiles[t.name] = l.pidfile(t.name)
		argv := append([]string{"/bin/bash", script, l.pidfile(t.name)}, l.launcherArgv(t.name, t.checkPort)...)
		c, err := b.reaper.start("floor "+t.name, filepath.Join(dir, "logs", t.name+".loop"), argv...)
		if err != nil {
			_ = f.stop()
			return nil, err
		}
		f.loops = append(f.loops, c)
	}
	for _, t := range targets {
		if _, err := settled(ctx, f, t, sampleTimeout); err != nil {
			_ = f.stop()
			return nil, fmt.Errorf("floor loop: %w\n%s", err, tail(filepath.Join(dir, "logs", t.name+".out"), 5))
		}
	}
	return f, nil
}

func (f *floorSup) status(_ context.Context, svc string) (svcStatus, error) {
	data, err := os.ReadFile(f.pidfiles[svc])
	if err != nil {
		return svcStatus{restarts: -1}, nil // between a death and the next start
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return svcStatus{restarts: -1}, nil // being written
	}
	st, err := procfs.ReadStat(pid)
	alive := err == nil && st.State != 'Z'
	return svcStatus{pid: pid, restarts: -1, ok: alive}, nil
}

func (f *floorSup) statusPoll() time.Duration { return time.Millisecond }

func (f *floorSup) pid() int { return f.loops[0].pid }

// stop ends the loops first, so that nothing starts the services again,
// then the services through their pidfiles.
func (f *floorSup) stop() error {
	for _, c := range f.loops {
		c.terminate(5 * time.Second)
	}
	for svc := range f.pidfiles {
		if st, _ := f.status(context.Background(), svc); st.ok {
			_ = unix.Kill(st.pid, unix.SIGTERM) // read just now; the loops that could reuse it are gone
		}
	}
	return pollUntil(context.Background(), 20*time.Millisecond, 10*time.Second, func() (bool, error) {
		for svc := range f.pidfiles {
			if st, _ := f.status(context.Background(), svc); st.ok {
				return false, fmt.Errorf("%s (pid %d) still running", svc, st.pid)
			}
		}
		return true, nil
	})
}
