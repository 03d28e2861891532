package ctl

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMonitImport(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "svc.conf")
	if err := os.WriteFile(good, []byte("check process svc with pidfile /run/svc.pid\n  start program = \"/bin/true go\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.conf")
	if err := os.WriteFile(bad, []byte("check process svc with pidfile /run/svc.pid\n  if failed port 99999 then restart\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"monit", "import", good}, ExitOK, "start:\n            command: [/bin/true, go] # " + good + ":2", ""},
		{[]string{"monit", "import", dir + "/s*.conf"}, ExitOK, "pidfile: /run/svc.pid # " + good + ":1", ""},
		{[]string{"monit", "import", bad}, ExitError, "", bad + ":2:18: port 99999 is out of range"},
		{[]string{"monit", "import"}, ExitError, "", "requires at least 1 arg"},
	} {
		var out, errOut bytes.Buffer
		code := Execute(tc.args, &out, &errOut)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errOut.String(), tc.err) {
			t.Errorf("%v: exit %d, out:\n%s\nerr:\n%s\nwant exit %d, out with %q, err with %q", tc.args, code, out.String(), errOut.String(), tc.code, tc.out, tc.err)
		}
	}
}
