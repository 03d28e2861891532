package gossip

import (
	"math"
	"time"

	"github.com/hashicorp/memberlist"
)

// Timing holds every knob that decides how fast news spreads and how fast a
// crashed node is declared dead. The memberlist fields map one to one onto
// memberlist.Config; the others drive this package's own loops.
//
// DefaultTiming is tuned for one LAN (sub-millisecond RTT, 3 to a few dozen
// nodes) with two goals: every peer sees a crashed node dead in under 3 s,
// and 5% packet loss causes no false deaths. Lifeguard (memberlist's
// local-health awareness and confirmation-scaled suspicion) stays on; it is
// what makes aggressive probing safe.
//
// How detection time adds up: each survivor probes its peers round robin,
// one per ProbeInterval, so with 4 survivors some survivor probes the dead
// node within ~0.25 cycle on average (a cycle is (n-1)*ProbeInterval); the
// probe fails at the end of its ProbeInterval (direct timeout, then indirect
// probes and a TCP fallback); the node is suspect. A second survivor's failed
// probe confirms it, and the suspicion timeout (min SuspicionMult *
// ProbeInterval below 10 nodes) fires; the dead message reaches everyone in
// 1-3 gossip rounds. Every term scales with ProbeInterval, so it alone sets
// both the median and the tail.
//
// Measured with TestDetectionTiming (5 nodes on loopback, crash of a random
// node at a random phase, time until the last survivor sees it dead; 20-30
// trials per row; loss drops UDP packets and fails TCP dials at random; the
// 500 and 400 ms rows had UDP loss only and SuspicionMaxTimeoutMult 4):
//
//	probe/timeout/mult               loss  median  max    false deaths
//	1s/500ms/x4 (memberlist LAN)     0%    5.91s   8.39s  0
//	1s/500ms/x4 (memberlist LAN)     5%    5.68s   7.32s  0
//	500ms/200ms/x3                   0%    2.36s   3.13s  0
//	500ms/200ms/x3                   5%    2.29s   4.02s  0
//	400ms/200ms/x3                   0%    1.88s   3.16s  0
//	400ms/200ms/x3                   5%    1.95s   2.83s  0
//	500ms/200ms/x2                   5%    2.05s   2.57s  0
//	300ms/150ms/x3 (DefaultTiming)   0%    1.43s   2.07s  0
//	300ms/150ms/x3 (DefaultTiming)   5%    1.43s   2.37s  0
//
// Soaks, 5 nodes for 90 s, counting false deaths (suspicions raised, all
// others refuted): DefaultTiming at 5% and 10% loss 0 (0), at 20% loss 1
// (18); memberlist's LAN defaults at 20% loss 1 (11); 500ms/200ms/x3 at
// 20% loss 0 (13). So below 10% loss nobody is even suspected; at 20% the
// tuned and the stock settings fail alike.
//
// 500 ms probing has a median well inside 3 s but a tail beyond it (an
// unlucky phase: no survivor due to probe the dead node for most of a 2 s
// cycle, or a late confirmation); 300 ms keeps even the worst case near 2 s.
// SuspicionMult 2 would also be fast but sets Lifeguard's expected
// confirmations to 0, i.e. one node's failed probe alone kills a peer.
type Timing struct {
	// ProbeInterval is how often each node probes one peer (round robin).
	// 300 ms: see the table above. It costs ~3 probe packets (about 100
	// bytes) per second per node, nothing on a LAN.
	ProbeInterval time.Duration
	// ProbeTimeout is how long to wait for a direct ack before asking
	// IndirectChecks peers to probe for us; the rest of the interval (150
	// ms) is left for them and a TCP fallback. 150 ms is ~100x a LAN RTT
	// plus scheduling jitter of a busy host, so only real loss or a
	// stalled process misses it. Lifeguard stretches it (and the interval)
	// up to AwarenessMaxMultiplier times on a node that finds itself slow.
	ProbeTimeout time.Duration
	// IndirectChecks is how many peers probe on our behalf when a direct
	// probe fails; with 5% loss the chance that the direct probe, all 3
	// indirect ones and the TCP fallback fail together is negligible.
	// memberlist's default, 3.
	IndirectChecks int
	// SuspicionMult scales the suspicion timeout: min = SuspicionMult *
	// max(1, log10(n)) * ProbeInterval = 0.9 s below 10 nodes. It also sets
	// Lifeguard's expected confirmations to SuspicionMult-2 = 1: the 0.9 s
	// minimum only applies once a second node independently failed to
	// reach the suspect; a live but suspected node hears of it within a
	// gossip round or two (100-200 ms) and refutes. 3 is the smallest value
	// that keeps confirmations (memberlist: 4).
	SuspicionMult int
	// SuspicionMaxTimeoutMult: with no confirmation the suspicion lasts
	// SuspicionMaxTimeoutMult*min = 5.4 s and shrinks with each
	// confirmation. An unconfirmed suspicion usually means the suspecting
	// node is the sick one, so this does not delay detecting a real crash
	// (other survivors confirm it) but protects healthy nodes. memberlist's
	// default, 6.
	SuspicionMaxTimeoutMult int
	// AwarenessMaxMultiplier is Lifeguard's cap on how much a node that
	// notices it is slow (missed nacks) stretches its own probe interval and
	// timeout: up to 8x, so an overloaded node stops accusing healthy peers.
	// memberlist's default, kept.
	AwarenessMaxMultiplier int
	// GossipInterval and GossipNodes: every 100 ms send queued news to 4
	// random peers. Twice memberlist's rate and one more fan-out: news
	// (a service list, a suspicion, a death) reaches every node of a 5-20
	// node cluster in 2-3 rounds, well inside the 1 s target, at the cost of
	// a few small UDP packets per second per node (none when idle).
	GossipInterval time.Duration
	GossipNodes    int
	// GossipToTheDeadTime is how long we keep gossiping to a node after it
	// was declared dead, so a falsely-dead node hears about it and refutes.
	// Same as PushPullInterval, as memberlist does.
	GossipToTheDeadTime time.Duration
	// PushPullInterval is the period of full TCP state syncs with a random
	// peer: the safety net that repairs anything gossip lost (a partition, a
	// node that was down). 15 s, half memberlist's, still negligible load.
	PushPullInterval time.Duration
	// TCPTimeout bounds a TCP push-pull, join or fallback ping. 2 s is plenty
	// on a LAN and keeps a join attempt to a blackholed seed short.
	TCPTimeout time.Duration
	// RetransmitMult: each broadcast is sent RetransmitMult*ceil(log10(n+1))
	// times by each node that learned it (4 for up to 9 nodes, 8 up to 99).
	// memberlist's default, 4.
	RetransmitMult int
	// DeadNodeReclaimTime: after this long dead, a node's name may come back
	// from a different address (a replaced VM, a changed IP). 10 s: short
	// enough that a rebuilt node rejoins under its name almost at once, long
	// enough that two live nodes misconfigured with one name still conflict
	// loudly instead of stealing the name back and forth. (A node restarted
	// at the same address rejoins at once regardless.)
	DeadNodeReclaimTime time.Duration

	// JoinBackoffMin and JoinBackoffMax bound the exponential backoff (with
	// jitter) between attempts to join the seeds while this node is alone.
	JoinBackoffMin time.Duration
	JoinBackoffMax time.Duration
	// ReconnectInterval: while not alone, how often to try one seed that is
	// not a live member or one dead (not left) node, to heal a partition
	// that memberlist by itself never heals once both sides marked each
	// other dead.
	ReconnectInterval time.Duration
	// ForgetAfter is how long a dead or left node stays in View.
	ForgetAfter time.Duration
}

