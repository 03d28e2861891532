//go:build linux

// These tests run the real binary, as the supervisor tests and benchmarks
// will, and read /proc for memory and session facts, hence linux only.
package main

import (
	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/test/syncbuf"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var binPath string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "standin-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "standin")
	if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building standin: %v\n%s", err, out)
		return 1
	}
	// Daemonized children are orphaned when their parent exits; becoming
	// their reaper lets the tests collect their exit status instead of
	// leaving zombies behind, and the daemon's exit status is checked.
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		fmt.Fprintf(os.Stderr, "prctl(PR_SET_CHILD_SUBREAPER): %v\n", errno)
		return 1
	}
	return m.Run()
}

// proc is one stand-in started by a test; it is killed at cleanup.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	out     *syncbuf.Buffer
	spawned time.Time
	done    chan struct{}
}

func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DH_STANDIN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	p := &proc{t: t, cmd: cmd, out: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	p.spawned = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("output of standin %s:\n%s", strings.Join(args, " "), p.out)
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// listening waits for the start log line and returns the addresses in it,
// which is how tests learn the ports picked for --port 0.
func (p *proc) listening(ctx context.Context) []string {
	p.t.Helper()
	const marker = " listening on "
	for {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if _, rest, ok := strings.Cut(line, marker); ok && strings.HasPrefix(line, "standin ") {
				return strings.Split(rest, ",")
			}
		}
		if p.exited() {
			p.t.Fatalf("exited before listening: %v", p.cmd.ProcessState)
		}
		select {
		case <-ctx.Done():
			p.t.Fatalf("not listening: %v", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (p *proc) waitOutput(ctx context.Context, s string) {
	p.t.Helper()
	for !strings.Contains(p.out.String(), s) {
		select {
		case <-ctx.Done():
			p.t.Fatalf("output never contained %q: %v", s, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (p *proc) wait(ctx context.Context) syscall.WaitStatus {
	p.t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	case <-ctx.Done():
		p.t.Fatalf("still running: %v", ctx.Err())
		panic("unreachable")
	}
}

func (p *proc) waitCode(ctx context.Context, want int) {
	p.t.Helper()
	if ws := p.wait(ctx); !ws.Exited() || ws.ExitStatus() != want {
		p.t.Fatalf("exit: got %v, want code %d", p.cmd.ProcessState, want)
	}
}

func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func request(ctx context.Context, method, url, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func mustDo(ctx context.Context, t *testing.T, method, addr, path, body string) (int, string) {
	t.Helper()
	code, got, err := request(ctx, method, "http://"+addr+path, body)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, addr, path, err)
	}
	return code, got
}

func expect(ctx context.Context, t *testing.T, method, addr, path, body string, wantCode int, wantBody string) {
	t.Helper()
	code, got := mustDo(ctx, t, method, addr, path, body)
	if code != wantCode || (wantBody != "" && got != wantBody) {
		t.Fatalf("%s %s: got %d %q, want %d %q", method, path, code, got, wantCode, wantBody)
	}
}

func identity(ctx context.Context, t *testing.T, addr string) info {
	t.Helper()
	code, body := mustDo(ctx, t, "GET", addr, "/", "")
	var in info
	if err := json.Unmarshal([]byte(body), &in); code != 200 || err != nil {
		t.Fatalf("GET /: %d %q %v", code, body, err)
	}
	return in
}

// expectNoAnswer checks that a TCP connection is accepted but HTTP never
// answered, which is what tells a hang from a dead process.
func expectNoAnswer(ctx context.Context, t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("hanging process should still accept: %v", err)
	}
	c.Close()
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if code, body, err := request(rctx, "GET", "http://"+addr+"/health", ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hanging process answered: %d %q %v", code, body, err)
	}
}

func expectRefused(t *testing.T, addr string) {
	t.Helper()
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections", addr)
	}
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Fatalf("bad address %q", addr)
	}
	return n
}

// freePorts asks the kernel for ports and lets them go; only the cases that
// must name ports use it, as another process could grab one meanwhile.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	st, err := procfs.ReadStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	return int64(st.RSSBytes)
}

func alive(pid int) bool {
	st, err := procfs.ReadStat(pid)
	return err == nil && st.State != 'Z' && st.State != 'X'
}

// waitPid waits for a process the test did not start itself, such as a
// daemonized child: through wait4 when we are its reaper, else by polling.
func waitPid(ctx context.Context, t *testing.T, pid int) (ws syscall.WaitStatus, reaped bool) {
	t.Helper()
	type result struct {
		ws  syscall.WaitStatus
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, 0, nil)
		ch <- result{ws, err}
	}()
	for {
		select {
		case r := <-ch:
			if r.err == nil {
				return r.ws, true
			}
			if !alive(pid) {
				return 0, false
			}
		case <-ctx.Done():
			t.Fatalf("pid %d still running: %v", pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
			if !alive(pid) {
				select {
				case r := <-ch:
					return r.ws, r.err == nil
				case <-time.After(100 * time.Millisecond):
					return 0, false
				}
			}
		}
	}
}

// killFromPidfile is registered before a daemonizing start, so that a test
// failing at any point still leaves no stand-in behind.
func killFromPidfile(t *testing.T, pidfile string) {
	t.Cleanup(func() {
		b, err := os.ReadFile(pidfile)
		if err != nil {
			return
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || !alive(pid) {
			return
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != binPath {
			return
		}
		syscall.Kill(pid, syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		waitPid(ctx, t, pid)
	})
}

// waitPidfile waits for a pidfile that a service writes itself.
func waitPidfile(ctx context.Context, t *testing.T, path string) int {
	t.Helper()
	waitFor(ctx, t, func() bool { _, err := os.Stat(path); return err == nil })
	return readPidfile(t, path)
}

func waitFor(ctx context.Context, t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("timed out waiting")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func readPidfile(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pidfile %q: %v", b, err)
	}
	return pid
}

type recordLine struct {
	nanos int64
	event string
	name  string
	pid   int
}

func readRecord(t *testing.T, path string) []recordLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []recordLine
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("record line %q: want 4 fields", line)
		}
		nanos, err1 := strconv.ParseInt(f[0], 10, 64)
		pid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			t.Fatalf("record line %q: bad number", line)
		}
		out = append(out, recordLine{nanos, f[1], f[2], pid})
	}
	return out
}

func expectRecord(t *testing.T, path, name string, pid int, events ...string) {
	t.Helper()
	lines := readRecord(t, path)
	var got []string
	for i, l := range lines {
		if l.name != name || l.pid != pid {
			t.Fatalf("record line %d: %+v, want name %s pid %d", i, l, name, pid)
		}
		if i > 0 && l.nanos < lines[i-1].nanos {
			t.Fatalf("record times go backwards: %+v", lines)
		}
		got = append(got, l.event)
	}
	if strings.Join(got, " ") != strings.Join(events, " ") {
		t.Fatalf("record events %v, want %v", got, events)
	}
}

func exitsWith(code int, outputHas string) func(context.Context, *testing.T, *proc, string) {
	return func(ctx context.Context, t *testing.T, p *proc, _ string) {
		p.waitCode(ctx, code)
		if !strings.Contains(p.out.String(), outputHas) {
			t.Fatalf("output lacks %q", outputHas)
		}
		if code != 0 && strings.Contains(p.out.String(), " listening on ") {
			t.Fatal("listened before failing")
		}
	}
}

// ignoresTerm checks that a hanging process survives SIGTERM, so that only
// a supervisor's SIGKILL can end it.
func ignoresTerm(ctx context.Context, t *testing.T, p *proc) {
	t.Helper()
	p.signal(syscall.SIGTERM)
	p.waitOutput(ctx, "fault hang: ignoring terminated")
	time.Sleep(300 * time.Millisecond)
	if p.exited() {
		t.Fatalf("hanging process exited on SIGTERM: %v", p.cmd.ProcessState)
	}
	p.signal(syscall.SIGKILL)
	if ws := p.wait(ctx); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("exit: %v, want SIGKILL", p.cmd.ProcessState)
	}
}

