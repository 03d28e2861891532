package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/coordinator/fsm"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

const (
	opTimeout    = 2 * time.Minute // one restart all, start to end
	readyTimeout = time.Minute     // every service OK again before the next
	// holdMS is the smallest health hold (0 would mean the coordinators'
	// default), subtracted from every transition.
	holdMS = 1
)

type opsResult struct {
	Ops int `json:"ops"`
	// Overhead: per transition between consecutive stages, the next stage's
	// first step start - the stage's last OK - the hold.
	Overhead stats `json:"overhead"`
	// The overhead split at the stage's last step end: OK -> done (hold
	// commit, the hold with its two agent status calls, done commit) and
	// done -> next step started.
	OKToDone     stats     `json:"ok_to_done"`
	DoneToNext   stats     `json:"done_to_next_started"`
	Wall         stats     `json:"wall"`
	SlowestSum   stats     `json:"sum_of_slowest_steps"`
	Stages       int       `json:"stages"`
	Steps        int       `json:"steps"`
	Plan         []string  `json:"plan"` // one line per stage of the first operation
	Samples      []opRun   `json:"samples"`
	OverheadMS   []float64 `json:"overhead_ms"`
	Problems     []string  `json:"problems,omitempty"`
	Transitions  int       `json:"transitions"`
	NegativeSeen int       `json:"negative_overheads,omitempty"`
	// HoldFalls counts the leaders' "service fell during the health hold"
	// warnings by node and service state: the engine's gossiped view
	// disagreeing with the agent during the hold.
	HoldFalls map[string]int `json:"hold_falls,omitempty"`
}

type opRun struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// WallMS is the harness's clock, StartOp sent to the end seen through
	// WatchOp; RecordedMS the operation's own created -> ended.
	WallMS       float64   `json:"wall_ms"`
	RecordedMS   float64   `json:"recorded_ms"`
	SlowestSumMS float64   `json:"sum_of_slowest_steps_ms"`
	OverheadMS   []float64 `json:"overhead_ms"`
	OKToDoneMS   []float64 `json:"ok_to_done_ms"`
	DoneToNextMS []float64 `json:"done_to_next_started_ms"`
	MaxAttempts  int32     `json:"max_attempts"`
	// Slow describes the transitions over the target.
	Slow []string `json:"slow,omitempty"`
}

func (b *bench) opsPhase(ctx context.Context) (*opsResult, error) {
	res := &opsResult{}
	var walls, slowest, okDone, doneNext []float64
	defer func() {
		res.Overhead, res.OKToDone, res.DoneToNext = summarise(res.OverheadMS), summarise(okDone), summarise(doneNext)
		res.Wall, res.SlowestSum = summarise(walls), summarise(slowest)
		res.Transitions = len(res.OverheadMS)
	}()
	for k := range b.o.ops {
		if err := b.cl.WaitReady(ctx, readyTimeout); err != nil {
			return res, fmt.Errorf("before restart all %d: %w", k+1, err)
		}
		l, _ := b.leader(ctx)
		if l < 0 {
			return res, errors.New("the replicas do not agree on a leader")
		}
		op, wall, err := b.restartAll(ctx, l)
		if err != nil {
			return res, fmt.Errorf("restart all %d: %w", k+1, err)
		}
		r := analyse(op, wall)
		res.Ops++
		res.Samples = append(res.Samples, r)
		if k == 0 {
			res.Plan = planLines(op)
			res.Stages = len(op.Stages)
			for _, st := range op.Stages {
				res.Steps += len(st.Steps)
			}
		}
		res.Problems = append(res.Problems, problems(op)...)
		res.OverheadMS = append(res.OverheadMS, r.OverheadMS...)
		okDone, doneNext = append(okDone, r.OKToDoneMS...), append(doneNext, r.DoneToNextMS...)
		walls, slowest = append(walls, r.WallMS), append(slowest, r.SlowestSumMS)
		for _, v := range r.OverheadMS {
			if v < 0 {
				res.NegativeSeen++
			}
		}
		st := summarise(r.OverheadMS)
		fmt.Fprintf(logw, "  restart all %2d/%d: %s %s in %s; overhead per transition p50 %s max %s\n", k+1, b.o.ops, op.Id, op.State, fmtMS(r.WallMS), fmtMS(st.P50), fmtMS(st.Max))
	}
	res.HoldFalls = b.holdFalls()
	return res, nil
}

