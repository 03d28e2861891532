package check

// Hysteresis turns a stream of probe results into a health verdict that
// flips only after several consecutive results agree, so a single slow or
// dropped probe does not restart a service.
//
// A new (or Reset) Hysteresis is in an unknown state. It becomes healthy
// after SuccessesToGood consecutive successes and unhealthy after
// FailuresToBad consecutive failures, exactly as it would from the opposite
// state. Unknown is not treated as healthy, so nothing relies on a service
// that has not yet proven itself, nor as unhealthy, so a service still
// starting is not declared failed by its first probe; the supervisor's
// start timeout bounds how long it may stay unknown.
//
// Counts below 1 are treated as 1, so the zero value follows every result.
type Hysteresis struct {
	FailuresToBad   int
	SuccessesToGood int

	known, healthy bool
	successes      int
	failures       int
	lastErr        error
}

// Observe records one probe result (nil for success). It returns the
// verdict afterwards, which is false while still unknown, and whether this
// result changed it, including leaving the unknown state.
func (h *Hysteresis) Observe(err error) (healthy bool, changed bool) {
	h.lastErr = err
	if err == nil {
		h.successes++
		h.failures = 0
		if h.successes >= max(h.SuccessesToGood, 1) && (!h.known || !h.healthy) {
			h.known, h.healthy, changed = true, true, true
		}
	} else {
		h.failures++
		h.successes = 0
		if h.failures >= max(h.FailuresToBad, 1) && (!h.known || h.healthy) {
			h.known, h.healthy, changed = true, false, true
		}
	}
	return h.healthy, changed
}

// Healthy returns the current verdict; known is false until enough results
// have been observed to reach one.
func (h *Hysteresis) Healthy() (healthy, known bool) {
	return h.healthy, h.known
}

// LastError returns the most recent result: nil if the last probe
// succeeded or none has been observed.
func (h *Hysteresis) LastError() error {
	return h.lastErr
}

// ConsecutiveFailures returns the length of the current run of failures.
func (h *Hysteresis) ConsecutiveFailures() int {
	return h.failures
}

// Reset returns to the unknown state, e.g. when the service is restarted and
// earlier results say nothing about the new process. The thresholds are
// kept.
func (h *Hysteresis) Reset() {
	*h = Hysteresis{FailuresToBad: h.FailuresToBad, SuccessesToGood: h.SuccessesToGood}
}
