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
// DefaultTiming is tuned for one LAN (sub-millisecond RTT, a handful to a few
// dozen nodes) with two goals: every peer sees a crashed node dead in under
// 3 s, and 5% packet loss causes no false deaths. Lifeguard (memberlist's
// local-health awareness and confirmation-scaled suspicion) stays on; it is
// what lets the probe timing be this aggressive without false positives.
//
// How detection time adds up with DefaultTiming, 5 nodes: some survivor
// probes the dead node within ~0.4 s on average (4 survivors, each probing a
// peer per 500 ms round-robin), its probe fails after the 500 ms probe round
// (200 ms direct timeout, then indirect probes and a TCP fallback), the node
// is suspect; a second survivor's failed probe confirms it (k = SuspicionMult-2
// = 1 confirmation expected) and the suspicion timeout, min 1.5 s, fires; the
// dead message then reaches everyone in 2-3 gossip rounds (~0.2 s). Expect
// 2.0-2.8 s. See TestDetectionTiming for the measurement harness.
type Timing struct {
	// ProbeInterval is how often each node probes one peer (round robin).
	// 500 ms, half memberlist's LAN default: it is the base of every
	// failure-detection delay below.
	ProbeInterval time.Duration
	// ProbeTimeout is how long to wait for a direct ack before asking
	// IndirectChecks peers to probe for us. 200 ms is ~1000x a LAN RTT, so
	// only real loss or a stalled process misses it.
	ProbeTimeout time.Duration
	// IndirectChecks is how many peers probe on our behalf when a direct
	// probe fails; with 5% loss the chance that the direct probe and all 3
	// indirect ones (and the TCP fallback) fail is negligible. memberlist's
	// default, 3.
	IndirectChecks int
	// SuspicionMult scales the suspicion timeout: min = SuspicionMult *
	// max(1, log10(n)) * ProbeInterval = 1.5 s below 10 nodes. 3 (memberlist:
	// 4) gives a suspected but live node 1.5 s, i.e. 15 gossip rounds, to
	// hear the suspicion and refute it, which it does within a few rounds even
	// at 5% loss. It also sets Lifeguard's expected confirmations to
	// SuspicionMult-2 = 1: the 1.5 s minimum only applies once a second peer
	// independently failed to reach the node.
	SuspicionMult int
	// SuspicionMaxTimeoutMult bounds the suspicion timeout when no
	// confirmation arrives (Lifeguard starts at max and shrinks it with each
	// confirmation): max = 4 * 1.5 s = 6 s. memberlist's 6 would be 9 s; a
	// lone suspicion nobody confirms means the suspecting node itself may be
	// the sick one, so it must not be fast, but 9 s is longer than a
	// supervisor needs.
	SuspicionMaxTimeoutMult int
	// AwarenessMaxMultiplier is Lifeguard's cap on how much a node that
	// notices it is slow (missed nacks) stretches its own probe interval and
	// timeout: up to 8x, so an overloaded node stops accusing healthy peers.
	// memberlist's default, kept.
	AwarenessMaxMultiplier int
	// GossipInterval and GossipNodes: every 100 ms send queued news to 4
	// random peers. Twice memberlist's rate and one more fan-out: a service
	// list reaches every node of a 5-20 node cluster in 2-3 rounds, i.e.
	// well inside the 1 s target, at the cost of a few small UDP packets per
	// second per node.
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
	// loudly instead of stealing the name back and forth.
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
		ProbeInterval:           500 * time.Millisecond,
		ProbeTimeout:            200 * time.Millisecond,
		IndirectChecks:          3,
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 4,
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
