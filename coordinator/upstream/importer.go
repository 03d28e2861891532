package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/ops"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/version"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Reconnection backoff, doubled from min to max with jitter, and reset by
// an accepted update.
const (
	backoffMin = 250 * time.Millisecond
	backoffMax = 10 * time.Second
)

// maxResponse bounds one xDS response: the clusters of 20,000 workers
// are several times gRPC's default 4 MiB.
const maxResponse = 256 << 20

// resolveTimeout bounds the lookup of one worker's host name.
const resolveTimeout = 2 * time.Second

// Importer keeps, while its Run lasts (the leader's term), the workers of
// the configuration server in raft: one set under the node named by the
// upstream's address and dispatcher configuration_server, replaced whole by
// each update. While the stream is down the last set stays for Grace from
// when it was last known up, then it is withdrawn; the lease of the set is
// that moment, so every replica stops routing it then on its own clock,
// with or without a leader.
type Importer struct {
	Upstream config.XDSUpstream
	Grace    time.Duration
	FSM      *fsm.FSM
	// Store makes a set the one of its node and dispatcher
	// (api.Server.StoreWorkers).
	Store   func(ctx context.Context, who string, ws *pb.WorkerSet) (changed bool, err error)
	Propose ops.Proposer
	Self    string // the audit log's who, "coordinator:c1"
	Log     *slog.Logger
	// Resolver resolves workers' host names (EDS endpoints must be
	// addresses); nil: net.DefaultResolver.
	Resolver *net.Resolver
	// Permit says why Envoy must not be sent to an address, if it must
	// not (api.WorkerPolicy.Allowed): a configuration server's route to
	// loopback or link-local is as dangerous as a registration's.
	Permit func(netip.Addr) error

	rec *pb.UpstreamImport // what this term recorded last, or found
	// latest is what the last update gave (version, workers, skipped):
	// recorded at once when it matters to an operator, else with the
	// next renewal, so that an update costs one raft entry, its set's.
	latest  pb.UpstreamImport
	live    bool
	heard   time.Time // live: the last time the stream was known up
	pending *Event    // an update not stored yet (a proposal failed)
}

// renewEvery is how often a live import renews the set's lease: often
// enough that a leader lost without a word leaves its successor most of
// the grace.
func renewEvery(grace time.Duration) time.Duration {
	return min(max(grace/4, 100*time.Millisecond), time.Minute)
}

// session is one connection to the configuration server.
type session struct {
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	events chan Event
	done   chan error // the subscription's end, then closed
}

func (s *session) stop() {
	s.cancel()
	for range s.done {
	}
	_ = s.conn.Close()
}

// Run imports until ctx ends (leadership lost).
func (im *Importer) Run(ctx context.Context) {
	addr := im.Upstream.Address
	im.rec = im.FSM.Upstream()
	if im.rec != nil && im.rec.Address != addr {
		im.rec = nil // another configuration server's: ours replaces it
	}
	if im.rec != nil {
		im.latest.Version, im.latest.Workers, im.latest.Skipped = im.rec.Version, im.rec.Workers, im.rec.Skipped
	}
	if im.rec != nil && im.rec.State == pb.UpstreamLive {
		// Live under the leader before: known up until its last renewal.
		im.heard = time.UnixMilli(im.rec.HeardUnixMs)
	}
	backoff := backoffMin
	retry := time.NewTimer(0)
	defer retry.Stop()
	renew := time.NewTicker(renewEvery(im.Grace))
	defer renew.Stop()
	withdraw := time.NewTimer(time.Hour)
	withdraw.Stop()
	defer withdraw.Stop()
	if im.rec != nil && im.rec.State == pb.UpstreamStale {
		withdraw.Reset(time.Until(time.UnixMilli(im.rec.WithdrawUnixMs)))
	}
	var sess *session
	defer func() {
		if sess != nil {
			sess.stop()
		}
	}()
	for {
		var events <-chan Event
		var done <-chan error
		if sess != nil {
			events, done = sess.events, sess.done
		}
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			var err error
			if sess, err = im.connect(ctx); err != nil {
				im.lost(ctx, err, withdraw)
				retry.Reset(jitter(backoff))
				backoff = min(2*backoff, backoffMax)
			}
		case ev := <-events:
			if im.update(ctx, ev) {
				backoff = backoffMin
			}
		case err := <-done:
			sess.stop()
			sess = nil
			im.lost(ctx, err, withdraw)
			retry.Reset(jitter(backoff))
			backoff = min(2*backoff, backoffMax)
		case <-renew.C:
			if im.pending != nil {
				im.update(ctx, *im.pending)
			} else if im.live {
				im.heard = time.Now()
				im.record(ctx, pb.UpstreamLive, im.rec.GetError())
			}
		case <-withdraw.C:
			if !im.live && im.rec != nil && im.rec.State == pb.UpstreamStale {
				im.Log.Warn("configuration server xDS down for the whole grace: its workers are withdrawn", "upstream", addr, "grace", im.Grace)
				im.record(ctx, pb.UpstreamWithdrawn, im.rec.Error)
			}
		}
	}
}

