// Command upgrade benchmarks a full upgrade (dhctl upgrade start, strategy
// full) on a real cluster of processes: 3 dhcoord and 4 dhagent
// (test/devcluster) whose stand-in services run from a .deb installed with
// the real dpkg in each node's own root (test/debpkg). It is what `make
// bench` runs after the xDS benchmark.
//
//	go run ./scripts/bench/upgrade [--runs 5] [--start-delay 3s] [--json FILE]
//
// Each stand-in waits --start-delay before it listens, as a JVM takes
// seconds to start. Each run upgrades every node to the other of two
// packages (2.0, then back to 1.0, ...). Per run:
//
//   - wall: StartOp sent to the operation done, through WatchOp;
//   - own work: what the upgrade cannot go faster than, stage by stage
//     (stages run one after another, the steps of a stage at once): for a
//     start stage, its slowest step's chain of stand-in start delays along
//     the node's local dependencies; for the install stage, the slowest
//     node's dpkg run (timed around the tool by the install command); the
//     stops count as nothing (a stand-in exits at once on SIGTERM), nor do
//     the 1 ms health holds;
//   - orchestration overhead: wall - own work, everything dhvisor adds:
//     raft commits, agent calls, process starts and exits, health probes
//     and holds, the package's transfer and checks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
	"github.com/dhvisor/dhvisor/test/debpkg"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// targetOverhead is the issue's: orchestration under 5% of the wall time.
const targetOverhead = 0.05

var nodes = []devcluster.NodeSpec{
	{Name: "infra", Roles: []string{"infra"}},
	{Name: "query-1", Roles: []string{"query"}},
	{Name: "query-2", Roles: []string{"query"}},
	{Name: "merge-1", Roles: []string{"batch"}},
}

type options struct {
	runs       int
	startDelay time.Duration
	jsonOut    string
	keep       bool
}

type runResult struct {
	ID         string   `json:"id"`
	Upgrade    string   `json:"upgrade"`
	WallMS     float64  `json:"wall_ms"`
	OwnMS      float64  `json:"own_ms"`
	InstallMS  float64  `json:"slowest_install_ms"`
	OverheadMS float64  `json:"overhead_ms"`
	Ratio      float64  `json:"overhead_ratio"`
	Stages     []string `json:"stages"` // per stage: action, own work, as run (first step started to last ended)
}

