package monit

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/test/need"
)

// strictness lists where dhvisor refuses what monit 5.33 accepts, and why
// the refusal says so. Every file in testdata/corpus/strict is listed here
// and the test checks that monit -t does accept each one.
var strictness = map[string]string{
	"port-99999.conf":             "monit takes any port number; no socket has it",
	"port-0.conf":                 "port 0 is never listened on",
	"retry-0.conf":                "monit takes retry 0: no attempt would be made",
	"program-timeout-0.conf":      "a program given no time at all cannot start anything",
	"gnu-regex.conf":              "glibc's \\< \\> have no Go regexp equivalent",
	"check-action-exec.conf":      "a failed check restarts or alerts in dhvisor",
	"check-action-unmonitor.conf": "a failed check restarts or alerts in dhvisor",
	"restarts-exec.conf":          "a restart limit gives up or alerts in dhvisor",
	"mem-below.conf":              "dhvisor's limits are upper bounds",
	"mem-times-within.conf":       "dhvisor's resource limits count cycles in a row",
	"two-conditions.conf":         "dhvisor does not combine conditions in one if",
	"second-mem-limit.conf":       "dhvisor keeps one memory limit per service",
	"second-start.conf":           "monit keeps one of two start programs without a word",
	"http-status-999.conf":        "999 is not an HTTP status",
	"unix-udp.conf":               "dhvisor's unix check connects to stream sockets",
	"not-utf8.conf":               "agent.yaml and status output are text",
	"unterminated-program.conf":   "monit ends an unclosed program string at the end of the file",
}

func monitPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("monit")
	if err != nil {
		need.Missing(t, "monit 5.33 (apt-get install monit)")
	}
	return p
}

// monitAccepts runs monit -t on a control file that includes pattern,
// in a scratch directory of its own (monit wants its control file 0600).
func monitAccepts(t *testing.T, monit, pattern string) (bool, string) {
	t.Helper()
	dir := t.TempDir()
	rc := filepath.Join(dir, "monitrc")
	body := fmt.Sprintf("set daemon 10\nset pidfile %[1]s/monit.pid\nset idfile %[1]s/monit.id\nset statefile %[1]s/monit.state\ninclude %[2]s\n", dir, pattern)
	if err := os.WriteFile(rc, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(monit, "-t", "-c", rc)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir)
	out, err := cmd.CombinedOutput()
	return err == nil, string(out)
}

// want is the "# want: TEXT" line of a bad or strict case.
func want(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if w, ok := strings.CutPrefix(sc.Text(), "# want: "); ok {
			return w
		}
	}
	t.Fatalf("%s has no # want: line", file)
	return ""
}

func corpus(t *testing.T, kind string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "corpus", kind, "*.conf"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no %s corpus: %v", kind, err)
	}
	for i, f := range files {
		if files[i], err = filepath.Abs(f); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

func TestCorpusAgainstMonit(t *testing.T) {
	monit := monitPath(t)
	for _, kind := range []string{"good", "bad", "strict"} {
		for _, f := range corpus(t, kind) {
			name := filepath.Base(f)
			t.Run(kind+"/"+name, func(t *testing.T) {
				monitOK, monitOut := monitAccepts(t, monit, f)
				im, err := Load([]string{f})
				switch kind {
				case "good":
					if !monitOK {
						t.Fatalf("monit refuses a good case:\n%s", monitOut)
					}
					if err != nil {
						t.Fatalf("monit accepts it, the importer refuses it:\n%v", err)
					}
					if _, err := im.YAML(); err != nil {
						t.Fatal(err)
					}
				case "bad", "strict":
					if kind == "bad" && monitOK {
						t.Fatalf("monit accepts a bad case:\n%s", monitOut)
					}
					if kind == "strict" {
						if !monitOK {
							t.Fatalf("monit refuses a case listed as a deliberate strictness (move it to bad/):\n%s", monitOut)
						}
						if strictness[name] == "" {
							t.Fatalf("%s is not in the strictness list", name)
						}
					}
					if err == nil {
						t.Fatalf("monit refuses it, the importer accepts it (monit: %s)", monitOut)
					}
					w := want(t, f)
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
					es, ok := err.(Errors)
					if !ok || len(es) == 0 || es[0].File != f || es[0].Line < 1 {
						t.Errorf("error %q does not name %s:LINE", err, f)
					}
				}
			})
		}
	}
	var listed []string
	for _, f := range corpus(t, "strict") {
		listed = append(listed, filepath.Base(f))
	}
	var names []string
	for n := range strictness {
		names = append(names, n)
	}
	sort.Strings(names)
	if strings.Join(names, " ") != strings.Join(listed, " ") {
		t.Errorf("strictness list %v differs from testdata/corpus/strict %v", names, listed)
	}
}
