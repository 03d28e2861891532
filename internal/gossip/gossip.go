package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"

	"github.com/dhvisor/dhvisor/internal/portowner"
)

// Node liveness states reported in NodeView.State.
const (
	NodeAlive   = "alive"
	NodeSuspect = "suspect"
	NodeDead    = "dead"
	NodeLeft    = "left"
)

// ServiceUnknown is the state View reports for the services of a node that
// is dead or left, or that came back but has not yet published its new list.
const ServiceUnknown = "unknown"

// maxBroadcastBytes is the largest service-list message we gossip. It must
// fit one UDP packet together with memberlist's framing: a 1400-byte
// UDPBufferSize, less the compound header, AES-GCM's 29 bytes and a margin
// so memberlist's own small messages can share the packet. A larger list is
// shrunk by truncating service messages (see fitNode).
const maxBroadcastBytes = 1200

// Config configures a Gossip. NodeName is required; zero values elsewhere
// take the defaults documented on each field.
type Config struct {
	// NodeName is this node's unique name in the cluster (the hostname).
	NodeName string
	// BindAddr and BindPort: where to listen, TCP and UDP. BindAddr ""
	// means 0.0.0.0. BindPort 0 lets the kernel pick a free port (tests).
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort: what peers should dial, if not the
	// bind address (NAT, a wildcard bind). Zero values: derived from the
	// bind address by memberlist.
	AdvertiseAddr string
	AdvertisePort int
	// Seeds are host:port of peers to join. They may be down at start:
	// joining is retried in the background (see Timing). The node's own
	// address may be listed (one seed list for the whole cluster).
	Seeds []string
	// Meta is published with the node's membership; it must encode to at
	// most 512 bytes (memberlist.MetaMaxSize).
	Meta NodeMeta
	// Keyring enables AES-256-GCM encryption of all gossip. nil with
	// KeyFile "" means no encryption (tests only). If Keyring is nil and
	// KeyFile is set, the keyring is loaded from KeyFile.
	Keyring *memberlist.Keyring
	// KeyFile is the key file KeyManager persists changes to (and loads
	// from, see Keyring). "" keeps key changes in memory only.
	KeyFile string
	// Timing: zero fields take DefaultTiming's values.
	Timing Timing
	// Logger: nil means slog.Default().
	Logger *slog.Logger

	// wrapTransport, for tests, wraps memberlist's network transport (to
	// drop packets and measure detection under loss).
	wrapTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
}

// NodeMeta is what a node publishes about itself with its membership.
type NodeMeta struct {
	Kind             string // "" for a node agent, KindCoordinator for a coordinator
	Roles            []string
	APIAddr          string // the member's mutual-TLS API address, host:port
	DeephavenVersion string
	DhvisorVersion   string
	// PackageVersion is the Deephaven package installed, "NAME VERSION"
	// as the node's package tool says; it changes with an upgrade.
	PackageVersion string
}

// KindCoordinator marks a coordinator's membership: it gossips to see node
// health at once but supervises nothing, so node views leave it out of the
// service table.
const KindCoordinator = "coordinator"

// ServiceHealth is the compact, gossiped form of one supervised service's
// status (see agent/supervise.Status for the full one).
type ServiceHealth struct {
	Name     string
	State    string // supervise.State's words, or ServiceUnknown
	PID      int32
	Restarts int32
	Since    time.Time // millisecond precision on the wire
	Message  string    // truncated on the wire if the list is too big for one packet
	// Started is when the process (container) started; zero when none runs.
	Started time.Time
	// Container is "<short id> <image>" for a service in a container.
	Container string
}

// NodeView is one node as this agent currently sees it.
type NodeView struct {
	Name string
	Addr string // gossip address, host:port
	// State is alive, suspect, dead or left. Suspect is this agent's own
	// observation only (memberlist does not expose suspicion; see doc.go).
	State      string
	StateSince time.Time
	Meta       NodeMeta
	// Services is the node's service list. For a dead or left node, or one
	// that came back and has not yet published a list, every service is
	// reported with State ServiceUnknown and LastKnown holds the list as it
	// last was.
	Services  []ServiceHealth
	LastKnown []ServiceHealth
	// Version of the list: it only grows, across agent restarts too.
	Version uint64
	// Learned is when this version of the list reached this agent.
	Learned time.Time
	// KeyIDs are the fingerprints (see KeyID) of the gossip keys the node
	// reported holding with its list, primary first.
	KeyIDs []string
}

