package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Agents reaches the node agents (gRPC over mutual TLS in production).
type Agents interface {
	// Control sends req to node's agent and returns when its blocking call
	// ends: nil once every service reached its goal. Unavailable reports a
	// failure to reach the agent at all, which is worth retrying.
	Control(ctx context.Context, node string, req *agentpb.ControlRequest, progress func(*agentpb.Progress)) error
	Status(ctx context.Context, node string) (*agentpb.StatusResponse, error)
	// Install runs an install step on node's agent and returns its result
	// (a failed install is a result, not an error).
	Install(ctx context.Context, node string, req *agentpb.InstallRequest) (*agentpb.InstallResult, error)
}

// Unavailable marks an error reaching an agent (as opposed to the agent
// refusing or failing the request).
type Unavailable struct{ Err error }

func (u *Unavailable) Error() string { return "agent unreachable: " + u.Err.Error() }
func (u *Unavailable) Unwrap() error { return u.Err }

// ServiceHealth is a service's gossiped state and since when it holds.
type ServiceHealth struct {
	State string
	Since time.Time
}

// Health is the gossiped view of the nodes' services.
type Health interface {
	// Services returns the states of node's services now.
	Services(node string) map[string]ServiceHealth
	// NodeState is the node's membership: alive, suspect, dead, left, or
	// "" when gossip does not know it.
	NodeState(node string) string
	// Subscribe returns a channel that fires when the view changes, and a
	// function that ends the subscription.
	Subscribe() (<-chan struct{}, func())
}

// Proposer commits commands through raft; only the leader's succeeds.
type Proposer func(ctx context.Context, cmd *pb.Command) (any, error)

// Engine runs operations on the leader.
type Engine struct {
	FSM     *fsm.FSM
	Propose Proposer
	Agents  Agents
	Health  Health
	Self    string // "coordinator:<id>", the author of the engine's commands
	Log     *slog.Logger
	Now     func() time.Time // nil: time.Now
	// RetryInterval between attempts to reach an unreachable agent.
	RetryInterval time.Duration
}

