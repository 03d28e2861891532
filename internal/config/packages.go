package config

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/dhvisor/dhvisor/internal/pkgsig"
)

// Packages is how the agent installs the Deephaven package in an upgrade
// (agent.yaml packages:).
type Packages struct {
	// Name is the Deephaven package whose installed version the node
	// reports until an upgrade names another (default illumon-db).
	Name string `yaml:"name"`
	// Tool is the package tool: auto (default: by the package's format,
	// the first of dnf, yum, rpm or apt-get, dpkg the node has), or one of
	// them by name.
	Tool string `yaml:"tool"`
	// Install is a command template replacing the tool's install command:
	// {{.File}}, {{.Package}}, {{.Version}}, {{.Downgrade}} (a revert).
	Install []string `yaml:"install"`
	// Query is a command template printing the installed version of
	// {{.Package}}, optionally after dpkg's status abbreviation ("ii 1.2-1");
	// no output or a "not installed" failure means none is.
	Query []string `yaml:"query"`
	// CacheDir keeps fetched packages (default <state_dir>/packages).
	CacheDir string `yaml:"cache_dir"`
	// Timeout bounds one install (default 30m).
	Timeout Duration `yaml:"timeout"`
	// Reserve is the free space a package fetch must leave on the cache's
	// file system (default 256MiB): the agent's state file shares it.
	Reserve ByteSize `yaml:"reserve"`
	// RequireSignature installs only packages signed by a key of Keyring:
	// an .rpm's own signature (rpm -K), a .deb's detached OpenPGP
	// signature (uploaded with it, or PACKAGE.sig or .asc beside a path).
	RequireSignature bool `yaml:"require_signature"`
	// Keyring is the OpenPGP public keys (armored or binary) that sign
	// packages; a root-owned file no group or other user can write.
	Keyring string `yaml:"keyring"`
}

// Bounds of packages.reserve: below the minimum a full disk could stop
// the agent's state writes; above the maximum it refuses every fetch.
const (
	DefaultPackageReserve = 256 << 20
	minPackageReserve     = 1 << 20
	maxPackageReserve     = 1 << 40
)

// PackageTools are the tools packages.tool may name, with the programs each
// needs on the node.
var PackageTools = map[string][]string{
	"dnf": {"dnf", "rpm"}, "yum": {"yum", "rpm"}, "rpm": {"rpm"},
	"apt": {"apt-get", "dpkg-query", "dpkg-deb"}, "dpkg": {"dpkg", "dpkg-query", "dpkg-deb"},
}

// PackageCommand is what packages.install and packages.query templates see.
type PackageCommand struct {
	File, Package, Version string
	Downgrade              bool
}

// Command expands the command template tmpl for this package.
func (c PackageCommand) Command(tmpl []string) ([]string, error) {
	out := make([]string, len(tmpl))
	for i, a := range tmpl {
		t, err := template.New("").Option("missingkey=error").Parse(a)
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		if err := t.Execute(&b, c); err != nil {
			return nil, err
		}
		out[i] = b.String()
	}
	return out, nil
}

func (p *Packages) applyDefaults(stateDir, dir string) {
	if p.Name == "" {
		p.Name = "illumon-db"
	}
	if p.Tool == "" {
		p.Tool = "auto"
	}
	if p.CacheDir == "" {
		p.CacheDir = filepath.Join(stateDir, "packages")
	} else if !filepath.IsAbs(p.CacheDir) {
		p.CacheDir = filepath.Join(dir, p.CacheDir)
	}
	if p.Timeout == 0 {
		p.Timeout = Duration(30 * time.Minute)
	}
	if p.Reserve == 0 {
		p.Reserve = DefaultPackageReserve
	}
	if p.Keyring != "" && !filepath.IsAbs(p.Keyring) {
		p.Keyring = filepath.Join(dir, p.Keyring)
	}
}

