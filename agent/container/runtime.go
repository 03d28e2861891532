package container

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
)

// Labels on every container the runtime creates.
const (
	LabelOwner   = "org.dhvisor.owner"   // the agent (its state directory)
	LabelService = "org.dhvisor.service" // the service it runs
	LabelHash    = "org.dhvisor.hash"    // content hash of what it was created from
	LabelParts   = "org.dhvisor.parts"   // the hash's parts, to say what changed
)

// Timing paces what is not event-driven.
type Timing struct {
	// Recheck inspects the container and resolves its image again this
	// often: a safety net under the events, and the way a tag moved to
	// another image is seen.
	Recheck time.Duration
	// FileCheck stats the mounted files this often; they are read and
	// hashed again only once what stat says of them changed and then
	// stopped changing (a certificate and its key replaced one after the
	// other recreate the container once).
	FileCheck time.Duration
	// Reconnect retries an unreachable engine this often.
	Reconnect time.Duration
}

// DefaultTiming suits production; tests shorten it.
var DefaultTiming = Timing{Recheck: 10 * time.Second, FileCheck: time.Second, Reconnect: 500 * time.Millisecond}

// Runtime runs services as containers of one engine.
type Runtime struct {
	engine Engine
	log    *slog.Logger
	timing Timing
}

var (
	_ runtime.Runtime   = (*Runtime)(nil)
	_ runtime.LogReader = (*Runtime)(nil)
)

// New returns the runtime over engine.
func New(engine Engine, timing Timing, log *slog.Logger) *Runtime {
	return &Runtime{engine: engine, log: log, timing: timing}
}

// desired is the container a spec asks for now.
type desired struct {
	create Create
	hash   string
	parts  map[string]string // part → digest: the image id, the settings, each mounted file
	// files is the mounted files' fingerprint, taken before they were
	// read: their digests in parts hold while it stays the same. Empty
	// when this agent did not read them: an adopted container's inputs are
	// those its labels record.
	files string
}

// unavailable marks errors that mean "cannot start now" rather than "the
// service fails": the engine out of reach, or a bootstrap not written yet.
func unavailable(err error) error {
	if err != nil && errors.Is(err, ErrUnreachable) && !errors.Is(err, runtime.ErrUnavailable) {
		return fmt.Errorf("%w: %w", runtime.ErrUnavailable, err)
	}
	return err
}

// desire resolves spec to a container: the image's id (pulled if the
// engine lacks it), the user's ids, and the digest of every mounted file.
// The files are read only if their fingerprint moved since prev was
// resolved (the zero desired: always).
func (r *Runtime) desire(ctx context.Context, spec runtime.Spec, prev desired) (desired, error) {
	c := spec.Container
	if c == nil {
		return desired{}, errors.New("not a container service")
	}
	if c.Bootstrap != "" {
		if _, err := os.Stat(c.Bootstrap); errors.Is(err, fs.ErrNotExist) {
			return desired{}, fmt.Errorf("%w: the Envoy bootstrap %s is not rendered yet (it needs the coordinators' xDS addresses)", runtime.ErrUnavailable, c.Bootstrap)
		}
	}
	imageID, err := r.engine.ImageID(ctx, c.Image)
	if errors.Is(err, ErrNotFound) {
		r.log.Info("pulling image", "image", c.Image)
		if err := r.engine.Pull(ctx, c.Image); err != nil {
			return desired{}, unavailable(err)
		}
		imageID, err = r.engine.ImageID(ctx, c.Image)
	}
	if err != nil {
		return desired{}, unavailable(err)
	}
	usr, err := dockerUser(spec.User, spec.Group)
	if err != nil {
		return desired{}, err
	}
	d := desired{create: Create{
		Name: c.Name, Image: c.Image, User: usr, Args: spec.Command,
		Labels: map[string]string{LabelOwner: spec.Owner, LabelService: spec.Name},
	}, parts: map[string]string{"image " + c.Image: imageID}}
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		d.create.Env = append(d.create.Env, k+"="+spec.Env[k])
	}
	// Taken before the files are read: one written meanwhile moves it
	// again, and is read again at the next file check.
	d.files = fingerprint(spec)
	for _, m := range c.Mounts {
		d.create.Mounts = append(d.create.Mounts, Mount{Source: m.Source, Target: m.Target})
		key := "file " + m.Source
		if d.files == prev.files {
			// The same sources (their paths are in the fingerprint), as
			// they were when last read.
			d.parts[key] = prev.parts[key]
			continue
		}
		dg, err := digestPath(m.Source)
		if err != nil {
			return desired{}, fmt.Errorf("mount %s: %w", m.Source, err)
		}
		d.parts[key] = dg
	}
	settings, _ := json.Marshal(d.create)
	d.parts["settings"] = digest(settings)
	whole := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(d.parts)) {
		fmt.Fprintf(whole, "%s=%s\n", k, d.parts[k])
	}
	d.hash = hex.EncodeToString(whole.Sum(nil))
	parts, _ := json.Marshal(d.parts)
	d.create.Labels[LabelHash] = d.hash
	d.create.Labels[LabelParts] = string(parts)
	return d, nil
}

