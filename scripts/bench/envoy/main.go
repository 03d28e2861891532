// Command envoy benchmarks how fast a killed Envoy container serves again:
// the kill to the Envoy stand-in answering /ready on its admin port from a
// new process, under dhagent (the envoy role, its shipped restart policy)
// and, in the same run, under Docker's own `--restart=always`. It is part
// of `make bench`.
//
// Two deaths: `docker kill` (the issue's), which Docker itself takes for an
// operator's stop and never restarts, and SIGKILL of the container's
// process from the host (a crash), which both restart. dhagent's container
// dies one way and the other in turn; Docker's by SIGKILL.
//
// dhagent runs the shipped policy but for its restart limit (limit: 0):
// a kill every 10 s would otherwise be the crash loop the limit is for, and
// leave the container Failed after five.
//
// Both containers run the stand-in image of test/envoyfixture at once on
// the machine's Docker engine, and are killed in turn. Each is killed only
// after it ran longer than both restart delays reset (Docker doubles its
// delay, from 100 ms, for a container that ran less than 10 s; dhagent's
// min_uptime is 10 s): every kill is a healthy Envoy dying.
//
//	go run ./scripts/bench/envoy [--rounds 40] [--spacing 10.5s] [--json FILE]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/agent/container"
	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
	"github.com/dhvisor/dhvisor/test/devcluster"
	"github.com/dhvisor/dhvisor/test/envoyfixture"
)

const (
	image     = "dhv-bench-envoy:v1"
	targetP99 = 2 * time.Second // the acceptance
)

type results struct {
	Started time.Time       `json:"started"`
	Load    [2]string       `json:"load1_start_end"`
	Rounds  int             `json:"rounds"`
	Spacing string          `json:"spacing"`
	Ready   map[string]side `json:"kill_to_ready"` // by series: supervisor and death
	// DockerKillRestarted says whether Docker's --restart=always brought
	// its container back after a docker kill.
	DockerKillRestarted string `json:"docker_kill_restarted_by_docker"`
}

type side struct {
	Stats     benchkit.Stats `json:"stats"`
	SamplesMS []float64      `json:"samples_ms"`
}

func main() { os.Exit(run()) }

func run() int {
	samples := flag.Int("rounds", 40, "rounds; each kills both containers once")
	spacing := flag.Duration("spacing", 10500*time.Millisecond, "time between kills of one container (over 10 s, so neither restart delay grows)")
	jsonOut := flag.String("json", "", "also write the raw numbers to this `file`")
	flag.Parse()
	if *samples < 10 || *spacing < time.Second {
		fmt.Fprintln(os.Stderr, "bench: --rounds at least 10, --spacing at least 1s")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, time.Duration(*samples+5)*(*spacing)+5*time.Minute)
	defer cancel()
	res := &results{Started: time.Now(), Rounds: *samples, Spacing: spacing.String(), Ready: map[string]side{}}
	res.Load[0] = benchkit.Loadavg()
	dir, err := os.MkdirTemp("", "dhv-bench-envoy")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	err = measure(ctx, dir, res, *samples, *spacing)
	res.Load[1] = benchkit.Loadavg()
	kept := benchkit.KeepOrRemove(dir, err != nil)
	return benchkit.Finish(ctx, func(w io.Writer) { report(w, res) }, res, *jsonOut, err, kept)
}

// supervised is one Envoy container and how to tell it serves again.
type supervised struct {
	name      string // the container
	admin     int
	lastStart time.Time
}

// Series names.
const (
	agentDockerKill = "dhagent, docker kill"
	agentSIGKILL    = "dhagent, SIGKILL"
	dockerSIGKILL   = "docker --restart=always, SIGKILL"
	dockerKill      = "docker --restart=always, docker kill"
)