// checkKeyring says what is wrong with a keyring file root is to trust:
// it must be a regular file of root's that no group or other user can
// write, holding OpenPGP public keys.
func checkKeyring(file string) string {
	st, err := os.Lstat(file)
	if err != nil {
		return fmt.Sprintf("cannot read %s: %v", file, errors.Unwrap(err))
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.Mode().IsRegular():
		return fmt.Sprintf("%s is not a regular file (a link or a directory): name the keyring file itself", file)
	case sys != nil && sys.Uid != 0:
		return fmt.Sprintf("%s is owned by uid %d: the keys that decide what root installs must be root's (chown root %s)", file, sys.Uid, file)
	case st.Mode().Perm()&0o022 != 0:
		return fmt.Sprintf("%s is writable by its group or others (mode %04o): chmod 0644 %s", file, st.Mode().Perm(), file)
	case st.Size() > pkgsig.MaxKeyring:
		return fmt.Sprintf("%s is %d bytes: larger than any keyring (at most %d)", file, st.Size(), pkgsig.MaxKeyring)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("cannot read %s: %v", file, errors.Unwrap(err))
	}
	if _, err := pkgsig.ReadKeyring(b); err != nil {
		return fmt.Sprintf("%s: %v (expected OpenPGP public keys, e.g. gpg --armor --export KEYID)", file, err)
	}
	return ""
}

// validatePackages checks packages: its tool exists on this node, its
// templates parse and name only what they may.
func (n *Node) validatePackages(es *Errors, src *source, org origins) {
	p := n.Agent.Packages
	loc := func(path ...string) int {
		_, l := locate(org, src.root, src.file, append([]string{"packages"}, path...)...)
		return l
	}
	if p.Tool != "auto" {
		progs, ok := PackageTools[p.Tool]
		if !ok {
			names := append(slices.Sorted(maps.Keys(PackageTools)), "auto")
			es.add(src.file, loc("tool"), "packages.tool", "%q is not a package tool (expected one of %s)", p.Tool, strings.Join(names, ", "))
		} else if len(p.Install) == 0 || len(p.Query) == 0 {
			for _, prog := range progs {
				if _, err := exec.LookPath(prog); err != nil {
					es.add(src.file, loc("tool"), "packages.tool", "%s needs %s, which is not on this node's PATH", p.Tool, prog)
				}
			}
		}
	}
	section, _ := mapValue(src.root, "packages")
	// The value as written: an explicit 0 must not pass as the default.
	if v, _ := mapValue(section, "reserve"); v != nil {
		if b, err := ParseByteSize(v.Value); err == nil && (b < minPackageReserve || b > maxPackageReserve) {
			es.add(src.file, loc("reserve"), "packages.reserve", "%s: expected %s to %s of free space to keep", v.Value, ByteSize(minPackageReserve), ByteSize(maxPackageReserve))
		}
	}
	switch {
	case p.RequireSignature && p.Keyring == "":
		es.add(src.file, loc("require_signature"), "packages.keyring", "required with require_signature: the OpenPGP public keys packages must be signed with")
	case p.Keyring != "" && !p.RequireSignature:
		es.add(src.file, loc("keyring"), "packages.keyring", "set, but require_signature is false: nothing would be checked against it")
	case p.Keyring != "":
		if msg := checkKeyring(p.Keyring); msg != "" {
			es.add(src.file, loc("keyring"), "packages.keyring", "%s", msg)
		}
	}
	sample := PackageCommand{File: "/tmp/x.rpm", Package: "illumon-db", Version: "1.0", Downgrade: true}
	for _, f := range []struct {
		key  string
		tmpl []string
	}{{"install", p.Install}, {"query", p.Query}} {
		for i, a := range f.tmpl {
			if _, err := sample.Command([]string{a}); err != nil {
				es.add(src.file, loc(f.key, strconv.Itoa(i)), "packages."+f.key+"."+strconv.Itoa(i), "template %q: %v (it may use {{.File}}, {{.Package}}, {{.Version}}, {{.Downgrade}})", a, cleanTemplateErr(err))
			}
		}
		if len(f.tmpl) > 0 && strings.TrimSpace(f.tmpl[0]) == "" {
			es.add(src.file, loc(f.key, "0"), "packages."+f.key+".0", "the program to run is empty")
		}
	}
}
