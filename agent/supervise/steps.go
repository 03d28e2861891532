package supervise

import (
	"context"
	"errors"
	"time"

	"github.com/dhvisor/dhvisor/agent/relay"
)

// DefaultStepTimeout bounds an operation step whose request sets no timeout:
// a step outlives its caller, so something must end it.
const DefaultStepTimeout = 10 * time.Minute

// ControlStep is Control as one step of a cluster operation, named by token
// (empty: plain Control). The coordinator re-sends a step when its leader
// died mid-way, so a step must never act twice on a service:
//
//   - a service on which a request with this token already took effect is
//     not acted on again; with block, the request only waits for the goal;
//   - the request runs to its end even if ctx ends (the leader that sent it
//     died), bounded by timeout (0: DefaultStepTimeout) and the agent's life;
//   - a request arriving while an earlier one with the same token runs waits
//     for it first, then goes over what is left.
//
// Without block a multi-service walk goes on in the background, as with
// Control, and a repeat does not wait for it; the per-service token still
// keeps every service to one action.
func (m *Manager) ControlStep(ctx context.Context, token string, timeout time.Duration, act Action, svc []string, block bool, progress func(Progress)) error {
	if token == "" {
		return m.Control(ctx, act, svc, block, progress)
	}
	sups, err := m.lookup(svc)
	if err != nil {
		return err
	}
	if timeout <= 0 {
		timeout = DefaultStepTimeout
	}
	select {
	case <-m.running:
	case <-ctx.Done():
		return ctx.Err()
	}
	if m.ctx.Err() != nil {
		return errors.New("the agent is shutting down")
	}
	out := relay.New(progress)
	prev, mine := m.joinStep(token)
	result := make(chan error, 1)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	m.background(func(agent context.Context) {
		defer m.leaveStep(token, mine)
		defer cancel()
		defer context.AfterFunc(agent, cancel)()
		if prev != nil {
			for _, s := range sups {
				out.Send(Progress{Service: s.name, State: s.Status().State, Message: "waiting for an earlier request of this operation step"})
			}
			select {
			case <-prev:
			case <-sctx.Done():
				result <- sctx.Err()
				return
			}
		}
		result <- m.control(sctx, act, svc, block, token, out.Send)
	})
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		out.Detach()
		return ctx.Err()
	}
}

// joinStep registers a request under token and returns the channel of the
// request it must wait for (nil if none is in flight) and its own, closed
// by leaveStep when it has finished.
func (m *Manager) joinStep(token string) (prev, mine chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev = m.steps[token]
	mine = make(chan struct{})
	m.steps[token] = mine
	return prev, mine
}

func (m *Manager) leaveStep(token string, mine chan struct{}) {
	close(mine)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.steps[token] == mine {
		delete(m.steps, token)
	}
}

// stepDone reports whether the operation step token already took effect on
// the service.
func (m *Manager) stepDone(name, token string) bool {
	if token == "" {
		return false
	}
	s := m.sup(name)
	return s != nil && s.remembered().LastOpToken == token
}
