package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const (
	soakNodes = 5
	soakEvery = 200 * time.Millisecond
	// soakSubnet: the lab's addresses exist only inside its namespaces
	// (the e2e tests use 10.213.7.x, so both can run at once).
	soakSubnet  = "10.213.9."
	soakGossip  = 7946
	soakSvcPort = 23400
)

// soakEpisode is a stretch of rounds in which observer reported subject
// (a live node: nothing is killed in the soak) as something else than
// alive.
type soakEpisode struct {
	Observer string  `json:"observer"`
	Subject  string  `json:"subject"`
	State    string  `json:"state"`   // suspect, dead, left or missing
	StartS   float64 `json:"start_s"` // since the soak started
	EndS     float64 `json:"end_s"`   // first round it was alive again; -1: still at the end
	Rounds   int     `json:"rounds"`
}

type soakResult struct {
	Duration    string  `json:"duration"`
	Sampled     string  `json:"sampled"` // less than duration if interrupted
	LossPct     float64 `json:"loss_pct"`
	Nodes       int     `json:"nodes"`
	SampleEvery string  `json:"sample_every"`
	LossMethod  string  `json:"loss_method"` // netem, or iptables where the kernel has no netem
	// What the loss rules dropped and what eth0 sent, over all nodes and
	// the whole run (cluster formation included).
	Dropped         uint64         `json:"packets_dropped"`
	Sent            uint64         `json:"packets_sent"`
	MeasuredLossPct float64        `json:"measured_loss_pct"`
	Rounds          int            `json:"rounds"`
	Views           int            `json:"views_read"`
	ViewErrors      int            `json:"view_errors"`
	SuspectRounds   int            `json:"rounds_with_a_suspect"`
	DeadRounds      int            `json:"rounds_with_a_false_death"`
	SuspectObs      int            `json:"suspect_observations"` // observer-subject pairs, summed over rounds
	DeadObs         int            `json:"dead_observations"`
	ServiceNotOK    int            `json:"service_not_ok_observations"`
	Episodes        []soakEpisode  `json:"episodes"`
	LogCounts       map[string]int `json:"agent_log_counts"`
}

// Lines the agents log that tell what their views' samples may miss
// (anything shorter than a sampling period). Counted over all five logs.
var soakLogPatterns = []struct{ key, re string }{
	{"suspicions raised (memberlist: Suspect X has failed, no acks received)", `Suspect \S+ has failed, no acks received`},
	{"suspicions refuted by the suspected node (Refuting a suspect message)", `Refuting a suspect message`},
	{"suspicion timeouts (Marking X as failed)", `Marking \S+ as failed, suspect timeout reached`},
	{"deaths declared (gossip: node dead)", `gossip: node dead`},
	{"dead messages refuted (Refuting a dead message)", `Refuting a dead message`},
	{"TCP-only reachability warnings", `over TCP but UDP probes failed`},
}

// netLab is a few hosts, each a network namespace with one address, cabled
// to a bridge in a hub namespace (as test/e2e's netLab).
type netLab struct {
	hub   string
	hosts []string
}

func labCmd(ctx context.Context, args ...string) error {
	_, err := labOut(ctx, args...)
	return err
}

