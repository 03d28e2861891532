package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Wire format.
//
// Every message this package puts on the wire (gossip user messages,
// push-pull state, node meta) starts with one format byte. A receiver that
// does not know the format rejects the whole message with ErrUnknownFormat
// instead of guessing, so a mixed-version cluster during a rolling upgrade
// degrades to "that node's news is not understood", never to garbage.
//
// Inside format 1 the encoding is a small hand-rolled binary: uvarints for
// counts and lengths, zigzag varints for signed numbers, length-prefixed
// strings. It is used instead of JSON because a node's whole service list
// must fit into one UDP gossip packet (about 1.3 kB after memberlist's and
// AES-GCM's overheads) so that it spreads in one piggyback, not a TCP sync.
//
// Services and push-pull entries are themselves length-prefixed and a
// decoder ignores bytes it does not understand at the end of one. That lets
// a later release append a field without a new format byte: old agents skip
// it, new agents read it. A change that old agents must not misread needs a
// new format byte.
const formatV1 byte = 1

// Message kinds, the byte after the format byte.
const (
	kindNode  byte = 'n' // one node's service list (gossip broadcast)
	kindFull  byte = 'f' // every known node's list and liveness (push-pull)
	kindKeyOp byte = 'k' // a keyring operation (install/use/remove)
)

// ErrUnknownFormat is returned (wrapped) for a message whose leading format
// byte this agent does not speak.
var ErrUnknownFormat = errors.New("unknown gossip message format")

var errShort = errors.New("truncated gossip message")

// Limits applied while decoding so a corrupt or hostile message cannot make
// us allocate without bound. They are far above anything real.
const (
	maxStringLen = 4096
	maxServices  = 1024
	maxKeyIDs    = 64
	maxEntries   = 100_000
)

// stateCodes maps the agent's well-known service states (monit's words,
// see agent/supervise) to one byte each, which keeps a 15-service list well
// under one UDP packet. Code 0 means "the state string follows literally",
// so an unforeseen state still travels. APPEND ONLY: a code's meaning is part
// of format 1; reordering would make old and new agents disagree.
var stateCodes = [...]string{
	0:  "",
	1:  "OK",
	2:  "Initializing",
	3:  "Not monitored",
	4:  "Does not exist",
	5:  "Execution failed",
	6:  "Connection failed",
	7:  "Resource limit matched",
	8:  "Stopped",
	9:  "Restarting",
	10: "Failed",
	11: ServiceUnknown,
}

func stateCode(s string) byte {
	for i := 1; i < len(stateCodes); i++ {
		if stateCodes[i] == s {
			return byte(i)
		}
	}
	return 0
}

// nodeState is one node's versioned service list: what a node says about
// itself, relayed unchanged by everyone else.
type nodeState struct {
	Name    string
	Version uint64
	// Leaving is set in the last list a node sends before a graceful Leave,
	// so peers can report "left" rather than "dead" (memberlist does not
	// tell its event delegate which of the two happened; see doc.go).
	Leaving bool
	// KeyIDs are short fingerprints of the gossip keys the node holds,
	// primary first, so an operator can verify a key rotation step reached
	// every node before taking the next one.
	KeyIDs   []uint32
	Services []ServiceHealth
}

// peerState is a push-pull entry: a node's list plus what the sender knows
// about its liveness, so a node that joins late also learns about nodes
// that died before it joined (memberlist only transfers those it still
// gossips with).
type peerState struct {
	nodeState
	Liveness byte // livenessAlive...
	Since    time.Time
	Addr     string
	Meta     []byte
}

// keyOp is a keyring change issued on one node and applied everywhere.
type keyOp struct {
	Op      byte // keyOpInstall, keyOpUse, keyOpRemove
	Version uint64
	Key     []byte
	From    string
}

const (
	keyOpInstall byte = 1
	keyOpUse     byte = 2
	keyOpRemove  byte = 3
)

// Liveness codes in push-pull entries; the order matches NodeView.State.
const (
	livenessAlive   byte = 0
	livenessSuspect byte = 1
	livenessDead    byte = 2
	livenessLeft    byte = 3
)

var livenessNames = [...]string{NodeAlive, NodeSuspect, NodeDead, NodeLeft}

func livenessCode(s string) byte {
	for i, n := range livenessNames {
		if n == s {
			return byte(i)
		}
	}
	return livenessAlive
}

// ---- encoding ----

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

