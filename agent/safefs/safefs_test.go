package safefs

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true)")
		}
		t.Skip("needs root: links owned by another user")
	}
}

// tree builds a directory with a real file, a root-owned link to its
// directory and a link owned by uid 1234 (a service user's).
func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	real := filepath.Join(root, "real")
	must(t, os.Mkdir(real, 0o755))
	must(t, os.WriteFile(filepath.Join(real, "svc.pid"), []byte("123\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "secret"), []byte("root only"), 0o600))
	must(t, os.Symlink(real, filepath.Join(root, "rootlink")))
	must(t, os.Symlink(real, filepath.Join(root, "userlink")))
	must(t, os.Lchown(filepath.Join(root, "userlink"), 1234, 1234))
	must(t, os.Symlink("../secret", filepath.Join(real, "evil.pid")))
	must(t, unix.Mkfifo(filepath.Join(real, "fifo.pid"), 0o644))
	return root
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestReadFile(t *testing.T) {
	requireRoot(t)
	root := tree(t)
	tests := []struct {
		name    string
		path    string
		limit   int64
		want    string
		wantErr error // matched with errors.Is when set
		anyErr  bool
	}{
		{name: "plain", path: "real/svc.pid", limit: 64, want: "123\n"},
		{name: "through a root-owned link", path: "rootlink/svc.pid", limit: 64, want: "123\n"},
		{name: "through a user's link", path: "userlink/svc.pid", limit: 64, wantErr: ErrUnsafe},
		{name: "the file is a link", path: "real/evil.pid", limit: 64, wantErr: ErrUnsafe},
		{name: "a fifo does not block", path: "real/fifo.pid", limit: 64, wantErr: ErrUnsafe},
		{name: "too large", path: "real/svc.pid", limit: 2, anyErr: true},
		{name: "missing", path: "real/none.pid", limit: 64, wantErr: os.ErrNotExist},
		{name: "dot dot cleaned", path: "real/../real/svc.pid", limit: 64, want: "123\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ReadFile(filepath.Join(root, tc.path), tc.limit)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case tc.anyErr:
				if err == nil {
					t.Fatal("no error")
				}
			case err != nil:
				t.Fatal(err)
			case string(b) != tc.want:
				t.Fatalf("got %q, want %q", b, tc.want)
			}
		})
	}
}

func TestRemoveTakesTheLinkNotItsTarget(t *testing.T) {
	requireRoot(t)
	root := tree(t)
	d, err := OpenDir(filepath.Join(root, "real"))
	must(t, err)
	defer d.Close()
	must(t, d.Remove("evil.pid"))
	if _, err := os.Stat(filepath.Join(root, "secret")); err != nil {
		t.Fatalf("the link's target went too: %v", err)
	}
	if err := d.Remove("../secret"); err == nil {
		t.Fatal("a path with a slash was accepted as a name")
	}
}

func TestOpenAppendChownsTheOpenedFile(t *testing.T) {
	requireRoot(t)
	root := tree(t)
	d, err := OpenDir(filepath.Join(root, "real"))
	must(t, err)
	defer d.Close()
	if _, err := d.OpenAppend("evil.pid", 0o644, 1234, 1234); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("a link was opened for writing: %v", err)
	}
	var st syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(root, "secret"), &st))
	if st.Uid != 0 {
		t.Fatalf("the link's target was given to uid %d", st.Uid)
	}
	f, err := d.OpenAppend("new.log", 0o640, 1234, 1235)
	must(t, err)
	_, err = f.WriteString("x\n")
	must(t, err)
	f.Close()
	must(t, syscall.Stat(filepath.Join(root, "real", "new.log"), &st))
	if st.Uid != 1234 || st.Gid != 1235 || st.Mode&0o777 != 0o640 {
		t.Fatalf("new.log is %d:%d %o", st.Uid, st.Gid, st.Mode&0o777)
	}
}

func TestOpenDirRefusesRelative(t *testing.T) {
	if _, err := OpenDir("relative/dir"); err == nil {
		t.Fatal("a relative path was accepted")
	}
}

func TestMkdirAll(t *testing.T) {
	requireRoot(t)
	root := tree(t)
	for _, tc := range []struct {
		name    string
		dir     string
		created string // a directory that must exist afterwards
		unsafe  bool
	}{
		{name: "new components", dir: "a/b/c", created: "a/b/c"},
		{name: "existing", dir: "real", created: "real"},
		{name: "through a root link", dir: "rootlink/sub", created: "real/sub"},
		// A service user swaps its log directory for a link to /etc:
		// nothing may be created where the link points.
		{name: "through a user's link", dir: "userlink/other", unsafe: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := MkdirAll(filepath.Join(root, tc.dir), 0o755)
			if tc.unsafe {
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("MkdirAll = %v, want ErrUnsafe", err)
				}
				if _, err := os.Stat(filepath.Join(root, "real", "other")); err == nil {
					t.Fatal("a directory was created through the user's link")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if st, err := os.Lstat(filepath.Join(root, tc.created)); err != nil || !st.IsDir() {
				t.Fatalf("%s: %v", tc.created, err)
			}
		})
	}
	if _, err := MkdirAll("relative", 0o755); err == nil {
		t.Fatal("a relative path was accepted")
	}
}
