package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

type results struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Host     struct {
		CPUs      int    `json:"cpus"`
		LoadStart string `json:"load_start"`
		LoadEnd   string `json:"load_end"`
	} `json:"host"`
	Clients int          `json:"clients"`
	Trials  int          `json:"trials"`
	Sizes   []sizeResult `json:"sizes"`
	Big     *bigResult   `json:"big,omitempty"`
}

type sizeResult struct {
	Workers int `json:"workers"`
	// PerClient: registration -> each subscriber got the route (clients x trials samples).
	PerClient benchkit.Stats `json:"per_client"`
	// The same for the subscribers of the raft leader and of the followers,
	// which learn of a commit one append later.
	LeaderClients   benchkit.Stats `json:"leader_clients"`
	FollowerClients benchkit.Stats `json:"follower_clients"`
	// AllClients: registration -> the last of the subscribers got it (one per trial).
	AllClients benchkit.Stats `json:"all_clients"`
	GRPC       benchkit.Stats `json:"grpc_go_routable"`
	// GRPCNotRouted counts registrations grpc-go had not routed within grpcCap.
	GRPCNotRouted int            `json:"grpc_go_not_routed"`
	Delta         benchkit.Stats `json:"delta_received"`
	HTTP          benchkit.Stats `json:"http_registration"` // the agent's answer (raft committed)
	// Bytes sent per change to one state-of-the-world and the delta subscriber.
	SotWBytes int64 `json:"sotw_bytes_per_change"`
	// CPU time per registration, summed over the processes (ms): what the
	// latencies cost, and what other load on the machine does not change.
	CoordCPUMS float64 `json:"coordinators_cpu_ms_per_change"`
	AgentCPUMS float64 `json:"agents_cpu_ms_per_change"`
	// The measuring clients' (this process), on the same cores.
	ClientCPUMS float64 `json:"clients_cpu_ms_per_change"`
	DeltaBytes  int64   `json:"delta_bytes_per_change"`
}

type bigResult struct {
	Workers    int                `json:"workers"`
	AllClients float64            `json:"all_clients_ms"`
	BuildMS    map[string]float64 `json:"build_ms"` // per coordinator, as it reports its build of every worker
	ServeMS    map[string]float64 `json:"serve_ms"` // handing the build to the clients' caches
	RSSBytes   map[string]int64   `json:"rss_bytes"`
	// One worker replaced in the big set: the slowest build of each
	// coordinator, and registration -> all subscribers updated.
	ChangeBuildMS map[string]float64 `json:"change_build_ms"`
	ChangeServeMS map[string]float64 `json:"change_serve_ms"`
	// A follower restarted with the workers in its state: its first build
	// (the others idle, as on a coordinator of its own host), and its
	// memory once it serves them.
	Restarted        string         `json:"restarted"`
	RestartBuildMS   float64        `json:"restart_build_ms"`
	RestartRSSBytes  int64          `json:"restart_rss_bytes"`
	ChangeAllClients benchkit.Stats `json:"change_all_clients"`
}

// grpcCap bounds the wait for grpc-go to route a new worker.
const grpcCap = 20 * time.Second

func workersJSON(names []string, port int) string {
	var b strings.Builder
	b.WriteString(`{"leaseTtlMs": 600000, "workers": [`)
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name": %q, "port": %d, "kind": "DeephavenCommunity", "nonce": "%s", "envoyPrefix": "/worker/%s"}`, n, port, n, n)
	}
	b.WriteString("]}")
	return b.String()
}

// register PUTs a set to the query node's agent and waits for its answer.
func (b *bench) register(ctx context.Context, names []string, port int) error {
	req, err := http.NewRequestWithContext(ctx, "PUT", "http://workers/v1/workers/db_query_server", strings.NewReader(workersJSON(names, port)))
	if err != nil {
		return err
	}
	resp, err := b.workers.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		return fmt.Errorf("registration: %s: %s", resp.Status, buf[:n])
	}
	return nil
}

// waitAll waits until every subscriber got worker's route and returns the
// times it arrived.
func (b *bench) waitAll(ctx context.Context, worker string) ([]time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var out []time.Time
	for _, s := range b.subs {
		at, err := s.wait(ctx, worker)
		if err != nil {
			return nil, err
		}
		out = append(out, at)
	}
	return out, nil
}

