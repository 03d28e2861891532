package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	crashNodes = 5
	// clusterPoll is the period of one observer's Cluster calls: a call
	// starts every 1 ms, or as soon as the previous one answered if that
	// took longer (a few hundred µs on an idle host, more while five
	// agents and five observers share two CPUs).
	clusterPoll = time.Millisecond
	// crashTimeout bounds one kill, from SIGKILL until every node saw the
	// restart. The target is 1 s; 10 s only separates slow from lost.
	crashTimeout = 10 * time.Second
	// minAge: a process is only killed once it ran this long, well past
	// the bench's min_uptime (100 ms), so every restart is an immediate
	// one and never a backoff.
	minAge = 300 * time.Millisecond
	// maxMisses: kills that never became visible everywhere before the
	// run is abandoned (a broken cluster, not a slow one).
	maxMisses = 5
)

// crashSample is one kill of node A's service. Times are milliseconds from
// the SIGKILL.
type crashSample struct {
	Victim    string  `json:"victim"`
	KilledPID int32   `json:"killed_pid"`
	NewPID    int32   `json:"new_pid"`
	JitterMS  float64 `json:"jitter_ms"`
	// On A itself (A's own Cluster view of A): the floor gossip adds to.
	LocalRestartMS float64 `json:"local_restart_ms"` // restarts+1 shown, any state
	LocalOKMS      float64 `json:"local_ok_ms"`      // restarts+1 and OK
	// Per other node, when its Cluster API first answered with A's service
	// at restarts+1 (any state), and at restarts+1 and OK.
	RestartMS map[string]float64 `json:"restart_seen_ms"`
	OKMS      map[string]float64 `json:"ok_seen_ms"`
	// Per other node, when (by its own clock, 1 ms resolution) the list
	// version that showed OK reached it: the poll's share taken out.
	LearnedMS map[string]float64 `json:"ok_learned_ms"`
	// Over the other nodes.
	FirstOKMS      float64 `json:"first_ok_ms"`
	LastOKMS       float64 `json:"last_ok_ms"`
	LastRestartMS  float64 `json:"last_restart_ms"`
	LastLearnedMS  float64 `json:"last_learned_ms"`
	GossipMS       float64 `json:"gossip_ms"`        // LastOKMS - LocalOKMS
	PollIntervalMS float64 `json:"poll_interval_ms"` // mean time between two answers of one node
	Missed         string  `json:"missed,omitempty"` // set if not seen everywhere within the timeout
}

type crashResult struct {
	Nodes     int    `json:"nodes"`
	Kills     int    `json:"kills"`
	JitterMax string `json:"jitter_max"`
	Poll      string `json:"poll"`
	Config    string `json:"service_config"`
	// Stats over the kills seen everywhere.
	LastOK    stats         `json:"last_other_node_ok"` // the acceptance figure
	FirstOK   stats         `json:"first_other_node_ok"`
	LocalOK   stats         `json:"on_a_itself_ok"`
	LocalRest stats         `json:"on_a_itself_restart"`
	LastRest  stats         `json:"last_other_node_restart"`
	LastLearn stats         `json:"last_other_node_learned"`
	Gossip    stats         `json:"gossip_share"`
	PollMean  float64       `json:"poll_interval_mean_ms"`
	Misses    int           `json:"misses"`
	Samples   []crashSample `json:"samples"`
}

// observation is what one node's Cluster API showed after a kill.
type observation struct {
	restartAt, okAt time.Time
	learnedMS       int64
	newPID          int32
	polls           int
	last            string // the last answer, for a miss
	err             error
}

