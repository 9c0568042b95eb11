package local

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/config/resource"
	"github.com/ambit-mesh/ambit/mesh/binding"
	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// Options are the mesh settings istiod would take from its mesh config and environment.
type Options struct {
	// TrustDomain of workload identities; default cluster.local.
	TrustDomain string
	// DomainSuffix of service hostnames (<svc>.<ns>.svc.<suffix>); default cluster.local.
	DomainSuffix string
	// ClusterID of every workload; default Kubernetes.
	ClusterID string
	// RootNamespace holds mesh-wide policies; default istio-system.
	RootNamespace string
	// Network of every workload and VIP without a topology.istio.io/network label of its own, its
	// namespace's or the root namespace's (networks.go); default "" (the default network).
	Network string
}

func (o Options) withDefaults() Options {
	o.TrustDomain = cmp.Or(o.TrustDomain, state.DefaultTrustDomain)
	o.DomainSuffix = cmp.Or(o.DomainSuffix, "cluster.local")
	o.ClusterID = cmp.Or(o.ClusterID, state.DefaultClusterID)
	o.RootNamespace = cmp.Or(o.RootNamespace, "istio-system")
	return o
}

// Binding is the waypoint decision for one Service, ServiceEntry, Pod or WorkloadEntry.
type Binding struct {
	Kind      string
	Namespace string
	Name      string
	// Waypoint is "<namespace>/<name>" of the bound waypoint Gateway, or "". For Service and ServiceEntry
	// it is the service waypoint; for Pod and WorkloadEntry the workload waypoint.
	Waypoint string
	// Condition is istio.io/WaypointBound, or nil. Pods never get one.
	Condition *binding.Condition
	// Extra holds other conditions istiod writes (istio.io/WaypointMissing on wildcard ServiceEntries).
	Extra []binding.Condition

	seq int
}

// Result is a compiled configuration.
type Result struct {
	Snapshot  state.Snapshot
	Bindings  []Binding
	Waypoints []*binding.Waypoint
	// Warnings are accepted-with-warning conditions (for example L7 fields in an L4 policy).
	Warnings []string
}

// compiler holds the indexes built while compiling one Objects.
type compiler struct {
	opts Options
	objs *Objects

	namespaces map[string]map[string]string
	nodes      map[string]state.Locality
	classes    map[string]*gwv1.GatewayClass
	waypoints  map[string]*binding.Waypoint
	// netGateways are the east-west gateways by network (networks.go).
	netGateways map[string]*state.GatewayAddress
	// podsByNS and wesByNS are used for selectors (services, waypoints, policies).
	podsByNS map[string][]*corev1.Pod
	svcInfos map[string][]*svcInfo // by namespace
	// seServices are the services compiled from each ServiceEntry, one per host.
	seServices map[*networkingv1.ServiceEntry][]*state.Service
	// autoAddrs are the auto-allocated addresses of ServiceEntry hosts, by "<namespace>/<host>".
	autoAddrs map[string][]netip.Addr
	// policies are the WORKLOAD_SELECTOR authorization policies, for attaching to workloads.
	selectorPolicies []selectorPolicy
	// peerAuths are the PeerAuthentications, for each workload's effective mTLS mode.
	peerAuths []*securityv1.PeerAuthentication

	res *Result
}

