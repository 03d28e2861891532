// Package daemon decides which process is a daemonizing service's: the one
// its pidfile names, or the one whose command line its match pattern
// matches, as monit finds it. A pidfile is written by the service's user,
// who also runs any code a query worker runs, so what it names is
// untrusted: a pid is the service's only if that process runs as the
// service's user (root only for a root service) and started when it should
// have (after the start program was launched, or as an earlier agent
// recorded it), and, where the runtime says so, only if it runs in the
// control group it should (the agent's, where its start program leaves
// it, or monit's on a take-over). A pidfile naming anyone else's process
// never makes the agent adopt, signal or kill that process.
package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dhvisor/dhvisor/agent/procfs"
	"github.com/dhvisor/dhvisor/agent/runtime"
	"github.com/dhvisor/dhvisor/agent/safefs"
)

// Proc is what the agent knows of one process when it judges it.
type Proc struct {
	ID      procfs.Identity
	Owner   procfs.Owner
	PGID    int
	SID     int
	PPID    int
	Cmdline []string
	// Cgroup is its control group (see CgroupOf); "" when unreadable.
	Cgroup string
}

// String names the process for an operator: pid, user and command.
func (p Proc) String() string {
	cmd := strings.Join(p.Cmdline, " ")
	if len(cmd) > 120 {
		cmd = cmd[:117] + "..."
	}
	if cmd == "" {
		cmd = "(no command line)"
	}
	return fmt.Sprintf("pid %d (uid %d: %s)", p.ID.PID, p.Owner.UID, cmd)
}

// Inspect reads what Proc holds about pid. The stat is read last and its
// start time compared with the first read, so that a pid reused while the
// files were read is not taken for one process.
func Inspect(pid int) (Proc, error) {
	if pid <= 0 {
		return Proc{}, fmt.Errorf("pid %d is not a process id", pid)
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return Proc{}, err
	}
	if st.State == 'Z' || st.State == 'X' {
		return Proc{}, fmt.Errorf("pid %d: %w (exited)", pid, fs.ErrNotExist)
	}
	owner, err := procfs.ReadOwner(pid)
	if err != nil {
		return Proc{}, err
	}
	cmd, err := procfs.Cmdline(pid)
	// A process in the middle of an exec reads as having no command line
	// for a moment; only a kernel thread has none for good.
	for try := 0; err == nil && len(cmd) == 0 && !kernelThread(pid, st.PPID) && try < 20; try++ {
		time.Sleep(time.Millisecond)
		cmd, err = procfs.Cmdline(pid)
	}
	if err != nil {
		return Proc{}, err
	}
	cg, _ := CgroupOf(pid)
	again, err := procfs.ReadStat(pid)
	if err != nil || again.StartTicks != st.StartTicks {
		return Proc{}, fmt.Errorf("pid %d: %w (changed while read)", pid, fs.ErrNotExist)
	}
	return Proc{ID: procfs.Identity{PID: pid, StartTicks: st.StartTicks}, Owner: owner, PGID: st.PGID, SID: st.SID, PPID: st.PPID, Cmdline: cmd, Cgroup: cg}, nil
}

// kthreadd is the parent of every kernel thread.
const kthreadd = 2

func kernelThread(pid, ppid int) bool { return pid == kthreadd || ppid == kthreadd }

// Want is what the service's process must be.
type Want struct {
	// UID is the service's user: the process's real and effective uid
	// must both be it.
	UID uint32
	// After, when set, is the earliest start (boot ticks) the process may
	// have: the launch of the start program.
	After uint64
	// Match, when set, must match the process's command line (its
	// arguments joined by spaces, as monit matches it).
	Match *regexp.Regexp
	// Cgroups, when set, are the control groups the process may be in,
	// besides monit's unit (a take-over from monit adopts what it
	// started). A process elsewhere was started by someone else: a user
	// in a login session, another system service. Users can start
	// processes in a session or a process group of their choosing, but
	// not in a control group of root's. As systemd accepts for PIDFile=,
	// a pidfile owned by root vouches for a process anywhere.
	Cgroups []string
}

