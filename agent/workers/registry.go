// Package workers takes the query workers a node's dispatchers report and
// passes each dispatcher's complete set to the coordinators, which route the
// workers in Envoy. Dispatchers call it over gRPC (the agent API) or over an
// HTTP/JSON endpoint on a unix socket that a JVM hook or curl can reach;
// the kernel says who calls, and only a dispatcher's own processes (or
// root) may register its workers.
package workers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/internal/conncache"
	"github.com/dhvisor/dhvisor/internal/peercred"
	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	coordpb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// Local is what the registry asks of its node.
type Local struct {
	// Node is the node's name.
	Node string
	// Dispatcher returns the pid of a service of this node (0 when it is
	// not running); false if the node has no such service.
	Dispatcher func(name string) (pid int, ok bool)
	// OwnerOf names the service whose processes include pid.
	OwnerOf func(pid int) (service string, ok bool)
	// Addrs are the node's own addresses: the only ones its workers may
	// be at. Nil: not checked here (the coordinators check anyway).
	Addrs func() ([]netip.Addr, error)
}

// Registry forwards worker sets to a coordinator.
type Registry struct {
	local Local
	// coordinators lists the coordinators' API addresses, by server id.
	coordinators func() map[string]string
	conns        *conncache.Cache

	mu        sync.Mutex
	preferred string // the id of the replica that last answered (the leader)
	last      map[string]*agentpb.RegisterWorkersResponse
}

// New returns a registry that reaches the coordinators with creds (the
// agent's certificate).
func New(creds credentials.TransportCredentials, local Local, coordinators func() map[string]string) *Registry {
	return &Registry{local: local, coordinators: coordinators, conns: conncache.New(creds), last: map[string]*agentpb.RegisterWorkersResponse{}}
}

// Authorize says whether the process the kernel names in c may register
// the workers of dispatcher: root may register any dispatcher's; any
// other process only those of the service it belongs to.
func (r *Registry) Authorize(c peercred.Cred, dispatcher string) error {
	if c.Root() {
		return nil
	}
	pid := int(c.PID)
	// The pid was the caller's when it connected; it must still be a
	// process of the same user, not a later one that reuses the pid.
	if own, err := procfs.ReadOwner(pid); err != nil || own.EUID != c.UID {
		return status.Errorf(codes.PermissionDenied, "caller %s: no longer running as that user; connect again", c)
	}
	svc, ok := r.local.OwnerOf(pid)
	switch {
	case !ok:
		return status.Errorf(codes.PermissionDenied, "caller %s is not a process of %s or of any service of this node: only %s's processes (its process tree or unit), or root, may register its workers", c, dispatcher, dispatcher)
	case svc != dispatcher:
		return status.Errorf(codes.PermissionDenied, "caller %s is a process of %s: it may register %s's workers, not %s's (that needs %s's processes, or root)", c, svc, svc, dispatcher, dispatcher)
	}
	return nil
}

// callTimeout bounds one attempt at one coordinator.
const callTimeout = 5 * time.Second

// Register checks a dispatcher's set and passes it to the coordinators,
// trying each in turn (the one that answered last first).
func (r *Registry) Register(ctx context.Context, req *agentpb.RegisterWorkersRequest) (*agentpb.RegisterWorkersResponse, error) {
	req = proto.Clone(req).(*agentpb.RegisterWorkersRequest)
	if req.Node != "" && req.Node != r.local.Node {
		return nil, status.Errorf(codes.InvalidArgument, "node: %q is not this node (%s)", req.Node, r.local.Node)
	}
	req.Node = r.local.Node
	if err := req.Normalize(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := resolveHosts(ctx, req.Workers); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := r.ownHosts(req.Workers); err != nil {
		return nil, err
	}
	pid, ok := r.local.Dispatcher(req.Dispatcher)
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

// ownHosts refuses workers at an address that is not this node's: a
// dispatcher runs its workers on its own node, and Envoy must not be sent
// elsewhere on its say.
func (r *Registry) ownHosts(ws []*agentpb.Worker) error {
	if r.local.Addrs == nil {
		return nil
	}
	var addrs []netip.Addr
	for i, w := range ws {
		if w.Host == "" {
			continue
		}
		if addrs == nil {
			var err error
			if addrs, err = r.local.Addrs(); err != nil {
				return status.Errorf(codes.Unavailable, "this node's addresses: %v", err)
			}
		}
		a, err := netip.ParseAddr(w.Host)
		if err == nil && slices.Contains(addrs, a.Unmap()) {
			continue
		}
		return status.Errorf(codes.InvalidArgument, "workers[%d].host: %s is not an address of this node (%s): a dispatcher's workers run on its own node", i, w.Host, r.local.Node)
	}
	return nil
}

// InterfaceAddrs are the addresses of the host's interfaces.
func InterfaceAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifaddrs))
	for _, ia := range ifaddrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
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
