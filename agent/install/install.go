// Package install installs the Deephaven package on the node for an
// upgrade step: it fetches the package from the coordinators (resumable,
// sha256-verified) or copies it once from a root-only path on the node (the
// sha256 dhctl read), installs that copy with the node's
// package tool (dnf, yum, rpm, apt-get, dpkg, or the command template in
// agent.yaml) and records the installed version before and after.
//
// A step is named by its op token and done at most once: the journal in the
// state directory remembers each step, so a step re-sent by a new
// coordinator leader returns what was done, and an agent restarted in the
// middle of an install waits for the tool it left running, then asks the
// tool what is installed and marks the step done or tries it again.
package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/relay"
	"github.com/dhvisor/dhvisor/internal/atomicfile"
	"github.com/dhvisor/dhvisor/internal/config"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// Step states in the journal.
const (
	stateRunning = "running"
	stateDone    = "done"
	stateFailed  = "failed"
)

// maxJournal bounds the steps remembered: a coordinator re-sends a step
// within minutes, never hundreds of steps later.
const maxJournal = 100

// MaxToken bounds an op token, which the journal keeps.
const MaxToken = 256

// record is one step in the journal.
type record struct {
	Token     string `json:"token"`
	State     string `json:"state"`
	Sha256    string `json:"sha256,omitempty"`
	Path      string `json:"path,omitempty"`
	Package   string `json:"package,omitempty"`
	Version   string `json:"version,omitempty"`
	Before    string `json:"before,omitempty"`
	After     string `json:"after,omitempty"`
	Output    string `json:"output,omitempty"`
	Message   string `json:"message,omitempty"`
	Unchanged bool   `json:"unchanged,omitempty"`
	// PID and PIDStart name the package tool while it runs, so an agent
	// restarted meanwhile waits for that very process.
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`
	AtUnixMs int64  `json:"at_unix_ms"`
}

func (r *record) result() *pb.InstallResult {
	return &pb.InstallResult{Package: r.Package, Version: r.Version, Before: r.Before, After: r.After,
		Failed: r.State == stateFailed, Output: r.Output, Message: r.Message, Unchanged: r.Unchanged}
}

type journal struct {
	// Package is the name of the package the node reports: the last one
	// installed, else packages.name.
	Package string    `json:"package"`
	Steps   []*record `json:"steps"`
}

// Installer runs install steps.
type Installer struct {
	cfg  config.Packages
	src  Source
	log  *slog.Logger
	path string // the journal
	// Changed is called after an install changed what is installed (nil:
	// nothing to tell).
	Changed func()

	mu       sync.Mutex
	j        journal
	inflight map[string]chan struct{} // steps running now, by token
	fetching map[string]*sync.Mutex   // one fetch of a package at a time, by sha256
	verified map[string]time.Time     // cached packages verified since the agent started: their mtime then
	// freeSpace says how many bytes may still be written on dir's file
	// system (statfs; tests fake a full disk).
	freeSpace func(dir string) (int64, error)
	ctx       context.Context
	ready     chan struct{}
	wg        sync.WaitGroup
}

// New returns an installer keeping its journal in journalPath.
func New(cfg config.Packages, src Source, journalPath string, log *slog.Logger) *Installer {
	in := &Installer{cfg: cfg, src: src, log: log, path: journalPath, inflight: map[string]chan struct{}{}, ready: make(chan struct{}),
		fetching: map[string]*sync.Mutex{}, verified: map[string]time.Time{}, freeSpace: statfsFree}
	in.j.Package = cfg.Name
	if b, err := os.ReadFile(journalPath); err == nil {
		if err := json.Unmarshal(b, &in.j); err != nil {
			log.Error("install journal unreadable; starting a new one", "file", journalPath, "err", err)
			in.j = journal{Package: cfg.Name}
		}
	} else if !os.IsNotExist(err) {
		log.Error("install journal", "file", journalPath, "err", err)
	}
	return in
}

// Run owns the installs until ctx ends. An install under way when it ends
// is left to the package tool, which goes on; the next agent waits for it.
func (in *Installer) Run(ctx context.Context) {
	in.mu.Lock()
	in.ctx = ctx
	in.mu.Unlock()
	close(in.ready)
	<-ctx.Done()
	in.wg.Wait()
}

// Package returns the name of the package the node reports.
func (in *Installer) Package() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.j.Package
}

// Installed returns "NAME VERSION" of the package the node reports, as its
// tool says now ("" when it is not installed or no tool can say).
func (in *Installer) Installed(ctx context.Context) string {
	name := in.Package()
	argv, err := in.queryArgv(name, "")
	if err != nil {
		return ""
	}
	got, err := query(ctx, argv)
	if err != nil || got.Version == "" {
		return ""
	}
	return name + " " + got.String()
}

// Install runs one install step, or returns its recorded result when the
// step (same token) was already done. The step goes on when ctx ends (the
// coordinator that asked went away); a repeat of it waits for it.
func (in *Installer) Install(ctx context.Context, req *pb.InstallRequest, progress func(*pb.InstallProgress)) (*pb.InstallResult, error) {
	if err := validateRef(req.Package); err != nil {
		return nil, &RequestError{err}
	}
	if req.FetchOnly {
		return in.prefetch(ctx, req)
	}
	if req.OpToken == "" {
		return nil, &RequestError{errors.New("op_token: required (an install is a step of an upgrade)")}
	}
	if len(req.OpToken) > MaxToken {
		return nil, &RequestError{fmt.Errorf("op_token: %d bytes, at most %d", len(req.OpToken), MaxToken)}
	}
	if req.TimeoutMs < 0 {
		return nil, &RequestError{errors.New("timeout_ms: must not be negative")}
	}
	select {
	case <-in.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if progress == nil {
		progress = func(*pb.InstallProgress) {}
	}
	out := relay.New(progress)
	defer out.Detach()
	for {
		in.mu.Lock()
		if in.ctx.Err() != nil {
			in.mu.Unlock()
			return nil, ErrShuttingDown
		}
		rec := in.find(req.OpToken)
		if rec != nil && rec.State == stateDone {
			in.mu.Unlock()
			res := rec.result()
			res.Repeated = true
			return res, nil
		}
		if wait, busy := in.inflight[req.OpToken]; busy {
			in.mu.Unlock()
			out.Send(&pb.InstallProgress{Phase: "waiting", Message: "waiting for an earlier request of this step"})
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		in.inflight[req.OpToken] = done
		result := make(chan *record, 1)
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			r := in.step(req, rec, out.Send)
			in.mu.Lock()
			delete(in.inflight, req.OpToken)
			in.mu.Unlock()
			close(done)
			result <- r
		}()
		in.mu.Unlock()
		select {
		case r := <-result:
			if r.State == stateRunning {
				return nil, ErrShuttingDown
			}
			return r.result(), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ErrShuttingDown: the agent is stopping; an install under way goes on
// and the next agent picks the step up.
var ErrShuttingDown = errors.New("the agent is shutting down; an install under way goes on and the step is picked up when the agent is back")

// prefetch fetches and verifies a package into the cache, installing
// nothing.
func (in *Installer) prefetch(ctx context.Context, req *pb.InstallRequest) (*pb.InstallResult, error) {
	select {
	case <-in.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(in.ctx, cancel)()
	if _, err := in.fetch(ctx, req.Package, nil); err != nil {
		return &pb.InstallResult{Failed: true, Message: err.Error()}, nil
	}
	return &pb.InstallResult{Message: "fetched and verified"}, nil
}

// RequestError is a request the installer refuses as malformed.
type RequestError struct{ Err error }

func (e *RequestError) Error() string { return e.Err.Error() }
func (e *RequestError) Unwrap() error { return e.Err }

func (in *Installer) find(token string) *record {
	for _, r := range in.j.Steps {
		if r.Token == token {
			return r
		}
	}
	return nil
}

// step does the work of one step; prev is the journal's record of an
// earlier attempt of it (nil if none). The returned record is in the
// journal.
func (in *Installer) step(req *pb.InstallRequest, prev *record, progress func(*pb.InstallProgress)) *record {
	// packages.timeout bounds the step, and the coordinator's deadline when
	// that is sooner.
	timeout := in.cfg.Timeout.D()
	if t := time.Duration(req.TimeoutMs) * time.Millisecond; t > 0 {
		timeout = min(timeout, t)
	}
	ctx, cancel := context.WithTimeout(in.ctx, timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	rec := &record{Token: req.OpToken, State: stateRunning, Sha256: req.Package.Sha256, Path: req.Package.Path}
	if prev != nil {
		rec.Before = prev.Before // the version before the first attempt
		if prev.State == stateRunning && prev.PID != 0 {
			// The agent died while the tool ran: wait for that tool to end
			// before asking what it installed.
			progress(&pb.InstallProgress{Phase: "installing", Message: fmt.Sprintf("waiting for the package tool (pid %d) an earlier agent started", prev.PID)})
			in.waitExit(ctx, prev.PID, prev.PIDStart)
		}
	}
	fail := func(format string, args ...any) *record {
		rec.State, rec.Message = stateFailed, fmt.Sprintf(format, args...)
		in.save(rec)
		return rec
	}
	file, err := in.fetch(ctx, req.Package, progress)
	if err != nil {
		return fail("%v", err)
	}
	format, err := fileFormat(file)
	if err != nil {
		return fail("%v", err)
	}
	signed, err := in.checkSignature(ctx, req.Package, file, format)
	if err != nil {
		return fail("%v", err)
	}
	if signed != "" {
		progress(&pb.InstallProgress{Phase: "verified", Message: signed})
		in.log.Info("package signature verified", "file", file, "signer", signed, "step", req.OpToken)
	}
	rec.Package, rec.Version, err = inspect(ctx, file, format)
	if err != nil {
		return fail("%v", err)
	}
	queryArgv, err := in.queryArgv(rec.Package, format)
	if err != nil {
		return fail("%v", err)
	}
	before, err := query(ctx, queryArgv)
	if err != nil {
		return fail("asking what is installed: %v", err)
	}
	if rec.Before == "" && before.Version != "" {
		rec.Before = before.String()
	}
	if req.ExpectVersion != "" && rec.Version != req.ExpectVersion {
		return fail("the package to revert to is %s %s, but the node ran %s before the upgrade: not installed", rec.Package, rec.Version, req.ExpectVersion)
	}
	if before.Version == rec.Version && before.Clean {
		rec.State, rec.After = stateDone, before.String()
		if prev != nil && prev.State == stateRunning {
			rec.Message = "the install finished while the agent was down"
		} else {
			rec.Unchanged, rec.Message = true, "already installed: nothing to do"
		}
		in.installed(rec)
		return rec
	}
	argv, err := in.installArgv(format, config.PackageCommand{File: file, Package: rec.Package, Version: rec.Version, Downgrade: req.ExpectVersion != ""})
	if err != nil {
		return fail("%v", err)
	}
	in.save(rec)
	progress(&pb.InstallProgress{Phase: "installing", Message: fmt.Sprintf("%s %s over %s", rec.Package, rec.Version, before)})
	in.log.Info("installing", "package", rec.Package, "version", rec.Version, "before", before.String(), "command", argv, "step", req.OpToken)
	// The tool runs under the agent's context, not the step's: at the
	// deadline run kills it (a context would only let go of it), and when
	// the agent stops it is left to finish.
	out, code, err := run(in.ctx, argv, time.Until(deadline), func(pid int) {
		rec.PID = pid
		if st, err := procfs.ReadStat(pid); err == nil {
			rec.PIDStart = st.StartTicks
		}
		in.save(rec)
	})
	if in.ctx.Err() != nil {
		return rec // left running in the journal: the next agent picks it up
	}
	rec.PID, rec.PIDStart, rec.Output = 0, 0, out
	after, qerr := query(context.WithoutCancel(ctx), queryArgv)
	rec.After = after.String()
	switch {
	case err != nil:
		return fail("%s could not run: %v", argv[0], err)
	case code != 0 && ctx.Err() != nil:
		return fail("%s %s: %s killed after %v, the install's time limit (packages.timeout, or the coordinator's deadline when sooner); the node has %s", rec.Package, rec.Version, argv[0], timeout, after)
	case code != 0:
		return fail("%s %s: %s exited %s; the node has %s", rec.Package, rec.Version, argv[0], exitWord(code), after)
	case qerr != nil:
		return fail("%s exited 0, but asking what is installed failed: %v", argv[0], qerr)
	case after.Version != rec.Version || !after.Clean:
		return fail("%s exited 0, but the node has %s %s, not %s", argv[0], rec.Package, after, rec.Version)
	}
	rec.State, rec.Output = stateDone, ""
	in.installed(rec)
	return rec
}

func exitWord(code int) string {
	if code < 0 {
		return "abnormally"
	}
	return fmt.Sprintf("with status %d", code)
}

// installed records a done step and tells the node's watchers.
func (in *Installer) installed(rec *record) {
	in.mu.Lock()
	changed := in.j.Package != rec.Package || !rec.Unchanged
	in.j.Package = rec.Package
	keep := []string{rec.Sha256}
	for i := len(in.j.Steps) - 1; i >= 0 && len(keep) < 2; i-- {
		if s := in.j.Steps[i]; s.State == stateDone && s.Sha256 != "" && s.Sha256 != rec.Sha256 {
			keep = append(keep, s.Sha256)
		}
	}
	in.mu.Unlock()
	in.save(rec)
	in.log.Info("installed", "package", rec.Package, "version", rec.After, "before", rec.Before, "step", rec.Token, "message", rec.Message)
	in.prune(keep...)
	if changed && in.Changed != nil {
		in.Changed()
	}
}

// save puts rec in the journal and writes it out.
func (in *Installer) save(rec *record) {
	rec.AtUnixMs = time.Now().UnixMilli()
	in.mu.Lock()
	found := false
	for i, r := range in.j.Steps {
		if r.Token == rec.Token {
			in.j.Steps[i], found = rec, true
		}
	}
	if !found {
		in.j.Steps = append(in.j.Steps, rec)
	}
	if n := len(in.j.Steps) - maxJournal; n > 0 {
		in.j.Steps = append([]*record(nil), in.j.Steps[n:]...)
	}
	b, err := json.MarshalIndent(in.j, "", "  ")
	in.mu.Unlock()
	if err == nil {
		err = atomicfile.Write(in.path, b, 0o640)
	}
	if err != nil {
		in.log.Error("cannot write the install journal", "file", in.path, "err", err)
	}
}

// waitExit waits until the process pid (started at startTicks) is gone.
func (in *Installer) waitExit(ctx context.Context, pid int, startTicks uint64) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := procfs.ReadStat(pid)
		if err != nil || st.StartTicks != startTicks || st.State == 'Z' || syscall.Kill(pid, 0) != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (in *Installer) queryArgv(pkg, format string) ([]string, error) {
	if len(in.cfg.Query) > 0 {
		return config.PackageCommand{Package: pkg}.Command(in.cfg.Query)
	}
	t, err := in.tool(format)
	if err != nil {
		return nil, err
	}
	return t.query(pkg), nil
}

func (in *Installer) installArgv(format string, c config.PackageCommand) ([]string, error) {
	if len(in.cfg.Install) > 0 {
		return c.Command(in.cfg.Install)
	}
	t, err := in.tool(format)
	if err != nil {
		return nil, err
	}
	return t.install(c), nil
}

// tool is the package tool for format; with no format known (reporting the
// installed version), the configured one or the first the node has.
func (in *Installer) tool(format string) (tool, error) {
	if format != "" {
		return chooseTool(in.cfg, format)
	}
	if t, err := chooseTool(in.cfg, formatRPM); err == nil {
		return t, nil
	}
	return chooseTool(in.cfg, formatDeb)
}
