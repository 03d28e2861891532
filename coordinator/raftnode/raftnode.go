// Package raftnode runs one coordinator replica's raft: a raft-wal log,
// file snapshots, and a TCP transport that speaks mutual TLS with the
// cluster CA, accepting only coordinator certificates.
package raftnode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/dhvisor/dhvisor/internal/tlsutil"
)

// Peer is a raft server: its id (the coordinator's node name) and address.
type Peer struct {
	ID   string
	Addr string
}

// Config configures a replica.
type Config struct {
	ID        string
	DataDir   string // raft/ (log) and snapshots/ go under it
	Bind      string // host:port the transport listens on
	Advertise string // host:port peers dial; "" = Bind
	TLS       tlsutil.Files
	// Bootstrap is the initial voter set, this replica included; used only
	// when the data directory holds no raft state yet. Empty: this replica
	// waits to be added by `dhctl coordinator join`.
	Bootstrap []Peer
	// Timing: zero values keep hashicorp/raft's defaults (1 s heartbeat and
	// election timeouts, ~2 s failover).
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// CommitTimeout bounds how long a follower waits to learn that an
	// entry it holds was committed (raft tells it with the next append,
	// sent at the latest after this): every replica serves xDS from its own
	// state, so it is how late a follower's Envoy clients see a change.
	// Zero: DefaultCommitTimeout.
	CommitTimeout time.Duration
	// SnapshotThreshold (log entries between snapshots) and TrailingLogs
	// (entries kept after one, so a replica briefly down catches up from
	// the log rather than a whole snapshot): zero keeps raft's defaults.
	SnapshotThreshold uint64
	TrailingLogs      uint64
	Logger            *slog.Logger
}

// DefaultCommitTimeout replaces hashicorp/raft's 50 ms, which delayed a
// follower's xDS updates by 50 ms on average (make bench, scripts/bench/xds):
// an idle leader now sends each follower an empty append every 5-10 ms, a
// small cost on a handful of replicas.
const DefaultCommitTimeout = 5 * time.Millisecond

// Node is a running replica.
type Node struct {
	Raft *raft.Raft
	// Leadership receives true when this replica becomes the leader and
	// false when it stops being it; raft blocks until it is read.
	Leadership <-chan bool
	trans      *raft.NetworkTransport
	logs       *wal.WAL
	meta       *metadb.BoltMetaDB
	id         string
	addr       string
	snaps      raft.SnapshotStore
	fsm        FSM
	// openedAt is the last log index on disk when the replica started.
	openedAt uint64
}

// FSM is the replicated state. raft counts an entry applied once it hands
// it to the FSM, before Apply is done: WaitApplied says when the state
// holds it.
type FSM interface {
	raft.FSM
	WaitApplied(ctx context.Context, index uint64) error
}

// Open starts the replica with fsm. It bootstraps a new cluster only when
// there is no existing state and Bootstrap is set.
func Open(cfg Config, fsm FSM) (*Node, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	hlog := newHCLogger(log.With("component", "raft"))
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	leadership := make(chan bool, 1)
	rc.NotifyCh = leadership
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	}
	if cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	rc.CommitTimeout = DefaultCommitTimeout
	if cfg.CommitTimeout > 0 {
		rc.CommitTimeout = cfg.CommitTimeout
	}
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	if rc.LeaderLeaseTimeout > rc.HeartbeatTimeout {
		rc.LeaderLeaseTimeout = rc.HeartbeatTimeout
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "raft"), 0o700); err != nil {
		return nil, err
	}
	// raft-wal v0.4.0's Close leaves its metadata database open (and its
	// file locked); with our own we can close it.
	meta := &metadb.BoltMetaDB{}
	logs, err := wal.Open(filepath.Join(cfg.DataDir, "raft"), wal.WithLogger(hlog), wal.WithMetaStore(meta))
	if err != nil {
		meta.Close()
		return nil, fmt.Errorf("raft log in %s: %w", cfg.DataDir, err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		logs.Close()
		meta.Close()
		return nil, fmt.Errorf("raft snapshots in %s: %w", cfg.DataDir, err)
	}
	advertise := cfg.Advertise
	if advertise == "" {
		advertise = cfg.Bind
	}
	stream, err := listenTLS(cfg.Bind, advertise, cfg.TLS)
	if err != nil {
		logs.Close()
		meta.Close()
		return nil, err
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: hlog,
	})
	n := &Node{trans: trans, logs: logs, meta: meta, snaps: snaps, id: cfg.ID, addr: string(trans.LocalAddr()), fsm: fsm}
	existing, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		n.closeStores()
		return nil, err
	}
	if !existing && len(cfg.Bootstrap) > 0 {
		var servers []raft.Server
		for _, p := range cfg.Bootstrap {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr)})
		}
		if err := raft.BootstrapCluster(rc, logs, logs, snaps, trans, raft.Configuration{Servers: servers}); err != nil {
			n.closeStores()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	r, err := raft.NewRaft(rc, fsm, logs, logs, snaps, trans)
	if err != nil {
		n.closeStores()
		return nil, err
	}
	n.Raft, n.Leadership = r, leadership
	n.openedAt = r.LastIndex()
	return n, nil
}