func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}

// connect dials the configuration server and starts a subscription.
func (im *Importer) connect(ctx context.Context) (*session, error) {
	u := im.Upstream
	creds := insecure.NewCredentials()
	if u.TLS != nil {
		// Read anew on each connection: certificates get renewed.
		tc, err := u.TLS.ClientConfig(u.Address)
		if err != nil {
			return nil, fmt.Errorf("envoy.xds.upstream.tls: %w", err)
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(u.Address, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponse)),
		// grpc-java servers, as Deephaven's is, refuse pings more often
		// than every 5 minutes by default.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}))
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &session{conn: conn, cancel: cancel, events: make(chan Event), done: make(chan error, 1)}
	sub := &Subscription{Conn: conn, ADS: u.ADS, RouteConfig: u.RouteConfig, Node: &core.Node{
		Id: u.NodeID, Cluster: u.NodeCluster, UserAgentName: "dhcoord",
		UserAgentVersionType: &core.Node_UserAgentVersion{UserAgentVersion: version.Version},
	}}
	go func() {
		defer close(s.done)
		s.done <- sub.Run(sctx, s.events)
	}()
	return s, nil
}

// update stores what the configuration server sent; it says whether the
// stream delivered workers.
func (im *Importer) update(ctx context.Context, ev Event) bool {
	if ev.Refused != nil {
		im.Log.Warn("configuration server xDS response refused (NACK); the workers imported before stay", "upstream", im.Upstream.Address, "err", ev.Refused)
		if im.live {
			im.record(ctx, pb.UpstreamLive, ev.Refused.Error())
		}
		return false
	}
	now := time.Now()
	workers, skipped := Extract(*ev.Resources)
	workers, skipped = im.resolve(ctx, workers, skipped)
	addr := im.Upstream.Address
	kept := workers[:0]
	for _, w := range workers {
		if err := im.FSM.WorkerConflict(addr, fsm.UpstreamDispatcher, w); err != nil {
			skipped = append(skipped, fmt.Sprintf("worker %s (%s %q): %v", w.Name, PrefixHeader, w.EnvoyPrefix, err))
			continue
		}
		kept = append(kept, w)
	}
	im.pending = &ev
	if !im.live {
		im.dropForeign(ctx)
	}
	// CDS and RDS come one after the other: most responses change no
	// worker, and the lease is the renewals' business.
	cur := im.FSM.WorkerSet(addr, fsm.UpstreamDispatcher)
	upsert, remove := fsm.DiffWorkers(cur.GetWorkers(), kept)
	if !im.live || len(upsert) > 0 || len(remove) > 0 {
		ws := &pb.WorkerSet{Node: addr, Dispatcher: fsm.UpstreamDispatcher, Workers: kept, LeaseExpiresUnixMs: now.Add(im.Grace).UnixMilli(), Upstream: addr}
		if _, err := im.Store(ctx, im.Self, ws); err != nil {
			if ctx.Err() == nil {
				im.Log.Warn("storing the configuration server's workers; will retry", "upstream", addr, "err", err)
			}
			return true
		}
		im.Log.Debug("configuration server workers stored", "workers", len(kept), "versions", ev.Versions)
	}
	im.pending = nil
	wasLive := im.live
	if !wasLive {
		im.Log.Info("configuration server xDS live: its workers are imported", "upstream", addr, "workers", len(kept), "versions", ev.Versions)
	}
	newSkips := !slices.Equal(skipped, im.latest.Skipped)
	if len(skipped) > 0 && newSkips {
		im.Log.Warn("routes on the envoy-prefix header not imported", "upstream", addr, "skipped", skipped)
	}
	im.latest = pb.UpstreamImport{Version: ev.Versions, Workers: int32(len(kept)), Skipped: skipped}
	im.live, im.heard = true, now
	if !wasLive || newSkips || im.rec.GetError() != "" {
		im.record(ctx, pb.UpstreamLive, "")
	}
	return true
}

// dropForeign removes the sets imported from another configuration server
// (envoy.xds.upstream changed): this one's replaces them.
func (im *Importer) dropForeign(ctx context.Context) {
	for _, ws := range im.FSM.WorkerSets() {
		if ws.Upstream == "" || ws.Upstream == im.Upstream.Address {
			continue
		}
		if _, err := im.Store(ctx, im.Self, &pb.WorkerSet{Node: ws.Node, Dispatcher: ws.Dispatcher, Upstream: ws.Upstream}); err != nil && ctx.Err() == nil {
			im.Log.Warn("removing the workers imported from another configuration server", "upstream", ws.Upstream, "err", err)
		}
	}
}

// lost records that the stream is down: the set stays until the grace from
// when it was last known up ends.
func (im *Importer) lost(ctx context.Context, err error, withdraw *time.Timer) {
	if ctx.Err() != nil {
		return // leadership lost, not the stream: the next leader carries on
	}
	addr := im.Upstream.Address
	switch {
	case im.live:
		im.live, im.heard = false, time.Now()
	case im.rec != nil && im.rec.State == pb.UpstreamLive && !im.heard.IsZero():
		// Live under the leader before, never reached from here.
	case im.rec == nil:
		// Nothing imported yet: nothing to keep.
		im.Log.Warn("configuration server xDS unreachable; will retry", "upstream", addr, "err", err)
		im.record(ctx, pb.UpstreamWithdrawn, err.Error())
		return
	default:
		im.Log.Debug("configuration server xDS still unreachable", "upstream", addr, "err", err)
		return
	}
	im.Log.Warn("configuration server xDS stream lost: its workers stay for the grace", "upstream", addr, "err", err, "grace", im.Grace)
	im.record(ctx, pb.UpstreamStale, err.Error())
	withdraw.Reset(time.Until(im.heard.Add(im.Grace)))
}

// record proposes the import's state, with the latest update's figures and
// the lease: the grace from when the stream was last known up.
func (im *Importer) record(ctx context.Context, state, errText string) {
	u := &pb.UpstreamImport{State: state, Error: errText, Version: im.latest.Version, Workers: im.latest.Workers, Skipped: im.latest.Skipped}
	if state == pb.UpstreamWithdrawn {
		u.Workers = 0
	}
	now := time.Now()
	u.Address = im.Upstream.Address
	u.SinceUnixMs = now.UnixMilli()
	if im.rec != nil && im.rec.State == u.State {
		u.SinceUnixMs = im.rec.SinceUnixMs
	}
	if !im.heard.IsZero() {
		u.HeardUnixMs = im.heard.UnixMilli()
		u.WithdrawUnixMs = im.heard.Add(im.Grace).UnixMilli()
	}
	if u.State == pb.UpstreamWithdrawn {
		u.WithdrawUnixMs = 0
	}
	cmd := &pb.Command{AtUnixMs: now.UnixMilli(), Who: im.Self, Cmd: &pb.Command_UpstreamImport{UpstreamImport: u}}
	if _, err := im.Propose(ctx, cmd); err != nil {
		if ctx.Err() == nil {
			im.Log.Warn("recording the configuration server import", "state", u.State, "err", err)
		}
		return
	}
	im.rec = u
}

// resolve makes the workers' host names addresses, as EDS endpoints must
// be: once, on the leader, so every replica serves the same.
func (im *Importer) resolve(ctx context.Context, ws []*agentpb.Worker, skipped []string) ([]*agentpb.Worker, []string) {
	r := im.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	type lookup struct{ ip, why string }
	cache := map[string]lookup{}
	out := ws[:0]
	for _, w := range ws {
		if a, err := netip.ParseAddr(w.Host); err == nil {
			if why := im.permit(a); why != nil {
				skipped = append(skipped, fmt.Sprintf("worker %s (%s %q): host %s %v", w.Name, PrefixHeader, w.EnvoyPrefix, w.Host, why))
				continue
			}
			out = append(out, w)
			continue
		}
		l, ok := cache[w.Host]
		if !ok {
			lctx, cancel := context.WithTimeout(ctx, resolveTimeout)
			addrs, err := r.LookupNetIP(lctx, "ip", w.Host)
			cancel()
			switch {
			case err != nil:
				l.why = err.Error()
			case len(addrs) == 0:
				l.why = "no address"
			default:
				// IPv4 first when there is one, as most Deephaven hosts
				// are reached.
				slices.SortStableFunc(addrs, func(a, b netip.Addr) int { return boolInt(b.Unmap().Is4()) - boolInt(a.Unmap().Is4()) })
				if why := im.permit(addrs[0].Unmap()); why != nil {
					l.why = fmt.Sprintf("%s %v", addrs[0].Unmap(), why)
				} else {
					l.ip = addrs[0].Unmap().String()
				}
			}
			cache[w.Host] = l
		}
		if l.ip == "" {
			skipped = append(skipped, fmt.Sprintf("worker %s (%s %q): host %s: %s", w.Name, PrefixHeader, w.EnvoyPrefix, w.Host, l.why))
			continue
		}
		w.Host = l.ip
		out = append(out, w)
	}
	return out, skipped
}

func (im *Importer) permit(a netip.Addr) error {
	if im.Permit == nil {
		return nil
	}
	return im.Permit(a.Unmap())
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
