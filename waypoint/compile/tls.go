package compile

import (
	"errors"
	"fmt"

	networkingapi "istio.io/api/networking/v1alpha3"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

// destinationTLS compiles the TLS origination of a DestinationRule into d (trafficPolicy.tls, the tls of
// each trafficPolicy.portLevelSettings entry, and each subset's tls) and returns a warning for every field
// of the traffic policies the waypoint does not implement, so that none is ignored silently.
func destinationTLS(d *model.Destination, spec *networkingapi.DestinationRule) (warnings []string, err error) {
	warn := func(path, what string) {
		warnings = append(warnings, fmt.Sprintf("DestinationRule %s/%s: %s: %s", d.Namespace, d.Name, path, what))
	}
	if tp := spec.TrafficPolicy; tp != nil {
		if d.Policy.TLS, err = clientTLS("spec.trafficPolicy.tls", tp.Tls, warn); err != nil {
			return nil, err
		}
		unimplementedPolicy("spec.trafficPolicy", tp, warn)
		for i, pl := range tp.PortLevelSettings {
			p := fmt.Sprintf("spec.trafficPolicy.portLevelSettings[%d]", i)
			if pl.Port == nil || pl.Port.Number == 0 || pl.Port.Number > 65535 {
				return nil, fieldErr(p+".port.number", errors.New("a port number (1-65535) is required"))
			}
			if pl.LoadBalancer != nil || pl.ConnectionPool != nil || pl.OutlierDetection != nil {
				warn(p, "loadBalancer, connectionPool and outlierDetection per port are not implemented; ignored (only tls applies per port)")
			}
			if pl.Tls == nil {
				continue // the rule's tls applies on this port, as in Istio's merge
			}
			t, err := clientTLS(p+".tls", pl.Tls, warn)
			if err != nil {
				return nil, err
			}
			if d.PortTLS == nil {
				d.PortTLS = map[uint16]*model.TLS{}
			}
			d.PortTLS[uint16(pl.Port.Number)] = t
		}
	}
	for i, s := range spec.Subsets {
		sub, ok := d.Subsets[s.Name]
		if !ok || sub.Policy == nil {
			continue // no policy of its own: the rule's (with its tls) applies
		}
		p := fmt.Sprintf("spec.subsets[%d].trafficPolicy", i)
		if s.TrafficPolicy.Tls != nil {
			if sub.Policy.TLS, err = clientTLS(p+".tls", s.TrafficPolicy.Tls, warn); err != nil {
				return nil, err
			}
		} else {
			sub.Policy.TLS = d.Policy.TLS
		}
		unimplementedPolicy(p, s.TrafficPolicy, warn)
		if len(s.TrafficPolicy.PortLevelSettings) > 0 {
			warn(p+".portLevelSettings", "port-level settings of a subset are not implemented; ignored")
		}
	}
	return warnings, nil
}

// unimplementedPolicy warns about the traffic policy fields the waypoint does not implement.
func unimplementedPolicy(path string, tp *networkingapi.TrafficPolicy, warn func(path, what string)) {
	if tp.Tunnel != nil {
		warn(path+".tunnel", "not implemented; ignored")
	}
	if tp.ProxyProtocol != nil {
		warn(path+".proxyProtocol", "not implemented; ignored")
	}
	if tp.RetryBudget != nil {
		warn(path+".retryBudget", "not implemented; ignored")
	}
}

// clientTLS converts ClientTLSSettings: nil (no TLS origination) for none, DISABLE and ISTIO_MUTUAL (the
// waypoint reaches mesh endpoints over HBONE with its own identity; a warning says so).
func clientTLS(path string, t *networkingapi.ClientTLSSettings, warn func(path, what string)) (*model.TLS, error) {
	if t == nil {
		return nil, nil
	}
	out := &model.TLS{CACertificates: t.CaCertificates, ClientCertificate: t.ClientCertificate, PrivateKey: t.PrivateKey,
		SNI: t.Sni, SubjectAltNames: t.SubjectAltNames, InsecureSkipVerify: t.InsecureSkipVerify.GetValue()}
	switch t.Mode {
	case networkingapi.ClientTLSSettings_DISABLE:
		return nil, nil
	case networkingapi.ClientTLSSettings_ISTIO_MUTUAL:
		warn(path+".mode", "ISTIO_MUTUAL is not implemented by the waypoint (mesh endpoints are reached over HBONE); ignored")
		return nil, nil
	case networkingapi.ClientTLSSettings_SIMPLE:
		out.Mode = model.TLSSimple
		if t.ClientCertificate != "" || t.PrivateKey != "" {
			warn(path, "clientCertificate and privateKey are not presented in SIMPLE mode; ignored")
			out.ClientCertificate, out.PrivateKey = "", ""
		}
	case networkingapi.ClientTLSSettings_MUTUAL:
		out.Mode = model.TLSMutual
		if (t.ClientCertificate == "" || t.PrivateKey == "") && t.CredentialName == "" {
			return nil, fieldErr(path, errors.New("MUTUAL requires clientCertificate and privateKey"))
		}
	default:
		return nil, fieldErr(path+".mode", fmt.Errorf("unknown mode %d", t.Mode))
	}
	if (t.ClientCertificate == "") != (t.PrivateKey == "") && out.Mode == model.TLSMutual {
		return nil, fieldErr(path, errors.New("clientCertificate and privateKey go together"))
	}
	if t.CredentialName != "" {
		// Fail closed: the rule still originates TLS with the files it names (a MUTUAL rule without them
		// presents no certificate), never plain text.
		warn(path+".credentialName", "not implemented (the waypoint reads no Secrets: give caCertificates, clientCertificate "+
			"and privateKey as files the waypoint can read); ignored")
	}
	if t.CaCrl != "" {
		warn(path+".caCrl", "not implemented; ignored")
	}
	return out, nil
}
