package gossip

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/memberlist"

	"github.com/dhvisor/dhvisor/internal/atomicfile"
	"github.com/dhvisor/dhvisor/internal/secretfile"
)

// Gossip encryption keys.
//
// Keys are 32-byte AES-256 keys (memberlist encrypts every packet and stream
// with AES-GCM under the primary key and decrypts with whichever installed
// key works). The key file holds them base64-encoded, one per line, the
// primary first; blank lines and lines starting with '#' are ignored. It
// must be readable by its owner only.
//
// Rotation without downtime, from any one node (dhctl key ...):
//
//  1. Install(new): every node adds it; they still encrypt with the old
//     primary but can now decrypt both. Check that every node's NodeView
//     KeyIDs lists KeyID(new).
//  2. Use(new): every node encrypts with new; any node that has not heard
//     yet still decrypts it (step 1). Check that KeyIDs starts with new
//     everywhere.
//  3. Remove(old).
//
// Each operation is applied locally, written to the key file (atomically)
// and gossiped to every node, which applies it, persists it and logs it.
// The operation travels encrypted with the current key, so only a holder
// of a valid key can issue one. A node that was down during a rotation
// comes back with its old key file; if the old key was already removed it
// cannot rejoin (it logs "the cluster uses a different gossip key") until
// the key file is copied from a current node.
//
// Operations carry versions from the issuing node's clock and are applied
// last-writer-wins per key (installed or removed) and for the primary, so
// nodes converge whatever order the operations arrive in: a Use that
// arrives before its Install installs the key too; a Remove of a key that
// is still this node's primary (the Use has not arrived) takes effect when
// the Use does.

// KeySize is the gossip key length: AES-256.
const KeySize = 32

// ErrNoEncryption is returned by KeyManager methods when gossip is not
// encrypted (no key file configured).
var ErrNoEncryption = errors.New("gossip: encryption is not enabled (no gossip key file configured)")

// LoadKeyring reads a key file and returns a keyring whose primary key is
// the file's first key.
func LoadKeyring(path string) (*memberlist.Keyring, error) {
	keys, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	return memberlist.NewKeyring(keys[1:], keys[0])
}

func readKeyFile(path string) ([][]byte, error) {
	data, err := secretfile.Read(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key file %w", err)
	}
	var keys [][]byte
	seen := map[string]int{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, err := parseKey(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		if prev, dup := seen[string(key)]; dup {
			return nil, fmt.Errorf("%s:%d: duplicate key (same as line %d)", path, i+1, prev)
		}
		seen[string(key)] = i + 1
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no keys (expected one base64-encoded %d-byte key per line, the primary first)", path, KeySize)
	}
	return keys, nil
}

// parseKey decodes one base64 key and checks its length. Errors never
// include the key.
func parseKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("gossip key is not valid base64 (%v)", err)
	}
	if len(b) != KeySize {
		return nil, fmt.Errorf("gossip key is %d bytes, want %d (AES-256; generate one with: head -c %d /dev/urandom | base64)", len(b), KeySize, KeySize)
	}
	return b, nil
}

