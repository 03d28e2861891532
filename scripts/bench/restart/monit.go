package main

import (
	"github.com/dhvisor/dhvisor/agent/procfs"

	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// monitrc returns the configuration a Deephaven node used with monit, at
// monit's fastest cycle: each service daemonizes through the start program
// startProgram gives and writes a pidfile, and every service with a port
// gets monit's port test. Control goes through an HTTP interface on a
// unix socket, which `monit -c rc status` also uses.
func monitrc(dir string, targets []target, startProgram func(t target, pidfile string) string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `set daemon 1
set logfile %[1]s/monit.log
set pidfile %[1]s/monit.pid
set idfile %[1]s/monit.id
set statefile %[1]s/monit.state
set httpd unixsocket %[1]s/monit.sock
    allow bench:bench
`, dir)
	for _, t := range targets {
		pidfile := monitPidfile(dir, t)
		fmt.Fprintf(&b, "\ncheck process %s with pidfile %s\n", t.name, pidfile)
		fmt.Fprintf(&b, "    start program = \"%s\"\n", startProgram(t, pidfile))
		fmt.Fprintf(&b, "    stop program = \"%s\"\n", shellCommand(killPidfile(pidfile)))
		if t.checkPort != 0 {
			fmt.Fprintf(&b, "    if failed port %d then restart\n", t.checkPort)
		}
	}
	return b.String()
}

func monitPidfile(dir string, t target) string { return filepath.Join(dir, "run", t.name+".pid") }

// killPidfile is the stop program of a daemonized stand-in, for monit and
// dhagent alike: SIGTERM to the pid its pidfile names.
func killPidfile(pidfile string) []string {
	return []string{"/bin/sh", "-c", "kill $(cat " + pidfile + ")"}
}

// shellCommand joins argv for a monit program string, single-quoting the
// arguments that need it (monit splits the string on spaces, honouring
// single quotes).
func shellCommand(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if strings.ContainsAny(a, " $()") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// daemonizeProgram starts a role stand-in that forks, writes its pidfile
// and returns once it listens (--daemonize): the existing role comparison.
func daemonizeProgram(root, dir string) func(target, string) string {
	return func(t target, pidfile string) string {
		return fmt.Sprintf("%s/bin/dh-standin --daemonize --pidfile %s --name %s --ports=%s --log %s/logs/%s.log",
			root, pidfile, t.name, joinInts(t.ports), dir, t.name)
	}
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

type monitSup struct {
	b       *bench
	dir, rc string
	targets []target
	proc    *child
	http    *http.Client
}

// startMonit runs monit in the foreground (-I) as a child of the harness
// and waits until it has started every service.
func startMonit(ctx context.Context, b *bench, dir string, targets []target, startProgram func(target, string) string) (*monitSup, error) {
	if err := portsFree(targets); err != nil {
		return nil, err
	}
	for _, d := range []string{"run", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	m := &monitSup{b: b, dir: dir, rc: filepath.Join(dir, "monitrc"), targets: targets}
	// monit refuses a control file that others can read (it may hold
	// passwords): 0600, owned by the user running it.
	if err := os.WriteFile(m.rc, []byte(monitrc(dir, targets, startProgram)), 0o600); err != nil {
		return nil, err
	}
	if err := b.reaper.run("monit -t", filepath.Join(dir, "monit-t.log"), 10*time.Second, b.monit, "-t", "-c", m.rc); err != nil {
		return nil, fmt.Errorf("monit rejects the generated %s: %w", m.rc, err)
	}
	sock := filepath.Join(dir, "monit.sock")
	m.http = &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			},
			Proxy: nil,
		},
		Timeout: 2 * time.Second,
	}
	var err error
	m.proc, err = b.reaper.start("monit", filepath.Join(dir, "monit.out"), b.monit, "-I", "-c", m.rc)
	if err != nil {
		return nil, err
	}
	// monit starts the services one at a time, waiting for each to show
	// up, so this takes seconds.
	err = pollUntil(ctx, 100*time.Millisecond, 120*time.Second, func() (bool, error) {
		if !m.proc.running() {
			return false, fmt.Errorf("monit exited: %s", describe(m.proc.status))
		}
		all, err := m.statusAll(ctx)
		if err != nil {
			return false, err
		}
		for _, t := range targets {
			if st, ok := all[t.name]; !ok || !st.ok {
				return false, fmt.Errorf("%s not running yet", t.name)
			}
		}
		return true, nil
	})
	if err != nil {
		_ = m.stop()
		return nil, fmt.Errorf("monit did not start every service: %w\n(monit log:)\n%s", err, tail(filepath.Join(dir, "monit.log"), 15))
	}
	return m, nil
}

