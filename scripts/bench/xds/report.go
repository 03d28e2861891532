package main

import (
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/dhvisor/dhvisor/scripts/bench/benchkit"
)

func line(w io.Writer, what string, s benchkit.Stats) {
	fmt.Fprintf(w, "  %-46s n=%-4d p50 %-8s p90 %-8s p99 %-8s max %s\n", what, s.N, benchkit.FmtMS(s.P50), benchkit.FmtMS(s.P90), benchkit.FmtMS(s.P99), benchkit.FmtMS(s.Max))
}

func report(w io.Writer, r *results) {
	fmt.Fprintf(w, "\n== dhcoord xDS: worker registration to Envoy update (3 coordinators, mutual TLS; %d CPUs, load %s -> %s) ==\n", r.Host.CPUs, r.Host.LoadStart, r.Host.LoadEnd)
	for _, s := range r.Sizes {
		fmt.Fprintf(w, "\n%d workers, %d registrations through the agent's HTTP endpoint, %d ADS subscribers:\n", s.Workers, r.Trials, r.Clients)
		line(w, "agent answered (committed in raft)", s.HTTP)
		line(w, "update received, each subscriber", s.PerClient)
		line(w, "  subscribers of the raft leader", s.LeaderClients)
		line(w, "  subscribers of the followers", s.FollowerClients)
		line(w, fmt.Sprintf("update received by all %d subscribers", r.Clients), s.AllClients)
		line(w, "grpc-go xDS client routes the new worker", s.GRPC)
		if s.GRPCNotRouted > 0 {
			fmt.Fprintf(w, "  grpc-go had not routed %d of %d new workers within %s\n", s.GRPCNotRouted, s.GRPC.N+s.GRPCNotRouted, grpcCap)
		}
		line(w, "delta-xDS subscriber received it", s.Delta)
		fmt.Fprintf(w, "  bytes sent per change: state of the world %d, delta %d\n", s.SotWBytes, s.DeltaBytes)
		fmt.Fprintf(w, "  CPU per change: the 3 coordinators %s, the agents %s, the measuring clients %s\n", benchkit.FmtMS(s.CoordCPUMS), benchkit.FmtMS(s.AgentCPUMS), benchkit.FmtMS(s.ClientCPUMS))
		if s.Workers == 1000 {
			fmt.Fprintf(w, "  target: p99 registration -> update at %d clients < %s: %s\n", r.Clients, benchkit.FmtMS(benchkit.MS(targetUpdateP99)), benchkit.Verdict(s.PerClient.P99 < benchkit.MS(targetUpdateP99)))
		}
	}
	if b := r.Big; b != nil {
		fmt.Fprintf(w, "\n%d workers registered at once: every subscriber had them after %s\n", b.Workers, benchkit.FmtMS(b.AllClients))
		worstBuild, worstRSS := 0.0, int64(0)
		for _, name := range slices.Sorted(maps.Keys(b.BuildMS)) {
			fmt.Fprintf(w, "  %s: snapshot build %s (then handed to the clients in %s), RSS %d MB\n", name, benchkit.FmtMS(b.BuildMS[name]), benchkit.FmtMS(b.ServeMS[name]), b.RSSBytes[name]>>20)
			worstBuild, worstRSS = max(worstBuild, b.BuildMS[name]), max(worstRSS, b.RSSBytes[name])
		}
		worstChange := 0.0
		for _, name := range slices.Sorted(maps.Keys(b.ChangeBuildMS)) {
			fmt.Fprintf(w, "  %s: snapshot build after one worker replaced, slowest of %d: %s (handed to the clients in %s)\n", name, bigChanges, benchkit.FmtMS(b.ChangeBuildMS[name]), benchkit.FmtMS(b.ChangeServeMS[name]))
			worstChange = max(worstChange, b.ChangeBuildMS[name])
		}
		line(w, "one worker replaced -> all subscribers updated", b.ChangeAllClients)
		fmt.Fprintf(w, "  %s restarted (the others idle): its first build %s, RSS %d MB\n", b.Restarted, benchkit.FmtMS(b.RestartBuildMS), b.RestartRSSBytes>>20)
		fmt.Fprintf(w, "  target: build < %s: all registered at once %s, restarted coordinator %s, after a change %s; RSS < %d MB: %s\n", benchkit.FmtMS(benchkit.MS(targetBuildBig)),
			benchkit.Verdict(worstBuild < benchkit.MS(targetBuildBig)), benchkit.Verdict(b.RestartBuildMS < benchkit.MS(targetBuildBig)),
			benchkit.Verdict(worstChange < benchkit.MS(targetBuildBig)), targetRSSBig>>20, benchkit.Verdict(max(worstRSS, b.RestartRSSBytes) < targetRSSBig))
	}
}
