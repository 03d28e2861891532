// Package cgroup reads what a systemd unit uses from its control group: on
// the unified hierarchy (cgroup v2), the legacy one (v1), or the hybrid of
// both that systemd sets up on v1 hosts. Membership comes from the group, so
// everything the unit runs counts (a launcher, its JVM, a daemonised
// grandchild); the numbers come from the group's controllers when the unit
// has its own, else from /proc for each member.
package cgroup

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dhvisor/dhvisor/agent/procfs"
)

// Group is one unit's control group, located once when the unit starts.
type Group struct {
	procs string // cgroup.procs in the hierarchy systemd tracks units in
	// memStat is the group's memory.stat, empty when the unit has no memory
	// controller of its own (accounting off); memV2 tells its format.
	memStat string
	memV2   bool
	// cpuFile is cpu.stat (v2, usage_usec) or cpuacct.usage (v1, ns);
	// empty when the unit has no CPU accounting of its own.
	cpuFile string
	cpuV2   bool
}

// Of locates the control group that pid belongs to.
func Of(pid int) (*Group, error) { return of("/", pid) }

func of(root string, pid int) (*Group, error) {
	mounts, err := readMounts(root, filepath.Join(root, "proc/self/mountinfo"))
	if err != nil {
		return nil, err
	}
	memb, err := readMembership(filepath.Join(root, "proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return nil, err
	}
	g := &Group{}
	// systemd tracks units in the unified hierarchy when there is one
	// (v2 and hybrid), else in its named v1 hierarchy.
	unified, hasUnified := memb[""]
	own, ownHier := unified, ""
	if !hasUnified || mounts[""] == nil {
		own, ownHier = memb["name=systemd"], "name=systemd"
	}
	dir := mounts.dir(ownHier, own)
	if dir == "" {
		return nil, fmt.Errorf("cgroup: pid %d: no mounted hierarchy holds its unit", pid)
	}
	g.procs = filepath.Join(dir, "cgroup.procs")
	if ownHier == "" {
		if exists(filepath.Join(dir, "memory.stat")) {
			g.memStat, g.memV2 = filepath.Join(dir, "memory.stat"), true
		}
		if exists(filepath.Join(dir, "cpu.stat")) {
			g.cpuFile, g.cpuV2 = filepath.Join(dir, "cpu.stat"), true
		}
	}
	// A v1 controller counts only if the unit has a group of its own in
	// it: with accounting off it shares its parent's, which would count
	// every other unit in the slice.
	if g.memStat == "" && memb["memory"] == own {
		if d := mounts.dir("memory", own); d != "" && exists(filepath.Join(d, "memory.stat")) {
			g.memStat = filepath.Join(d, "memory.stat")
		}
	}
	if g.cpuFile == "" && memb["cpuacct"] == own {
		if d := mounts.dir("cpuacct", own); d != "" && exists(filepath.Join(d, "cpuacct.usage")) {
			g.cpuFile = filepath.Join(d, "cpuacct.usage")
		}
	}
	return g, nil
}

// Usage reads the group's memory (resident: anonymous and mapped file
// pages, as RSS counts them, never the page cache, which the kernel
// reclaims and a JVM reading table files fills) and cumulative CPU.
func (g *Group) Usage() (procfs.Usage, error) {
	pids, err := readPIDs(g.procs)
	if err != nil {
		return procfs.Usage{}, err
	}
	u := procfs.Usage{Procs: len(pids)}
	if u.Procs == 0 {
		return u, nil
	}
	memFromProc, cpuFromProc := g.memStat == "", g.cpuFile == ""
	if !memFromProc {
		if u.RSSBytes, err = readMemory(g.memStat, g.memV2); err != nil {
			return procfs.Usage{}, err
		}
	}
	if !cpuFromProc {
		ns, err := readCPU(g.cpuFile, g.cpuV2)
		if err != nil {
			return procfs.Usage{}, err
		}
		u.CPUTicks = ns * procfs.ClockTicks / 1e9
	}
	if memFromProc || cpuFromProc {
		for _, pid := range pids {
			s, err := procfs.ReadStat(pid)
			if err != nil {
				continue // exited since the list was read
			}
			if memFromProc {
				u.RSSBytes += s.RSSBytes
			}
			if cpuFromProc {
				u.CPUTicks += s.UTime + s.STime + s.CUTime + s.CSTime
			}
		}
	}
	return u, nil
}

// mount is one mounted cgroup hierarchy.
type mount struct {
	dir  string // where it is mounted
	root string // the group mounted there, relative to the hierarchy's root
}

// mounts maps a hierarchy key to its mount: "" is the unified hierarchy,
// a v1 hierarchy is found under each of its controllers ("memory",
// "cpuacct", "name=systemd").
type mounts map[string]*mount

func (m mounts) dir(key, group string) string {
	mt := m[key]
	if mt == nil {
		return ""
	}
	rel := group
	if mt.root != "/" {
		if !strings.HasPrefix(group, mt.root) {
			return ""
		}
		rel = strings.TrimPrefix(group, mt.root)
	}
	return filepath.Join(mt.dir, rel)
}

// readMounts parses /proc/self/mountinfo for cgroup mounts, placing them
// under root (the file system's, "/" but in tests). A line is
// "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
func readMounts(root, file string) (mounts, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	m := mounts{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, p := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(p) < 3 {
			continue
		}
		mt := &mount{dir: filepath.Join(root, unescapeMount(f[4])), root: unescapeMount(f[3])}
		switch p[0] {
		case "cgroup2":
			if m[""] == nil {
				m[""] = mt
			}
		case "cgroup":
			for _, opt := range strings.Split(p[2], ",") {
				if m[opt] == nil {
					m[opt] = mt
				}
			}
		}
	}
	return m, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readMembership parses /proc/<pid>/cgroup ("ID:CONTROLLERS:PATH" lines)
// into the group of each controller; the unified hierarchy's key is "".
func readMembership(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return ParseMembership(b), nil
}

// ParseMembership is readMembership on the file's contents. Malformed lines
// are skipped: the kernel writes the file, but a caller may hand it
// anything.
func ParseMembership(b []byte) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

// UnitOf is the group pid is in, in the hierarchy systemd tracks units in
// (the unified one, else its named v1 one): "/system.slice/x.service" for
// a unit's process.
func UnitOf(pid int) (string, error) {
	memb, err := readMembership(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", err
	}
	return unitPath(memb)
}

func unitPath(memb map[string]string) (string, error) {
	if p, ok := memb[""]; ok && strings.HasPrefix(p, "/") {
		return p, nil
	}
	if p, ok := memb["name=systemd"]; ok && strings.HasPrefix(p, "/") {
		return p, nil
	}
	return "", fmt.Errorf("cgroup: no unified or name=systemd hierarchy in the membership")
}

// Within reports whether group is unit or one of its descendants. The
// root group holds every process, so nothing is within it.
func Within(group, unit string) bool {
	if unit == "" || unit == "/" {
		return false
	}
	return group == unit || strings.HasPrefix(group, strings.TrimSuffix(unit, "/")+"/")
}

func readPIDs(file string) ([]int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// readMemory returns anonymous plus mapped-file memory from memory.stat.
func readMemory(file string, v2 bool) (uint64, error) {
	keys := [2]string{"total_rss", "total_mapped_file"}
	if v2 {
		keys = [2]string{"anon", "file_mapped"}
	}
	vals, err := readKeyed(file, keys[:])
	if err != nil {
		return 0, err
	}
	return vals[0] + vals[1], nil
}

// readCPU returns cumulative CPU time in nanoseconds.
func readCPU(file string, v2 bool) (uint64, error) {
	if v2 {
		vals, err := readKeyed(file, []string{"usage_usec"})
		return vals[0] * 1000, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("cgroup: %w", err)
	}
	ns, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cgroup: %s: %w", file, err)
	}
	return ns, nil
}

// readKeyed reads "key value" lines, returning the values of keys in order.
func readKeyed(file string, keys []string) ([]uint64, error) {
	vals := make([]uint64, len(keys))
	b, err := os.ReadFile(file)
	if err != nil {
		return vals, fmt.Errorf("cgroup: %w", err)
	}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		for i, want := range keys {
			if k == want {
				n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return vals, fmt.Errorf("cgroup: %s: %s: %w", file, k, err)
				}
				vals[i] = n
				found++
			}
		}
	}
	if found < len(keys) {
		return vals, fmt.Errorf("cgroup: %s lacks %s", file, strings.Join(keys, ", "))
	}
	return vals, nil
}

func exists(file string) bool {
	_, err := os.Stat(file)
	return err == nil
}
