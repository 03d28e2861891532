package main

import (
	"context"
	"fmt"
	"time"
)

// writeTimeout bounds one write of the latency phase; a steady cluster
// commits in milliseconds, so this only catches a stuck one.
const writeTimeout = 5 * time.Second

type writeResult struct {
	Leader    string         `json:"leader"`
	Follower  string         `json:"follower"`
	Direct    stats          `json:"to_leader"`
	Forwarded stats          `json:"to_follower"`
	Errors    map[string]int `json:"errors,omitempty"`
	DirectMS  []float64      `json:"to_leader_ms"`
	ForwardMS []float64      `json:"to_follower_ms"`
}

// writePhase sends the write alternately to the leader and to a follower,
// so that both see the same conditions on the host.
func (b *bench) writePhase(ctx context.Context) (*writeResult, error) {
	l, _ := b.leader(ctx)
	if l < 0 {
		return nil, fmt.Errorf("the replicas do not agree on a leader")
	}
	f := (l + 1) % coordinators
	res := &writeResult{Leader: b.cl.Coords[l].Name, Follower: b.cl.Coords[f].Name, Errors: map[string]int{}}
	defer func() { res.Direct, res.Forwarded = summarise(res.DirectMS), summarise(res.ForwardMS) }()
	req := b.join(f)
	failures := 0
	for range b.o.writes {
		for _, to := range []int{l, f} {
			cctx, cancel := context.WithTimeout(ctx, writeTimeout)
			t0 := time.Now()
			resp, err := b.clients[to].Join(cctx, req)
			d := ms(time.Since(t0))
			cancel()
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			if err != nil {
				res.Errors[errorClass(err)]++
				if failures++; failures > 10 {
					return res, fmt.Errorf("more than 10 writes failed: %v", res.Errors)
				}
				continue
			}
			if resp.AnsweredBy != res.Leader {
				return res, fmt.Errorf("leadership moved to %s during the write phase", resp.AnsweredBy)
			}
			if to == l {
				res.DirectMS = append(res.DirectMS, d)
			} else {
				res.ForwardMS = append(res.ForwardMS, d)
			}
		}
	}
	return res, nil
}
