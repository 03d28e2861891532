package ctl

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// procRoot is where readMonitProc reads processes; dhctl monit runs on the
// agent's node, so the agent's pids are this /proc's.
const procRoot = "/proc"

// readMonitProc fills what monit status prints about a process from the
// agent's answer and, for the fields the agent does not carry (parent,
// ids, threads, children), from /proc. A field that cannot be read (the
// process is in another pid namespace, or gone) stays -1 and is left out.
func readMonitProc(s *pb.ServiceStatus, now time.Time) *monitProc {
	p := &monitProc{pid: int(s.Pid), ppid: -1, uid: -1, euid: -1, gid: -1, threads: -1, children: -1,
		cpu: s.CpuPercent, memBytes: s.MemoryBytes}
	if s.StartedUnixMs > 0 {
		p.uptime = now.Sub(time.UnixMilli(s.StartedUnixMs))
	}
	if data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(p.pid), "status")); err == nil {
		parseProcStatus(data, p)
		p.children = countDescendants(p.pid)
	}
	if total := memTotal(); total > 0 {
		p.memPercent = float64(s.MemoryBytes) * 100 / float64(total)
	}
	return p
}

// parseProcStatus reads PPid, Uid (real, effective), Gid and Threads from a
// /proc/PID/status file.
func parseProcStatus(data []byte, p *monitProc) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		num := func(i int) int {
			if i >= len(f) {
				return -1
			}
			n, err := strconv.Atoi(f[i])
			if err != nil {
				return -1
			}
			return n
		}
		switch key {
		case "PPid":
			p.ppid = num(0)
		case "Uid":
			p.uid, p.euid = num(0), num(1)
		case "Gid":
			p.gid = num(0)
		case "Threads":
			p.threads = num(0)
		}
	}
}

// countDescendants counts the processes below pid, as monit's children.
func countDescendants(pid int) int {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return -1
	}
	parent := map[int]int{}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue
		}
		if pp, ok := statPPid(data); ok {
			parent[n] = pp
		}
	}
	count := 0
	for n := range parent {
		// Walk up; the chain ends at init (ppid 0) or a process already gone.
		for cur, hops := parent[n], 0; cur > 0 && hops < len(parent); cur, hops = parent[cur], hops+1 {
			if cur == pid {
				count++
				break
			}
		}
	}
	return count
}

// statPPid reads the parent pid from /proc/PID/stat, after the command name
// in parentheses (which may itself hold spaces and parentheses).
func statPPid(data []byte) (int, bool) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	n, err := strconv.Atoi(f[1])
	return n, err == nil
}

// memTotal is the machine's memory in bytes, what monit's memory percent is of.
func memTotal() uint64 {
	data, err := os.ReadFile(filepath.Join(procRoot, "meminfo"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, err := strconv.ParseUint(f[0], 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}
