package coordpb

import "time"

// States of the configuration server import (UpstreamImport.state).
const (
	// UpstreamLive: the stream is up and the set is the upstream's last.
	UpstreamLive = "live"
	// UpstreamStale: the stream is down; the last set is still routed
	// until withdraw_unix_ms.
	UpstreamStale = "stale"
	// UpstreamWithdrawn: the stream stayed down for the grace; the set is
	// gone.
	UpstreamWithdrawn = "withdrawn"
)

// StateAt is the import's state at now, and since when: a replica stops
// routing the set once withdraw_unix_ms passes whatever the leader
// recorded last (there may be no leader to record it).
func (u *UpstreamImport) StateAt(now time.Time) (state string, since time.Time) {
	if u.GetState() != UpstreamWithdrawn && u.GetWithdrawUnixMs() != 0 && now.UnixMilli() >= u.GetWithdrawUnixMs() {
		return UpstreamWithdrawn, time.UnixMilli(u.GetWithdrawUnixMs())
	}
	return u.GetState(), time.UnixMilli(u.GetSinceUnixMs())
}
