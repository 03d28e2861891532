package main

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/test/devcluster"
	"github.com/dhvisor/dhvisor/test/need"
)

func TestDaemonLayoutAgentYAML(t *testing.T) {
	ports := []int{23201, 23202, 23203, 23204, 23205, 23206}
	for _, rt := range []string{runtimeExec, runtimeSystemd} {
		t.Run(rt, func(t *testing.T) {
			l := daemonLayout{dir: t.TempDir(), standin: "/opt/dh-standin", runtime: rt}
			got, err := l.write(ports)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2*perMode {
				t.Fatalf("%d targets, want %d", len(got), 2*perMode)
			}
			for i, tg := range got {
				// Interleaved: daemonized, foreground, daemonized, ...
				wantDaemon := i%2 == 0
				prefix := map[bool]string{true: pidfilePrefix, false: foregroundPrefix}[wantDaemon]
				if tg.daemon != wantDaemon || !strings.HasPrefix(tg.name, prefix) {
					t.Errorf("target %d = %s (daemon %v), want a %s service", i, tg.name, tg.daemon, prefix)
				}
				if tg.checkPort != ports[i] {
					t.Errorf("%s probed on %d, want %d", tg.name, tg.checkPort, ports[i])
				}
			}
			yaml, _ := os.ReadFile(l.config())
			for _, want := range []string{"runtime: " + rt, `"--launcher", "--pidfile", "` + l.pidfile("pidfile1") + `"`, "pidfile: " + l.pidfile("pidfile1")} {
				if !strings.Contains(string(yaml), want) {
					t.Errorf("agent.yaml lacks %q:\n%s", want, yaml)
				}
			}
		})
	}
}

func TestSplitSeries(t *testing.T) {
	in := []sample{{Service: "pidfile1", ServeMS: 1}, {Service: "foreground1", ServeMS: 2}, {Service: "pidfile2", ServeMS: 3}}
	got := map[series]*crashResult{}
	splitSeries(in, seriesPidfileExec, seriesForeExec, got)
	if n := got[seriesPidfileExec].Serve.N; n != 2 {
		t.Errorf("pidfile series has %d samples, want 2", n)
	}
	if s := got[seriesForeExec].Serve; s.N != 1 || s.P50 != 2 {
		t.Errorf("foreground series = %+v, want the one foreground sample", s)
	}
}

func TestDaemonizedVerdicts(t *testing.T) {
	cr := func(p50, p99 float64) *crashResult {
		c := &crashResult{}
		c.Serve = stats{N: 50, P50: p50, P99: p99}
		return c
	}
	tests := []struct {
		name             string
		pidfile, fore    *crashResult
		monit            *crashResult
		wantNear, wantFx bool
	}{
		{"both met", cr(20, 40), cr(18, 35), cr(1000, 2000), true, true},
		{"pidfile p99 11ms over", cr(20, 46), cr(18, 35), cr(1000, 2000), false, true},
		{"monit under 20x", cr(60, 70), cr(58, 65), cr(1000, 2000), true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDaemonizedResult()
			d.Series[seriesPidfileExec], d.Series[seriesForeExec], d.Series[seriesMonit] = tc.pidfile, tc.fore, tc.monit
			v := d.verdicts()
			if len(v) != 2 {
				t.Fatalf("verdicts = %+v, want two for the exec runtime only", v)
			}
			if v[0].Met != tc.wantNear || v[1].Met != tc.wantFx {
				t.Errorf("verdicts = %+v, want near %v, 20x %v", v, tc.wantNear, tc.wantFx)
			}
		})
	}
}

// The monit control file of the comparison is one monit itself accepts.
func TestLauncherMonitrcAcceptedByMonit(t *testing.T) {
	monit, err := exec.LookPath("monit")
	if err != nil {
		need.Missing(t, "monit 5.33 on PATH")
	}
	dir := t.TempDir()
	targets := []target{{name: "pidfile1", ports: []int{23211}, checkPort: 23211, daemon: true}}
	rc := monitrc(dir, targets, launcherProgram("/opt/dh-standin", dir))
	pidfile := monitPidfile(dir, targets[0])
	if want := `start program = "/bin/sh -c 'rm -f ` + pidfile + `; exec /opt/dh-standin --launcher --pidfile ` + pidfile; !strings.Contains(rc, want) {
		t.Errorf("monitrc lacks %q:\n%s", want, rc)
	}
	file := filepath.Join(dir, "monitrc")
	if err := os.WriteFile(file, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(monit, "-t", "-c", file).CombinedOutput(); err != nil {
		t.Fatalf("monit -t refuses the generated control file: %v\n%s\n%s", err, out, rc)
	}
}

// The floor loop brings a SIGKILLed launcher service back: it removes the
// stale pidfile the stand-in would refuse to start over.
func TestFloorRestartsKilledService(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		need.Missing(t, "bash")
	}
	b := &bench{root: t.TempDir(), rng: rand.New(rand.NewPCG(1, 0))}
	if err := os.MkdirAll(filepath.Join(b.root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", b.bin("dh-standin"), "./test/standin")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./test/standin: %v\n%s", err, out)
	}
	// After the build: the reaper collects every child's status.
	if b.reaper, err = newReaper(); err != nil {
		t.Fatal(err)
	}
	defer b.reaper.stop()
	defer sweep()
	ports, err := devcluster.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	targets := []target{{name: "pidfile1", ports: ports, checkPort: ports[0], daemon: true}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := startFloor(ctx, b, t.TempDir(), targets)
	if err != nil {
		t.Fatal(err)
	}
	got, err := crashLoop(ctx, f, targets, 2, benchMinUptime, 10*time.Millisecond, b.rng, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range got {
		if s.NewPID == s.KilledPID || s.NewPID == 0 {
			t.Errorf("sample %+v: no new process", s)
		}
	}
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestCutSamples(t *testing.T) {
	tests := []struct{ in, data, rest string }{
		{"progress 1\nsamples: [1]\n", "[1]", "progress 1"},
		{"samples: [2]\nprogress 2\n", "[2]", "progress 2"}, // stderr after stdout
		{"no samples\n", "", "no samples"},
	}
	for _, tc := range tests {
		if data, rest := cutSamples(tc.in); data != tc.data || rest != tc.rest {
			t.Errorf("cutSamples(%q) = %q, %q; want %q, %q", tc.in, data, rest, tc.data, tc.rest)
		}
	}
}
