package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

const (
	failoverCap = 15 * time.Second // a kill with no committed write by then counts as timed out
	recoverCap  = 30 * time.Second // restarted replica back and caught up
	// attemptTimeout bounds one write attempt: short, so that an attempt
	// stuck on a dead leader does not hide the moment a new one could
	// answer.
	attemptTimeout = 250 * time.Millisecond
	attemptGap     = 10 * time.Millisecond
)

type failoverResult struct {
	Kills    int          `json:"kills"`
	Elected  int          `json:"elected"`   // a write committed within failoverCap
	TimedOut int          `json:"timed_out"` // no write within failoverCap
	Write    stats        `json:"kill_to_write"`
	CatchUp  stats        `json:"restart_to_caught_up"`
	Samples  []killSample `json:"samples"`
	WallS    float64      `json:"wall_s"`
	Settle   string       `json:"settle"`
}

type killSample struct {
	Killed    string  `json:"killed"`
	Via       string  `json:"via"`        // the surviving replica the writes were sent to
	NewLeader string  `json:"new_leader"` // who committed the write
	Forwarded bool    `json:"forwarded"`  // via was a follower and passed the write on
	MS        float64 `json:"kill_to_write_ms"`
	TimedOut  bool    `json:"timed_out,omitempty"`
	Attempts  int     `json:"attempts"`
	// Errors groups the failed attempts by what they said (numbers
	// masked), with when each answer was first and last seen: a timeline of
	// what the replica written through knew.
	Errors    map[string]*errorSpan `json:"errors,omitempty"`
	CatchUpMS float64               `json:"restart_to_caught_up_ms"`
}

type errorSpan struct {
	N       int     `json:"n"`
	FirstMS float64 `json:"first_ms"` // after the kill
	LastMS  float64 `json:"last_ms"`
}

func (b *bench) failoverPhase(ctx context.Context) (*failoverResult, error) {
	res := &failoverResult{Settle: b.o.settle.String()}
	start := time.Now()
	defer func() { res.WallS = time.Since(start).Seconds() }()
	var writes, catchUps []float64
	defer func() { res.Write, res.CatchUp = summarise(writes), summarise(catchUps) }()
	for k := range b.o.kills {
		if err := b.waitSteady(ctx, -1, 0); err != nil {
			return res, fmt.Errorf("before kill %d: %w", k+1, err)
		}
		l, _ := b.leader(ctx)
		if l < 0 {
			return res, fmt.Errorf("before kill %d: the replicas do not agree on a leader", k+1)
		}
		var survivors []int
		for i := range coordinators {
			if i != l {
				survivors = append(survivors, i)
			}
		}
		// Alternate the replica written through, so both orders (the new
		// leader answering itself, a follower forwarding) are sampled.
		via := survivors[k%len(survivors)]
		s, err := b.killOnce(ctx, l, via)
		res.Samples = append(res.Samples, s)
		res.Kills++
		if err != nil {
			return res, err
		}
		if s.TimedOut {
			res.TimedOut++
		} else {
			res.Elected++
			writes = append(writes, s.MS)
		}
		fmt.Fprintf(logw, "  kill %2d/%d: %s killed, write via %s committed by %-3s after %s (%d attempts)\n", k+1, b.o.kills, s.Killed, s.Via, s.NewLeader, fmtMS(s.MS), s.Attempts)

		restarted := time.Now()
		if err := b.cl.Coords[l].Start(); err != nil {
			return res, fmt.Errorf("restart %s: %w", s.Killed, err)
		}
		if err := b.redial(l); err != nil {
			return res, err
		}
		if err := b.waitSteady(ctx, l, time.Until(restarted.Add(recoverCap))); err != nil {
			return res, fmt.Errorf("after kill %d, %s restarted: %w\n%s log tail:\n%s", k+1, s.Killed, err, s.Killed, tail(b.cl.Coords[l].Dir+"/daemon.log", 15))
		}
		s.CatchUpMS = ms(time.Since(restarted))
		res.Samples[len(res.Samples)-1] = s
		catchUps = append(catchUps, s.CatchUpMS)
		if err := sleepCtx(ctx, b.o.settle); err != nil {
			return res, err
		}
	}
	return res, nil
}

// killOnce kills leader l and writes through via until a write commits.
func (b *bench) killOnce(ctx context.Context, l, via int) (killSample, error) {
	s := killSample{Killed: b.cl.Coords[l].Name, Via: b.cl.Coords[via].Name, Errors: map[string]*errorSpan{}}
	req := b.join(via)
	t0 := time.Now()
	b.cl.Coords[l].Kill()
	for {
		if ctx.Err() != nil {
			return s, ctx.Err()
		}
		s.Attempts++
		cctx, cancel := context.WithTimeout(ctx, attemptTimeout)
		resp, err := b.clients[via].Join(cctx, req)
		cancel()
		if err == nil {
			s.MS = ms(time.Since(t0))
			s.NewLeader = resp.AnsweredBy
			s.Forwarded = resp.AnsweredBy != s.Via
			return s, nil
		}
		at := ms(time.Since(t0))
		class := errorClass(err)
		if s.Errors[class] == nil {
			s.Errors[class] = &errorSpan{FirstMS: at}
		}
		s.Errors[class].N++
		s.Errors[class].LastMS = at
		if time.Since(t0) > failoverCap {
			s.TimedOut, s.MS = true, ms(time.Since(t0))
			return s, nil
		}
		if err := sleepCtx(ctx, attemptGap); err != nil {
			return s, err
		}
	}
}

var digits = regexp.MustCompile(`[0-9]+`)

// errorClass groups errors that differ only in numbers (ports, indexes).
func errorClass(err error) string {
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Code().String() + ": " + st.Message()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		msg = "DeadlineExceeded (attempt timeout)"
	}
	msg = digits.ReplaceAllString(msg, "N")
	if len(msg) > 140 {
		msg = msg[:140] + "..."
	}
	return strings.TrimSpace(msg)
}

// waitSteady waits until every replica runs, all agree on one leader that
// lists three voters, and (restarted >= 0) the restarted replica has
// applied everything the leader had committed when the wait began.
func (b *bench) waitSteady(ctx context.Context, restarted int, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = recoverCap
	}
	var want uint64
	return pollUntil(ctx, 20*time.Millisecond, timeout, func() (bool, error) {
		for _, p := range b.cl.Coords {
			if !p.Running() {
				return false, fmt.Errorf("%s is not running", p.Name)
			}
		}
		l, view := b.leader(ctx)
		if l < 0 {
			return false, errors.New("no leader all replicas agree on")
		}
		voters := 0
		for _, p := range view.Peers {
			if p.Voter {
				voters++
			}
		}
		if voters != coordinators {
			return false, fmt.Errorf("the leader lists %d voters", voters)
		}
		if restarted < 0 {
			return true, nil
		}
		if want == 0 {
			want = view.CommitIndex
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		mine, err := b.clients[restarted].Peers(cctx, &pb.PeersRequest{})
		if err != nil {
			return false, err
		}
		if mine.AppliedIndex < want {
			return false, fmt.Errorf("%s applied %d of %d", b.cl.Coords[restarted].Name, mine.AppliedIndex, want)
		}
		return true, nil
	})
}
