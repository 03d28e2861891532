package gossip

import pb "github.com/dhvisor/dhvisor/proto/agentpb"

// Proto is the API form of a node view, as agents and coordinators serve it.
func (v NodeView) Proto() *pb.NodeInfo {
	ni := &pb.NodeInfo{
		Name: v.Name, Addr: v.Addr, State: v.State, StateSinceUnixMs: v.StateSince.UnixMilli(),
		Roles: v.Meta.Roles, ApiAddr: v.Meta.APIAddr, DeephavenVersion: v.Meta.DeephavenVersion, DhvisorVersion: v.Meta.DhvisorVersion,
		Version: v.Version, KeyIds: v.KeyIDs, Kind: v.Meta.Kind, PackageVersion: v.Meta.PackageVersion,
	}
	if !v.Learned.IsZero() {
		ni.LearnedUnixMs = v.Learned.UnixMilli()
	}
	last := map[string]string{}
	for _, s := range v.LastKnown {
		last[s.Name] = s.State
	}
	for _, s := range v.Services {
		ns := &pb.NodeService{Name: s.Name, State: s.State, Pid: s.PID, Restarts: s.Restarts, Message: s.Message}
		if !s.Since.IsZero() {
			ns.SinceUnixMs = s.Since.UnixMilli()
		}
		if !s.Started.IsZero() {
			ns.StartedUnixMs = s.Started.UnixMilli()
		}
		ns.Container = s.Container
		if s.State == ServiceUnknown {
			ns.LastKnownState = last[s.Name]
		}
		ni.Services = append(ni.Services, ns)
	}
	return ni
}
