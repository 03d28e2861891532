package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/dhvisor/dhvisor/internal/gossip"
)

const (
	// detectTimeout bounds one kill until every member saw it dead. The
	// slowest legitimate case, memberlist's LAN defaults at 50 members
	// with no confirmation, is 6 x 4 x log10(50) x 1 s = 41 s.
	detectTimeout = 60 * time.Second
	// joinTimeout bounds forming a cluster or taking in a fresh member.
	joinTimeout = 60 * time.Second
	// maxDetectMisses: kills never seen dead everywhere before a run is
	// abandoned.
	maxDetectMisses = 3
)

// detectSample is one member shut down without leaving. Times are
// milliseconds from the Shutdown call.
type detectSample struct {
	Victim  string  `json:"victim"`
	PhaseMS float64 `json:"phase_ms"` // random wait before the kill
	FirstMS float64 `json:"first_member_dead_ms"`
	LastMS  float64 `json:"last_member_dead_ms"` // every other member says dead
	// AllMS: when each other member's View first said dead, sorted.
	AllMS []float64 `json:"all_members_dead_ms"`
	// JoinMS: the fresh member that replaced the previous victim, from its
	// start until every member (it included) saw every member alive.
	JoinMS float64 `json:"rejoin_ms"`
	Missed string  `json:"missed,omitempty"`
}

// falseDeath is a live member reported dead (or left) by another.
type falseDeath struct {
	AtS      float64 `json:"at_s"` // since the cluster formed
	Observer string  `json:"observer"`
	Subject  string  `json:"subject"`
	State    string  `json:"state"`
}

type detectResult struct {
	Members     int            `json:"members"`
	Timing      string         `json:"timing"`
	Params      string         `json:"params"`
	Concurrent  bool           `json:"ran_beside_other_timing"`
	Last        stats          `json:"last_member_dead"`
	First       stats          `json:"first_member_dead"`
	Join        stats          `json:"rejoin"`
	Misses      int            `json:"misses"`
	FalseDeaths []falseDeath   `json:"false_deaths"`
	Anomalies   []string       `json:"anomalies,omitempty"`
	WallS       float64        `json:"wall_s"`
	Samples     []detectSample `json:"samples"`
}

func (r *detectResult) set() {
	var first, last, join []float64
	for _, s := range r.Samples {
		if s.Missed == "" {
			first, last = append(first, s.FirstMS), append(last, s.LastMS)
		}
		if s.JoinMS > 0 {
			join = append(join, s.JoinMS)
		}
	}
	r.First, r.Last, r.Join = summarise(first), summarise(last), summarise(join)
}

type timingCase struct {
	name string
	tm   gossip.Timing
}

func timingCases() []timingCase {
	return []timingCase{
		{"DefaultTiming", gossip.DefaultTiming()},
		{"memberlist LAN", gossip.MemberlistDefaultTiming()},
	}
}

func timingParams(t gossip.Timing) string {
	return fmt.Sprintf("probe %s/%s, suspicion x%d (max x%d), gossip %s to %d",
		t.ProbeInterval, t.ProbeTimeout, t.SuspicionMult, t.SuspicionMaxTimeoutMult, t.GossipInterval, t.GossipNodes)
}

// detectPhase runs every cluster size with both timings. The two timings
// of one size run side by side (unless --serial): they are independent
// clusters on distinct ports, and the run stays within ~10 minutes.
func (b *bench) detectPhase(ctx context.Context) ([]*detectResult, error) {
	var out []*detectResult
	for _, size := range b.o.sizes {
		cases := timingCases()
		results := make([]*detectResult, len(cases))
		errs := make([]error, len(cases))
		fmt.Printf("detect: %d members in this process, %d kills each, %s\n", size, b.o.samples,
			map[bool]string{true: "timings one after the other", false: "both timings side by side"}[b.o.serial])
		if b.o.serial {
			for i, tc := range cases {
				results[i], errs[i] = b.detectRun(ctx, size, tc, false)
				if errs[i] != nil {
					break
				}
			}
		} else {
			cctx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			for i, tc := range cases {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i], errs[i] = b.detectRun(cctx, size, tc, true)
					if errs[i] != nil {
						cancel() // one failed: the other's numbers are not wanted
					}
				}()
			}
			wg.Wait()
			cancel()
		}
		for i, r := range results {
			if r != nil {
				out = append(out, r)
			}
			if errs[i] != nil {
				return out, fmt.Errorf("%d members, %s: %w", size, cases[i].name, errs[i])
			}
		}
	}
	return out, nil
}

// simMember is one in-process Gossip.
type simMember struct {
	name string
	g    *gossip.Gossip
	addr string
}

// simCluster is size members of one timing. The driver (detectRun) alone
// changes live; watchers share the fields under mu.
type simCluster struct {
	prefix string
	timing gossip.Timing
	key    []byte
	logger *slog.Logger
	ctx    context.Context
	rng    *mrand.Rand
	seq    int
	live   []*simMember
	wg     sync.WaitGroup // watchers

	mu          sync.Mutex
	formed      time.Time
	deadSeen    map[string]map[string]time.Time // victim -> observer -> first seen dead
	falseDeaths []falseDeath
	falseSeen   map[string]bool // observer/subject already recorded
	anomalies   []string
}