// UntrustedError says why a process is not the service's.
type UntrustedError struct {
	Proc Proc
	Why  string
}

func (e *UntrustedError) Error() string { return e.Proc.String() + " " + e.Why }

// Trust accepts p as the service's process, or says why not.
func (w Want) Trust(p Proc) error {
	switch {
	case p.ID.PID == 1:
		return &UntrustedError{p, "is init"}
	case p.ID.PID == os.Getpid():
		return &UntrustedError{p, "is the agent itself"}
	case kernelThread(p.ID.PID, p.PPID):
		return &UntrustedError{p, "is a kernel thread"}
	case len(p.Cmdline) == 0:
		return &UntrustedError{p, "has no command line"}
	case p.Owner.UID != w.UID || p.Owner.EUID != w.UID:
		return &UntrustedError{p, fmt.Sprintf("does not run as the service's user (uid %d)", w.UID)}
	case w.After != 0 && p.ID.StartTicks < w.After:
		return &UntrustedError{p, "started before the start program was launched"}
	case w.Match != nil && !w.Match.MatchString(strings.Join(p.Cmdline, " ")):
		return &UntrustedError{p, fmt.Sprintf("has a command line that does not match %q", w.Match.String())}
	case w.Cgroups != nil && !slices.Contains(w.Cgroups, p.Cgroup) && path.Base(p.Cgroup) != monitUnit:
		return &UntrustedError{p, fmt.Sprintf("runs in control group %q, neither the agent's (%s) nor monit's: started by someone else (stop it and start the service with dhctl)", p.Cgroup, strings.Join(w.Cgroups, ", "))}
	}
	return nil
}

// monitUnit is the unit monit runs in; only root makes control groups
// by that name.
const monitUnit = "monit.service"

// CgroupOf is the control group pid is in as systemd placed it: its path
// in the name=systemd hierarchy on a cgroup v1 (or hybrid) host, in the
// unified one otherwise.
func CgroupOf(pid int) (string, error) { return readCgroup(strconv.Itoa(pid)) }

// OwnCgroup is the agent's own control group, where the processes its
// start programs leave stay across agent restarts.
func OwnCgroup() (string, error) { return readCgroup("self") }

func readCgroup(pid string) (string, error) {
	b, err := os.ReadFile("/proc/" + pid + "/cgroup")
	if err != nil {
		return "", err
	}
	return parseCgroup(b)
}

// parseCgroup reads /proc/<pid>/cgroup: lines of ID:CONTROLLERS:PATH.
func parseCgroup(b []byte) (string, error) {
	unified, named := "", ""
	for _, line := range strings.Split(string(b), "\n") {
		id, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		ctrl, p, ok := strings.Cut(rest, ":")
		switch {
		case !ok:
		case id == "0" && ctrl == "":
			unified = p
		case ctrl == "name=systemd":
			named = p
		}
	}
	switch {
	case named != "":
		return named, nil
	case unified != "":
		return unified, nil
	}
	return "", errors.New("no systemd or unified control group")
}

// pidfileLimit bounds what is read of a pidfile: a pid and a newline, with
// room for whatever a launcher adds after it.
const pidfileLimit = 4096

// Pidfile is what a pidfile holds now.
type Pidfile struct {
	PID      int
	Modified time.Time
	UID      uint32 // its owner
}

// ReadPidfile reads the pid in path (the first word of its first line),
// without following a link the service's user placed.
func ReadPidfile(path string) (Pidfile, error) {
	d, err := safefs.OpenDir(filepath.Dir(path))
	if err != nil {
		return Pidfile{}, err
	}
	defer d.Close()
	name := filepath.Base(path)
	b, err := d.ReadFile(name, pidfileLimit)
	if err != nil {
		return Pidfile{}, err
	}
	st, err := d.Stat(name)
	if err != nil {
		return Pidfile{}, err
	}
	pid, err := parsePid(b)
	if err != nil {
		return Pidfile{}, fmt.Errorf("%s: %w", path, err)
	}
	sec, nsec := st.Mtim.Unix()
	return Pidfile{PID: pid, Modified: time.Unix(sec, nsec), UID: st.Uid}, nil
}

