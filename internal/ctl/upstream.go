package ctl

import (
	"fmt"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/coordpb"
)

// upstreamSummary says what became of the workers imported from the
// configuration server: live, stale since when (withdrawn when), or
// withdrawn since when, and why.
func upstreamSummary(u *pb.UpstreamImport, now time.Time) string {
	state, since := u.StateAt(now)
	s := fmt.Sprintf("Workers from the configuration server at %s: %s", u.Address, state)
	switch state {
	case pb.UpstreamLive:
		s += fmt.Sprintf(" since %s, %d workers (%s)", clock(since), u.Workers, u.Version)
	case pb.UpstreamStale:
		s += fmt.Sprintf(" since %s: the last %d workers stay until %s (in %s)", clock(since), u.Workers, clock(time.UnixMilli(u.WithdrawUnixMs)), humanDuration(time.UnixMilli(u.WithdrawUnixMs).Sub(now)))
	case pb.UpstreamWithdrawn:
		s += " since " + clock(since)
	}
	if u.Error != "" {
		s += "; " + u.Error
	}
	if len(u.Skipped) > 0 {
		s += fmt.Sprintf("; %d routes on envoy-prefix not imported (dhctl workers lists them)", len(u.Skipped))
	}
	return s
}

func clock(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }

// importedLease is the LEASE column of an imported set.
func importedLease(u *pb.UpstreamImport, now time.Time) string {
	state, since := u.StateAt(now)
	if state == pb.UpstreamStale {
		return "stale since " + clock(since)
	}
	return state
}