// Compile turns objs into Ambit's state with istiod's rules. It validates every object first and
// returns an *InputError for the first invalid one; nothing is partially compiled.
func Compile(objs *Objects, opts Options) (*Result, error) {
	opts = opts.withDefaults()
	if _, err := spiffeid.TrustDomainFromString(opts.TrustDomain); err != nil {
		return nil, fmt.Errorf("compile: trust domain %q: %w", opts.TrustDomain, err)
	}
	c := &compiler{
		opts:        opts,
		objs:        objs,
		namespaces:  map[string]map[string]string{},
		nodes:       map[string]state.Locality{},
		classes:     map[string]*gwv1.GatewayClass{},
		waypoints:   map[string]*binding.Waypoint{},
		netGateways: map[string]*state.GatewayAddress{},
		podsByNS:    map[string][]*corev1.Pod{},
		svcInfos:    map[string][]*svcInfo{},
		seServices:  map[*networkingv1.ServiceEntry][]*state.Service{},
		res:         &Result{},
	}
	steps := []func() error{
		c.indexNamespaces, c.indexNodes, c.indexPods, c.indexGatewayClasses, c.buildWaypoints, c.indexNetworkGateways,
		c.buildServices, c.buildServiceEntries, c.buildPolicies, c.buildPodWorkloads, c.buildWorkloadEntries,
		c.buildServiceEntryWorkloads,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	slices.SortStableFunc(c.res.Bindings, func(a, b Binding) int { return cmp.Compare(a.seq, b.seq) })
	for _, wp := range c.waypoints {
		c.res.Waypoints = append(c.res.Waypoints, wp)
	}
	slices.SortFunc(c.res.Waypoints, func(a, b *binding.Waypoint) int { return strings.Compare(a.Key(), b.Key()) })
	for _, w := range c.res.Snapshot.Workloads {
		if err := w.Validate(); err != nil {
			return nil, fmt.Errorf("compile: %w", err)
		}
	}
	for _, s := range c.res.Snapshot.Services {
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("compile: %w", err)
		}
	}
	for _, p := range c.res.Snapshot.Policies {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("compile: %w", err)
		}
	}
	return c.res, nil
}

// inputErr wraps err with the location of obj.
func (c *compiler) inputErr(obj any, kind string, m *metav1.ObjectMeta, err error) error {
	src := c.objs.SourceOf(obj)
	return &InputError{File: src.File, Doc: src.Doc, Kind: kind, Namespace: m.Namespace, Name: m.Name, Err: err}
}

func (c *compiler) seq(obj any) int { return c.objs.SourceOf(obj).Seq }

// Waypoint implements binding.Lookup.
func (c *compiler) Waypoint(namespace, name string) *binding.Waypoint {
	return c.waypoints[namespace+"/"+name]
}

// Namespace implements binding.Lookup. A namespace an object lives in always exists, as in a cluster.
func (c *compiler) Namespace(name string) (map[string]string, bool) {
	l, ok := c.namespaces[name]
	return l, ok
}

// ensureNamespace records a namespace that an object lives in but that the input does not declare.
func (c *compiler) ensureNamespace(ns string) {
	if _, ok := c.namespaces[ns]; !ok {
		c.namespaces[ns] = map[string]string{istio.LabelNamespaceName: ns}
	}
}

func (c *compiler) indexNamespaces() error {
	for _, ns := range c.objs.Namespaces {
		if err := resource.ValidateMeta(&ns.ObjectMeta, false); err != nil {
			return c.inputErr(ns, "Namespace", &ns.ObjectMeta, err)
		}
		if _, dup := c.namespaces[ns.Name]; dup {
			return c.inputErr(ns, "Namespace", &ns.ObjectMeta, fmt.Errorf("duplicate Namespace"))
		}
		l := make(map[string]string, len(ns.Labels)+1)
		for k, v := range ns.Labels {
			l[k] = v
		}
		l[istio.LabelNamespaceName] = ns.Name
		c.namespaces[ns.Name] = l
	}
	// Objects may live in namespaces the input does not declare; in a cluster those would exist.
	metas := []*metav1.ObjectMeta{}
	for _, o := range c.objs.Services {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.objs.Pods {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.objs.Gateways {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.objs.ServiceEntries {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.objs.WorkloadEntries {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.objs.AuthorizationPolicies {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.objs.PeerAuthentications {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, m := range metas {
		c.ensureNamespace(cmp.Or(m.Namespace, "default"))
	}
	return nil
}

func (c *compiler) indexNodes() error {
	for _, n := range c.objs.Nodes {
		if err := resource.ValidateMeta(&n.ObjectMeta, false); err != nil {
			return c.inputErr(n, "Node", &n.ObjectMeta, err)
		}
		c.nodes[n.Name] = state.Locality{
			Region:  n.Labels[corev1.LabelTopologyRegion],
			Zone:    n.Labels[corev1.LabelTopologyZone],
			Subzone: n.Labels[istio.LabelSubzone],
		}
	}
	return nil
}

// selects reports whether a non-empty label selector (matchLabels map) selects lbls.
func selects(selector, lbls map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	return labels.SelectorFromSet(selector).Matches(labels.Set(lbls))
}
