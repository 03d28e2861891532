package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/dhvisor/dhvisor/agent/runtime/logwriter"
	"github.com/dhvisor/dhvisor/agent/safefs"
	"github.com/dhvisor/dhvisor/test/need"
)

func TestOpenLog(t *testing.T) {
	need.Root(t, "files given to another user, links owned by one")
	tests := []struct {
		name    string
		plant   func(t *testing.T, dir, secret string) // what the service user left in its log directory
		sub     string                                 // the service's log directory below dir, created by the agent
		wantErr error
	}{
		{name: "new file"},
		{name: "appends to today's file", plant: func(t *testing.T, dir, _ string) {
			if err := os.WriteFile(filepath.Join(dir, logwriter.FileName("svc", time.Now())), []byte("earlier\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "today's file is a planted link", wantErr: safefs.ErrUnsafe, plant: func(t *testing.T, dir, secret string) {
			link := filepath.Join(dir, logwriter.FileName("svc", time.Now()))
			if err := os.Symlink(secret, link); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(link, 1234, 1234); err != nil {
				t.Fatal(err)
			}
		}},
		// The user can write the parent of a log directory the agent is to
		// create: it puts a link there to a root directory (/etc).
		{name: "log directory through a planted link", sub: "deeper", wantErr: safefs.ErrUnsafe, plant: func(t *testing.T, dir, secret string) {
			etc := filepath.Join(filepath.Dir(secret), "etc")
			if err := os.Mkdir(etc, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(etc, dir); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(dir, 1234, 1234); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := os.Lstat(filepath.Join(etc, "deeper")); err == nil {
					t.Error("the agent created a directory through the user's link")
				}
			})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir, secret := filepath.Join(root, "logs"), filepath.Join(root, "shadow")
			if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.plant != nil {
				tc.plant(t, dir, secret)
			}
			f, err := OpenLog(Spec{Name: "svc", LogDir: filepath.Join(dir, tc.sub)}, &syscall.Credential{Uid: 1234, Gid: 1235})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				var st syscall.Stat_t
				if err := syscall.Stat(secret, &st); err != nil || st.Uid != 0 || st.Size != int64(len("root only\n")) {
					t.Fatalf("the link's target changed: %+v %v", st, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("out\n"); err != nil {
				t.Fatal(err)
			}
			f.Close()
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(dir, logwriter.FileName("svc", time.Now())), &st); err != nil {
				t.Fatal(err)
			}
			if st.Uid != 1234 || st.Gid != 1235 {
				t.Fatalf("log file owned by %d:%d, want the service's 1234:1235", st.Uid, st.Gid)
			}
		})
	}
}