func (b *bench) measure(ctx context.Context, n, port int) (sizeResult, error) {
	r := sizeResult{Workers: n}
	base := make([]string, n)
	for i := range base {
		base[i] = fmt.Sprintf("b%d-%d", n, i)
	}
	if err := b.register(ctx, base, port); err != nil {
		return r, err
	}
	if _, err := b.waitAll(ctx, base[n-1]); err != nil {
		return r, err
	}
	var perClient, all, delta, httpDone, ofLeader, ofFollowers []float64
	var sotwBytes, deltaBytes int64
	leader := b.cl.Leader(ctx)
	coordCPU, agentCPU, clientCPU := cpuTime(b.cl.Coords), cpuTime(b.cl.Agents), ownCPUTime()
	for k := range b.o.trials {
		name := fmt.Sprintf("t%d-%d", n, k)
		for _, s := range b.subs {
			s.forget()
		}
		b.dlt.forget()
		s0, d0 := b.subs[0].received(), b.dlt.received()
		start := time.Now()
		if err := b.register(ctx, append(base[:n-1:n-1], name), port); err != nil {
			return r, err
		}
		httpDone = append(httpDone, benchkit.MS(time.Since(start)))
		ats, err := b.waitAll(ctx, name)
		if err != nil {
			return r, err
		}
		last := start
		for i, at := range ats {
			ms := benchkit.MS(at.Sub(start))
			perClient = append(perClient, ms)
			if b.subs[i].coord == leader {
				ofLeader = append(ofLeader, ms)
			} else {
				ofFollowers = append(ofFollowers, ms)
			}
			if at.After(last) {
				last = at
			}
		}
		all = append(all, benchkit.MS(last.Sub(start)))
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		dat, err := b.dlt.wait(dctx, name)
		cancel()
		if err != nil {
			return r, err
		}
		delta = append(delta, benchkit.MS(dat.Sub(start)))
		// Let the acknowledgements and endpoint updates of this change land
		// before counting what it cost.
		if err := benchkit.SleepCtx(ctx, 100*time.Millisecond); err != nil {
			return r, err
		}
		sotwBytes += b.subs[0].received() - s0
		deltaBytes += b.dlt.received() - d0
	}
	r.CoordCPUMS = benchkit.MS(cpuTime(b.cl.Coords)-coordCPU) / float64(b.o.trials)
	r.AgentCPUMS = benchkit.MS(cpuTime(b.cl.Agents)-agentCPU) / float64(b.o.trials)
	r.ClientCPUMS = benchkit.MS(ownCPUTime()-clientCPU) / float64(b.o.trials)
	grpcGo, notRouted, err := b.measureGRPC(ctx, n, base, port)
	if err != nil {
		return r, err
	}
	r.GRPCNotRouted = notRouted
	r.PerClient, r.AllClients, r.GRPC, r.Delta, r.HTTP = benchkit.Summarise(perClient), benchkit.Summarise(all), benchkit.Summarise(grpcGo), benchkit.Summarise(delta), benchkit.Summarise(httpDone)
	r.LeaderClients, r.FollowerClients = benchkit.Summarise(ofLeader), benchkit.Summarise(ofFollowers)
	r.SotWBytes, r.DeltaBytes = sotwBytes/int64(b.o.trials), deltaBytes/int64(b.o.trials)
	return r, nil
}

// measureGRPC registers --grpc-trials more sets and times grpc-go routing
// each new worker.
func (b *bench) measureGRPC(ctx context.Context, n int, base []string, port int) (ms []float64, notRouted int, err error) {
	g, err := newGRPCClient(b.cl, b.cl.XDSAddrs[1])
	if err != nil {
		return nil, 0, err
	}
	defer g.close()
	for k := range b.o.grpcTrials {
		name := fmt.Sprintf("g%d-%d", n, k)
		start := time.Now()
		if err := b.register(ctx, append(base[:n-1:n-1], name), port); err != nil {
			return ms, notRouted, err
		}
		gctx, cancel := context.WithTimeout(ctx, grpcCap)
		routed, err := g.routed(gctx, name)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ms, notRouted, ctx.Err()
		case err != nil:
			notRouted++
			fmt.Fprintf(os.Stderr, "bench: grpc-go did not route %s within %s: %v\n", name, grpcCap, err)
		default:
			ms = append(ms, benchkit.MS(routed.Sub(start)))
		}
	}
	return ms, notRouted, nil
}

