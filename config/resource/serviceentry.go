package resource

import (
	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
)

// ServiceEntryWarnings names the fields of a ServiceEntry that Ambit does not implement, one message per
// field, each starting with the field's path. Both readers surface them: config/local as compile warnings
// (prefixed with the object), waypoint/kube as a Warning Event on the object (reason UnsupportedField),
// where istiod would put them. Today that is resolution DYNAMIC_DNS: the waypoint resolves each host (or
// endpoint hostname) of a DNS entry itself, not each request's authority under a wildcard host.
func ServiceEntryWarnings(se *networkingv1.ServiceEntry) []string {
	var w []string
	if se.Spec.Resolution == networkingapi.ServiceEntry_DYNAMIC_DNS {
		w = append(w, "spec.resolution: DYNAMIC_DNS is not implemented (the waypoint resolves the entry's hosts, not each request's authority)")
	}
	return w
}
