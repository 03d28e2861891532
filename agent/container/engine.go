// Package container runs a service as a container: the Envoy container of
// an Envoy node. It is a runtime for the supervisor (the supervisor's
// restart policy, checks and states apply unchanged) over a container
// engine reached through the small Engine interface; Docker implements it.
//
// The runtime ensures the container as `docker run` would create it, tells
// the supervisor when it dies (the engine's events, with a periodic
// inspection as a safety net), when the engine itself is out of reach, and
// when what the container was created from changed: the image a tag names,
// the configuration, or the content of a mounted file (a certificate, the
// bootstrap). A content hash of all of it is a label on the container, so a
// container is recreated once per change and never duplicated.
package container

import (
	"context"
	"errors"
	"io"
	"time"
)

// Engine is the container engine as the runtime uses it.
type Engine interface {
	// Ping fails when the engine cannot be reached.
	Ping(ctx context.Context) error
	// Inspect returns the container of that name or id (ErrNotFound).
	Inspect(ctx context.Context, nameOrID string) (Info, error)
	// ImageID resolves an image reference to the id of the image it names
	// now (ErrNotFound when the engine has no such image).
	ImageID(ctx context.Context, ref string) (string, error)
	// Pull fetches an image the engine does not have.
	Pull(ctx context.Context, ref string) error
	// Create makes (does not start) a container; its id.
	Create(ctx context.Context, c Create) (string, error)
	Start(ctx context.Context, id string) error
	// Stop sends the container's stop signal, then SIGKILL after timeout.
	Stop(ctx context.Context, id string, timeout time.Duration) error
	Kill(ctx context.Context, id string) error
	Remove(ctx context.Context, id string) error
	// Events delivers the container's events from since on, until ctx
	// ends or the stream breaks (an error on the second channel).
	Events(ctx context.Context, id string, since time.Time) (<-chan Event, <-chan error)
	// Logs writes the container's output (stdout and stderr) to w: what
	// it wrote since since (all when zero), the last tail lines of it (all
	// when tail < 0), then with follow new output until the container
	// stops or ctx ends.
	Logs(ctx context.Context, id string, since time.Time, tail int, follow bool, w io.Writer) error
}

// Errors an Engine returns (wrapped).
var (
	ErrNotFound    = errors.New("not found")
	ErrUnreachable = errors.New("container engine unreachable")
)

// Create is what a container is created from.
type Create struct {
	Name   string
	Image  string
	User   string // as the engine takes it: uid[:gid] or a name in the image
	Args   []string
	Env    []string // KEY=value
	Mounts []Mount
	Labels map[string]string
}

// Mount is one read-only bind mount.
type Mount struct {
	Source, Target string
}

// Info is a container as the engine reports it.
type Info struct {
	ID         string
	Labels     map[string]string
	Running    bool
	Pid        int
	ExitCode   int
	OOMKilled  bool
	StartedAt  time.Time
	FinishedAt time.Time
	// Removing: the engine is removing it (after a docker rm -f of a
	// running one, the die event comes before the removal ends) and will
	// not start it again.
	Removing bool
}

// Event is one of the container's events.
type Event struct {
	Action string // die, oom, kill, start, destroy, health_status: healthy, ...
	Attrs  map[string]string
	Time   time.Time
}
