package ops

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeAgents acts on each service at most once per token, like the real
// agent, and records what it did in order.
type fakeAgents struct {
	mu          sync.Mutex
	acted       []string                 // "node/service" in the order acted on
	tokens      map[string]bool          // token + node/service
	pids        map[string]int32         // node/service -> pid
	block       map[string]chan struct{} // node -> released when closed
	failing     map[string]string        // node/service -> failure message
	statusCalls int

	// Packages: what each node has installed, the version in each package
	// (by sha256 or path), and the nodes whose install of a version fails.
	versions    map[string]string
	pkgVersions map[string]string
	failInstall map[string]string                 // node -> version whose install fails there
	installed   map[string]*agentpb.InstallResult // by token
	installs    []string                          // "node=version" per real install
	prefetched  []string                          // nodes asked to fetch a package ahead of their install
	// blockInstall holds a node's install answers until closed.
	blockInstall map[string]chan struct{}
}

func newFakeAgents() *fakeAgents {
	return &fakeAgents{tokens: map[string]bool{}, pids: map[string]int32{}, block: map[string]chan struct{}{}, failing: map[string]string{},
		versions: map[string]string{}, pkgVersions: map[string]string{}, failInstall: map[string]string{}, installed: map[string]*agentpb.InstallResult{}, blockInstall: map[string]chan struct{}{}}
}

// Install installs at once and then, for a blocked node, waits before
// answering: like the real agent, the install goes on when the caller goes
// away, and a repeat of the token returns what was done.
func (f *fakeAgents) Install(ctx context.Context, node string, req *agentpb.InstallRequest) (*agentpb.InstallResult, error) {
	f.mu.Lock()
	if req.FetchOnly {
		f.prefetched = append(f.prefetched, node)
		f.mu.Unlock()
		return &agentpb.InstallResult{Message: "fetched"}, nil
	}
	res, ok := f.installed[req.OpToken]
	if ok {
		res = proto.Clone(res).(*agentpb.InstallResult)
		res.Repeated = true
	} else {
		v := f.pkgVersions[req.Package.Sha256+req.Package.Path]
		res = &agentpb.InstallResult{Package: "illumon-db", Version: v, Before: f.versions[node]}
		switch {
		case req.ExpectVersion != "" && v != req.ExpectVersion:
			res.Failed, res.Message, res.After = true, "the node ran "+req.ExpectVersion+" before", f.versions[node]
		case f.failInstall[node] == v:
			f.versions[node] = v + " (half-configured)"
			res.Failed, res.Message, res.After = true, "dpkg exited with status 1", f.versions[node]
			res.Output = "Setting up illumon-db (" + v + ") ...\npostinst: cannot configure illumon-db " + v
		default:
			f.versions[node], res.After = v, v
			f.installs = append(f.installs, node+"="+v)
		}
		f.installed[req.OpToken] = res
	}
	wait := f.blockInstall[node]
	f.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return res, nil
}

func (f *fakeAgents) installsDone() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.installs...)
}

func (f *fakeAgents) Control(ctx context.Context, node string, req *agentpb.ControlRequest, progress func(*agentpb.Progress)) error {
	f.mu.Lock()
	for _, svc := range req.Services {
		id := node + "/" + svc
		if msg, bad := f.failing[id]; bad {
			f.mu.Unlock()
			progress(&agentpb.Progress{Service: svc, State: "Execution failed", Message: msg, Failed: true})
			return errors.New(svc + " failed")
		}
		if !f.tokens[req.OpToken+id] {
			f.tokens[req.OpToken+id] = true
			f.acted = append(f.acted, id)
			f.pids[id]++
		}
	}
	wait := f.block[node]
	f.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (f *fakeAgents) Status(_ context.Context, node string) (*agentpb.StatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statusCalls++
	resp := &agentpb.StatusResponse{Node: node}
	for id, pid := range f.pids {
		if n, svc, _ := strings.Cut(id, "/"); n == node {
			resp.Services = append(resp.Services, &agentpb.ServiceStatus{Name: svc, State: "OK", Pid: pid})
		}
	}
	return resp, nil
}

func (f *fakeAgents) actedOn() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.acted...)
}

// okHealth reports every service OK and never changes.
type okHealth struct{}

func (okHealth) Services(string) map[string]ServiceHealth { return nil }
func (okHealth) NodeState(string) string                  { return "alive" }
func (okHealth) Subscribe() (<-chan struct{}, func()) {
	return make(chan struct{}), func() {}
}

type harness struct {
	t      *testing.T
	fsm    *fsm.FSM
	agents *fakeAgents
	eng    *Engine
	mu     sync.Mutex
	index  uint64
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, fsm: fsm.New(), agents: newFakeAgents()}
	h.eng = &Engine{
		FSM: h.fsm, Agents: h.agents, Health: okHealth{}, Self: "coordinator:test",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), RetryInterval: 10 * time.Millisecond,
		Propose: func(ctx context.Context, cmd *pb.Command) (any, error) {
			if err := ctx.Err(); err != nil {
				return nil, err // leadership lost: raft refuses
			}
			return h.apply(cmd)
		},
	}
	return h
}

