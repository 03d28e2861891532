package supervise

import (
	"os"

	"github.com/dhvisor/dhvisor/agent/cgroup"
	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/internal/config"
)

// OwnerOf names the service of this node that process pid belongs to, as
// the kernel tells it: the service's process or a descendant of it, a
// process in a session only the service's process is in (exec runtime),
// or one in the service's unit's cgroup (systemd runtime). Callers take
// pid from the kernel (SO_PEERCRED), never from what a process says; the
// answer holds while pid is the process they asked about.
func (m *Manager) OwnerOf(pid int) (service string, ok bool) {
	sups, _ := m.lookup(nil)
	svcs := make([]serviceProc, 0, len(sups))
	for _, s := range sups {
		st := s.Status()
		if st.PID == 0 {
			continue
		}
		rt := s.remembered().Runtime
		if rt == config.RuntimeDocker {
			continue // a container's processes: the engine's, not a service's tree
		}
		svcs = append(svcs, serviceProc{name: s.name, pid: st.PID, unit: rt == config.RuntimeSystemd})
	}
	return ownerOf(pid, svcs, os.Getpid())
}

// serviceProc is a running service's process; unit: in a systemd unit.
type serviceProc struct {
	name string
	pid  int
	unit bool
}

// maxAncestors bounds the walk up the process tree (pid_max is 4M, but
// no real tree is more than a few dozen deep).
const maxAncestors = 4096

// ownerOf is OwnerOf over svcs; self is the agent, whose session and
// children are not a service's.
func ownerOf(pid int, svcs []serviceProc, self int) (string, bool) {
	if pid <= 1 || pid == self || len(svcs) == 0 {
		return "", false
	}
	caller, err := procfs.ReadStat(pid)
	if err != nil {
		return "", false
	}
	byPID := make(map[int]string, len(svcs))
	for _, s := range svcs {
		byPID[s.pid] = s.name
	}
	// A parent is set by the kernel and changes only when it dies (to a
	// subreaper or init), so the chain cannot be forged.
	for p, i := caller, 0; i < maxAncestors; i++ {
		if name, ok := byPID[p.PID]; ok {
			return name, true
		}
		if p.PPID <= 1 || p.PPID == self {
			break
		}
		if p, err = procfs.ReadStat(p.PPID); err != nil {
			break
		}
	}
	// A unit's cgroup: only root moves a process into one.
	var group string
	for _, s := range svcs {
		if !s.unit {
			continue
		}
		if group == "" {
			if group, err = cgroup.UnitOf(pid); err != nil {
				break
			}
		}
		if unit, err := cgroup.UnitOf(s.pid); err == nil && cgroup.Within(group, unit) {
			return s.name, true
		}
	}
	// A session: no process can join one (setsid only makes a new one), so
	// a session that holds one service's process and no other's, and is
	// not the agent's, holds only what that service started, including
	// what it daemonized (reparented away from its tree). A process group
	// proves nothing: any process of the same session may join one, and
	// exec services share the agent's session.
	agent, err := procfs.ReadStat(self)
	if err != nil || caller.SID <= 1 || caller.SID == agent.SID {
		return "", false
	}
	owner := ""
	for _, s := range svcs {
		st, err := procfs.ReadStat(s.pid)
		if err != nil || st.SID != caller.SID {
			continue
		}
		if owner != "" && owner != s.name {
			return "", false // shared by two services: neither's alone
		}
		owner = s.name
	}
	return owner, owner != ""
}