func (b *bench) crashPhase(ctx context.Context) (*crashResult, error) {
	res := &crashResult{Nodes: crashNodes, JitterMax: b.o.jitter.String(), Poll: "a call every 1 ms per node, or back to back when a call takes longer",
		Config: "tcp check on the stand-in's port, restart: {min_uptime: 100ms}; gossip with DefaultTiming, encrypted"}
	dir := filepath.Join(b.tmp, "crash")
	c := &agentCluster{dir: dir}
	// One call for all: ports are held until every one is chosen, so no
	// two are the same.
	ports, err := freePorts(2 * crashNodes)
	if err != nil {
		return res, err
	}
	gports, sports := ports[:crashNodes], ports[crashNodes:]
	for i := range crashNodes {
		name := fmt.Sprintf("node%d", i+1)
		c.nodes = append(c.nodes, &agentNode{
			name: name, dir: filepath.Join(dir, name), sock: filepath.Join(dir, name, "agent.sock"),
			bind: fmt.Sprintf("127.0.0.1:%d", gports[i]), svcPort: sports[i],
		})
	}
	fmt.Printf("crash: starting %d dhagents on 127.0.0.1 (gossip ports %v, service ports %v)\n", crashNodes, gports, sports)
	t0 := time.Now()
	if err := b.startAgents(ctx, c); err != nil {
		return res, err
	}
	if _, err := c.converged(ctx, 60*time.Second); err != nil {
		return res, err
	}
	fmt.Printf("crash: cluster formed, every node sees every service OK (%s); %d kills, rotating over the nodes\n", time.Since(t0).Round(time.Millisecond), b.o.kills)

	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	start := time.Now()
	for i := range b.o.kills {
		victim := c.nodes[i%crashNodes]
		s, err := b.crashOnce(ctx, c, victim, rng)
		if err != nil {
			res.set()
			return res, fmt.Errorf("kill %d on %s: %w", i+1, victim.name, err)
		}
		res.Samples = append(res.Samples, s)
		res.Kills = len(res.Samples)
		if s.Missed != "" {
			res.Misses++
			fmt.Printf("  kill %d on %s NOT seen everywhere within %s: %s\n", i+1, victim.name, crashTimeout, s.Missed)
			if res.Misses >= maxMisses {
				res.set()
				return res, fmt.Errorf("%d kills were never seen everywhere; giving up", res.Misses)
			}
		}
		if (i+1)%10 == 0 || i+1 == b.o.kills {
			fmt.Printf("  crash: %d/%d kills; last on %s: OK on A itself %s, first other node %s, last %s (%s)\n",
				i+1, b.o.kills, victim.name, fmtMS(s.LocalOKMS), fmtMS(s.FirstOKMS), fmtMS(s.LastOKMS), time.Since(start).Round(time.Second))
		}
	}
	res.set()
	return res, nil
}

// crashOnce waits for the cluster to be at rest, kills victim's service
// after a random pause, and times its comeback on every node.
func (b *bench) crashOnce(ctx context.Context, c *agentCluster, victim *agentNode, rng *rand.Rand) (crashSample, error) {
	s := crashSample{Victim: victim.name, RestartMS: map[string]float64{}, OKMS: map[string]float64{}, LearnedMS: map[string]float64{}}
	truth, err := c.converged(ctx, 30*time.Second)
	if err != nil {
		return s, err
	}
	before := truth[victim.name]
	pid := before.pid
	if age, err := processAge(int(pid)); err != nil {
		return s, fmt.Errorf("service pid %d: %w", pid, err)
	} else if age < minAge {
		if err := sleepCtx(ctx, minAge-age); err != nil {
			return s, err
		}
	}
	// A random pause, so the kill lands at any phase of the agents'
	// gossip rounds and probes.
	jitter := time.Duration(rng.Int64N(int64(b.o.jitter) + 1))
	s.JitterMS = ms(jitter)
	if err := sleepCtx(ctx, jitter); err != nil {
		return s, err
	}
	if !ownedBy(int(pid), victim.stateDir()) {
		return s, fmt.Errorf("pid %d is no longer %s's service", pid, victim.name)
	}

	// Observers are ready before the kill and start polling at once.
	obs := make([]observation, len(c.nodes))
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	begin := make(chan struct{})
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-begin
			obs[i] = observe(octx, n, victim.name, pid, before.restarts)
		}()
	}
	t0 := time.Now()
	if err := unix.Kill(int(pid), unix.SIGKILL); err != nil {
		close(begin)
		return s, fmt.Errorf("kill %d: %w", pid, err)
	}
	close(begin)
	s.KilledPID = pid

	// Bounded: every observer returns when octx ends.
	stop := time.AfterFunc(crashTimeout, cancel)
	wg.Wait()
	stop.Stop()
	if ctx.Err() != nil {
		return s, ctx.Err()
	}

	since := func(t time.Time) float64 { return ms(t.Sub(t0)) }
	first, last, lastRestart, lastLearned := 1e12, 0.0, 0.0, 0.0
	polls, spent := 0, 0.0
	for i, n := range c.nodes {
		o := obs[i]
		if o.err != nil {
			return s, fmt.Errorf("observer %s: %w", n.name, o.err)
		}
		if o.okAt.IsZero() {
			s.Missed += fmt.Sprintf("%s last saw %s; ", n.name, o.last)
			continue
		}
		if n == victim {
			s.LocalRestartMS, s.LocalOKMS, s.NewPID = since(o.restartAt), since(o.okAt), o.newPID
			continue
		}
		ok := since(o.okAt)
		s.RestartMS[n.name], s.OKMS[n.name] = since(o.restartAt), ok
		s.LearnedMS[n.name] = float64(o.learnedMS - t0.UnixMilli())
		first, last = min(first, ok), max(last, ok)
		lastRestart = max(lastRestart, s.RestartMS[n.name])
		lastLearned = max(lastLearned, s.LearnedMS[n.name])
		polls += o.polls
		spent += ok
	}
	if s.Missed != "" {
		return s, nil
	}
	s.FirstOKMS, s.LastOKMS, s.LastRestartMS, s.LastLearnedMS = first, last, lastRestart, lastLearned
	s.GossipMS = last - s.LocalOKMS
	if polls > 0 {
		s.PollIntervalMS = spent / float64(polls)
	}
	return s, nil
}

