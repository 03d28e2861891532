// Package coordinator wires one dhcoord replica together: raft and its
// state machine, the cluster API, gossip membership (to see node health at
// once), the agents' clients and, while this replica leads, the operations
// engine and the node inventory.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/agents"
	"github.com/dhvisor/dhvisor/coordinator/api"
	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/coordinator/ops"
	"github.com/dhvisor/dhvisor/coordinator/pkgstore"
	"github.com/dhvisor/dhvisor/coordinator/raftnode"
	"github.com/dhvisor/dhvisor/coordinator/xds"
	"github.com/dhvisor/dhvisor/internal/config"
	"github.com/dhvisor/dhvisor/internal/gossip"
	"github.com/dhvisor/dhvisor/internal/portowner"
	"github.com/dhvisor/dhvisor/internal/sdnotify"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	"github.com/dhvisor/dhvisor/internal/version"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Coordinator is one replica.
type Coordinator struct {
	cfg *config.Coordinator
	log *slog.Logger
	// leaderLoops run beside the leader's own loops, for as long as it
	// leads.
	leaderLoops []func(context.Context)
}

// New returns a replica for a validated configuration.
func New(cfg *config.Coordinator, log *slog.Logger) *Coordinator {
	return &Coordinator{cfg: cfg, log: log}
}

