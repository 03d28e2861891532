// Package workers takes the query workers a node's dispatchers report and
// passes each dispatcher's complete set to the coordinators, which route the
// workers in Envoy. Dispatchers call it over gRPC (the agent API) or over a
// loopback HTTP/JSON endpoint that a JVM hook or curl can reach.
package workers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/internal/conncache"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	coordpb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Dispatcher is what the registry needs to know of a dispatcher service on
// this node.
type Dispatcher struct {
	Running bool
	PID     int
}

// Registry forwards worker sets to a coordinator.
type Registry struct {
	// Dispatcher looks up a service of this node; false if there is none.
	Dispatcher func(name string) (Dispatcher, bool)
	// Coordinators lists the coordinators' API addresses, by server id.
	Coordinators func() map[string]string
	// Creds are the agent's client credentials (its agent certificate).
	Creds credentials.TransportCredentials

	connsOnce sync.Once
	conns     *conncache.Cache
	mu        sync.Mutex
	preferred string // the id of the replica that last answered (the leader)
	last      map[string]*Registered
}

// Registered is the last set a dispatcher registered through this agent.
type Registered struct {
	Request  *agentpb.RegisterWorkersRequest
	Response *agentpb.RegisterWorkersResponse
	At       time.Time
}

// callTimeout bounds one attempt at one coordinator.
const callTimeout = 5 * time.Second

// Register checks a dispatcher's set and passes it to the coordinators,
// trying each in turn (the one that answered last first).
func (r *Registry) Register(ctx context.Context, req *agentpb.RegisterWorkersRequest) (*agentpb.RegisterWorkersResponse, error) {
	req = proto.Clone(req).(*agentpb.RegisterWorkersRequest)
	if err := req.Normalize(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := resolveHosts(ctx, req.Workers); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	d, ok := r.Dispatcher(req.Dispatcher)
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "dispatcher: %q is not a service of this node", req.Dispatcher)
	}
	if !d.Running && len(req.Workers) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "dispatcher: %s is not running on this node; its workers cannot be", req.Dispatcher)
	}
	// The coordinators drop the set when the dispatcher's process changes
	// (gossip shows another pid), so a restarted dispatcher's dead workers
	// are never routed, lease or not.
	req.DispatcherPid = int32(d.PID)
	coords := r.Coordinators()
	if len(coords) == 0 {
		return nil, status.Error(codes.Unavailable, "no coordinator known to this agent (does the node gossip with the coordinators?)")
	}
	var errs []error
	for _, id := range r.order(coords) {
		c, err := r.client(coords[id])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		resp, err := c.RegisterWorkers(cctx, req)
		cancel()
		if err == nil {
			r.remember(req, resp)
			return resp, nil
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.FailedPrecondition, codes.PermissionDenied:
			return nil, err // the same at every replica
		}
		errs = append(errs, fmt.Errorf("%s at %s: %w", id, coords[id], err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, status.Errorf(codes.Unavailable, "no coordinator took the workers: %v", errors.Join(errs...))
}

// order puts the replica that answered last first: it is the leader, so the
// write takes no forwarding hop.
func (r *Registry) order(coords map[string]string) []string {
	r.mu.Lock()
	pref := r.preferred
	r.mu.Unlock()
	ids := make([]string, 0, len(coords))
	for id := range coords {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if i := slices.Index(ids, pref); i > 0 {
		ids[0], ids[i] = ids[i], ids[0]
	}
	return ids
}

func (r *Registry) remember(req *agentpb.RegisterWorkersRequest, resp *agentpb.RegisterWorkersResponse) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.preferred = resp.Coordinator
	if r.last == nil {
		r.last = map[string]*Registered{}
	}
	if len(req.Workers) == 0 {
		delete(r.last, req.Dispatcher)
		return
	}
	r.last[req.Dispatcher] = &Registered{Request: req, Response: resp, At: time.Now()}
}

// Last returns the sets registered through this agent, by dispatcher.
func (r *Registry) Last() map[string]Registered {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Registered, len(r.last))
	for k, v := range r.last {
		out[k] = *v
	}
	return out
}

func (r *Registry) client(addr string) (coordpb.CoordinatorClient, error) {
	r.connsOnce.Do(func() { r.conns = conncache.New(r.Creds) })
	c, err := r.conns.Get(addr)
	if err != nil {
		return nil, err
	}
	return coordpb.NewCoordinatorClient(c), nil
}

// Close closes the connections to the coordinators.
func (r *Registry) Close() {
	r.connsOnce.Do(func() { r.conns = conncache.New(r.Creds) })
	r.conns.Close()
}

// resolveHosts replaces worker host names with their address, here on the
// workers' own node: Envoy takes only IP addresses as EDS endpoints.
func resolveHosts(ctx context.Context, ws []*agentpb.Worker) error {
	resolved := map[string]string{}
	for i, w := range ws {
		if w.Host == "" || net.ParseIP(w.Host) != nil {
			continue
		}
		ip, ok := resolved[w.Host]
		if !ok {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ips, err := net.DefaultResolver.LookupNetIP(rctx, "ip", w.Host)
			cancel()
			if err != nil || len(ips) == 0 {
				return fmt.Errorf("workers[%d].host: %q does not resolve here: %v", i, w.Host, err)
			}
			// IPv4 first: Deephaven's services listen on it.
			ip = ips[0].Unmap().String()
			for _, a := range ips {
				if a.Unmap().Is4() {
					ip = a.Unmap().String()
					break
				}
			}
			resolved[w.Host] = ip
		}
		w.Host = ip
	}
	return nil
}
