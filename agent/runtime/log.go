package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// OpenLog opens the file a service's stdout and stderr are appended to,
// LogDir/<Name>.stdout.log, owned by the service's user so that the service
// may reopen or rotate it; /dev/null without a LogDir.
func OpenLog(spec Spec, cred *syscall.Credential) (*os.File, error) {
	if spec.LogDir == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err := os.MkdirAll(spec.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	name := filepath.Join(spec.LogDir, spec.Name+".stdout.log")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	if cred != nil {
		_ = os.Chown(spec.LogDir, int(cred.Uid), int(cred.Gid))
		_ = f.Chown(int(cred.Uid), int(cred.Gid))
	}
	return f, nil
}
