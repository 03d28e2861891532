// Command systemd benchmarks how fast dhagent brings back a SIGKILLed
// service on its systemd runtime (a transient unit in dhvisor.slice, the
// death reported by systemd over D-Bus) beside its exec runtime (a child,
// the death seen through a pidfd), in one run: one agent supervises
// stand-ins on both runtimes, inside a container whose PID 1 is a real
// systemd (test/sysdbox), and kills alternate between them. It is part of
// `make bench`.
//
//	go run ./scripts/bench/systemd [--samples 60] [--json FILE]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
	"github.com/dhvisor/dhvisor/test/devcluster"
	"github.com/dhvisor/dhvisor/test/sysdbox"
)

// insideEnv marks the harness's own run inside the container.
const insideEnv = "DHVISOR_BENCH_INSIDE"

// perRuntime stand-ins are supervised on each runtime; kills rotate over
// them so that no service is killed twice in a row.
const perRuntime = 3

var runtimes = []string{"systemd", "exec"}

type result struct {
	Samples  int                       `json:"samples_per_runtime"`
	Restart  map[string]benchkit.Stats `json:"kill_to_answering"`
	Raw      map[string][]float64      `json:"raw_ms"`
	Ratio    map[string]float64        `json:"systemd_over_exec"`
	Host     map[string]string         `json:"host"`
	Versions map[string]string         `json:"versions"`
}

func main() {
	samples := flag.Int("samples", 60, "kills per runtime (at least 50, so that p99 means something)")
	jsonOut := flag.String("json", "", "also write the raw numbers to this `file`")
	services := flag.String("services", "", "inside the container: name:port list")
	flag.Parse()
	if *samples < 50 {
		fmt.Fprintln(os.Stderr, "bench: --samples must be at least 50")
		os.Exit(2)
	}
	if os.Getenv(insideEnv) == "1" {
		os.Exit(inside(*samples, *services))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := outer(ctx, *samples)
	os.Exit(benchkit.Finish(ctx, func(w io.Writer) { report(w, res) }, res, *jsonOut, err, ""))
}

func outer(ctx context.Context, samples int) (result, error) {
	res := result{Samples: samples, Host: map[string]string{"load_start": benchkit.Loadavg()}}
	root, err := benchkit.RepoRoot()
	if err != nil {
		return res, err
	}
	for _, b := range []string{"dhagent", "dhctl", "dh-standin"} {
		if _, err := os.Stat(filepath.Join(root, "bin", b)); err != nil {
			return res, fmt.Errorf("bin/%s missing: run make build first", b)
		}
	}
	image, err := sysdbox.EnsureImage(root)
	if err != nil {
		return res, err
	}
	box, err := sysdbox.Launch(image)
	if err != nil {
		return res, err
	}
	defer box.Close()
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	for src, dst := range map[string]string{
		filepath.Join(root, "bin/dhagent"): "/dhv/dhagent", filepath.Join(root, "bin/dhctl"): "/dhv/dhctl",
		filepath.Join(root, "bin/dh-standin"): "/dhv/dh-standin", self: "/dhv/bench",
	} {
		if err := box.CopyIn(src, dst); err != nil {
			return res, err
		}
	}
	var list []string
	var svcYAML strings.Builder
	ports, err := devcluster.FreePorts(perRuntime * len(runtimes))
	if err != nil {
		return res, err
	}
	for i := range perRuntime {
		for _, rt := range runtimes {
			port := ports[0]
			ports = ports[1:]
			name := fmt.Sprintf("%s%d", rt, i+1)
			list = append(list, fmt.Sprintf("%s:%d", name, port))
			fmt.Fprintf(&svcYAML, "  %s: {runtime: %s, ports: {main: %d}}\n", name, rt, port)
		}
	}
	// Every kill is restarted at once (min_uptime below the time between
	// kills), as a crash of a long-running service is.
	config := `node: bench
roles: []
state_dir: /var/lib/dhv-bench
socket: /run/dhv-bench.sock
log_root: /var/log/dhv-bench
defaults:
  user: ""
  log_dir: /var/log/dhv-bench
  command: [/dhv/dh-standin, "--name={{.Name}}", "--ports={{.Ports}}", "--app-log={{.LogDir}}"]
  checks: [{type: tcp, port: main, interval: 1s}]
  restart: {min_uptime: 50ms, limit: 0}
services:
` + svcYAML.String()
	f := filepath.Join(os.TempDir(), fmt.Sprintf("dhv-bench-%d.yaml", os.Getpid()))
	if err := os.WriteFile(f, []byte(config), 0o644); err != nil {
		return res, err
	}
	defer os.Remove(f)
	if err := box.CopyIn(f, "/dhv/agent.yaml"); err != nil {
		return res, err
	}
	// The agent runs as the package runs it: a unit with KillMode=process.
	if _, err := box.Exec("systemd-run", "--unit=dhagent-bench", "-p", "KillMode=process", "/dhv/dhagent", "--config", "/dhv/agent.yaml"); err != nil {
		return res, err
	}
	out, err := box.ExecEnv([]string{insideEnv + "=1"}, "/dhv/bench", "--samples", strconv.Itoa(samples), "--services", strings.Join(list, ","))
	_, _ = box.Exec("systemctl", "stop", "dhagent-bench.service", "dhvisor.slice")
	if err != nil {
		return res, fmt.Errorf("inside %s: %w", box.Name, err)
	}
	if err := json.Unmarshal([]byte(lastLine(out)), &res.Raw); err != nil {
		return res, fmt.Errorf("inside %s: %v: %s", box.Name, err, out)
	}
	res.Restart, res.Ratio = map[string]benchkit.Stats{}, map[string]float64{}
	for _, rt := range runtimes {
		res.Restart[rt] = benchkit.Summarise(res.Raw[rt])
	}
	s, e := res.Restart["systemd"], res.Restart["exec"]
	if e.P50 > 0 && e.P99 > 0 {
		res.Ratio["p50"], res.Ratio["p99"] = s.P50/e.P50, s.P99/e.P99
	}
	v, _ := box.Exec("systemctl", "--version")
	res.Versions = map[string]string{"systemd": strings.SplitN(v, "\n", 2)[0]}
	res.Host["load_end"] = benchkit.Loadavg()
	res.Host["cgroup"] = cgroupVersion()
	return res, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func cgroupVersion() string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "v2"
	}
	return "v1 (systemd in hybrid mode)"
}