const mib = 1 << 20

func TestStandin(t *testing.T) {
	tests := []struct {
		name    string
		args    []string // nil: check starts its own processes; {dir} is the case's temp dir
		env     []string
		timeout time.Duration // default 15s
		check   func(ctx context.Context, t *testing.T, p *proc, dir string)
	}{
		{
			name: "identity and health on every port",
			args: []string{"--name", "web", "--port", "0", "--port", "0"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				addrs := p.listening(ctx)
				if len(addrs) != 2 || addrs[0] == addrs[1] {
					t.Fatalf("addresses %v, want two", addrs)
				}
				for _, a := range addrs {
					expect(ctx, t, "GET", a, "/health", "", 200, "ok web")
					in := identity(ctx, t, a)
					if in.Name != "web" || in.PID != p.pid() || in.Port != portOf(t, a) || !in.Healthy {
						t.Fatalf("GET / on %s: %+v, want web pid %d", a, in, p.pid())
					}
					if in.Started.Before(p.spawned.Add(-time.Second)) || in.Started.After(time.Now()) {
						t.Fatalf("started %v, spawned %v", in.Started, p.spawned)
					}
					expect(ctx, t, "GET", a, "/nope", "", 404, "")
				}
			},
		},
		{
			name: "application log as Deephaven's JVM writes it",
			args: []string{"--name", "n1/authentication_server", "--port", "0", "--app-log", "{dir}/logs"},
			check: func(ctx context.Context, t *testing.T, p *proc, dir string) {
				p.listening(ctx)
				b, err := os.ReadFile(filepath.Join(dir, "logs", "AuthenticationServer.log.current"))
				if err != nil {
					t.Fatal(err)
				}
				lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
				if len(lines) != 2 || !strings.HasSuffix(lines[0], " n1/authentication_server INITIALIZING") || !strings.HasSuffix(lines[1], " n1/authentication_server RUNNING") {
					t.Fatalf("application log %q", b)
				}
				dated, _ := filepath.Glob(filepath.Join(dir, "logs", "AuthenticationServer.log.20*"))
				if len(dated) != 1 {
					t.Fatalf("dated files %v, want the one .current links to", dated)
				}
			},
		},
		{
			name: "ports list and addr",
			check: func(ctx context.Context, t *testing.T, _ *proc, _ string) {
				ports := freePorts(t, 2)
				p := start(t, nil, "--name", "lst", "--addr", "127.0.0.1", "--ports", fmt.Sprintf("%d,%d", ports[0], ports[1]))
				addrs := p.listening(ctx)
				for i, port := range ports {
					want := fmt.Sprintf("127.0.0.1:%d", port)
					if i >= len(addrs) || addrs[i] != want {
						t.Fatalf("addresses %v, want %d", addrs, ports)
					}
					if in := identity(ctx, t, want); in.Port != port {
						t.Fatalf("port %d answered as %d", port, in.Port)
					}
				}
			},
		},
		{
			name: "unhealthy flag, healthy at runtime",
			args: []string{"--name", "uh", "--port", "0", "--unhealthy"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				a := p.listening(ctx)[0]
				expect(ctx, t, "GET", a, "/health", "", 503, "unhealthy uh")
				expect(ctx, t, "POST", a, "/fault/healthy", "", 200, "ok fault healthy\n")
				expect(ctx, t, "GET", a, "/health", "", 200, "ok uh")
			},
		},
		{
			name: "runtime fault on one port shows on all",
			args: []string{"--name", "two", "--port", "0", "--port", "0"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				addrs := p.listening(ctx)
				expect(ctx, t, "POST", addrs[1], "/fault/unhealthy", "", 200, "")
				expect(ctx, t, "GET", addrs[0], "/health", "", 503, "unhealthy two")
				if in := identity(ctx, t, addrs[0]); in.Healthy {
					t.Fatalf("GET / says healthy: %+v", in)
				}
				p.waitOutput(ctx, "fault unhealthy (from http ")
			},
		},
		{
			name: "env faults: unhealthy then delayed crash",
			args: []string{"--name", "envf", "--port", "0"},
			env:  []string{"DH_STANDIN_FAULT= unhealthy ; crash:7,300ms"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				expect(ctx, t, "GET", p.listening(ctx)[0], "/health", "", 503, "")
				p.waitCode(ctx, 7)
				if d := time.Since(p.spawned); d < 300*time.Millisecond {
					t.Fatalf("crashed after %v, want >= 300ms", d)
				}
			},
		},
		{
			name: "crash after delay leaves no stop record",
			args: []string{"--name", "cr", "--port", "0", "--crash=3", "--crash-after", "300ms", "--record", "{dir}/rec"},
			check: func(ctx context.Context, t *testing.T, p *proc, dir string) {
				a := p.listening(ctx)[0]
				expect(ctx, t, "GET", a, "/health", "", 200, "ok cr")
				p.waitCode(ctx, 3)
				if d := time.Since(p.spawned); d < 300*time.Millisecond {
					t.Fatalf("crashed after %v, want >= 300ms", d)
				}
				expectRecord(t, filepath.Join(dir, "rec"), "cr", p.pid(), "start")
			},
		},
		{
			name: "bare crash flag exits 1 right after listening",
			args: []string{"--name", "cr1", "--port", "0", "--crash"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				p.waitCode(ctx, 1)
				p.listening(ctx)
			},
		},
		{
			name: "crash at runtime with code in body",
			args: []string{"--name", "crh", "--port", "0"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				expect(ctx, t, "POST", p.listening(ctx)[0], "/fault/crash", "4", 200, "ok fault crash:4\n")
				p.waitCode(ctx, 4)
			},
		},
		{
			name: "crash KILL from env dies by SIGKILL",
			args: []string{"--name", "ck", "--port", "0"},
			env:  []string{"DH_STANDIN_FAULT=crash:KILL"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				if ws := p.wait(ctx); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
					t.Fatalf("exit: %v, want SIGKILL", p.cmd.ProcessState)
				}
			},
		},
		{
			name: "healthy cancels a pending crash",
			args: []string{"--name", "cc", "--port", "0"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				a := p.listening(ctx)[0]
				expect(ctx, t, "POST", a, "/fault/crash?arg=300ms", "", 200, "")
				expect(ctx, t, "POST", a, "/fault/healthy", "", 200, "")
				time.Sleep(600 * time.Millisecond)
				expect(ctx, t, "GET", a, "/health", "", 200, "ok cc")
			},
		},
		{
			name:  "exit at start never listens",
			args:  []string{"--name", "eas", "--port", "0", "--exit-at-start", "3", "--record", "{dir}/rec"},
			check: exitsWith(3, "fault exit-at-start: exiting with code 3"),
		},
		{
			name: "exit at start from env after a start delay",
			args: []string{"--name", "ease", "--port", "0"},
			env:  []string{"DH_STANDIN_FAULT=start-delay:300ms;exit-at-start:5"},
			check: func(ctx context.Context, t *testing.T, p *proc, dir string) {
				exitsWith(5, "exit-at-start")(ctx, t, p, dir)
				if d := time.Since(p.spawned); d < 300*time.Millisecond {
					t.Fatalf("exited after %v, want >= 300ms", d)
				}
			},
		},
		{
			name: "start delay postpones listening",
			args: []string{"--name", "slow", "--port", "0", "--start-delay", "500ms"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				p.waitOutput(ctx, "fault start-delay: waiting 500ms")
				a := p.listening(ctx)[0]
				if d := time.Since(p.spawned); d < 500*time.Millisecond {
					t.Fatalf("listening after %v, want >= 500ms", d)
				}
				expect(ctx, t, "GET", a, "/health", "", 200, "ok slow")
			},
		},
		{
			name: "SIGTERM closes ports and exits 0 with records",
			args: []string{"--name", "term", "--port", "0", "--record", "{dir}/rec"},
			check: func(ctx context.Context, t *testing.T, p *proc, dir string) {
				a := p.listening(ctx)[0]
				expect(ctx, t, "GET", a, "/health", "", 200, "")
				began := time.Now()
				p.signal(syscall.SIGTERM)
				p.waitCode(ctx, 0)
				if d := time.Since(began); d > time.Second {
					t.Fatalf("SIGTERM took %v", d)
				}
				expectRefused(t, a)
				expectRecord(t, filepath.Join(dir, "rec"), "term", p.pid(), "start", "stop")
			},
		},
		{
			name: "SIGTERM during start delay exits 0",
			args: []string{"--name", "tsd", "--port", "0", "--start-delay", "30s"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				p.waitOutput(ctx, "fault start-delay")
				p.signal(syscall.SIGTERM)
				p.waitCode(ctx, 0)
			},
		},
		{
			name: "term delay keeps the process up, health says stopping",
			args: []string{"--name", "td", "--port", "0", "--term-delay", "700ms"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				a := p.listening(ctx)[0]
				began := time.Now()
				p.signal(syscall.SIGTERM)
				p.waitOutput(ctx, "term-delay: waiting 700ms")
				expect(ctx, t, "GET", a, "/health", "", 503, "stopping td")
				p.waitCode(ctx, 0)
				if d := time.Since(began); d < 700*time.Millisecond {
					t.Fatalf("stopped after %v, want >= 700ms", d)
				}
			},
		},
		{
			name: "hang at runtime: accepts, never answers, ignores SIGTERM",
			args: []string{"--name", "hr", "--port", "0"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				a := p.listening(ctx)[0]
				expect(ctx, t, "POST", a, "/fault/hang", "", 200, "ok fault hang\n")
				expectNoAnswer(ctx, t, a)
				ignoresTerm(ctx, t, p)
			},
		},
		{
			name: "hang from flag",
			args: []string{"--name", "hf", "--port", "0", "--hang"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				expectNoAnswer(ctx, t, p.listening(ctx)[0])
				ignoresTerm(ctx, t, p)
			},
		},
		{
			name: "grow raises RSS to its cap, healthy gives it back",
			args: []string{"--name", "gr", "--port", "0", "--grow", "200MiB/s", "--grow-max", "64MiB"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				a := p.listening(ctx)[0]
				p.waitOutput(ctx, "fault grow: reached max, holding 67108864 bytes")
				if rss := rssBytes(t, p.pid()); rss < 64*mib || rss > 64*mib+48*mib {
					t.Fatalf("RSS %d MiB, want about 64 MiB plus the runtime", rss/mib)
				}
				if in := identity(ctx, t, a); in.Grown != 64*mib {
					t.Fatalf("grown_bytes %d", in.Grown)
				}
				expect(ctx, t, "POST", a, "/fault/healthy", "", 200, "")
				for rssBytes(t, p.pid()) > 40*mib {
					select {
					case <-ctx.Done():
						t.Fatalf("RSS still %d MiB after healthy", rssBytes(t, p.pid())/mib)
					case <-time.After(20 * time.Millisecond):
					}
				}
			},
		},
		{
			name: "grow at runtime keeps to its rate",
			args: []string{"--name", "grr", "--port", "0"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				a := p.listening(ctx)[0]
				const rate = 40 * mib
				began := time.Now()
				expect(ctx, t, "POST", a, "/fault/grow?arg=40MiB/s,1GiB", "", 200, "ok fault grow:40MiB/s,1GiB\n")
				for {
					grown := identity(ctx, t, a).Grown
					if max := int64(time.Since(began).Seconds()*rate) + mib; grown > max {
						t.Fatalf("grew %d bytes, more than %d at 40MiB/s", grown, max)
					}
					if grown >= 20*mib {
						break
					}
					select {
					case <-ctx.Done():
						t.Fatalf("grew only %d bytes", grown)
					case <-time.After(20 * time.Millisecond):
					}
				}
				if rss := rssBytes(t, p.pid()); rss < 20*mib {
					t.Fatalf("RSS %d MiB, grown memory not resident", rss/mib)
				}
			},
		},
		{
			name: "bad runtime faults are refused",
			args: []string{"--name", "bad", "--port", "0"},
			check: func(ctx context.Context, t *testing.T, p *proc, _ string) {
				a := p.listening(ctx)[0]
				expect(ctx, t, "POST", a, "/fault/explode", "", 400, "")
				expect(ctx, t, "POST", a, "/fault/crash?arg=soon", "", 400, "")
				expect(ctx, t, "POST", a, "/fault/healthy?arg=x", "", 400, "")
				expect(ctx, t, "POST", a, "/fault/grow?arg=fast", "", 400, "")
				expect(ctx, t, "POST", a, "/fault/start-delay?arg=1s", "", 409, "")
				expect(ctx, t, "POST", a, "/fault/exit-at-start", "", 409, "")
				expect(ctx, t, "GET", a, "/fault/hang", "", 405, "")
				expect(ctx, t, "GET", a, "/health", "", 200, "ok bad")
			},
		},
		{name: "usage: unknown flag", args: []string{"--bogus"}, check: exitsWith(2, "flag provided but not defined")},
		{name: "usage: bad port", args: []string{"--port", "70000"}, check: exitsWith(2, "bad port")},
		{name: "usage: duplicate port", args: []string{"--ports", "5555,5555"}, check: exitsWith(2, "given twice")},
		{name: "usage: crash code needs =", args: []string{"--crash", "3"}, check: exitsWith(2, "--crash=3")},
		{name: "usage: bad grow", args: []string{"--grow", "lots"}, check: exitsWith(2, "bad size")},
		{name: "usage: grow-max alone", args: []string{"--grow-max", "1MiB"}, check: exitsWith(2, "--grow-max needs --grow")},
		{name: "usage: name with space", args: []string{"--name", "a b"}, check: exitsWith(2, "without spaces")},
		{name: "usage: unknown env fault", args: []string{"--port", "0"}, env: []string{"DH_STANDIN_FAULT=explode"}, check: exitsWith(2, "unknown fault")},
		{name: "help exits 0", args: []string{"--help"}, check: exitsWith(0, "DH_STANDIN_FAULT")},
		{
			name: "port in use exits 1",
			check: func(ctx context.Context, t *testing.T, _ *proc, _ string) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				p := start(t, nil, "--name", "busy", "--port", "0", "--port", strconv.Itoa(portOf(t, ln.Addr().String())))
				exitsWith(1, "cannot listen")(ctx, t, p, "")
			},
		},
		{
			name: "pidfile without daemonize is removed on clean stop",
			args: []string{"--name", "pf", "--port", "0", "--pidfile", "{dir}/pf.pid"},
			check: func(ctx context.Context, t *testing.T, p *proc, dir string) {
				p.listening(ctx)
				if pid := readPidfile(t, filepath.Join(dir, "pf.pid")); pid != p.pid() {
					t.Fatalf("pidfile %d, want %d", pid, p.pid())
				}
				p.signal(syscall.SIGTERM)
				p.waitCode(ctx, 0)
				if _, err := os.Stat(filepath.Join(dir, "pf.pid")); !os.IsNotExist(err) {
					t.Fatalf("pidfile left behind: %v", err)
				}
			},
		},
		{
			name: "record shared by two processes",
			check: func(ctx context.Context, t *testing.T, _ *proc, dir string) {
				rec := filepath.Join(dir, "rec")
				a := start(t, nil, "--name", "a", "--port", "0", "--record", rec)
				a.listening(ctx)
				b := start(t, nil, "--name", "b", "--port", "0", "--record", rec)
				b.listening(ctx)
				b.signal(syscall.SIGTERM)
				b.waitCode(ctx, 0)
				a.signal(syscall.SIGTERM)
				a.waitCode(ctx, 0)
				var got []string
				for _, l := range readRecord(t, rec) {
					want := map[string]int{"a": a.pid(), "b": b.pid()}[l.name]
					if l.pid != want {
						t.Fatalf("record %+v: want pid %d", l, want)
					}
					got = append(got, l.event+" "+l.name)
				}
				if s := strings.Join(got, ","); s != "start a,start b,stop b,stop a" {
					t.Fatalf("record order %s", s)
				}
			},
		},
		{
			name: "daemonize with log: new session, pidfile, clean stop",
			check: func(ctx context.Context, t *testing.T, _ *proc, dir string) {
				pidfile, logf, rec := filepath.Join(dir, "d.pid"), filepath.Join(dir, "d.log"), filepath.Join(dir, "rec")
				killFromPidfile(t, pidfile)
				parent := start(t, nil, "--name", "dmn", "--port", "0", "--daemonize",
					"--pidfile", pidfile, "--log", logf, "--record", rec)
				parent.waitCode(ctx, 0)
				pid := readPidfile(t, pidfile)
				if pid == parent.pid() || !alive(pid) {
					t.Fatalf("pidfile names %d (parent %d), alive %v", pid, parent.pid(), alive(pid))
				}
				logText, _ := os.ReadFile(logf)
				_, addr, ok := strings.Cut(string(logText), fmt.Sprintf("daemonized as pid %d listening on ", pid))
				if !ok || !strings.Contains(string(logText), fmt.Sprintf("standin dmn pid %d listening on", pid)) {
					t.Fatalf("log:\n%s", logText)
				}
				addr, _, _ = strings.Cut(addr, "\n")
				if in := identity(ctx, t, addr); in.PID != pid {
					t.Fatalf("%s answered as pid %d, want %d", addr, in.PID, pid)
				}
				if st, err := procfs.ReadStat(pid); err != nil || st.SID != pid {
					t.Fatalf("session %d (%v), want its own (%d)", st.SID, err, pid)
				}
				for fd, want := range []string{"/dev/null", logf, logf} {
					if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); got != want {
						t.Fatalf("fd %d is %q, want %q", fd, got, want)
					}
				}
				syscall.Kill(pid, syscall.SIGTERM)
				if ws, reaped := waitPid(ctx, t, pid); !reaped || !ws.Exited() || ws.ExitStatus() != 0 {
					t.Fatalf("daemon exit status %v (reaped %v)", ws, reaped)
				}
				if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
					t.Fatalf("pidfile left behind: %v", err)
				}
				expectRecord(t, rec, "dmn", pid, "start", "stop")
			},
		},
		{
			name: "daemonize without log: parent reports on stderr, child is quiet",
			check: func(ctx context.Context, t *testing.T, _ *proc, dir string) {
				pidfile := filepath.Join(dir, "d.pid")
				killFromPidfile(t, pidfile)
				parent := start(t, nil, "--name", "dq", "--port", "0", "--daemonize", "--pidfile", pidfile, "--start-delay", "300ms")
				parent.waitCode(ctx, 0)
				if d := time.Since(parent.spawned); d < 300*time.Millisecond {
					t.Fatalf("parent returned after %v, before the child listened", d)
				}
				pid := readPidfile(t, pidfile)
				addrs := parent.listening(ctx) // "daemonized as pid N listening on ..."
				expect(ctx, t, "GET", addrs[0], "/health", "", 200, "ok dq")
				for fd := range 3 {
					if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); got != "/dev/null" {
						t.Fatalf("fd %d is %q, want /dev/null", fd, got)
					}
				}
			},
		},
		{
			name: "launcher: returns at once, the service writes its own pidfile and refuses to start while one exists",
			check: func(ctx context.Context, t *testing.T, _ *proc, dir string) {
				pidfile, logf, rec := filepath.Join(dir, "l.pid"), filepath.Join(dir, "l.log"), filepath.Join(dir, "rec")
				killFromPidfile(t, pidfile)
				launch := func() int {
					// The service takes a minute to come up; the launcher
					// returns well within the test's timeout all the same.
					parent := start(t, nil, "--name", "jvm", "--port", "0", "--launcher", "--start-delay", "1m",
						"--pidfile", pidfile, "--log", logf, "--record", rec)
					parent.waitCode(ctx, 0)
					return parent.pid()
				}
				parentPID := launch()
				pid := waitPidfile(ctx, t, pidfile)
				if pid == parentPID || !alive(pid) {
					t.Fatalf("pidfile names %d (launcher %d), alive %v", pid, parentPID, alive(pid))
				}
				if st, err := procfs.ReadStat(pid); err != nil || st.SID != pid {
					t.Fatalf("session %d (%v), want its own (%d)", st.SID, err, pid)
				}
				// A second launch while it runs: refused by the service.
				launch()
				waitFor(ctx, t, func() bool {
					b, _ := os.ReadFile(logf)
					return strings.Contains(string(b), "exists: the service may be running already; not starting")
				})
				// Killed, it leaves its pidfile behind, and nothing starts
				// over it until someone removes it.
				syscall.Kill(pid, syscall.SIGKILL)
				waitFor(ctx, t, func() bool { return !alive(pid) })
				if got := readPidfile(t, pidfile); got != pid {
					t.Fatalf("stale pidfile names %d, want %d", got, pid)
				}
				launch()
				time.Sleep(100 * time.Millisecond)
				if got := readPidfile(t, pidfile); got != pid {
					t.Fatalf("a launch over a stale pidfile started pid %d", got)
				}
				os.Remove(pidfile)
				launch()
				pid2 := waitPidfile(ctx, t, pidfile)
				syscall.Kill(pid2, syscall.SIGTERM)
				waitFor(ctx, t, func() bool { _, err := os.Stat(pidfile); return os.IsNotExist(err) })
				var starts []int
				for _, l := range readRecord(t, rec) {
					if l.event == "start" {
						starts = append(starts, l.pid)
					}
				}
				if !slices.Equal(starts, []int{pid, pid2}) {
					t.Fatalf("started %v, want only %d then %d", starts, pid, pid2)
				}
			},
		},
		{
			name: "daemonize passes on a child's failure to start",
			check: func(ctx context.Context, t *testing.T, _ *proc, dir string) {
				pidfile := filepath.Join(dir, "d.pid")
				killFromPidfile(t, pidfile)
				parent := start(t, nil, "--name", "df", "--port", "0", "--daemonize", "--pidfile", pidfile, "--exit-at-start", "4")
				parent.waitCode(ctx, 4)
				if !strings.Contains(parent.out.String(), "failed before listening") {
					t.Fatal("parent did not say why it failed")
				}
				if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
					t.Fatalf("pidfile of a dead child left behind: %v", err)
				}
			},
		},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 15 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			dir := t.TempDir()
			var p *proc
			if tc.args != nil {
				args := make([]string, len(tc.args))
				for i, a := range tc.args {
					args[i] = strings.ReplaceAll(a, "{dir}", dir)
				}
				p = start(t, tc.env, args...)
			}
			tc.check(ctx, t, p, dir)
		})
	}
}