// Run serves until ctx ends.
func (c *Coordinator) Run(ctx context.Context) error {
	cfg := c.cfg
	// Agents may call too, to register their node's workers only (see
	// api.Authorize).
	serverTLS, err := tlsutil.ServerConfig(cfg.TLS, tlsutil.RoleOperator, tlsutil.RoleCoordinator, tlsutil.RoleAgent)
	if err != nil {
		return err
	}
	peerTLS, err := tlsutil.ClientConfig(cfg.TLS, tlsutil.RoleCoordinator)
	if err != nil {
		return err
	}
	agentTLS, err := tlsutil.ClientConfig(cfg.TLS, tlsutil.RoleAgent)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return fmt.Errorf("api.listen: %w", portowner.Explain(err, cfg.API.Listen))
	}
	defer lis.Close()
	apiAddr := cfg.API.Addr(lis.Addr().String())

	state := fsm.New()
	var boot []raftnode.Peer
	for _, p := range cfg.Raft.Bootstrap {
		boot = append(boot, raftnode.Peer{ID: p.ID, Addr: p.Addr})
	}
	rn, err := raftnode.Open(raftnode.Config{
		ID: cfg.Node, DataDir: cfg.DataDir, Bind: cfg.Raft.Listen, Advertise: cfg.Raft.Advertise,
		TLS: cfg.TLS, Bootstrap: boot, Logger: c.log,
		HeartbeatTimeout: cfg.Raft.HeartbeatTimeout.D(), ElectionTimeout: cfg.Raft.ElectionTimeout.D(), CommitTimeout: cfg.Raft.CommitTimeout.D(),
		SnapshotThreshold: cfg.Raft.SnapshotThreshold, TrailingLogs: cfg.Raft.TrailingLogs,
	}, state)
	if err != nil {
		return err
	}
	defer func() {
		if err := rn.Shutdown(); err != nil {
			c.log.Warn("raft shutdown", "err", err)
		}
	}()

	gctx, gcancel := context.WithCancel(context.Background())
	defer gcancel()
	g, err := gossip.Join(gctx, cfg.Node, cfg.Gossip, gossip.NodeMeta{Kind: gossip.KindCoordinator, APIAddr: apiAddr, DhvisorVersion: version.Version}, c.log)
	if err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	defer func() {
		if err := g.Leave(2 * time.Second); err != nil {
			c.log.Warn("gossip leave", "err", err)
		}
	}()

	store, err := pkgstore.Open(filepath.Join(cfg.DataDir, "packages"))
	if err != nil {
		return err
	}
	defaults := ops.Defaults{MinHealthyTime: cfg.Operations.MinHealthyTime.D(), HealthyDeadline: cfg.Operations.HealthyDeadline.D(), ProgressDeadline: cfg.Operations.ProgressDeadline.D()}
	srv := &api.Server{FSM: state, Raft: rn, Gossip: g, Defaults: defaults, LeaderCreds: credentials.NewTLS(peerTLS), Store: store}
	defer srv.Close()
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS)), grpc.ChainUnaryInterceptor(api.Authorize), grpc.ChainStreamInterceptor(api.AuthorizeStream))
	pb.RegisterCoordinatorServer(gs, srv)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	xdsLis, xgs, err := listenXDS(cfg)
	if err != nil {
		return err
	}
	defer xdsLis.Close()
	xdsAddr := cfg.Envoy.XDS.Addr(xdsLis.Addr().String())
	xdsSrv := xds.NewServer(ctx, c.log.With("component", "xds"))
	xdsSrv.Register(xgs)
	file := &routesFile{
		cfg: cfg, fsm: state, self: cfg.Node, isLeader: rn.IsLeader, hosts: srv.LocalHosts, log: c.log.With("component", "extra-routes"),
		commit: func(ctx context.Context, who string, doc *pb.ExtraRoutes) error {
			_, err := srv.CommitExtraRoutes(ctx, who, doc)
			return err
		},
	}
	feed := newRouteFeed(state, g, xdsSrv, file, c.log)
	srv.RouteTable = func() *pb.RoutesResponse { return feed.table(xdsAddr) }

	pool := agents.NewPool(agentTLS, func(node string) (string, error) { return agentAddr(g, state, node) })
	defer pool.Close()
	engine := &ops.Engine{
		FSM: state, Agents: pool, Health: gossipHealth{g}, Self: "coordinator:" + cfg.Node,
		Log: c.log.With("component", "ops"),
		Propose: func(ctx context.Context, cmd *pb.Command) (any, error) {
			return propose(ctx, rn, cmd)
		},
	}
	self := &pb.Peer{Id: cfg.Node, RaftAddr: rn.Addr(), ApiAddr: apiAddr, XdsAddr: xdsAddr}
	if run := importWorkers(cfg, state, srv, engine, c.log); run != nil {
		c.leaderLoops = append(c.leaderLoops, run)
	}

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(7)
	go func() {
		defer wg.Done()
		prunePackages(ctx, state, store, c.log)
	}()
	go func() {
		defer wg.Done()
		file.run(ctx)
	}()
	go func() {
		defer wg.Done()
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- err
		}
	}()
	go func() {
		defer wg.Done()
		if err := xgs.Serve(xdsLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("xds: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		feed.run(ctx, rn.WaitRestored)
	}()
	go func() {
		defer wg.Done()
		c.lead(ctx, rn, engine, &inventory{fsm: state, gossip: g, agents: pool, propose: engine.Propose, self: engine.Self, log: c.log}, func(ctx context.Context) error {
			return srv.RegisterSelf(ctx, self)
		})
	}()
	go func() {
		defer wg.Done()
		registerSelf(ctx, srv, state, self, c.log)
	}()
	c.log.Info("coordinator running", "node", cfg.Node, "api", apiAddr, "raft", rn.Addr(), "xds", xdsAddr, "data_dir", cfg.DataDir, "version", version.Version)
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Ready for systemd once the state from before a restart is back
		// (or no quorum could confirm it within the bound the route feed
		// waits too); alive while raft's main loop answers and the
		// replicated state's lock can be taken (raft's apply holds it while
		// applying; Changed takes it and copies nothing).
		rn.WaitRestored(ctx, restoreWait)
		if ctx.Err() != nil {
			return
		}
		sdnotify.Ready()
		sdnotify.Watchdog(ctx, c.log, func(context.Context) error {
			if err := rn.Alive(); err != nil {
				return err
			}
			state.Changed()
			return nil
		})
	}()

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sdnotify.Stopping()
	cancel()
	// xDS streams never end on their own (they end with ctx, cancelled
	// above); open WatchOp streams would hold a graceful stop of the API.
	xgs.Stop()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		gs.Stop()
		<-stopped
	}
	wg.Wait()
	return err
}

// lead runs the leader's loops for as long as this replica leads.
func (c *Coordinator) lead(ctx context.Context, rn *raftnode.Node, engine *ops.Engine, inv *inventory, register func(context.Context) error) {
	var stop func()
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-rn.Leadership:
			if stop != nil {
				stop()
				stop = nil
			}
			if !leader {
				c.log.Info("no longer the leader")
				continue
			}
			c.log.Info("leading: operations and the node inventory run here")
			// Followers forward writes to the address recorded here: record
			// it before anything else, so forwarding works at once.
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := register(rctx)
			cancel()
			if err != nil {
				c.log.Warn("recording this leader's addresses", "err", err)
			}
			stop = startLeading(ctx, engine, inv, c.leaderLoops...)
		}
	}
}

