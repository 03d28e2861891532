package procfs

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Owner is who a process runs as: its real and effective user ids.
type Owner struct {
	UID, EUID uint32
}

// ReadOwner reads the Uid: line of /proc/<pid>/status.
func ReadOwner(pid int) (Owner, error) {
	var buf [4096]byte
	b, err := readProc(procPath(pid, "status"), buf[:])
	if err != nil {
		return Owner{}, err
	}
	o, err := parseOwner(b)
	if err != nil {
		return Owner{}, fmt.Errorf("procfs: pid %d: %w", pid, err)
	}
	return o, nil
}

// parseOwner finds "Uid:\treal\teffective\tsaved\tfs" in a status file.
func parseOwner(status []byte) (Owner, error) {
	for len(status) > 0 {
		line := status
		if i := bytes.IndexByte(status, '\n'); i >= 0 {
			line, status = status[:i], status[i+1:]
		} else {
			status = nil
		}
		rest, ok := bytes.CutPrefix(line, []byte("Uid:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) < 2 {
			break
		}
		uid, err1 := strconv.ParseUint(f[0], 10, 32)
		euid, err2 := strconv.ParseUint(f[1], 10, 32)
		if err1 != nil || err2 != nil {
			break
		}
		return Owner{UID: uint32(uid), EUID: uint32(euid)}, nil
	}
	return Owner{}, fmt.Errorf("status has no valid Uid: line")
}

// Cmdline reads /proc/<pid>/cmdline as its arguments (empty for a kernel
// thread or a zombie). A command line longer than 64 KiB is cut there.
func Cmdline(pid int) ([]string, error) {
	buf := make([]byte, 64<<10)
	b, err := readProcUpTo(procPath(pid, "cmdline"), buf)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}
