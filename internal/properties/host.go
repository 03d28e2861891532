package properties

import (
	"context"
	"net"
	"os"
	"slices"
	"strings"
)

// LocalHosts are the names [host=...] matches for this host, as Deephaven's
// DefaultConfigurationContext finds them: the hostname, its short name (up
// to the first dot; an address has none), the addresses it resolves to and their canonical
// (reverse) names; lower-cased, without duplicates. A lookup that fails
// leaves its names out, as Deephaven does; ctx bounds the lookups.
func LocalHosts(ctx context.Context) []string {
	name, err := os.Hostname()
	if err != nil {
		return nil
	}
	return HostNames(ctx, net.DefaultResolver, name)
}

// HostNames is LocalHosts for the host called name, resolved through r;
// with r nil, only name and its short name.
func HostNames(ctx context.Context, r *net.Resolver, name string) []string {
	var out []string
	add := func(n string) {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	add(name)
	if i := strings.IndexByte(name, '.'); i > 0 && net.ParseIP(name) == nil {
		add(name[:i])
	}
	if r == nil {
		return out
	}
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		return out
	}
	for _, a := range addrs {
		add(a)
		if names, err := r.LookupAddr(ctx, a); err == nil {
			for _, n := range names {
				add(n)
			}
		}
	}
	return out
}
