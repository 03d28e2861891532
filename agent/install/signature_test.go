package install

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"github.com/dhvisor/dhvisor/internal/config"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
	"github.com/dhvisor/dhvisor/test/need"
)

func armoredKey(t *testing.T, e *openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return b.Bytes()
}

func detachSign(t *testing.T, e *openpgp.Entity, file string) []byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&b, e, f, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// withKeyring starts an installer like f's that requires signatures by
// the keys in keyring (a file only root can write).
func (f *fixture) withKeyring(keyring []byte, mod func(*config.Packages)) *Installer {
	f.t.Helper()
	file := filepath.Join(need.RootOnlyDir(f.t), "keys.asc")
	if err := os.WriteFile(file, keyring, 0o644); err != nil {
		f.t.Fatal(err)
	}
	cfg := f.cfg()
	cfg.RequireSignature, cfg.Keyring = true, file
	if mod != nil {
		mod(&cfg)
	}
	in := New(cfg, f.src, filepath.Join(f.t.TempDir(), "journal.json"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Run(ctx); close(done) }()
	f.t.Cleanup(func() { cancel(); <-done })
	return in
}

func installWith(t *testing.T, in *Installer, token string, ref *pb.PackageRef) *pb.InstallResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := in.Install(ctx, &pb.InstallRequest{OpToken: token, Package: ref}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// With packages.require_signature, a .deb installs only with a detached
// signature by a key of packages.keyring: uploaded with it, or beside the
// path on the node.
func TestRequireSignatureDeb(t *testing.T) {
	f := newFixture(t)
	signer, err := openpgp.NewEntity("Deephaven packages", "", "packages@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := openpgp.NewEntity("Someone else", "", "else@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	in := f.withKeyring(armoredKey(t, signer), nil)
	good := detachSign(t, signer, f.debs["1.0"])
	bad := detachSign(t, stranger, f.debs["1.0"])
	other := detachSign(t, signer, f.debs["2.0"]) // a good signature of other bytes

	for _, tt := range []struct {
		name string
		sig  []byte
		want string // "" installs
	}{
		{"unsigned", nil, "has no signature, and packages.require_signature is on"},
		{"signed by a key not in the keyring", bad, "does not verify against packages.keyring"},
		{"signature of another package", other, "does not verify against packages.keyring"},
		{"signed", good, ""},
	} {
		ref := f.ref("1.0")
		ref.Signature = tt.sig
		res := installWith(t, in, "up/"+tt.name, ref)
		if tt.want != "" {
			if !res.Failed || !strings.Contains(res.Message, tt.want) || len(f.installs()) != 0 {
				t.Fatalf("%s: %+v (install runs %v), want a refusal with %q", tt.name, res, f.installs(), tt.want)
			}
			continue
		}
		if res.Failed || res.After != "1.0" {
			t.Fatalf("%s: %+v", tt.name, res)
		}
	}

	// On a path: PATH.sig or PATH.asc beside it, as root-only as the file.
	p := f.onNode("2.0")
	ref := &pb.PackageRef{Path: p, Sha256: f.ref("2.0").Sha256}
	if res := installWith(t, in, "path/unsigned", ref); !res.Failed || !strings.Contains(res.Message, "no signature beside it ("+p+".sig or "+p+".asc)") {
		t.Fatalf("unsigned path: %+v", res)
	}
	if err := os.WriteFile(p+".asc", detachSign(t, signer, f.debs["2.0"]), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p+".asc", 0o666); err != nil {
		t.Fatal(err)
	}
	if res := installWith(t, in, "path/writable", ref); !res.Failed || !strings.Contains(res.Message, "writable by its group or others") {
		t.Fatalf("a signature anyone could write: %+v", res)
	}
	if err := os.Chmod(p+".asc", 0o644); err != nil {
		t.Fatal(err)
	}
	if res := installWith(t, in, "path/signed", ref); res.Failed || res.After != "2.0" {
		t.Fatalf("signed path: %+v", res)
	}
}

// rpmTools: building and signing an .rpm here needs rpmbuild, rpmsign and
// gpg, and checking it rpmkeys.
func rpmTools(t *testing.T) {
	t.Helper()
	for _, p := range []string{"rpmbuild", "rpmsign", "gpg", "rpmkeys"} {
		if _, err := exec.LookPath(p); err != nil {
			need.Missing(t, p)
		}
	}
}

// gpgKey makes a signing key in a keyring of its own and returns that
// GNUPGHOME and the public key, armored.
func gpgKey(t *testing.T, name string) (home string, pub []byte) {
	t.Helper()
	home = filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The gpg-agent that gpg started for this home.
		cmd := exec.Command("gpgconf", "--kill", "gpg-agent")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
		_ = cmd.Run()
	})
	params := "%no-protection\nKey-Type: RSA\nKey-Length: 2048\nName-Real: " + name + "\nName-Email: " + name + "@example.com\nExpire-Date: 0\n%commit\n"
	cmd := exec.Command("gpg", "--batch", "--gen-key")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	cmd.Stdin = strings.NewReader(params)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gpg --gen-key: %v\n%s", err, out)
	}
	cmd = exec.Command("gpg", "--armor", "--export", name+"@example.com")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+home)
	pub, err := cmd.Output()
	if err != nil || len(pub) == 0 {
		t.Fatalf("gpg --export: %v", err)
	}
	return home, pub
}

