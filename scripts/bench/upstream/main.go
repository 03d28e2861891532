// Command upstream benchmarks the import of Deephaven's configuration
// server workers: from the upstream's push of a new worker to dhvisor's
// xDS serving its route, on a real cluster of processes (test/devcluster:
// 3 dhcoord with envoy.xds.upstream set, an infra node, mutual TLS) and a
// Deephaven-like configuration server (test/cfgserverxds) in this process.
// It is what `make bench` runs after the xDS benchmark.
//
//	go run ./scripts/bench/upstream [--samples 200] [--workers 100] [--json FILE]
//
// Each sample adds one worker to the --workers the upstream serves and
// pushes the snapshot. Measured from just before the push until:
//
//   - baseline: an RDS subscriber of the configuration server itself (what
//     Envoy on Deephaven's stock bootstrap gets) has the route on the new
//     worker's envoy-prefix;
//   - a subscriber of a follower dhcoord's xDS (CDS and RDS as Envoy on
//     Deephaven's bootstrap, mutual TLS) has that route: the import, raft,
//     and the follower's build and push.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/dhvisor/dhvisor/coordinator/upstream"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
	"github.com/dhvisor/dhvisor/test/cfgserverxds"
	"github.com/dhvisor/dhvisor/test/devcluster"
)

// targetP99 is the issue's: a worker that appears upstream is routable
// through dhvisor's xDS within 100 ms p99 of the upstream's push.
const targetP99 = 100 * time.Millisecond

// sampleTimeout bounds one sample: a route not seen by then fails the run.
const sampleTimeout = 10 * time.Second

type results struct {
	Samples  int            `json:"samples"`
	Workers  int            `json:"workers"`
	Baseline benchkit.Stats `json:"baseline_configuration_server"`
	Dhvisor  benchkit.Stats `json:"dhvisor_follower"`
	Host     struct {
		CPUs      int    `json:"cpus"`
		LoadStart string `json:"load_start"`
		LoadEnd   string `json:"load_end"`
	} `json:"host"`
	Finished time.Time `json:"finished"`
}

func main() { os.Exit(run()) }