func measure(ctx context.Context, dir string, res *results, samples int, spacing time.Duration) error {
	root, err := benchkit.RepoRoot()
	if err != nil {
		return err
	}
	if _, err := envoyfixture.Docker(ctx, envoyfixture.DefaultHost, "version"); err != nil {
		return fmt.Errorf("no Docker engine (scripts/setup.sh starts one): %w", err)
	}
	if err := envoyfixture.BuildImage(ctx, envoyfixture.DefaultHost, image); err != nil {
		return err
	}
	ports, err := devcluster.FreePorts(4)
	if err != nil {
		return err
	}
	agentSide := &supervised{name: fmt.Sprintf("dhv-bench-envoy-agent-%d", os.Getpid()), admin: ports[1]}
	dockerSide := &supervised{name: fmt.Sprintf("dhv-bench-envoy-docker-%d", os.Getpid()), admin: ports[3]}
	defer func() {
		for _, s := range []*supervised{agentSide, dockerSide} {
			_, _ = envoyfixture.Docker(context.Background(), envoyfixture.DefaultHost, "rm", "-f", s.name)
		}
	}()

	// dhagent with the envoy role: the shipped restart policy (without its
	// limit) and ready probe, a site bootstrap file (the stand-in does not
	// read it).
	if err := os.WriteFile(filepath.Join(dir, "bootstrap.yaml"), []byte("# stand-in\n"), 0o644); err != nil {
		return err
	}
	args := "['" + strings.Join(envoyfixture.Args(ports[0], ports[1]), "', '") + "']"
	cfg := fmt.Sprintf("node: bench\nroles: [envoy]\nstate_dir: state\nsocket: agent.sock\nlog_root: logs\nenvoy:\n  container: %s\n  image: %s\n  args: %s\n  listen_port: %d\n  admin_port: %d\n  bootstrap: bootstrap.yaml\n  restart: {limit: 0}\n",
		agentSide.name, image, args, ports[0], ports[1])
	if err := os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(cfg), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "dhagent.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	agent := exec.Command(filepath.Join(root, "bin", "dhagent"), "--config", filepath.Join(dir, "agent.yaml"))
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		return fmt.Errorf("dhagent (make build first): %w", err)
	}
	defer func() {
		_ = agent.Process.Signal(syscall.SIGTERM)
		_ = agent.Wait()
	}()
	// Docker's own policy on the same image.
	if _, err := envoyfixture.Docker(ctx, envoyfixture.DefaultHost, append([]string{"run", "-d", "--name", dockerSide.name, "--network", "host", "--restart=always", image},
		envoyfixture.Args(ports[2], ports[3])...)...); err != nil {
		return err
	}

	eng, err := container.NewDocker(envoyfixture.DefaultHost)
	if err != nil {
		return err
	}
	defer eng.Close()
	sides := []*supervised{agentSide, dockerSide}
	for _, s := range sides {
		if _, err := waitServing(ctx, s.admin, 0, 60*time.Second); err != nil {
			return fmt.Errorf("%s never served: %w\n%s", s.name, err, benchkit.Tail(logf.Name(), 20))
		}
		s.lastStart = time.Now()
	}
	fmt.Printf("bench: %d rounds, each container killed once a round, every %s (about %s)\n", samples, spacing, time.Duration(samples)*spacing)
	series := map[string][]float64{}
	kill := func(s *supervised, how string) error {
		// Kill only after the container ran past both restart delays' reset.
		if err := benchkit.SleepCtx(ctx, time.Until(s.lastStart.Add(spacing))); err != nil {
			return err
		}
		old, err := processOf(s.admin)
		if err != nil {
			return fmt.Errorf("%s before a kill: %w", s.name, err)
		}
		in, err := eng.Inspect(ctx, s.name)
		if err != nil {
			return err
		}
		t0 := time.Now()
		if how == agentDockerKill {
			err = eng.Kill(ctx, s.name)
		} else {
			err = syscall.Kill(in.Pid, syscall.SIGKILL)
		}
		if err != nil {
			return err
		}
		took, err := waitServing(ctx, s.admin, old, 20*time.Second)
		if err != nil {
			return fmt.Errorf("%s (%s): not serving again: %w\n%s", s.name, how, err, benchkit.Tail(logf.Name(), 20))
		}
		s.lastStart = t0.Add(took)
		series[how] = append(series[how], benchkit.MS(took))
		return nil
	}
	for i := 0; i < samples; i++ {
		how := agentDockerKill
		if i%2 == 1 {
			how = agentSIGKILL
		}
		if err := kill(agentSide, how); err != nil {
			return err
		}
		if err := kill(dockerSide, dockerSIGKILL); err != nil {
			return err
		}
	}
	for name, v := range series {
		res.Ready[name] = side{Stats: benchkit.Summarise(v), SamplesMS: v}
	}
	// Docker's own policy and docker kill: it takes the kill for an
	// operator's stop, and does not restart.
	old, err := processOf(dockerSide.admin)
	if err != nil {
		return err
	}
	if err := eng.Kill(ctx, dockerSide.name); err != nil {
		return err
	}
	if _, err := waitServing(ctx, dockerSide.admin, old, 15*time.Second); err == nil {
		res.DockerKillRestarted = "yes"
	} else {
		res.DockerKillRestarted = "no (not serving 15 s after docker kill)"
	}
	return nil
}