var holdFall = regexp.MustCompile(`service fell during the health hold.*node=(\S+) service="([^"]*)"`)

func (b *bench) holdFalls() map[string]int {
	out := map[string]int{}
	for _, p := range b.cl.Coords {
		for _, line := range strings.Split(p.Log(), "\n") {
			if m := holdFall.FindStringSubmatch(line); m != nil {
				out[m[1]+"/"+m[2]]++
			}
		}
	}
	return out
}

// restartAll starts the operation on replica l and follows it to its end.
func (b *bench) restartAll(ctx context.Context, l int) (*pb.Operation, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	t0 := time.Now()
	op, err := b.clients[l].StartOp(ctx, &pb.OpRequest{Action: "restart", Label: "restart all (bench)", MinHealthyTimeMs: holdMS})
	if err != nil {
		return nil, 0, err
	}
	stream, err := b.clients[l].WatchOp(ctx, &pb.GetOpRequest{Id: op.Id})
	if err != nil {
		return nil, 0, err
	}
	for {
		got, err := stream.Recv()
		if err != nil {
			return op, 0, fmt.Errorf("watch %s (last state %s): %w", op.Id, op.State, err)
		}
		op = got
		// A paused operation waits for an operator: as good as ended here.
		if fsm.Ended(op.State) || op.State == fsm.OpPaused {
			return op, ms(time.Since(t0)), nil
		}
	}
}

// analyse computes the transitions of one operation. Step times are the
// leader's clock, in milliseconds.
func analyse(op *pb.Operation, wall float64) opRun {
	r := opRun{ID: op.Id, State: op.State, WallMS: wall, RecordedMS: float64(op.EndedUnixMs - op.CreatedUnixMs)}
	for k, st := range op.Stages {
		var lastOK, lastEnd, slowest int64
		okNode, endNode := "", ""
		for _, s := range st.Steps {
			if s.OkUnixMs > lastOK {
				okNode = s.Node
			}
			if s.EndedUnixMs > lastEnd {
				endNode = s.Node
			}
			lastOK, lastEnd = max(lastOK, s.OkUnixMs), max(lastEnd, s.EndedUnixMs)
			slowest = max(slowest, s.EndedUnixMs-s.StartedUnixMs)
			r.MaxAttempts = max(r.MaxAttempts, s.Attempts)
		}
		r.SlowestSumMS += float64(slowest)
		if k+1 == len(op.Stages) {
			break
		}
		next := int64(0)
		for _, s := range op.Stages[k+1].Steps {
			if s.StartedUnixMs > 0 && (next == 0 || s.StartedUnixMs < next) {
				next = s.StartedUnixMs
			}
		}
		if lastOK == 0 || next == 0 {
			continue // not reached (a failed operation): nothing to measure
		}
		over := next - lastOK - holdMS
		if over >= targetOverheadP99.Milliseconds() {
			r.Slow = append(r.Slow, fmt.Sprintf("%s stage %d->%d: %s; last OK on %s, last step done on %s %d ms later, next started %d ms after that",
				op.Id, k+1, k+2, fmtMS(float64(over)), okNode, endNode, lastEnd-lastOK, next-lastEnd))
		}
		r.OverheadMS = append(r.OverheadMS, float64(over))
		r.OKToDoneMS = append(r.OKToDoneMS, float64(lastEnd-lastOK))
		r.DoneToNextMS = append(r.DoneToNextMS, float64(next-lastEnd))
	}
	return r
}

// problems lists what is not as a clean run leaves it: the operation done,
// every step done at its first attempt.
func problems(op *pb.Operation) []string {
	var out []string
	if op.State != fsm.OpDone {
		out = append(out, fmt.Sprintf("%s ended %s: %s", op.Id, op.State, op.Message))
	}
	for k, st := range op.Stages {
		for _, s := range st.Steps {
			if s.State != fsm.StepDone || s.Attempts != 1 {
				out = append(out, fmt.Sprintf("%s stage %d %s on %s: %s after %d attempts (%s)", op.Id, k+1, s.Action, s.Node, s.State, s.Attempts, s.Message))
			}
		}
	}
	return out
}

func planLines(op *pb.Operation) []string {
	var out []string
	for _, st := range op.Stages {
		var steps []string
		for _, s := range st.Steps {
			steps = append(steps, fmt.Sprintf("%s: %s", s.Node, strings.Join(s.Services, ",")))
		}
		slices.Sort(steps)
		out = append(out, strings.Join(steps, " | "))
	}
	return out
}