// startLeading starts the leader-only loops, and also; the returned
// function stops them and waits until they have.
func startLeading(ctx context.Context, engine *ops.Engine, inv *inventory, also ...func(context.Context)) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); engine.Lead(ctx) }()
	go func() { defer wg.Done(); inv.run(ctx) }()
	go func() { defer wg.Done(); reapWorkers(ctx, engine.FSM, engine.Propose, engine.Self, inv.log) }()
	for _, run := range also {
		wg.Go(func() { run(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

func propose(ctx context.Context, rn *raftnode.Node, cmd *pb.Command) (any, error) {
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	res, _, err := rn.Apply(ctx, data)
	if err != nil {
		return nil, err
	}
	if rerr, ok := res.(error); ok {
		return nil, rerr
	}
	return res, nil
}

// registerSelf keeps this replica's addresses in the replicated state.
func registerSelf(ctx context.Context, srv *api.Server, state *fsm.FSM, self *pb.Peer, log *slog.Logger) {
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		changed := state.Changed()
		if p := state.Peer(self.Id); p == nil || !proto.Equal(p, self) {
			select {
			case <-ctx.Done():
				return
			case <-retry.C:
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := srv.RegisterSelf(rctx, self)
			cancel()
			if err != nil {
				log.Debug("registering this coordinator's addresses; will retry", "err", err)
				retry.Reset(time.Second)
			} else {
				retry.Reset(0)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// agentAddr is where node's agent API listens: from its gossip meta, else as
// last recorded.
func agentAddr(g *gossip.Gossip, state *fsm.FSM, node string) (string, error) {
	for _, v := range g.View() {
		if v.Name == node && v.Meta.APIAddr != "" {
			return v.Meta.APIAddr, nil
		}
	}
	if n := state.Node(node); n != nil && n.ApiAddr != "" {
		return n.ApiAddr, nil
	}
	return "", fmt.Errorf("node %s publishes no agent API address (set api.listen in its agent.yaml)", node)
}

// gossipHealth implements ops.Health over the gossip view.
type gossipHealth struct{ g *gossip.Gossip }

func (h gossipHealth) Services(node string) map[string]ops.ServiceHealth {
	out := map[string]ops.ServiceHealth{}
	for _, v := range h.g.View() {
		if v.Name == node {
			for _, s := range v.Services {
				out[s.Name] = ops.ServiceHealth{State: s.State, Since: s.Since}
			}
		}
	}
	return out
}

func (h gossipHealth) NodeState(node string) string {
	for _, v := range h.g.View() {
		if v.Name == node {
			return v.State
		}
	}
	return ""
}

func (h gossipHealth) Subscribe() (<-chan struct{}, func()) { return h.g.Subscribe() }

// listenXDS opens the xDS port: mutual TLS with the cluster CA (any role:
// Envoy presents its node's agent certificate), or plaintext for Envoy on
// Deephaven's stock bootstrap when envoy.xds.plaintext says so.
func listenXDS(cfg *config.Coordinator) (net.Listener, *grpc.Server, error) {
	opts := []grpc.ServerOption{
		// As go-control-plane's example server: xDS streams are long-lived,
		// and a client behind a NAT must not be dropped while idle.
		grpc.MaxConcurrentStreams(1 << 20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 30 * time.Second, PermitWithoutStream: true}),
	}
	if !cfg.Envoy.XDS.Plaintext {
		tc, err := tlsutil.ServerConfig(cfg.TLS, tlsutil.RoleAgent, tlsutil.RoleOperator, tlsutil.RoleCoordinator)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	l, err := net.Listen("tcp", cfg.Envoy.XDS.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("envoy.xds.listen: %w", portowner.Explain(err, cfg.Envoy.XDS.Listen))
	}
	return l, grpc.NewServer(opts...), nil
}

// prunePackages removes this replica's copies of packages no longer
// recorded (the state keeps fsm.MaxPackages): at start, when the package
// records change, and every 10 minutes.
func prunePackages(ctx context.Context, state *fsm.FSM, store *pkgstore.Store, log *slog.Logger) {
	tick := time.NewTicker(10 * time.Minute) // a package written but never recorded (upload refused) goes too
	defer tick.Stop()
	var kept map[string]bool
	ticked := true
	for {
		// Most changes are worker registrations and health: the store is
		// looked at only when the package records change, or on the tick.
		changed := state.Changed()
		if keep := state.PackageSums(); ticked || !maps.Equal(keep, kept) {
			if removed := store.Prune(keep, 10*time.Minute); len(removed) > 0 {
				log.Info("removed packages no longer recorded", "sha256", removed)
			}
			kept = keep
		}
		ticked = false
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-tick.C:
			ticked = true
		}
	}
}
