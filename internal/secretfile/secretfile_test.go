package secretfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeInfo is a file of any owner and mode, which a test not run as root
// cannot make on disk.
type fakeInfo struct {
	mode     os.FileMode
	uid, gid uint32
}

func (f fakeInfo) Name() string       { return "k" }
func (f fakeInfo) Size() int64        { return 1 }
func (f fakeInfo) Mode() os.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return &syscall.Stat_t{Uid: f.uid, Gid: f.gid} }

func TestCheck(t *testing.T) {
	const daemonUID, daemonGID = 990, 991
	for _, tc := range []struct {
		name string
		fi   fakeInfo
		want string // "" accepted, else part of the error
	}{
		{"root 0600", fakeInfo{0o600, 0, 0}, ""},
		{"root 0400", fakeInfo{0o400, 0, 0}, ""},
		{"root:root 0640", fakeInfo{0o640, 0, 0}, ""},
		{"root:daemon 0640", fakeInfo{0o640, 0, daemonGID}, ""},
		{"daemon's own 0600", fakeInfo{0o600, daemonUID, daemonGID}, ""},
		{"root:other group 0640", fakeInfo{0o640, 0, 1000}, "has mode 0640 (group 1000)"},
		{"world readable", fakeInfo{0o644, 0, 0}, "has mode 0644 (group 0): a secret must be 0600, or 0640 with group root or gid 991"},
		{"group writable", fakeInfo{0o660, 0, 0}, "has mode 0660"},
		{"others write only", fakeInfo{0o602, 0, 0}, "has mode 0602"},
		{"another user's", fakeInfo{0o600, 1000, 1000}, "belongs to uid 1000"},
		{"directory", fakeInfo{os.ModeDir | 0o700, 0, 0}, "not a regular file"},
		{"fifo", fakeInfo{os.ModeNamedPipe | 0o600, 0, 0}, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := check("/etc/dhvisor/tls/k.pem", tc.fi, daemonUID, daemonGID)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatal("accepted")
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q lacks %q", err, tc.want)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "/etc/dhvisor/tls/k.pem ") {
				t.Errorf("error does not start with the file: %v", err)
			}
		})
	}
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := Read(good); err != nil || string(b) != "secret" {
		t.Fatalf("Read = %q, %v", b, err)
	}
	loose := filepath.Join(dir, "loose")
	if err := os.WriteFile(loose, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(loose); err == nil || !strings.Contains(err.Error(), "has mode 0644") {
		t.Fatalf("Read of a 0644 file: %v", err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(fifo); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("Read of a FIFO: %v", err)
	}
	if _, err := Read(filepath.Join(dir, "missing")); err == nil || !strings.HasPrefix(err.Error(), filepath.Join(dir, "missing")+": ") {
		t.Fatalf("Read of a missing file: %v", err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Read of a huge file: %v", err)
	}
}