// buildRPM builds an empty noarch illumon-db 2.0-1, signed with the key
// in home unless home is "".
func buildRPM(t *testing.T, dir, home string) string {
	t.Helper()
	top := filepath.Join(t.TempDir(), "rpmbuild")
	spec := filepath.Join(top, "illumon-db.spec")
	if err := os.MkdirAll(top, 0o755); err != nil {
		t.Fatal(err)
	}
	body := "Name: illumon-db\nVersion: 2.0\nRelease: 1\nSummary: stand-in\nLicense: none\nBuildArch: noarch\n%description\nstand-in\n%files\n"
	if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("rpmbuild", "--define", "_topdir "+top, "-bb", spec).CombinedOutput(); err != nil {
		t.Fatalf("rpmbuild: %v\n%s", err, out)
	}
	built := filepath.Join(top, "RPMS", "noarch", "illumon-db-2.0-1.noarch.rpm")
	name := "unsigned.rpm"
	if home != "" {
		name = filepath.Base(home) + ".rpm"
	}
	rpm := filepath.Join(dir, name)
	b, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rpm, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if home != "" {
		gpgPath, _ := exec.LookPath("gpg")
		cmd := exec.Command("rpmsign", "--define", "__gpg "+gpgPath, "--define", "_gpg_path "+home, "--define", "_gpg_name "+filepath.Base(home)+"@example.com", "--addsign", rpm)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("rpmsign: %v\n%s", err, out)
		}
	}
	return rpm
}

// An .rpm installs only when rpm -K, with a database holding only
// packages.keyring's keys, finds its signature good.
func TestRequireSignatureRPM(t *testing.T) {
	rpmTools(t)
	f := newFixture(t)
	signerHome, signerPub := gpgKey(t, "signer")
	strangerHome, _ := gpgKey(t, "stranger")
	dir := need.RootOnlyDir(t)
	// gpgKey's homes are named by the key, so each signed .rpm is too.
	signed := buildRPM(t, dir, signerHome)
	foreign := buildRPM(t, dir, strangerHome)
	unsigned := buildRPM(t, dir, "")
	marker := filepath.Join(f.dir, "rpm-installed")
	in := f.withKeyring(signerPub, func(c *config.Packages) {
		c.Install = []string{"/bin/sh", "-c", "echo 2.0-1 > " + marker}
		c.Query = []string{"/bin/sh", "-c", "cat " + marker + " 2>/dev/null || true"}
	})
	sha := func(p string) string { b, _ := os.ReadFile(p); return sum(b) }
	for _, tt := range []struct {
		name, file, want string
	}{
		{"unsigned", unsigned, "rpm -K against packages.keyring"},
		{"signed by a key not in the keyring", foreign, "rpm -K against packages.keyring"},
	} {
		res := installWith(t, in, tt.name, &pb.PackageRef{Path: tt.file, Sha256: sha(tt.file)})
		if !res.Failed || !strings.Contains(res.Message, tt.want) {
			t.Fatalf("%s: %+v, want a refusal with %q", tt.name, res, tt.want)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("%s: installed", tt.name)
		}
	}
	res := installWith(t, in, "signed", &pb.PackageRef{Path: signed, Sha256: sha(signed)})
	if res.Failed || res.After != "2.0-1" {
		t.Fatalf("signed: %+v", res)
	}
}
