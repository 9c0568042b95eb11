package exepages

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// entry builds one smaps entry with the fields Plan reads (and some it skips).
func entry(header string, rss, dirty, anon int) string {
	return header + "\n" +
		"Size:              16672 kB\n" +
		"KernelPageSize:        4 kB\n" +
		"Rss:               " + itoa(rss) + " kB\n" +
		"Pss:               " + itoa(rss) + " kB\n" +
		"Private_Clean:     " + itoa(rss-dirty) + " kB\n" +
		"Private_Dirty:     " + itoa(dirty) + " kB\n" +
		"Anonymous:         " + itoa(anon) + " kB\n" +
		"VmFlags: rd ex mr mw me sd\n"
}

func itoa(n int) string {
	var b []byte
	if n == 0 {
		return "0"
	}
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestPlan(t *testing.T) {
	const exe = "/usr/local/bin/ambit"
	text := "00400000-01448000 r-xp 00000000 fe:00 11445635                           /usr/local/bin/ambit"
	rodata := "01448000-0276a000 r--p 01048000 fe:00 11445635                           /usr/local/bin/ambit"
	data := "0276a000-0282c000 rw-p 0236a000 fe:00 11445635                           /usr/local/bin/ambit"
	heap := "c000000000-c000400000 rw-p 00000000 00:00 0 "
	libc := "7f0000000000-7f0000100000 r-xp 00000000 fe:00 42                         /usr/lib/x86_64-linux-gnu/libc.so.6"
	cases := []struct {
		name  string
		smaps string
		exe   string
		want  []Range
		err   string
	}{
		{"text and rodata, not data, heap or another file",
			entry(text, 12000, 0, 0) + entry(rodata, 11000, 0, 0) + entry(data, 600, 500, 500) + entry(heap, 4000, 4000, 4000) + entry(libc, 1000, 0, 0),
			exe, []Range{{0x400000, 0x1448000, "r-xp", 12000 << 10}, {0x1448000, 0x276a000, "r--p", 11000 << 10}}, ""},
		{"a mapping holding a private copy (breakpoints) is kept", entry(text, 12000, 4, 4) + entry(rodata, 11000, 0, 0),
			exe, []Range{{0x1448000, 0x276a000, "r--p", 11000 << 10}}, ""},
		{"dirty file pages not written back yet (a fresh build) are the page cache's", entry(text, 12000, 1788, 0),
			exe, []Range{{0x400000, 0x1448000, "r-xp", 12000 << 10}}, ""},
		{"nothing resident: nothing to do", entry(text, 0, 0, 0), exe, nil, ""},
		{"another executable path", entry(text, 12000, 0, 0), "/bin/other", nil, ""},
		{"a path with spaces",
			entry(strings.Replace(text, "/usr/local/bin/ambit", "/tmp/my dir/ambit (deleted)", 1), 8, 0, 0),
			"/tmp/my dir/ambit (deleted)", []Range{{0x400000, 0x1448000, "r-xp", 8 << 10}}, ""},
		{"a missing field: left alone", text + "\nRss:   8 kB\nPrivate_Dirty: 0 kB\n", exe, nil, ""},
		{"empty", "", exe, nil, ""},
		{"bad size", strings.Replace(entry(text, 8, 0, 0), "Rss:               8 kB", "Rss: eight kB", 1), exe, nil, "want a size in kB"},
		{"size without unit", strings.Replace(entry(text, 8, 0, 0), "Rss:               8 kB", "Rss: 8", 1), exe, nil, "want a size in kB"},
		{"field before any mapping", "Rss: 8 kB\n", exe, nil, "field before the first mapping"},
		{"inverted range", entry("01448000-00400000 r-xp 00000000 fe:00 1 /usr/local/bin/ambit", 8, 0, 0), exe, nil, "empty mapping"},
		{"short header", "00400000-01448000 r-xp 00000000\n", exe, nil, "short mapping line"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Plan([]byte(c.smaps), c.exe)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("range %d = %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

// exeRss is the resident size of this test binary's read-only mappings and of its writable ones.
func exeRss(t *testing.T) (ro, rw int64) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var writable bool
	var mine bool
	for _, line := range strings.Split(string(smaps), "\n") {
		if m, ok, err := parseHeader(line); err != nil {
			t.Fatal(err)
		} else if ok {
			mine, writable = m.path == exe, strings.Contains(m.perms, "w")
			continue
		}
		if v, ok := strings.CutPrefix(line, "Rss:"); ok && mine {
			kb, err := parseKB(v)
			if err != nil {
				t.Fatal(err)
			}
			if writable {
				rw += kb << 10
			} else {
				ro += kb << 10
			}
		}
	}
	return ro, rw
}

// TestTrim drops the test binary's own read-only pages: they stop being resident, the process runs on
// (every page it touches is mapped back), and the writable data is not touched.
func TestTrim(t *testing.T) {
	roBefore, _ := exeRss(t)
	if roBefore == 0 {
		t.Fatal("the test binary has no resident read-only pages")
	}
	res, err := Trim()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Ranges) == 0 || res.Dropped == 0 {
		t.Fatalf("Trim dropped nothing: %+v", res)
	}
	for _, r := range res.Ranges {
		if strings.Contains(r.Perms, "w") {
			t.Errorf("Trim dropped the writable mapping %+v", r)
		}
	}
	roAfter, _ := exeRss(t)
	if roAfter >= roBefore {
		t.Errorf("read-only pages resident: %d bytes before, %d after", roBefore, roAfter)
	}
	// Package data written before the trim is still there.
	if marker.Load() != 0 {
		t.Fatal("marker changed")
	}
	marker.Store(42)
	if _, err := Trim(); err != nil {
		t.Fatal(err)
	}
	if marker.Load() != 42 {
		t.Fatalf("marker = %d after a second trim, want 42", marker.Load())
	}
	t.Logf("dropped %d mappings, %d KiB resident before, %d KiB after", len(res.Ranges), roBefore>>10, roAfter>>10)
}

var marker atomic.Int64

func TestRunOnReady(t *testing.T) {
	testutil.CheckGoroutines(t)
	t.Run("trims once ready", func(t *testing.T) {
		var calls atomic.Int32
		ready := func() bool { return calls.Add(1) >= 3 }
		RunOnReady(context.Background(), ready, slog.New(slog.DiscardHandler))
		if calls.Load() != 3 {
			t.Fatalf("ready called %d times, want 3 (until it reported true)", calls.Load())
		}
	})
	t.Run("returns when the context ends first", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var calls atomic.Int32
		ready := func() bool {
			if calls.Add(1) == 2 {
				cancel()
			}
			return false
		}
		RunOnReady(ctx, ready, slog.New(slog.DiscardHandler))
		if calls.Load() != 2 {
			t.Fatalf("ready called %d times after cancel, want 2", calls.Load())
		}
	})
}
