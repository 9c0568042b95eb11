package state

import (
	"testing"
	"unsafe"
)

// same reports whether a and b share their bytes (one copy).
func same(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }

func TestInterner(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   *Interner
	}{{"unique", &Interner{}}, {"local", NewLocalInterner()}} {
		t.Run(tc.name, func(t *testing.T) {
			buf := []byte("ns-a")
			a := tc.in.Bytes(buf)
			buf[0] = 'X' // the decoder's buffer is reused: the canonical copy must not alias it
			if a != "ns-a" {
				t.Fatalf("Bytes aliased its input: %q", a)
			}
			if b := tc.in.Bytes([]byte("ns-a")); !same(a, b) {
				t.Error("a second Bytes made a second copy")
			}
			s := string([]byte("ns-a"))
			if b := tc.in.String(s); !same(a, b) {
				t.Error("String did not return the copy Bytes made")
			}
			if tc.in.String("") != "" || tc.in.Bytes(nil) != "" {
				t.Error("empty input did not give the empty string")
			}
			// Full: the cache is cleared, and equal strings still come back.
			for i := range maxInterned + 1 {
				tc.in.String(string(rune('a'+i%26)) + string(rune(i)))
			}
			if len(tc.in.m) > maxInterned {
				t.Errorf("cache holds %d entries, bound %d", len(tc.in.m), maxInterned)
			}
			if b := tc.in.String("ns-a"); b != "ns-a" {
				t.Errorf("after clearing: %q", b)
			}
		})
	}
	// Two unique-backed Interners share copies; two local ones do not (each keeps its own).
	u1, u2 := &Interner{}, &Interner{}
	if !same(u1.String(string([]byte("shared"))), u2.String(string([]byte("shared")))) {
		t.Error("unique-backed Interners made two copies")
	}
	l1, l2 := NewLocalInterner(), NewLocalInterner()
	if x := string([]byte("own")); same(l1.String(x), x) || same(l1.String(x), l2.String(x)) {
		t.Error("a local Interner returned its caller's string or another Interner's copy")
	}
}

func BenchmarkInternerMiss(b *testing.B) {
	keys := make([][]byte, 1<<16)
	for i := range keys {
		keys[i] = []byte("spiffe://cluster.local/ns/ns" + string(rune(i)) + "/sa/default")
	}
	for _, mode := range []struct {
		name string
		new  func() *Interner
	}{{"unique", func() *Interner { return &Interner{} }}, {"local", NewLocalInterner}} {
		b.Run(mode.name, func(b *testing.B) {
			b.ReportAllocs()
			in := mode.new()
			i := 0
			for b.Loop() {
				if i%len(keys) == 0 {
					in = mode.new() // every lookup a miss
				}
				in.Bytes(keys[i%len(keys)])
				i++
			}
		})
	}
}