// observe polls node n's Cluster API for victim every clusterPoll until it
// shows victim's service restarted (restarts+1, a new pid) and OK, or ctx
// ends. Times are taken when the answer arrived: an upper bound, late by
// at most one poll.
func observe(ctx context.Context, n *agentNode, victim string, killed, restarts int32) observation {
	var o observation
	for ctx.Err() == nil {
		next := time.Now().Add(clusterPoll)
		r, err := n.cluster(ctx, victim, time.Second)
		now := time.Now()
		o.polls++
		if err == nil && len(r.Nodes) == 1 {
			ni := r.Nodes[0]
			sv := findService(ni)
			if sv == nil {
				o.last = "no service " + svcName
			} else {
				o.last = fmt.Sprintf("node %s, service %s pid %d restarts %d", ni.State, sv.State, sv.Pid, sv.Restarts)
				if sv.Restarts > restarts+1 {
					// Restarted twice: the new process died too. Not a
					// gossip delay; the sample would be meaningless.
					o.err = fmt.Errorf("%s's service restarted more than once after the kill: %s", victim, o.last)
					return o
				}
				if sv.Restarts == restarts+1 && sv.Pid != killed {
					if o.restartAt.IsZero() {
						o.restartAt = now
					}
					if sv.State == "OK" && ni.State == "alive" {
						o.okAt, o.learnedMS, o.newPID = now, ni.LearnedUnixMs, sv.Pid
						return o
					}
				}
			}
		} else if err != nil && ctx.Err() == nil {
			o.last = "error: " + err.Error()
		}
		if sleepCtx(ctx, time.Until(next)) != nil {
			break
		}
	}
	return o
}

func (r *crashResult) set() {
	var first, last, local, localRest, rest, learn, gossip, poll []float64
	for _, s := range r.Samples {
		if s.Missed != "" {
			continue
		}
		first, last, local = append(first, s.FirstOKMS), append(last, s.LastOKMS), append(local, s.LocalOKMS)
		rest, learn, gossip = append(rest, s.LastRestartMS), append(learn, s.LastLearnedMS), append(gossip, s.GossipMS)
		poll, localRest = append(poll, s.PollIntervalMS), append(localRest, s.LocalRestartMS)
	}
	r.LocalRest = summarise(localRest)
	r.FirstOK, r.LastOK, r.LocalOK = summarise(first), summarise(last), summarise(local)
	r.LastRest, r.LastLearn, r.Gossip = summarise(rest), summarise(learn), summarise(gossip)
	r.PollMean = summarise(poll).Mean
}

// freePorts finds n distinct ports on 127.0.0.1 free for both TCP and UDP
// (memberlist binds both). They are released before use, so another
// program could take one meanwhile; the agent then fails to start and says
// so.
func freePorts(n int) ([]int, error) {
	var out []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for tries := 0; len(out) < n && tries < 100; tries++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		held = append(held, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		u.Close()
		out = append(out, port)
	}
	if len(out) < n {
		return nil, errors.New("no free ports on 127.0.0.1")
	}
	return out, nil
}
