package xds

import (
	"cmp"
	"slices"
	"strings"

	"github.com/dhvisor/dhvisor/internal/config"
)

// canonical is m in one order, so that replicas whose state lists the same
// model differently build the same versions. It copies what it sorts: the
// caller's model is left alone.
func canonical(m Model) Model {
	c := Model{
		Services:    slices.Clone(m.Services),
		Workers:     slices.Clone(m.Workers),
		ExtraRoutes: slices.Clone(m.ExtraRoutes),
	}
	for i := range c.Services {
		eps := slices.Clone(c.Services[i].Endpoints)
		slices.SortFunc(eps, func(a, b Endpoint) int {
			return cmp.Or(strings.Compare(a.Node, b.Node), strings.Compare(a.Host, b.Host), cmp.Compare(a.Port, b.Port))
		})
		c.Services[i].Endpoints = slices.Compact(eps)
		c.Services[i].Routes = slices.Sorted(slices.Values(c.Services[i].Routes))
	}
	slices.SortFunc(c.Services, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
	// Usually sorted already (one dispatcher's set is): checking is cheaper
	// than sorting 10,000 workers again on every change.
	byName := func(a, b Worker) int { return strings.Compare(a.Name, b.Name) }
	if !slices.IsSortedFunc(c.Workers, byName) {
		slices.SortFunc(c.Workers, byName)
	}
	// The longest prefix first, so that /a/b is matched before /a catches it.
	slices.SortFunc(c.ExtraRoutes, func(a, b config.ExtraRoute) int {
		return cmp.Or(cmp.Compare(len(b.Prefix), len(a.Prefix)), strings.Compare(a.Prefix, b.Prefix), strings.Compare(a.Name, b.Name))
	})
	return c
}

// equal says whether two canonical models build the same resources.
func equal(a, b Model) bool {
	return slices.Equal(a.Workers, b.Workers) &&
		slices.Equal(a.ExtraRoutes, b.ExtraRoutes) &&
		slices.EqualFunc(a.Services, b.Services, func(x, y Service) bool {
			return x.Name == y.Name && x.TLS == y.TLS && x.HTTP2 == y.HTTP2 && x.Default == y.Default &&
				slices.Equal(x.Routes, y.Routes) && slices.Equal(x.Endpoints, y.Endpoints)
		})
}
