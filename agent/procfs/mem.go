package procfs

import "golang.org/x/sys/unix"

// MemTotal is the host's physical memory in bytes, which monit's
// "memory > N%" limits are a share of.
func MemTotal() (uint64, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, err
	}
	return uint64(si.Totalram) * uint64(si.Unit), nil
}
