package runtime

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/dhvisor/dhvisor/agent/runtime/logwriter"
	"github.com/dhvisor/dhvisor/agent/safefs"
)

// OpenLog opens the file a start, stop or restart program's stdout and
// stderr are appended to, LogDir/logwriter.FileName(Name, now), owned by
// the service's user; /dev/null without a LogDir. The program is short
// lived, so the file is handed to it directly and read back for the
// status of a program that failed. The directory is the user's to write,
// so the file is opened through it without following a link the user may
// have planted there.
func OpenLog(spec Spec, cred *syscall.Credential) (*os.File, error) {
	if spec.LogDir == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	d, err := openLogDir(spec, cred)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	uid, gid := owner(cred)
	f, err := d.OpenAppend(logwriter.FileName(spec.Name, time.Now()), 0o644, uid, gid)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return f, nil
}

// Output is where a foreground service's stdout and stderr go.
type Output struct {
	// File is for the service.
	File *os.File
	pipe *logwriter.Output
}

// OpenOutput prepares a foreground service's output: a pipe to a
// logwriter that appends to the same dated file as OpenLog, and to the
// next day's from local midnight; /dev/null without a LogDir. The caller
// starts the service with File, then calls Started, and Close in any case.
func OpenOutput(spec Spec, cred *syscall.Credential) (*Output, error) {
	if spec.LogDir == "" {
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		return &Output{File: f}, err
	}
	d, err := openLogDir(spec, cred)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	p, err := logwriter.Pipe(d, spec.Name, cred)
	if err != nil {
		return nil, err
	}
	return &Output{File: p.File, pipe: p}, nil
}

// Started starts the writer, once the service runs.
func (o *Output) Started() error {
	if o.pipe == nil {
		return nil
	}
	return o.pipe.Start()
}

// Close releases the agent's copies.
func (o *Output) Close() {
	if o.pipe != nil {
		o.pipe.Close()
		return
	}
	o.File.Close()
}

// openLogDir creates the service's log directory if need be, gives it to
// the service's user, and opens it without following a user's link.
func openLogDir(spec Spec, cred *syscall.Credential) (*safefs.Dir, error) {
	d, err := safefs.MkdirAll(spec.LogDir, 0o755)
	if err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	if cred != nil {
		// Through the descriptor just opened, never by path: the path
		// may have been changed to a user's link since.
		uid, gid := owner(cred)
		if err := d.Chown(uid, gid); err != nil {
			d.Close()
			return nil, fmt.Errorf("log directory: %w", err)
		}
	}
	return d, nil
}

func owner(cred *syscall.Credential) (uid, gid int) {
	if cred == nil {
		return -1, -1
	}
	return int(cred.Uid), int(cred.Gid)
}