func appendTime(b []byte, t time.Time) []byte {
	// Unix milliseconds; 0 stands for the zero time. Sub-ms precision is of
	// no use to an operator and costs bytes.
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixMilli())
}

// appendPrefixed appends the uvarint length of what fn appends, then it.
func appendPrefixed(b []byte, fn func([]byte) []byte) []byte {
	body := fn(nil)
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

func appendService(b []byte, s ServiceHealth) []byte {
	return appendPrefixed(b, func(b []byte) []byte {
		b = appendString(b, s.Name)
		c := stateCode(s.State)
		b = append(b, c)
		if c == 0 {
			b = appendString(b, s.State)
		}
		b = binary.AppendVarint(b, int64(s.PID))
		b = binary.AppendVarint(b, int64(s.Restarts))
		b = appendTime(b, s.Since)
		b = appendString(b, s.Message)
		// Later fields: only when set, so a service that is not running
		// costs no bytes (readers of earlier releases skip what follows
		// Message).
		if s.Started.IsZero() && s.Container == "" {
			return b
		}
		b = appendTime(b, s.Started)
		return appendString(b, s.Container)
	})
}

func appendNodeState(b []byte, n *nodeState) []byte {
	b = appendString(b, n.Name)
	b = binary.AppendUvarint(b, n.Version)
	var flags byte
	if n.Leaving {
		flags |= 1
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(n.KeyIDs)))
	for _, id := range n.KeyIDs {
		b = binary.BigEndian.AppendUint32(b, id)
	}
	b = binary.AppendUvarint(b, uint64(len(n.Services)))
	for _, s := range n.Services {
		b = appendService(b, s)
	}
	return b
}

// encodeNode encodes one node's list as a gossip message.
func encodeNode(n *nodeState) []byte {
	b := []byte{formatV1, kindNode}
	return appendNodeState(b, n)
}

// encodeFull encodes the push-pull state.
func encodeFull(peers []peerState) []byte {
	b := []byte{formatV1, kindFull}
	b = binary.AppendUvarint(b, uint64(len(peers)))
	for i := range peers {
		p := &peers[i]
		b = appendPrefixed(b, func(b []byte) []byte {
			b = appendNodeState(b, &p.nodeState)
			b = append(b, p.Liveness)
			b = appendTime(b, p.Since)
			b = appendString(b, p.Addr)
			return appendBytes(b, p.Meta)
		})
	}
	return b
}

func encodeKeyOp(op keyOp) []byte {
	b := []byte{formatV1, kindKeyOp, op.Op}
	b = binary.AppendUvarint(b, op.Version)
	b = appendBytes(b, op.Key)
	return appendString(b, op.From)
}

// ---- decoding ----

// reader is a bounds-checked cursor; the first error sticks and every later
// read returns zero values, so decoders check err once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.fail(errShort)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errShort)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(errShort)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) count(max int, what string) int {
	n := r.uvarint()
	if r.err == nil && n > uint64(max) {
		r.fail(fmt.Errorf("gossip message: %d %s exceeds limit %d", n, what, max))
		return 0
	}
	return int(n)
}

func (r *reader) raw(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.fail(errShort)
		return nil
	}
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) string() string {
	n := r.count(maxStringLen, "string bytes")
	return string(r.raw(n))
}

func (r *reader) bytes() []byte {
	n := r.count(maxStringLen, "bytes")
	p := r.raw(n)
	if p == nil {
		return nil
	}
	return append([]byte(nil), p...)
}

func (r *reader) time() time.Time {
	ms := r.varint()
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func (r *reader) uint32() uint32 {
	p := r.raw(4)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint32(p)
}

// sub returns a reader over the next length-prefixed block and skips it.
func (r *reader) sub() *reader {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)) {
		r.fail(errShort)
	}
	return &reader{b: r.raw(int(n)), err: r.err}
}

func (r *reader) service() ServiceHealth {
	s := r.sub()
	var h ServiceHealth
	h.Name = s.string()
	c := s.byte()
	switch {
	case c == 0:
		h.State = s.string()
	case int(c) < len(stateCodes):
		h.State = stateCodes[c]
	default:
		// A code from a newer agent: keep the rest of the list usable.
		h.State = fmt.Sprintf("state#%d", c)
	}
	h.PID = int32(s.varint())
	h.Restarts = int32(s.varint())
	h.Since = s.time()
	h.Message = s.string()
	if len(s.b) > 0 {
		h.Started = s.time()
		h.Container = s.string()
	}
	// Trailing bytes in s are fields from a newer agent: ignored.
	if s.err != nil {
		r.fail(s.err)
	}
	return h
}

