// Package fsm is the coordinator's replicated state machine: nodes, desired
// service states, operations with their plans and progress, the coordinator
// peers, the dispatchers' query workers and the audit log. Every replica applies the same raft log to it, so
// Apply is deterministic: no clock, no randomness, no I/O; the proposer
// stamps each command with its time and author.
package fsm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Bounds on what the state keeps: a snapshot must stay small enough to
// ship to a replica that fell behind.
const (
	MaxAudit = 10000
	MaxOps   = 200
)

// Operation states.
const (
	OpRunning = "running"
	OpPaused  = "paused"
	OpAborted = "aborted"
	OpFailed  = "failed"
	OpDone    = "done"
)

// Step states.
const (
	StepPending = "pending"
	StepRunning = "running"
	StepDone    = "done"
	StepFailed  = "failed"
)

// Ended reports whether an operation state is final.
func Ended(state string) bool {
	return state == OpAborted || state == OpFailed || state == OpDone
}

// ErrRejected wraps the reasons Apply refuses a command; the state is
// unchanged and the proposer gets the reason back.
var ErrRejected = errors.New("rejected")

// FSM implements raft.FSM.
type FSM struct {
	mu      sync.RWMutex
	st      *pb.State
	workers workerIndex   // of st.Workers
	changed chan struct{} // closed on every change, then replaced
	applied chan struct{} // closed when st.AppliedIndex moves, then replaced
}

// New returns an empty state.
func New() *FSM {
	st := emptyState()
	return &FSM{st: st, workers: indexWorkers(st.Workers), changed: make(chan struct{}), applied: make(chan struct{})}
}

func emptyState() *pb.State {
	return &pb.State{Nodes: map[string]*pb.Node{}, Peers: map[string]*pb.Peer{}, Desired: map[string]*pb.Desired{}, Workers: map[string]*pb.WorkerSet{}, Packages: map[string]*pb.Package{}}
}

// Changed returns a channel closed at the next change of the state.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// WaitApplied waits until the state holds the raft log up to index. raft
// itself counts an entry applied once it is handed to Apply, not when Apply
// is done, so a follower that forwarded a write waits here before it
// answers its caller's next read from this state.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	for {
		f.mu.RLock()
		at, applied := f.st.AppliedIndex, f.applied
		f.mu.RUnlock()
		if at >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("applied up to raft index %d, waiting for %d: %w", at, index, ctx.Err())
		case <-applied:
		}
	}
}

// State returns a copy of the whole state.
func (f *FSM) State() *pb.State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return proto.Clone(f.st).(*pb.State)
}

// The readers below copy only what they return: State copies everything,
// the audit log included, which is too much for every API call or commit.

// Nodes returns a copy of the node records.
func (f *FSM) Nodes() map[string]*pb.Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneMap(f.st.Nodes)
}

// Node returns a copy of one node record, or nil.
func (f *FSM) Node(name string) *pb.Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneOrNil(f.st.Nodes[name])
}

// Peer returns a copy of one coordinator's record, or nil.
func (f *FSM) Peer(id string) *pb.Peer {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneOrNil(f.st.Peers[id])
}

// Desired returns a copy of what operators asked of service instances.
func (f *FSM) Desired() map[string]*pb.Desired {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return cloneMap(f.st.Desired)
}

// Ops returns copies of the newest operations, newest first; limit <= 0
// means all.
func (f *FSM) Ops(limit int) []*pb.Operation {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []*pb.Operation
	for i := len(f.st.Ops) - 1; i >= 0 && (limit <= 0 || len(out) < limit); i-- {
		out = append(out, proto.Clone(f.st.Ops[i]).(*pb.Operation))
	}
	return out
}

// Audit returns copies of the newest audit entries, oldest first.
func (f *FSM) Audit(limit int) []*pb.AuditEntry {
	f.mu.RLock()
	defer f.mu.RUnlock()
	all := f.st.Audit
	if limit > 0 && len(all) > limit {
		all = all[len(all)-limit:]
	}
	out := make([]*pb.AuditEntry, len(all))
	for i, e := range all {
		out[i] = proto.Clone(e).(*pb.AuditEntry)
	}
	return out
}

func cloneMap[M proto.Message](m map[string]M) map[string]M {
	out := make(map[string]M, len(m))
	for k, v := range m {
		out[k] = proto.Clone(v).(M)
	}
	return out
}

func cloneOrNil[M interface {
	proto.Message
	comparable
}](m M) M {
	var zero M
	if m == zero {
		return zero
	}
	return proto.Clone(m).(M)
}

// Op returns a copy of one operation.
func (f *FSM) Op(id string) (*pb.Operation, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if op := f.findOp(id); op != nil {
		return proto.Clone(op).(*pb.Operation), true
	}
	return nil, false
}

// Active returns a copy of the operation running or paused, if any: there is
// at most one, so two operators never walk the cluster at once.
func (f *FSM) Active() (*pb.Operation, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if op := f.activeOp(); op != nil {
		return proto.Clone(op).(*pb.Operation), true
	}
	return nil, false
}