var errNotAPid = errors.New("does not hold a process id")

// maxPid is the kernel's limit on pid_max (PID_MAX_LIMIT on 64 bits).
const maxPid = 1 << 22

// parsePid reads a pidfile's content as monit does: the first word of the
// first line is the pid, anything after it is ignored.
func parsePid(b []byte) (int, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) == 0 {
		return 0, fmt.Errorf("%w: empty", errNotAPid)
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 || pid > maxPid {
		return 0, fmt.Errorf("%w: %q", errNotAPid, truncate(f[0], 32))
	}
	return pid, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// removePidfile unlinks path through its directory.
func removePidfile(path string) error {
	d, err := safefs.OpenDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Remove(filepath.Base(path))
}

// RunningError is a pidfile that names the service's own live process:
// the service runs already (started by hand, or by monit before the take
// over), and is adopted rather than started a second time.
type RunningError struct{ Proc Proc }

func (e *RunningError) Error() string { return "already running as " + e.Proc.String() }

// ForeignError is a pidfile that names a live process that is not the
// service's and that was running before the pidfile was written: not a
// reused pid but a pidfile pointing at someone else. Nothing is started
// (that could be a second copy) and nothing is signalled.
type ForeignError struct {
	Path   string
	Reason *UntrustedError
}

func (e *ForeignError) Error() string {
	return fmt.Sprintf("pidfile %s names %s; not starting another copy and not touching that process (remove the pidfile if it is wrong)", e.Path, e.Reason)
}

// Clear makes way for a start: a pidfile naming no live process (or a pid
// reused since it was written) is removed, as Deephaven's JVM refuses to
// start while its pidfile exists. It returns a *RunningError when the
// service runs already and a *ForeignError when the pidfile names someone
// else's process that is not a reuse; removed says a stale file went.
func Clear(path string, w Want) (removed string, err error) {
	pf, err := ReadPidfile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", nil
	case errors.Is(err, errNotAPid):
		return err.Error(), removePidfile(path)
	case err != nil:
		return "", fmt.Errorf("pidfile: %w", err)
	}
	p, err := Inspect(pf.PID)
	if err != nil {
		return fmt.Sprintf("pidfile %s named pid %d, which no longer runs", path, pf.PID), removePidfile(path)
	}
	if reused(p, pf) {
		return fmt.Sprintf("pidfile %s named pid %d, now reused by %s", path, pf.PID, p), removePidfile(path)
	}
	trust := Want{UID: w.UID, Match: w.Match, Cgroups: vouched(w, pf)}.Trust(p)
	if trust == nil {
		return "", &RunningError{Proc: p}
	}
	var ue *UntrustedError
	errors.As(trust, &ue)
	return "", &ForeignError{Path: path, Reason: ue}
}

// reused reports whether p started after the pidfile was last written:
// the pid was handed to another process since the service ended. (A
// daemon writes its pidfile after it starts; a second of slack covers the
// coarse clocks on both sides.)
func reused(p Proc, pf Pidfile) bool {
	started, err := startTime(p.ID.StartTicks)
	return err == nil && started.After(pf.Modified.Add(time.Second))
}

// startTime is the wall-clock start of a process that started ticks after
// boot.
func startTime(ticks uint64) (time.Time, error) {
	boot, err := procfs.BootTime()
	if err != nil {
		return time.Time{}, err
	}
	return boot.Add(time.Duration(ticks) * (time.Second / procfs.ClockTicks)), nil
}

// Locate finds the service's process now: the one its pidfile names, or
// the one its match pattern matches, that w trusts. It fails with why
// (a missing pidfile, a pid not trusted) when there is none.
func Locate(pidfile string, w Want) (Proc, error) {
	if pidfile == "" {
		return FindMatch(w)
	}
	pf, err := ReadPidfile(pidfile)
	if err != nil {
		return Proc{}, err
	}
	p, err := Inspect(pf.PID)
	if err != nil {
		return Proc{}, fmt.Errorf("pidfile %s names pid %d: %w", pidfile, pf.PID, err)
	}
	if w.After == 0 && reused(p, pf) {
		return Proc{}, fmt.Errorf("pidfile %s names pid %d, reused since by %s", pidfile, pf.PID, p)
	}
	w.Cgroups = vouched(w, pf)
	if err := w.Trust(p); err != nil {
		return Proc{}, fmt.Errorf("pidfile %s names %w", pidfile, err)
	}
	return p, nil
}

