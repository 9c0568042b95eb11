package xds

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// decoder converts the wire bytes of istio.workload.Address resources holding a Workload straight into
// state.Workload, without building the generated message first: at a million workloads the generated
// messages (a map per workload, a message per port list and port, a copy of every string) cost more than
// the state itself. Repeated strings are interned as they are read, so a known one allocates nothing.
//
// The fast path takes on only the encoding protoc and istiod produce. It declines (ok false) anything
// else: a service, a singular field repeated, a known field with an unexpected wire type, extensions,
// duplicate service keys, and every error. The caller then takes the generic path (proto.Unmarshal and
// ConvertAddress), which is the reference and reports the error. On ok the result equals the generic
// path's (FuzzFastDecode checks it).
//
// A decoder is not safe for concurrent use; give each converting goroutine its own.
type decoder struct {
	// in is the goroutine's interner: a local one that the AddressHandler keeps across responses.
	in *state.Interner
	// gateways shares one GatewayAddress between the workloads that name the same (validated) one.
	gateways map[state.GatewayAddress]*state.GatewayAddress
	// identities holds the identities spiffeid has accepted.
	identities map[string]struct{}
}

// Field numbers of istio.workload.Workload.
const (
	wfName              = 1
	wfNamespace         = 2
	wfAddresses         = 3
	wfNetwork           = 4
	wfTunnelProtocol    = 5
	wfTrustDomain       = 6
	wfServiceAccount    = 7
	wfWaypoint          = 8
	wfNode              = 9
	wfCanonicalName     = 10
	wfCanonicalRevision = 11
	wfWorkloadType      = 12
	wfWorkloadName      = 13
	wfNativeTunnel      = 14
	wfAuthzPolicies     = 16
	wfStatus            = 17
	wfClusterID         = 18
	wfNetworkGateway    = 19
	wfUID               = 20
	wfHostname          = 21
	wfServices          = 22
	wfAppTunnel         = 23
	wfLocality          = 24
	wfNetworkMode       = 25
	wfExtensions        = 26
	wfCapacity          = 27
)

// fields iterates over the fields of one message. It stops at the first malformed one (ok false).
type fields struct {
	b   []byte
	num protowire.Number
	typ protowire.Type
	// val is the payload of a BytesType field; v that of a VarintType field.
	val []byte
	v   uint64
	bad bool
}

func (f *fields) next() bool {
	if len(f.b) == 0 || f.bad {
		return false
	}
	num, typ, n := protowire.ConsumeTag(f.b)
	if n < 0 {
		f.bad = true
		return false
	}
	f.b = f.b[n:]
	f.num, f.typ = num, typ
	switch typ {
	case protowire.BytesType:
		f.val, n = protowire.ConsumeBytes(f.b)
	case protowire.VarintType:
		f.v, n = protowire.ConsumeVarint(f.b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, f.b)
	}
	if n < 0 {
		f.bad = true
		return false
	}
	f.b = f.b[n:]
	return true
}

// seen tracks singular fields by number (< 64) to decline repeats.
type seen uint64

func (s *seen) first(n protowire.Number) bool {
	if n >= 64 {
		return false
	}
	bit := seen(1) << n
	if *s&bit != 0 {
		return false
	}
	*s |= bit
	return true
}

// address decodes an Address that holds a workload called name.
func (d *decoder) address(name string, b []byte) (*state.Workload, bool) {
	var wb []byte
	found := false
	f := fields{b: b}
	for f.next() {
		if f.num != 1 || f.typ != protowire.BytesType || found {
			return nil, false // a service, a repeated oneof or an unknown field: the generic path
		}
		wb, found = f.val, true
	}
	if f.bad || !found {
		return nil, false
	}
	w, ok := d.workload(wb)
	if !ok || w.UID != name {
		return nil, false
	}
	return w, true
}

func validString(b []byte) bool { return utf8.Valid(b) }

// str interns b after checking it is UTF-8, as proto3 requires of strings.
func (d *decoder) str(b []byte, ok *bool) string {
	if len(b) == 0 {
		return ""
	}
	if !validString(b) {
		*ok = false
		return ""
	}
	return d.in.Bytes(b)
}