// GenerateKey returns a new random key, base64-encoded.
func GenerateKey() (string, error) {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

// KeyID returns the fingerprint of a base64 key as NodeView.KeyIDs shows
// it: the first 4 bytes of its SHA-256, in hex. It identifies a key in logs
// and status without revealing it.
func KeyID(key string) (string, error) {
	b, err := parseKey(key)
	if err != nil {
		return "", err
	}
	return keyIDString(keyID(b)), nil
}

func keyID(key []byte) uint32 {
	sum := sha256.Sum256(key)
	return binary.BigEndian.Uint32(sum[:4])
}

func keyIDString(id uint32) string { return fmt.Sprintf("%08x", id) }

// writeKeyFile replaces path atomically: a temporary file in the same
// directory, fsynced, renamed over path, and the directory fsynced, so a
// crash leaves either the old or the new file, never a torn one.
func writeKeyFile(path string, keys [][]byte) error {
	var buf bytes.Buffer
	for _, k := range keys {
		buf.WriteString(base64.StdEncoding.EncodeToString(k))
		buf.WriteByte('\n')
	}
	// A secret: 0600 whatever the umask.
	if err := atomicfile.Write(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write gossip key file %s: %w", path, err)
	}
	return nil
}

// KeyManager changes the cluster's gossip keys; see the package comment on
// rotation. Each method applies the change here, persists the key file and
// gossips the operation to every node.
type KeyManager struct {
	g    *Gossip
	ring *memberlist.Keyring
	path string

	// mu guards the last-writer-wins registers below and serializes
	// changes to ring and the key file. Lock order: mu before Gossip.mu.
	mu         sync.Mutex
	keys       map[string]*keyReg // by raw key
	primary    []byte
	primaryVer uint64
}

// keyReg is one key's register: installed or removed, as of version.
type keyReg struct {
	installed bool
	version   uint64
}

func newKeyManager(g *Gossip, ring *memberlist.Keyring, path string) *KeyManager {
	k := &KeyManager{g: g, ring: ring, path: path, keys: map[string]*keyReg{}}
	if ring != nil {
		// What the file says holds at version 0: any operation issued by
		// any node overrides it, and nothing from the file is gossiped.
		for _, key := range ring.GetKeys() {
			k.keys[string(key)] = &keyReg{installed: true}
		}
		k.primary = slices.Clone(ring.GetPrimaryKey())
	}
	return k
}

// ids returns the installed keys' fingerprints, primary first. It reads
// only the keyring (which has its own lock), so it may be called with
// Gossip.mu held.
func (k *KeyManager) ids() []uint32 {
	if k.ring == nil {
		return nil
	}
	var out []uint32
	for _, key := range k.ring.GetKeys() {
		out = append(out, keyID(key))
	}
	return out
}

// List returns the installed keys, base64-encoded, the primary first (nil
// without encryption).
func (k *KeyManager) List() []string {
	if k.ring == nil {
		return nil
	}
	var out []string
	for _, key := range k.ring.GetKeys() {
		out = append(out, base64.StdEncoding.EncodeToString(key))
	}
	return out
}

// Install adds key (base64) on every node.
func (k *KeyManager) Install(key string) error { return k.local(keyOpInstall, key) }

// Use makes key the primary (the one used to encrypt) on every node. It
// must be installed here; install it everywhere first.
func (k *KeyManager) Use(key string) error { return k.local(keyOpUse, key) }

// Remove removes key from every node. It must not be the primary here.
// Removing a key this node does not hold still tells the others.
func (k *KeyManager) Remove(key string) error { return k.local(keyOpRemove, key) }

func (k *KeyManager) local(op byte, b64 string) error {
	if k.ring == nil {
		return ErrNoEncryption
	}
	key, err := parseKey(b64)
	if err != nil {
		return err
	}
	id := keyIDString(keyID(key))
	k.mu.Lock()
	switch op {
	case keyOpUse:
		if r := k.keys[string(key)]; r == nil || !r.installed {
			k.mu.Unlock()
			return fmt.Errorf("gossip key %s is not installed; install it (and check every node has it) before using it", id)
		}
	case keyOpRemove:
		if bytes.Equal(key, k.primary) {
			k.mu.Unlock()
			return fmt.Errorf("gossip key %s is the primary; make another key primary (use) before removing it", id)
		}
	}
	o := keyOp{Op: op, Version: k.g.nextVersion(), Key: key, From: k.g.cfg.NodeName}

	// Persist before touching the live keyring: if the file cannot be
	// written, fail with nothing changed rather than run with keys that
	// a restart would silently undo.
	saved := k.snapshotLocked(key)
	k.applyLocked(o)
	changed, err := k.syncRingLocked(true)
	if err != nil {
		k.restoreLocked(key, saved)
		k.mu.Unlock()
		return err
	}
	k.mu.Unlock()

	k.g.queue.Queue(keyOpBroadcast(o, encodeKeyOp(o)))
	k.g.log.Info("gossip: key "+opVerb(op), "key_id", id, "by", "this node", "persisted", k.path != "")
	if changed {
		k.g.republish()
	}
	return nil
}

// applyRemote applies an operation received from the cluster. It reports
// whether the operation was news (then it is relayed).
func (k *KeyManager) applyRemote(o keyOp) bool {
	g := k.g
	if k.ring == nil {
		g.log.Warn("gossip: ignored a key operation: this node does not use encryption", "from", o.From)
		return false
	}
	if len(o.Key) != KeySize {
		g.log.Warn("gossip: ignored a key operation with a bad key length", "from", o.From, "bytes", len(o.Key))
		return false
	}
	g.observe(o.Version)
	id := keyIDString(keyID(o.Key))
	k.mu.Lock()
	news := k.applyLocked(o)
	changed, err := k.syncRingLocked(false)
	stillPrimary := o.Op == keyOpRemove && bytes.Equal(o.Key, k.primary)
	k.mu.Unlock()
	if news {
		g.log.Info("gossip: key "+opVerb(o.Op), "key_id", id, "by", o.From, "persisted", k.path != "" && err == nil)
	}
	if err != nil {
		g.log.Error("gossip: applied a key change but could not save it; this node will come back with its old keys after a restart", "err", err)
	}
	if news && stillPrimary {
		g.log.Warn("gossip: a removed key is still this node's primary; it goes when another key becomes primary", "key_id", id, "by", o.From)
	}
	if changed {
		g.republish()
	}
	return news
}

func opVerb(op byte) string {
	switch op {
	case keyOpInstall:
		return "installed"
	case keyOpUse:
		return "made primary"
	default:
		return "removed"
	}
}

type keySnapshot struct {
	reg        *keyReg
	primary    []byte
	primaryVer uint64
}

func (k *KeyManager) snapshotLocked(key []byte) keySnapshot {
	s := keySnapshot{primary: k.primary, primaryVer: k.primaryVer}
	if r := k.keys[string(key)]; r != nil {
		c := *r
		s.reg = &c
	}
	return s
}

func (k *KeyManager) restoreLocked(key []byte, s keySnapshot) {
	if s.reg == nil {
		delete(k.keys, string(key))
	} else {
		k.keys[string(key)] = s.reg
	}
	k.primary, k.primaryVer = s.primary, s.primaryVer
}

// applyLocked updates the registers; it reports whether o was newer than
// what they held.
func (k *KeyManager) applyLocked(o keyOp) bool {
	r := k.keys[string(o.Key)]
	if r == nil {
		r = &keyReg{}
		k.keys[string(o.Key)] = r
	}
	news := false
	if o.Version > r.version {
		// Use implies install: a Use that overtook its Install works.
		r.installed, r.version = o.Op != keyOpRemove, o.Version
		news = true
	}
	if o.Op == keyOpUse && o.Version > k.primaryVer {
		k.primary, k.primaryVer = slices.Clone(o.Key), o.Version
		news = true
	}
	return news
}

// syncRingLocked makes the live keyring (and the key file) match the
// registers: the primary first, then every installed key. With
// persistFirst, a failed write leaves the keyring untouched.
func (k *KeyManager) syncRingLocked(persistFirst bool) (bool, error) {
	cur := slices.Clone(k.ring.GetKeys())
	want := [][]byte{k.primary}
	for _, key := range cur {
		if r := k.keys[string(key)]; r != nil && r.installed && !bytes.Equal(key, k.primary) {
			want = append(want, key)
		}
	}
	for key, r := range k.keys {
		if r.installed && !slices.ContainsFunc(want, func(w []byte) bool { return string(w) == key }) {
			want = append(want, []byte(key))
		}
	}
	if slices.EqualFunc(cur, want, bytes.Equal) {
		return false, nil
	}
	var err error
	if k.path != "" {
		err = writeKeyFile(k.path, want)
		if err != nil && persistFirst {
			return false, err
		}
	}
	for _, key := range want {
		_ = k.ring.AddKey(key) // no-op if present; length checked already
	}
	_ = k.ring.UseKey(k.primary)
	// Remove from the end: memberlist's RemoveKey shifts the keys after
	// the removed one in place, under readers that may hold the old slice;
	// removing the last key shifts nothing.
	for i := len(cur) - 1; i >= 0; i-- {
		if !slices.ContainsFunc(want, func(w []byte) bool { return bytes.Equal(w, cur[i]) }) {
			_ = k.ring.RemoveKey(cur[i])
		}
	}
	return true, err
}

// keyOpBroadcast names a key operation by the register it writes, so a
// newer operation on the same register replaces a queued older one but an
// Install never drops a queued Use.
func keyOpBroadcast(o keyOp, msg []byte) *nodeBroadcast {
	name := "primary"
	if o.Op != keyOpUse {
		name = "key/" + keyIDString(keyID(o.Key))
	}
	return &nodeBroadcast{name: name, version: o.Version, keyOp: true, msg: msg}
}

// nextVersion issues a version from this node's clock (see
// nextVersionLocked).
func (g *Gossip) nextVersion() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.nextVersionLocked()
}

// observe moves our clock past a version issued elsewhere, so an operation
// we issue after seeing another's is ordered after it despite clock skew.
func (g *Gossip) observe(v uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.clock = max(g.clock, v)
}
