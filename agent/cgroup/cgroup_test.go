package cgroup

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dhvisor/dhvisor/agent/procfs"
)

// tree writes a fake root: /proc/self/mountinfo, /proc/<pid>/cgroup and
// the cgroup files, each given as path → content.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const unit = "/dhvisor.slice/dhvisor-x.service"

func TestUsage(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	me, err := procfs.ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// The test's own numbers move while it runs (the race detector's
	// allocations): its case is checked for the process's own scale, far
	// from the slice's, not to the byte.
	const wild = 1 << 62
	const (
		v2Mounts     = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
		hybridMounts = "89 81 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
			"90 89 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
			"91 89 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n" +
			"92 89 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n" +
			"93 89 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
		// RHEL 7/8 style: cpu and cpuacct co-mounted, no unified hierarchy.
		v1Mounts = "20 19 0:18 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n" +
			"21 19 0:19 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
			"22 19 0:20 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
	)
	tests := []struct {
		name      string
		files     map[string]string
		wantRSS   uint64
		wantTicks uint64
	}{
		{
			name: "v2",
			files: map[string]string{
				"proc/self/mountinfo":                      v2Mounts,
				"proc/42/cgroup":                           "0::" + unit + "\n",
				"sys/fs/cgroup" + unit + "/cgroup.procs":   "7\n8\n",
				"sys/fs/cgroup" + unit + "/memory.stat":    "anon 1000\nfile 999999\nfile_mapped 24\nshmem 5\n",
				"sys/fs/cgroup" + unit + "/cpu.stat":       "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
				"sys/fs/cgroup" + unit + "/memory.current": "1000000\n",
			},
			wantRSS: 1024, wantTicks: 250,
		},
		{
			name: "hybrid: memory from v1, cpu from the unified cpu.stat",
			files: map[string]string{
				"proc/self/mountinfo": hybridMounts,
				"proc/42/cgroup": "9:name=systemd:/docker/c" + unit + "\n4:memory:/docker/c" + unit +
					"\n2:cpuacct:/docker/c\n0::/docker/c" + unit + "\n",
				"sys/fs/cgroup/unified/docker/c" + unit + "/cgroup.procs": "7\n",
				"sys/fs/cgroup/unified/docker/c" + unit + "/cpu.stat":     "usage_usec 1000000\n",
				"sys/fs/cgroup/memory/docker/c" + unit + "/memory.stat":   "cache 5000000\nrss 1\ntotal_cache 5000000\ntotal_rss 4096\ntotal_mapped_file 4096\n",
			},
			wantRSS: 8192, wantTicks: 100,
		},
		{
			name: "v1 with co-mounted cpu,cpuacct",
			files: map[string]string{
				"proc/self/mountinfo": v1Mounts,
				"proc/42/cgroup":      "4:memory:" + unit + "\n3:cpu,cpuacct:" + unit + "\n1:name=systemd:" + unit + "\n",
				"sys/fs/cgroup/systemd" + unit + "/cgroup.procs":           "7\n",
				"sys/fs/cgroup/memory" + unit + "/memory.stat":             "total_rss 100\ntotal_mapped_file 0\n",
				"sys/fs/cgroup/cpu,cpuacct" + unit + "/cpuacct.usage":      "30000000000\n",
				"sys/fs/cgroup/cpu,cpuacct" + unit + "/cpuacct.usage_user": "1\n",
			},
			wantRSS: 100, wantTicks: 3000,
		},
		{
			name: "v1 without accounting: the members' own numbers, not the slice's",
			files: map[string]string{
				"proc/self/mountinfo": v1Mounts,
				"proc/42/cgroup":      "4:memory:/\n3:cpu,cpuacct:/\n1:name=systemd:" + unit + "\n",
				"sys/fs/cgroup/systemd" + unit + "/cgroup.procs": self + "\n",
				"sys/fs/cgroup/memory/memory.stat":               "total_rss 999999999\ntotal_mapped_file 0\n",
				"sys/fs/cgroup/cpu,cpuacct/cpuacct.usage":        "999999999999\n",
			},
			wantRSS: me.RSSBytes, wantTicks: wild,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := of(tree(t, tt.files), 42)
			if err != nil {
				t.Fatal(err)
			}
			u, err := g.Usage()
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantTicks == wild {
				// Own numbers: within a factor of two of the reading above,
				// and nowhere near the slice's 999999999.
				if u.RSSBytes < tt.wantRSS/2 || u.RSSBytes > tt.wantRSS*2 || u.CPUTicks >= 99999 {
					t.Errorf("usage %+v, want the process's own (RSS about %d)", u, tt.wantRSS)
				}
			} else if u.RSSBytes != tt.wantRSS || u.CPUTicks != tt.wantTicks {
				t.Errorf("RSS %d CPU ticks %d, want %d and %d", u.RSSBytes, u.CPUTicks, tt.wantRSS, tt.wantTicks)
			}
			if u.Procs < 1 {
				t.Errorf("procs %d", u.Procs)
			}
		})
	}
}

