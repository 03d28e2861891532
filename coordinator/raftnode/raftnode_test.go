package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	"github.com/dhvisor/dhvisor/internal/tlsutil"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func TestMain(m *testing.M) {
	// raft-wal's background segment work and hashicorp/raft's transport
	// pools are torn down by Shutdown; nothing may outlive it.
	goleak.VerifyTestMain(m)
}

type replica struct {
	cfg  Config
	fsm  *fsm.FSM
	node *Node
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// threeReplicas starts a bootstrapped 3-replica cluster that snapshots
// every 20 entries.
func threeReplicas(t *testing.T) []*replica {
	t.Helper()
	dir := t.TempDir()
	ca, key, err := tlsutil.CreateCA(dir, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var reps []*replica
	var boot []Peer
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("c%d", i)
		cert, ckey, err := tlsutil.CreateCert(ca, key, dir, tlsutil.CertRequest{Role: tlsutil.RoleCoordinator, Name: id})
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{
			ID: id, DataDir: filepath.Join(dir, id), Bind: freeAddr(t), TLS: tlsutil.Files{CA: ca, Cert: cert, Key: ckey},
			SnapshotThreshold: 20, TrailingLogs: 5, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		boot = append(boot, Peer{ID: id, Addr: cfg.Bind})
		reps = append(reps, &replica{cfg: cfg})
	}
	for _, r := range reps {
		r.cfg.Bootstrap = boot
		r.open(t)
	}
	t.Cleanup(func() {
		for _, r := range reps {
			if r.node != nil {
				_ = r.node.Shutdown()
			}
		}
	})
	return reps
}

func (r *replica) open(t *testing.T) {
	t.Helper()
	r.fsm = fsm.New()
	n, err := Open(r.cfg, r.fsm)
	if err != nil {
		t.Fatal(err)
	}
	r.node = n
}

func leader(t *testing.T, reps []*replica) *replica {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, r := range reps {
			if r.node != nil && r.node.IsLeader() {
				return r
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no leader elected")
	return nil
}

// follower is a replica other than the leader l.
func follower(reps []*replica, l *replica) *replica {
	for _, r := range reps {
		if r != l {
			return r
		}
	}
	return nil
}

// write has replica r add node n<i> and returns the entry's index.
func write(t *testing.T, r *replica, i int) uint64 {
	t.Helper()
	data, err := fsm.Encode(&pb.Command{AtUnixMs: int64(i), Who: "test", Cmd: &pb.Command_NodeUpsert{NodeUpsert: &pb.Node{Name: fmt.Sprintf("n%03d", i), State: "alive"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, index, err := r.node.Apply(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	return index
}

// A replica down while the others write and snapshot comes back and ends
// with the same state; a replica restarted after a snapshot restores it.
func TestCatchUpFromSnapshot(t *testing.T) {
	reps := threeReplicas(t)
	l := leader(t, reps)
	down := follower(reps, l)
	for i := 0; i < 10; i++ {
		write(t, l, i)
	}
	if err := down.node.Shutdown(); err != nil {
		t.Fatal(err)
	}
	down.node = nil
	for i := 10; i < 100; i++ {
		write(t, leader(t, reps), i)
	}
	if err := leader(t, reps).node.Raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	down.open(t)
	want := leader(t, reps).fsm.State()
	deadline := time.Now().Add(10 * time.Second)
	for !proto.Equal(down.fsm.State(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the returning replica has %d nodes, want %d", len(down.fsm.State().Nodes), len(want.Nodes))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The replica that took the snapshot restarts from it (and the log
	// after it) and ends with the same state.
	snapper := leader(t, reps)
	if err := snapper.node.Shutdown(); err != nil {
		t.Fatal(err)
	}
	snapper.open(t)
	if idx := snapper.node.Raft.Stats()["last_snapshot_index"]; idx == "0" {
		t.Fatalf("no snapshot to restore from (last_snapshot_index %s)", idx)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !proto.Equal(snapper.fsm.State(), want) {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not restore its state from its snapshot")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A follower refuses writes with ErrNotLeader; leadership moves on request.
func TestFollowerAndTransfer(t *testing.T) {
	reps := threeReplicas(t)
	l := leader(t, reps)
	f := follower(reps, l)
	data, _ := fsm.Encode(&pb.Command{Cmd: &pb.Command_PeerRemove{PeerRemove: "x"}})
	if _, _, err := f.node.Apply(context.Background(), data); !errors.Is(err, ErrNotLeader) {
		t.Errorf("follower apply: %v", err)
	}
	if err := l.node.Raft.LeadershipTransferToServer(raft.ServerID(f.cfg.ID), raft.ServerAddress(f.node.Addr())).Error(); err != nil {
		t.Fatal(err)
	}
	if got := leader(t, reps); got != f {
		t.Errorf("leader after transfer: %s, want %s", got.cfg.ID, f.cfg.ID)
	}
	if id, _ := f.node.Leader(); id != f.cfg.ID {
		t.Errorf("Leader() = %q", id)
	}
}

// Alive is answered by every replica's raft main loop: the leader's after a
// round of heartbeats, a follower's at once.
func TestAlive(t *testing.T) {
	reps := threeReplicas(t)
	l := leader(t, reps)
	for _, r := range reps {
		if err := r.node.Alive(); err != nil {
			t.Errorf("%s (leader %v): %v", r.cfg.ID, r == l, err)
		}
	}
}

// A raft whose main loop is stuck (here in its log store, as a hung disk
// would hold it) does not answer Alive until the loop moves again; a probe
// reading what the loop keeps outside itself would answer at once.
func TestAliveBlocksWhileTheMainLoopIsStuck(t *testing.T) {
	logs := &gatedLogs{InmemStore: raft.NewInmemStore(), gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	conf := raft.DefaultConfig()
	conf.LocalID = "solo"
	conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	conf.Logger = newHCLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, trans := raft.NewInmemTransport("")
	r, err := raft.NewRaft(conf, fsm.New(), logs, raft.NewInmemStore(), raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Shutdown().Error() }()
	if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: addr}}}).Error(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); r.State() != raft.Leader; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
	}
	n := &Node{Raft: r}
	if err := n.Alive(); err != nil {
		t.Fatalf("healthy: %v", err)
	}

	release := sync.OnceFunc(func() { close(logs.gate) })
	defer release() // before the shutdown, which waits for the loop
	logs.stuck.Store(true)
	applied := r.Apply([]byte("x"), 0) // the leader's main loop stores it, and hangs there
	<-logs.entered
	alive := make(chan error, 1)
	go func() { alive <- n.Alive() }()
	select {
	case err := <-alive:
		t.Fatalf("Alive answered (%v) while the main loop is stuck", err)
	case <-time.After(300 * time.Millisecond):
	}
	release()
	select {
	case err := <-alive:
		if err != nil {
			t.Fatalf("after the loop moved on: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Alive did not answer once the main loop moved on")
	}
	_ = applied.Error()
}

// gatedLogs is a log store whose StoreLogs waits for gate while stuck.
type gatedLogs struct {
	*raft.InmemStore
	stuck   atomic.Bool
	gate    chan struct{}
	entered chan struct{}
}

func (g *gatedLogs) StoreLogs(logs []*raft.Log) error {
	if g.stuck.Load() {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.gate
	}
	return g.InmemStore.StoreLogs(logs)
}

// A write's index, waited for on a follower, means the follower's state
// holds the write: what a follower that forwarded a write reads next.
func TestFollowerWaitsForTheLeadersWrite(t *testing.T) {
	reps := threeReplicas(t)
	l := leader(t, reps)
	f := follower(reps, l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 20 {
		index := write(t, l, i)
		if err := f.fsm.WaitApplied(ctx, index); err != nil {
			t.Fatal(err)
		}
		if name := fmt.Sprintf("n%03d", i); f.fsm.Node(name) == nil {
			t.Fatalf("write %d (index %d): the follower has applied it, yet its state lacks node %s", i, index, name)
		}
	}
	// An index the log has not reached is waited for until the caller
	// gives up.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := f.fsm.WaitApplied(short, 1<<40); err == nil {
		t.Fatal("waited for an index the log never reached")
	}
}

// A restarted replica is restored once its state holds the commands its log
// held, not when raft has handed them to the state (raft's AppliedIndex),
// which is before it has applied them.
func TestWaitRestoredWaitsForTheState(t *testing.T) {
	reps := threeReplicas(t)
	l := leader(t, reps)
	f := follower(reps, l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var last uint64
	for i := range 10 {
		last = write(t, l, i)
	}
	if err := f.fsm.WaitApplied(ctx, last); err != nil {
		t.Fatal(err)
	}
	if err := f.node.Shutdown(); err != nil {
		t.Fatal(err)
	}

	// Restarted, it applies the log again (no snapshot yet), each entry
	// held until the gate opens.
	gated := gatedFSM{FSM: fsm.New(), gate: make(chan struct{})}
	release := sync.OnceFunc(func() { close(gated.gate) })
	defer release() // before the cleanup's shutdown, which waits for Apply
	f.fsm = gated.FSM
	n, err := Open(f.cfg, gated)
	if err != nil {
		t.Fatal(err)
	}
	f.node = n
	for n.Raft.AppliedIndex() < last {
		if ctx.Err() != nil {
			t.Fatalf("raft applied up to %d, want %d", n.Raft.AppliedIndex(), last)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n.WaitRestored(ctx, 100*time.Millisecond) {
		t.Fatal("restored while the state has applied nothing")
	}
	release()
	if !n.WaitRestored(ctx, 10*time.Second) {
		t.Fatal("not restored once the state could apply the log")
	}
	if got := len(f.fsm.Nodes()); got != 10 {
		t.Errorf("restored with %d nodes, want 10", got)
	}
}

// gatedFSM is a state whose Apply waits for gate.
type gatedFSM struct {
	*fsm.FSM
	gate chan struct{}
}

func (g gatedFSM) Apply(l *raft.Log) any {
	<-g.gate
	return g.FSM.Apply(l)
}

// The command a restart waits for is the last one after the snapshot;
// raft's own entries after it never reach the state.
func TestLastCommand(t *testing.T) {
	cmd, noop, conf := raft.LogCommand, raft.LogNoop, raft.LogConfiguration
	for _, tc := range []struct {
		name     string
		types    []raft.LogType // of entries 1..n
		snapshot uint64         // 0: none
		want     uint64
	}{
		{"empty", nil, 0, 0},
		{"command last", []raft.LogType{conf, noop, cmd, cmd}, 0, 4},
		{"an election after it", []raft.LogType{conf, noop, cmd, cmd, noop, conf}, 0, 4},
		{"only raft's own", []raft.LogType{conf, noop}, 0, 0},
		{"in the snapshot", []raft.LogType{conf, noop, cmd, cmd, noop}, 4, 0},
		{"after the snapshot", []raft.LogType{conf, noop, cmd, cmd, noop}, 3, 4},
	} {
		logs := raft.NewInmemStore()
		for i, typ := range tc.types {
			if err := logs.StoreLog(&raft.Log{Index: uint64(i + 1), Term: 1, Type: typ}); err != nil {
				t.Fatal(err)
			}
		}
		snaps := raft.NewInmemSnapshotStore()
		if tc.snapshot > 0 {
			sink, err := snaps.Create(raft.SnapshotVersionMax, tc.snapshot, 1, raft.Configuration{}, 1, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := sink.Close(); err != nil {
				t.Fatal(err)
			}
		}
		got, err := lastCommand(logs, snaps, uint64(len(tc.types)))
		if err != nil || got != tc.want {
			t.Errorf("%s: %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
}