func (f *FSM) activeOp() *pb.Operation {
	for _, op := range f.st.Ops {
		if !Ended(op.State) {
			return op
		}
	}
	return nil
}

func (f *FSM) findOp(id string) *pb.Operation {
	for _, op := range f.st.Ops {
		if op.Id == id {
			return op
		}
	}
	return nil
}

// Apply implements raft.FSM. It returns the created or updated operation, or
// an error wrapping ErrRejected.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var cmd pb.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		// A replica of a newer release may log commands this one cannot
		// read; skipping keeps the log moving, and the audit says so.
		f.mu.Lock()
		defer f.mu.Unlock()
		defer f.advance(l.Index)
		f.audit(l.Index, 0, "", fmt.Sprintf("unreadable command skipped: %v", err))
		return fmt.Errorf("%w: unreadable command: %v", ErrRejected, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.advance(l.Index)
	res, what := f.apply(l.Index, &cmd)
	if err, ok := res.(error); ok {
		f.audit(l.Index, cmd.AtUnixMs, cmd.Who, what+" (refused: "+err.Error()+")")
		return res
	}
	if what != "" {
		f.audit(l.Index, cmd.AtUnixMs, cmd.Who, what)
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return res
}

// advance records that the log up to index is applied. f.mu is held.
func (f *FSM) advance(index uint64) {
	f.st.AppliedIndex = index
	close(f.applied)
	f.applied = make(chan struct{})
}

func rejected(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRejected, fmt.Sprintf(format, args...))
}

// apply changes the state and says what it did, for the audit log.
func (f *FSM) apply(index uint64, cmd *pb.Command) (any, string) {
	at := cmd.AtUnixMs
	switch c := cmd.Cmd.(type) {
	case *pb.Command_NodeUpsert:
		n := proto.Clone(c.NodeUpsert).(*pb.Node)
		if n.Name == "" {
			return rejected("node without a name"), "node upsert"
		}
		n.UpdatedUnixMs = at
		f.st.Nodes[n.Name] = n
		return nil, fmt.Sprintf("node %s: %s, roles %s, %d services", n.Name, n.State, strings.Join(n.Roles, ","), len(n.Services))
	case *pb.Command_PeerUpsert:
		p := proto.Clone(c.PeerUpsert).(*pb.Peer)
		if p.Id == "" {
			return rejected("peer without an id"), "peer upsert"
		}
		f.st.Peers[p.Id] = p
		return nil, fmt.Sprintf("coordinator %s: raft %s, api %s", p.Id, p.RaftAddr, p.ApiAddr)
	case *pb.Command_PeerRemove:
		delete(f.st.Peers, c.PeerRemove)
		return nil, "coordinator " + c.PeerRemove + " removed"
	case *pb.Command_OpCreate:
		return f.createOp(index, cmd)
	case *pb.Command_StepUpdate:
		return f.updateStep(at, c.StepUpdate)
	case *pb.Command_OpUpdate:
		return f.updateOp(at, cmd.Who, c.OpUpdate)
	case *pb.Command_WorkerSet:
		return f.setWorkers(at, c.WorkerSet)
	case *pb.Command_WorkerRenew:
		return f.renewWorkers(c.WorkerRenew)
	case *pb.Command_WorkerExpire:
		return f.expireWorkers(c.WorkerExpire)
	case *pb.Command_WorkerDiff:
		return f.diffWorkers(at, c.WorkerDiff)
	case *pb.Command_PackageAdd:
		return f.addPackage(at, cmd.Who, c.PackageAdd)
	case *pb.Command_PackageRemove:
		return f.removePackage(c.PackageRemove)
	case *pb.Command_UpgradeRevert:
		return f.revertUpgrade(at, c.UpgradeRevert)
	case *pb.Command_ExtraRoutesLoad:
		return f.loadExtraRoutes(index, cmd, c.ExtraRoutesLoad)
	case *pb.Command_UpstreamImport:
		return f.recordUpstream(c.UpstreamImport)
	}
	return rejected("unknown command"), "unknown command"
}

func (f *FSM) createOp(index uint64, cmd *pb.Command) (any, string) {
	op := proto.Clone(cmd.GetOpCreate()).(*pb.Operation)
	if a := f.activeOp(); a != nil {
		return rejected("operation %s (%s) is %s; wait for it, or abort it", a.Id, a.Title(), a.State), "new operation " + op.Title()
	}
	op.Id = fmt.Sprintf("op-%d", index)
	what := fmt.Sprintf("%s created: %s", op.Id, op.Title())
	op.State = OpRunning
	op.CreatedBy = cmd.Who
	op.CreatedUnixMs = cmd.AtUnixMs
	op.UpdatedUnixMs = cmd.AtUnixMs
	for _, st := range op.Stages {
		for _, s := range st.Steps {
			s.State = StepPending
		}
	}
	f.st.Ops = append(f.st.Ops, op)
	if n := len(f.st.Ops) - MaxOps; n > 0 {
		f.st.Ops = append([]*pb.Operation(nil), f.st.Ops[n:]...)
	}
	return proto.Clone(op), what
}

