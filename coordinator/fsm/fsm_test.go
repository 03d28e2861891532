package fsm

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

type applier struct {
	t     *testing.T
	f     *FSM
	index uint64
}

func (a *applier) apply(cmd *pb.Command) any {
	a.t.Helper()
	data, err := Encode(cmd)
	if err != nil {
		a.t.Fatal(err)
	}
	a.index++
	return a.f.Apply(&raft.Log{Index: a.index, Type: raft.LogCommand, Data: data})
}

// applyAll applies cmds to a new FSM and fails t unless the last one is
// refused with an error containing refused ("": applied). It returns that
// refusal.
func applyAll(t *testing.T, cmds []*pb.Command, refused string) (*applier, error) {
	t.Helper()
	a := &applier{t: t, f: New()}
	var res any
	for _, cmd := range cmds {
		res = a.apply(cmd)
	}
	err, _ := res.(error)
	if (err != nil) != (refused != "") || (err != nil && !strings.Contains(err.Error(), refused)) {
		t.Fatalf("last command: %v, want refusal %q", res, refused)
	}
	return a, err
}

func newOp() *pb.Operation {
	return &pb.Operation{
		Request: &pb.OpRequest{Action: "restart", Label: "restart all"},
		Stages: []*pb.Stage{
			{Steps: []*pb.Step{{Node: "infra", Services: []string{"configuration_server"}, Action: "restart"}}},
			{Steps: []*pb.Step{{Node: "q1", Services: []string{"db_query_server"}, Action: "stop"}}},
		},
	}
}

func TestOperationLifecycle(t *testing.T) {
	a := &applier{t: t, f: New()}
	changed := a.f.Changed()
	res := a.apply(&pb.Command{AtUnixMs: 1000, Who: "operator:alice", Cmd: &pb.Command_OpCreate{OpCreate: newOp()}})
	op, ok := res.(*pb.Operation)
	if !ok {
		t.Fatalf("create: %v", res)
	}
	select {
	case <-changed:
	default:
		t.Error("Changed did not fire on apply")
	}
	if op.Id != "op-1" || op.State != OpRunning || op.CreatedBy != "operator:alice" || op.Stages[0].Steps[0].State != StepPending {
		t.Errorf("created op: %v", op)
	}
	// One operation at a time.
	if err, _ := a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: newOp()}}).(error); err == nil || !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "op-1 (restart all) is running") {
		t.Errorf("second create: %v", err)
	}
	// A step update may not change what the plan does.
	step := &pb.Step{Node: "elsewhere", Services: []string{"x"}, Action: "start", State: StepDone, EndedUnixMs: 5}
	res = a.apply(&pb.Command{AtUnixMs: 2000, Cmd: &pb.Command_StepUpdate{StepUpdate: &pb.StepUpdate{Ref: &pb.StepRef{OpId: "op-1", Stage: 1, Step: 0}, Step: step}}})
	got := res.(*pb.Operation).Stages[1].Steps[0]
	if got.Node != "q1" || got.Action != "stop" || got.State != StepDone {
		t.Errorf("step after update: %v", got)
	}
	if d := a.f.State().Desired["q1/db_query_server"]; d == nil || !d.Stopped || d.By != "operator:alice" {
		t.Errorf("a done stop step records the desired state: %v", d)
	}
	if err, _ := a.apply(&pb.Command{Cmd: &pb.Command_StepUpdate{StepUpdate: &pb.StepUpdate{Ref: &pb.StepRef{OpId: "op-1", Stage: 7}, Step: step}}}).(error); err == nil {
		t.Error("an update of a step that does not exist was accepted")
	}
	// Transitions.
	cases := []struct {
		state string
		retry bool
		ok    bool
	}{
		{OpPaused, false, true},
		{OpDone, false, false}, // a paused operation is resumed or aborted, not done
		{OpRunning, true, true},
		{OpAborted, false, true},
		{OpRunning, false, false}, // aborted is final
	}
	for _, tc := range cases {
		res := a.apply(&pb.Command{AtUnixMs: 3000, Cmd: &pb.Command_OpUpdate{OpUpdate: &pb.OpUpdate{OpId: "op-1", State: tc.state, RetryFailed: tc.retry}}})
		if _, isErr := res.(error); isErr == tc.ok {
			t.Errorf("-> %s: %v", tc.state, res)
		}
	}
	if op, _ := a.f.Op("op-1"); op.EndedUnixMs != 3000 {
		t.Errorf("ended at %d", op.EndedUnixMs)
	}
	if _, ok := a.f.Active(); ok {
		t.Error("an aborted operation is still active")
	}
	audit := a.f.State().Audit
	if len(audit) != int(a.index) || audit[0].Who != "operator:alice" || !strings.Contains(audit[0].What, "op-1 created") || !strings.Contains(audit[1].What, "new operation restart all (refused") {
		t.Errorf("audit: %v", audit)
	}
}