func (d *decoder) workload(b []byte) (*state.Workload, bool) {
	w := &state.Workload{}
	var (
		s                                       seen
		ok                                      = true
		uid, name, hostname, wlName             []byte
		hasUID, hasName, hasHost, hasWLName     bool
		addrs                                   [][]byte
		addrBuf                                 [2][]byte
		tunnel, status, netMode, wlType         int32
		services                                []state.ServiceRef
		hasCapacity                             bool
		capacity                                uint32
		waypoint, netGW, appTunnel, locality    []byte
		hasWP, hasGW, hasAppTunnel, hasLocality bool
	)
	addrs = addrBuf[:0]
	f := fields{b: b}
	for ok && f.next() {
		switch f.num {
		case wfAddresses, wfAuthzPolicies, wfServices:
			if f.typ != protowire.BytesType {
				return nil, false
			}
		case wfTunnelProtocol, wfWorkloadType, wfNativeTunnel, wfStatus, wfNetworkMode:
			if f.typ != protowire.VarintType || !s.first(f.num) {
				return nil, false
			}
		case wfExtensions:
			return nil, false
		default:
			if f.num > wfCapacity {
				continue // unknown to this version of the API: skipped, as proto.Unmarshal keeps and ignores it
			}
			if f.typ != protowire.BytesType || !s.first(f.num) {
				return nil, false
			}
		}
		switch f.num {
		case wfName:
			name, hasName = f.val, true
		case wfNamespace:
			w.Namespace = d.str(f.val, &ok)
		case wfAddresses:
			addrs = append(addrs, f.val)
		case wfNetwork:
			w.Network = d.str(f.val, &ok)
		case wfTunnelProtocol:
			tunnel = int32(f.v)
		case wfTrustDomain:
			w.TrustDomain = d.str(f.val, &ok)
		case wfServiceAccount:
			w.ServiceAccount = d.str(f.val, &ok)
		case wfWaypoint:
			waypoint, hasWP = f.val, true
		case wfNode:
			w.Node = d.str(f.val, &ok)
		case wfCanonicalName:
			w.CanonicalName = d.str(f.val, &ok)
		case wfCanonicalRevision:
			w.CanonicalRevision = d.str(f.val, &ok)
		case wfWorkloadType:
			wlType = int32(f.v)
		case wfWorkloadName:
			wlName, hasWLName = f.val, true
		case wfNativeTunnel:
			w.NativeTunnel = f.v != 0
		case wfAuthzPolicies:
			w.AuthorizationPolicies = append(w.AuthorizationPolicies, d.str(f.val, &ok))
		case wfStatus:
			status = int32(f.v)
		case wfClusterID:
			w.ClusterID = d.str(f.val, &ok)
		case wfNetworkGateway:
			netGW, hasGW = f.val, true
		case wfUID:
			uid, hasUID = f.val, true
		case wfHostname:
			hostname, hasHost = f.val, true
		case wfServices:
			ref, good := d.serviceEntry(f.val)
			if !good {
				return nil, false
			}
			services = append(services, ref)
		case wfAppTunnel:
			appTunnel, hasAppTunnel = f.val, true
		case wfLocality:
			locality, hasLocality = f.val, true
		case wfNetworkMode:
			netMode = int32(f.v)
		case wfCapacity:
			c, good := uint32Value(f.val)
			if !good {
				return nil, false
			}
			capacity, hasCapacity = c, true
		default:
			return nil, false
		}
	}
	if f.bad || !ok {
		return nil, false
	}
	// The strings only this workload has: one allocation for the UID, the name shares it when it is its
	// suffix (Kubernetes UIDs end in the pod name), the workload name shares the name when equal.
	for _, v := range [][]byte{uid, name, hostname, wlName} {
		if !validString(v) {
			return nil, false
		}
	}
	if hasUID {
		w.UID = string(uid)
	}
	if hasName && len(name) > 0 {
		if strings.HasSuffix(w.UID, string(name)) {
			w.Name = w.UID[len(w.UID)-len(name):]
		} else {
			w.Name = string(name)
		}
	}
	if hasHost {
		w.Hostname = d.str(hostname, &ok)
	}
	if hasWLName && len(wlName) > 0 {
		if w.Name == string(wlName) {
			w.WorkloadName = w.Name
		} else {
			w.WorkloadName = d.str(wlName, &ok)
		}
	}
	if n := len(addrs); n > 0 {
		w.Addresses = make([]netip.Addr, n)
		for i, a := range addrs {
			ip, err := ipFromBytes(a)
			if err != nil {
				return nil, false
			}
			w.Addresses[i] = ip
		}
	}
	var err error
	if w.Protocol, err = tunnelProtocol(tunnel); err != nil {
		return nil, false
	}
	if w.Status, err = workloadStatus(status); err != nil {
		return nil, false
	}
	if w.NetworkMode, err = networkMode(netMode); err != nil {
		return nil, false
	}
	w.WorkloadType = workloadType(wlType)
	if hasWP {
		if w.Waypoint, ok = d.gateway(waypoint); !ok {
			return nil, false
		}
	}
	if hasGW {
		if w.NetworkGateway, ok = d.gateway(netGW); !ok {
			return nil, false
		}
	}
	if hasAppTunnel {
		at, good := applicationTunnel(appTunnel)
		if !good {
			return nil, false
		}
		w.ApplicationTunnel = at
	}
	if len(services) > 0 {
		sortServiceRefs(services)
		for i := 1; i < len(services); i++ {
			if services[i].Service == services[i-1].Service {
				return nil, false // a repeated map key: proto keeps the last one; left to the generic path
			}
		}
		w.Services = slices.Clip(services)
	}
	if hasLocality {
		if w.Locality, ok = d.locality(locality); !ok {
			return nil, false
		}
	}
	if hasCapacity {
		w.Capacity = capacity
	}
	if err := w.ValidateWith(d.in); err != nil {
		return nil, false
	}
	if !d.validIdentity(w.Identity()) {
		return nil, false
	}
	w.Waypoint = d.share(w.Waypoint)
	w.NetworkGateway = d.share(w.NetworkGateway)
	return w, true
}

