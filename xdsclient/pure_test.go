package xdsclient

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestNextBackoff(t *testing.T) {
	maxRnd := func(n int64) int64 { return n - 1 } // upper end of the jitter range
	zeroRnd := func(int64) int64 { return 0 }      // lower end
	cases := []struct {
		name     string
		failures int
		benign   bool
		rnd      func(int64) int64
		want     time.Duration
	}{
		{"first failure, top of range", 1, false, maxRnd, 10 * time.Millisecond},
		{"first failure, bottom of range", 1, false, zeroRnd, 5 * time.Millisecond},
		{"doubles per failure", 4, false, maxRnd, 80 * time.Millisecond},
		{"capped at max", 30, false, maxRnd, 15 * time.Second},
		{"capped, bottom of range", 30, false, zeroRnd, 7500 * time.Millisecond},
		{"benign end reconnects at the initial delay", 9, true, maxRnd, 10 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := nextBackoff(DefaultInitialBackoff, DefaultMaxBackoff, tc.failures, tc.benign, tc.rnd); got != tc.want {
				t.Errorf("nextBackoff = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBenign(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"clean end", io.EOF, true},
		{"wrapped clean end", fmt.Errorf("receive: %w", io.EOF), true},
		{"cancelled", status.Error(codes.Canceled, "x"), true},
		{"deadline", status.Error(codes.DeadlineExceeded, "x"), true},
		{"unknown", status.Error(codes.Unknown, "x"), true},
		{"transport closing", status.Error(codes.Unavailable, "transport is closing"), true},
		{"goaway", status.Error(codes.Unavailable, "received prior goaway: code: NO_ERROR"), true},
		{"connection refused", status.Error(codes.Unavailable, "connection error: dial tcp: connection refused"), false},
		{"unauthenticated", status.Error(codes.Unauthenticated, "bad token"), false},
		{"plain error", errors.New("boom"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := benign(tc.err); got != tc.want {
				t.Errorf("benign(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestNodeInfo(t *testing.T) {
	cases := []struct {
		name    string
		in      NodeInfo
		id      string
		meta    map[string]string
		wantErr bool
	}{
		{"defaults", NodeInfo{PodName: "zt", PodNamespace: "istio-system"},
			"ztunnel~1.1.1.1~zt.istio-system~istio-system.svc.cluster.local",
			map[string]string{"NAME": "zt", "NAMESPACE": "istio-system", "INSTANCE_IPS": "1.1.1.1", "CLUSTER_ID": "Kubernetes", "NODE_NAME": ""}, false},
		{"full", NodeInfo{IP: "10.0.0.1", PodName: "zt", PodNamespace: "ns", NodeName: "n1", ClusterID: "c2", ServiceAccount: "ztunnel",
			Metadata: map[string]any{"DNS_CAPTURE": "true"}},
			"ztunnel~10.0.0.1~zt.ns~ns.svc.cluster.local",
			map[string]string{"NODE_NAME": "n1", "CLUSTER_ID": "c2", "SERVICE_ACCOUNT": "ztunnel", "DNS_CAPTURE": "true"}, false},
		{"metadata CLUSTER_ID wins", NodeInfo{PodName: "zt", PodNamespace: "ns", ClusterID: "c2", Metadata: map[string]any{"CLUSTER_ID": "c3"}},
			"ztunnel~1.1.1.1~zt.ns~ns.svc.cluster.local", map[string]string{"CLUSTER_ID": "c3"}, false},
		{"metadata cannot override NAME", NodeInfo{PodName: "zt", PodNamespace: "ns", Metadata: map[string]any{"NAME": "x"}},
			"ztunnel~1.1.1.1~zt.ns~ns.svc.cluster.local", map[string]string{"NAME": "zt"}, false},
		{"missing pod", NodeInfo{PodNamespace: "ns"}, "", nil, true},
		{"unencodable metadata", NodeInfo{PodName: "a", PodNamespace: "b", Metadata: map[string]any{"X": struct{}{}}}, "", nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, err := tc.in.Proto()
			if (err != nil) != tc.wantErr {
				t.Fatalf("Proto error = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if n.GetId() != tc.id {
				t.Errorf("id = %q, want %q", n.GetId(), tc.id)
			}
			for k, v := range tc.meta {
				if got := n.GetMetadata().GetFields()[k].GetStringValue(); got != v {
					t.Errorf("metadata %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestNACKMessage(t *testing.T) {
	got := NACKMessage([]Rejection{{Name: "a", Err: errors.New("bad address")}, {Name: "ns/b"}})
	if want := "a: bad address; ns/b: rejected"; got != want {
		t.Errorf("NACKMessage = %q, want %q", got, want)
	}
}