func run() int {
	var samples, workers int
	var jsonOut string
	var keep bool
	flag.IntVar(&samples, "samples", 200, "pushes measured")
	flag.IntVar(&workers, "workers", 100, "workers the upstream serves besides the one each push adds")
	flag.StringVar(&jsonOut, "json", "", "also write the raw numbers to this `file`")
	flag.BoolVar(&keep, "keep", false, "keep the temporary directory (configs and logs) even after a successful run")
	flag.Parse()
	if flag.NArg() > 0 || samples < 1 || workers < 0 || workers > 20000 {
		fmt.Fprintln(os.Stderr, "bench: --samples must be at least 1, --workers 0-20000, no arguments")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	root, tmp, err := benchkit.ClusterDirs("upstream")
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	res := &results{Samples: samples, Workers: workers}
	res.Host.CPUs, res.Host.LoadStart = runtime.NumCPU(), benchkit.Loadavg()
	err = measure(ctx, root, tmp, res)
	res.Host.LoadEnd = benchkit.Loadavg()
	res.Finished = time.Now().UTC()
	kept := benchkit.KeepOrRemove(tmp, err != nil || keep)
	return benchkit.Finish(ctx, func(w io.Writer) { report(w, res) }, res, jsonOut, err, kept)
}

func report(w io.Writer, r *results) {
	fmt.Fprintf(w, "\n== configuration server xDS import: upstream push to route served (3 coordinators, mutual TLS; %d CPUs, load %s -> %s) ==\n", r.Host.CPUs, r.Host.LoadStart, r.Host.LoadEnd)
	fmt.Fprintf(w, "%d pushes, each adding a worker to %d:\n", r.Samples, r.Workers)
	for _, l := range []struct {
		what string
		s    benchkit.Stats
	}{{"baseline: the configuration server's own RDS subscriber", r.Baseline}, {"dhvisor: a follower dhcoord's RDS subscriber", r.Dhvisor}} {
		fmt.Fprintf(w, "  %-58s n=%-4d p50 %-8s p90 %-8s p99 %-8s max %s\n", l.what, l.s.N, benchkit.FmtMS(l.s.P50), benchkit.FmtMS(l.s.P90), benchkit.FmtMS(l.s.P99), benchkit.FmtMS(l.s.Max))
	}
	fmt.Fprintf(w, "  target: p99 push -> route served by dhvisor < %s: %s\n", benchkit.FmtMS(benchkit.MS(targetP99)), benchkit.Verdict(r.Dhvisor.N > 0 && r.Dhvisor.P99 < benchkit.MS(targetP99)))
}

func measure(ctx context.Context, root, tmp string, res *results) error {
	cs, err := cfgserverxds.Start("127.0.0.1:0", cfgserverxds.Service{Name: "web_api_service", Host: "127.0.0.1", Port: 8123})
	if err != nil {
		return err
	}
	defer cs.Stop()
	c, err := devcluster.Start(devcluster.Options{Dir: tmp, Bin: filepath.Join(root, "bin"), Coordinators: 3,
		Nodes: []devcluster.NodeSpec{{Name: "infra", Roles: []string{"infra"}}},
		XDS:   fmt.Sprintf("upstream: {address: %q, plaintext: true}", cs.Addr())})
	if err != nil {
		return err
	}
	defer c.Stop()
	if err := c.WaitReady(ctx, 60*time.Second); err != nil {
		return err
	}
	follower := (c.Leader(ctx) + 1) % 3
	tc, err := tlsutil.ClientConfig(tlsutil.Files{CA: filepath.Join(c.TLS, "ca.pem"), Cert: filepath.Join(c.TLS, "operator-tester.pem"), Key: filepath.Join(c.TLS, "operator-tester-key.pem")}, tlsutil.RoleCoordinator)
	if err != nil {
		return err
	}
	base, err := watch(ctx, cs.Addr(), insecure.NewCredentials())
	if err != nil {
		return err
	}
	defer base.close()
	dh, err := watch(ctx, c.XDSAddrs[follower], credentials.NewTLS(tc))
	if err != nil {
		return err
	}
	defer dh.close()

	set := make([]cfgserverxds.Worker, 0, res.Workers+res.Samples)
	for i := range res.Workers {
		set = append(set, cfgserverxds.Worker{ID: fmt.Sprintf("base-%d", i), Prefix: fmt.Sprintf("/worker/base %d", i), Host: "127.0.0.1", Port: 30000 + i%10000})
	}
	var baseMS, dhMS []float64
	// The first push also waits for the import to go live.
	for i := -1; i < res.Samples; i++ {
		w := cfgserverxds.Worker{ID: fmt.Sprintf("new-%d", i+1), Prefix: fmt.Sprintf("/worker/new %d", i+1), Host: "127.0.0.1", Port: 20000 + (i+1)%10000}
		set = append(set, w)
		start := time.Now()
		if err := cs.Set(set); err != nil {
			return err
		}
		timeout := sampleTimeout
		if i < 0 {
			timeout = 60 * time.Second
		}
		b, errB := base.wait(ctx, w.Prefix, start, timeout)
		d, errD := dh.wait(ctx, w.Prefix, start, timeout)
		if errB != nil || errD != nil {
			return fmt.Errorf("push %d: configuration server subscriber: %v; dhvisor subscriber: %v", i+1, errB, errD)
		}
		if i >= 0 {
			baseMS, dhMS = append(baseMS, b), append(dhMS, d)
		}
	}
	res.Baseline, res.Dhvisor = benchkit.Summarise(baseMS), benchkit.Summarise(dhMS)
	return nil
}

// watcher is a CDS and RDS subscriber, as Envoy on Deephaven's bootstrap,
// that notes when each envoy-prefix first appears in its routes.
type watcher struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	seen    map[string]time.Time
	changed chan struct{}
}

func watch(ctx context.Context, addr string, creds credentials.TransportCredentials) (*watcher, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{conn: conn, cancel: cancel, done: make(chan struct{}), seen: map[string]time.Time{}, changed: make(chan struct{})}
	events := make(chan upstream.Event)
	sub := &upstream.Subscription{Conn: conn, RouteConfig: cfgserverxds.RouteConfigName, Node: &core.Node{Id: "bench-envoy", Cluster: "deephaven", UserAgentName: "envoy"}}
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		_ = sub.Run(ctx, events)
		cancel()
	}()
	go func() {
		defer close(w.done)
		defer func() { <-subDone }()
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-events:
				if ev.Resources == nil {
					continue
				}
				now := time.Now()
				w.mu.Lock()
				for _, rc := range ev.Resources.Routes {
					for _, p := range headerValues(rc) {
						if _, ok := w.seen[p]; !ok {
							w.seen[p] = now
						}
					}
				}
				close(w.changed)
				w.changed = make(chan struct{})
				w.mu.Unlock()
			}
		}
	}()
	return w, nil
}

func headerValues(rc *route.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			for _, h := range r.GetMatch().GetHeaders() {
				if h.GetName() == upstream.PrefixHeader && h.GetStringMatch().GetExact() != "" {
					out = append(out, h.GetStringMatch().GetExact())
				}
			}
		}
	}
	return out
}

// wait returns the milliseconds from start until prefix was seen.
func (w *watcher) wait(ctx context.Context, prefix string, start time.Time, timeout time.Duration) (float64, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		at, ok := w.seen[prefix]
		changed := w.changed
		w.mu.Unlock()
		if ok {
			return benchkit.MS(at.Sub(start)), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			return 0, fmt.Errorf("route on envoy-prefix %q not seen within %s", prefix, timeout)
		case <-changed:
		case <-w.done:
			return 0, fmt.Errorf("the subscription ended before envoy-prefix %q was seen", prefix)
		}
	}
}

func (w *watcher) close() {
	w.cancel()
	<-w.done
	_ = w.conn.Close()
}
