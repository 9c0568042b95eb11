package xds_test

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/xdsclient"
	wapi "github.com/ambit-mesh/ambit/xdsclient/workloadapi"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi/security"
)

// FuzzConvertAddress feeds arbitrary bytes, as istiod would send them in an Any, through decoding,
// conversion and a handler with a store. Accepted objects must be valid and indexable; nothing may panic,
// and a rejected resource must leave the store untouched.
func FuzzConvertAddress(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &wapi.Address{}
		if err := proto.Unmarshal(data, a); err != nil {
			return
		}
		name := a.GetWorkload().GetUid()
		if s := a.GetService(); s != nil {
			name = s.GetNamespace() + "/" + s.GetHostname()
		}
		w, s, err := xds.ConvertAddress(name, a)
		switch {
		case err != nil && (w != nil || s != nil):
			t.Fatalf("error %v with an object", err)
		case err == nil && (w == nil) == (s == nil):
			t.Fatalf("accepted address gave workload %v and service %v", w, s)
		case w != nil:
			if w.UID != name || w.Identity() == "" || w.Capacity == 0 || w.TrustDomain == "" || w.ServiceAccount == "" {
				t.Fatalf("accepted workload lacks defaults: %+v", w)
			}
			for _, ip := range w.Addresses {
				if !ip.IsValid() {
					t.Fatalf("invalid address accepted: %+v", w)
				}
			}
		case s != nil:
			if s.Key().String() != name {
				t.Fatalf("service key %s for name %s", s.Key(), name)
			}
		}

		st := state.NewStore()
		h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
		rej := h.HandleUpdate(context.Background(), &xdsclient.Update{Resources: []xdsclient.Resource{
			{Name: name, Body: &anypb.Any{TypeUrl: xds.AddressTypeURL, Value: data}}}})
		nw, ns, _ := st.Counts()
		if len(rej) > 0 {
			if nw+ns != 0 {
				t.Fatalf("rejected resource %v changed the store", rej)
			}
			return
		}
		if nw+ns != 1 {
			t.Fatalf("accepted resource gave %d workloads and %d services", nw, ns)
		}
		// Removing it by name leaves nothing behind.
		h.HandleUpdate(context.Background(), &xdsclient.Update{Removed: []string{name}})
		if nw, ns, _ := st.Counts(); nw+ns != 0 {
			t.Fatalf("removal of %q left %d workloads and %d services", name, nw, ns)
		}
	})
}

// FuzzConvertAuthorization does the same for policies.
func FuzzConvertAuthorization(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &security.Authorization{}
		if err := proto.Unmarshal(data, a); err != nil {
			return
		}
		name := a.GetNamespace() + "/" + a.GetName()
		p, err := xds.ConvertAuthorization(name, a)
		if (err == nil) == (p == nil) {
			t.Fatalf("ConvertAuthorization = %v, %v", p, err)
		}
		if p != nil {
			if p.Key() != name {
				t.Fatalf("key %s for name %s", p.Key(), name)
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("accepted policy fails validation: %v", err)
			}
		}
		st := state.NewStore()
		rej := xds.NewAuthorizationHandler(st, nil).HandleUpdate(context.Background(), &xdsclient.Update{
			Resources: []xdsclient.Resource{{Name: name, Body: &anypb.Any{TypeUrl: xds.AuthorizationTypeURL, Value: data}}}})
		if _, _, np := st.Counts(); (len(rej) == 0) != (np == 1) {
			t.Fatalf("rejections %v but %d policies", rej, np)
		}
	})
}
