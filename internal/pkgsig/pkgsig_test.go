package pkgsig

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
)

func newKey(t testing.TB, name string) *openpgp.Entity {
	t.Helper()
	e, err := openpgp.NewEntity(name, "", name+"@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func exportArmored(t testing.TB, es ...*openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, e := range es {
		w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Serialize(w); err != nil {
			t.Fatal(err)
		}
		w.Close()
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func TestVerifyDetached(t *testing.T) {
	signer, other := newKey(t, "signer"), newKey(t, "other")
	data := []byte("!<arch>\na .deb's bytes")
	var bin, asc bytes.Buffer
	if err := openpgp.DetachSign(&bin, signer, bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	if err := openpgp.ArmoredDetachSign(&asc, signer, bytes.NewReader(data), nil); err != nil {
		t.Fatal(err)
	}
	// Two armored blocks, as gpg --armor --export of two keys writes.
	ring, err := ReadKeyring(exportArmored(t, other, signer))
	if err != nil || len(ring) != 2 {
		t.Fatalf("keyring: %d keys, %v", len(ring), err)
	}
	var binRing bytes.Buffer
	if err := signer.Serialize(&binRing); err != nil {
		t.Fatal(err)
	}
	binKeys, err := ReadKeyring(binRing.Bytes())
	if err != nil || len(binKeys) != 1 {
		t.Fatalf("binary keyring: %d keys, %v", len(binKeys), err)
	}
	onlyOther, _ := ReadKeyring(exportArmored(t, other))
	for _, tt := range []struct {
		name string
		ring openpgp.EntityList
		data []byte
		sig  []byte
		ok   bool
	}{
		{"binary signature", ring, data, bin.Bytes(), true},
		{"armored signature", ring, data, asc.Bytes(), true},
		{"binary keyring", binKeys, data, asc.Bytes(), true},
		{"signed by a key not in the keyring", onlyOther, data, bin.Bytes(), false},
		{"other bytes", ring, append([]byte{}, data[:len(data)-1]...), bin.Bytes(), false},
		{"no signature", ring, data, nil, false},
		{"junk", ring, data, []byte("-----BEGIN PGP SIGNATURE-----\n\nxx\n"), false},
		{"a key where a signature goes", ring, data, exportArmored(t, signer), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fp, err := VerifyDetached(tt.ring, bytes.NewReader(tt.data), tt.sig)
			if tt.ok != (err == nil) {
				t.Fatalf("verify: %q %v", fp, err)
			}
			if tt.ok && fp != fingerprint(signer) {
				t.Errorf("signer %s, want %s", fp, fingerprint(signer))
			}
		})
	}
	if err := CheckSignature(asc.Bytes()); err != nil {
		t.Errorf("well-formed armored signature: %v", err)
	}
	if err := CheckSignature(bin.Bytes()); err != nil {
		t.Errorf("well-formed binary signature: %v", err)
	}
	for _, bad := range [][]byte{nil, []byte("signed, honestly"), exportArmored(t, signer), make([]byte, MaxSignature+1)} {
		if err := CheckSignature(bad); err == nil {
			t.Errorf("CheckSignature(%.20q) accepted it", bad)
		}
	}
	if _, err := ReadKeyring([]byte("not keys")); err == nil {
		t.Error("a keyring of junk was read")
	}
	keys, err := ArmoredKeys(ring)
	if err != nil || len(keys) != 2 {
		t.Fatalf("armored keys: %d %v", len(keys), err)
	}
	if again, err := ReadKeyring(keys[1]); err != nil || fingerprint(again[0]) != fingerprint(signer) {
		t.Errorf("re-read key: %v", err)
	}
}

func fingerprint(e *openpgp.Entity) string { return fmt.Sprintf("%X", e.PrimaryKey.Fingerprint) }

// rpmWith builds the start of an .rpm whose signature header lists tags.
func rpmWith(tags ...uint32) []byte {
	b := make([]byte, rpmLeadSize)
	copy(b, rpmLeadMagic)
	b = append(b, rpmHeaderMagic...)
	b = append(b, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(tags)))
	b = binary.BigEndian.AppendUint32(b, 0)
	for _, tag := range tags {
		b = binary.BigEndian.AppendUint32(b, tag)
		b = append(b, make([]byte, 12)...)
	}
	return b
}

func TestRPMSigned(t *testing.T) {
	for _, tt := range []struct {
		name   string
		b      []byte
		signed bool
		err    string
	}{
		{"digests only", rpmWith(269, 273, 1000, 1004), false, ""},
		{"rpmsign --addsign", rpmWith(269, 268, 273), true, ""},
		{"header and payload", rpmWith(1002), true, ""},
		{"rpm 6", rpmWith(278), true, ""},
		{"a .deb", []byte("!<arch>\n" + strings.Repeat("x", 200)), false, "not an .rpm"},
		{"short", rpmLeadMagic, false, "too short"},
		{"cut index", rpmWith(268)[:rpmLeadSize+20], false, "cut short"},
		{"huge index", func() []byte { b := rpmWith(); binary.BigEndian.PutUint32(b[rpmLeadSize+8:], 1<<31); return b }(), false, "claims"},
	} {
		got, err := RPMSigned(bytes.NewReader(tt.b))
		if got != tt.signed || (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s: %v %v, want %v %q", tt.name, got, err, tt.signed, tt.err)
		}
	}
}

func FuzzRPMSigned(f *testing.F) {
	f.Add(rpmWith(269, 268))
	f.Add(rpmWith())
	f.Add([]byte("!<arch>\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		signed, err := RPMSigned(bytes.NewReader(b))
		if signed && err != nil {
			t.Fatalf("signed and an error: %v", err)
		}
	})
}

// Keyrings and signatures come from files an operator wrote and from
// uploads; whatever they hold, reading them returns an error, never panics.
func FuzzSignatureAndKeyring(f *testing.F) {
	k := newKey(f, "fuzz")
	var asc bytes.Buffer
	if err := openpgp.ArmoredDetachSign(&asc, k, strings.NewReader("x"), nil); err != nil {
		f.Fatal(err)
	}
	f.Add(asc.Bytes())
	f.Add(exportArmored(f, k))
	f.Add([]byte("-----BEGIN PGP SIGNATURE-----\n\n=AAAA\n-----END PGP SIGNATURE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = CheckSignature(b)
		if ring, err := ReadKeyring(b); err == nil && len(ring) == 0 {
			t.Fatal("an empty keyring without an error")
		}
	})
}
