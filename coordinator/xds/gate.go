package xds

import (
	"context"
	"errors"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// gate holds clients' watches until the server has its first model. An
// empty linear cache would answer at once that there is nothing: Envoy
// would drop every cluster and route it has, and a restarted coordinator
// withholds xDS until raft has given it back its state for that reason.
type gate struct {
	next cache.Cache

	mu      sync.Mutex
	opened  bool
	pending map[*heldWatch]struct{}
}

// heldWatch is a watch made before the gate opened.
type heldWatch struct {
	create func() (func(), error)
	cancel func() // the cache's, once the watch reached it
	done   bool   // cancelled by the server
}

var _ cache.Cache = (*gate)(nil)

func newGate(next cache.Cache) *gate {
	return &gate{next: next, pending: map[*heldWatch]struct{}{}}
}

// open passes the held watches on, and every later one at once.
func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened {
		return
	}
	g.opened = true
	for w := range g.pending {
		// A watch the cache refuses (a type nobody serves) ends its
		// stream only once the client asks again: it stays unanswered.
		w.cancel, _ = w.create()
	}
	g.pending = nil
}

func (g *gate) hold(create func() (func(), error)) (func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened {
		return create()
	}
	w := &heldWatch{create: create}
	g.pending[w] = struct{}{}
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if w.done {
			return
		}
		w.done = true
		delete(g.pending, w)
		if w.cancel != nil {
			w.cancel()
		}
	}, nil
}

func (g *gate) CreateWatch(req *cache.Request, sub cache.Subscription, value chan cache.Response) (func(), error) {
	return g.hold(func() (func(), error) { return g.next.CreateWatch(req, sub, value) })
}

func (g *gate) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, value chan cache.DeltaResponse) (func(), error) {
	return g.hold(func() (func(), error) { return g.next.CreateDeltaWatch(req, sub, value) })
}

// Fetch is REST xDS, which the server does not offer.
func (g *gate) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errors.New("REST xDS is not served")
}
