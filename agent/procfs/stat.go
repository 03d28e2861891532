// Package procfs reads process information from Linux /proc without cgo.
//
// Everything here is meant to be called once a second per supervised
// service, so reads go straight to the kernel through a reused stack buffer
// instead of os.ReadFile, which would stat the file and allocate per call.
//
// Errors caused by a process that does not exist (or vanished while being
// read) satisfy errors.Is(err, fs.ErrNotExist).
package procfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ClockTicks is the unit of the tick counts in /proc/<pid>/stat (CLK_TCK).
//
// The kernel converts its internal jiffies to USER_HZ before exposing them,
// and USER_HZ is part of the ABI rather than a build option: it is 100 on
// every architecture Go supports on Linux (only Alpha and IA-64 used other
// values). Hard-coding it avoids reading the ELF auxiliary vector, which is
// the only way to ask for sysconf(_SC_CLK_TCK) without cgo.
const ClockTicks = 100

var pageSize = uint64(os.Getpagesize())

// Stat is the subset of /proc/<pid>/stat the agent uses.
type Stat struct {
	PID, PPID, PGID, SID int
	State                byte
	Comm                 string
	// StartTicks is field 22: clock ticks from boot to process start. With
	// PID it identifies a process across pid reuse.
	StartTicks uint64
	// UTime and STime are the process's own CPU time in ticks.
	UTime, STime uint64
	// CUTime and CSTime are the CPU ticks of children the process has
	// already reaped. TreeUsage adds them so that a child's CPU time moves
	// to its parent when it exits instead of vanishing from the total.
	CUTime, CSTime uint64
	// RSSBytes is field 24 (resident pages) times the page size.
	RSSBytes   uint64
	NumThreads int
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	var buf [statBufSize]byte
	b, err := readProc(procPath(pid, "stat"), buf[:])
	if err != nil {
		return Stat{}, err
	}
	s, err := parseStat(string(b))
	if err != nil {
		return Stat{}, fmt.Errorf("procfs: pid %d: %w", pid, err)
	}
	return s, nil
}

// StartTime is the wall-clock time the process started.
func (s Stat) StartTime() (time.Time, error) {
	boot, err := BootTime()
	if err != nil {
		return time.Time{}, err
	}
	return boot.Add(time.Duration(s.StartTicks) * (time.Second / ClockTicks)), nil
}

// statBufSize fits a stat line with every field at its widest (52 fields
// of up to 20 digits) plus a 64-byte kernel-thread name.
const statBufSize = 2048

// parseStat parses one /proc/<pid>/stat line. The comm field is
// parenthesised but may itself contain spaces and parentheses, and nothing
// after it can contain ')', so comm ends at the last ')'.
func parseStat(line string) (Stat, error) {
	open := strings.IndexByte(line, '(')
	closing := strings.LastIndexByte(line, ')')
	if open < 0 || closing < open {
		return Stat{}, fmt.Errorf("malformed stat line %q", truncate(line, 64))
	}
	var s Stat
	pid, err := strconv.Atoi(strings.TrimSpace(line[:open]))
	if err != nil {
		return Stat{}, fmt.Errorf("malformed stat pid: %w", err)
	}
	s.PID = pid
	s.Comm = line[open+1 : closing]

	// Field numbers below are those of proc(5); fields starts at field 3.
	rest := line[closing+1:]
	var fields [22]string // up to field 24
	n := 0
	for n < len(fields) {
		rest = strings.TrimLeft(rest, " \n")
		if rest == "" {
			break
		}
		end := strings.IndexAny(rest, " \n")
		if end < 0 {
			end = len(rest)
		}
		fields[n], rest = rest[:end], rest[end:]
		n++
	}
	if n < len(fields) {
		return Stat{}, fmt.Errorf("stat line has %d fields after comm, want at least %d", n, len(fields))
	}
	p := fieldParser{fields: &fields}
	if state := p.field(3); len(state) == 1 {
		s.State = state[0]
	} else {
		return Stat{}, fmt.Errorf("malformed stat state %q", state)
	}
	s.PPID = p.int(4)
	s.PGID = p.int(5)
	s.SID = p.int(6)
	s.UTime = p.uint(14)
	s.STime = p.uint(15)
	// cutime and cstime are signed in the kernel (clock_t) but never
	// negative in practice.
	s.CUTime = p.uint(16)
	s.CSTime = p.uint(17)
	s.NumThreads = p.int(20)
	s.StartTicks = p.uint(22)
	s.RSSBytes = p.uint(24) * pageSize
	if p.err != nil {
		return Stat{}, p.err
	}
	return s, nil
}

// fieldParser keeps the first conversion error so parseStat can read all
// fields and check once.
type fieldParser struct {
	fields *[22]string
	err    error
}

func (p *fieldParser) field(num int) string { return p.fields[num-3] }

func (p *fieldParser) uint(num int) uint64 {
	v, err := strconv.ParseUint(p.field(num), 10, 64)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("stat field %d: %w", num, err)
	}
	return v
}

func (p *fieldParser) int(num int) int {
	v, err := strconv.Atoi(p.field(num))
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("stat field %d: %w", num, err)
	}
	return v
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func procPath(pid int, name string) string {
	return "/proc/" + strconv.Itoa(pid) + "/" + name
}

// readProcUpTo is readProc for a file that may be longer than buf
// (cmdline): what does not fit is cut off rather than an error.
func readProcUpTo(path string, buf []byte) ([]byte, error) {
	b, err := readProc(path, buf)
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Op == "read" && pe.Err == errBufferFull {
		return buf, nil
	}
	return b, err
}

var errBufferFull = errors.New("file larger than buffer")

// readProc reads a whole /proc file into buf and returns the filled part.
//
// The files read here are seq_files, which fill a read as far as the buffer
// allows, so one short read is the whole file; skipping the read that would
// return EOF saves a quarter of the syscalls on the hot path. A read that
// fills buf may be truncated and is an error.
func readProc(path string, buf []byte) ([]byte, error) {
	fd, err := ignoringEINTR(func() (int, error) {
		return syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	n, err := ignoringEINTR(func() (int, error) { return syscall.Read(fd, buf) })
	switch {
	case err == syscall.ESRCH:
		// The process was reaped between open and read.
		return nil, &fs.PathError{Op: "read", Path: path, Err: fs.ErrNotExist}
	case err != nil:
		return nil, &fs.PathError{Op: "read", Path: path, Err: err}
	case n == len(buf):
		return nil, &fs.PathError{Op: "read", Path: path, Err: errBufferFull}
	}
	return buf[:n], nil
}

func ignoringEINTR(call func() (int, error)) (int, error) {
	for {
		n, err := call()
		if err != syscall.EINTR {
			return n, err
		}
	}
}
