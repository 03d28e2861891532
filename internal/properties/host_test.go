package properties

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
)

// With no DNS, a host is still its own name and its short name, and an
// address is itself; every name lower-cased.
func TestHostNames(t *testing.T) {
	noDNS := &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no DNS in this test")
	}}
	tests := []struct {
		name string
		want []string
	}{
		{"Infra-1.Example.COM.", []string{"infra-1.example.com", "infra-1"}},
		{"infra-1", []string{"infra-1"}},
		{"10.0.0.5", []string{"10.0.0.5"}},
		{".hidden", []string{".hidden"}},
	}
	for _, tt := range tests {
		if got := HostNames(context.Background(), noDNS, tt.name); !slices.Equal(got, tt.want) {
			t.Errorf("HostNames(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
