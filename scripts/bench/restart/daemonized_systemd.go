package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/test/sysdbox"
)

// insideEnv marks the harness's own run inside the systemd container,
// where it kills the services of the agent there (its pids are the
// container's) and prints the samples as one JSON line.
const insideEnv = "DHVISOR_BENCH_INSIDE"

// In the container, everything lives under boxDir.
const (
	boxDir  = "/var/lib/dhv-bench" // docker cp cannot write into the tmpfs on /run
	boxBin  = "/dhv"
	boxUnit = "dhagent-bench.service"
)

// systemdDaemonized runs the daemonized and foreground stand-ins under a
// dhagent on its systemd runtime, in a container whose PID 1 is a real
// systemd (test/sysdbox, as scripts/bench/systemd), on the same ports as the
// host series, and returns the kills and systemd's version. The container
// shares the host's network but not its pids, so the kill loop runs in
// there: this very harness, copied in.
func (b *bench) systemdDaemonized(ctx context.Context, ports []int) ([]sample, string, error) {
	var samples []sample
	var version string
	// The docker CLI runs through os/exec here; the reaper must not
	// collect its exit statuses meanwhile. Nothing else of the harness's
	// runs during this phase.
	err := b.reaper.hold(func() error {
		image, err := sysdbox.EnsureImage(b.root)
		if err != nil {
			return err
		}
		box, err := sysdbox.Launch(image)
		if err != nil {
			return err
		}
		defer box.Close()
		self, err := os.Executable()
		if err != nil {
			return err
		}
		for src, dst := range map[string]string{
			b.bin("dhagent"): boxBin + "/dhagent", b.bin("dh-standin"): boxBin + "/dh-standin", self: boxBin + "/bench",
		} {
			if err := box.CopyIn(src, dst); err != nil {
				return err
			}
		}
		l := daemonLayout{dir: boxDir, standin: boxBin + "/dh-standin", runtime: runtimeSystemd}
		local := filepath.Join(b.tmp, "daemonized-systemd.yaml")
		if err := os.WriteFile(local, []byte(l.agentYAML(ports)), 0o644); err != nil {
			return err
		}
		if err := box.CopyIn(local, l.config()); err != nil {
			return err
		}
		if _, err := box.Exec("mkdir", "-p", filepath.Join(boxDir, "run"), filepath.Join(boxDir, "logs")); err != nil {
			return err
		}
		// The agent runs as the package runs it: a unit with
		// KillMode=process.
		if _, err := box.Exec("systemd-run", "--unit="+boxUnit, "-p", "KillMode=process", boxBin+"/dhagent", "--config", l.config()); err != nil {
			return err
		}
		out, err := box.ExecEnv([]string{insideEnv + "=1"}, boxBin+"/bench",
			"--samples", strconv.Itoa(b.o.samples), "--jitter", b.o.jitter.String(),
			"--seed", strconv.FormatUint(b.rng.Uint64(), 10), "--inside-config", l.config())
		data, progress := cutSamples(out)
		fmt.Print(indent(progress))
		if err != nil {
			logs, _ := box.Exec("journalctl", "-u", boxUnit, "-n", "30", "--no-pager")
			return fmt.Errorf("inside %s: %w\n(dhagent journal:)\n%s", box.Name, err, indent(logs))
		}
		if err := json.Unmarshal([]byte(data), &samples); err != nil {
			return fmt.Errorf("inside %s: %v: %s", box.Name, err, out)
		}
		v, _ := box.Exec("systemctl", "--version")
		version = firstLine(v)
		_, _ = box.Exec("systemctl", "stop", boxUnit, "dhvisor.slice")
		return nil
	})
	return samples, version, err
}

// samplesMark starts the line of samples the harness prints inside: docker
// exec passes stdout and stderr (progress) on separately, so the line is
// not necessarily the last.
const samplesMark = "samples: "

// cutSamples returns the samples line's JSON and the rest of out.
func cutSamples(out string) (data, rest string) {
	var others []string
	for _, l := range strings.Split(out, "\n") {
		if j, ok := strings.CutPrefix(l, samplesMark); ok {
			data = j
		} else if l != "" {
			others = append(others, l)
		}
	}
	return data, strings.Join(others, "\n")
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ") + "\n"
}

// inside is the harness in the container: it brings the agent's services
// up, kills them in turn (daemonized and foreground interleaved), and
// prints the samples as one JSON line on stdout; progress goes to stderr.
func inside(args []string) int {
	fs := flag.NewFlagSet("inside", flag.ContinueOnError)
	samples := fs.Int("samples", 60, "kills per series")
	jitter := fs.Duration("jitter", time.Second, "random wait in [0, jitter) before each kill")
	seed := fs.Uint64("seed", 0, "random seed")
	config := fs.String("inside-config", "", "the agent's configuration")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "bench inside:", err); return 1 }
	targets, err := interleavedTargets(*config)
	if err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hardLimit)
	defer cancel()
	sock := filepath.Join(filepath.Dir(*config), "agent.sock")
	a, err := dialAgent(sock)
	if err != nil {
		return fail(err)
	}
	defer a.close()
	if err := a.waitReady(ctx, sock, func() error { return nil }); err != nil {
		return fail(fmt.Errorf("dhagent API did not come up: %w", err))
	}
	if err := a.up(ctx); err != nil {
		return fail(err)
	}
	n := 2 * *samples
	t0 := time.Now()
	out, err := crashLoop(ctx, a, targets, n, benchMinUptime, *jitter, rand.New(rand.NewPCG(*seed, 0)), func(i int, s sample) {
		if (i+1)%10 == 0 || i+1 == n {
			fmt.Fprintf(os.Stderr, "dhagent systemd: %d/%d kills, last %s back in %s (%s)\n", i+1, n, s.Service, fmtMS(s.ServeMS), time.Since(t0).Round(time.Second))
		}
	})
	if err != nil {
		return fail(err)
	}
	data, err := json.Marshal(out)
	if err != nil {
		return fail(err)
	}
	fmt.Println(samplesMark + string(data))
	return 0
}