func (e *Engine) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// Lead runs active operations until ctx ends (leadership lost). An operation
// found running resumes at its first unfinished stage; a step that was
// running is sent again with the same token, which the agent does not act on
// twice.
func (e *Engine) Lead(ctx context.Context) {
	for ctx.Err() == nil {
		changed := e.FSM.Changed()
		if op, ok := e.FSM.Active(); ok && op.State == fsm.OpRunning {
			if err := e.runOp(ctx, op.Id); err != nil && ctx.Err() == nil {
				e.Log.Error("operation", "op", op.Id, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second): // raft trouble: try again, not in a tight loop
				}
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

func (e *Engine) propose(ctx context.Context, cmd *pb.Command) (any, error) {
	cmd.AtUnixMs = e.now().UnixMilli()
	if cmd.Who == "" {
		cmd.Who = e.Self
	}
	return e.Propose(ctx, cmd)
}

func (e *Engine) setOp(ctx context.Context, id, state, msg string) error {
	_, err := e.propose(ctx, &pb.Command{Cmd: &pb.Command_OpUpdate{OpUpdate: &pb.OpUpdate{OpId: id, State: state, Message: msg}}})
	return err
}

func (e *Engine) setStep(ctx context.Context, ref *pb.StepRef, s *pb.Step) error {
	_, err := e.propose(ctx, &pb.Command{Cmd: &pb.Command_StepUpdate{StepUpdate: &pb.StepUpdate{Ref: ref, Step: s}}})
	return err
}

// runOp walks op's stages until it ends, is paused, or leadership is lost.
func (e *Engine) runOp(ctx context.Context, id string) error {
	lastProgress := e.now()
	if op, ok := e.FSM.Op(id); ok && op.Request.GetAction() == ActUpgrade && !op.Reverting {
		defer e.prefetch(ctx, op)()
	}
	for {
		op, ok := e.FSM.Op(id)
		if !ok || op.State != fsm.OpRunning {
			return nil
		}
		si := firstOpenStage(op)
		if si < 0 {
			if op.Reverting {
				return e.setOp(ctx, id, fsm.OpFailed, revertedMessage(op))
			}
			return e.setOp(ctx, id, fsm.OpDone, doneMessage(op))
		}
		deadline := lastProgress.Add(ms(op.Request.ProgressDeadlineMs))
		failed, died, err := e.runStage(ctx, op, si, deadline)
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		if failed != "" {
			// A dead node is no failure of the upgrade: reverting would
			// need that node too. The operator brings it back and resumes.
			if died {
				return e.setOp(ctx, id, fsm.OpPaused, failed+"; when the node is back, `dhctl upgrade resume "+id+"` goes on where it stopped")
			}
			if u := op.Request.GetUpgrade(); u.GetAutoRevert() && !op.Reverting {
				if err := e.revert(ctx, id, failed); err != nil {
					return err
				}
				lastProgress = e.now()
				continue
			}
			if op.Request.OnFailure == "abort" {
				return e.setOp(ctx, id, fsm.OpFailed, failed)
			}
			cmd := "dhctl ops"
			if op.Request.Action == ActUpgrade {
				cmd = "dhctl upgrade"
			}
			return e.setOp(ctx, id, fsm.OpPaused, failed+"; fix it, then `"+cmd+" resume "+id+"` to retry, or `"+cmd+" abort "+id+"`")
		}
		lastProgress = e.now()
	}
}

func firstOpenStage(op *pb.Operation) int {
	for i, st := range op.Stages {
		if op.Reverting && i < int(op.RevertFrom) {
			continue // a failed step of the upgrade stays failed
		}
		for _, s := range st.Steps {
			if !fsm.StepFinished(s.State) {
				return i
			}
		}
	}
	return -1
}

func doneMessage(op *pb.Operation) string {
	if op.Request.GetAction() == ActUpgrade {
		return upgradedMessage(op)
	}
	steps, svcs := 0, 0
	for _, st := range op.Stages {
		steps += len(st.Steps)
		for _, s := range st.Steps {
			svcs += len(s.Services)
		}
	}
	return fmt.Sprintf("%d services in %d steps", svcs, steps)
}

// runStage runs the stage's unfinished steps at once and returns a failure
// message if any failed. Raft errors (leadership lost) come back as err.
// died reports a step that failed because its node died.
func (e *Engine) runStage(ctx context.Context, op *pb.Operation, si int, deadline time.Time) (failed string, died bool, err error) {
	sctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
		raftErr  error
	)
	for i, s := range op.Stages[si].Steps {
		if fsm.StepFinished(s.State) {
			continue
		}
		ref := &pb.StepRef{OpId: op.Id, Stage: int32(si), Step: int32(i)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, nodeDied, err := e.runStep(sctx, ctx, op, ref, proto.Clone(s).(*pb.Step))
			mu.Lock()
			defer mu.Unlock()
			if err != nil && raftErr == nil {
				raftErr = err
			}
			if msg != "" {
				failures = append(failures, msg)
			}
			died = died || nodeDied
		}()
	}
	wg.Wait()
	if raftErr != nil {
		return "", false, raftErr
	}
	if len(failures) > 0 && errors.Is(sctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		failures = append(failures, fmt.Sprintf("no progress within the progress deadline (%v)", ms(op.Request.ProgressDeadlineMs)))
	}
	return strings.Join(failures, "; "), died, nil
}

// stepToken identifies a step to the agent, which acts on it at most once.
func stepToken(ref *pb.StepRef) string {
	return fmt.Sprintf("%s/%d/%d", ref.OpId, ref.Stage, ref.Step)
}

// runStep takes one step to done or failed. It returns a failure message
// (and whether the step failed because its node died), or an error when the
// outcome could not be recorded (leadership lost). sctx bounds the work
// (progress deadline); ctx, the leadership, bounds the recording of a
// failure.
func (e *Engine) runStep(sctx, ctx context.Context, op *pb.Operation, ref *pb.StepRef, s *pb.Step) (string, bool, error) {
	req := op.Request
	s.State = fsm.StepRunning
	s.Attempts++
	s.Message = ""
	if s.StartedUnixMs == 0 {
		s.StartedUnixMs = e.now().UnixMilli()
	}
	if s.Attempts > 1 {
		s.Message = "resumed"
	}
	if err := e.setStep(ctx, ref, s); err != nil {
		return "", false, err
	}
	where := fmt.Sprintf("%s %s on %s", s.Action, strings.Join(s.Services, ","), s.Node)
	if len(s.Services) == 0 {
		where = fmt.Sprintf("%s on %s", s.Action, s.Node)
	}
	stepCtx, cancel := context.WithCancelCause(sctx)
	defer cancel(nil)
	if req.Action == ActUpgrade {
		// A node that dies mid-upgrade pauses it (see runOp).
		defer e.watchNode(stepCtx, s.Node, cancel)()
	}
	fail := func(msg string) (string, bool, error) {
		if ctx.Err() != nil {
			return "", false, nil // leadership lost: the next leader resumes the step
		}
		died := errors.Is(context.Cause(stepCtx), errNodeDown)
		if died {
			msg = context.Cause(stepCtx).Error()
		}
		s.State, s.Message, s.EndedUnixMs = fsm.StepFailed, msg, e.now().UnixMilli()
		if err := e.setStep(ctx, ref, s); err != nil {
			return "", false, err
		}
		return where + ": " + msg + outputTail(s.Output), died, nil
	}
	switch s.Action {
	case ActInstall, ActRevert:
		res, err := e.install(stepCtx, s, stepToken(ref))
		if res != nil {
			s.VersionBefore, s.VersionAfter, s.Output = res.Before, res.After, ""
			if res.Failed {
				s.Output = res.Output
			}
		}
		switch {
		case err != nil:
			return fail(err.Error())
		case res.Failed:
			return fail(res.Message)
		}
		s.Message = installMessage(res)
		e.learnPackage(ctx, s.Package, res)
	default:
		hctx, cancelHealthy := context.WithTimeout(stepCtx, ms(req.HealthyDeadlineMs))
		defer cancelHealthy()
		if err := e.control(hctx, s, stepToken(ref)); err != nil {
			return fail(err.Error())
		}
		s.OkUnixMs = e.now().UnixMilli()
		if s.Action != ActStop && req.MinHealthyTimeMs > 0 {
			// The hold is visible while it lasts: "OK, holding".
			if err := e.setStep(ctx, ref, s); err != nil {
				return "", false, err
			}
			if err := e.hold(hctx, s, ms(req.MinHealthyTimeMs)); err != nil {
				return fail(err.Error())
			}
		}
	}
	s.State, s.EndedUnixMs = fsm.StepDone, e.now().UnixMilli()
	if err := e.setStep(ctx, ref, s); err != nil {
		return "", false, err
	}
	return "", false, nil
}

var controlActions = map[string]agentpb.Action{
	ActRestart: agentpb.Action_ACTION_RESTART,
	ActStart:   agentpb.Action_ACTION_START,
	ActStop:    agentpb.Action_ACTION_STOP,
}

// control sends the step to the agent, retrying while it cannot be reached.
func (e *Engine) control(ctx context.Context, s *pb.Step, token string) error {
	var last *agentpb.Progress
	err := e.callAgent(ctx, s, "not healthy within the healthy deadline", func(timeoutMs int64) error {
		last = nil
		req := &agentpb.ControlRequest{Action: controlActions[s.Action], Services: s.Services, Block: true, OpToken: token, TimeoutMs: timeoutMs}
		return e.Agents.Control(ctx, s.Node, req, func(p *agentpb.Progress) {
			if p.Failed {
				last = p
			}
		})
	})
	if err != nil && last != nil && ctx.Err() == nil {
		return fmt.Errorf("%s: %s (%s)", last.Service, last.State, last.Message)
	}
	return err
}

// callAgent makes a call of the step to its node's agent, again while the
// agent cannot be reached (restarting, say), until ctx ends; late says
// which deadline that is. call gets the time left, for the agent to bound
// its work by.
func (e *Engine) callAgent(ctx context.Context, s *pb.Step, late string, call func(timeoutMs int64) error) error {
	retry := e.RetryInterval
	if retry == 0 {
		retry = 500 * time.Millisecond
	}
	for {
		var timeoutMs int64
		if dl, ok := ctx.Deadline(); ok {
			timeoutMs = max(time.Until(dl).Milliseconds(), 1)
		}
		err := call(timeoutMs)
		var un *Unavailable
		switch {
		case err == nil:
			return nil
		case errors.As(err, &un) && ctx.Err() == nil:
			e.Log.Warn("agent unreachable; retrying", "node", s.Node, "action", s.Action, "err", err)
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: %v", late, err)
			case <-time.After(retry):
			}
		case ctx.Err() != nil:
			return fmt.Errorf("%s (%v)", late, err)
		default:
			return err
		}
	}
}

// hold waits until every service of the step has stayed OK for d, watching
// the gossiped health for a fall and checking with the agent at the end that
// no process was replaced meanwhile (a crash and restart between two gossip
// rounds would otherwise go unseen). Gossip lags the agent: a state that
// began before the agent reported OK is old news, not a fall.
func (e *Engine) hold(ctx context.Context, s *pb.Step, d time.Duration) error {
	changed, unsubscribe := e.Health.Subscribe()
	defer unsubscribe()
	for ctx.Err() == nil {
		okAt := e.now()
		base, err := e.pids(ctx, s)
		if err != nil {
			return err
		}
		until := time.NewTimer(d)
		fell := ""
	watch:
		for {
			states := e.Health.Services(s.Node)
			for _, svc := range s.Services {
				if st, ok := states[svc]; ok && st.State != "OK" && st.Since.After(okAt) {
					fell = svc + " " + st.State
					break watch
				}
			}
			select {
			case <-ctx.Done():
				until.Stop()
				return fmt.Errorf("did not stay OK for %v within the healthy deadline", d)
			case <-until.C:
				break watch
			case <-changed:
			}
		}
		until.Stop()
		if fell == "" {
			now, err := e.pids(ctx, s)
			if err != nil {
				return err
			}
			if changedPIDs(base, now) == "" {
				return nil
			}
			fell = changedPIDs(base, now) + " restarted"
		}
		e.Log.Warn("service fell during the health hold; waiting for it again", "node", s.Node, "service", fell)
		if _, err := e.pids(ctx, s); err != nil {
			return fmt.Errorf("%s during the health hold, and not OK again within the healthy deadline", fell)
		}
	}
	return fmt.Errorf("did not stay OK for %v within the healthy deadline", d)
}

// pids asks the agent for the step's services and requires them OK.
func (e *Engine) pids(ctx context.Context, s *pb.Step) (map[string]int32, error) {
	for {
		st, err := e.Agents.Status(ctx, s.Node)
		if err == nil {
			out := map[string]int32{}
			bad := ""
			for _, svc := range st.Services {
				for _, want := range s.Services {
					if svc.Name == want {
						out[want] = svc.Pid
						if svc.State != "OK" && bad == "" {
							bad = want + " " + svc.State
						}
					}
				}
			}
			if bad == "" {
				return out, nil
			}
			err = errors.New(bad)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("not OK within the healthy deadline: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func changedPIDs(a, b map[string]int32) string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, k)
		}
	}
	return strings.Join(out, ",")
}