type results struct {
	Runs       int            `json:"runs"`
	StartDelay string         `json:"start_delay"`
	Wall       benchkit.Stats `json:"wall"`
	Own        benchkit.Stats `json:"own"`
	Overhead   benchkit.Stats `json:"overhead"`
	RatioP50   float64        `json:"overhead_ratio_p50"`
	RatioP99   float64        `json:"overhead_ratio_p99"`
	Samples    []runResult    `json:"samples"`
	Load       string         `json:"loadavg_end"`
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	flag.IntVar(&o.runs, "runs", 5, "upgrades to time")
	flag.DurationVar(&o.startDelay, "start-delay", 3*time.Second, "each stand-in's start time (it plays a JVM)")
	flag.StringVar(&o.jsonOut, "json", "", "also write the raw numbers to this `file`")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs and logs)")
	flag.Parse()
	if flag.NArg() > 0 || o.runs < 1 || o.startDelay < 0 {
		fmt.Fprintln(os.Stderr, "bench: usage: upgrade [--runs N>0] [--start-delay D>=0] [--json FILE] [--keep]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute+time.Duration(o.runs)*(3*time.Minute))
	defer cancel()
	res := &results{Runs: o.runs, StartDelay: o.startDelay.String()}
	tmp, err := os.MkdirTemp("/tmp", "dhbench-upgrade-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	err = bench(ctx, o, tmp, res)
	res.Load = benchkit.Loadavg()
	kept := benchkit.KeepOrRemove(tmp, err != nil || o.keep)
	return benchkit.Finish(ctx, func(w io.Writer) { report(w, res) }, res, o.jsonOut, err, kept)
}

func bench(ctx context.Context, o options, tmp string, res *results) error {
	root, err := benchkit.RepoRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(root, "bin")
	debs := map[string]string{}
	for _, v := range []string{"1.0", "2.0"} {
		if debs[v], err = debpkg.Build(tmp, debpkg.Spec{Name: "illumon-db", Version: v, Standin: filepath.Join(bin, "dh-standin")}); err != nil {
			return err
		}
	}
	specs := slices.Clone(nodes)
	roots := map[string]string{}
	for i, n := range specs {
		r := filepath.Join(tmp, "roots", n.Name)
		if err := debpkg.InitRoot(r); err != nil {
			return err
		}
		if err := debpkg.Install(r, debs["1.0"]); err != nil {
			return err
		}
		roots[n.Name] = r
		// The tool's own time, around it: start and end, in nanoseconds.
		install := append([]string{"/bin/sh", "-c", `t=` + filepath.Join(r, "install-times") + `; date +%s%N >> $t; "$@"; rc=$?; date +%s%N >> $t; exit $rc`, "dpkg"}, debpkg.InstallCommand(r)...)
		specs[i].Extra = fmt.Sprintf("launcher_dir: %s\npackages:\n  install: [%s]\n  query: [%s]\n", filepath.Join(r, "usr/illumon/latest/bin"), debpkg.YAMLList(install), debpkg.YAMLList(debpkg.QueryCommand(r)))
	}
	cl, err := devcluster.Start(devcluster.Options{Dir: tmp, Bin: bin, Coordinators: 3, Nodes: specs,
		Program: "{{.LauncherDir}}/launch", Standin: []string{"--start-delay=" + o.startDelay.String()}})
	if err != nil {
		return err
	}
	defer cl.Stop()
	fmt.Fprintln(os.Stderr, "bench: waiting for the cluster (every stand-in waits its start delay)")
	if err := cl.WaitReady(ctx, 2*time.Minute); err != nil {
		return err
	}
	for _, deb := range debs {
		// A dry run uploads the package and plans: the timed runs then start
		// at StartOp.
		if out, err := cl.Ctl(ctx, "upgrade", "start", deb, "--dry-run"); err != nil {
			return fmt.Errorf("upload %s: %v\n%s", deb, err, out)
		}
	}
	shas, deps, err := recorded(ctx, cl, debs)
	if err != nil {
		return err
	}
	from, to := "1.0", "2.0"
	var walls, owns, overs, ratios []float64
	for i := range o.runs {
		if err := cl.WaitReady(ctx, 2*time.Minute); err != nil {
			return fmt.Errorf("before run %d: %w", i+1, err)
		}
		r, err := upgrade(ctx, cl, shas[to], deps, roots, o.startDelay)
		if err != nil {
			return fmt.Errorf("run %d (%s -> %s): %w", i+1, from, to, err)
		}
		r.Upgrade = from + " -> " + to
		res.Samples = append(res.Samples, r)
		walls, owns, overs, ratios = append(walls, r.WallMS), append(owns, r.OwnMS), append(overs, r.OverheadMS), append(ratios, r.Ratio)
		fmt.Fprintf(os.Stderr, "  run %d/%d %s: wall %s, own work %s, overhead %s (%.1f%%)\n    %s\n", i+1, o.runs, r.Upgrade, benchkit.FmtMS(r.WallMS), benchkit.FmtMS(r.OwnMS), benchkit.FmtMS(r.OverheadMS), 100*r.Ratio, strings.Join(r.Stages, " | "))
		from, to = to, from
	}
	res.Wall, res.Own, res.Overhead = benchkit.Summarise(walls), benchkit.Summarise(owns), benchkit.Summarise(overs)
	rs := benchkit.Summarise(ratios)
	res.RatioP50, res.RatioP99 = rs.P50, rs.P99
	return nil
}

// upgrade runs one full upgrade to the package sha and analyses it.
func upgrade(ctx context.Context, cl *devcluster.Cluster, sha string, deps map[string][]string, roots map[string]string, delay time.Duration) (runResult, error) {
	l := cl.Leader(ctx)
	if l < 0 {
		return runResult{}, errors.New("no leader")
	}
	c, closeConn, err := cl.Client(l)
	if err != nil {
		return runResult{}, err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	t0 := time.Now()
	op, err := c.StartOp(ctx, &pb.OpRequest{Action: "upgrade", Label: "upgrade (bench)", MinHealthyTimeMs: 1, Upgrade: &pb.UpgradeSpec{PackageSha256: sha}})
	if err != nil {
		return runResult{}, err
	}
	stream, err := c.WatchOp(ctx, &pb.GetOpRequest{Id: op.Id})
	if err != nil {
		return runResult{}, err
	}
	for !fsm.Ended(op.State) && op.State != fsm.OpPaused {
		if op, err = stream.Recv(); err != nil {
			return runResult{}, fmt.Errorf("watch: %w", err)
		}
	}
	wall := time.Since(t0)
	if op.State != fsm.OpDone {
		return runResult{}, fmt.Errorf("%s %s: %s", op.Id, op.State, op.Message)
	}
	r := runResult{ID: op.Id, WallMS: benchkit.MS(wall)}
	for _, st := range op.Stages {
		var own time.Duration
		action := st.Steps[0].Action
		for _, s := range st.Steps {
			switch action {
			case "install":
				d, err := lastInstall(roots[s.Node])
				if err != nil {
					return r, err
				}
				own = max(own, d)
				r.InstallMS = max(r.InstallMS, benchkit.MS(d))
			case "start":
				own = max(own, time.Duration(chain(s.Node, s.Services, deps))*delay)
			}
		}
		r.OwnMS += benchkit.MS(own)
		var first, last int64
		for _, s := range st.Steps {
			if first == 0 || s.StartedUnixMs < first {
				first = s.StartedUnixMs
			}
			last = max(last, s.EndedUnixMs)
		}
		r.Stages = append(r.Stages, fmt.Sprintf("%s %s in %dms", action, benchkit.FmtMS(benchkit.MS(own)), last-first))
	}
	r.OverheadMS = r.WallMS - r.OwnMS
	r.Ratio = r.OverheadMS / r.WallMS
	return r, nil
}

// chain is the longest chain of the step's services along their local
// dependencies: how many start delays the agent must wait one after another.
func chain(node string, svcs []string, deps map[string][]string) int {
	memo := map[string]int{}
	var depth func(s string) int
	depth = func(s string) int {
		if d, ok := memo[s]; ok {
			return d
		}
		d := 1
		for _, dep := range deps[node+"/"+s] {
			if slices.Contains(svcs, dep) {
				d = max(d, 1+depth(dep))
			}
		}
		memo[s] = d
		return d
	}
	best := 0
	for _, s := range svcs {
		best = max(best, depth(s))
	}
	return best
}

// recorded is what the coordinators recorded: the sha256 of each version's
// package, by its file name, and every instance's depends_on.
func recorded(ctx context.Context, cl *devcluster.Cluster, debs map[string]string) (shas map[string]string, deps map[string][]string, err error) {
	c, closeConn, err := cl.Client(max(cl.Leader(ctx), 0))
	if err != nil {
		return nil, nil, err
	}
	defer closeConn()
	pkgs, err := c.Packages(ctx, &pb.PackagesRequest{})
	if err != nil {
		return nil, nil, err
	}
	shas = map[string]string{}
	for v, deb := range debs {
		for _, p := range pkgs.Packages {
			if p.FileName == filepath.Base(deb) {
				shas[v] = p.Sha256
			}
		}
		if shas[v] == "" {
			return nil, nil, fmt.Errorf("%s: uploaded, but not among the coordinators' packages", deb)
		}
	}
	nodes, err := c.Nodes(ctx, &pb.NodesRequest{})
	if err != nil {
		return nil, nil, err
	}
	deps = map[string][]string{}
	for _, n := range nodes.Nodes {
		for _, s := range n.Services {
			deps[n.Name+"/"+s.Name] = s.DependsOn
		}
	}
	return shas, deps, nil
}

// lastInstall is the node's latest dpkg run, from the times its install
// command wrote around it.
func lastInstall(root string) (time.Duration, error) {
	f := strings.Fields(benchkit.ReadFile(filepath.Join(root, "install-times")))
	if len(f) < 2 || len(f)%2 != 0 {
		return 0, fmt.Errorf("%s: install times %v", root, f)
	}
	a, err1 := strconv.ParseInt(f[len(f)-2], 10, 64)
	b, err2 := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(b - a), nil
}

func report(w io.Writer, r *results) {
	fmt.Fprintf(w, "\n== full upgrade of 4 nodes (3 coordinators, 22 stand-ins starting in %s each, real dpkg), %d runs ==\n", r.StartDelay, r.Runs)
	if len(r.Samples) > 0 {
		fmt.Fprintf(w, "stages of the first run: %s\n", strings.Join(r.Samples[0].Stages, " | "))
	}
	row := func(name string, s benchkit.Stats) {
		fmt.Fprintf(w, "  %-34s p50 %-9s p99 %-9s max %s\n", name, benchkit.FmtMS(s.P50), benchkit.FmtMS(s.P99), benchkit.FmtMS(s.Max))
	}
	row("wall time", r.Wall)
	row("own work (start delays, dpkg)", r.Own)
	row("orchestration overhead", r.Overhead)
	fmt.Fprintf(w, "  overhead / wall time               p50 %.2f%%  p99 %.2f%%  (target < %.0f%%): %s\n", 100*r.RatioP50, 100*r.RatioP99, 100*targetOverhead, benchkit.Verdict(len(r.Samples) > 0 && r.RatioP99 < targetOverhead))
	fmt.Fprintf(w, "  load average at the end: %s\n", r.Load)
}
