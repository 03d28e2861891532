package graph

import (
	"errors"
	"reflect"
	"testing"
)

func TestLevels(t *testing.T) {
	tests := []struct {
		name  string
		edges map[string][]string
		want  [][]string
		cycle []string
	}{
		{
			name:  "deephaven order",
			edges: map[string][]string{"config": nil, "auth": {"config"}, "acl": {"config", "auth"}, "query": {"config", "auth"}, "controller": {"auth", "query"}},
			want:  [][]string{{"config"}, {"auth"}, {"acl", "query"}, {"controller"}},
		},
		{
			name:  "remote dependency ignored",
			edges: map[string][]string{"query": {"config"}, "tdcp": {"config"}},
			want:  [][]string{{"query", "tdcp"}},
		},
		{
			name:  "cycle",
			edges: map[string][]string{"a": {"b"}, "b": {"c"}, "c": {"a"}},
			cycle: []string{"a", "b", "c", "a"},
		},
		{
			name:  "self cycle",
			edges: map[string][]string{"a": {"a"}},
			cycle: []string{"a", "a"},
		},
		{name: "empty", edges: map[string][]string{}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := New()
			for n, d := range tt.edges {
				g.Add(n, d...)
			}
			got, err := g.Levels()
			var ce *CycleError
			if tt.cycle != nil {
				if !errors.As(err, &ce) || !reflect.DeepEqual(ce.Path, tt.cycle) {
					t.Fatalf("want cycle %v, got %v", tt.cycle, err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Levels() = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestDependents(t *testing.T) {
	g := New()
	g.Add("config")
	g.Add("auth", "config")
	g.Add("web", "auth")
	g.Add("tailer")
	if got, want := g.Dependents("config"), []string{"auth", "web"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Dependents(config) = %v, want %v", got, want)
	}
	if got := g.Dependents("tailer"); len(got) != 0 {
		t.Fatalf("Dependents(tailer) = %v, want none", got)
	}
}
