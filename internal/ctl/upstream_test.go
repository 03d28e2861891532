package ctl

import (
	"strings"
	"testing"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

func TestUpstreamSummary(t *testing.T) {
	now := time.Now()
	ms := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	tests := []struct {
		name  string
		u     *pb.UpstreamImport
		want  []string
		lease string
	}{
		{"live", &pb.UpstreamImport{Address: "infra-1:8124", State: pb.UpstreamLive, SinceUnixMs: ms(-time.Hour), WithdrawUnixMs: ms(10 * time.Minute), Workers: 3, Version: "clusters 7, routes 7"},
			[]string{"at infra-1:8124: live since ", "3 workers (clusters 7, routes 7)"}, "live"},
		{"stale", &pb.UpstreamImport{Address: "infra-1:8124", State: pb.UpstreamStale, SinceUnixMs: ms(-time.Minute), WithdrawUnixMs: ms(9 * time.Minute), Workers: 3, Error: "xDS stream: EOF"},
			[]string{": stale since ", "the last 3 workers stay until ", "(in 8m59s)", "; xDS stream: EOF"}, "stale since "},
		{"stale past the grace is withdrawn on every replica", &pb.UpstreamImport{Address: "infra-1:8124", State: pb.UpstreamStale, SinceUnixMs: ms(-11 * time.Minute), WithdrawUnixMs: ms(-time.Minute), Error: "EOF"},
			[]string{": withdrawn since " + clock(now.Add(-time.Minute)), "; EOF"}, "withdrawn"},
		{"withdrawn, with skipped routes", &pb.UpstreamImport{Address: "infra-1:8124", State: pb.UpstreamWithdrawn, SinceUnixMs: ms(-time.Minute), Skipped: []string{"a", "b"}},
			[]string{": withdrawn since ", "2 routes on envoy-prefix not imported"}, "withdrawn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := upstreamSummary(tt.u, now)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q does not contain %q", got, w)
				}
			}
			if l := importedLease(tt.u, now); !strings.HasPrefix(l, tt.lease) {
				t.Errorf("lease %q, want %q", l, tt.lease)
			}
		})
	}
}