// labOut runs one setup command, bounded, and returns its output.
func labOut(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// newNetLab creates the namespaces. The caller registers destroy first, so
// a half-built lab is removed too.
func newNetLab(id string, n int) *netLab {
	l := &netLab{hub: "dhgbhub" + id}
	for i := 1; i <= n; i++ {
		l.hosts = append(l.hosts, fmt.Sprintf("dhgb%s-%d", id, i))
	}
	return l
}

func (l *netLab) build(ctx context.Context) error {
	if err := labCmd(ctx, "ip", "netns", "add", l.hub); err != nil {
		return err
	}
	steps := [][]string{
		{"ip", "-n", l.hub, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", l.hub, "link", "set", "br0", "up"},
	}
	for i, ns := range l.hosts {
		port := fmt.Sprintf("p%d", i+1)
		steps = append(steps,
			[]string{"ip", "netns", "add", ns},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
			[]string{"ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", l.hub},
			[]string{"ip", "-n", ns, "addr", "add", l.addr(i) + "/24", "dev", "eth0"},
			[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", l.hub, "link", "set", port, "master", "br0"},
			[]string{"ip", "-n", l.hub, "link", "set", port, "up"},
		)
	}
	for _, s := range steps {
		if err := labCmd(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

func (l *netLab) addr(i int) string { return soakSubnet + strconv.Itoa(i+1) }

// Loss methods: netem, as the issue asks, where the kernel has it; else an
// iptables rule that drops the same share of packets at the same place
// (leaving eth0), for kernels built without sch_netem (such as the
// Firecracker VMs this project's machines run on).
const (
	lossNetem    = "netem"
	lossIptables = "iptables"
)

// lossy makes every host's interface drop pct% of the packets it sends,
// and returns the method used.
func (l *netLab) lossy(ctx context.Context, pct float64) (string, error) {
	netem := func(ns string) error {
		return labCmd(ctx, "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", fmt.Sprintf("%g%%", pct))
	}
	err := netem(l.hosts[0])
	if err == nil {
		for _, ns := range l.hosts[1:] {
			if err := netem(ns); err != nil {
				return "", err
			}
		}
		return lossNetem, nil
	}
	if !strings.Contains(err.Error(), "qdisc kind is unknown") {
		return "", err
	}
	if _, lerr := exec.LookPath("iptables"); lerr != nil {
		return "", fmt.Errorf("this kernel has no netem (CONFIG_NET_SCH_NETEM) and iptables, the fallback, is not installed (Debian: apt-get install -y iptables): %w", err)
	}
	for _, ns := range l.hosts {
		if err := labCmd(ctx, "ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", "eth0",
			"-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(pct/100, 'f', -1, 64), "-j", "DROP"); err != nil {
			return "", err
		}
	}
	return lossIptables, nil
}

// dropCounts returns how many packets the loss rules dropped and how many
// the hosts' eth0 sent, summed over the hosts: the loss really applied.
func (l *netLab) dropCounts(ctx context.Context, method string) (dropped, sent uint64, err error) {
	num := func(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }
	for _, ns := range l.hosts {
		switch method {
		case lossNetem:
			out, err := labOut(ctx, "ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", "eth0")
			if err != nil {
				return 0, 0, err
			}
			m := regexp.MustCompile(`Sent \d+ bytes (\d+) pkt \(dropped (\d+)`).FindStringSubmatch(out)
			if m == nil {
				return 0, 0, fmt.Errorf("%s: no counters in tc output: %s", ns, out)
			}
			sent, dropped = sent+num(m[1]), dropped+num(m[2])
		case lossIptables:
			out, err := labOut(ctx, "ip", "netns", "exec", ns, "iptables", "-L", "OUTPUT", "-v", "-x", "-n")
			if err != nil {
				return 0, 0, err
			}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); strings.Contains(line, "statistic") && len(f) > 0 {
					dropped += num(f[0])
				}
			}
			tx, err := labOut(ctx, "ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/tx_packets")
			if err != nil {
				return 0, 0, err
			}
			sent += num(strings.TrimSpace(tx))
		}
	}
	return dropped, sent, nil
}

// destroy deletes every namespace of the lab (those that exist); the veths
// go with them. Processes must be gone first, or they keep a namespace's
// network alive.
func (l *netLab) destroy() {
	for _, ns := range append(l.hosts, l.hub) {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			if err := labCmd(context.Background(), "ip", "netns", "del", ns); err != nil {
				fmt.Printf("  cleanup: %v\n", err)
			}
		}
	}
}

func (b *bench) soakPhase(ctx context.Context) (*soakResult, error) {
	res := &soakResult{Duration: b.o.soak.String(), LossPct: b.o.lossPct, Nodes: soakNodes, SampleEvery: soakEvery.String(), LogCounts: map[string]int{}}
	lab := newNetLab(fmt.Sprintf("%x", os.Getpid()&0xffff), soakNodes)
	b.onClose(lab.destroy) // first registered, so it runs last: after the agents are gone
	for _, ns := range append(lab.hosts, lab.hub) {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			return res, fmt.Errorf("network namespace %s already exists (left by an earlier run that was killed?); remove it with `ip netns del %s`", ns, ns)
		}
	}
	fmt.Printf("soak: building %d network namespaces on a bridge (%s1-%d), %g%% packet loss on every node's eth0\n", soakNodes, soakSubnet, soakNodes, b.o.lossPct)
	if err := lab.build(ctx); err != nil { // half-built: destroy removes it
		return res, err
	}
	method, err := lab.lossy(ctx, b.o.lossPct)
	if err != nil {
		return res, err
	}
	res.LossMethod = method
	if method == lossIptables {
		fmt.Printf("soak: this kernel has no netem (sch_netem); every node's eth0 drops %g%% of what it sends by an iptables statistic rule instead\n", b.o.lossPct)
	}

	dir := filepath.Join(b.tmp, "soak")
	c := &agentCluster{dir: dir}
	for i := range soakNodes {
		name := fmt.Sprintf("host%d", i+1)
		c.nodes = append(c.nodes, &agentNode{
			name: name, dir: filepath.Join(dir, name), sock: filepath.Join(dir, name, "agent.sock"),
			bind: fmt.Sprintf("%s:%d", lab.addr(i), soakGossip), svcPort: soakSvcPort, netns: lab.hosts[i],
		})
	}
	if err := b.startAgents(ctx, c); err != nil {
		return res, err
	}
	t0 := time.Now()
	if _, err := c.converged(ctx, 90*time.Second); err != nil {
		return res, err
	}
	fmt.Printf("soak: cluster formed, every node sees every service OK (%s); sampling every node's view every %s for %s\n",
		time.Since(t0).Round(time.Millisecond), soakEvery, b.o.soak)

	err = soakLoop(ctx, c, b.o.soak, res)
	if d, snt, cerr := lab.dropCounts(context.Background(), method); cerr == nil && d+snt > 0 {
		res.Dropped, res.Sent = d, snt
		res.MeasuredLossPct = 100 * float64(d) / float64(d+snt)
	} else if cerr != nil {
		fmt.Printf("  soak: could not read the drop counters: %v\n", cerr)
	}
	// The logs, before the agents stop and log their leaving.
	for _, n := range c.nodes {
		log := readFile(n.logFile())
		for _, p := range soakLogPatterns {
			res.LogCounts[p.key] += len(regexp.MustCompile(p.re).FindAllStringIndex(log, -1))
		}
	}
	return res, err
}

// soakLoop reads every node's view each soakEvery for d and records every
// live node reported as anything but alive.
func soakLoop(ctx context.Context, c *agentCluster, d time.Duration, res *soakResult) error {
	type pair struct{ obs, subj string }
	open := map[pair]*soakEpisode{}
	start := time.Now()
	tick := time.NewTicker(soakEvery)
	defer tick.Stop()
	nextReport := time.Minute
	closeEp := func(k pair, at float64) {
		if e := open[k]; e != nil {
			e.EndS = at
			res.Episodes = append(res.Episodes, *e)
			delete(open, k)
		}
	}
	for time.Since(start) < d {
		select {
		case <-ctx.Done():
			res.Sampled = time.Since(start).Round(time.Second).String()
			return ctx.Err()
		case <-tick.C:
		}
		res.Rounds++
		at := time.Since(start).Seconds()
		suspect, dead := false, false
		for _, obs := range c.nodes {
			if !obs.running() {
				return fmt.Errorf("%s: dhagent exited during the soak:\n%s", obs.name, tail(obs.logFile(), 15))
			}
			r, err := obs.cluster(ctx, "", time.Second)
			if err != nil {
				if ctx.Err() != nil {
					res.Sampled = time.Since(start).Round(time.Second).String()
					return ctx.Err()
				}
				res.ViewErrors++
				continue
			}
			res.Views++
			states := map[string]string{}
			for _, ni := range r.Nodes {
				states[ni.Name] = ni.State
				if s := findService(ni); ni.State == "alive" && (s == nil || s.State != "OK") {
					res.ServiceNotOK++
				}
			}
			for _, subj := range c.nodes {
				if subj == obs {
					continue
				}
				st, ok := states[subj.name]
				if !ok {
					st = "missing"
				}
				k := pair{obs.name, subj.name}
				if e := open[k]; e != nil && e.State != st {
					closeEp(k, at)
				}
				switch st {
				case "alive":
					continue
				case "suspect":
					suspect = true
					res.SuspectObs++
				default: // dead, left, missing: the view lost a live node
					dead = true
					res.DeadObs++
				}
				if open[k] == nil {
					open[k] = &soakEpisode{Observer: obs.name, Subject: subj.name, State: st, StartS: at}
				}
				open[k].Rounds++
			}
		}
		if suspect {
			res.SuspectRounds++
		}
		if dead {
			res.DeadRounds++
			fmt.Printf("  soak %s: FALSE DEATH: %s\n", time.Duration(at*float64(time.Second)).Round(time.Millisecond), describeOpen(open))
		}
		if time.Since(start) >= nextReport {
			nextReport += time.Minute
			fmt.Printf("  soak: %s/%s: %d rounds, rounds with a suspect %d, with a false death %d\n",
				time.Since(start).Round(time.Second), d, res.Rounds, res.SuspectRounds, res.DeadRounds)
		}
	}
	res.Sampled = time.Since(start).Round(time.Second).String()
	for k, e := range open {
		e.EndS = -1
		res.Episodes = append(res.Episodes, *e)
		delete(open, k)
	}
	return nil
}

func describeOpen[K comparable](open map[K]*soakEpisode) string {
	var parts []string
	for _, e := range open {
		if e.State != "suspect" {
			parts = append(parts, fmt.Sprintf("%s sees %s %s", e.Observer, e.Subject, e.State))
		}
	}
	return strings.Join(parts, "; ")
}