// goingAway is how long a failed create or start watches the engine: one
// that is shutting down (it stops its containers first, and answers
// oddly meanwhile) stops answering within it.
const goingAway = 2 * time.Second

// engineFailed tells an engine on its way down from a container that cannot
// start: the first is no failure of the service's.
func (r *Runtime) engineFailed(ctx context.Context, err error) error {
	if err = unavailable(err); errors.Is(err, runtime.ErrUnavailable) {
		return err
	}
	deadline := time.Now().Add(goingAway)
	for time.Now().Before(deadline) {
		if perr := r.engine.Ping(ctx); perr != nil {
			return fmt.Errorf("%w: %v (the engine went away: %v)", runtime.ErrUnavailable, err, perr)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}

// changed names the parts that differ between two containers' inputs.
func changed(old, cur map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(cur)) {
		if old[k] != cur[k] {
			out = append(out, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(old)) {
		if _, ok := cur[k]; !ok {
			out = append(out, k+" (gone)")
		}
	}
	if len(out) == 0 {
		return "settings"
	}
	return strings.Join(out, ", ")
}

func partsOf(labels map[string]string) map[string]string {
	var m map[string]string
	_ = json.Unmarshal([]byte(labels[LabelParts]), &m)
	return m
}

// ours says whether the container is the one this agent runs spec's
// service in.
func ours(in Info, spec runtime.Spec) bool {
	return in.Labels[LabelOwner] == spec.Owner && in.Labels[LabelService] == spec.Name
}

// Start ensures the container spec describes is running and returns it:
// one already running from the same inputs is taken over as it is (an
// agent restart), a stopped one is started again (it keeps its id and
// logs, as `docker start`), and one from other inputs is replaced.
func (r *Runtime) Start(ctx context.Context, spec runtime.Spec) (runtime.Process, error) {
	if err := r.engine.Ping(ctx); err != nil {
		return nil, unavailable(err)
	}
	d, err := r.desire(ctx, spec, desired{})
	if err != nil {
		return nil, err
	}
	name := spec.Container.Name
	cur, err := r.engine.Inspect(ctx, name)
	if err == nil && cur.Removing {
		cur, err = r.removed(ctx, name)
	}
	switch {
	case errors.Is(err, ErrNotFound):
		cur = Info{}
	case err != nil:
		return nil, unavailable(err)
	case !ours(cur, spec):
		return nil, fmt.Errorf("a container named %s exists that this agent did not create (owner %q); remove it (docker rm -f %s) or name another in envoy.container", name, cur.Labels[LabelOwner], name)
	case cur.Labels[LabelHash] != d.hash:
		r.log.Info("recreating container", "container", name, "changed", changed(partsOf(cur.Labels), d.parts))
		if err := r.engine.Remove(ctx, cur.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return nil, unavailable(err)
		}
		cur = Info{}
	}
	if cur.ID == "" {
		id, err := r.engine.Create(ctx, d.create)
		if err != nil {
			return nil, r.engineFailed(ctx, err)
		}
		r.log.Info("created container", "container", name, "id", runtime.ShortID(id), "image", d.create.Image)
		cur.ID = id
	}
	since := time.Now()
	if !cur.Running {
		if err := r.engine.Start(ctx, cur.ID); err != nil {
			return nil, r.engineFailed(ctx, err)
		}
	}
	in, err := r.engine.Inspect(ctx, cur.ID)
	if err != nil {
		return nil, unavailable(err)
	}
	if !in.Running {
		return nil, fmt.Errorf("container %s exited at once with code %d", name, in.ExitCode)
	}
	id, err := procfs.IdentityOf(in.Pid)
	if err != nil {
		return nil, fmt.Errorf("container %s: its process %d: %w", name, in.Pid, err)
	}
	return r.watch(spec, d, in, id, since), nil
}

// removalWait bounds the wait for a container the engine is removing.
const removalWait = 10 * time.Second

// removed waits until the engine has removed the container called name
// (ErrNotFound), which it is removing: starting it again fails, and
// creating another of its name waits for the name.
func (r *Runtime) removed(ctx context.Context, name string) (Info, error) {
	ctx, cancel := context.WithTimeout(ctx, removalWait)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		in, err := r.engine.Inspect(ctx, name)
		if err != nil || !in.Removing {
			return in, err
		}
		select {
		case <-ctx.Done():
			return Info{}, fmt.Errorf("container %s: still being removed after %s", name, removalWait)
		case <-tick.C:
		}
	}
}

// Adopt takes over the container an earlier agent left running: found by
// its name, ours by its labels, and still running process id. It keeps
// the inputs it was created from; if they changed meanwhile, the watcher
// says so at its first file check (Stale), and the supervisor replaces it
// unless it is unmonitored. A monitored service adopted in vain is
// started, and Start takes a running container over too.
func (r *Runtime) Adopt(ctx context.Context, spec runtime.Spec, id procfs.Identity) (runtime.Process, error) {
	if spec.Container == nil {
		return nil, errors.New("not a container service")
	}
	name := spec.Container.Name
	in, err := r.engine.Inspect(ctx, name)
	switch {
	case err != nil:
		return nil, fmt.Errorf("container %s: %w", name, err)
	case !ours(in, spec):
		return nil, fmt.Errorf("container %s is not this agent's %s", name, spec.Name)
	case !in.Running || in.Removing:
		return nil, fmt.Errorf("container %s is not running", name)
	}
	if now, err := procfs.IdentityOf(in.Pid); err != nil || now != id {
		return nil, fmt.Errorf("container %s runs pid %d, not the recorded process %d", name, in.Pid, id.PID)
	}
	return r.watch(spec, desired{hash: in.Labels[LabelHash], parts: partsOf(in.Labels)}, in, id, time.Now()), nil
}

// Find finds nothing: with no record, a running container is taken over
// by Start, which finds it by name.
func (r *Runtime) Find(runtime.Spec) (procfs.Identity, bool) { return procfs.Identity{}, false }

// Logs writes the container's output. Following goes on across restarts
// and recreations of the container, as an operator following Envoy's log
// expects, until ctx ends.
func (r *Runtime) Logs(ctx context.Context, spec runtime.Spec, tail int, follow bool, w io.Writer) error {
	if spec.Container == nil {
		return errors.New("not a container service")
	}
	name := spec.Container.Name
	var since time.Time
	for {
		err := r.engine.Logs(ctx, name, since, tail, follow, w)
		switch {
		case !follow:
			return err
		case ctx.Err() != nil:
			return nil
		case err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrUnreachable):
			return err
		}
		// The container stopped (or is away): what its next run writes
		// comes next, from whichever container then has the name.
		if since.IsZero() || err == nil {
			since = time.Now()
		}
		tail = -1
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.timing.Reconnect):
		}
	}
}

