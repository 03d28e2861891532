package ctl

// Output formats of -o.
const (
	outputText = "text"
	outputJSON = "json"
)

func checkOutput(v string) error {
	if v != outputText && v != outputJSON {
		return fail(ExitError, "-o %s: expected %s or %s", v, outputText, outputJSON)
	}
	return nil
}
