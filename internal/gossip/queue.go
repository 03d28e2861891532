package gossip

import (
	"cmp"
	"math"
	"slices"
	"sync"
)

// broadcastQueue holds the messages waiting to be piggybacked on
// memberlist's gossip, each sent RetransmitMult*ceil(log10(n+1)) times as
// memberlist's own are.
//
// It replaces memberlist's TransmitLimitedQueue, which loses messages:
// when a new message invalidates the only one queued, the queue resets its
// id counter after giving the new message the next id, so a later message
// gets the same id, and one of the same length and transmit count then
// replaces it in the queue's tree, silently (hashicorp/memberlist#263,
// #322, unmerged). A node's newest service list, which is what a
// restart publishes, then reached no peer until push-pull, 10-24 s later,
// and kept a healthy service out of Envoy's endpoints that long.
type broadcastQueue struct {
	mult     int
	numNodes func() int

	mu    sync.Mutex
	items []*queued
	seq   uint64
}

type queued struct {
	b         *nodeBroadcast
	transmits int
	seq       uint64 // queue order: newer messages go first
}

// Queue adds b, dropping the queued messages it makes obsolete.
func (q *broadcastQueue) Queue(b *nodeBroadcast) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.items = slices.DeleteFunc(q.items, func(it *queued) bool {
		if b.Invalidates(it.b) {
			it.b.Finished()
			return true
		}
		return false
	})
	q.seq++
	q.items = append(q.items, &queued{b: b, seq: q.seq})
}

// Get returns messages for one packet of limit bytes, each costing
// overhead more: the least sent first, the newest first among those, as
// memberlist orders its own. A message sent its share of times leaves the
// queue.
func (q *broadcastQueue) Get(overhead, limit int) [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return nil
	}
	slices.SortFunc(q.items, func(a, b *queued) int {
		return cmp.Or(cmp.Compare(a.transmits, b.transmits), cmp.Compare(b.seq, a.seq))
	})
	sendLimit := retransmitLimit(q.mult, q.numNodes())
	var out [][]byte
	used := 0
	for _, it := range q.items {
		msg := it.b.Message()
		if used+overhead+len(msg) > limit {
			continue // a smaller one may still fit
		}
		used += overhead + len(msg)
		out = append(out, msg)
		it.transmits++
	}
	q.items = slices.DeleteFunc(q.items, func(it *queued) bool {
		if it.transmits >= sendLimit {
			it.b.Finished()
			return true
		}
		return false
	})
	return out
}

// retransmitLimit is memberlist's: mult times the number of decimal digits
// of the cluster size, so a message reaches every node with high
// probability as the cluster grows.
func retransmitLimit(mult, n int) int {
	return mult * int(math.Ceil(math.Log10(float64(n+1))))
}