func TestRetryFailedSteps(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: newOp()}})
	a.apply(&pb.Command{Cmd: &pb.Command_StepUpdate{StepUpdate: &pb.StepUpdate{Ref: &pb.StepRef{OpId: "op-1"}, Step: &pb.Step{State: StepFailed, Message: "boom"}}}})
	a.apply(&pb.Command{Cmd: &pb.Command_OpUpdate{OpUpdate: &pb.OpUpdate{OpId: "op-1", State: OpPaused}}})
	a.apply(&pb.Command{Cmd: &pb.Command_OpUpdate{OpUpdate: &pb.OpUpdate{OpId: "op-1", State: OpRunning, RetryFailed: true}}})
	op, _ := a.f.Op("op-1")
	if s := op.Stages[0].Steps[0]; s.State != StepPending || !strings.Contains(s.Message, "boom") {
		t.Errorf("after resume: %v", s)
	}
}

func TestSnapshotRestore(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(&pb.Command{Cmd: &pb.Command_NodeUpsert{NodeUpsert: &pb.Node{Name: "q1", Roles: []string{"query"}, Services: []*pb.ServiceDef{{Name: "db_query_server", DependsOn: []string{"configuration_server"}}}}}})
	a.apply(&pb.Command{Cmd: &pb.Command_PeerUpsert{PeerUpsert: &pb.Peer{Id: "c1", RaftAddr: "h:1", ApiAddr: "h:2"}}})
	a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: newOp()}})
	snap, err := a.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.Persist(&sink{Buffer: &buf}); err != nil {
		t.Fatal(err)
	}
	// Restore replaces the state whole, including what was applied after.
	b := &applier{t: t, f: New()}
	b.apply(&pb.Command{Cmd: &pb.Command_PeerUpsert{PeerUpsert: &pb.Peer{Id: "stale"}}})
	if err := b.f.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(a.f.State(), b.f.State()) {
		t.Errorf("restored state differs:\n%v\n%v", a.f.State(), b.f.State())
	}
	// The restored maps are writable.
	b.apply(&pb.Command{Cmd: &pb.Command_PeerUpsert{PeerUpsert: &pb.Peer{Id: "c2"}}})
	if err := New().Restore(io.NopCloser(strings.NewReader("\xff\xff garbage"))); err == nil {
		t.Error("a corrupt snapshot was restored")
	}
}

func TestBounds(t *testing.T) {
	a := &applier{t: t, f: New()}
	for i := 0; i < MaxOps+5; i++ {
		res := a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: newOp()}})
		op := res.(*pb.Operation)
		a.apply(&pb.Command{Cmd: &pb.Command_OpUpdate{OpUpdate: &pb.OpUpdate{OpId: op.Id, State: OpAborted}}})
	}
	st := a.f.State()
	if len(st.Ops) != MaxOps || st.Ops[len(st.Ops)-1].Id != "op-409" {
		t.Errorf("%d ops kept, newest %s", len(st.Ops), st.Ops[len(st.Ops)-1].Id)
	}
	for i := 0; i < MaxAudit; i++ {
		a.apply(&pb.Command{Cmd: &pb.Command_PeerRemove{PeerRemove: "x"}})
	}
	if st := a.f.State(); len(st.Audit) != MaxAudit || st.Audit[len(st.Audit)-1].Index != a.index {
		t.Errorf("audit: %d entries", len(st.Audit))
	}
}

func TestUnreadableCommand(t *testing.T) {
	f := New()
	res := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{0xff, 0xff}})
	if err, _ := res.(error); err == nil || !errors.Is(err, ErrRejected) {
		t.Errorf("got %v", res)
	}
	if a := f.State().Audit; len(a) != 1 || !strings.Contains(a[0].What, "unreadable") {
		t.Errorf("audit: %v", a)
	}
}

type sink struct{ *bytes.Buffer }

func (sink) ID() string    { return "test" }
func (sink) Cancel() error { return nil }
func (sink) Close() error  { return nil }

// The narrow readers return copies of just what is asked.
func TestReaders(t *testing.T) {
	a := &applier{t: t, f: New()}
	a.apply(&pb.Command{Cmd: &pb.Command_PeerUpsert{PeerUpsert: &pb.Peer{Id: "c1", ApiAddr: "h:1"}}})
	a.apply(&pb.Command{Cmd: &pb.Command_NodeUpsert{NodeUpsert: &pb.Node{Name: "q1"}}})
	for i := 0; i < 3; i++ {
		op := a.apply(&pb.Command{Cmd: &pb.Command_OpCreate{OpCreate: newOp()}}).(*pb.Operation)
		a.apply(&pb.Command{Cmd: &pb.Command_OpUpdate{OpUpdate: &pb.OpUpdate{OpId: op.Id, State: OpAborted}}})
	}
	if got := a.f.Ops(2); len(got) != 2 || got[0].Id != "op-7" || got[1].Id != "op-5" {
		t.Errorf("Ops(2): %v", got)
	}
	if got := a.f.Ops(0); len(got) != 3 {
		t.Errorf("Ops(0): %d ops", len(got))
	}
	if got := a.f.Audit(2); len(got) != 2 || got[1].Index != a.index {
		t.Errorf("Audit(2): %v", got)
	}
	if a.f.Peer("nope") != nil || a.f.Node("nope") != nil {
		t.Error("a missing peer or node is not nil")
	}
	a.f.Peer("c1").ApiAddr = "changed"
	a.f.Nodes()["q1"].State = "changed"
	if a.f.Peer("c1").ApiAddr != "h:1" || a.f.Node("q1").State != "" {
		t.Error("a reader returned the state itself, not a copy")
	}
}