func (f *FSM) updateStep(at int64, u *pb.StepUpdate) (any, string) {
	ref := u.GetRef()
	what := fmt.Sprintf("%s stage %d step %d", ref.GetOpId(), ref.GetStage()+1, ref.GetStep()+1)
	op := f.findOp(ref.GetOpId())
	if op == nil {
		return rejected("no operation %s", ref.GetOpId()), what
	}
	if ref.Stage < 0 || int(ref.Stage) >= len(op.Stages) || ref.Step < 0 || int(ref.Step) >= len(op.Stages[ref.Stage].Steps) {
		return rejected("no such step"), what
	}
	cur := op.Stages[ref.Stage].Steps[ref.Step]
	next := proto.Clone(u.Step).(*pb.Step)
	// Node, services and action are the plan's; an update changes progress only.
	next.Node, next.Services, next.Action = cur.Node, cur.Services, cur.Action
	op.Stages[ref.Stage].Steps[ref.Step] = next
	op.UpdatedUnixMs = at
	what = fmt.Sprintf("%s: %s %s on %s: %s", what, next.Action, strings.Join(next.Services, ","), next.Node, next.State)
	if next.Message != "" {
		what += " (" + next.Message + ")"
	}
	// An upgrade stops services only to start them again: what an
	// operator stopped is not its business.
	if next.State == StepDone && op.Request.GetAction() != ActUpgrade {
		for _, svc := range next.Services {
			f.setDesired(next.Node, svc, next.Action == "stop", op.CreatedBy, at)
		}
	}
	return proto.Clone(op), what
}

func (f *FSM) setDesired(node, svc string, stopped bool, by string, at int64) {
	key := node + "/" + svc
	if !stopped {
		// Running is every service's default; keep the map to exceptions.
		delete(f.st.Desired, key)
		return
	}
	f.st.Desired[key] = &pb.Desired{Node: node, Service: svc, Stopped: true, By: by, AtUnixMs: at}
}

// transitions lists the operation states an update may move to.
var transitions = map[string][]string{
	OpRunning: {OpPaused, OpAborted, OpFailed, OpDone},
	OpPaused:  {OpRunning, OpAborted, OpFailed},
}

func (f *FSM) updateOp(at int64, who string, u *pb.OpUpdate) (any, string) {
	what := fmt.Sprintf("%s -> %s", u.OpId, u.State)
	if u.Message != "" {
		what += " (" + u.Message + ")"
	}
	op := f.findOp(u.OpId)
	if op == nil {
		return rejected("no operation %s", u.OpId), what
	}
	if op.State != u.State {
		ok := false
		for _, s := range transitions[op.State] {
			ok = ok || s == u.State
		}
		if !ok {
			return rejected("operation %s is %s; it cannot become %s", op.Id, op.State, u.State), what
		}
	}
	op.State = u.State
	op.Message = u.Message
	op.UpdatedUnixMs = at
	if Ended(op.State) {
		op.EndedUnixMs = at
	}
	if u.RetryFailed {
		for _, st := range op.Stages {
			for _, s := range st.Steps {
				if s.State == StepFailed {
					s.State, s.Message = StepPending, "retried after "+s.Message
				}
			}
		}
	}
	return proto.Clone(op), what
}

func (f *FSM) audit(index uint64, at int64, who, what string) {
	f.st.Audit = append(f.st.Audit, &pb.AuditEntry{Index: index, AtUnixMs: at, Who: who, What: what})
	if n := len(f.st.Audit) - MaxAudit; n > 0 {
		f.st.Audit = append([]*pb.AuditEntry(nil), f.st.Audit[n:]...)
	}
}

// Snapshot implements raft.FSM: a copy taken under the lock, written out by
// raft in the background while Apply carries on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(f.st)
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

// Restore implements raft.FSM: the state becomes the snapshot's, whole.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	st := &pb.State{}
	if err := proto.Unmarshal(b, st); err != nil {
		return fmt.Errorf("decode snapshot: %w", err)
	}
	// Maps decode as nil when empty; Apply writes into them.
	if st.Nodes == nil {
		st.Nodes = map[string]*pb.Node{}
	}
	if st.Peers == nil {
		st.Peers = map[string]*pb.Peer{}
	}
	if st.Desired == nil {
		st.Desired = map[string]*pb.Desired{}
	}
	if st.Workers == nil {
		st.Workers = map[string]*pb.WorkerSet{}
	}
	if st.Packages == nil {
		st.Packages = map[string]*pb.Package{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
	f.workers = indexWorkers(st.Workers)
	close(f.changed)
	f.changed = make(chan struct{})
	close(f.applied)
	f.applied = make(chan struct{})
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}

// Encode marshals a command for raft.
func Encode(cmd *pb.Command) ([]byte, error) {
	return proto.Marshal(cmd)
}