// Gossip is one node's membership and health dissemination.
type Gossip struct {
	cfg    Config
	timing Timing
	log    *slog.Logger // component=gossip
	mlLog  *slog.Logger // component=memberlist
	keys   *KeyManager

	ml    atomic.Pointer[memberlist.Memberlist]
	queue *broadcastQueue
	alive atomic.Int32 // live members including us, from events
	kick  chan struct{}
	push  chan struct{}          // our list changed: pushLoop sends it
	meta  atomic.Pointer[[]byte] // encoded NodeMeta; SetMeta replaces it

	// mu guards everything below. Lock order: memberlist calls its event
	// delegate with its own node lock held, and those callbacks take mu; so
	// never call into memberlist while holding mu.
	mu        sync.Mutex
	nodes     map[string]*nodeRec
	local     nodeState // our own list as published
	clock     uint64    // last version issued (hybrid logical clock)
	oversize  bool      // our list did not fit one packet even shrunk
	pushMsg   []byte    // our list as pushLoop sends it; nil when it does not fit
	subs      map[chan struct{}]struct{}
	badFormat map[byte]bool // unknown formats already logged

	life     sync.Mutex // serializes Start/Leave/Shutdown
	started  bool
	stopped  bool
	cancel   context.CancelFunc
	stopCtx  func() bool
	wg       sync.WaitGroup
	leaveMsg chan struct{} // Finished() of the leave-intent broadcast
}

// nodeRec is what we know about one node.
type nodeRec struct {
	name       string
	addr       string
	state      string
	stateSince time.Time
	mlKnown    bool // memberlist reported this node (else learned from a peer)
	meta       NodeMeta
	st         nodeState // latest list
	learned    time.Time
	// deathVersion is st.Version when the node last died or left: a list
	// with this version or older belongs to a previous life.
	deathVersion uint64
	died         bool
	suspectSince time.Time
	suspectUntil time.Time
}

