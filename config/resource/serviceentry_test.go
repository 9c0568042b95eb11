package resource

import (
	"slices"
	"testing"

	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
)

func TestServiceEntryWarnings(t *testing.T) {
	for _, tc := range []struct {
		res  networkingapi.ServiceEntry_Resolution
		want []string
	}{
		{networkingapi.ServiceEntry_NONE, nil},
		{networkingapi.ServiceEntry_STATIC, nil},
		{networkingapi.ServiceEntry_DNS, nil},
		{networkingapi.ServiceEntry_DNS_ROUND_ROBIN, nil},
		{networkingapi.ServiceEntry_DYNAMIC_DNS, []string{"spec.resolution: DYNAMIC_DNS is not implemented (the waypoint resolves the entry's hosts, not each request's authority)"}},
	} {
		se := &networkingv1.ServiceEntry{}
		se.Spec.Resolution = tc.res
		if got := ServiceEntryWarnings(se); !slices.Equal(got, tc.want) {
			t.Errorf("%v: %q, want %q", tc.res, got, tc.want)
		}
	}
}
