package api

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentpb "github.com/dhvisor/dhvisor/proto/agentpb"
	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// WorkerPolicy is where the coordinators let Envoy be sent for a worker.
// Envoy passes users' credentials to a worker, so a registration must not
// point it at anything but the dispatcher's own node: not at Envoy's own
// host (loopback: its admin port and whatever else listens there), not at
// link-local addresses (cloud metadata services), not at another node.
type WorkerPolicy struct {
	// AllowLoopback takes workers at a loopback address, on nodes that
	// are themselves at one: for a cluster on one host (make demo, the
	// end-to-end tests), never for a real one.
	AllowLoopback bool
}

// NodeAddrs are the addresses the coordinators know node n by: its gossip
// address and its agent API's host. A worker may be at one of them only.
func NodeAddrs(n *pb.Node) []netip.Addr {
	var out []netip.Addr
	hosts := []string{n.GetHost()}
	if h, _, err := net.SplitHostPort(n.GetApiAddr()); err == nil {
		hosts = append(hosts, h)
	}
	for _, h := range hosts {
		if a, err := netip.ParseAddr(h); err == nil && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Check refuses the workers of node n (nil: unknown to the coordinators)
// that Envoy must not be sent to, naming the first one's field.
func (p WorkerPolicy) Check(node string, n *pb.Node, ws []*agentpb.Worker) error {
	if len(ws) == 0 {
		return nil // a set emptied routes nothing
	}
	if n == nil {
		return status.Errorf(codes.Unavailable, "node: %s is not in the coordinators' inventory yet (they learn it over gossip); send the set again", node)
	}
	addrs := NodeAddrs(n)
	if len(addrs) == 0 {
		return status.Errorf(codes.Unavailable, "node: the coordinators know no address of %s yet; send the set again", node)
	}
	for i, w := range ws {
		if w.Host == "" {
			// At the node's address: the first, as routes take it.
			if err := p.Allowed(addrs[0]); err != nil {
				return status.Errorf(codes.InvalidArgument, "workers[%d].host: empty, so at %s's address %s, which %v", i, node, addrs[0], err)
			}
			continue
		}
		a, err := netip.ParseAddr(w.Host)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "workers[%d].host: %q is not an IP address", i, w.Host)
		}
		a = a.Unmap()
		if err := p.Allowed(a); err != nil {
			return status.Errorf(codes.InvalidArgument, "workers[%d].host: %s %v", i, a, err)
		}
		if !slices.Contains(addrs, a) {
			return status.Errorf(codes.InvalidArgument, "workers[%d].host: %s is not an address of node %s (%v): a dispatcher's workers run on its own node", i, a, node, addrs)
		}
	}
	return nil
}

// Allowed says why Envoy must not be sent to a, if it must not: for
// registered workers and those imported from the configuration server.
func (p WorkerPolicy) Allowed(a netip.Addr) error {
	switch {
	case a.IsUnspecified():
		return fmt.Errorf("is unspecified: not an address a worker can be reached at")
	case a.IsLoopback() && !p.AllowLoopback:
		return fmt.Errorf("is loopback: Envoy would connect to its own host (set workers.allow_loopback only for a cluster on one host)")
	case a.IsLinkLocalUnicast():
		return fmt.Errorf("is link-local (cloud metadata services live there): not routed")
	case a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("is multicast or broadcast: not a worker's address")
	}
	return nil
}