// New validates cfg and prepares a Gossip; Start makes it listen.
func New(cfg Config) (*Gossip, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("gossip: NodeName is required")
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "0.0.0.0"
	}
	if cfg.BindPort < 0 || cfg.BindPort > 65535 {
		return nil, fmt.Errorf("gossip: bad BindPort %d", cfg.BindPort)
	}
	timing := cfg.Timing.withDefaults()
	if timing.ProbeTimeout >= timing.ProbeInterval {
		return nil, fmt.Errorf("gossip: ProbeTimeout %v must be shorter than ProbeInterval %v (indirect probes need the rest)", timing.ProbeTimeout, timing.ProbeInterval)
	}
	meta, err := checkMeta(cfg.Meta)
	if err != nil {
		return nil, err
	}
	if cfg.Keyring == nil && cfg.KeyFile != "" {
		ring, err := LoadKeyring(cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Keyring = ring
	}
	if cfg.Keyring != nil && len(cfg.Keyring.GetKeys()) == 0 {
		return nil, errors.New("gossip: keyring has no keys")
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	g := &Gossip{
		cfg:       cfg,
		timing:    timing,
		log:       lg.With("component", "gossip"),
		mlLog:     lg.With("component", "memberlist"),
		kick:      make(chan struct{}, 1),
		push:      make(chan struct{}, 1),
		nodes:     make(map[string]*nodeRec),
		subs:      make(map[chan struct{}]struct{}),
		badFormat: make(map[byte]bool),
		leaveMsg:  make(chan struct{}, 1),
	}
	g.meta.Store(&meta)
	g.queue = &broadcastQueue{
		numNodes: func() int { return max(1, int(g.alive.Load())) },
		mult:     g.timing.RetransmitMult,
	}
	g.keys = newKeyManager(g, cfg.Keyring, cfg.KeyFile)
	g.local = nodeState{Name: cfg.NodeName, KeyIDs: g.keys.ids()}
	return g, nil
}

func checkMeta(m NodeMeta) ([]byte, error) {
	b := encodeMeta(m)
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("gossip: node meta encodes to %d bytes; memberlist allows at most %d (shorten roles or addresses)", len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// Meta returns what the node publishes about itself.
func (g *Gossip) Meta() NodeMeta {
	m, _ := decodeMeta(*g.meta.Load())
	return m
}

// SetMeta replaces what the node publishes about itself (after an upgrade
// changed its versions) and announces it to the cluster.
func (g *Gossip) SetMeta(m NodeMeta) error {
	b, err := checkMeta(m)
	if err != nil {
		return err
	}
	g.meta.Store(&b)
	ml := g.ml.Load()
	if ml == nil {
		return nil // not started: memberlist reads it when it starts
	}
	return ml.UpdateNode(5 * time.Second)
}

// Start creates the memberlist (it listens when Start returns) and starts
// joining the seeds in the background. When ctx is done the Gossip shuts
// down as by Shutdown (no graceful leave: call Leave first for that).
func (g *Gossip) Start(ctx context.Context) error {
	g.life.Lock()
	defer g.life.Unlock()
	if g.started || g.stopped {
		return errors.New("gossip: Start called twice or after Shutdown")
	}

	c := memberlist.DefaultLANConfig()
	c.Name = g.cfg.NodeName
	c.BindAddr = g.cfg.BindAddr
	c.BindPort = g.cfg.BindPort
	c.AdvertiseAddr = g.cfg.AdvertiseAddr
	c.AdvertisePort = g.cfg.AdvertisePort
	if c.AdvertisePort == 0 {
		c.AdvertisePort = g.cfg.BindPort
	}
	g.timing.apply(c)
	d := &delegate{g: g}
	c.Delegate = d
	c.Events = d
	c.Ping = d
	c.Keyring = g.cfg.Keyring
	// Drop anything that is not encrypted with a key we hold, and never
	// send plaintext: a node with a wrong or missing key cannot read or
	// disturb the cluster.
	c.GossipVerifyIncoming = true
	c.GossipVerifyOutgoing = true
	c.Logger = log.New(&logWriter{g: g}, "", 0)

	if g.cfg.wrapTransport != nil {
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{c.BindAddr},
			BindPort:  c.BindPort,
			Logger:    c.Logger,
		})
		if err != nil {
			return bindError(err, c.BindAddr, c.BindPort)
		}
		if c.BindPort == 0 {
			c.BindPort = nt.GetAutoBindPort()
			if c.AdvertisePort == 0 {
				c.AdvertisePort = c.BindPort
			}
		}
		c.Transport = g.cfg.wrapTransport(nt)
	}

	ml, err := memberlist.Create(c)
	if err != nil {
		if c.Transport != nil {
			_ = c.Transport.Shutdown()
		}
		return bindError(err, c.BindAddr, c.BindPort)
	}
	g.ml.Store(ml)
	g.started = true

	lctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.wg.Add(2)
	go g.joinLoop(lctx)
	go g.pushLoop(lctx)
	// ctx ends our life like Shutdown does. AfterFunc runs Shutdown in its
	// own goroutine, which exists only once ctx is done; Shutdown stops it.
	g.stopCtx = context.AfterFunc(ctx, func() { _ = g.Shutdown() })

	g.log.Info("gossip listening", "node", g.cfg.NodeName, "addr", g.Addr(),
		"encrypted", g.cfg.Keyring != nil, "seeds", g.cfg.Seeds)
	return nil
}

// Addr returns the address peers use to reach this node (host:port), or ""
// before Start.
func (g *Gossip) Addr() string {
	ml := g.ml.Load()
	if ml == nil {
		return ""
	}
	return ml.LocalNode().Address()
}

// Keys returns the key manager (its methods fail with ErrNoEncryption when
// gossip is not encrypted).
func (g *Gossip) Keys() *KeyManager { return g.keys }

// SetLocal publishes this node's services. The agent calls it on every
// status change; an unchanged list is a cheap no-op. A changed one gets a
// new version and is broadcast whole (it is small).
func (g *Gossip) SetLocal(services []ServiceHealth) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if equalServices(g.local.Services, services) {
		return
	}
	g.local.Services = slices.Clone(services)
	g.publishLocked(nil)
}

// publishLocked gives the local list a new version, records it in our own
// view and queues its broadcast.
func (g *Gossip) publishLocked(finished chan struct{}) {
	g.local.Version = g.nextVersionLocked()
	g.local.KeyIDs = g.keys.ids()
	st, msg, fits := fitNode(g.local)
	if !fits && !g.oversize {
		g.log.Warn("gossip: this node's service list does not fit one gossip packet even without messages; peers get it only by push-pull",
			"services", len(st.Services), "bytes", len(msg), "push_pull_interval", g.timing.PushPullInterval)
	}
	g.oversize = !fits
	now := time.Now()
	rec := g.recLocked(g.cfg.NodeName, now)
	rec.st = st
	rec.learned = now
	g.pushMsg = nil
	if fits {
		g.queue.Queue(&nodeBroadcast{name: st.Name, version: st.Version, msg: msg, finished: finished})
		g.pushMsg = msg
		select {
		case g.push <- struct{}{}:
		default:
		}
	} else if finished != nil {
		// Nothing will be sent; don't make Leave wait for it.
		select {
		case finished <- struct{}{}:
		default:
		}
	}
	g.notifyLocked()
}

// republish publishes this node's list again under a new version, after
// our key set changed, so View's KeyIDs everywhere show it.
func (g *Gossip) republish() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.publishLocked(nil)
}

// refuted republishes after a peer declared this node dead or suspect (see
// logWriter). A node that has not published yet (an agent just restarted)
// has nothing to repeat: peers rightly keep its old list as unknown.
func (g *Gossip) refuted() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.local.Version > 0 {
		g.publishLocked(nil)
	}
}

