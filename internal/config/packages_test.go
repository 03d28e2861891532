package config

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"github.com/dhvisor/dhvisor/test/need"
)

func TestPackages(t *testing.T) {
	base := "node: n1\nroles: [query]\nroles_dir: roles.d\nstate_dir: /var/lib/dhv\n" + standinDefaults
	tests := []struct {
		name  string
		extra string
		want  string // an error with file:line and field; "" valid
	}{
		{"defaults", "", ""},
		{"templates", "packages:\n  install: [dpkg, --root=/r, -i, '{{.File}}']\n  query: [dpkg-query, -W, '{{.Package}}']\n", ""},
		{"unknown tool", "packages:\n  tool: zypper\n", `agent.yaml:10: packages.tool: "zypper" is not a package tool (expected one of apt, dnf, dpkg, rpm, yum, auto)`},
		{"bad template", "packages:\n  install:\n    - dpkg\n    - '{{.Fil}}'\n", `agent.yaml:12: packages.install.1: template "{{.Fil}}"`},
		{"unclosed template", "packages:\n  query: ['{{.Package']\n", `agent.yaml:10: packages.query.0: template "{{.Package"`},
		{"empty program", "packages:\n  install: ['', x]\n", `agent.yaml:10: packages.install.0: the program to run is empty`},
		{"negative timeout", "packages:\n  timeout: -1s\n", `agent.yaml:10: duration "-1s" must not be negative`},
		{"unknown field", "packages:\n  tools: dpkg\n", `agent.yaml:10: packages.tools: unknown field`},
		{"reserve", "packages:\n  reserve: 2GiB\n", ""},
		{"reserve zero", "packages:\n  reserve: 0\n", `agent.yaml:10: packages.reserve: 0: expected 1.0MiB to 1024.0GiB of free space to keep`},
		{"reserve too small", "packages:\n  reserve: 4KiB\n", `agent.yaml:10: packages.reserve: 4KiB: expected 1.0MiB`},
		{"reserve not a size", "packages:\n  reserve: lots\n", `agent.yaml:10: "lots" is not a size`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"agent.yaml": base + tt.extra})
			n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				p := n.Agent.Packages
				if p.Name != "illumon-db" || p.Tool != "auto" || p.CacheDir != "/var/lib/dhv/packages" || p.Timeout.D() != 30*time.Minute || (p.Reserve != DefaultPackageReserve && p.Reserve != 2<<30) {
					t.Errorf("defaults: %+v", p)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	// A tool named explicitly must be on the node.
	dir := writeFiles(t, map[string]string{"agent.yaml": base + "packages:\n  tool: dnf\n"})
	if _, err := LoadAgent(filepath.Join(dir, "agent.yaml")); err == nil || !strings.Contains(err.Error(), "packages.tool: dnf needs dnf, which is not on this node's PATH") {
		if have("dnf") {
			t.Skip("this machine has dnf")
		}
		t.Fatalf("got %v", err)
	}
	// The template sees the package.
	argv, err := PackageCommand{File: "/c/x.deb", Package: "illumon-db", Version: "2.0", Downgrade: true}.Command([]string{"tool", "{{if .Downgrade}}--downgrade{{end}}", "{{.Package}}={{.Version}}", "{{.File}}"})
	if err != nil || strings.Join(argv, " ") != "tool --downgrade illumon-db=2.0 /c/x.deb" {
		t.Fatalf("expanded %v, %v", argv, err)
	}
}

func have(prog string) bool {
	_, err := exec.LookPath(prog)
	return err == nil
}

// packages.keyring must be OpenPGP keys in a file only root can change.
func TestPackagesKeyring(t *testing.T) {
	need.Root(t, "files owned by root and by another user")
	e, err := openpgp.NewEntity("signer", "", "signer@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys bytes.Buffer
	w, _ := armor.Encode(&keys, openpgp.PublicKeyType, nil)
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	base := "node: n1\nroles: [query]\nroles_dir: roles.d\nstate_dir: /var/lib/dhv\n" + standinDefaults
	for _, tt := range []struct {
		name, extra string
		mod         func(file string) error
		want        string
	}{
		{"good", "packages:\n  require_signature: true\n  keyring: keys.asc\n", nil, ""},
		{"no keyring", "packages:\n  require_signature: true\n", nil, "agent.yaml:10: packages.keyring: required with require_signature"},
		{"keyring alone", "packages:\n  keyring: keys.asc\n", nil, "agent.yaml:10: packages.keyring: set, but require_signature is false"},
		{"missing", "packages:\n  require_signature: true\n  keyring: nope.asc\n", nil, "agent.yaml:11: packages.keyring: cannot read"},
		{"group-writable", "packages:\n  require_signature: true\n  keyring: keys.asc\n", func(f string) error { return os.Chmod(f, 0o664) }, "writable by its group or others (mode 0664)"},
		{"a user's", "packages:\n  require_signature: true\n  keyring: keys.asc\n", func(f string) error { return os.Chown(f, 1234, 1234) }, "is owned by uid 1234"},
		{"a link", "packages:\n  require_signature: true\n  keyring: link.asc\n", nil, "link.asc is not a regular file"},
		{"not keys", "packages:\n  require_signature: true\n  keyring: keys.asc\n", func(f string) error { return os.WriteFile(f, []byte("keys"), 0o644) }, "not an OpenPGP keyring"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"agent.yaml": base + tt.extra, "keys.asc": keys.String()})
			keyring := filepath.Join(dir, "keys.asc")
			if err := os.Symlink(keyring, filepath.Join(dir, "link.asc")); err != nil {
				t.Fatal(err)
			}
			if tt.mod != nil {
				if err := tt.mod(keyring); err != nil {
					t.Fatal(err)
				}
			}
			n, err := LoadAgent(filepath.Join(dir, "agent.yaml"))
			if tt.want == "" {
				if err != nil || n.Agent.Packages.Keyring != keyring || !n.Agent.Packages.RequireSignature {
					t.Fatalf("%v %+v", err, n)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
