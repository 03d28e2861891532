package check

// Threshold detects a resource value staying above a limit for several
// consecutive observations, like monit's
// "if totalmem > 2 GB for 3 cycles then restart": one spike is tolerated,
// a sustained excess is not.
type Threshold struct {
	// Limit is the value that must be exceeded; 0 (or less) disables the
	// threshold.
	Limit float64
	// Cycles is how many consecutive observations must exceed Limit; values
	// below 1 mean 1.
	Cycles int

	over int
}

// Observe records one value and reports whether the limit has now been
// exceeded for Cycles consecutive observations. It keeps reporting true
// while the excess lasts; Reset starts the count afresh, e.g. after the
// resulting restart.
func (t *Threshold) Observe(v float64) (exceeded bool) {
	if t.Limit <= 0 {
		return false
	}
	if v > t.Limit {
		cycles := max(t.Cycles, 1)
		t.over = min(t.over+1, cycles)
		return t.over == cycles
	}
	// NaN lands here too: it is no evidence of excess.
	t.over = 0
	return false
}

// Reset clears the count of consecutive excesses.
func (t *Threshold) Reset() {
	t.over = 0
}
