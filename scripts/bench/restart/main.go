// Command restart benchmarks dhagent against monit 5.33 side by side on the
// same stand-in services (test/standin): how fast each brings a SIGKILLed
// service back, and what each costs in memory and CPU while idle. It is what
// `make bench` runs after the Go benchmarks.
//
// The two supervisors run one after the other, never at once, on the same
// ports (those of roles/services.yaml), so each supervises exactly the same
// stand-ins. monit is not installed by the harness; it must be on PATH.
//
//	go run ./scripts/bench/restart [--samples 60] [--idle 30s] [--json FILE]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
)

const (
	// Issue targets for dhagent.
	targetP99    = 50 * time.Millisecond
	targetRSS    = 30_000_000 // 30 MB
	targetCPUPct = 1.0

	// hardLimit bounds a whole run whatever goes wrong; a default run
	// takes about twelve minutes.
	hardLimit = 30 * time.Minute
)

type options struct {
	samples int
	idle    time.Duration
	settle  time.Duration
	jitter  time.Duration
	jsonOut string
	keep    bool
	phases  map[string]bool
}

// The parts of a run, for --phases.
const (
	phaseCrash      = "crash" // the floor, then dhagent and monit on the single-node role
	phaseFootprint  = "footprint"
	phaseDaemonized = "daemonized" // issue 14's pidfile-mode comparison
)

var allPhases = []string{phaseCrash, phaseFootprint, phaseDaemonized}

func main() { os.Exit(run()) }

func run() int {
	if os.Getenv(insideEnv) == "1" {
		return inside(os.Args[1:])
	}
	var o options
	flag.IntVar(&o.samples, "samples", 60, "kills per supervisor (at least 50, so that p99 means something)")
	flag.DurationVar(&o.idle, "idle", 30*time.Second, "footprint: idle window over which CPU is measured")
	flag.DurationVar(&o.settle, "settle", 10*time.Second, "footprint: wait this long after all services are up before measuring")
	flag.DurationVar(&o.jitter, "jitter", time.Second, "random wait in [0, jitter) before each kill, to sample every phase of monit's 1s cycle")
	flag.StringVar(&o.jsonOut, "json", "", "also write the raw numbers to this `file`")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs and logs) even after a successful run")
	phases := flag.String("phases", strings.Join(allPhases, ","), "run only these parts, comma-separated: "+strings.Join(allPhases, ", "))
	flag.Parse()
	o.phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		if !slices.Contains(allPhases, p) {
			fmt.Fprintf(os.Stderr, "bench: unknown phase %q in --phases (expected some of %s)\n", p, strings.Join(allPhases, ", "))
			return 2
		}
		o.phases[p] = true
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", flag.Arg(0))
		return 2
	}
	if o.samples < 50 {
		fmt.Fprintln(os.Stderr, "bench: --samples must be at least 50 (a p99 of fewer is just the maximum of a handful)")
		return 2
	}
	if o.idle < time.Second || o.settle < 0 || o.jitter <= 0 {
		fmt.Fprintln(os.Stderr, "bench: --idle must be at least 1s, --settle not negative, --jitter positive")
		return 2
	}

	// ctrl-C or SIGTERM cancels ctx; the shutdown below still runs (with its
	// own bounds), and further signals are swallowed until it is done so a
	// second ctrl-C cannot strand the stand-ins.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, hardLimit)
	defer cancel()

	b, err := newBench(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	res, err := b.runAll(ctx)
	res.Host.LoadEnd = loadavg()
	res.Settings.OrphansReaped = b.reaper.orphanCount()
	if left := b.close(err != nil); len(left) > 0 {
		res.Notes = append(res.Notes, "left running by a supervisor and killed by the harness: "+strings.Join(left, ", "))
	}
	kept := ""
	if b.kept {
		kept = b.tmp
	}
	return benchkit.Finish(ctx, func(w io.Writer) { report(w, res) }, res, o.jsonOut, err, kept)
}

type bench struct {
	o      options
	root   string // the repository, holding bin/
	monit  string
	tmp    string
	kept   bool
	reaper *reaper
	rng    *rand.Rand
	seed   uint64
}

func newBench(o options) (*bench, error) {
	b := &bench{o: o, seed: rand.Uint64()}
	b.rng = rand.New(rand.NewPCG(b.seed, 0))
	if runtime.GOOS != "linux" {
		return nil, errors.New("linux only (/proc, prctl, pidfds)")
	}
	var err error
	if b.root, err = repoRoot(); err != nil {
		return nil, err
	}
	if err := b.prerequisites(); err != nil {
		return nil, err
	}
	if b.tmp, err = os.MkdirTemp("", "dhbench-"); err != nil {
		return nil, err
	}
	if b.reaper, err = newReaper(); err != nil {
		os.RemoveAll(b.tmp)
		return nil, err
	}
	return b, nil
}

