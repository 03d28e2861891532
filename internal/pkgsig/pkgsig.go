// Package pkgsig reads OpenPGP keyrings and signatures of upgrade packages,
// shared by the agent, which verifies a package against its keyring before
// installing it, and the coordinator, which refuses an unsigned upload when
// the cluster requires signatures. The OpenPGP work is ProtonMail's
// go-crypto; what is here is telling the forms apart (armored or binary)
// and reading an .rpm's signature header to see whether it carries one.
package pkgsig

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// MaxSignature bounds a detached signature: a few hundred bytes, a few KiB
// with several signers.
const MaxSignature = 64 << 10

// MaxKeyring bounds a keyring file.
const MaxKeyring = 4 << 20

// Beside are the suffixes of a .deb's detached signature next to it, in
// the order they are looked for.
var Beside = []string{".sig", ".asc"}

var armorStart = []byte("-----BEGIN PGP")

func armored(b []byte) bool { return bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), armorStart) }

// ReadKeyring reads public keys, armored (one or more blocks, as gpg
// --armor --export writes) or binary.
func ReadKeyring(b []byte) (openpgp.EntityList, error) {
	if !armored(b) {
		el, err := openpgp.ReadKeyRing(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("not an OpenPGP keyring: %w", err)
		}
		return nonEmpty(el)
	}
	// armor.Decode reads ahead past its block: decode each on its own.
	var all openpgp.EntityList
	for _, text := range armorBlocks(b) {
		block, err := armor.Decode(bytes.NewReader(text))
		if err != nil {
			return nil, fmt.Errorf("armored keyring: %w", err)
		}
		if block.Type != openpgp.PublicKeyType {
			return nil, fmt.Errorf("armored keyring: a %q block, expected %q (export the public keys only)", block.Type, openpgp.PublicKeyType)
		}
		el, err := openpgp.ReadKeyRing(block.Body)
		if err != nil {
			return nil, fmt.Errorf("armored keyring: %w", err)
		}
		all = append(all, el...)
	}
	return nonEmpty(all)
}

// armorBlocks splits text at each armor header line.
func armorBlocks(b []byte) [][]byte {
	var out [][]byte
	for {
		i := bytes.Index(b, armorStart)
		if i < 0 {
			return out
		}
		b = b[i:]
		j := bytes.Index(b[len(armorStart):], armorStart)
		if j < 0 {
			return append(out, b)
		}
		out = append(out, b[:len(armorStart)+j])
		b = b[len(armorStart)+j:]
	}
}

func nonEmpty(el openpgp.EntityList) (openpgp.EntityList, error) {
	if len(el) == 0 {
		return nil, errors.New("the keyring holds no key")
	}
	return el, nil
}

// ArmoredKeys returns each key of the keyring armored on its own, as
// rpm --import takes them.
func ArmoredKeys(el openpgp.EntityList) ([][]byte, error) {
	var out [][]byte
	for _, e := range el {
		var b bytes.Buffer
		w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
		if err != nil {
			return nil, err
		}
		if err := e.Serialize(w); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		out = append(out, b.Bytes())
	}
	return out, nil
}

// binarySignature returns sig's OpenPGP packets, de-armored when armored.
func binarySignature(sig []byte) (io.Reader, error) {
	if len(sig) == 0 {
		return nil, errors.New("empty signature")
	}
	if len(sig) > MaxSignature {
		return nil, fmt.Errorf("signature of %d bytes, at most %d", len(sig), MaxSignature)
	}
	if !armored(sig) {
		return bytes.NewReader(sig), nil
	}
	block, err := armor.Decode(bytes.NewReader(sig))
	if err != nil {
		return nil, fmt.Errorf("armored signature: %w", err)
	}
	if block.Type != openpgp.SignatureType {
		return nil, fmt.Errorf("armored signature: a %q block, expected %q", block.Type, openpgp.SignatureType)
	}
	return block.Body, nil
}

// CheckSignature says whether sig is one well-formed OpenPGP signature
// packet (armored or binary), without a key to verify it against: what a
// coordinator can tell of an upload.
func CheckSignature(sig []byte) error {
	r, err := binarySignature(sig)
	if err != nil {
		return err
	}
	p, err := packet.Read(r)
	if err != nil {
		return fmt.Errorf("not an OpenPGP signature: %w", err)
	}
	if _, ok := p.(*packet.Signature); !ok {
		return fmt.Errorf("not an OpenPGP signature: a %T packet", p)
	}
	return nil
}

// VerifyDetached verifies the detached signature sig of the bytes signed
// against keyring and names the signer's key.
func VerifyDetached(keyring openpgp.EntityList, signed io.Reader, sig []byte) (string, error) {
	r, err := binarySignature(sig)
	if err != nil {
		return "", err
	}
	signer, err := openpgp.CheckDetachedSignature(keyring, signed, r, nil)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%X", signer.PrimaryKey.Fingerprint), nil
}
