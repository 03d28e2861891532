// Package debpkg is a test fixture: real .deb packages of the stand-in
// service, built with dpkg-deb, and private dpkg roots to install them in,
// so upgrade tests run the real package tool without touching the machine.
//
// A package NAME_VERSION holds /usr/illumon/NAME-VERSION/bin/dh-standin and
// a launcher next to it that runs it with --release=VERSION; its postinst
// points /usr/illumon/latest at the release, as Deephaven's package does.
// Maintainer scripts run outside the root (dpkg --force-script-chrootless),
// with DPKG_ROOT naming it.
package debpkg

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Spec describes one package.
type Spec struct {
	Name    string
	Version string
	Standin string // the dh-standin binary shipped in the package
	// FailPostinstIf makes the postinst fail (exit 1, with a message on
	// stderr) on a node whose root has this file (relative to the root).
	FailPostinstIf string
}

// Build writes NAME_VERSION.deb into dir and returns its path.
func Build(dir string, s Spec) (string, error) {
	tree, err := os.MkdirTemp(dir, "tree-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tree)
	bin := filepath.Join(tree, "usr/illumon", s.Name+"-"+s.Version, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(tree, "DEBIAN"), 0o755); err != nil {
		return "", err
	}
	standin, err := os.ReadFile(s.Standin)
	if err != nil {
		return "", err
	}
	launcher := fmt.Sprintf("#!/bin/sh\nexec \"$(dirname \"$0\")/dh-standin\" --release=%s \"$@\"\n", s.Version)
	fail := ""
	if s.FailPostinstIf != "" {
		fail = fmt.Sprintf("if [ -e \"$DPKG_ROOT/%s\" ]; then\n  echo \"postinst: cannot configure %s %s on this node\" >&2\n  exit 1\nfi\n", strings.TrimPrefix(s.FailPostinstIf, "/"), s.Name, s.Version)
	}
	files := map[string]struct {
		data string
		mode os.FileMode
	}{
		filepath.Join(bin, "dh-standin"):       {string(standin), 0o755},
		filepath.Join(bin, "launch"):           {launcher, 0o755},
		filepath.Join(tree, "DEBIAN/control"):  {fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: dhvisor tests <tests@dhvisor.invalid>\nDescription: Deephaven stand-in for upgrade tests\n", s.Name, s.Version), 0o644},
		filepath.Join(tree, "DEBIAN/postinst"): {fmt.Sprintf("#!/bin/sh\nset -e\n%sln -sfn %s-%s \"$DPKG_ROOT/usr/illumon/latest\"\n", fail, s.Name, s.Version), 0o755},
	}
	for path, f := range files {
		if err := os.WriteFile(path, []byte(f.data), f.mode); err != nil {
			return "", err
		}
	}
	out := filepath.Join(dir, s.Name+"_"+s.Version+".deb")
	// Uncompressed: a test package is built and installed often, never shipped.
	if b, err := exec.Command("dpkg-deb", "--root-owner-group", "-Znone", "--build", tree, out).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb --build: %v\n%s", err, b)
	}
	return out, nil
}

// InitRoot makes root a dpkg root with an empty package database.
func InitRoot(root string) error {
	admin := filepath.Join(root, "var/lib/dpkg")
	for _, d := range []string{"info", "updates", "triggers"} {
		if err := os.MkdirAll(filepath.Join(admin, d), 0o755); err != nil {
			return err
		}
	}
	for _, f := range []string{"status", "available"} {
		if err := os.WriteFile(filepath.Join(admin, f), nil, 0o644); err != nil {
			return err
		}
	}
	return os.MkdirAll(filepath.Join(root, "usr/illumon"), 0o755)
}

// InstallCommand is dpkg installing into root, as an agent's
// packages.install template.
func InstallCommand(root string) []string {
	return []string{"dpkg", "--root=" + root, "--force-script-chrootless", "-i", "{{.File}}"}
}

// QueryCommand is dpkg-query reading root's database, as an agent's
// packages.query template.
func QueryCommand(root string) []string {
	return []string{"dpkg-query", "--admindir=" + filepath.Join(root, "var/lib/dpkg"), "-W", "-f=${db:Status-Abbrev} ${Version}\\n", "{{.Package}}"}
}

// YAMLList writes argv as a YAML flow list of single-quoted strings.
func YAMLList(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
	}
	return strings.Join(q, ", ")
}

// Install installs a package into root directly (a node's first install,
// before any agent runs).
func Install(root, deb string) error {
	argv := InstallCommand(root)
	argv[len(argv)-1] = deb
	if b, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(argv, " "), err, b)
	}
	return nil
}

// Installed is what root's database says of pkg: "ii 1.0" when installed.
func Installed(root, pkg string) (string, error) {
	argv := QueryCommand(root)
	argv[len(argv)-2] = "-f=${db:Status-Abbrev} ${Version}"
	argv[len(argv)-1] = pkg
	b, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	return strings.Join(strings.Fields(string(b)), " "), err
}
