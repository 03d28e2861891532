package ctl

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/internal/gossip"
)

const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // 32 bytes

func TestParseKeyInput(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
	}{
		{"one line", testKey + "\n", ""},
		{"no newline, spaces", "  " + testKey + "  ", ""},
		{"with comments", "# new key\n\n" + testKey + "\n# end\n", ""},
		{"empty", "", "no key"},
		{"only comments", "# nothing\n", "no key"},
		{"two keys", testKey + "\n" + testKey + "\n", "2 keys"},
		{"not base64", "not a key!\n", "not valid base64"},
		{"short", "MDEyMzQ1Njc4OWFiY2RlZg==\n", "16 bytes, want 32"},
		{"too long", strings.Repeat("#", keyInputLimit+10), "more than 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseKeyInput(strings.NewReader(tc.in))
			if tc.err == "" {
				if err != nil || got != testKey {
					t.Fatalf("= %q, %v", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
}

func FuzzParseKeyInput(f *testing.F) {
	f.Add(testKey + "\n")
	f.Add("# c\n" + testKey)
	f.Add("\x00\xff\n")
	f.Fuzz(func(t *testing.T, in string) {
		key, err := parseKeyInput(strings.NewReader(in))
		if err != nil {
			// An error never carries what was read (a line with = or
			// +, which no error's own words have, stands for a key).
			for _, line := range strings.Split(in, "\n") {
				if l := strings.TrimSpace(line); len(l) >= 8 && strings.ContainsAny(l, "=+") && strings.Contains(err.Error(), l) {
					t.Fatalf("error %q holds input line %q", err, l)
				}
			}
			return
		}
		if _, err := gossip.KeyID(key); err != nil {
			t.Fatalf("accepted %q: %v", key, err)
		}
	})
}

// Keys are never taken on the command line; ids are, and files must be
// private and hold one key.
func TestGossipKeyArguments(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	if err := os.WriteFile(open, []byte(testKey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "no-agent.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install", testKey}, "never from the command line"},
		{[]string{"use", testKey}, "that is a key, not a key id"},
		{[]string{"remove", testKey}, "that is a key, not a key id"},
		{[]string{"use", "xyz"}, "3 characters: not a key id"},
		{[]string{"use", "0123abcd", "--key-file", open}, "not both"},
		{[]string{"install", "--key-file", open}, "a secret must be 0600"},
		{[]string{"use", "0123abcd"}, "cannot reach the agent"},
	} {
		var out, errOut bytes.Buffer
		code := Execute(append([]string{"--socket", sock, "gossip", "keys"}, tc.args...), &out, &errOut)
		if code != ExitError || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", tc.args, code, errOut.String(), ExitError, tc.want)
		}
		if strings.Contains(errOut.String()+out.String(), testKey) {
			t.Errorf("%v: the key is in the output", tc.args)
		}
	}
}

// generate --key-file writes a new private file and never replaces one.
func TestGenerateKeyFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "new.key")
	var out, errOut bytes.Buffer
	if code := Execute([]string{"gossip", "keys", "generate", "--key-file", file}, &out, &errOut); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v, want mode 0600", fi.Mode(), err)
	}
	b, _ := os.ReadFile(file)
	id, err := gossip.KeyID(strings.TrimSpace(string(b)))
	if err != nil || !strings.Contains(out.String(), id) || strings.Contains(out.String(), strings.TrimSpace(string(b))) {
		t.Fatalf("output %q for key id %s (%v)", out.String(), id, err)
	}
	if code := Execute([]string{"gossip", "keys", "generate", "--key-file", file}, &out, &errOut); code != ExitError || !strings.Contains(errOut.String(), "exists") {
		t.Fatalf("second generate: exit %d, %s", code, errOut.String())
	}
}
