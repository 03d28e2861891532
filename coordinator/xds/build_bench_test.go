package xds

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

func BenchmarkBuild100(b *testing.B)   { benchmarkBuild(b, 100) }
func BenchmarkBuild1000(b *testing.B)  { benchmarkBuild(b, 1000) }
func BenchmarkBuild10000(b *testing.B) { benchmarkBuild(b, 10000) }

// benchmarkBuild measures building n workers' resources, in the one
// flavour a site's clients usually ask for (Envoy's classic) and in both:
// from nothing (a coordinator's first build), and after one worker moved
// to another port (every build after that).
func benchmarkBuild(b *testing.B, n int) {
	m := scaleModel(n)
	for name, fs := range map[string][]Flavour{"classic": {Classic}, "both": flavours} {
		b.Run(name+"/cold", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				bl := builder{flavours: fs}
				if _, err := bl.build(canonical(m)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/one-worker-changed", func(b *testing.B) {
			bl := builder{flavours: fs}
			if _, err := bl.build(canonical(m)); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				m.Workers[i%n].Port = uint32(30000 + i%30000)
				if _, err := bl.build(canonical(m)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUpdateToClients measures a worker's registration: from Update
// to the moment each of ten subscribed clients has received the new
// clusters, endpoints and routes (p50 and p99 over clients and changes),
// with the bytes the server sent for each change, in state-of-the-world
// (go-control-plane's ADS client, a stream per type) and delta (one delta
// ADS stream per client). The clients run in a child process, so that
// heap-MB and rss-MB (peak) are the server's; they share the machine's
// cores with it all the same.
func BenchmarkUpdateToClients(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		for _, mode := range []string{"sotw", "delta"} {
			b.Run(fmt.Sprintf("%s/workers=%d", mode, n), func(b *testing.B) { benchmarkUpdate(b, n, mode) })
		}
	}
}

const benchClients = 10

var benchTypes = []string{resource.ClusterType, resource.EndpointType, resource.RouteType}

type arrival struct {
	client int
	at     time.Time
}

func benchmarkUpdate(b *testing.B, workers int, mode string) {
	var sent atomic.Int64
	s, addr := startServer(b, grpc.StatsHandler(bytesSent{&sent}))
	m := scaleModel(workers)
	if err := s.Update(m); err != nil {
		b.Fatal(err)
	}
	arrivals := startBenchClients(b, addr, mode)
	// wait gathers one response per client and type, and says when each
	// client had all of its own.
	wait := func() []time.Time {
		last := make([]time.Time, benchClients)
		for range benchClients * len(benchTypes) {
			a, ok := <-arrivals
			if !ok {
				b.Fatal("the clients are gone")
			}
			if a.at.After(last[a.client]) {
				last[a.client] = a.at
			}
		}
		return last
	}
	wait() // the first snapshot

	var latencies []time.Duration
	var changes int64
	before, cpuBefore := sent.Load(), cpuTime()
	for b.Loop() {
		changes++
		// A worker registers where the last one registered before.
		m.Workers = append(m.Workers[:workers], Worker{
			Name: fmt.Sprintf("new_%d", changes), Prefix: fmt.Sprintf("/worker/new_%d", changes),
			Host: "10.200.0.1", Port: uint32(changes%50000 + 1), Node: "query0", HTTP2: true,
		})
		start := time.Now()
		if err := s.Update(m); err != nil {
			b.Fatal(err)
		}
		for _, at := range wait() {
			latencies = append(latencies, at.Sub(start))
		}
	}
	b.StopTimer()
	cpu := cpuTime() - cpuBefore
	time.Sleep(50 * time.Millisecond) // the last responses' stats
	perChange := float64(sent.Load()-before) / float64(changes)

	slices.Sort(latencies)
	pct := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(latencies)))) - 1
		return float64(latencies[max(i, 0)]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	// The server's CPU time per change: unlike the latencies, other
	// processes on the machine do not change it.
	b.ReportMetric(float64(cpu)/float64(time.Millisecond)/float64(changes), "cpu-ms/change")
	b.ReportMetric(perChange, "B/change")
	b.ReportMetric(perChange/benchClients, "B/change/client")
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
	if rss, err := peakRSS(); err == nil {
		b.ReportMetric(float64(rss)/(1<<20), "rss-MB")
	}
}

// startBenchClients runs TestBenchClients in a child process until the
// benchmark ends, and passes on when each client got a response.
func startBenchClients(b *testing.B, addr, mode string) <-chan arrival {
	cmd := exec.Command(os.Args[0], "-test.run=^TestBenchClients$")
	cmd.Env = append(os.Environ(), benchClientsEnv+"="+mode+" "+addr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	arrivals := make(chan arrival, benchClients*len(benchTypes))
	done := make(chan struct{})
	go func() {
		defer close(arrivals)
		lines := bufio.NewScanner(stdout)
		for lines.Scan() {
			var a arrival
			var ns int64
			if _, err := fmt.Sscanf(lines.Text(), "arrival %d %d", &a.client, &ns); err != nil {
				continue // the test framework's own lines
			}
			a.at = time.Unix(0, ns)
			select {
			case arrivals <- a:
			case <-done:
			}
		}
	}()
	b.Cleanup(func() {
		close(done)
		_ = stdin.Close() // tells the clients to stop
		_ = cmd.Wait()
	})
	return arrivals
}

const benchClientsEnv = "DHVISOR_XDS_BENCH_CLIENTS"

// TestBenchClients is the child process of BenchmarkUpdateToClients: ten
// xDS clients of the server its environment names, which print when each
// response arrives and stop when their standard input closes.
func TestBenchClients(t *testing.T) {
	mode, addr, ok := strings.Cut(os.Getenv(benchClientsEnv), " ")
	if !ok {
		t.Skip("the child process of BenchmarkUpdateToClients")
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	var mu sync.Mutex
	arrived := func(c int) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf("arrival %d %d\n", c, time.Now().UnixNano())
	}
	for c := range benchClients {
		conn := dial(t, addr)
		node := &core.Node{Id: fmt.Sprintf("bench-%d", c), UserAgentName: "gRPC Go"}
		if mode == "delta" {
			stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, typ := range benchTypes {
				if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
					t.Fatal(err)
				}
			}
			wg.Go(func() {
				for {
					resp, err := stream.Recv()
					if err != nil {
						return
					}
					arrived(c)
					if stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}) != nil {
						return
					}
				}
			})
			continue
		}
		for _, typ := range benchTypes {
			client := sotwclient.NewADSClient(ctx, node, typ)
			if err := client.InitConnect(conn); err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				for {
					if _, err := client.Fetch(); err != nil {
						return
					}
					arrived(c)
					if client.Ack() != nil {
						return
					}
				}
			})
		}
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// bytesSent counts what a gRPC server writes.
type bytesSent struct{ n *atomic.Int64 }

func (h bytesSent) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (h bytesSent) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (h bytesSent) HandleConn(context.Context, stats.ConnStats) {}
func (h bytesSent) HandleRPC(_ context.Context, s stats.RPCStats) {
	if p, ok := s.(*stats.OutPayload); ok {
		h.n.Add(int64(p.WireLength))
	}
}

// cpuTime is the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSS is the process's peak resident set (VmHWM).
func peakRSS() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}