func TestOfErrors(t *testing.T) {
	root := tree(t, map[string]string{
		"proc/self/mountinfo": "30 25 0:26 / /sys rw - sysfs sysfs rw\n",
		"proc/42/cgroup":      "0::" + unit + "\n",
	})
	if _, err := of(root, 42); err == nil || !strings.Contains(err.Error(), "no mounted hierarchy") {
		t.Fatalf("no cgroup mount: err %v", err)
	}
	if _, err := of(root, 43); err == nil {
		t.Fatal("missing process: no error")
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", "/plain": "/plain", `/x\`: `/x\`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOwnGroup reads the test's own group on this host, whatever its
// cgroup layout: it must find at least this process.
func TestOwnGroup(t *testing.T) {
	g, err := Of(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	u, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u.Procs < 1 || u.RSSBytes == 0 {
		t.Fatalf("own group usage %+v", u)
	}
}

func TestUnitPathAndWithin(t *testing.T) {
	tests := []struct {
		name, file, want string
		ok               bool
	}{
		{"unified", "0::/system.slice/dh-db_query_server.service\n", "/system.slice/dh-db_query_server.service", true},
		{"hybrid prefers the unified hierarchy", "12:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n", "/system.slice/a.service", true},
		{"v1 only", "5:memory:/x\n1:name=systemd:/system.slice/b.service\n", "/system.slice/b.service", true},
		{"a path with colons", "0::/a:b:c\n", "/a:b:c", true},
		{"no tracked hierarchy", "5:memory:/x\n", "", false},
		{"garbage", "not a cgroup file", "", false},
		{"relative path", "0::relative\n", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := unitPath(ParseMembership([]byte(tt.file)))
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("unitPath = %q, %v; want %q ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
	within := []struct {
		group, unit string
		want        bool
	}{
		{"/system.slice/a.service", "/system.slice/a.service", true},
		{"/system.slice/a.service/worker", "/system.slice/a.service", true},
		{"/system.slice/a.service2", "/system.slice/a.service", false},
		{"/system.slice/b.service", "/system.slice/a.service", false},
		{"/system.slice/a.service", "/", false},
		{"/x", "", false},
	}
	for _, w := range within {
		if got := Within(w.group, w.unit); got != w.want {
			t.Errorf("Within(%q, %q) = %v", w.group, w.unit, got)
		}
	}
}

// FuzzParseMembership: whatever the file holds, parsing neither panics nor
// yields a tracked group that is not an absolute path.
func FuzzParseMembership(f *testing.F) {
	for _, s := range []string{"0::/system.slice/a.service\n", "12:name=systemd:/x\n0::/y\n", "5:cpu,cpuacct:/z\n", "::", "\n\n:", "0::"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := unitPath(ParseMembership(b))
		if err == nil && !strings.HasPrefix(p, "/") {
			t.Fatalf("unit path %q from %q", p, b)
		}
		_ = Within(p, p)
	})
}