func (h *harness) apply(cmd *pb.Command) (any, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	h.index++
	res := h.fsm.Apply(&raft.Log{Index: h.index, Type: raft.LogCommand, Data: data})
	if err, ok := res.(error); ok {
		return nil, err
	}
	return res, nil
}

func (h *harness) start(req *pb.OpRequest) *pb.Operation {
	h.t.Helper()
	st := h.fsm.State()
	return h.create(Plan(req, classicCluster(h.t), st.Desired, Defaults{HealthyDeadline: 5 * time.Second, ProgressDeadline: 10 * time.Second}))
}

// create records a planned operation, as the API does.
func (h *harness) create(op *pb.Operation, err error) *pb.Operation {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
	res, err := h.apply(&pb.Command{Who: "operator:test", Cmd: &pb.Command_OpCreate{OpCreate: op}})
	if err != nil {
		h.t.Fatal(err)
	}
	return res.(*pb.Operation)
}

// lead runs the engine until the operation leaves state running or stop is
// closed, and returns the operation.
func (h *harness) lead(id string, stop <-chan struct{}) *pb.Operation {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.eng.Lead(ctx) }()
	deadline := time.After(10 * time.Second)
	for {
		changed := h.fsm.Changed()
		op, _ := h.fsm.Op(id)
		if op.State != fsm.OpRunning {
			cancel()
			<-done
			return op
		}
		select {
		case <-changed:
		case <-stop:
			cancel()
			<-done
			op, _ := h.fsm.Op(id)
			return op
		case <-deadline:
			cancel()
			<-done
			h.t.Fatalf("operation still running: %v", op)
		}
	}
}

func TestEngineRestartAllInOrder(t *testing.T) {
	h := newHarness(t)
	op := h.start(&pb.OpRequest{Action: ActRestart})
	op = h.lead(op.Id, nil)
	if op.State != fsm.OpDone {
		t.Fatalf("operation %s: %s", op.State, op.Message)
	}
	acted := h.agents.actedOn()
	checkActedInPlanOrder(t, op, acted)
	if len(acted) != 22 {
		t.Errorf("acted on %d instances, want 22: %v", len(acted), acted)
	}
}

// checkActedInPlanOrder: everything of stage i was acted on before anything
// of stage i+1, and every planned instance exactly once.
func checkActedInPlanOrder(t *testing.T, op *pb.Operation, acted []string) {
	t.Helper()
	stageOf := map[string]int{}
	for i, st := range op.Stages {
		for _, s := range st.Steps {
			for _, svc := range s.Services {
				stageOf[s.Node+"/"+svc] = i
			}
		}
	}
	seen := map[string]int{}
	last := 0
	for _, id := range acted {
		seen[id]++
		if stageOf[id] < last {
			t.Errorf("%s (stage %d) acted on after stage %d began", id, stageOf[id]+1, last+1)
		}
		last = max(last, stageOf[id])
	}
	for id := range stageOf {
		if seen[id] != 1 {
			t.Errorf("%s acted on %d times, want once", id, seen[id])
		}
	}
}