// nextVersionLocked issues a version that is greater than every version
// this node issued before, in this run or an earlier one: the high bits are
// the wall clock in milliseconds (an agent restart starts above everything
// the previous run sent, unless the clock stepped back), the low 16 bits
// a counter for changes within one millisecond. If we ever see a version of
// our own list newer than ours (the clock did step back), observe() pushes
// the clock past it; it is a hybrid logical clock.
func (g *Gossip) nextVersionLocked() uint64 {
	v := uint64(time.Now().UnixMilli()) << 16
	if v <= g.clock {
		v = g.clock + 1
	}
	g.clock = v
	return v
}

// fitNode returns the canonical form of n that is gossiped (services'
// messages truncated as needed to fit one packet), its encoding, and
// whether it fits. Every node stores exactly this form, so all agree on
// what a version contains.
func fitNode(n nodeState) (nodeState, []byte, bool) {
	var msg []byte
	for _, limit := range []int{160, 96, 48, 24, 0} {
		c := n
		c.Services = make([]ServiceHealth, len(n.Services))
		for i, s := range n.Services {
			s.Message = truncate(s.Message, limit)
			s.Since = s.Since.Truncate(time.Millisecond)
			c.Services[i] = s
		}
		msg = encodeNode(&c)
		if len(msg) <= maxBroadcastBytes || limit == 0 {
			return c, msg, len(msg) <= maxBroadcastBytes
		}
	}
	panic("unreachable")
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n == 0 {
		return ""
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:max(cut, 0)] + "…"
}

func equalServices(a, b []ServiceHealth) bool {
	return slices.EqualFunc(a, b, func(x, y ServiceHealth) bool {
		return x.Name == y.Name && x.State == y.State && x.PID == y.PID &&
			x.Restarts == y.Restarts && x.Since.Equal(y.Since) && x.Message == y.Message
	})
}

// recLocked returns the record for name, creating a provisional "alive"
// one: we heard of the node, so it was alive recently; memberlist corrects
// that as soon as it knows better.
func (g *Gossip) recLocked(name string, now time.Time) *nodeRec {
	rec := g.nodes[name]
	if rec == nil {
		rec = &nodeRec{name: name, state: NodeAlive, stateSince: now}
		rec.st.Name = name
		g.nodes[name] = rec
	}
	return rec
}

// applyLocked merges a node's list received from a peer (by gossip, or by
// push-pull with the peer's view of its liveness in p). It reports whether
// the list was news to us, which is when it must be passed on.
func (g *Gossip) applyLocked(n nodeState, p *peerState) bool {
	now := time.Now()
	if n.Name == g.cfg.NodeName {
		// We are authoritative for our own list; our own messages come
		// back to us as relays and are ignored. A peer holding a newer
		// version than ours means it is from our previous run and our clock
		// went back across the restart: move the clock past it so our lists
		// win again, and republish if we already published (if not, the
		// first SetLocal will; until then peers rightly show the old list
		// as unknown).
		if n.Version > g.local.Version {
			g.clock = max(g.clock, n.Version)
			if g.local.Version > 0 {
				g.publishLocked(nil)
			}
		}
		return false
	}
	rec := g.nodes[n.Name]
	if rec == nil {
		if p != nil && p.Liveness >= livenessDead && now.Sub(p.Since) > g.timing.ForgetAfter {
			return false // we forgot it on purpose; don't resurrect it
		}
		rec = g.recLocked(n.Name, now)
	}
	changed := false
	if p != nil && !rec.mlKnown {
		// Memberlist never told us about this node (typically it died
		// before we joined): the peer's word is all we have.
		st := livenessNames[p.Liveness]
		if st != rec.state || !p.Since.Equal(rec.stateSince) {
			rec.state, rec.stateSince = st, p.Since
			if rec.stateSince.IsZero() {
				rec.stateSince = now
			}
			changed = true
		}
		if p.Addr != "" {
			rec.addr = p.Addr
		}
		if m, err := decodeMeta(p.Meta); err == nil && len(p.Meta) > 0 {
			rec.meta = m
		}
		if (st == NodeDead || st == NodeLeft) && !rec.died {
			rec.died, rec.deathVersion = true, n.Version
		}
	}
	news := n.Version > rec.st.Version
	if news {
		rec.st = n
		rec.learned = now
		// A node that publishes is alive: drop our suspicion hint.
		if p == nil {
			rec.suspectUntil = time.Time{}
		}
		if n.Leaving && rec.state == NodeDead {
			rec.state, rec.stateSince = NodeLeft, now
		}
		changed = true
	}
	if changed {
		g.notifyLocked()
	}
	return news
}

