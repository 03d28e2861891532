package pkgsig

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// An .rpm file opens with a 96-byte lead, then the signature header: magic
// 8e ad e8 01, 4 reserved bytes, the number of index entries and the size
// of the data store (big-endian uint32s), then 16-byte entries (tag, type,
// offset, count). OpenPGP signatures are these tags (rpmtag.h).
const (
	rpmLeadSize   = 96
	sigTagDSA     = 267  // RPMSIGTAG_DSA: header-only DSA
	sigTagRSA     = 268  // RPMSIGTAG_RSA: header-only RSA (rpmsign --addsign)
	sigTagOpenPGP = 278  // RPMSIGTAG_OPENPGP: rpm 6's v6 signatures
	sigTagPGP     = 1002 // RPMSIGTAG_PGP: header+payload RSA
	sigTagGPG     = 1005 // RPMSIGTAG_GPG: header+payload DSA
	// maxSigEntries bounds the index: rpm writes about ten entries.
	maxSigEntries = 1024
)

var (
	rpmLeadMagic   = []byte{0xed, 0xab, 0xee, 0xdb}
	rpmHeaderMagic = []byte{0x8e, 0xad, 0xe8, 0x01}
)

// RPMSigned reads an .rpm's signature header from r and says whether it
// carries an OpenPGP signature (verifying it is rpm -K's job).
func RPMSigned(r io.Reader) (bool, error) {
	lead := make([]byte, rpmLeadSize+16)
	if _, err := io.ReadFull(r, lead); err != nil {
		return false, errors.New("too short to be an .rpm")
	}
	if !bytes.Equal(lead[:4], rpmLeadMagic) {
		return false, errors.New("not an .rpm (no rpm lead)")
	}
	hdr := lead[rpmLeadSize:]
	if !bytes.Equal(hdr[:4], rpmHeaderMagic) {
		return false, errors.New("an .rpm without a signature header")
	}
	n := binary.BigEndian.Uint32(hdr[8:12])
	if n > maxSigEntries {
		return false, fmt.Errorf("an .rpm whose signature header claims %d entries", n)
	}
	index := make([]byte, 16*int(n))
	if _, err := io.ReadFull(r, index); err != nil {
		return false, errors.New("an .rpm whose signature header is cut short")
	}
	for i := 0; i < len(index); i += 16 {
		switch binary.BigEndian.Uint32(index[i : i+4]) {
		case sigTagDSA, sigTagRSA, sigTagOpenPGP, sigTagPGP, sigTagGPG:
			return true, nil
		}
	}
	return false, nil
}
