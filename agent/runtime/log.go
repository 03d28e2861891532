package runtime

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/agent/safefs"
)

// startupLogLayout dates a service's output file, as Deephaven's launcher
// names its "startup script log": <name>.log.YYYY-MM-DD.
const startupLogLayout = "2006-01-02"

// LogName is the file in the log directory that a service started at t
// writes its stdout and stderr to: <name>.log.YYYY-MM-DD, local time.
func LogName(name string, t time.Time) string {
	return name + ".log." + t.Format(startupLogLayout)
}

// OpenLog opens the file a service's stdout and stderr are appended to,
// LogDir/LogName(Name, now), owned by the service's user so that the
// service may reopen or rotate it; /dev/null without a LogDir. The
// directory is the user's to write, so the file is opened through it
// without following a link the user may have planted there.
func OpenLog(spec Spec, cred *syscall.Credential) (*os.File, error) {
	if spec.LogDir == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(spec.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	d, err := safefs.OpenDir(spec.LogDir)
	if err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	defer d.Close()
	uid, gid := -1, -1
	if cred != nil {
		uid, gid = int(cred.Uid), int(cred.Gid)
	}
	f, err := d.OpenAppend(LogName(spec.Name, time.Now()), 0o644, uid, gid)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	if cred != nil {
		// The directory itself is root's to create: only its owner
		// changes, and only when the path has no user's link in it.
		_ = os.Lchown(spec.LogDir, uid, gid)
	}
	return f, nil
}