// queueRelay passes on a node's list we just learned, so it spreads
// epidemically. memberlist's retransmit budget, RetransmitMult*log(n+1)
// sends per node, assumes every node that learns news relays it (memberlist
// does exactly this for its own alive/suspect/dead messages); if only the
// origin sent, a list would reach barely 8 nodes of 20 before push-pull.
// Only news is relayed (a version newer than what we had), so a list is
// relayed at most once per node and the traffic stays bounded.
func (g *Gossip) queueRelay(n *nodeState, msg []byte) {
	if len(msg) > maxBroadcastBytes {
		return // its origin could not gossip it either; push-pull carries it
	}
	g.queue.Queue(&nodeBroadcast{name: n.Name, version: n.Version, msg: msg})
}

// View returns every node this agent knows of (dead and left ones until
// Timing.ForgetAfter), sorted by name.
func (g *Gossip) View() []NodeView {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	g.pruneLocked(now)
	out := make([]NodeView, 0, len(g.nodes))
	for _, rec := range g.nodes {
		v := NodeView{
			Name:       rec.name,
			Addr:       rec.addr,
			State:      rec.state,
			StateSince: rec.stateSince,
			Meta:       cloneMeta(rec.meta),
			Version:    rec.st.Version,
			Learned:    rec.learned,
		}
		if rec.state == NodeAlive && now.Before(rec.suspectUntil) {
			v.State, v.StateSince = NodeSuspect, rec.suspectSince
		}
		for _, id := range rec.st.KeyIDs {
			v.KeyIDs = append(v.KeyIDs, keyIDString(id))
		}
		svcs := slices.Clone(rec.st.Services)
		if rec.state == NodeDead || rec.state == NodeLeft || (rec.died && rec.st.Version <= rec.deathVersion) {
			v.LastKnown = svcs
			v.Services = make([]ServiceHealth, len(svcs))
			for i, s := range svcs {
				v.Services[i] = ServiceHealth{Name: s.Name, State: ServiceUnknown, Since: rec.stateSince}
			}
		} else {
			v.Services = svcs
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b NodeView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func cloneMeta(m NodeMeta) NodeMeta {
	m.Roles = slices.Clone(m.Roles)
	return m
}

// pruneLocked forgets nodes dead or left for longer than ForgetAfter.
func (g *Gossip) pruneLocked(now time.Time) {
	for name, rec := range g.nodes {
		if (rec.state == NodeDead || rec.state == NodeLeft) && now.Sub(rec.stateSince) > g.timing.ForgetAfter {
			delete(g.nodes, name)
		}
	}
}

// Subscribe returns a channel that receives a value (coalesced: at most one
// pending) whenever the view changes, and a function that unsubscribes and
// closes the channel. Shutdown closes every subscribed channel.
func (g *Gossip) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.subs == nil { // shut down
		close(ch)
		return ch, func() {}
	}
	g.subs[ch] = struct{}{}
	return ch, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if _, ok := g.subs[ch]; ok {
			delete(g.subs, ch)
			close(ch)
		}
	}
}

func (g *Gossip) notifyLocked() {
	for ch := range g.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Leave announces a graceful departure, so peers report this node "left"
// rather than "dead", waits up to timeout for the announcement to spread,
// then shuts down.
func (g *Gossip) Leave(timeout time.Duration) error {
	err := g.leave(timeout)
	return errors.Join(err, g.Shutdown())
}

func (g *Gossip) leave(timeout time.Duration) error {
	// Hold the lifecycle lock so a concurrent Shutdown (ctx cancelled)
	// cannot slip in: memberlist panics on Leave after Shutdown.
	g.life.Lock()
	defer g.life.Unlock()
	if !g.started || g.stopped {
		return nil
	}
	deadline := time.Now().Add(timeout)

	// Our own leave intent first: memberlist's leave message does not say
	// "left" to the event delegate (see doc.go), our list's Leaving flag
	// does. Both ride the same gossip packets.
	g.mu.Lock()
	g.local.Leaving = true
	g.publishLocked(g.leaveMsg)
	g.mu.Unlock()

	if err := g.ml.Load().Leave(timeout); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	if g.alive.Load() > 0 {
		// Wait until our intent was sent its full retransmit count.
		t := time.NewTimer(max(time.Until(deadline), 0))
		defer t.Stop()
		select {
		case <-g.leaveMsg:
		case <-t.C:
		}
	}
	g.log.Info("gossip: left the cluster", "node", g.cfg.NodeName)
	return nil
}

// Shutdown stops gossiping at once, without telling anyone: peers will
// detect this node as dead, as after a crash. Safe to call more than once.
func (g *Gossip) Shutdown() error {
	g.life.Lock()
	defer g.life.Unlock()
	if g.stopped {
		return nil
	}
	g.stopped = true
	var err error
	if g.started {
		g.stopCtx()
		g.cancel()
		err = g.ml.Load().Shutdown()
		g.wg.Wait()
	}
	g.mu.Lock()
	for ch := range g.subs {
		close(ch)
	}
	g.subs = nil
	g.mu.Unlock()
	return err
}

// pushLoop sends this node's newest list straight to every member as soon
// as it changes. Gossip alone reaches everyone only with high probability:
// each node that learns a list passes it to a few random others, and in a
// burst (a cluster-wide restart) about one peer in a hundred still lacked
// a list after several rounds, until the next push-pull 15 s later; the
// coordinators route Envoy by this health. One packet per member per change
// is cheap at a Deephaven cluster's size, and gossip still carries the
// list to any member the packet misses.
func (g *Gossip) pushLoop(ctx context.Context) {
	defer g.wg.Done()
	ml := g.ml.Load()
	var sent []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.push:
		}
		g.mu.Lock()
		msg := g.pushMsg
		g.mu.Unlock()
		if msg == nil || bytes.Equal(msg, sent) {
			continue
		}
		// Not under mu: memberlist takes its node lock here, and holds it
		// while it calls our event delegate, which takes mu.
		for _, m := range ml.Members() {
			if m.Name == g.cfg.NodeName {
				continue
			}
			if err := ml.SendBestEffort(m, msg); err != nil && ctx.Err() == nil {
				g.log.Debug("gossip: pushing our list", "to", m.Name, "err", err)
			}
		}
		sent = msg
	}
}