// validIdentity reports whether spiffeid accepts id, remembering the answer for accepted ones.
func (d *decoder) validIdentity(id string) bool {
	if _, ok := d.identities[id]; ok {
		return true
	}
	if _, err := spiffeid.FromString(id); err != nil {
		return false
	}
	if d.identities == nil || len(d.identities) >= 1<<17 {
		d.identities = map[string]struct{}{}
	}
	d.identities[id] = struct{}{}
	return true
}

// share returns the decoder's copy of the validated gateway g.
func (d *decoder) share(g *state.GatewayAddress) *state.GatewayAddress {
	if g == nil {
		return nil
	}
	if c, ok := d.gateways[*g]; ok {
		return c
	}
	if d.gateways == nil || len(d.gateways) >= 1<<12 {
		d.gateways = map[state.GatewayAddress]*state.GatewayAddress{}
	}
	d.gateways[*g] = g
	return g
}

// serviceEntry decodes one entry of Workload.services (key "<namespace>/<hostname>", value PortList).
func (d *decoder) serviceEntry(b []byte) (state.ServiceRef, bool) {
	var (
		s     seen
		key   []byte
		ports []state.PortMapping
	)
	f := fields{b: b}
	for f.next() {
		if f.typ != protowire.BytesType || !s.first(f.num) {
			return state.ServiceRef{}, false
		}
		switch f.num {
		case 1:
			key = f.val
		case 2:
			pl := fields{b: f.val}
			for pl.next() {
				if pl.num != 1 || pl.typ != protowire.BytesType {
					return state.ServiceRef{}, false
				}
				sp, tp, ok := portMapping(pl.val)
				if !ok {
					return state.ServiceRef{}, false
				}
				ports = append(ports, state.PortMapping{ServicePort: sp, TargetPort: tp})
			}
			if pl.bad {
				return state.ServiceRef{}, false
			}
		default:
			return state.ServiceRef{}, false
		}
	}
	if f.bad {
		return state.ServiceRef{}, false
	}
	i := slices.Index(key, '/')
	if i <= 0 || i == len(key)-1 || !validString(key) {
		return state.ServiceRef{}, false
	}
	ref := state.ServiceRef{Service: state.NamespacedHostname{Namespace: d.in.Bytes(key[:i]), Hostname: d.in.Bytes(key[i+1:])}}
	if len(ports) > 0 {
		ref.Ports = slices.Clip(ports)
	}
	return ref, true
}

