// Package relay passes a long step's progress to the caller that asked for
// it, until that caller goes away: operation steps (restarts, installs) go
// on without their caller, and must not write to a closed stream.
package relay

import "sync"

// Relay forwards values of type T to a caller's function.
type Relay[T any] struct {
	mu       sync.Mutex
	progress func(T)
}

// New returns a relay to progress (nil: nothing is passed on).
func New[T any](progress func(T)) *Relay[T] { return &Relay[T]{progress: progress} }

// Send passes p on, unless the caller has gone.
func (r *Relay[T]) Send(p T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.progress != nil {
		r.progress(p)
	}
}

// Detach stops passing progress on. It returns once no call to the
// caller's function is under way.
func (r *Relay[T]) Detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.progress = nil
}