// The leader is lost while a step is running; a new leader resumes it with
// the same token, so nothing is acted on twice and nothing is skipped.
func TestEngineResumesAfterLeaderLoss(t *testing.T) {
	h := newHarness(t)
	release := make(chan struct{})
	h.agents.block["query-1"] = release
	op := h.start(&pb.OpRequest{Action: ActRestart})

	lost := make(chan struct{})
	go func() {
		// Lose leadership once query-1's step is under way.
		for {
			if o, _ := h.fsm.Op(op.Id); o.Stages[2].Steps[1].State == fsm.StepRunning {
				close(lost)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	mid := h.lead(op.Id, lost)
	if mid.State != fsm.OpRunning || mid.Stages[2].Steps[1].State != fsm.StepRunning {
		t.Fatalf("after leadership loss: %s, step %s", mid.State, mid.Stages[2].Steps[1].State)
	}
	close(release)
	done := h.lead(op.Id, nil)
	if done.State != fsm.OpDone {
		t.Fatalf("operation %s: %s", done.State, done.Message)
	}
	if s := done.Stages[2].Steps[1]; s.Attempts != 2 {
		t.Errorf("resumed step attempts %d, want 2", s.Attempts)
	}
	checkActedInPlanOrder(t, done, h.agents.actedOn())
}

func TestEngineFailurePausesThenResumes(t *testing.T) {
	h := newHarness(t)
	h.agents.failing["query-2/db_query_server"] = "exec: iris: not found"
	op := h.start(&pb.OpRequest{Action: ActRestart})
	paused := h.lead(op.Id, nil)
	if paused.State != fsm.OpPaused || !strings.Contains(paused.Message, "query-2") || !strings.Contains(paused.Message, "exec: iris: not found") {
		t.Fatalf("after a failed step: %s: %s", paused.State, paused.Message)
	}
	if s := paused.Stages[3].Steps[0]; s.State != fsm.StepPending {
		t.Errorf("the next stage started despite the failure: %v", s)
	}
	h.agents.mu.Lock()
	delete(h.agents.failing, "query-2/db_query_server")
	h.agents.mu.Unlock()
	if _, err := h.apply(&pb.Command{Cmd: &pb.Command_OpUpdate{OpUpdate: &pb.OpUpdate{OpId: op.Id, State: fsm.OpRunning, RetryFailed: true}}}); err != nil {
		t.Fatal(err)
	}
	if done := h.lead(op.Id, nil); done.State != fsm.OpDone {
		t.Fatalf("after resume: %s: %s", done.State, done.Message)
	}
}

func TestEngineFailureAborts(t *testing.T) {
	h := newHarness(t)
	h.agents.failing["infra/authentication_server"] = "port in use"
	op := h.start(&pb.OpRequest{Action: ActRestart, OnFailure: "abort"})
	if got := h.lead(op.Id, nil); got.State != fsm.OpFailed {
		t.Fatalf("got %s: %s", got.State, got.Message)
	}
	if n := len(h.agents.actedOn()); n != 1 {
		t.Errorf("acted on %d instances after the failure, want only configuration_server", n)
	}
}

// An unreachable agent is retried until the healthy deadline.
func TestEngineUnreachableAgent(t *testing.T) {
	h := newHarness(t)
	h.eng.Agents = unreachable{}
	op := h.start(&pb.OpRequest{Action: ActRestart, Nodes: []string{"query-1"}, HealthyDeadlineMs: 200})
	got := h.lead(op.Id, nil)
	if got.State != fsm.OpPaused || !strings.Contains(got.Message, "healthy deadline") {
		t.Fatalf("got %s: %s", got.State, got.Message)
	}
}

type unreachable struct{}

func (unreachable) Control(context.Context, string, *agentpb.ControlRequest, func(*agentpb.Progress)) error {
	return &Unavailable{Err: errors.New("connection refused")}
}
func (unreachable) Status(context.Context, string) (*agentpb.StatusResponse, error) {
	return nil, &Unavailable{Err: errors.New("connection refused")}
}
func (unreachable) Install(context.Context, string, *agentpb.InstallRequest) (*agentpb.InstallResult, error) {
	return nil, &Unavailable{Err: errors.New("connection refused")}
}

// A service replaced during the health hold restarts the hold.
func TestEngineHoldSeesRestart(t *testing.T) {
	h := newHarness(t)
	op := h.start(&pb.OpRequest{Action: ActRestart, Nodes: []string{"query-1"}, Services: []string{"db_tdcp"}, MinHealthyTimeMs: 150})
	go func() {
		// Mid-hold, the process is replaced (a crash the agent healed).
		for {
			if o, _ := h.fsm.Op(op.Id); o.Stages[0].Steps[0].OkUnixMs > 0 {
				time.Sleep(50 * time.Millisecond)
				h.agents.mu.Lock()
				h.agents.pids["query-1/db_tdcp"] += 10
				h.agents.mu.Unlock()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	start := time.Now()
	got := h.lead(op.Id, nil)
	if got.State != fsm.OpDone {
		t.Fatalf("got %s: %s", got.State, got.Message)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("took %v: the hold did not start again after the restart", took)
	}
}

// staleHealth reports a service not OK since a fixed time, as gossip does
// while the news that it came back has not arrived yet.
type staleHealth struct{ since time.Time }

func (h staleHealth) Services(string) map[string]ServiceHealth {
	return map[string]ServiceHealth{"db_tdcp": {State: "Initializing", Since: h.since}}
}
func (staleHealth) Subscribe() (<-chan struct{}, func()) { return make(chan struct{}), func() {} }
func (staleHealth) NodeState(string) string              { return "alive" }

// Gossip that lags the agent is not a fall: the hold ends on time, with two
// status calls (start and end of the hold), not a loop of them.
func TestEngineHoldIgnoresStaleGossip(t *testing.T) {
	h := newHarness(t)
	h.eng.Health = staleHealth{since: time.Now()}
	op := h.start(&pb.OpRequest{Action: ActRestart, Nodes: []string{"query-1"}, Services: []string{"db_tdcp"}, MinHealthyTimeMs: 100})
	if got := h.lead(op.Id, nil); got.State != fsm.OpDone {
		t.Fatalf("got %s: %s", got.State, got.Message)
	}
	h.agents.mu.Lock()
	defer h.agents.mu.Unlock()
	if h.agents.statusCalls != 2 {
		t.Errorf("%d status calls during the hold, want 2", h.agents.statusCalls)
	}
}

// A fall gossiped after the OK restarts the hold.
func TestEngineHoldSeesGossipedFall(t *testing.T) {
	h := newHarness(t)
	h.eng.Health = staleHealth{since: time.Now().Add(time.Hour)}
	op := h.start(&pb.OpRequest{Action: ActRestart, Nodes: []string{"query-1"}, Services: []string{"db_tdcp"}, MinHealthyTimeMs: 100, HealthyDeadlineMs: 500})
	if got := h.lead(op.Id, nil); got.State != fsm.OpPaused || !strings.Contains(got.Message, "did not stay OK") {
		t.Fatalf("got %s: %s", got.State, got.Message)
	}
}
