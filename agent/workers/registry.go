// Package workers takes the query workers a node's dispatchers report and
// passes each dispatcher's complete set to the coordinators, which route the
// workers in Envoy. Dispatchers call it over gRPC (the agent API) or over a
// loopback HTTP/JSON endpoint that a JVM hook or curl can reach.
package workers

import (
	"context"
	"errors"
	"fmt"
	"maps"
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

// Registry forwards worker sets to a coordinator.
type Registry struct {
	// dispatcher returns the pid of a service of this node (0 when it is
	// not running); false if the node has no such service.
	dispatcher func(name string) (pid int, ok bool)
	// coordinators lists the coordinators' API addresses, by server id.
	coordinators func() map[string]string
	conns        *conncache.Cache

	mu        sync.Mutex
	preferred string // the id of the replica that last answered (the leader)
	last      map[string]*agentpb.RegisterWorkersResponse
}

// New returns a registry that reaches the coordinators with creds (the
// agent's certificate).
func New(creds credentials.TransportCredentials, dispatcher func(name string) (pid int, ok bool), coordinators func() map[string]string) *Registry {
	return &Registry{dispatcher: dispatcher, coordinators: coordinators, conns: conncache.New(creds), last: map[string]*agentpb.RegisterWorkersResponse{}}
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
	pid, ok := r.dispatcher(req.Dispatcher)
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "dispatcher: %q is not a service of this node", req.Dispatcher)
	}
	if pid == 0 && len(req.Workers) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "dispatcher: %s is not running on this node; its workers cannot be", req.Dispatcher)
	}
	// The coordinators drop the set when the dispatcher's process changes
	// (gossip shows another pid), so a restarted dispatcher's dead workers
	// are never routed, lease or not.
	req.DispatcherPid = int32(pid)
	coords := r.coordinators()
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
	if len(req.Workers) == 0 {
		delete(r.last, req.Dispatcher)
		return
	}
	r.last[req.Dispatcher] = resp
}

// Last returns what the coordinators answered to each dispatcher's last
// registration through this agent.
func (r *Registry) Last() map[string]*agentpb.RegisterWorkersResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.last)
}

func (r *Registry) client(addr string) (coordpb.CoordinatorClient, error) {
	c, err := r.conns.Get(addr)
	if err != nil {
		return nil, err
	}
	return coordpb.NewCoordinatorClient(c), nil
}

// Close closes the connections to the coordinators.
func (r *Registry) Close() { r.conns.Close() }

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
