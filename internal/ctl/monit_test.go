package ctl

import (
	"bytes"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	pb "github.com/dhvisor/dhvisor/proto/agentpb"
)

func TestParseMonitArgs(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    monitArgs
		wantErr string
	}{
		{args: []string{"summary"}, want: monitArgs{action: monitSummary, names: []string{}}},
		{args: []string{"-B", "summary", "web_api_service"}, want: monitArgs{action: monitSummary, names: []string{"web_api_service"}, batch: true}},
		// glibc's getopt permutes: options after the action count.
		{args: []string{"summary", "-B"}, want: monitArgs{action: monitSummary, names: []string{}, batch: true}},
		{args: []string{"-g", "dhquery", "restart"}, want: monitArgs{action: monitRestart, names: []string{}, group: "dhquery"}},
		{args: []string{"-gdhquery", "stop", "all"}, want: monitArgs{action: monitStop, names: []string{monitAll}, group: "dhquery"}},
		{args: []string{"-vBc", "/etc/monit/monitrc", "status", "x"}, want: monitArgs{action: monitStatus, names: []string{"x"}, batch: true, ignored: []string{"-c /etc/monit/monitrc"}}},
		{args: []string{"-c", "/etc/monit/monitrc", "-t"}, want: monitArgs{syntaxOnly: true, ignored: []string{"-c /etc/monit/monitrc"}}},
		{args: []string{"--socket", "/s", "start", "all"}, want: monitArgs{action: monitStart, names: []string{monitAll}, socket: "/s"}},
		{args: []string{"start", "--", "-odd-name"}, want: monitArgs{action: monitStart, names: []string{"-odd-name"}}},
		{args: []string{"-V"}, want: monitArgs{version: true}},
		{args: []string{"start"}, wantErr: "Please specify a service name or 'all' after start"},
		{args: []string{"bogus"}, wantErr: "Invalid argument -- bogus  (-h will show valid arguments)"},
		{args: []string{"-x", "summary"}, wantErr: "Invalid option -- x  (-h will show valid options)"},
		{args: []string{"--frob"}, wantErr: "Invalid option -- frob"},
		{args: []string{"summary", "-g"}, wantErr: "Option -g requires an argument"},
		{args: []string{"-d", "30"}, wantErr: "runs no daemon"},
		{args: []string{}, wantErr: "give an action"},
		{args: []string{"quit"}, wantErr: "does not stop dhagent"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			got, err := parseMonitArgs(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseMonitArgs(f *testing.F) {
	for _, s := range []string{"summary", "-B summary x", "-g g start all", "-gX -vB status", "-c", "--socket=/x reload", "-- -t", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseMonitArgs(strings.Split(s, " "))
		if err == nil && a.action == "" && !a.help && !a.version && !a.syntaxOnly {
			t.Fatalf("%q: accepted without an action: %+v", s, a)
		}
	})
}

func TestArgsAsMonit(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want []string
	}{
		{[]string{"/usr/bin/monit", "summary"}, []string{"monit", "summary"}},
		{[]string{"monit"}, []string{"monit"}},
		{[]string{"/usr/bin/dhctl", "status"}, []string{"status"}},
		{nil, nil},
	} {
		if got := Args(tc.argv); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Args(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

func TestMonitSelect(t *testing.T) {
	resp := &pb.StatusResponse{Node: "dh1", Services: []*pb.ServiceStatus{
		{Name: "configuration_server", State: "OK", Monitored: true, Groups: []string{"dhinfra"}},
		{Name: "authentication_server", State: "Execution failed", Monitored: true, Groups: []string{"dhinfra"}},
		{Name: "db_query_server", State: "Stopped", Groups: []string{"dhquery"}},
	}}
	names := func(svcs []monitService) string {
		var out []string
		for _, s := range svcs {
			out = append(out, s.name+"="+s.status)
		}
		return strings.Join(out, " ")
	}
	for _, tc := range []struct {
		a       monitArgs
		want    string
		wantMsg string
	}{
		{a: monitArgs{action: monitSummary}, want: "dh1=OK configuration_server=OK authentication_server=Execution failed db_query_server=Not monitored"},
		{a: monitArgs{action: monitStatus}, want: "configuration_server=OK authentication_server=Execution failed db_query_server=Not monitored dh1=OK"},
		{a: monitArgs{action: monitSummary, names: []string{"db_query_server", "ignored"}}, want: "db_query_server=Not monitored"},
		{a: monitArgs{action: monitSummary, group: "dhinfra"}, want: "configuration_server=OK authentication_server=Execution failed"},
		{a: monitArgs{action: monitSummary, names: []string{"nosuch"}}, wantMsg: "Service 'nosuch' not found"},
		{a: monitArgs{action: monitStatus, group: "nog"}, wantMsg: "Service group 'nog' not found"},
	} {
		got, msg := monitSelect(resp, tc.a, time.Unix(0, 0))
		if msg != tc.wantMsg || names(got) != tc.want {
			t.Errorf("%+v: got %q %q, want %q %q", tc.a, names(got), msg, tc.want, tc.wantMsg)
		}
	}
	all, _ := monitSelect(resp, monitArgs{action: monitValidate}, time.Unix(0, 0))
	if bad := monitErrors(all); !reflect.DeepEqual(bad, []string{"authentication_server"}) {
		t.Errorf("validate fails on %q, want authentication_server only", bad)
	}
}

// Without an agent, monit's command line fails with 1 except reload, which
// monit 5.33 answers with 0 when its daemon is not running.
func TestMonitWithoutAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"summary"}, 1, "the dhagent daemon is not running"},
		{[]string{"status", "x"}, 1, "the dhagent daemon is not running"},
		{[]string{"start", "all"}, 1, "the dhagent daemon is not running"},
		{[]string{"reload"}, 0, "dhagent is not running"},
		{[]string{"bogus"}, 1, "Invalid argument -- bogus"},
		{[]string{"-h"}, 0, ""},
		{[]string{"-c", "/etc/monitrc", "-V"}, 0, "-c /etc/monitrc ignored"},
	} {
		var out, errOut bytes.Buffer
		code := Execute(append([]string{"--socket", sock, "monit"}, tc.args...), &out, &errOut)
		if code != tc.code || !strings.Contains(errOut.String(), tc.stderr) || strings.Contains(errOut.String(), "dhctl:") {
			t.Errorf("monit %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, errOut.String(), tc.code, tc.stderr)
		}
	}
}
