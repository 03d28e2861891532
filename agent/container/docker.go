package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/dhvisor/dhvisor/agent/runtime"
)

// Docker is the Docker Engine API. The client negotiates the API version
// with the engine, so Docker 20.10 (API 1.41) through current engines work.
type Docker struct {
	cli *client.Client
}

var _ Engine = (*Docker)(nil)

// NewDocker returns the engine at host (unix:///var/run/docker.sock,
// tcp://HOST:PORT). Nothing is dialled before the first call.
func NewDocker(host string) (*Docker, error) {
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker engine %s: %w", host, err)
	}
	return &Docker{cli: cli}, nil
}

// Close releases the client's connections.
func (d *Docker) Close() error { return d.cli.Close() }

// classify wraps what went wrong in the package's errors, so that callers
// can tell a missing container from an engine that cannot be reached.
func classify(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%s: %w: %v", what, ErrNotFound, err)
	case unreachable(err):
		return fmt.Errorf("%s: %w: %v", what, ErrUnreachable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func unreachable(err error) bool {
	if client.IsErrConnectionFailed(err) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	var ne *net.OpError
	return errors.As(err, &ne)
}

func (d *Docker) Ping(ctx context.Context) error {
	_, err := d.cli.Ping(ctx)
	if err != nil {
		// A ping that fails is the engine out of reach, whatever the cause.
		return fmt.Errorf("ping: %w: %v", ErrUnreachable, err)
	}
	return nil
}

func (d *Docker) Inspect(ctx context.Context, nameOrID string) (Info, error) {
	r, err := d.cli.ContainerInspect(ctx, nameOrID)
	if err != nil {
		return Info{}, classify("inspect "+nameOrID, err)
	}
	in := Info{ID: r.ID}
	if r.Config != nil {
		in.Labels = r.Config.Labels
	}
	if s := r.State; s != nil {
		in.Running, in.Pid, in.ExitCode, in.OOMKilled = s.Running, s.Pid, s.ExitCode, s.OOMKilled
		in.StartedAt, _ = time.Parse(time.RFC3339Nano, s.StartedAt)
		in.FinishedAt, _ = time.Parse(time.RFC3339Nano, s.FinishedAt)
		in.Removing = s.Status == container.StateRemoving || s.Dead
	}
	return in, nil
}

func (d *Docker) ImageID(ctx context.Context, ref string) (string, error) {
	r, err := d.cli.ImageInspect(ctx, ref)
	if err != nil {
		return "", classify("image "+ref, err)
	}
	return r.ID, nil
}

func (d *Docker) Pull(ctx context.Context, ref string) error {
	rc, err := d.cli.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return classify("pull "+ref, err)
	}
	defer rc.Close()
	// The pull goes on while its progress (a JSON message at a time) is
	// read; a failure arrives as a message with an error.
	dec := json.NewDecoder(rc)
	for {
		var m struct {
			Error string `json:"error"`
		}
		switch err := dec.Decode(&m); {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			return classify("pull "+ref, err)
		case m.Error != "":
			return fmt.Errorf("pull %s: %s", ref, m.Error)
		}
	}
}

func (d *Docker) Create(ctx context.Context, c Create) (string, error) {
	cfg := &container.Config{Image: c.Image, User: c.User, Cmd: c.Args, Env: c.Env, Labels: c.Labels}
	host := &container.HostConfig{
		NetworkMode: "host",
		// The agent restarts the container under its own policy; the
		// engine restarting it too would fight it.
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
	}
	for _, m := range c.Mounts {
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: true})
	}
	r, err := d.cli.ContainerCreate(ctx, cfg, host, nil, nil, c.Name)
	if err != nil {
		return "", classify("create "+c.Name, err)
	}
	return r.ID, nil
}

func (d *Docker) Start(ctx context.Context, id string) error {
	return classify("start "+runtime.ShortID(id), d.cli.ContainerStart(ctx, id, container.StartOptions{}))
}

func (d *Docker) Stop(ctx context.Context, id string, timeout time.Duration) error {
	secs := int((timeout + time.Second - 1) / time.Second)
	return classify("stop "+runtime.ShortID(id), d.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &secs}))
}

func (d *Docker) Kill(ctx context.Context, id string) error {
	return classify("kill "+runtime.ShortID(id), d.cli.ContainerKill(ctx, id, "KILL"))
}

func (d *Docker) Remove(ctx context.Context, id string) error {
	return classify("remove "+runtime.ShortID(id), d.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true}))
}

func (d *Docker) Events(ctx context.Context, id string, since time.Time) (<-chan Event, <-chan error) {
	f := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)), filters.Arg("container", id))
	opts := events.ListOptions{Filters: f}
	if !since.IsZero() {
		opts.Since = strconv.FormatFloat(float64(since.UnixNano())/1e9, 'f', 9, 64)
	}
	msgs, errs := d.cli.Events(ctx, opts)
	out := make(chan Event)
	outErr := make(chan error, 1)
	go func() {
		for {
			select {
			case m := <-msgs:
				ev := Event{Action: string(m.Action), Attrs: m.Actor.Attributes, Time: time.Unix(0, m.TimeNano)}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			case err := <-errs:
				if ctx.Err() == nil {
					if err == nil {
						err = io.EOF
					}
					outErr <- fmt.Errorf("events: %w: %v", ErrUnreachable, err)
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, outErr
}

func (d *Docker) Logs(ctx context.Context, id string, since time.Time, tail int, follow bool, w io.Writer) error {
	opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: follow, Tail: "all"}
	if tail >= 0 {
		opts.Tail = strconv.Itoa(tail)
	}
	if !since.IsZero() {
		opts.Since = strconv.FormatFloat(float64(since.UnixNano())/1e9, 'f', 9, 64)
	}
	rc, err := d.cli.ContainerLogs(ctx, id, opts)
	if err != nil {
		return classify("logs "+runtime.ShortID(id), err)
	}
	defer rc.Close()
	// Without a TTY the engine multiplexes stdout and stderr in frames.
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil && ctx.Err() == nil {
		return classify("logs "+runtime.ShortID(id), err)
	}
	return nil
}