// monitXML is the part of monit's _status?format=xml the bench reads.
type monitXML struct {
	Services []struct {
		Type          int    `xml:"type,attr"`
		Name          string `xml:"name"`
		Status        int    `xml:"status"` // bit mask of failed tests; 0 is OK
		Monitor       int    `xml:"monitor"`
		PendingAction int    `xml:"pendingaction"`
		PID           int    `xml:"pid"`
	} `xml:"service"`
}

func (m *monitSup) statusAll(ctx context.Context) (map[string]svcStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://monit/_status?format=xml", nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth("bench", "bench")
	resp, err := m.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("monit status: %s", resp.Status)
	}
	var v monitXML
	d := xml.NewDecoder(resp.Body)
	// monit declares ISO-8859-1; what it writes here is ASCII.
	d.CharsetReader = func(_ string, r io.Reader) (io.Reader, error) { return r, nil }
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("monit status: %w", err)
	}
	out := map[string]svcStatus{}
	for _, s := range v.Services {
		const processType = 3
		if s.Type != processType {
			continue
		}
		// monit counts no restarts it would report here.
		out[s.Name] = svcStatus{pid: s.PID, restarts: -1, ok: s.Status == 0 && s.Monitor == 1 && s.PendingAction == 0 && s.PID > 0}
	}
	return out, nil
}

func (m *monitSup) status(ctx context.Context, svc string) (svcStatus, error) {
	all, err := m.statusAll(ctx)
	if err != nil {
		return svcStatus{}, err
	}
	st, ok := all[svc]
	if !ok {
		return svcStatus{}, fmt.Errorf("monit does not report %s", svc)
	}
	return st, nil
}

// statusPoll is coarser than dhagent's: monit renders the status of every
// service under its own lock, and asking every millisecond could slow the
// very restart being timed. monit's latency is in cycles of a second, so
// 20ms resolution costs nothing.
func (m *monitSup) statusPoll() time.Duration { return 20 * time.Millisecond }

func (m *monitSup) pid() int { return m.proc.pid }

// liveServices lists the services whose pidfile names a live process (a
// stand-in removes its pidfile when it stops).
func (m *monitSup) liveServices() []string {
	var live []string
	for _, t := range m.targets {
		b, err := os.ReadFile(monitPidfile(m.dir, t))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		if st, err := procfs.ReadStat(pid); err == nil && st.State != 'Z' {
			live = append(live, t.name)
		}
	}
	return live
}

// stop has monit stop every service (its stop program), waits until the
// ports are free, then ends monit.
func (m *monitSup) stop() error {
	var errs []error
	if m.proc.running() {
		if err := m.b.reaper.run("monit stop all", filepath.Join(m.dir, "monit-stop.log"), 30*time.Second, m.b.monit, "-c", m.rc, "stop", "all"); err != nil {
			errs = append(errs, err)
		} else if err := pollUntil(context.Background(), 50*time.Millisecond, 60*time.Second, func() (bool, error) {
			live := m.liveServices()
			return len(live) == 0, fmt.Errorf("still running: %s", strings.Join(live, ", "))
		}); err != nil {
			errs = append(errs, fmt.Errorf("after monit stop all: %w", err))
		}
	}
	m.proc.terminate(10 * time.Second)
	if m.proc.status.Signaled() {
		errs = append(errs, errors.New("monit did not exit on SIGTERM within 10s; killed"))
	}
	return errors.Join(errs...)
}
