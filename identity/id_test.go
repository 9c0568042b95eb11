package identity

import (
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestWorkloadID(t *testing.T) {
	tests := []struct {
		name            string
		td, ns, sa      string
		want            string
		wantNotWorkload bool
		wantErr         bool
	}{
		{name: "all set", td: "example.org", ns: "demo", sa: "echo", want: "spiffe://example.org/ns/demo/sa/echo"},
		{name: "default trust domain", ns: "demo", sa: "echo", want: "spiffe://cluster.local/ns/demo/sa/echo"},
		{name: "default service account", td: "cluster.local", ns: "demo", want: "spiffe://cluster.local/ns/demo/sa/default"},
		{name: "empty namespace", sa: "echo", wantErr: true, wantNotWorkload: true},
		{name: "bad trust domain", td: "Bad Domain", ns: "demo", wantErr: true},
		{name: "bad segment", ns: "de/mo", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := WorkloadID(tt.td, tt.ns, tt.sa)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("WorkloadID = %v, want error", got)
				}
				if tt.wantNotWorkload && !errors.Is(err, ErrNotWorkloadID) {
					t.Fatalf("err = %v, want ErrNotWorkloadID", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Fatalf("WorkloadID = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseWorkloadID(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		ns, sa string
		ok     bool
	}{
		{name: "workload", in: "spiffe://cluster.local/ns/demo/sa/echo", ns: "demo", sa: "echo", ok: true},
		{name: "other trust domain", in: "spiffe://example.org/ns/a/sa/b", ns: "a", sa: "b", ok: true},
		{name: "no path", in: "spiffe://cluster.local", ok: false},
		{name: "swapped keywords", in: "spiffe://cluster.local/sa/demo/ns/echo", ok: false},
		{name: "extra segment", in: "spiffe://cluster.local/ns/demo/sa/echo/x", ok: false},
		{name: "short", in: "spiffe://cluster.local/ns/demo", ok: false},
		{name: "spire agent", in: "spiffe://example.org/spire/agent/join_token/abc", ok: false},
		{name: "not spiffe", in: "https://cluster.local/ns/demo/sa/echo", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParseWorkloadIDString(tt.in)
			if !tt.ok {
				if !errors.Is(err, ErrNotWorkloadID) {
					t.Fatalf("ParseWorkloadIDString(%q) = %v, %v; want ErrNotWorkloadID", tt.in, id, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ns, sa, err := ParseWorkloadID(id)
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Fatalf("ParseWorkloadID(%v) = %q, %q, %v; want %q, %q", id, ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
	if _, _, err := ParseWorkloadID(spiffeid.ID{}); !errors.Is(err, ErrNotWorkloadID) {
		t.Fatalf("zero ID: err = %v, want ErrNotWorkloadID", err)
	}
}