func (b *bench) detectRun(ctx context.Context, size int, tc timingCase, concurrent bool) (*detectResult, error) {
	res := &detectResult{Members: size, Timing: tc.name, Params: timingParams(tc.tm), Concurrent: concurrent}
	label := fmt.Sprintf("[%d, %s]", size, tc.name)
	key := make([]byte, gossip.KeySize)
	if _, err := rand.Read(key); err != nil {
		return res, err
	}
	logFile := filepath.Join(b.tmp, fmt.Sprintf("detect-%d-%s.log", size, strings.ReplaceAll(tc.name, " ", "-")))
	lf, err := os.Create(logFile)
	if err != nil {
		return res, err
	}
	defer lf.Close()
	c := &simCluster{
		prefix: fmt.Sprintf("m%d%s", size, map[bool]string{true: "d", false: "l"}[tc.name == "DefaultTiming"]),
		timing: tc.tm, key: key, ctx: ctx,
		// Warnings and errors only: info would log every join and death of
		// every member; the counts come from the views.
		logger:    slog.New(slog.NewTextHandler(lf, &slog.HandlerOptions{Level: slog.LevelWarn})),
		rng:       mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64())),
		deadSeen:  map[string]map[string]time.Time{},
		falseSeen: map[string]bool{},
	}
	defer c.shutdown()
	start := time.Now()
	defer func() {
		res.WallS = time.Since(start).Seconds()
		c.mu.Lock()
		res.FalseDeaths, res.Anomalies = slices.Clone(c.falseDeaths), slices.Clone(c.anomalies)
		c.mu.Unlock()
		res.set()
	}()

	// Form the cluster: each newcomer seeds from up to three members
	// already started, as agents seeded from a few peers would.
	for range size {
		if _, err := c.add(); err != nil {
			return res, err
		}
	}
	if err := c.converged(joinTimeout); err != nil {
		return res, fmt.Errorf("cluster of %d did not form: %w", size, err)
	}
	c.mu.Lock()
	c.formed = time.Now() // watchers read it for false deaths' times
	c.mu.Unlock()
	fmt.Printf("  detect %s: cluster formed in %s (%s)\n", label, time.Since(start).Round(time.Millisecond), res.Params)

	joinMS := 0.0
	for i := range b.o.samples {
		// Let the cluster settle, then kill at a random phase of the
		// probe interval.
		phase := time.Duration(c.rng.Int64N(int64(tc.tm.ProbeInterval)))
		if err := sleepCtx(ctx, b.o.settle+phase); err != nil {
			return res, err
		}
		s, err := c.killOne()
		if err != nil {
			return res, err
		}
		s.PhaseMS, s.JoinMS = ms(phase), joinMS
		res.Samples = append(res.Samples, s)
		if s.Missed != "" {
			res.Misses++
			fmt.Printf("  detect %s: kill %d of %s NOT seen dead everywhere within %s: %s\n", label, i+1, s.Victim, detectTimeout, s.Missed)
			if res.Misses >= maxDetectMisses {
				return res, fmt.Errorf("%d kills never seen dead everywhere; giving up", res.Misses)
			}
		}
		if (i+1)%5 == 0 || i+1 == b.o.samples {
			fmt.Printf("  detect %s: %d/%d kills; last: first member saw it dead after %s, the last after %s (%s)\n",
				label, i+1, b.o.samples, fmtMS(s.FirstMS), fmtMS(s.LastMS), time.Since(start).Round(time.Second))
		}
		// A fresh member replaces the victim, so every kill hits a
		// cluster of the same size.
		t0 := time.Now()
		if _, err := c.add(); err != nil {
			return res, err
		}
		if err := c.converged(joinTimeout); err != nil {
			return res, fmt.Errorf("after kill %d, a fresh member did not join: %w", i+1, err)
		}
		joinMS = ms(time.Since(t0))
	}
	return res, nil
}

