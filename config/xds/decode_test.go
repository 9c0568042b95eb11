package xds

import (
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/xdstest"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi"
)

// generic is the reference path: proto.Unmarshal and ConvertAddress.
func generic(name string, data []byte) (*workloadapi.Address, error) {
	a := &workloadapi.Address{}
	if err := proto.Unmarshal(data, a); err != nil {
		return nil, err
	}
	return a, nil
}

// checkFast asserts that when the fast path accepts data, the generic path accepts it too with an equal
// workload. It returns whether the fast path accepted.
func checkFast(t *testing.T, d *decoder, name string, data []byte) bool {
	t.Helper()
	w, ok := d.address(name, data)
	if !ok {
		return false
	}
	a, err := generic(name, data)
	if err != nil {
		t.Fatalf("fast path accepted what proto.Unmarshal refuses (%v): %+v", err, w)
	}
	want, svc, err := ConvertAddress(name, a)
	if err != nil || svc != nil {
		t.Fatalf("fast path accepted %+v; generic path: service %v, error %v", w, svc, err)
	}
	if !reflect.DeepEqual(w, want) {
		t.Fatalf("fast path and generic path differ:\nfast    %+v\ngeneric %+v", w, want)
	}
	return true
}

// fullPod sets every workload field the fast path decodes.
func fullPod() *workloadapi.Address {
	return xdstest.Pod("demo", "echo-1", "10.0.0.1", xdstest.InService("demo", "echo"), func(w *workloadapi.Workload) {
		w.Addresses = append(w.Addresses, xdstest.IP("fd00::1"))
		w.Node = "node1"
		w.ServiceAccount = "echo"
		w.TrustDomain = "example.org"
		w.CanonicalName, w.CanonicalRevision, w.WorkloadName = "echo", "v1", "echo"
		w.WorkloadType = workloadapi.WorkloadType_POD
		w.Waypoint = xdstest.WaypointHost("demo", "waypoint")
		w.NetworkGateway = &workloadapi.GatewayAddress{HboneMtlsPort: 15009, Destination: &workloadapi.GatewayAddress_Address{
			Address: &workloadapi.NetworkAddress{Network: "n2", Address: xdstest.IP("192.0.2.1")}}}
		w.ApplicationTunnel = &workloadapi.ApplicationTunnel{Protocol: workloadapi.ApplicationTunnel_PROXY, Port: 15088}
		w.Locality = &workloadapi.Locality{Region: "r", Zone: "z", Subzone: "s"}
		w.Capacity = wrapperspb.UInt32(3)
		w.AuthorizationPolicies = []string{"demo/allow", "istio-system/strict"}
		w.ClusterId = "c1"
		w.Network = "n1"
		w.Services["other/db.other.svc.cluster.local"] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 5432, TargetPort: 5432}}}
		w.Status = workloadapi.WorkloadStatus_UNHEALTHY
		w.NativeTunnel = true
	})
}

func TestFastDecodeMatchesGeneric(t *testing.T) {
	full := fullPod()
	cases := []struct {
		name   string
		addr   *workloadapi.Address
		accept bool // whether the fast path must take it on
	}{
		{"minimal pod", xdstest.Pod("demo", "a", "10.0.0.2"), true},
		{"pod in a service", xdstest.Pod("demo", "b", "10.0.0.3", xdstest.InService("demo", "echo")), true},
		{"every field", full, true},
		{"host network", xdstest.Pod("demo", "h", "10.0.0.4", func(w *workloadapi.Workload) {
			w.NetworkMode = workloadapi.NetworkMode_HOST_NETWORK
		}), true},
		{"legacy tunnel", xdstest.Pod("demo", "l", "10.0.0.5", func(w *workloadapi.Workload) {
			w.TunnelProtocol = workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS
		}), false},
		{"bad address", xdstest.Pod("demo", "x", "10.0.0.6", func(w *workloadapi.Workload) {
			w.Addresses = [][]byte{{1, 2, 3}}
		}), false},
		{"bad service key", xdstest.Pod("demo", "k", "10.0.0.7", func(w *workloadapi.Workload) {
			w.Services = map[string]*workloadapi.PortList{"nohost": {}}
		}), false},
		{"no uid", xdstest.Pod("demo", "u", "10.0.0.8", func(w *workloadapi.Workload) { w.Uid = "" }), false},
		{"service", xdstest.Service("demo", "echo", "10.96.0.1"), false},
	}
	d := &decoder{in: state.NewLocalInterner()}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, err := proto.Marshal(tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			name := tc.addr.GetWorkload().GetUid()
			if got := checkFast(t, d, name, data); got != tc.accept {
				t.Fatalf("fast path accepted = %v, want %v", got, tc.accept)
			}
			// Twice, so the second decode runs with the strings and identities already cached.
			checkFast(t, d, name, data)
			// A name other than the UID is always declined (the generic path reports the mismatch).
			if _, ok := d.address("other", data); ok {
				t.Fatal("fast path accepted a name mismatch")
			}
		})
	}
}

// FuzzFastDecode checks, on arbitrary bytes, that whatever the fast decoder accepts the generic path
// accepts with an equal workload (it may decline anything: the generic path then decides).
func FuzzFastDecode(f *testing.F) {
	if b, err := proto.Marshal(fullPod()); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := generic("", data)
		name := ""
		if err == nil {
			name = a.GetWorkload().GetUid()
		}
		checkFast(t, &decoder{in: state.NewLocalInterner()}, name, data)
	})
}
