// Package graph orders services by their depends_on edges. It is the one
// dependency graph of the design: node-local start order, dhctl up/down and
// (later) cluster-wide operations are all walks of it.
package graph

import (
	"fmt"
	"sort"
	"strings"
)

// Graph maps each node to the nodes it depends on.
type Graph struct {
	deps map[string][]string
}

// New returns an empty graph.
func New() *Graph { return &Graph{deps: map[string][]string{}} }

// Add declares node and the nodes it depends on. Dependencies that are never
// added as nodes themselves are ignored by the walks: they live elsewhere (on
// another host) and are the coordinator's business.
func (g *Graph) Add(node string, dependsOn ...string) {
	g.deps[node] = append(g.deps[node], dependsOn...)
}

// Has reports whether node was added.
func (g *Graph) Has(node string) bool { _, ok := g.deps[node]; return ok }

// DependsOn returns node's dependencies that are nodes of this graph.
func (g *Graph) DependsOn(node string) []string {
	var out []string
	for _, d := range g.deps[node] {
		if g.Has(d) && d != node {
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// CycleError names the nodes of one dependency cycle, in order.
type CycleError struct{ Path []string }

func (e *CycleError) Error() string {
	return "dependency cycle: " + strings.Join(e.Path, " -> ")
}

// Levels returns the nodes in start order: every node of level i depends only
// on nodes of earlier levels, so a level can be started in parallel once the
// levels before it are healthy. Names within a level are sorted so that plans
// print the same way every time.
func (g *Graph) Levels() ([][]string, error) {
	if cyc := g.findCycle(); cyc != nil {
		return nil, &CycleError{Path: cyc}
	}
	level := map[string]int{}
	var depth func(string) int
	depth = func(n string) int {
		if l, ok := level[n]; ok {
			return l
		}
		l := 0
		for _, d := range g.DependsOn(n) {
			if dl := depth(d) + 1; dl > l {
				l = dl
			}
		}
		level[n] = l
		return l
	}
	var levels [][]string
	for _, n := range g.nodes() {
		l := depth(n)
		for len(levels) <= l {
			levels = append(levels, nil)
		}
		levels[l] = append(levels[l], n)
	}
	for _, lv := range levels {
		sort.Strings(lv)
	}
	return levels, nil
}

// Dependents returns the nodes that depend on node, directly or not.
func (g *Graph) Dependents(node string) []string {
	seen := map[string]bool{}
	var visit func(string)
	visit = func(n string) {
		for _, m := range g.nodes() {
			if seen[m] {
				continue
			}
			for _, d := range g.DependsOn(m) {
				if d == n {
					seen[m] = true
					visit(m)
					break
				}
			}
		}
	}
	visit(node)
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (g *Graph) nodes() []string {
	out := make([]string, 0, len(g.deps))
	for n := range g.deps {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// findCycle returns one cycle as a closed path (first == last), or nil.
func (g *Graph) findCycle() []string {
	const (
		unvisited = iota
		onStack
		done
	)
	state := map[string]int{}
	var stack []string
	var cycle []string
	var visit func(string) bool
	visit = func(n string) bool {
		state[n] = onStack
		stack = append(stack, n)
		for _, d := range g.deps[n] {
			if !g.Has(d) {
				continue
			}
			switch state[d] {
			case onStack:
				for i, s := range stack {
					if s == d {
						cycle = append(append([]string{}, stack[i:]...), d)
						return true
					}
				}
			case unvisited:
				if visit(d) {
					return true
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		return false
	}
	for _, n := range g.nodes() {
		if state[n] == unvisited && visit(n) {
			return cycle
		}
	}
	return nil
}

// FormatLevels renders the levels for plans and error messages.
func FormatLevels(levels [][]string) string {
	var b strings.Builder
	for i, lv := range levels {
		fmt.Fprintf(&b, "%d: %s\n", i+1, strings.Join(lv, ", "))
	}
	return b.String()
}