func (r *reader) nodeState() nodeState {
	var n nodeState
	n.Name = r.string()
	n.Version = r.uvarint()
	flags := r.byte()
	n.Leaving = flags&1 != 0
	if k := r.count(maxKeyIDs, "key ids"); k > 0 {
		n.KeyIDs = make([]uint32, k)
		for i := range n.KeyIDs {
			n.KeyIDs[i] = r.uint32()
		}
	}
	if k := r.count(maxServices, "services"); k > 0 {
		n.Services = make([]ServiceHealth, k)
		for i := range n.Services {
			n.Services[i] = r.service()
		}
	}
	if r.err == nil && n.Name == "" {
		r.fail(errors.New("gossip message: empty node name"))
	}
	return n
}

// header checks the format byte and returns the kind.
func header(b []byte) (byte, *reader, error) {
	if len(b) < 2 {
		return 0, nil, errShort
	}
	if b[0] != formatV1 {
		return 0, nil, fmt.Errorf("%w %d (this agent speaks %d; is a newer dhagent in the cluster?)", ErrUnknownFormat, b[0], formatV1)
	}
	return b[1], &reader{b: b[2:]}, nil
}

// message is one decoded gossip message; exactly one field is set.
type message struct {
	Node  *nodeState
	Full  []peerState
	KeyOp *keyOp
}

// decodeMessage decodes any message this package sends. It copies what it
// keeps: memberlist reuses the buffer after NotifyMsg returns.
func decodeMessage(b []byte) (message, error) {
	kind, r, err := header(b)
	if err != nil {
		return message{}, err
	}
	var m message
	switch kind {
	case kindNode:
		n := r.nodeState()
		m.Node = &n
	case kindFull:
		k := r.count(maxEntries, "entries")
		m.Full = make([]peerState, 0, k)
		for range k {
			s := r.sub()
			var p peerState
			p.nodeState = s.nodeState()
			p.Liveness = s.byte()
			p.Since = s.time()
			p.Addr = s.string()
			p.Meta = s.bytes()
			if s.err != nil {
				r.fail(s.err)
				break
			}
			if int(p.Liveness) >= len(livenessNames) {
				p.Liveness = livenessAlive
			}
			m.Full = append(m.Full, p)
		}
	case kindKeyOp:
		var op keyOp
		op.Op = r.byte()
		op.Version = r.uvarint()
		op.Key = r.bytes()
		op.From = r.string()
		if r.err == nil && (op.Op < keyOpInstall || op.Op > keyOpRemove) {
			r.fail(fmt.Errorf("gossip message: unknown key operation %d", op.Op))
		}
		m.KeyOp = &op
	default:
		return message{}, fmt.Errorf("gossip message: unknown kind %q", kind)
	}
	if r.err != nil {
		return message{}, r.err
	}
	return m, nil
}

// ---- node meta ----

// encodeMeta encodes NodeMeta for memberlist's alive messages, which carry
// at most memberlist.MetaMaxSize (512) bytes.
func encodeMeta(m NodeMeta) []byte {
	b := []byte{formatV1}
	b = binary.AppendUvarint(b, uint64(len(m.Roles)))
	for _, r := range m.Roles {
		b = appendString(b, r)
	}
	b = appendString(b, m.APIAddr)
	b = appendString(b, m.DeephavenVersion)
	b = appendString(b, m.DhvisorVersion)
	b = appendString(b, m.Kind)
	return appendString(b, m.PackageVersion)
}

func decodeMeta(b []byte) (NodeMeta, error) {
	var m NodeMeta
	if len(b) == 0 {
		return m, nil
	}
	if b[0] != formatV1 {
		return m, fmt.Errorf("%w %d in node meta", ErrUnknownFormat, b[0])
	}
	r := &reader{b: b[1:]}
	if k := r.count(64, "roles"); k > 0 {
		m.Roles = make([]string, k)
		for i := range m.Roles {
			m.Roles[i] = r.string()
		}
	}
	m.APIAddr = r.string()
	m.DeephavenVersion = r.string()
	m.DhvisorVersion = r.string()
	// Kind came later: agents of earlier releases end the meta here.
	if len(r.b) > 0 {
		m.Kind = r.string()
	}
	if len(r.b) > 0 {
		m.PackageVersion = r.string()
	}
	return m, r.err
}