// portMapping decodes an istio.workload.Port into a workload's service and target port.
func portMapping(b []byte) (sp, tp uint16, ok bool) {
	var s seen
	f := fields{b: b}
	for f.next() {
		if f.typ != protowire.VarintType || f.num > 3 || !s.first(f.num) {
			return 0, 0, false
		}
		var err error
		switch f.num {
		case 1:
			sp, err = port16(uint32(f.v))
		case 2:
			tp, err = port16(uint32(f.v))
		}
		if err != nil {
			return 0, 0, false
		}
	}
	return sp, tp, !f.bad
}

// uint32Value decodes a google.protobuf.UInt32Value.
func uint32Value(b []byte) (uint32, bool) {
	var (
		s seen
		v uint32
	)
	f := fields{b: b}
	for f.next() {
		if f.num != 1 || f.typ != protowire.VarintType || !s.first(f.num) {
			return 0, false
		}
		v = uint32(f.v)
	}
	return v, !f.bad
}

func applicationTunnel(b []byte) (*state.ApplicationTunnel, bool) {
	var (
		s          seen
		proto, prt uint64
	)
	f := fields{b: b}
	for f.next() {
		if f.typ != protowire.VarintType || f.num > 2 || !s.first(f.num) {
			return nil, false
		}
		if f.num == 1 {
			proto = f.v
		} else {
			prt = f.v
		}
	}
	if f.bad {
		return nil, false
	}
	p, err := appTunnelProtocol(int32(proto))
	if err != nil {
		return nil, false
	}
	port, err := port16(uint32(prt))
	if err != nil {
		return nil, false
	}
	return &state.ApplicationTunnel{Protocol: p, Port: port}, true
}

func (d *decoder) locality(b []byte) (state.Locality, bool) {
	var (
		s  seen
		l  state.Locality
		ok = true
	)
	f := fields{b: b}
	for f.next() {
		if f.typ != protowire.BytesType || f.num > 3 || !s.first(f.num) {
			return l, false
		}
		switch f.num {
		case 1:
			l.Region = d.str(f.val, &ok)
		case 2:
			l.Zone = d.str(f.val, &ok)
		case 3:
			l.Subzone = d.str(f.val, &ok)
		}
	}
	return l, ok && !f.bad
}

// gateway decodes an istio.workload.GatewayAddress (not yet validated).
func (d *decoder) gateway(b []byte) (*state.GatewayAddress, bool) {
	var (
		s        seen
		port     uint32
		dest     []byte
		destKind protowire.Number
		ok       = true
	)
	f := fields{b: b}
	for f.next() {
		switch {
		case f.num == 3 && f.typ == protowire.VarintType && s.first(3):
			port = uint32(f.v)
		case (f.num == 1 || f.num == 2) && f.typ == protowire.BytesType && destKind == 0:
			dest, destKind = f.val, f.num
		default:
			return nil, false
		}
	}
	if f.bad {
		return nil, false
	}
	p, err := port16(port)
	if err != nil {
		return nil, false
	}
	g := &state.GatewayAddress{HBONEMTLSPort: p}
	var ds seen
	df := fields{b: dest}
	switch destKind {
	case 1: // NamespacedHostname
		for df.next() {
			if df.typ != protowire.BytesType || df.num > 2 || !ds.first(df.num) {
				return nil, false
			}
			if df.num == 1 {
				g.Hostname.Namespace = d.str(df.val, &ok)
			} else {
				g.Hostname.Hostname = d.str(df.val, &ok)
			}
		}
		if g.Hostname.Hostname == "" {
			return nil, false
		}
	case 2: // NetworkAddress
		var addr []byte
		for df.next() {
			switch {
			case df.num == 1 && df.typ == protowire.BytesType && ds.first(1):
				g.Address.Network = d.str(df.val, &ok)
			case df.num == 2 && df.typ == protowire.BytesType && ds.first(2):
				addr = df.val
			case df.num == 3 && df.typ == protowire.VarintType && ds.first(3):
			default:
				return nil, false
			}
		}
		ip, err := ipFromBytes(addr)
		if err != nil {
			return nil, false
		}
		g.Address.Addr = ip
	default:
		return nil, false
	}
	if df.bad || !ok {
		return nil, false
	}
	return g, true
}

// sortServiceRefs orders a workload's memberships by namespace and hostname.
func sortServiceRefs(refs []state.ServiceRef) {
	slices.SortFunc(refs, func(a, b state.ServiceRef) int {
		return cmp.Or(strings.Compare(a.Service.Namespace, b.Service.Namespace),
			strings.Compare(a.Service.Hostname, b.Service.Hostname))
	})
}
