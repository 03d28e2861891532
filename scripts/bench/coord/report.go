package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

type results struct {
	Started  time.Time       `json:"started"`
	Finished time.Time       `json:"finished,omitzero"`
	Host     hostInfo        `json:"host"`
	Nodes    []string        `json:"nodes"`
	Failover *failoverResult `json:"failover,omitempty"`
	Writes   *writeResult    `json:"writes,omitempty"`
	Ops      *opsResult      `json:"orchestration,omitempty"`
	Targets  []targetVerdict `json:"targets"`
}

type hostInfo struct {
	LoadStart string `json:"load1_start"`
	LoadEnd   string `json:"load1_end"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	Dhcoord   string `json:"dhcoord"`
}

type targetVerdict struct {
	What    string  `json:"what"`
	LimitMS float64 `json:"limit_ms"`
	ValueMS float64 `json:"value_ms"`
	Met     bool    `json:"met"`
	Note    string  `json:"note,omitempty"`
}

// report prints the tables and fills in r.Targets, so that the JSON written
// afterwards carries the same verdicts.
func report(w io.Writer, r *results) {
	fmt.Fprintf(w, "\n== dhcoord: leader failover, write commit latency, orchestration overhead ==\n")
	fmt.Fprintf(w, "host: %d CPUs, Linux %s; %s; 1-min load %s at start, %s at end (other work on the host is noise)\n",
		r.Host.CPUs, r.Host.Kernel, r.Host.Dhcoord, r.Host.LoadStart, r.Host.LoadEnd)
	fmt.Fprintf(w, "cluster: %d dhcoord + %d dhagent on 127.0.0.1 (%s), stand-in services, mutual TLS;\n", coordinators, len(r.Nodes), strings.Join(r.Nodes, ", "))
	fmt.Fprintf(w, "  raft at hashicorp/raft's defaults (1 s heartbeat and election timeouts)\n")
	fmt.Fprintf(w, "percentiles are nearest-rank (each one a measured sample); with fewer than 100 samples p99 is the max\n")
	if f := r.Failover; f != nil && f.Kills > 0 {
		reportFailover(w, f)
	}
	if wr := r.Writes; wr != nil {
		reportWrites(w, wr)
	}
	if o := r.Ops; o != nil && o.Ops > 0 {
		reportOps(w, o)
	}
	fmt.Fprintln(w)
	target := func(what string, limit time.Duration, v float64, ok bool, note string) {
		met := ok && v < ms(limit)
		r.Targets = append(r.Targets, targetVerdict{What: what, LimitMS: ms(limit), ValueMS: v, Met: met, Note: note})
		if note != "" {
			note = "; " + note
		}
		fmt.Fprintf(w, "  target: %s < %s ... %s (%s%s)\n", what, limit, verdict(met), fmtMS(v), note)
	}
	if f := r.Failover; f != nil && f.Kills > 0 {
		note := ""
		if f.TimedOut > 0 {
			note = fmt.Sprintf("%d of %d kills had no write within %s", f.TimedOut, f.Kills, failoverCap)
		}
		target("leader kill -9 to a committed write, p99", targetFailoverP99, f.Write.P99, f.Write.N > 0 && f.TimedOut == 0, note)
	}
	if o := r.Ops; o != nil && o.Overhead.N > 0 {
		note := ""
		if len(o.Problems) > 0 {
			note = fmt.Sprintf("%d operations or steps not clean, see above", len(o.Problems))
		}
		target("orchestration overhead per step (service OK to next step started), p99", targetOverheadP99, o.Overhead.P99, true, note)
	}
}

func row(w io.Writer, label string, s stats) {
	fmt.Fprintf(w, "  %-56s %4d %9s %9s %9s %9s %9s\n", label, s.N, fmtMS(s.P50), fmtMS(s.P90), fmtMS(s.P99), fmtMS(s.Max), fmtMS(s.Mean))
}

func header(w io.Writer, label string) {
	fmt.Fprintf(w, "  %-56s %4s %9s %9s %9s %9s %9s\n", label, "n", "p50", "p90", "p99", "max", "mean")
}

func reportFailover(w io.Writer, f *failoverResult) {
	fmt.Fprintf(w, "\n(1) Leader failover: kill -9 of the raft leader to the first committed write\n")
	fmt.Fprintf(w, "  %d kills, %.0fs; the write (Join of a surviving voter with its own addresses: a configuration entry and a\n", f.Kills, f.WallS)
	fmt.Fprintf(w, "  peer record, both committed) sent through a surviving replica, alternating between the two, every %s with\n", attemptGap)
	fmt.Fprintf(w, "  %s per attempt; after each, the killed replica restarted and caught up, then a %s pause\n", attemptTimeout, f.Settle)
	header(w, "")
	row(w, "kill -> write committed  <- target", f.Write)
	row(w, "replica restarted -> voter again, caught up", f.CatchUp)
	fmt.Fprintf(w, "  a write committed within %s after %d of %d kills; %d timed out\n", failoverCap, f.Elected, f.Kills, f.TimedOut)
	direct, fwd := 0, 0
	errs := map[string]int{}
	first, last := map[string][]float64{}, map[string][]float64{}
	attempts := 0
	for _, s := range f.Samples {
		if s.Forwarded {
			fwd++
		} else if !s.TimedOut {
			direct++
		}
		attempts += s.Attempts
		for k, v := range s.Errors {
			errs[k] += v.N
			first[k], last[k] = append(first[k], v.FirstMS), append(last[k], v.LastMS)
		}
	}
	fmt.Fprintf(w, "  the replica written through became the leader %d times, forwarded to the new leader %d times\n", direct, fwd)
	fmt.Fprintf(w, "  %d attempts in all; the failed ones said (with the median time after the kill each answer was first and last seen):\n", attempts)
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(errs[b], errs[a]), strings.Compare(a, b)) })
	for _, k := range keys {
		fmt.Fprintf(w, "    %5d  %s .. %s  %s\n", errs[k], fmtMS(summarise(first[k]).P50), fmtMS(summarise(last[k]).P50), k)
	}
	slow := slices.Clone(f.Samples)
	slices.SortFunc(slow, func(a, b killSample) int { return cmp.Compare(b.MS, a.MS) })
	fmt.Fprintf(w, "  slowest kills:\n")
	for _, s := range slow[:min(3, len(slow))] {
		fmt.Fprintf(w, "    %s: %s killed, written via %s, committed by %s, %d attempts\n", fmtMS(s.MS), s.Killed, s.Via, s.NewLeader, s.Attempts)
	}
}

func reportWrites(w io.Writer, wr *writeResult) {
	fmt.Fprintf(w, "\n(2) Write commit latency (steady cluster, the same write, sent alternately; client-side round trip)\n")
	header(w, "")
	row(w, fmt.Sprintf("to the leader (%s) directly", wr.Leader), wr.Direct)
	row(w, fmt.Sprintf("to a follower (%s), forwarded to the leader", wr.Follower), wr.Forwarded)
	if len(wr.Errors) > 0 {
		fmt.Fprintf(w, "  failed writes: %v\n", wr.Errors)
	}
}

func reportOps(w io.Writer, o *opsResult) {
	fmt.Fprintf(w, "\n(3) Orchestration overhead: `restart all` (min_healthy_time 1 ms) x %d, %d stages / %d steps each:\n", o.Ops, o.Stages, o.Steps)
	for i, l := range o.Plan {
		fmt.Fprintf(w, "    stage %d: %s\n", i+1, l)
	}
	fmt.Fprintf(w, "  per transition between consecutive stages (%d in all); the coordinator records step times in whole\n", o.Transitions)
	fmt.Fprintf(w, "  milliseconds (its own clock), so every figure here is +-1 ms:\n")
	header(w, "")
	row(w, "stage's last OK -> next step started - 1 ms  <- target", o.Overhead)
	row(w, "  of which: last OK -> stage's last step done", o.OKToDone)
	row(w, "  of which: last step done -> next step started", o.DoneToNext)
	fmt.Fprintf(w, "  (OK -> done holds the hold's commit, the 1 ms hold with its two agent status calls, and the done commit;\n")
	fmt.Fprintf(w, "  done -> started the engine reading the next stage and committing its steps as running)\n")
	fmt.Fprintf(w, "  for context, per operation:\n")
	row(w, "wall time (StartOp sent -> seen ended)", o.Wall)
	row(w, "sum over stages of the slowest step", o.SlowestSum)
	var slow []string
	for _, r := range o.Samples {
		slow = append(slow, r.Slow...)
	}
	if len(slow) > 0 {
		fmt.Fprintf(w, "  %d of %d transitions took %s or more:\n", len(slow), o.Transitions, targetOverheadP99)
		for _, l := range slow {
			fmt.Fprintf(w, "    %s\n", l)
		}
	}
	if len(o.HoldFalls) > 0 {
		total := 0
		keys := make([]string, 0, len(o.HoldFalls))
		for k, v := range o.HoldFalls {
			keys = append(keys, k)
			total += v
		}
		slices.SortFunc(keys, func(a, b string) int {
			return cmp.Or(cmp.Compare(o.HoldFalls[b], o.HoldFalls[a]), strings.Compare(a, b))
		})
		fmt.Fprintf(w, "  the leaders logged \"service fell during the health hold\" %d times (their gossiped view not OK while the agent\n", total)
		fmt.Fprintf(w, "  answered OK), by node/service and the gossiped state:\n")
		for _, k := range keys[:min(8, len(keys))] {
			fmt.Fprintf(w, "    %7d  %s\n", o.HoldFalls[k], k)
		}
	}
	if o.NegativeSeen > 0 {
		fmt.Fprintf(w, "  %d transitions came out negative (millisecond rounding)\n", o.NegativeSeen)
	}
	if len(o.Problems) == 0 {
		fmt.Fprintf(w, "  every operation done, every step done at its first attempt (Step.Attempts = 1)\n")
	} else {
		fmt.Fprintf(w, "  NOT clean:\n")
		for _, p := range o.Problems {
			fmt.Fprintf(w, "    %s\n", p)
		}
	}
}
