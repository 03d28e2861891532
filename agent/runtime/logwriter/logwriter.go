// Package logwriter keeps a foreground service's stdout and stderr in
// <log_dir>/<name>.log.YYYY-MM-DD, a new file from each local midnight.
//
// A running process's descriptors cannot be reopened from outside, so the
// service writes into a pipe and a small process of its own (the agent's
// binary again, named dhvisor-logwriter) appends what it reads to the
// day's file. It is not the agent: the agent may stop, crash or be
// upgraded while services run on (dhagent.service has KillMode=process),
// and a pipe whose reader died would end the service with SIGPIPE. The
// writer runs as the service's user, in a session of its own, and ends
// when the last process holding the pipe's other end does.
package logwriter

import (
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/safefs"
)

// ProcessName is the writer's argv[0], what ps shows beside the service.
const ProcessName = "dhvisor-logwriter"

// dayLayout dates a service's output file, as Deephaven's launcher names
// its "startup script log": <name>.log.YYYY-MM-DD.
const dayLayout = "2006-01-02"

// dirFD is the log directory's descriptor in the writer: the first of
// os/exec's ExtraFiles.
const dirFD = 3

// FileName is the file in the log directory that a service's output
// written at t goes to: <name>.log.YYYY-MM-DD, local time.
func FileName(name string, t time.Time) string {
	return name + ".log." + t.Format(dayLayout)
}

// A binary that imports this package becomes the writer when it is run
// under ProcessName (the re-exec pattern of Docker's pkg/reexec): the
// agent starts /proc/self/exe, so the writer is always the agent's own
// code, and test binaries of the runtimes work the same way.
func init() {
	if filepath.Base(os.Args[0]) != ProcessName {
		return
	}
	os.Exit(writerMain(os.Args[1:]))
}

func writerMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s SERVICE LOG_DIR (started by dhagent)\n", ProcessName)
		return 2
	}
	d, err := safefs.FromFile(os.NewFile(dirFD, args[1]), args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", ProcessName, err)
		return 1
	}
	defer d.Close()
	if err := Copy(os.Stdin, d, args[0], time.Now); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", ProcessName, err)
		return 1
	}
	return 0
}

// Copy appends what in yields to name's file of the day in d until in
// ends, opening the next day's file on the first write after midnight.
// Output that cannot be written (a full disk) is dropped rather than left
// to fill the pipe, which would stop the service at its next write; the
// next write that succeeds is preceded by a line saying how much was
// lost and why.
func Copy(in io.Reader, d *safefs.Dir, name string, now func() time.Time) error {
	buf := make([]byte, 64<<10)
	var (
		out      *os.File
		day      string
		lost     int64
		lostWhy  error
		lostFrom time.Time
	)
	defer func() {
		if out != nil {
			out.Close()
		}
	}()
	drop := func(n int, why error, at time.Time) {
		if lost == 0 {
			lostFrom = at
		}
		lost += int64(n)
		lostWhy = why
	}
	// open makes sure the file of t's day is the one written to.
	open := func(t time.Time) error {
		today := t.Format(dayLayout)
		if out != nil && today == day {
			return nil
		}
		if out != nil {
			out.Close()
			out = nil
		}
		f, err := d.OpenAppend(FileName(name, t), 0o644, -1, -1)
		if err != nil {
			return err
		}
		out, day = f, today
		return nil
	}
	// The day's file exists from the start, as the launcher's startup log
	// does, even for a service that has written nothing yet.
	if err := open(now()); err != nil {
		drop(0, err, now())
	}
	for {
		n, rerr := in.Read(buf)
		if n > 0 {
			t := now()
			if err := open(t); err != nil {
				drop(n, err, t)
				continue
			}
			if lost > 0 {
				if _, err := fmt.Fprintf(out, "%s: %d bytes of %s's output lost from %s: %v\n",
					ProcessName, lost, name, lostFrom.Format(time.RFC3339), lostWhy); err == nil {
					lost = 0
				}
			}
			if _, err := out.Write(buf[:n]); err != nil {
				drop(n, err, t)
				// Reopened at the next write: the file may have been
				// removed or the disk freed meanwhile.
				out.Close()
				out = nil
			}
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// Output is a pipe whose write end is to be a service's stdout and
// stderr, and the writer that is to read it.
type Output struct {
	// File is the write end, for the service.
	File *os.File
	r    *os.File
	dir  *os.File
	cmd  *osexec.Cmd
}

// Pipe prepares the output of the service name into the log directory d,
// written as cred (nil: the agent's own user). The caller starts the
// service with File, then calls Start, and Close in any case. The writer
// starts after the service so that its fork and exec (a few ms) are not
// on the way to a restarted service; the pipe holds what the service
// writes meanwhile.
func Pipe(d *safefs.Dir, name string, cred *syscall.Credential) (*Output, error) {
	dir, err := d.File()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		dir.Close()
		return nil, fmt.Errorf("output pipe: %w", err)
	}
	return &Output{File: w, r: r, dir: dir, cmd: &osexec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{ProcessName, name, d.Path()},
		Stdin:      r,
		ExtraFiles: []*os.File{dir},
		// The day turns at local midnight as the agent sees it.
		Env:         tzEnv(),
		Dir:         "/",
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Credential: cred},
	}}, nil
}

// Start starts the writer. Without one the service's writes fail once
// the pipe is full, so the caller reports an error loudly.
func (o *Output) Start() error {
	reapEnded()
	if err := o.cmd.Start(); err != nil {
		return fmt.Errorf("start %s for %s: %w", ProcessName, o.cmd.Args[1], err)
	}
	started.Lock()
	started.pids = append(started.pids, o.cmd.Process.Pid)
	started.Unlock()
	// Reaped by pid in reapEnded, not by os/exec.
	_ = o.cmd.Process.Release()
	return nil
}

// Close releases the agent's copies of the pipe and the directory.
func (o *Output) Close() {
	o.File.Close()
	o.r.Close()
	o.dir.Close()
}

// started holds the writers this agent started and has not reaped. A
// writer ends when the service and whatever it left holding the pipe have
// gone, which nothing here controls, so no goroutine waits for it: an
// ended one is reaped at the next Start, and stays a zombie until then
// (or until the agent exits and init takes it).
var started struct {
	sync.Mutex
	pids []int
}

func reapEnded() {
	started.Lock()
	defer started.Unlock()
	running := started.pids[:0]
	for _, pid := range started.pids {
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); got == 0 && err == nil {
			running = append(running, pid)
		}
	}
	started.pids = running
}

func tzEnv() []string {
	if tz, ok := os.LookupEnv("TZ"); ok {
		return []string{"TZ=" + tz}
	}
	return []string{}
}
