// Command coord benchmarks the coordinators on a real cluster of processes
// (test/devcluster: 3 dhcoord and 4 dhagent with stand-in services, on
// loopback, mutual TLS everywhere). It is what `make bench` runs after the
// gossip benchmark.
//
//	go run ./scripts/bench/coord [--kills 20] [--writes 200] [--ops 10] [--json FILE]
//
// Three measurements, reported in this order:
//
//   - failover: the raft leader is killed with SIGKILL; from the kill, a
//     write is sent through a surviving replica every ~10 ms (250 ms per
//     call) until one commits. The killed replica is then restarted and
//     caught up before the next kill.
//   - write commit latency: the same write sent to the leader directly and
//     to a follower, which forwards it.
//   - orchestration overhead: `restart all` K times; between consecutive
//     stages, the time from the last service of a stage being OK (as the
//     coordinator learned it from the agent) to the next stage's first step
//     starting, less the 1 ms health hold.
//
// The write is Join{id, raft_addr, api_addr} of an existing voter with its
// own addresses: raft commits an (unchanged) configuration entry and then the
// peer record, so it is a real, replicated write that followers forward.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// Targets from the issue.
const (
	targetFailoverP99 = 3 * time.Second        // leader killed -> a write commits, p99
	targetOverheadP99 = 100 * time.Millisecond // service OK -> next step started, p99
)

type options struct {
	kills   int
	writes  int
	ops     int
	settle  time.Duration
	only    string
	jsonOut string
	keep    bool
}

func main() { os.Exit(run()) }

func run() int {
	var o options
	flag.IntVar(&o.kills, "kills", 20, "failover: leader kills")
	flag.IntVar(&o.writes, "writes", 200, "write latency: writes to the leader, and as many to a follower")
	flag.IntVar(&o.ops, "ops", 10, "orchestration: `restart all` operations")
	flag.DurationVar(&o.settle, "settle", time.Second, "failover: pause after the restarted replica caught up, before the next kill")
	flag.StringVar(&o.only, "only", "", "run only `part`: failover, writes or ops (default all three)")
	flag.StringVar(&o.jsonOut, "json", "", "also write the raw numbers to this `file`")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs and logs) even after a successful run")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", flag.Arg(0))
		return 2
	}
	switch {
	case o.kills < 1 || o.writes < 1 || o.ops < 1:
		fmt.Fprintln(os.Stderr, "bench: --kills, --writes and --ops must be at least 1")
		return 2
	case o.settle < 0:
		fmt.Fprintln(os.Stderr, "bench: --settle must not be negative")
		return 2
	case o.only != "" && o.only != "failover" && o.only != "writes" && o.only != "ops":
		fmt.Fprintf(os.Stderr, "bench: --only %q: expected failover, writes or ops\n", o.only)
		return 2
	}

	// ctrl-C or SIGTERM cancels ctx; every phase then returns and the
	// cluster is stopped with its own bounds. Further signals are swallowed
	// until stop() so a second ctrl-C cannot strand daemons or stand-ins.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A bound on the whole run whatever goes wrong: every kill may take its
	// cap plus the recovery's, every operation its own; writes take
	// milliseconds.
	limit := 5*time.Minute + time.Duration(o.kills)*(failoverCap+2*recoverCap+o.settle) +
		time.Duration(o.writes)*500*time.Millisecond + time.Duration(o.ops)*(opTimeout+readyTimeout)
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	b, err := newBench(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	res, err := b.runAll(ctx)
	res.Host.LoadEnd = loadavg()
	res.Finished = time.Now().UTC()
	b.close(err != nil)
	kept := ""
	if b.kept {
		kept = b.tmp
	}
	return benchkit.Finish(ctx, func(w io.Writer) { report(w, res) }, res, o.jsonOut, err, kept)
}

type bench struct {
	o    options
	root string // the repository, holding bin/
	tmp  string
	kept bool
	cl   *devcluster.Cluster
	// clients[i] talks to coordinator i; replaced when i restarts, since a
	// connection left in gRPC's reconnect backoff would only add delay.
	clients []pb.CoordinatorClient
	closers []func()
}

