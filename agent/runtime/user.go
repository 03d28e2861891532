package runtime

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// Credential resolves a service's run user (and group, if given) for
// anything the agent runs on its behalf: the service itself and its exec
// checks. An empty user means the agent's own; it returns a nil
// credential and the user's home directory.
func Credential(userName, groupName string) (*syscall.Credential, string, error) {
	if userName == "" {
		home, _ := os.UserHomeDir()
		return nil, home, nil
	}
	u, err := user.Lookup(userName)
	if err != nil {
		return nil, "", fmt.Errorf("run user %q: %w", userName, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			return nil, "", fmt.Errorf("run group %q: %w", groupName, err)
		}
		gid, _ = strconv.ParseUint(g.Gid, 10, 32)
	}
	if euid := os.Geteuid(); euid != 0 {
		if uint64(euid) == uid {
			return nil, u.HomeDir, nil
		}
		return nil, "", fmt.Errorf("cannot run as %q: the agent runs as uid %d, not root", userName, euid)
	}
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				groups = append(groups, uint32(g))
			}
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}, u.HomeDir, nil
}
