package local

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// networks.go: multi-network, as istiod derives it for ambient (AMBIENT_ENABLE_MULTI_NETWORK).
//
// A workload's network is its own topology.istio.io/network label, else its namespace's, else the root
// namespace's (istiod reads the system namespace's label as the cluster's network), else
// Options.Network. Labelling other namespaces is Ambit's extension: it lets one local file describe the
// clusters of several networks, as a multi-primary istiod merges them. A Service's VIPs are on its
// namespace's network.
//
// A network's gateway is a Gateway of class istio-east-west labelled topology.istio.io/network (Istio's
// documented ambient multi-network set-up: listener "mesh", port 15008, protocol HBONE), at its first
// IPAddress status address (the LoadBalancer address) and the port of its HBONE listener. Every
// workload on that network gets it as its network_gateway, which clients on other networks reach it
// through (double HBONE); clients on the same network ignore it.

// networkOf returns the network of an object in namespace ns with labels lbls.
func (c *compiler) networkOf(ns string, lbls map[string]string) string {
	if n := lbls[istio.LabelNetwork]; n != "" {
		return n
	}
	if n := c.namespaces[ns][istio.LabelNetwork]; n != "" {
		return n
	}
	if n := c.namespaces[c.opts.RootNamespace][istio.LabelNetwork]; n != "" {
		return n
	}
	return c.opts.Network
}

// isEastWest reports whether gw is an east-west gateway rather than a waypoint.
func isEastWest(gw *gwv1.Gateway) bool {
	return string(gw.Spec.GatewayClassName) == istio.EastWestClassName
}

// indexNetworkGateways records the gateway of each network (the first east-west Gateway by
// namespace/name when a network has several).
func (c *compiler) indexNetworkGateways() error {
	gws := slices.Clone(c.objs.Gateways)
	slices.SortFunc(gws, func(a, b *gwv1.Gateway) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	for _, gw := range gws {
		if !isEastWest(gw) {
			continue
		}
		network := c.networkOf(gw.Namespace, gw.Labels)
		if _, ok := c.netGateways[network]; ok {
			continue
		}
		port := uint16(state.HBONEPort)
		for _, l := range gw.Spec.Listeners {
			if l.Protocol == "HBONE" {
				port = uint16(l.Port)
				break
			}
		}
		for i, a := range gw.Status.Addresses {
			if a.Type != nil && *a.Type != gwv1.IPAddressType {
				continue
			}
			ip, err := parseIP(fmt.Sprintf("status.addresses[%d]", i), a.Value)
			if err != nil {
				return c.inputErr(gw, "Gateway", &gw.ObjectMeta, err)
			}
			c.netGateways[network] = &state.GatewayAddress{Address: state.NetworkAddress{Network: network, Addr: ip}, HBONEMTLSPort: port}
			break
		}
	}
	return nil
}
