package main

import (
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
	Crash    *crashResult    `json:"crash,omitempty"`
	Detect   []*detectResult `json:"detect,omitempty"`
	Soak     *soakResult     `json:"soak,omitempty"`
	Targets  []targetVerdict `json:"targets"`
}

type hostInfo struct {
	LoadStart string `json:"load1_start"`
	LoadEnd   string `json:"load1_end"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	Dhagent   string `json:"dhagent"`
}

type targetVerdict struct {
	What     string  `json:"what"`
	LimitMS  float64 `json:"limit_ms"`
	ValueMS  float64 `json:"value_ms"`
	Met      bool    `json:"met"`
	Optional bool    `json:"hoped_only,omitempty"`
}

// report prints the tables and fills in r.Targets, so that the JSON written
// afterwards carries the same verdicts.
func report(w io.Writer, r *results) {
	fmt.Fprintf(w, "\n== dhagent gossip: crash visibility, failure detection ==\n")
	fmt.Fprintf(w, "host: %d CPUs, Linux %s; %s; 1-min load %s at start, %s at end (other work on the host is noise)\n",
		r.Host.CPUs, r.Host.Kernel, r.Host.Dhagent, r.Host.LoadStart, r.Host.LoadEnd)
	fmt.Fprintf(w, "percentiles are nearest-rank (each one a measured sample); with fewer than 100 samples p99 is the max\n")
	target := func(what string, limit time.Duration, v float64, hoped bool) {
		met := v < ms(limit)
		r.Targets = append(r.Targets, targetVerdict{What: what, LimitMS: ms(limit), ValueMS: v, Met: met, Optional: hoped})
		word := "target"
		if hoped {
			word = "hoped "
		}
		fmt.Fprintf(w, "  %s: %s < %s ... %s (%s)\n", word, what, limit, verdict(met), fmtMS(v))
	}
	if c := r.Crash; c != nil && c.Kills > 0 {
		reportCrash(w, c)
		if c.LastOK.N > 0 {
			target("crash on A visible on every other node, p99", targetCrashP99, c.LastOK.P99, false)
			target("crash on A visible on every other node, p99", hopedCrashP99, c.LastOK.P99, true)
		}
	}
	if len(r.Detect) > 0 {
		reportDetect(w, r.Detect)
		for _, d := range r.Detect {
			if d.Last.N == 0 {
				continue
			}
			if d.Timing == "DefaultTiming" {
				target(fmt.Sprintf("DefaultTiming, %d members, dead on every peer, p99", d.Members), targetDetectP99, d.Last.P99, false)
			} else if d.Members <= lanReferenceNodes {
				in := d.Last.P99 >= ms(lanReferenceLow) && d.Last.P99 <= ms(lanReferenceHigh)
				fmt.Fprintf(w, "  reference: memberlist LAN, %d members, p99 %s (DESIGN.md's figure for 3-5 nodes %s-%s: %s)\n", d.Members, fmtMS(d.Last.P99), lanReferenceLow, lanReferenceHigh,
					map[bool]string{true: "within", false: "outside"}[in])
			}
		}
		for _, d := range r.Detect {
			if len(d.FalseDeaths) > 0 || len(d.Anomalies) > 0 {
				fmt.Fprintf(w, "  %d members, %s: %d live members reported dead:\n", d.Members, d.Timing, len(d.FalseDeaths))
				for _, f := range d.FalseDeaths {
					fmt.Fprintf(w, "    at %.1fs %s saw %s %s\n", f.AtS, f.Observer, f.Subject, f.State)
				}
				for _, a := range d.Anomalies {
					fmt.Fprintf(w, "    anomaly: %s\n", a)
				}
			}
		}
	}
	if s := r.Soak; s != nil {
		reportSoak(w, s)
	}
}

func row(w io.Writer, label string, s stats) {
	fmt.Fprintf(w, "  %-44s %4d %9s %9s %9s %9s %9s\n", label, s.N, fmtMS(s.P50), fmtMS(s.P90), fmtMS(s.P99), fmtMS(s.Max), fmtMS(s.Mean))
}

func header(w io.Writer, label string) {
	fmt.Fprintf(w, "  %-44s %4s %9s %9s %9s %9s %9s\n", label, "n", "p50", "p90", "p99", "max", "mean")
}

func reportCrash(w io.Writer, c *crashResult) {
	fmt.Fprintf(w, "\n(a) Crash on node A to visible on node B\n")
	fmt.Fprintf(w, "  %d real dhagents on 127.0.0.1, one stand-in each: %s\n", c.Nodes, c.Config)
	fmt.Fprintf(w, "  %d SIGKILLs of the service of a rotating node A, each after the whole cluster agreed and a random 0-%s wait;\n", c.Kills, c.JitterMax)
	fmt.Fprintf(w, "  every node's Cluster API polled over its unix socket, one answer every %s per node on average\n", fmtMS(c.PollMean))
	fmt.Fprintf(w, "  from the SIGKILL until a node's Cluster API shows A's service with restarts+1, a new pid, and OK:\n")
	header(w, "")
	row(w, "last other node (all four see it)  <- target", c.LastOK)
	row(w, "first other node", c.FirstOK)
	row(w, "A itself (its own Cluster view)", c.LocalOK)
	row(w, "A itself shows restarts+1, any state", c.LocalRest)
	row(w, "last other node, by its own clock", c.LastLearn)
	row(w, "last other node shows restarts+1, any state", c.LastRest)
	row(w, "gossip's share (last other node - A itself)", c.Gossip)
	if c.Misses > 0 {
		fmt.Fprintf(w, "  %d kills were NOT seen everywhere within %s (left out of the table; see the JSON)\n", c.Misses, crashTimeout)
	}
}

func reportDetect(w io.Writer, ds []*detectResult) {
	fmt.Fprintf(w, "\n(b) kill -9 of an agent to \"dead\" on all peers\n")
	fmt.Fprintf(w, "  members of internal/gossip in one process on 127.0.0.1 (encrypted, one service list each); a random member is\n")
	fmt.Fprintf(w, "  shut down without leaving, after the cluster agreed, a settle pause and a random phase of one probe interval;\n")
	fmt.Fprintf(w, "  a fresh member then replaces it. Time from Shutdown() until each other member's View says dead\n")
	fmt.Fprintf(w, "  (seen through Subscribe, so to the moment the view changed):\n")
	fmt.Fprintf(w, "  %-8s %-15s %4s %9s %9s %9s %9s %9s   %-12s %s\n", "members", "timing", "n", "p50", "p90", "p99", "max", "mean", "first p50", "false deaths")
	for _, d := range ds {
		fmt.Fprintf(w, "  %-8d %-15s %4d %9s %9s %9s %9s %9s   %-12s %d\n", d.Members, d.Timing, d.Last.N,
			fmtMS(d.Last.P50), fmtMS(d.Last.P90), fmtMS(d.Last.P99), fmtMS(d.Last.Max), fmtMS(d.Last.Mean), fmtMS(d.First.P50), len(d.FalseDeaths))
	}
	fmt.Fprintf(w, "  (the columns p50..mean are for the LAST member to say dead; first p50: the first member to say so)\n")
	seen := map[string]bool{}
	for _, d := range ds {
		if !seen[d.Timing] {
			seen[d.Timing] = true
			fmt.Fprintf(w, "  %-15s %s\n", d.Timing+":", d.Params)
		}
	}
	for _, d := range ds {
		if d.Misses > 0 {
			fmt.Fprintf(w, "  %d members, %s: %d kills NOT seen dead everywhere within %s\n", d.Members, d.Timing, d.Misses, detectTimeout)
		}
	}
	var walls []string
	concurrent := false
	for _, d := range ds {
		walls = append(walls, fmt.Sprintf("%d/%s %.0fs", d.Members, d.Timing, d.WallS))
		concurrent = concurrent || d.Concurrent
	}
	if concurrent {
		fmt.Fprintf(w, "  the two timings of one size ran side by side in this process (--serial to run them apart)\n")
	}
	fmt.Fprintf(w, "  rejoin of a fresh member until all agree, p50: ")
	var js []string
	for _, d := range ds {
		js = append(js, fmt.Sprintf("%d/%s %s", d.Members, d.Timing, fmtMS(d.Join.P50)))
	}
	fmt.Fprintf(w, "%s\n  wall time: %s\n", strings.Join(js, ", "), strings.Join(walls, ", "))
}

func reportSoak(w io.Writer, s *soakResult) {
	fmt.Fprintf(w, "\n(c) Soak: %d real dhagents, each in its own network namespace, %g%% packet loss on every node's eth0, %s\n", s.Nodes, s.LossPct, s.Duration)
	if s.LossMethod == lossIptables {
		fmt.Fprintf(w, "  this kernel has no netem (CONFIG_NET_SCH_NETEM unset): the loss was applied by `iptables -A OUTPUT -o eth0 -m statistic\n")
		fmt.Fprintf(w, "  --mode random --probability %g -j DROP` in every node's namespace instead (same interface, same direction, same rate)\n", s.LossPct/100)
	}
	if s.Sent > 0 {
		fmt.Fprintf(w, "  loss really applied: %d of %d packets leaving the nodes' eth0 dropped (%.2f%%)\n", s.Dropped, s.Dropped+s.Sent, s.MeasuredLossPct)
	}
	if s.Sampled != "" && s.Sampled != s.Duration {
		fmt.Fprintf(w, "  INTERRUPTED: sampled for %s only\n", s.Sampled)
	}
	fmt.Fprintf(w, "  every node's Cluster view read every %s: %d rounds, %d views read, %d failed reads\n", s.SampleEvery, s.Rounds, s.Views, s.ViewErrors)
	fmt.Fprintf(w, "  rounds in which some node reported a live node SUSPECT (a local hint):   %d (%d observations)\n", s.SuspectRounds, s.SuspectObs)
	fmt.Fprintf(w, "  rounds in which some node reported a live node DEAD (a failure):         %d (%d observations)\n", s.DeadRounds, s.DeadObs)
	fmt.Fprintf(w, "  alive nodes' services reported other than OK: %d observations\n", s.ServiceNotOK)
	fmt.Fprintf(w, "  from the agents' logs (catches what is shorter than a sampling period):\n")
	for _, p := range soakLogPatterns {
		fmt.Fprintf(w, "    %-75s %d\n", p.key, s.LogCounts[p.key])
	}
	eps := slices.Clone(s.Episodes)
	slices.SortFunc(eps, func(a, b soakEpisode) int {
		switch {
		case a.StartS < b.StartS:
			return -1
		case a.StartS > b.StartS:
			return 1
		}
		return strings.Compare(a.Observer+a.Subject, b.Observer+b.Subject)
	})
	var deaths, suspects []soakEpisode
	for _, e := range eps {
		if e.State == "suspect" {
			suspects = append(suspects, e)
		} else {
			deaths = append(deaths, e)
		}
	}
	end := func(e soakEpisode) string {
		if e.EndS < 0 {
			return "still at the end"
		}
		return fmt.Sprintf("alive again at %.1fs (%d rounds)", e.EndS, e.Rounds)
	}
	if len(deaths) == 0 {
		fmt.Fprintf(w, "  false deaths: none\n")
	} else {
		fmt.Fprintf(w, "  timeline of false deaths:\n")
		for _, e := range deaths {
			fmt.Fprintf(w, "    %7.1fs %s reported %s %s; %s\n", e.StartS, e.Observer, e.Subject, e.State, end(e))
		}
	}
	if len(suspects) > 0 {
		fmt.Fprintf(w, "  suspect episodes (%d):\n", len(suspects))
		for i, e := range suspects {
			if i == 30 {
				fmt.Fprintf(w, "    ... %d more in the JSON\n", len(suspects)-30)
				break
			}
			fmt.Fprintf(w, "    %7.1fs %s reported %s suspect; %s\n", e.StartS, e.Observer, e.Subject, end(e))
		}
	}
}