// DefaultTiming returns the LAN tuning described on Timing.
func DefaultTiming() Timing {
	return Timing{
		ProbeInterval:           300 * time.Millisecond,
		ProbeTimeout:            150 * time.Millisecond,
		IndirectChecks:          3,
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 6,
		AwarenessMaxMultiplier:  8,
		GossipInterval:          100 * time.Millisecond,
		GossipNodes:             4,
		GossipToTheDeadTime:     15 * time.Second,
		PushPullInterval:        15 * time.Second,
		TCPTimeout:              2 * time.Second,
		RetransmitMult:          4,
		DeadNodeReclaimTime:     10 * time.Second,

		JoinBackoffMin:    250 * time.Millisecond,
		JoinBackoffMax:    10 * time.Second,
		ReconnectInterval: 30 * time.Second,
		ForgetAfter:       24 * time.Hour,
	}
}

// MemberlistDefaultTiming returns memberlist.DefaultLANConfig's values (and
// this package's own loop settings from DefaultTiming), for comparison.
func MemberlistDefaultTiming() Timing {
	c := memberlist.DefaultLANConfig()
	t := DefaultTiming()
	t.ProbeInterval = c.ProbeInterval
	t.ProbeTimeout = c.ProbeTimeout
	t.IndirectChecks = c.IndirectChecks
	t.SuspicionMult = c.SuspicionMult
	t.SuspicionMaxTimeoutMult = c.SuspicionMaxTimeoutMult
	t.AwarenessMaxMultiplier = c.AwarenessMaxMultiplier
	t.GossipInterval = c.GossipInterval
	t.GossipNodes = c.GossipNodes
	t.GossipToTheDeadTime = c.GossipToTheDeadTime
	t.PushPullInterval = c.PushPullInterval
	t.TCPTimeout = c.TCPTimeout
	t.RetransmitMult = c.RetransmitMult
	t.DeadNodeReclaimTime = c.DeadNodeReclaimTime
	return t
}