func newBench(o options) (*bench, error) {
	if runtime.GOOS != "linux" {
		return nil, errors.New("linux only (/proc)")
	}
	b := &bench{o: o}
	var err error
	if b.root, err = repoRoot(); err != nil {
		return nil, err
	}
	var missing []string
	for _, name := range []string{"dhagent", "dhcoord", "dhctl", "dh-standin"} {
		if st, err := os.Stat(b.bin(name)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, "bin/"+name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s missing in %s: run `make build` first (`make bench` does)", strings.Join(missing, ", "), b.root)
	}
	// Under /tmp whatever TMPDIR says: the agents' unix socket paths must
	// stay short.
	if b.tmp, err = os.MkdirTemp("/tmp", "dhbench-coord-"); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *bench) bin(name string) string { return filepath.Join(b.root, "bin", name) }

// nodes is the cluster of the issue: one infra node, two query nodes, one
// merge node.
var nodes = []devcluster.NodeSpec{
	{Name: "infra", Roles: []string{"infra"}},
	{Name: "query-1", Roles: []string{"query"}},
	{Name: "query-2", Roles: []string{"query"}},
	{Name: "merge-1", Roles: []string{"batch"}},
}

const coordinators = 3

func (b *bench) startCluster(ctx context.Context) error {
	cl, err := devcluster.Start(devcluster.Options{Dir: b.tmp, Bin: filepath.Join(b.root, "bin"), Coordinators: coordinators, Nodes: nodes})
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	b.cl = cl
	b.clients = make([]pb.CoordinatorClient, coordinators)
	b.closers = make([]func(), coordinators)
	for i := range coordinators {
		if err := b.redial(i); err != nil {
			return err
		}
	}
	if err := cl.WaitReady(ctx, 90*time.Second); err != nil {
		return err
	}
	return nil
}

func (b *bench) redial(i int) error {
	if b.closers[i] != nil {
		b.closers[i]()
	}
	c, closeConn, err := b.cl.Client(i)
	if err != nil {
		return fmt.Errorf("client for %s: %w", b.cl.Coords[i].Name, err)
	}
	b.clients[i], b.closers[i] = c, closeConn
	return nil
}

func (b *bench) close(failed bool) {
	for _, f := range b.closers {
		if f != nil {
			f()
		}
	}
	if b.cl != nil {
		b.cl.Stop()
	}
	if failed || b.o.keep {
		b.kept = true
	} else {
		os.RemoveAll(b.tmp)
	}
}

func (b *bench) runAll(ctx context.Context) (*results, error) {
	res := &results{
		Started: time.Now().UTC(),
		Host: hostInfo{
			LoadStart: loadavg(),
			CPUs:      runtime.NumCPU(),
			Kernel:    strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")),
			Dhcoord:   b.version(),
		},
	}
	for _, n := range nodes {
		res.Nodes = append(res.Nodes, fmt.Sprintf("%s [%s]", n.Name, strings.Join(n.Roles, ",")))
	}
	if err := b.startCluster(ctx); err != nil {
		return res, err
	}
	// Writes and operations run first, on the cluster as it came up; the
	// failovers, which restart replicas, last.
	if b.o.only == "" || b.o.only == "writes" {
		wr, err := b.writePhase(ctx)
		res.Writes = wr
		if err != nil {
			return res, fmt.Errorf("writes: %w", err)
		}
	}
	if b.o.only == "" || b.o.only == "ops" {
		or, err := b.opsPhase(ctx)
		res.Ops = or
		if err != nil {
			return res, fmt.Errorf("orchestration: %w", err)
		}
	}
	if b.o.only == "" || b.o.only == "failover" {
		fr, err := b.failoverPhase(ctx)
		res.Failover = fr
		if err != nil {
			return res, fmt.Errorf("failover: %w", err)
		}
	}
	return res, nil
}

func (b *bench) version() string {
	out, err := exec.Command(b.bin("dhcoord"), "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// leader asks every running replica for the leader and returns its index
// when all of them name the same one, else -1.
func (b *bench) leader(ctx context.Context) (int, *pb.PeersResponse) {
	idx := -1
	var leaderView *pb.PeersResponse
	for i, p := range b.cl.Coords {
		if !p.Running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := b.clients[i].Peers(cctx, &pb.PeersRequest{})
		cancel()
		if err != nil || resp.Leader == "" {
			return -1, nil
		}
		j := b.index(resp.Leader)
		if j < 0 || (idx >= 0 && j != idx) || !b.cl.Coords[j].Running() {
			return -1, nil
		}
		idx = j
		if i == j {
			leaderView = resp
		}
	}
	if leaderView == nil {
		return -1, nil
	}
	return idx, leaderView
}

// index maps a server id to the coordinator's index.
func (b *bench) index(id string) int {
	for i, p := range b.cl.Coords {
		if p.Name == id {
			return i
		}
	}
	return -1
}

// join is the benchmark's write: coordinator i re-joins with its own
// addresses.
func (b *bench) join(i int) *pb.JoinRequest {
	return &pb.JoinRequest{Id: b.cl.Coords[i].Name, RaftAddr: b.cl.RaftAddrs[i], ApiAddr: b.cl.APIAddrs[i]}
}
