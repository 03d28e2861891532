package gossip

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

func TestLoadKeyring(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	tests := []struct {
		name    string
		mode    os.FileMode
		lines   []string
		wantErr string // "" = ok
		want    [][]byte
	}{
		{"one key", 0o600, []string{b64(k1)}, "", [][]byte{k1}},
		{"primary first, comments and blanks", 0o400, []string{"# rotated 2024-05", "", b64(k2), "  " + b64(k1) + "  "}, "", [][]byte{k2, k1}},
		{"world readable", 0o644, []string{b64(k1)}, "has mode 0644 (group 0): a secret must be 0600, or 0640 with group root", nil},
		{"group writable", 0o660, []string{b64(k1)}, "mode 0660", nil},
		// The file's group is the test's own: root's, or the daemon's.
		{"group readable, own group", 0o640, []string{b64(k1)}, "", [][]byte{k1}},
		{"bad base64", 0o600, []string{b64(k1), "not*base64"}, "gossip.key:2: gossip key is not valid base64", nil},
		{"wrong length", 0o600, []string{"", b64(k1[:16])}, "gossip.key:2: gossip key is 16 bytes, want 32", nil},
		{"duplicate", 0o600, []string{b64(k1), b64(k1)}, "gossip.key:2: duplicate key (same as line 1)", nil},
		{"empty", 0o600, []string{"# nothing"}, "no keys", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := writeKeys(t, t.TempDir(), tc.mode, tc.lines...)
			ring, err := LoadKeyring(p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), b64(k1)) {
					t.Error("error message leaks the key")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := ring.GetKeys(); !slices.EqualFunc(got, tc.want, func(a, b []byte) bool { return string(a) == string(b) }) {
				t.Errorf("keys in wrong order")
			}
		})
	}
	if _, err := LoadKeyring(filepath.Join(t.TempDir(), "missing")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// The key file written is the one LoadKeyring reads back, primary first
// (atomicity and mode are atomicfile's, tested there).
func TestWriteKeyFileRoundTrip(t *testing.T) {
	p := writeKeys(t, t.TempDir(), 0o600, b64(newKey(t)))
	k1, k2 := newKey(t), newKey(t)
	if err := writeKeyFile(p, [][]byte{k2, k1}); err != nil {
		t.Fatal(err)
	}
	ring, err := LoadKeyring(p)
	if err != nil || string(ring.GetPrimaryKey()) != string(k2) || len(ring.GetKeys()) != 2 {
		t.Fatalf("reload: %v", err)
	}
}

// Key operations converge whatever order they arrive in: every
// permutation of install(k2), use(k2), remove(k1) ends with k2 alone.
func TestKeyOpsAnyOrder(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	ops := []keyOp{
		{Op: keyOpInstall, Version: 10, Key: k2, From: "a"},
		{Op: keyOpUse, Version: 20, Key: k2, From: "b"},
		{Op: keyOpRemove, Version: 30, Key: k1, From: "c"},
	}
	perms := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
	for _, perm := range perms {
		ring, _ := memberlist.NewKeyring(nil, k1)
		g, err := New(Config{NodeName: "me", Keyring: ring, Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		d := &delegate{g: g}
		for _, i := range perm {
			d.NotifyMsg(encodeKeyOp(ops[i]))
		}
		// Duplicates (relays) change nothing.
		d.NotifyMsg(encodeKeyOp(ops[perm[0]]))
		if got := g.Keys().List(); len(got) != 1 || got[0] != b64(k2) {
			t.Errorf("order %v: keys %d, primary is k2: %v", perm, len(got), len(got) > 0 && got[0] == b64(k2))
		}
	}
}

func TestKeyManagerLocalChecks(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	p := writeKeys(t, t.TempDir(), 0o600, b64(k1))
	g, err := New(Config{NodeName: "me", KeyFile: p, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	km := g.Keys()
	if err := km.Use(b64(k2)); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("Use(not installed) = %v", err)
	}
	if err := km.Remove(b64(k1)); err == nil || !strings.Contains(err.Error(), "primary") {
		t.Errorf("Remove(primary) = %v", err)
	}
	if err := km.Install("short"); err == nil {
		t.Error("Install(bad key) succeeded")
	}
	if err := km.Install(b64(k2)); err != nil {
		t.Fatal(err)
	}
	if err := km.Install(b64(k2)); err != nil { // idempotent
		t.Fatal(err)
	}
	if got := km.List(); len(got) != 2 || got[0] != b64(k1) || got[1] != b64(k2) {
		t.Errorf("List = %d keys", len(got))
	}
	// A failed write changes nothing. The key file is put below a regular
	// file, which fails for root too (directory permissions would not).
	km.path = filepath.Join(p, "unwritable")
	if err := km.Use(b64(k2)); err == nil {
		t.Error("Use succeeded though the key file cannot be written")
	}
	if got := km.List(); got[0] != b64(k1) {
		t.Error("failed Use changed the primary")
	}
	km.path = p

	plain, _ := New(Config{NodeName: "plain"})
	if err := plain.Keys().Install(b64(k1)); !errors.Is(err, ErrNoEncryption) {
		t.Errorf("Install without encryption = %v", err)
	}
	id, err := KeyID(b64(k1))
	if err != nil || len(id) != 8 {
		t.Errorf("KeyID = %q, %v", id, err)
	}
	if k, err := GenerateKey(); err != nil {
		t.Error(err)
	} else if _, err := parseKey(k); err != nil {
		t.Error(err)
	}
}