// inside kills the stand-ins in turn and times each from the SIGKILL to
// the moment a new process answers the service's port. It prints the
// samples, by runtime, as one JSON line.
func inside(samples int, list string) int {
	type svc struct {
		name, runtime string
		port          int
	}
	var svcs []svc
	for _, item := range strings.Split(list, ",") {
		name, p, _ := strings.Cut(item, ":")
		port, _ := strconv.Atoi(p)
		rt := strings.TrimRight(name, "0123456789")
		svcs = append(svcs, svc{name, rt, port})
	}
	ctx := context.Background()
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "bench inside:", err); return 1 }
	if err := benchkit.PollUntil(ctx, 50*time.Millisecond, time.Minute, func() (bool, error) { return allOK(len(svcs)) }); err != nil {
		return fail(fmt.Errorf("services not all OK: %w", err))
	}
	out := map[string][]float64{}
	rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
	for i := 0; i < samples*len(runtimes); i++ {
		s := svcs[i%len(svcs)]
		before, err := pidOf(s.name)
		if err != nil {
			return fail(err)
		}
		// A random pause, so that kills do not line up with the checks'
		// 1 s interval.
		time.Sleep(time.Duration(100+rng.IntN(200)) * time.Millisecond)
		if err := syscall.Kill(before, syscall.SIGKILL); err != nil {
			return fail(fmt.Errorf("kill %s (%d): %w", s.name, before, err))
		}
		killed := time.Now()
		// Answering means a new process answers: the dying one may still
		// hold its socket for a moment after the kill.
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, took, err := benchkit.WaitServing(sctx, s.port, before, killed)
		cancel()
		if err != nil {
			return fail(fmt.Errorf("%s did not come back: %w", s.name, err))
		}
		out[s.runtime] = append(out[s.runtime], took)
		// The next kill starts from a steady state: the restart seen by
		// the agent, every service OK.
		if err := benchkit.PollUntil(ctx, 5*time.Millisecond, 30*time.Second, func() (bool, error) {
			now, err := pidOf(s.name)
			if err != nil || now == before {
				return false, err
			}
			return allOK(len(svcs))
		}); err != nil {
			return fail(fmt.Errorf("%s after the kill: %w", s.name, err))
		}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return 0
}

type status struct {
	Services []struct {
		Name, State string
		Pid         int
	}
}

func readStatus() (status, error) {
	var st status
	out, err := exec.Command("/dhv/dhctl", "--socket", "/run/dhv-bench.sock", "status", "--local", "--json").Output()
	if len(out) == 0 && err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

func allOK(n int) (bool, error) {
	st, err := readStatus()
	if err != nil {
		return false, err
	}
	ok := 0
	for _, s := range st.Services {
		if s.State == "OK" && s.Pid != 0 {
			ok++
		}
	}
	return ok == n, nil
}

func pidOf(name string) (int, error) {
	st, err := readStatus()
	if err != nil {
		return 0, err
	}
	for _, s := range st.Services {
		if s.Name == name && s.Pid != 0 {
			return s.Pid, nil
		}
	}
	return 0, errors.New(name + " has no process")
}

func report(w io.Writer, r result) {
	fmt.Fprintf(w, "\n== crash to restart, systemd runtime beside exec (one dhagent, %d kills each, SIGKILL -> new process answers its port) ==\n", r.Samples)
	fmt.Fprintf(w, "%-8s %6s %9s %9s %9s %9s\n", "runtime", "n", "p50", "p90", "p99", "max")
	for _, rt := range runtimes {
		s := r.Restart[rt]
		fmt.Fprintf(w, "%-8s %6d %9s %9s %9s %9s\n", rt, s.N, benchkit.FmtMS(s.P50), benchkit.FmtMS(s.P90), benchkit.FmtMS(s.P99), benchkit.FmtMS(s.Max))
	}
	if r.Ratio["p50"] > 0 {
		fmt.Fprintf(w, "systemd / exec: p50 %.2fx, p99 %.2fx\n", r.Ratio["p50"], r.Ratio["p99"])
	}
	fmt.Fprintf(w, "host: cgroup %s, load %s -> %s; %s\n", r.Host["cgroup"], r.Host["load_start"], r.Host["load_end"], r.Versions["systemd"])
}