// prerequisites checks, and installs nothing.
func (b *bench) prerequisites() error {
	var missing []string
	for _, name := range []string{"dhagent", "dhctl", "dh-standin"} {
		if st, err := os.Stat(b.bin(name)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, "bin/"+name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s missing in %s: run `make build` first (`make bench` does)", strings.Join(missing, ", "), b.root)
	}
	var err error
	if b.monit, err = exec.LookPath("monit"); err != nil {
		return errors.New("monit is not on PATH; install monit 5.33 (Debian: `apt-get install -y monit`); this harness installs nothing itself")
	}
	return nil
}

func (b *bench) bin(name string) string { return filepath.Join(b.root, "bin", name) }

// close stops anything still running below the harness and removes the
// temporary directory unless it is wanted for a post-mortem.
func (b *bench) close(failed bool) []string {
	left := sweep()
	b.reaper.stop()
	if failed || b.o.keep {
		b.kept = true
	} else {
		os.RemoveAll(b.tmp)
	}
	return left
}

// output returns what a command prints (version strings).
func (b *bench) output(name string, argv ...string) string {
	f := filepath.Join(b.tmp, name+".out")
	if err := b.reaper.run(name, f, 10*time.Second, argv...); err != nil {
		return "unknown"
	}
	data, _ := os.ReadFile(f)
	return strings.TrimSpace(string(data))
}

func (b *bench) runAll(ctx context.Context) (*results, error) {
	res := &results{
		Started: time.Now().UTC(),
		Settings: settings{
			Samples: b.o.samples, MinUptime: benchMinUptime.String(), RestartPolicy: benchRestartYAML,
			JitterMax: b.o.jitter.String(), ServePoll: servePoll.String(), Settle: b.o.settle.String(), Idle: b.o.idle.String(),
			Seed: b.seed, MonitDaemon: "set daemon 1",
		},
		Crash:     map[string]*crashResult{},
		Footprint: map[string]*footprint{},
	}
	res.Host = hostInfo{
		LoadStart: loadavg(),
		CPUs:      runtime.NumCPU(),
		Kernel:    strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
		Monit:     strings.Replace(firstLine(b.output("monit-version", b.monit, "-V")), "This is Monit version ", "monit ", 1),
		Dhagent:   b.output("dhagent-version", b.bin("dhagent"), "--version"),
	}
	if !strings.Contains(res.Host.Monit, "5.33") {
		res.Notes = append(res.Notes, "monit is not 5.33 ("+res.Host.Monit+"); the comparison is meant against 5.33")
	}

	if b.o.phases[phaseCrash] || b.o.phases[phaseFootprint] {
		if err := b.rolePhases(ctx, res); err != nil {
			return res, err
		}
	}
	if b.o.phases[phaseDaemonized] {
		res.Daemonized = newDaemonizedResult()
		err := b.daemonizedPhase(ctx, res.Daemonized)
		res.Daemonized.Verdicts = res.Daemonized.verdicts()
		if err != nil {
			return res, fmt.Errorf("daemonized: %w", err)
		}
	}
	res.Finished = time.Now().UTC()
	return res, nil
}

// rolePhases compare dhagent and monit on the twelve services of the
// single-node role: crash to restart (beside the floor) and footprint.
func (b *bench) rolePhases(ctx context.Context, res *results) error {
	// The twelve services of the single-node role, as dhagent resolves them.
	crashDir := filepath.Join(b.tmp, "crash-dhagent")
	if err := writeAgentYAML(b.root, crashDir, false, nil); err != nil {
		return err
	}
	catalogue, err := loadTargets(filepath.Join(crashDir, "agent.yaml"))
	if err != nil {
		return err
	}
	var killable []string
	var rotation []target
	for _, t := range catalogue {
		if t.checkPort != 0 {
			rotation = append(rotation, t)
			killable = append(killable, t.name)
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("%s has no port to poll, so it is supervised but not killed in the crash test", t.name))
		}
	}
	res.Settings.Services = len(catalogue)
	res.Settings.Killed = killable

	if !b.o.phases[phaseCrash] {
		return b.footprints(ctx, res, catalogue)
	}

	// 0. The floor: a stand-in started with no supervisor.
	base, err := baseline(ctx, b, rotation[0], b.o.samples)
	res.Baseline = &baselineResult{Service: rotation[0].name, Stats: summarise(base), SamplesMS: base}
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	fmt.Printf("baseline: dh-standin alone, exec to answering on its port: p50 %s over %d starts\n", fmtMS(res.Baseline.Stats.P50), len(base))

	// 1. Crash-to-restart, dhagent then monit.
	fmt.Printf("crash test: %d kills per supervisor over %d services; dhagent first, then monit (same ports, one at a time)\n", b.o.samples, len(rotation))
	cr, err := b.crashPhase(ctx, "dhagent", catalogue, rotation, b.o.samples, func(ctx context.Context) (supervisor, error) {
		return startAgent(ctx, b, crashDir, catalogue)
	})
	res.Crash["dhagent"] = cr
	if err != nil {
		return fmt.Errorf("dhagent crash test: %w", err)
	}
	cr, err = b.crashPhase(ctx, "monit", catalogue, rotation, b.o.samples, func(ctx context.Context) (supervisor, error) {
		dir := filepath.Join(b.tmp, "crash-monit")
		return startMonit(ctx, b, dir, catalogue, daemonizeProgram(b.root, dir))
	})
	res.Crash["monit"] = cr
	if err != nil {
		return fmt.Errorf("monit crash test: %w", err)
	}

	if !b.o.phases[phaseFootprint] {
		return nil
	}
	return b.footprints(ctx, res, catalogue)
}