// lastCommand is the index of the last command in the log up to last and
// after the newest snapshot (whose state the FSM holds), or 0. What follows
// it, if anything, is raft's own (an election's no-op, a configuration),
// which the state never sees. An entry gone from the log was compacted
// after a snapshot, which holds it and every entry before it.
func lastCommand(logs raft.LogStore, snaps raft.SnapshotStore, last uint64) (uint64, error) {
	first, err := logs.FirstIndex()
	if err != nil {
		return 0, err
	}
	metas, err := snaps.List()
	if err != nil {
		return 0, err
	}
	if len(metas) > 0 {
		first = max(first, metas[0].Index+1)
	}
	for i := last; i >= first && i > 0; i-- {
		var l raft.Log
		if err := logs.GetLog(i, &l); errors.Is(err, raft.ErrLogNotFound) {
			return 0, nil
		} else if err != nil {
			return 0, fmt.Errorf("entry %d: %w", i, err)
		}
		if l.Type == raft.LogCommand {
			return i, nil
		}
	}
	return 0, nil
}

// WaitRestored waits until the replica's state holds every entry its log
// held when it started, so that it is at least what it was before a restart
// (raft restores only the snapshot at start; the entries after it are
// applied once a leader confirms them). It gives up after maxWait, when no
// quorum can confirm them, and says whether the state was restored.
func (n *Node) WaitRestored(ctx context.Context, maxWait time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n.Raft.AppliedIndex() < n.openedAt {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	// raft counts an entry applied once it has handed it to the state, which
	// may still be applying it and thousands before it. The log is read now,
	// not at start: a tail no quorum had taken may have been replaced since.
	last, err := lastCommand(n.logs, n.snaps, n.Raft.AppliedIndex())
	if err != nil {
		return false
	}
	return n.fsm.WaitApplied(ctx, last) == nil
}

// Addr is the transport's advertised address.
func (n *Node) Addr() string { return n.addr }

// ID is this replica's server id.
func (n *Node) ID() string { return n.id }

// IsLeader reports whether this replica leads.
func (n *Node) IsLeader() bool { return n.Raft.State() == raft.Leader }

// Leader returns the leader's id and address ("" while there is none).
func (n *Node) Leader() (id, addr string) {
	a, i := n.Raft.LeaderWithID()
	return string(i), string(a)
}

// ErrNotLeader is returned by Apply on a follower.
var ErrNotLeader = errors.New("not the raft leader")

// Apply commits data and returns the FSM's response and the entry's log
// index. It fails with ErrNotLeader on a follower (forward to the leader
// instead).
func (n *Node) Apply(ctx context.Context, data []byte) (any, uint64, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	f := n.Raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
			return nil, 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return nil, 0, err
	}
	return f.Response(), f.Index(), nil
}

// Announce has the leader tell the followers at once what it has
// committed. Raft carries the commit index on the next append, which, when
// nothing else is written, comes after CommitTimeout (5-10 ms); a barrier is
// such an append, sent now. Followers serve xDS from their own state, so a
// worker registration reaches their Envoy clients that much sooner. The
// barrier is not waited for.
func (n *Node) Announce() { n.Raft.Barrier(0) }

// Servers returns the raft configuration.
func (n *Node) Servers() ([]raft.Server, error) {
	f := n.Raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	return f.Configuration().Servers, nil
}

// Alive proves that raft's main loop answers, for systemd's watchdog: a
// verification of leadership is handled by that loop in every role (a
// follower or candidate answers "not the leader" at once, a leader after one
// round of heartbeats, or when it steps down). GetConfiguration would prove
// nothing: it reads a copy the loop keeps outside itself. Alive blocks while
// the loop is stuck.
func (n *Node) Alive() error {
	err := n.Raft.VerifyLeader().Error()
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return nil
	}
	return err
}

// Shutdown stops raft and closes the transport and the log.
func (n *Node) Shutdown() error {
	err := n.Raft.Shutdown().Error()
	n.closeStores()
	return err
}

func (n *Node) closeStores() {
	n.trans.Close()
	n.logs.Close()
	n.meta.Close()
}