// add starts a fresh member that joins through up to three live ones.
func (c *simCluster) add() (*simMember, error) {
	c.seq++
	name := fmt.Sprintf("%s-%03d", c.prefix, c.seq)
	var seeds []string
	for _, i := range c.rng.Perm(len(c.live))[:min(3, len(c.live))] {
		seeds = append(seeds, c.live[i].addr)
	}
	// Each member its own keyring (memberlist's is mutable), one key.
	ring, err := memberlist.NewKeyring(nil, c.key)
	if err != nil {
		return nil, err
	}
	g, err := gossip.New(gossip.Config{
		NodeName: name,
		BindAddr: "127.0.0.1", // port 0: the kernel picks
		Seeds:    seeds,
		Keyring:  ring,
		Timing:   c.timing,
		Meta:     gossip.NodeMeta{Roles: []string{"query"}, APIAddr: "127.0.0.1:9000", DhvisorVersion: "bench"},
		Logger:   c.logger.With("member", name),
	})
	if err != nil {
		return nil, err
	}
	if err := g.Start(c.ctx); err != nil {
		return nil, err
	}
	// Subscribe before anything can happen, so no death goes unseen.
	ch, _ := g.Subscribe()
	// A service list, as every agent publishes one: its gossip shares the
	// packets with memberlist's own messages.
	g.SetLocal([]gossip.ServiceHealth{{Name: svcName, State: "OK", PID: int32(1000 + c.seq), Since: time.Now()}})
	m := &simMember{name: name, g: g, addr: g.Addr()}
	c.live = append(c.live, m)
	c.wg.Add(1)
	go c.watch(m, ch)
	return m, nil
}

// watch records, for member m, when its View first says each killed member
// is dead, and any live member it reports dead or left. It wakes on every
// view change (Subscribe), so the time is the moment the view changed, to
// scheduling latency; the ticker is only a backstop. It ends when m is shut
// down (Shutdown closes the channel).
func (c *simCluster) watch(m *simMember, ch <-chan struct{}) {
	defer c.wg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-tick.C:
		}
		now := time.Now()
		view := m.g.View()
		c.mu.Lock()
		for _, nv := range view {
			if nv.Name == m.name || (nv.State != gossip.NodeDead && nv.State != gossip.NodeLeft) {
				continue
			}
			if seen, killed := c.deadSeen[nv.Name]; killed {
				if _, ok := seen[m.name]; !ok {
					seen[m.name] = now
					if nv.State == gossip.NodeLeft {
						c.anomalies = append(c.anomalies, fmt.Sprintf("%s reports %s (shut down without leaving) as left, not dead", m.name, nv.Name))
					}
				}
				continue
			}
			if k := m.name + "/" + nv.Name; !c.falseSeen[k] {
				c.falseSeen[k] = true
				c.falseDeaths = append(c.falseDeaths, falseDeath{AtS: now.Sub(c.formed).Seconds(), Observer: m.name, Subject: nv.Name, State: nv.State})
			}
		}
		c.mu.Unlock()
	}
}

// killOne shuts a random member down without leaving (its peers learn
// nothing, as after kill -9) and waits until every other member's View
// says it is dead.
func (c *simCluster) killOne() (detectSample, error) {
	i := c.rng.IntN(len(c.live))
	victim := c.live[i]
	c.live = slices.Delete(c.live, i, i+1)
	s := detectSample{Victim: victim.name}
	c.mu.Lock()
	c.deadSeen[victim.name] = map[string]time.Time{}
	t0 := time.Now()
	c.mu.Unlock()
	if err := victim.g.Shutdown(); err != nil {
		return s, fmt.Errorf("shutdown of %s: %w", victim.name, err)
	}
	var missing []string
	err := pollUntil(c.ctx, 5*time.Millisecond, detectTimeout, func() (bool, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		missing = missing[:0]
		for _, m := range c.live {
			if _, ok := c.deadSeen[victim.name][m.name]; !ok {
				missing = append(missing, m.name)
			}
		}
		return len(missing) == 0, nil
	})
	if c.ctx.Err() != nil {
		return s, c.ctx.Err()
	}
	if err != nil {
		s.Missed = fmt.Sprintf("%d members still not saying dead: %s", len(missing), strings.Join(missing, ", "))
		return s, nil
	}
	c.mu.Lock()
	for _, at := range c.deadSeen[victim.name] {
		s.AllMS = append(s.AllMS, ms(at.Sub(t0)))
	}
	c.mu.Unlock()
	slices.Sort(s.AllMS)
	s.FirstMS, s.LastMS = s.AllMS[0], s.AllMS[len(s.AllMS)-1]
	return s, nil
}

// converged waits until every live member's View shows every live member
// alive (not suspect).
func (c *simCluster) converged(timeout time.Duration) error {
	names := map[string]bool{}
	for _, m := range c.live {
		names[m.name] = true
	}
	var why string
	err := pollUntil(c.ctx, 20*time.Millisecond, timeout, func() (bool, error) {
		for _, m := range c.live {
			alive := 0
			for _, nv := range m.g.View() {
				if !names[nv.Name] {
					continue
				}
				if nv.State != gossip.NodeAlive {
					why = fmt.Sprintf("%s sees %s %s", m.name, nv.Name, nv.State)
					return false, nil
				}
				alive++
			}
			if alive != len(names) {
				why = fmt.Sprintf("%s knows %d of %d live members", m.name, alive, len(names))
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", why, err)
	}
	return nil
}

// shutdown stops every member (without leaving: nothing is measured any
// more) and waits, bounded, for the watchers.
func (c *simCluster) shutdown() {
	for _, m := range c.live {
		_ = m.g.Shutdown()
	}
	c.live = nil
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		fmt.Println("  detect: some view watchers did not stop within 10s")
	}
}