// footprints measures dhagent and monit idle with fifteen services and
// checks every second.
func (b *bench) footprints(ctx context.Context, res *results, catalogue []target) error {
	footDir := filepath.Join(b.tmp, "footprint-dhagent")
	if err := writeAgentYAML(b.root, footDir, true, catalogue); err != nil {
		return err
	}
	fifteen, err := loadTargets(filepath.Join(footDir, "agent.yaml"))
	if err != nil {
		return err
	}
	fmt.Printf("footprint: %d services, checks every 1s, %s settle, %s idle window; dhagent, then monit\n", len(fifteen), b.o.settle, b.o.idle)
	fp, err := b.footprintPhase(ctx, "dhagent", fifteen, func(ctx context.Context) (supervisor, error) {
		return startAgent(ctx, b, footDir, fifteen)
	})
	res.Footprint["dhagent"] = fp
	if err != nil {
		return fmt.Errorf("dhagent footprint: %w", err)
	}
	fp, err = b.footprintPhase(ctx, "monit", fifteen, func(ctx context.Context) (supervisor, error) {
		dir := filepath.Join(b.tmp, "footprint-monit")
		return startMonit(ctx, b, dir, fifteen, daemonizeProgram(b.root, dir))
	})
	res.Footprint["monit"] = fp
	if err != nil {
		return fmt.Errorf("monit footprint: %w", err)
	}
	return nil
}

func writeAgentYAML(root, dir string, fast bool, catalogue []target) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(agentYAML(root, dir, fast, catalogue)), 0o644)
}

// withSupervisor starts a supervisor, runs f, and always stops it again,
// checking that it left nothing running.
func (b *bench) withSupervisor(ctx context.Context, name string, targets []target, start func(context.Context) (supervisor, error), f func(supervisor) error) error {
	t0 := time.Now()
	sup, err := start(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("  %s up with %d services in %s (pid %d)\n", name, len(targets), time.Since(t0).Round(time.Millisecond), sup.pid())
	ferr := f(sup)
	serr := sup.stop()
	if serr == nil {
		if err := waitPortsFree(targets, 15*time.Second); err != nil {
			serr = fmt.Errorf("after stopping %s: %w", name, err)
		}
	}
	// Stopping the supervisor and its services must leave nothing below
	// the harness; anything left is a finding, and is cleared before the
	// next supervisor starts.
	if left := sweep(); len(left) > 0 {
		serr = errors.Join(serr, fmt.Errorf("%s left processes running after its stop: %s", name, strings.Join(left, ", ")))
	}
	return errors.Join(ferr, serr)
}

func (b *bench) crashPhase(ctx context.Context, name string, catalogue, rotation []target, n int, start func(context.Context) (supervisor, error)) (*crashResult, error) {
	cr := &crashResult{}
	err := b.withSupervisor(ctx, name, catalogue, start, func(sup supervisor) error {
		t0 := time.Now()
		samples, err := crashLoop(ctx, sup, rotation, n, benchMinUptime, b.o.jitter, b.rng, func(i int, s sample) {
			if (i+1)%10 == 0 || i+1 == n {
				fmt.Printf("  %s: %d/%d kills, last %s back in %s (%s)\n", name, i+1, n, s.Service, fmtMS(s.ServeMS), time.Since(t0).Round(time.Second))
			}
		})
		cr.set(samples)
		return err
	})
	return cr, err
}

func (b *bench) footprintPhase(ctx context.Context, name string, targets []target, start func(context.Context) (supervisor, error)) (*footprint, error) {
	fp := &footprint{Services: len(targets)}
	err := b.withSupervisor(ctx, name, targets, start, func(sup supervisor) error {
		return measureIdle(ctx, sup, targets, b.o.settle, b.o.idle, fp)
	})
	return fp, err
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }
