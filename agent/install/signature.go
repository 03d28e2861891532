package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/dhvisor/dhvisor/agent/safefs"
	"github.com/dhvisor/dhvisor/internal/pkgsig"
	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

// checkSignature verifies, when packages.require_signature is on, that
// file (the cache's copy) is signed by a key of packages.keyring: an .rpm
// by rpm -K against a private rpm database holding only those keys, a .deb
// by its detached signature. It returns what to tell the operator.
func (in *Installer) checkSignature(ctx context.Context, ref *pb.PackageRef, file, format string) (string, error) {
	if !in.cfg.RequireSignature {
		return "", nil
	}
	// Read now, through descriptors only root could have filled: the keys
	// decide what root installs.
	b, err := safefs.ReadRootOnly(in.cfg.Keyring, pkgsig.MaxKeyring)
	if err != nil {
		return "", fmt.Errorf("packages.keyring: %w", err)
	}
	keyring, err := pkgsig.ReadKeyring(b)
	if err != nil {
		return "", fmt.Errorf("packages.keyring %s: %w", in.cfg.Keyring, err)
	}
	if format == formatRPM {
		return in.rpmCheck(ctx, file, keyring)
	}
	sig, where, err := debSignature(ref)
	if err != nil {
		return "", err
	}
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	signer, err := pkgsig.VerifyDetached(keyring, f, sig)
	if err != nil {
		return "", fmt.Errorf("%s: the signature (%s) does not verify against packages.keyring %s: %v: not installed", filepath.Base(file), where, in.cfg.Keyring, err)
	}
	return "signed by key " + signer, nil
}

// debSignature is the .deb's detached signature: uploaded with it, or
// beside the path on the node.
func debSignature(ref *pb.PackageRef) (sig []byte, where string, err error) {
	if ref.Path == "" {
		if len(ref.Signature) == 0 {
			return nil, "", fmt.Errorf("%s has no signature, and packages.require_signature is on: upload it with its detached signature (%s.sig or .asc beside it): not installed", ref.FileName, ref.FileName)
		}
		return ref.Signature, "uploaded with it", nil
	}
	for _, suffix := range pkgsig.Beside {
		b, err := safefs.ReadRootOnly(ref.Path+suffix, pkgsig.MaxSignature)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("signature: %w", err)
		}
		return b, ref.Path + suffix, nil
	}
	return nil, "", fmt.Errorf("%s has no signature beside it (%s.sig or %s.asc), and packages.require_signature is on: not installed", ref.Path, ref.Path, ref.Path)
}

// rpmCheck runs rpm -K on file with a database of its own in the cache,
// holding only the keyring's keys, and signature verification required
// (_pkgverify_level signature: rpm otherwise passes an unsigned package on
// its digests alone).
func (in *Installer) rpmCheck(ctx context.Context, file string, keyring openpgp.EntityList) (string, error) {
	db, err := os.MkdirTemp(in.cfg.CacheDir, ".rpmdb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(db)
	keys, err := pkgsig.ArmoredKeys(keyring)
	if err != nil {
		return "", fmt.Errorf("packages.keyring: %w", err)
	}
	for i, k := range keys {
		kf := filepath.Join(db, "key"+strconv.Itoa(i)+".asc")
		if err := os.WriteFile(kf, k, 0o600); err != nil {
			return "", err
		}
		if out, code, err := run(ctx, []string{"rpmkeys", "--dbpath", db, "--import", kf}, time.Minute, nil); err != nil || code != 0 {
			return "", fmt.Errorf("importing packages.keyring's key %d into a private rpm database: %s%s", i+1, errOrExit(err, code), outputSuffix(out))
		}
	}
	out, code, err := run(ctx, []string{"rpmkeys", "--dbpath", db, "--define", "_pkgverify_level signature", "--checksig", "-v", file}, time.Minute, nil)
	if err != nil || code != 0 {
		return "", fmt.Errorf("%s: rpm -K against packages.keyring %s: %s%s: not installed", filepath.Base(file), in.cfg.Keyring, errOrExit(err, code), outputSuffix(out))
	}
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.Contains(l, "Signature, key ID") {
			return l, nil
		}
	}
	return "signature OK (rpm -K)", nil
}
