package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// ExecOptions configures a probe that runs a command.
type ExecOptions struct {
	// Argv is the command and its arguments. A command name without a
	// slash is looked up in the PATH of the command's environment, not
	// the agent's.
	Argv []string
	// Env entries are added to a minimal environment (just PATH) and
	// override it. The agent's own environment is not inherited, so a check
	// behaves the same however the agent was started.
	Env []string
	Dir string
	// Uid and Gid, when set, switch the command to that user or group
	// (the other defaults to the agent's) and clear supplementary groups.
	Uid, Gid *uint32
}

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

const (
	// maxOutput is how much combined output is kept to find the first line.
	maxOutput = 512
	// maxLine bounds the output quoted in a failure message.
	maxLine = 200
	// waitDelay bounds how long the probe waits for the output pipe to
	// close once the command has exited or been killed: children it left
	// behind (killed only after that wait) or that escaped its process
	// group may still hold the pipe.
	waitDelay = 500 * time.Millisecond
)

type execProbe struct {
	opts   ExecOptions
	env    []string
	target string
}

// NewExec returns a probe that runs a command and succeeds when it exits
// with status 0. The command runs in its own process group, and the whole
// group is killed when ctx is done and after the command exits, so neither
// a hung check nor its leftover children accumulate.
func NewExec(opts ExecOptions) Probe {
	p := &execProbe{
		opts:   opts,
		env:    append([]string{defaultPath}, opts.Env...),
		target: "exec",
	}
	if len(opts.Argv) > 0 {
		p.target += " " + opts.Argv[0]
	}
	return p
}

func (p *execProbe) Probe(ctx context.Context) error {
	if len(p.opts.Argv) == 0 {
		return fail(p.target, errors.New("no command"))
	}
	path, err := lookPath(p.opts.Argv[0], p.env)
	if err != nil {
		return fail(p.target, err)
	}
	if p.opts.Dir != "" {
		// exec reports a failed chdir as if the command were missing.
		if _, err := os.Stat(p.opts.Dir); err != nil {
			return fail(p.target, err)
		}
	}
	cmd := exec.CommandContext(ctx, path, p.opts.Argv[1:]...)
	cmd.Args = p.opts.Argv
	cmd.Env = p.env
	cmd.Dir = p.opts.Dir
	var out headBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: p.credential()}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay

	if err := cmd.Start(); err != nil {
		// Start's "fork/exec <path>" prefix would repeat the target.
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			return &failure{msg: p.target + ": " + pe.Err.Error(), cause: err}
		}
		return fail(p.target, err)
	}
	err = cmd.Wait()
	// Kill whatever the check left running in its group. The group id is
	// the pid of the just-reaped leader, yet cannot name another group:
	// Linux allocates pids cyclically, so the number comes round again
	// only after pid_max further forks.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)

	state := cmd.ProcessState
	switch {
	case state == nil:
		// Wait could not collect the exit status at all.
		return fail(p.target, err)
	case state.Success():
		return nil
	case ctx.Err() != nil:
		return p.exitFailure("timed out, killed", ctx.Err(), out.firstLine())
	}
	// "exit status N" or "signal: killed".
	return p.exitFailure(state.String(), err, out.firstLine())
}

func (p *execProbe) exitFailure(what string, cause error, line string) error {
	msg := p.target + ": " + what
	if line != "" {
		msg += ": " + line
	}
	return &failure{msg: msg, cause: cause}
}

func (p *execProbe) credential() *syscall.Credential {
	if p.opts.Uid == nil && p.opts.Gid == nil {
		return nil
	}
	c := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
	if p.opts.Uid != nil {
		c.Uid = *p.opts.Uid
	}
	if p.opts.Gid != nil {
		c.Gid = *p.opts.Gid
	}
	return c
}

// lookPath resolves file against the PATH in env; exec.LookPath would use
// the agent's own PATH instead.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	var path string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v // the last one wins, as in exec.Cmd
		}
	}
	for _, dir := range filepath.SplitList(path) {
		// A relative entry would resolve against the agent's working
		// directory, which means nothing to the check.
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", file)
}

// headBuffer keeps the first maxOutput bytes written and discards the rest
// while reporting success, so a chatty check neither grows memory nor gets
// SIGPIPE.
type headBuffer struct {
	buf []byte
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - len(h.buf); room > 0 {
		h.buf = append(h.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// firstLine returns the first non-blank line, trimmed to maxLine bytes.
func (h *headBuffer) firstLine() string {
	for line := range bytes.Lines(h.buf) {
		s := strings.TrimSpace(string(line))
		if s == "" {
			continue
		}
		return shorten(s)
	}
	return ""
}

// shorten makes s fit one line of a status message: valid UTF-8, at most
// maxLine bytes.
func shorten(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) > maxLine {
		cut := maxLine
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