// waitServing polls the stand-in's admin port until a process other than
// old answers /ready with 200; how long that took.
func waitServing(ctx context.Context, admin int, old int64, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	err := benchkit.PollUntil(ctx, 2*time.Millisecond, timeout, func() (bool, error) {
		p, err := processOf(admin)
		if err != nil || p == old {
			return false, nil // not serving yet, or still the killed one
		}
		return envoyfixture.Ready(admin), nil
	})
	return time.Since(start), err
}

var client = http.Client{Timeout: 500 * time.Millisecond}

// processOf tells which process answers on the stand-in's admin port: its
// start time (its pid is 1 in every run of its container).
func processOf(admin int) (int64, error) {
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", admin))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var in struct {
		Started time.Time `json:"started"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&in); err != nil {
		return 0, err
	}
	return in.Started.UnixNano(), nil
}

func report(w io.Writer, r *results) {
	fmt.Fprintf(w, "\nEnvoy container: killed -> the stand-in serving /ready again from a new process\n")
	fmt.Fprintf(w, "(%d rounds, a kill every %s per container; load %s -> %s)\n\n", r.Rounds, r.Spacing, r.Load[0], r.Load[1])
	fmt.Fprintf(w, "%-36s %5s %9s %9s %9s %9s\n", "series", "n", "p50", "p90", "p99", "max")
	for _, name := range []string{agentDockerKill, agentSIGKILL, dockerSIGKILL} {
		s, ok := r.Ready[name]
		if !ok {
			continue
		}
		st := s.Stats
		fmt.Fprintf(w, "%-36s %5d %9s %9s %9s %9s\n", name, st.N, benchkit.FmtMS(st.P50), benchkit.FmtMS(st.P90), benchkit.FmtMS(st.P99), benchkit.FmtMS(st.Max))
	}
	if r.DockerKillRestarted != "" {
		fmt.Fprintf(w, "%-36s %s\n", dockerKill, "restarted by Docker: "+r.DockerKillRestarted)
	}
	if a, ok := r.Ready[agentDockerKill]; ok {
		fmt.Fprintf(w, "\ntarget: dhagent, docker kill, p99 < %s: %s\n", targetP99, benchkit.Verdict(a.Stats.P99 < benchkit.MS(targetP99)))
	}
	if a, ok := r.Ready[agentSIGKILL]; ok {
		if d, ok := r.Ready[dockerSIGKILL]; ok && d.Stats.P50 > 0 {
			fmt.Fprintf(w, "SIGKILL, dhagent / docker --restart=always: p50 %.2fx, p99 %.2fx\n", a.Stats.P50/d.Stats.P50, a.Stats.P99/d.Stats.P99)
		}
	}
}
