package procfs

import (
	"os"
	"strconv"
	"sync"
)

// Usage is the summed resource use of a process tree.
type Usage struct {
	RSSBytes uint64
	// CPUTicks is cumulative CPU time in ClockTicks, including children the
	// tree has already reaped, so it only drops when a process leaves the
	// tree without being reaped by it (e.g. a daemonising grandchild).
	CPUTicks uint64
	Procs    int
}

func (u *Usage) add(s Stat) {
	u.RSSBytes += s.RSSBytes
	u.CPUTicks += s.UTime + s.STime + s.CUTime + s.CSTime
	u.Procs++
}

// TreeUsage sums the usage of pid and all its descendants. Supervised
// services are often a launcher script whose child does the real work, so
// the root alone would under-report.
//
// Descendants are found through /proc/<pid>/task/<tid>/children, which
// touches only the tree itself. Kernels built without CONFIG_PROC_CHILDREN
// lack that file; there the whole of /proc is scanned once instead.
// Members that exit while the tree is walked are skipped; only a missing
// root is an error.
//
// The cost is one /proc read per member plus, for a multi-threaded member,
// one per thread: a child's parent is the thread that forked it, so every
// thread's list must be read. A 200-thread JVM therefore costs about 200
// small reads.
func TreeUsage(pid int) (Usage, error) {
	if childrenFileSupported() {
		return treeUsageChildren(pid)
	}
	return treeUsageScan(pid)
}

var childrenFileSupported = sync.OnceValue(func() bool {
	// The main thread is probed because it lives as long as the process.
	_, err := os.Stat(procPath(os.Getpid(), "task/"+strconv.Itoa(os.Getpid())+"/children"))
	return err == nil
})

func treeUsageChildren(root int) (Usage, error) {
	rs, err := ReadStat(root)
	if err != nil {
		return Usage{}, err
	}
	var u Usage
	// The tree is read non-atomically; seen keeps a pid that is reused
	// during the walk from being counted twice.
	seen := map[int]bool{root: true}
	stack := []Stat{rs}
	for len(stack) > 0 {
		s := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		u.add(s)
		for _, c := range childPIDs(s) {
			if seen[c] {
				continue
			}
			seen[c] = true
			cs, err := ReadStat(c)
			// A child that exited, or whose pid was already reused by an
			// unrelated process, is not part of the tree any more.
			if err != nil || cs.PPID != s.PID {
				continue
			}
			stack = append(stack, cs)
		}
	}
	return u, nil
}

// childPIDs lists the children of every thread of the process.
func childPIDs(s Stat) []int {
	if s.NumThreads == 1 {
		// The common case for launchers and shells; skips listing task/.
		return readChildren(s.PID, s.PID, nil)
	}
	f, err := os.Open(procPath(s.PID, "task"))
	if err != nil {
		return nil
	}
	tids, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil
	}
	var pids []int
	for _, name := range tids {
		if tid, err := strconv.Atoi(name); err == nil {
			pids = readChildren(s.PID, tid, pids)
		}
	}
	return pids
}

// readChildren appends the pids in /proc/<pid>/task/<tid>/children to dst.
// A thread that exited meanwhile simply contributes nothing.
func readChildren(pid, tid int, dst []int) []int {
	var buf [4096]byte
	path := procPath(pid, "task/"+strconv.Itoa(tid)+"/children")
	b, err := readProc(path, buf[:])
	if err != nil {
		// Including more children than fit in buf: hundreds, which no
		// supervised service forks from one thread.
		return dst
	}
	// Parsed by hand: a range-over-func iterator would capture b and move
	// buf to the heap on every call.
	c, digits := 0, false
	for _, ch := range b {
		if '0' <= ch && ch <= '9' {
			c, digits = c*10+int(ch-'0'), true
			continue
		}
		if digits {
			dst = append(dst, c)
		}
		c, digits = 0, false
	}
	if digits {
		dst = append(dst, c)
	}
	return dst
}

func treeUsageScan(root int) (Usage, error) {
	rs, err := ReadStat(root)
	if err != nil {
		return Usage{}, err
	}
	d, err := os.Open("/proc")
	if err != nil {
		return Usage{}, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return Usage{}, err
	}
	children := make(map[int][]Stat)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid == root {
			continue
		}
		s, err := ReadStat(pid)
		if err != nil {
			continue // exited since the directory was listed
		}
		children[s.PPID] = append(children[s.PPID], s)
	}
	// Each process appears under exactly one ppid in a single scan, so the
	// walk cannot revisit a process.
	var u Usage
	stack := []Stat{rs}
	for len(stack) > 0 {
		s := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		u.add(s)
		stack = append(stack, children[s.PID]...)
	}
	return u, nil
}
