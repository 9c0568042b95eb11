// Package exepages drops the executable's start-up pages from the resident set once a process is ready.
//
// A Go binary's code and read-only data are file-backed pages of the executable, counted in the process's
// resident set once touched. Start-up touches far more of them than the running process uses: package
// initialisation (protobuf descriptor registration, Kubernetes API types, Prometheus, OpenTelemetry),
// flag parsing, configuration and the first certificate, and the kernel maps up to 64 KiB around each
// faulted page (fault-around). Measured on `ambit waypoint`, idle: 23.7 MiB of text and read-only data
// resident after start-up, 10 MiB once the pages only start-up needed are dropped and the process has
// run a while (waypoint/README.md "Memory"). The pages mapped back cost a minor fault each, once: CPU
// per request at the maximum rate of bench-waypoint's engine 46.8 µs with the trim, 46.1 µs without.
//
// Trim drops every resident page of the executable's read-only mappings (madvise MADV_DONTNEED): the
// process keeps running, and each page it touches again is mapped back from the page cache (a minor
// fault, no disk I/O while the file stays cached), so the resident set becomes the working set. It is
// only done on mappings that hold no private copy of any page (Anonymous 0 in /proc/self/smaps, as a
// read-only mapping stays unless a debugger writes breakpoints into it): there, dropping a page loses
// nothing. (Private_Dirty may be non-zero: a file page the page cache has not written back yet, as in a
// binary just built, counts as dirty; it is still the page cache's page, not a copy.) Writable mappings (data, bss, heap) are never touched. Plan, the choice
// of ranges, is a pure function of the smaps text.
//
// It imports only the standard library.
package exepages

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Range is one mapping of the executable that Trim drops.
type Range struct {
	Start, End uintptr
	Perms      string
	// Rss is the mapping's resident size in bytes before the trim.
	Rss int64
}

// mapping is one entry of /proc/PID/smaps.
type mapping struct {
	start, end  uintptr
	perms, path string
	rss, anon   int64 // bytes
	haveFields  int
}

// Plan returns the mappings of exe (the path as /proc/PID/maps shows it) that can be dropped: not
// writable, resident, and holding no anonymous (private copy) page. A mapping whose smaps entry lacks one of the fields it
// checks is left alone.
func Plan(smaps []byte, exe string) ([]Range, error) {
	var out []Range
	var cur *mapping
	flush := func() {
		if cur == nil || cur.path != exe || cur.haveFields != 2 || strings.Contains(cur.perms, "w") ||
			cur.rss == 0 || cur.anon != 0 {
			return
		}
		out = append(out, Range{Start: cur.start, End: cur.end, Perms: cur.perms, Rss: cur.rss})
	}
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m, ok, err := parseHeader(line); err != nil {
			return nil, err
		} else if ok {
			flush()
			cur = &m
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("parse smaps: field before the first mapping: %q", line)
		}
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case "Rss":
			dst = &cur.rss
		case "Anonymous":
			dst = &cur.anon
		default:
			continue
		}
		kb, err := parseKB(rest)
		if err != nil {
			return nil, fmt.Errorf("parse smaps %s of %x-%x: %w", name, cur.start, cur.end, err)
		}
		*dst = kb << 10
		cur.haveFields++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read smaps: %w", err)
	}
	flush()
	return out, nil
}

// parseHeader parses a mapping line ("start-end perms offset dev inode [path]"); ok is false for a
// field line ("Name:   value kB").
func parseHeader(line string) (mapping, bool, error) {
	addrs, rest, ok := strings.Cut(line, " ")
	lo, hi, isRange := strings.Cut(addrs, "-")
	if !ok || !isRange || strings.HasSuffix(addrs, ":") {
		return mapping{}, false, nil
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil {
		return mapping{}, false, nil // a field line whose name contains '-' and ' '
	}
	if end <= start {
		return mapping{}, false, fmt.Errorf("parse smaps: empty mapping %q", line)
	}
	// perms, offset, dev, inode, then the path (which may contain spaces) after the padding.
	f := rest
	var perms string
	for i := range 4 {
		var field string
		field, f, _ = strings.Cut(strings.TrimLeft(f, " "), " ")
		if field == "" {
			return mapping{}, false, fmt.Errorf("parse smaps: short mapping line %q", line)
		}
		if i == 0 {
			perms = field
		}
	}
	return mapping{start: uintptr(start), end: uintptr(end), perms: perms, path: strings.TrimLeft(f, " ")}, true, nil
}

func parseKB(s string) (int64, error) {
	v, ok := strings.CutSuffix(strings.TrimSpace(s), " kB")
	if !ok {
		return 0, fmt.Errorf("want a size in kB, got %q", strings.TrimSpace(s))
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want a size in kB, got %q", strings.TrimSpace(s))
	}
	return n, nil
}

// Result is what one Trim did.
type Result struct {
	Ranges []Range
	// Dropped is the resident size of the trimmed mappings before the trim, in bytes.
	Dropped int64
}

// Trim drops the resident pages of this process's executable that Plan selects.
func Trim() (Result, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return Result{}, fmt.Errorf("read executable path: %w", err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return Result{}, fmt.Errorf("read smaps: %w", err)
	}
	ranges, err := Plan(smaps, exe)
	if err != nil {
		return Result{}, err
	}
	var res Result
	for _, r := range ranges {
		// The range is the executable's own mapping, mapped for the life of the process; the raw system
		// call takes it as addresses (no Go pointer is made from them).
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, r.Start, r.End-r.Start, syscall.MADV_DONTNEED); errno != 0 {
			return res, fmt.Errorf("drop pages %x-%x: %w", r.Start, r.End, errno)
		}
		res.Ranges = append(res.Ranges, r)
		res.Dropped += r.Rss
	}
	return res, nil
}

// pollInterval is how often RunOnReady checks readiness.
const pollInterval = 250 * time.Millisecond

// RunOnReady waits until ready reports true, then trims once and returns (at once when ctx ends first).
// Readiness means start-up is over: listeners bound, configuration and certificates loaded.
func RunOnReady(ctx context.Context, ready func() bool, log *slog.Logger) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for !ready() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	res, err := Trim()
	if err != nil {
		log.Warn("could not drop start-up pages of the executable", "err", err)
		return
	}
	log.Debug("dropped start-up pages of the executable", "mappings", len(res.Ranges), "resident_bytes", res.Dropped)
}