func (b *bench) measureBig(ctx context.Context, n, port int) (bigResult, error) {
	r := bigResult{Workers: n}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("big-%d", i)
	}
	start := time.Now()
	if err := b.register(ctx, names, port); err != nil {
		return r, err
	}
	ats, err := b.waitAll(ctx, names[n-1])
	if err != nil {
		return r, err
	}
	for _, at := range ats {
		r.AllClients = max(r.AllClients, benchkit.MS(at.Sub(start)))
	}
	// Every replica has built it by now (its subscribers have it): read
	// what each reports, and its memory while it serves them.
	first, err := b.readCoordinators(ctx)
	if err != nil {
		return r, err
	}
	r.BuildMS, r.ServeMS, r.RSSBytes = map[string]float64{}, map[string]float64{}, map[string]int64{}
	for name, t := range first {
		r.BuildMS[name], r.ServeMS[name], r.RSSBytes[name] = t.full, t.serve, t.rss
	}
	// Then the usual change at this size: one worker replaced.
	r.ChangeBuildMS, r.ChangeServeMS = map[string]float64{}, map[string]float64{}
	var all []float64
	for k := range bigChanges {
		for _, s := range b.subs {
			s.forget()
		}
		name := fmt.Sprintf("bigt-%d", k)
		start := time.Now()
		if err := b.register(ctx, append(names[:n-1:n-1], name), port); err != nil {
			return r, err
		}
		ats, err := b.waitAll(ctx, name)
		if err != nil {
			return r, err
		}
		last := start
		for _, at := range ats {
			if at.After(last) {
				last = at
			}
		}
		all = append(all, benchkit.MS(last.Sub(start)))
		now, err := b.readCoordinators(ctx)
		if err != nil {
			return r, err
		}
		for name, t := range now {
			r.ChangeBuildMS[name] = max(r.ChangeBuildMS[name], t.build)
			r.ChangeServeMS[name] = max(r.ChangeServeMS[name], t.serve)
		}
	}
	r.ChangeAllClients = benchkit.Summarise(all)
	return r, b.measureRestart(ctx, &r, fmt.Sprintf("bigt-%d", bigChanges-1))
}

// measureRestart restarts a follower and reads its first build of the
// workers in its state, once a new subscriber has the last of them.
func (b *bench) measureRestart(ctx context.Context, r *bigResult, last string) error {
	i := (b.cl.Leader(ctx) + 1) % len(b.cl.Coords)
	p := b.cl.Coords[i]
	p.Stop()
	if err := p.Start(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// Its xDS port opens once it has read its state.
	var s *subscriber
	err := benchkit.PollUntil(wctx, 20*time.Millisecond, 30*time.Second, func() (bool, error) {
		var err error
		s, err = newSubscriber(wctx, b.cl, i, len(b.subs))
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("subscribe at the restarted %s: %w", p.Name, err)
	}
	defer s.close()
	if _, err := s.wait(wctx, last); err != nil {
		return fmt.Errorf("the restarted %s: %w", p.Name, err)
	}
	now, err := b.readCoordinators(ctx)
	if err != nil {
		return err
	}
	r.Restarted, r.RestartBuildMS, r.RestartRSSBytes = p.Name, now[p.Name].full, now[p.Name].rss
	return nil
}

// bigChanges is how many single-worker changes are measured at --big.
const bigChanges = 5

// coordTimes are what a coordinator reports of its builds (ms), and its
// resident memory.
type coordTimes struct {
	build, serve, full float64 // the last build, its serving, the last build of every worker
	rss                int64
}

// readCoordinators reads what each coordinator reports of its builds.
func (b *bench) readCoordinators(ctx context.Context) (map[string]coordTimes, error) {
	out := map[string]coordTimes{}
	for i, p := range b.cl.Coords {
		c, closeConn, err := b.cl.Client(i)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := c.Routes(cctx, &pb.RoutesRequest{})
		cancel()
		closeConn()
		if err != nil {
			return nil, fmt.Errorf("routes of %s: %w", p.Name, err)
		}
		rss, err := rssOf(p.PID())
		if err != nil {
			return nil, err
		}
		out[p.Name] = coordTimes{build: float64(resp.BuildUs) / 1000, serve: float64(resp.ServeUs) / 1000, full: float64(resp.FullBuildUs) / 1000, rss: rss}
	}
	return out, nil
}

func rssOf(pid int) (int64, error) {
	for _, line := range strings.Split(benchkit.ReadFile(fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// ownCPUTime is the CPU time this process has used.
func ownCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTime is the CPU time the processes have used.
func cpuTime(ps []*devcluster.Proc) time.Duration {
	var ticks uint64
	for _, p := range ps {
		if st, err := procfs.ReadStat(p.PID()); err == nil {
			ticks += st.UTime + st.STime
		}
	}
	return time.Duration(ticks) * time.Second / procfs.ClockTicks
}