// ---- joining ----

// joinLoop joins the seeds, retrying with backoff while this node is alone
// (seeds down at start, or every peer gone later), and while not alone
// periodically tries one seed or dead node to heal partitions.
func (g *Gossip) joinLoop(ctx context.Context) {
	defer g.wg.Done()
	t := g.timing
	backoff := t.JoinBackoffMin
	timer := time.NewTimer(0)
	defer timer.Stop()
	wasAlone := true
	failures := 0
	lastReason := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-g.kick:
		}
		seeds := g.otherSeeds()
		if g.alive.Load() <= 1 {
			if !wasAlone {
				g.log.Warn("gossip: no live peer left; retrying the seeds", "seeds", seeds)
				wasAlone = true
			}
			if len(seeds) == 0 {
				// Nobody to call; wait to be joined (the kick channel
				// is only a hint, so also re-check slowly).
				resetTimer(timer, t.JoinBackoffMax)
				continue
			}
			_, err := g.ml.Load().Join(seeds)
			if ctx.Err() != nil {
				return
			}
			if g.alive.Load() > 1 {
				g.log.Info("gossip: joined the cluster", "members", g.alive.Load(), "after_failures", failures)
				wasAlone, failures, lastReason, backoff = false, 0, "", t.JoinBackoffMin
				resetTimer(timer, t.ReconnectInterval)
				continue
			}
			failures++
			reason, level := g.classifyJoinError(err)
			// Repeat a key problem every time (it needs an operator), but
			// log "nobody reachable yet" once and then only at debug level.
			if level > slog.LevelInfo || reason != lastReason {
				g.log.Log(ctx, level, "gossip join failed: "+reason, "seeds", seeds, "attempt", failures, "retry_in", backoff.String(), "err", flatErr(err))
			} else {
				g.log.Debug("gossip join failed: "+reason, "seeds", seeds, "attempt", failures, "err", flatErr(err))
			}
			lastReason = reason
			resetTimer(timer, jitter(backoff))
			backoff = min(2*backoff, t.JoinBackoffMax)
			continue
		}
		if wasAlone {
			// Someone joined us.
			wasAlone, failures, lastReason, backoff = false, 0, "", t.JoinBackoffMin
		} else if addr := g.reconnectTarget(seeds); addr != "" {
			if _, err := g.ml.Load().Join([]string{addr}); err != nil {
				g.log.Debug("gossip: reconnect attempt failed", "addr", addr, "err", err)
			}
		}
		resetTimer(timer, jitter(t.ReconnectInterval))
	}
}

// flatErr renders memberlist's multi-line join error on one line.
func flatErr(err error) string {
	if err == nil {
		return ""
	}
	s := strings.TrimSpace(err.Error())
	s = strings.Replace(s, ":\n\t* ", ": ", 1)
	s = strings.ReplaceAll(s, "\n\t* ", "; ")
	return strings.ReplaceAll(s, "\n", " ")
}

// kickJoin wakes the join loop (a hint; never blocks).
func (g *Gossip) kickJoin() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

// jitter spreads d by ±20% so restarted nodes do not retry in lockstep.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// otherSeeds is the seed list without our own address.
func (g *Gossip) otherSeeds() []string {
	self := g.Addr()
	var out []string
	for _, s := range g.cfg.Seeds {
		if s != self && s != "" {
			out = append(out, s)
		}
	}
	return out
}

