package main

import (
	"github.com/dhvisor/dhvisor/agent/procfs"

	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// memStatus returns VmRSS and VmHWM (peak RSS) in bytes.
func memStatus(pid int) (rss, hwm uint64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		fs := strings.Fields(v) // "12345 kB"
		n, _ := strconv.ParseUint(fs[0], 10, 64)
		if k == "VmRSS" {
			rss = n * 1024
		} else {
			hwm = n * 1024
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return rss, hwm, sc.Err()
}

// descendants lists the live (non-zombie) processes below pid.
func descendants(pid int) []procfs.Stat {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	kids := map[int][]procfs.Stat{}
	for _, d := range dirs {
		n, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		st, err := procfs.ReadStat(n)
		if err != nil {
			continue // gone meanwhile
		}
		kids[st.PPID] = append(kids[st.PPID], st)
	}
	var out []procfs.Stat
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, k := range kids[p] {
			queue = append(queue, k.PID)
			if k.State != 'Z' {
				out = append(out, k)
			}
		}
	}
	return out
}