// dockerUser turns a run user (and group) into what the engine takes. Names
// are this host's, as the container's own /etc/passwd rarely has them.
func dockerUser(name, group string) (string, error) {
	if u, g, ok := strings.Cut(name, ":"); ok {
		name, group = u, g
	}
	if name == "" {
		if group != "" {
			return "", fmt.Errorf("container group %q needs a user too", group)
		}
		return "", nil // the image's
	}
	uid := name
	if _, err := strconv.Atoi(name); err != nil {
		u, err := user.Lookup(name)
		if err != nil {
			return "", fmt.Errorf("container user %q: %w", name, err)
		}
		uid = u.Uid
		if group == "" {
			group = u.Gid
		}
	}
	if group == "" {
		return uid, nil
	}
	gid := group
	if _, err := strconv.Atoi(group); err != nil {
		g, err := user.LookupGroup(group)
		if err != nil {
			return "", fmt.Errorf("container group %q: %w", group, err)
		}
		gid = g.Gid
	}
	return uid + ":" + gid, nil
}

// maxDigest bounds what a mounted directory may hold: the runtime reads all
// of it at every start and whenever a file below it changed.
const maxDigest = 64 << 20

// digestPath is the content digest of a file, or of every regular file
// below a directory with its relative path.
func digestPath(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		return digest(b), nil
	}
	h := sha256.New()
	var total int64
	err = filepath.WalkDir(p, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.Type().IsRegular() && e.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		st, err := os.Stat(path)
		if err != nil || st.IsDir() {
			return err
		}
		if total += st.Size(); total > maxDigest {
			return fmt.Errorf("more than %d MiB below it; mount the files the container needs, not a larger tree", maxDigest>>20)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(p, path)
		fmt.Fprintf(h, "%s=%s\n", rel, digest(b))
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fingerprint is a cheap stand-in for the mounted files' digests: what stat
// says of each (size, time, inode), so that files are read only after one
// changed.
func fingerprint(spec runtime.Spec) string {
	h := sha256.New()
	for _, m := range spec.Container.Mounts {
		_ = filepath.WalkDir(m.Source, func(path string, e fs.DirEntry, err error) error {
			st, serr := os.Stat(path)
			if serr != nil {
				fmt.Fprintf(h, "%s missing\n", path)
				return nil
			}
			fmt.Fprintf(h, "%s %d %d %v\n", path, st.Size(), st.ModTime().UnixNano(), inode(st))
			return nil
		})
		if _, err := os.Lstat(m.Source); err != nil {
			fmt.Fprintf(h, "%s missing\n", m.Source)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}