// reconnectTarget picks one seed that is not a live member, or one dead
// (not left) node, to push-pull with: after a partition both sides think
// the other dead, and memberlist stops talking to dead nodes after
// GossipToTheDeadTime, so without this the halves never merge again.
func (g *Gossip) reconnectTarget(seeds []string) string {
	g.mu.Lock()
	live := map[string]bool{}
	var cands []string
	for _, rec := range g.nodes {
		switch {
		case rec.name == g.cfg.NodeName:
		case rec.state == NodeAlive:
			live[rec.addr] = true
		case rec.state == NodeDead && rec.addr != "":
			cands = append(cands, rec.addr)
		}
	}
	g.mu.Unlock()
	for _, s := range seeds {
		if !live[s] {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return ""
	}
	return cands[rand.IntN(len(cands))]
}

// classifyJoinError turns memberlist's join error into an operator's words
// and a log level. memberlist reports a key mismatch only as a decryption
// failure of the peer's reply (the peer, unable to decrypt our request,
// answers with an error encrypted with its key), so match on its text.
func (g *Gossip) classifyJoinError(err error) (string, slog.Level) {
	keyFile := g.cfg.KeyFile
	if keyFile == "" {
		keyFile = "the gossip key file"
	}
	msg := ""
	if err != nil {
		msg = strings.ToLower(err.Error())
	}
	switch {
	case strings.Contains(msg, "no installed keys could decrypt"):
		return fmt.Sprintf("the cluster uses a different gossip key (check %s)", keyFile), slog.LevelError
	case strings.Contains(msg, "encrypted and encryption is not configured"):
		return "the cluster encrypts gossip but this node has no gossip key (configure " + keyFile + ")", slog.LevelError
	case strings.Contains(msg, "encryption is configured but remote state is not encrypted"):
		return "this node encrypts gossip but the cluster does not (remove " + keyFile + " or give the cluster a key)", slog.LevelError
	default:
		return "no seed reachable yet; retrying in the background", slog.LevelInfo
	}
}

// ---- memberlist plumbing ----

// nodeBroadcast is a queued gossip message about one node's list (or, with
// keyOp set, a keyring operation).
type nodeBroadcast struct {
	name     string
	version  uint64
	keyOp    bool
	msg      []byte
	finished chan struct{}
}

// Invalidates says whether b makes o obsolete: an older message about the
// same node (or the same key, for key operations); only the newest is
// worth sending.
func (b *nodeBroadcast) Invalidates(o *nodeBroadcast) bool {
	return o.keyOp == b.keyOp && o.name == b.name && o.version <= b.version
}

func (b *nodeBroadcast) Message() []byte { return b.msg }

func (b *nodeBroadcast) Finished() {
	if b.finished != nil {
		select {
		case b.finished <- struct{}{}:
		default:
		}
	}
}

// delegate implements memberlist's Delegate, EventDelegate and PingDelegate
// without exporting those methods on Gossip.
type delegate struct{ g *Gossip }

func (d *delegate) NodeMeta(limit int) []byte {
	meta := *d.g.meta.Load()
	if len(meta) > limit { // checked in New and SetMeta; never panic memberlist
		return nil
	}
	return slices.Clone(meta)
}

func (d *delegate) NotifyMsg(b []byte) {
	g := d.g
	m, err := decodeMessage(b)
	if err != nil {
		g.logDecodeError("gossip message", b, err)
		return
	}
	switch {
	case m.Node != nil:
		g.mu.Lock()
		news := g.applyLocked(*m.Node, nil)
		g.mu.Unlock()
		if news {
			g.queueRelay(m.Node, slices.Clone(b))
		}
	case m.KeyOp != nil:
		if g.keys.applyRemote(*m.KeyOp) {
			g.queue.Queue(keyOpBroadcast(*m.KeyOp, slices.Clone(b)))
		}
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.g.queue.Get(overhead, limit)
}

// LocalState is our whole view for a push-pull: every known node's latest
// list and liveness, so a node that joined late or was cut off converges
// in one exchange.
func (d *delegate) LocalState(join bool) []byte {
	g := d.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pruneLocked(time.Now())
	peers := make([]peerState, 0, len(g.nodes))
	for _, rec := range g.nodes {
		p := peerState{
			nodeState: rec.st,
			Liveness:  livenessCode(rec.state),
			Since:     rec.stateSince,
			Addr:      rec.addr,
			Meta:      encodeMeta(rec.meta),
		}
		p.Name = rec.name
		peers = append(peers, p)
	}
	return encodeFull(peers)
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	g := d.g
	if len(buf) == 0 {
		return
	}
	m, err := decodeMessage(buf)
	if err != nil || m.Full == nil {
		if err == nil {
			err = errors.New("not a full-state message")
		}
		g.logDecodeError("push-pull state", buf, err)
		return
	}
	var relay []nodeState
	g.mu.Lock()
	for i := range m.Full {
		p := &m.Full[i]
		if g.applyLocked(p.nodeState, p) {
			if rec := g.nodes[p.Name]; rec != nil && rec.state == NodeAlive {
				relay = append(relay, p.nodeState)
			}
		}
	}
	g.mu.Unlock()
	// Relay what was news, so a healed partition converges in a second
	// rather than one push-pull interval per hop.
	for i := range relay {
		g.queueRelay(&relay[i], encodeNode(&relay[i]))
	}
}

func (g *Gossip) logDecodeError(what string, b []byte, err error) {
	if errors.Is(err, ErrUnknownFormat) && len(b) > 0 {
		g.mu.Lock()
		seen := g.badFormat[b[0]]
		g.badFormat[b[0]] = true
		g.mu.Unlock()
		if seen {
			g.log.Debug("gossip: ignored "+what, "err", err)
			return
		}
	}
	g.log.Warn("gossip: ignored "+what, "err", err)
}

// NotifyJoin: a node is alive (new, or back from dead/left with a new
// incarnation). Note n.State is always StateAlive here (see doc.go).
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	g := d.g
	g.alive.Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	rec := g.recLocked(n.Name, now)
	g.updateFromNodeLocked(rec, n)
	if !rec.mlKnown || rec.state != NodeAlive {
		rec.stateSince = now
	}
	rec.mlKnown = true
	rec.state = NodeAlive
	rec.suspectUntil = time.Time{}
	if n.Name != g.cfg.NodeName {
		// Whatever the previous life said about leaving is void now.
		rec.st.Leaving = false
		g.log.Info("gossip: node joined", "node", n.Name, "addr", rec.addr)
	}
	g.notifyLocked()
}

// NotifyLeave: a node is dead or left. memberlist does not say which
// (n.State is never set); our copy of the node's list says whether it
// announced a graceful leave.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	g := d.g
	if g.alive.Add(-1) <= 1 {
		g.kickJoin()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	rec := g.recLocked(n.Name, now)
	g.updateFromNodeLocked(rec, n)
	rec.mlKnown = true
	rec.state = NodeDead
	if rec.st.Leaving {
		rec.state = NodeLeft
	}
	rec.stateSince = now
	rec.died, rec.deathVersion = true, rec.st.Version
	rec.suspectUntil = time.Time{}
	if n.Name != g.cfg.NodeName {
		g.log.Info("gossip: node "+rec.state, "node", n.Name, "addr", rec.addr)
	}
	g.notifyLocked()
}

func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	g := d.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.updateFromNodeLocked(g.recLocked(n.Name, time.Now()), n)
	g.notifyLocked()
}