// vouched is the control groups w allows for what pf names: anywhere
// when root wrote pf.
func vouched(w Want, pf Pidfile) []string {
	if pf.UID == 0 {
		return nil
	}
	return w.Cgroups
}

// FindMatch scans every process for the oldest one that w trusts (its
// pattern matching the command line): the one a daemon's later children
// or a re-run of its launcher cannot displace.
func FindMatch(w Want) (Proc, error) {
	if w.Match == nil {
		return Proc{}, errors.New("no pattern to match")
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return Proc{}, err
	}
	var best Proc
	found := false
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := Inspect(pid)
		if err != nil || w.Trust(p) != nil {
			continue
		}
		if !found || p.ID.StartTicks < best.ID.StartTicks || p.ID.StartTicks == best.ID.StartTicks && p.ID.PID < best.ID.PID {
			best, found = p, true
		}
	}
	if !found {
		return Proc{}, fmt.Errorf("no process of uid %d matches %q", w.UID, w.Match.String())
	}
	return best, nil
}

// Members are the other processes of p's session (or process group) that
// run as uid: a daemon's helpers, which a stop reaches too. Only a session
// or group p leads counts, so that a daemon sharing its group with
// something else never takes that along.
func Members(p Proc, uid uint32) []Proc {
	// The session or group it leads now: a launcher may write the pid of
	// its child before that child has called setsid.
	if st, err := procfs.ReadStat(p.ID.PID); err == nil && st.StartTicks == p.ID.StartTicks {
		p.SID, p.PGID = st.SID, st.PGID
	}
	if p.SID != p.ID.PID && p.PGID != p.ID.PID {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == p.ID.PID {
			continue
		}
		st, err := procfs.ReadStat(pid)
		if err != nil || (st.SID != p.ID.PID && st.PGID != p.ID.PID) {
			continue
		}
		m, err := Inspect(pid)
		if err != nil || m.Owner.UID != uid || m.Owner.EUID != uid || len(m.Cmdline) == 0 {
			continue
		}
		out = append(out, m)
	}
	return out
}

// Signal sends sig to the process id names if it is still that process,
// through a pidfd so that a pid reused meanwhile is never signalled.
func Signal(id procfs.Identity, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(id.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if now, err := procfs.IdentityOf(id.PID); err != nil || now != id {
		return nil // ended (the pidfd pins whatever holds the pid now)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// WantOf is what spec's process must be: its user's (the agent's own
// user when the service names none) and matching its pattern, if any.
func WantOf(spec runtime.Spec) (Want, error) {
	w := Want{UID: uint32(os.Getuid())}
	if spec.Daemon != nil {
		w.Match = spec.Daemon.Match
	}
	if spec.User == "" {
		return w, nil
	}
	u, err := user.Lookup(spec.User)
	if err != nil {
		return Want{}, fmt.Errorf("run user %q: %w", spec.User, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return Want{}, fmt.Errorf("run user %q: uid %q: %w", spec.User, u.Uid, err)
	}
	w.UID = uint32(uid)
	return w, nil
}

// Prepare makes way for a start of spec's service: its stale pidfile is
// removed (note says so, for the log), and a copy that runs already,
// the service's own or a foreign process its pidfile names, is an error
// (a *RunningError or *ForeignError) rather than a second copy.
func Prepare(spec runtime.Spec, w Want) (note string, err error) {
	d := spec.Daemon
	if d.Pidfile != "" {
		return Clear(d.Pidfile, w)
	}
	if p, err := FindMatch(w); err == nil {
		return "", &RunningError{Proc: p}
	}
	return "", nil
}
