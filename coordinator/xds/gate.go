package xds

import (
	"context"
	"errors"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// gate holds each client's watch until its cache has been served once:
// the endpoints and routes from the first model on, a flavour's clusters
// and listener from the first build that made them. An empty linear cache
// would answer at once that there is nothing, and Envoy would drop every
// cluster and route it has (a restarted coordinator withholds xDS until
// raft has given it back its state for that reason).
type gate struct {
	next cache.Cache
	// want hears the flavour of every client that asks for clusters or
	// listeners, before its watch is made: the server builds them for it.
	want func(Flavour)

	mu      sync.Mutex
	opened  map[feedKey]bool
	pending map[*heldWatch]struct{}
}

// heldWatch is a watch made before its cache was served.
type heldWatch struct {
	key    feedKey
	create func() (func(), error)
	cancel func() // the cache's, once the watch reached it
	done   bool   // cancelled by the server
}

var _ cache.Cache = (*gate)(nil)

func newGate(next cache.Cache, want func(Flavour)) *gate {
	return &gate{next: next, want: want, opened: map[feedKey]bool{}, pending: map[*heldWatch]struct{}{}}
}

// open passes the watches held for cache k on, and every later one at once.
func (g *gate) open(k feedKey) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened[k] {
		return
	}
	g.opened[k] = true
	for w := range g.pending {
		if w.key == k {
			// A watch the cache refuses ends its stream only once the
			// client asks again: it stays unanswered.
			w.cancel, _ = w.create()
			delete(g.pending, w)
		}
	}
}

func (g *gate) hold(k feedKey, create func() (func(), error)) (func(), error) {
	if k.flavour != "" {
		g.want(k.flavour)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened[k] {
		return create()
	}
	w := &heldWatch{key: k, create: create}
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
	k := keyOf(cache.GetResponseType(req.GetTypeUrl()), FlavourOf(req.GetNode()))
	return g.hold(k, func() (func(), error) { return g.next.CreateWatch(req, sub, value) })
}

func (g *gate) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, value chan cache.DeltaResponse) (func(), error) {
	k := keyOf(cache.GetResponseType(req.GetTypeUrl()), FlavourOf(req.GetNode()))
	return g.hold(k, func() (func(), error) { return g.next.CreateDeltaWatch(req, sub, value) })
}

// Fetch is REST xDS, which the server does not offer.
func (g *gate) Fetch(context.Context, *cache.Request) (cache.Response, error) {
	return nil, errors.New("REST xDS is not served")
}