func (g *Gossip) updateFromNodeLocked(rec *nodeRec, n *memberlist.Node) {
	rec.addr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	if m, err := decodeMeta(n.Meta); err == nil {
		rec.meta = m
	} else {
		g.log.Warn("gossip: bad node meta", "node", n.Name, "err", err)
	}
}

// AckPayload and NotifyPingComplete: a direct ack proves the peer alive,
// which clears a suspicion hint we derived from memberlist's log.
func (d *delegate) AckPayload() []byte { return nil }

func (d *delegate) NotifyPingComplete(other *memberlist.Node, _ time.Duration, _ []byte) {
	g := d.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if rec := g.nodes[other.Name]; rec != nil && !rec.suspectUntil.IsZero() {
		rec.suspectUntil = time.Time{}
		g.notifyLocked()
	}
}

// markSuspect records that memberlist on this node suspects name (it
// failed to probe it directly and indirectly). The hint lasts until the
// node acks us, publishes, is declared dead, or memberlist's longest
// suspicion timeout passed (by then it must have refuted).
func (g *Gossip) markSuspect(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	rec := g.nodes[name]
	if rec == nil || rec.state != NodeAlive {
		return
	}
	now := time.Now()
	if !now.Before(rec.suspectUntil) {
		rec.suspectSince = now
	}
	rec.suspectUntil = now.Add(g.timing.maxSuspicion(int(g.alive.Load())))
	g.notifyLocked()
}

// bindError says why memberlist could not start on host:port, naming the
// process that holds the port when that is why.
func bindError(err error, host string, port int) error {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if explained := portowner.Explain(err, addr); explained != err {
		return fmt.Errorf("gossip.bind: %w", explained)
	}
	return fmt.Errorf("gossip: start memberlist on %s: %w", addr, err)
}