// withDefaults fills zero fields from DefaultTiming, so a caller may set
// only what it wants to change.
func (t Timing) withDefaults() Timing {
	d := DefaultTiming()
	setD := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	setI := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	setD(&t.ProbeInterval, d.ProbeInterval)
	setD(&t.ProbeTimeout, d.ProbeTimeout)
	setI(&t.IndirectChecks, d.IndirectChecks)
	setI(&t.SuspicionMult, d.SuspicionMult)
	setI(&t.SuspicionMaxTimeoutMult, d.SuspicionMaxTimeoutMult)
	setI(&t.AwarenessMaxMultiplier, d.AwarenessMaxMultiplier)
	setD(&t.GossipInterval, d.GossipInterval)
	setI(&t.GossipNodes, d.GossipNodes)
	setD(&t.GossipToTheDeadTime, d.GossipToTheDeadTime)
	setD(&t.PushPullInterval, d.PushPullInterval)
	setD(&t.TCPTimeout, d.TCPTimeout)
	setI(&t.RetransmitMult, d.RetransmitMult)
	setD(&t.DeadNodeReclaimTime, d.DeadNodeReclaimTime)
	setD(&t.JoinBackoffMin, d.JoinBackoffMin)
	setD(&t.JoinBackoffMax, d.JoinBackoffMax)
	setD(&t.ReconnectInterval, d.ReconnectInterval)
	setD(&t.ForgetAfter, d.ForgetAfter)
	return t
}

func (t Timing) apply(c *memberlist.Config) {
	c.ProbeInterval = t.ProbeInterval
	c.ProbeTimeout = t.ProbeTimeout
	c.IndirectChecks = t.IndirectChecks
	c.SuspicionMult = t.SuspicionMult
	c.SuspicionMaxTimeoutMult = t.SuspicionMaxTimeoutMult
	c.AwarenessMaxMultiplier = t.AwarenessMaxMultiplier
	c.GossipInterval = t.GossipInterval
	c.GossipNodes = t.GossipNodes
	c.GossipToTheDeadTime = t.GossipToTheDeadTime
	c.PushPullInterval = t.PushPullInterval
	c.TCPTimeout = t.TCPTimeout
	c.RetransmitMult = t.RetransmitMult
	c.DeadNodeReclaimTime = t.DeadNodeReclaimTime
}

// maxSuspicion is memberlist's longest suspicion timeout for n nodes (no
// confirmations): how long a "suspect" hint may stand before memberlist
// must have either declared the node dead or had it refute.
func (t Timing) maxSuspicion(n int) time.Duration {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	min := time.Duration(float64(t.SuspicionMult) * scale * float64(t.ProbeInterval))
	return time.Duration(t.SuspicionMaxTimeoutMult) * min
}
