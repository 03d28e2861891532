package api

import (
	"context"
	"os"
	"os/user"
	"path"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dhvisor/dhvisor/internal/peercred"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Level is who may make a call on the local socket.
type Level int

const (
	// LevelRoot is root only (or the user the agent runs as, when that is
	// not root: it could do as the agent does anyway). The zero Level, so
	// that a method missing from the table is root's.
	LevelRoot Level = iota
	// LevelGroup adds the members of the socket's group (socket_group,
	// irisadmin by default): they read and control services.
	LevelGroup
)

// methodLevels is who may call each Agent method on the local socket.
// Installing packages, the gossip keys, reloading and registering workers
// act as root or change what root runs and whom the node trusts; the
// socket group is the account most Deephaven JVMs run as, so those are
// root's. Dispatchers register their workers through the worker registry's
// own socket, which checks that the caller is the dispatcher.
var methodLevels = map[string]Level{
	pb.Agent_Status_FullMethodName:          LevelGroup,
	pb.Agent_Cluster_FullMethodName:         LevelGroup,
	pb.Agent_Logs_FullMethodName:            LevelGroup,
	pb.Agent_Control_FullMethodName:         LevelGroup,
	pb.Agent_Up_FullMethodName:              LevelGroup,
	pb.Agent_Down_FullMethodName:            LevelGroup,
	pb.Agent_Reload_FullMethodName:          LevelRoot,
	pb.Agent_GossipKeys_FullMethodName:      LevelRoot,
	pb.Agent_RegisterWorkers_FullMethodName: LevelRoot,
	pb.Agent_Install_FullMethodName:         LevelRoot,
}

// Access decides, from the kernel's account of the caller (SO_PEERCRED and
// SO_PEERGROUPS), which calls on the local socket go through. Membership
// of the group counts by the caller's effective gid or any of its
// supplementary groups, as the kernel counted it when it let the caller
// connect to the socket file (the usual way to make an admin one is
// `usermod -aG irisadmin alice`): both are what the process held when it
// connected, never re-read from /proc, where a pid can be another's by
// the time it is read.
type Access struct {
	owner uint32 // the agent's effective uid
	group string // "" when the socket has no group
	gid   uint32
}

// NewAccess lets root, the agent's own user and the members of gid (named
// group, "" for none) in.
func NewAccess(group string, gid uint32) *Access {
	return &Access{owner: uint32(os.Geteuid()), group: group, gid: gid}
}

// Group is the socket group's name, "" when only root may call.
func (a *Access) Group() string { return a.group }

// Unary is the interceptor for unary calls.
func (a *Access) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// Stream is the interceptor for streaming calls.
func (a *Access) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// check lets the call through or says who would be let in.
func (a *Access) check(ctx context.Context, method string) error {
	cred, err := peercred.FromContext(ctx)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	groups, _ := peercred.GroupsFromContext(ctx)
	if cred.UID == 0 || cred.UID == a.owner {
		return nil
	}
	name := path.Base(method)
	member := a.group != "" && (cred.GID == a.gid || slices.Contains(groups, a.gid))
	switch need := methodLevels[method]; {
	case need == LevelGroup && member:
		return nil
	case need == LevelGroup && a.group != "":
		return status.Errorf(codes.PermissionDenied, "%s needs root or group %s (caller %s)", name, a.group, describe(cred, groups))
	}
	return status.Errorf(codes.PermissionDenied, "%s needs root (caller %s)", name, describe(cred, groups))
}

// describe names a caller by uid and user name, and by group when it is
// not in the socket's, for a refusal an operator can act on.
func describe(c peercred.Cred, groups []uint32) string {
	s := "uid " + strconv.FormatUint(uint64(c.UID), 10)
	if u, err := user.LookupId(strconv.FormatUint(uint64(c.UID), 10)); err == nil {
		s += " " + u.Username
	}
	gs := []string{groupName(c.GID)}
	for _, g := range groups {
		if g != c.GID {
			gs = append(gs, groupName(g))
		}
	}
	return s + ", groups " + strings.Join(gs, ",")
}

func groupName(gid uint32) string {
	id := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return id
}
