package local

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/config/resource"
	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// Names istiod gives to the policies it derives from PeerAuthentication.
const (
	StaticStrictPolicyName         = "istio_converted_static_strict"
	convertedPeerAuthenticationPfx = "converted_peer_authentication_"
)

type selectorPolicy struct {
	key       string
	namespace string
	selector  map[string]string
}

// l4WhenKeys are the `when` keys a node agent can enforce.
var l4WhenKeys = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

func (c *compiler) buildPolicies() error {
	for _, ap := range c.objs.AuthorizationPolicies {
		if err := resource.ValidateMeta(&ap.ObjectMeta, true); err != nil {
			return c.inputErr(ap, "AuthorizationPolicy", &ap.ObjectMeta, err)
		}
		pol, warn, err := convertAuthorizationPolicy(c.opts.RootNamespace, ap)
		if err != nil {
			return c.inputErr(ap, "AuthorizationPolicy", &ap.ObjectMeta, err)
		}
		if warn != "" {
			c.res.Warnings = append(c.res.Warnings, fmt.Sprintf("AuthorizationPolicy %s/%s: %s", ap.Namespace, ap.Name, warn))
		}
		if pol == nil {
			continue
		}
		c.res.Snapshot.Policies = append(c.res.Snapshot.Policies, pol)
		if pol.Scope == state.ScopeWorkloadSelector {
			c.selectorPolicies = append(c.selectorPolicies, selectorPolicy{key: pol.Key(), namespace: ap.Namespace, selector: ap.Spec.Selector.MatchLabels})
		}
	}
	for _, pa := range c.objs.PeerAuthentications {
		if err := resource.ValidateMeta(&pa.ObjectMeta, true); err != nil {
			return c.inputErr(pa, "PeerAuthentication", &pa.ObjectMeta, err)
		}
		for port := range pa.Spec.PortLevelMtls {
			if err := validPort("spec.portLevelMtls", int64(port)); err != nil {
				return c.inputErr(pa, "PeerAuthentication", &pa.ObjectMeta, err)
			}
		}
		c.peerAuths = append(c.peerAuths, pa)
	}
	if len(c.peerAuths) > 0 {
		// istiod always sends the static STRICT policy once any PeerAuthentication exists.
		c.res.Snapshot.Policies = append(c.res.Snapshot.Policies, &state.Authorization{
			Name: StaticStrictPolicyName, Namespace: c.opts.RootNamespace,
			Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny,
			Groups: []state.Group{{Rules: []state.Rules{{Matches: []state.Match{{
				NotPrincipals: []state.StringMatch{{Kind: state.MatchPresence}},
			}}}}}},
		})
		for _, pa := range c.peerAuths {
			ns, root := c.parentPeerAuths(pa.Namespace)
			if pol := convertPeerAuthentication(c.opts.RootNamespace, pa, ns, root); pol != nil {
				c.res.Snapshot.Policies = append(c.res.Snapshot.Policies, pol)
			}
		}
	}
	return nil
}

// workloadPolicies lists the WORKLOAD_SELECTOR policies that select a workload (from its namespace or the
// root namespace), sorted, followed by the keys derived from its effective PeerAuthentication.
func (c *compiler) workloadPolicies(ns string, lbls map[string]string) []string {
	var out []string
	for _, sp := range c.selectorPolicies {
		if (sp.namespace == ns || sp.namespace == c.opts.RootNamespace) && selects(sp.selector, lbls) {
			out = append(out, sp.key)
		}
	}
	slices.Sort(out)
	var applicable []*securityv1.PeerAuthentication
	for _, pa := range c.peerAuths {
		switch {
		case pa.Namespace == c.opts.RootNamespace && pa.Spec.Selector == nil:
			applicable = append(applicable, pa)
		case pa.Namespace != ns:
		case pa.Spec.Selector == nil:
			applicable = append(applicable, pa)
		case subset(pa.Spec.Selector.MatchLabels, lbls):
			applicable = append(applicable, pa)
		}
	}
	return append(out, effectivePeerAuthenticationKeys(c.opts.RootNamespace, applicable)...)
}

func subset(sel, lbls map[string]string) bool {
	for k, v := range sel {
		if lbls[k] != v {
			return false
		}
	}
	return true
}

// parentPeerAuths returns the oldest namespace-wide PeerAuthentication of ns and of the root namespace.
func (c *compiler) parentPeerAuths(ns string) (nsCfg, rootCfg *securityv1.PeerAuthentication) {
	for _, pa := range c.peerAuths {
		if pa.Spec.Selector != nil && len(pa.Spec.Selector.MatchLabels) > 0 {
			continue
		}
		switch pa.Namespace {
		case c.opts.RootNamespace:
			if rootCfg == nil || pa.CreationTimestamp.Before(&rootCfg.CreationTimestamp) {
				rootCfg = pa
			}
		case ns:
			if nsCfg == nil || pa.CreationTimestamp.Before(&nsCfg.CreationTimestamp) {
				nsCfg = pa
			}
		}
	}
	return nsCfg, rootCfg
}

func mode(m *securityapi.PeerAuthentication_MutualTLS) securityapi.PeerAuthentication_MutualTLS_Mode {
	if m == nil {
		return securityapi.PeerAuthentication_MutualTLS_UNSET
	}
	return m.Mode
}

// effectivePeerAuthenticationKeys mirrors istiod's convertedSelectorPeerAuthentications: it names the
// static STRICT policy when the effective mode is STRICT, and the converted port-level policy when a
// workload policy with port exceptions is effective.
func effectivePeerAuthenticationKeys(root string, configs []*securityv1.PeerAuthentication) []string {
	var meshCfg, nsCfg, wlCfg *securityv1.PeerAuthentication
	older := func(a, b *securityv1.PeerAuthentication) bool {
		return b == nil || a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	for _, cfg := range configs {
		if cfg.Spec.Selector == nil || len(cfg.Spec.Selector.MatchLabels) == 0 {
			if cfg.Namespace == root {
				if older(cfg, meshCfg) {
					meshCfg = cfg
				}
			} else if older(cfg, nsCfg) {
				nsCfg = cfg
			}
		} else if cfg.Namespace != root && older(cfg, wlCfg) {
			wlCfg = cfg
		}
	}
	const (
		unset      = securityapi.PeerAuthentication_MutualTLS_UNSET
		strict     = securityapi.PeerAuthentication_MutualTLS_STRICT
		permissive = securityapi.PeerAuthentication_MutualTLS_PERMISSIVE
		disable    = securityapi.PeerAuthentication_MutualTLS_DISABLE
	)
	isStrict := false
	if meshCfg != nil {
		isStrict = mode(meshCfg.Spec.Mtls) == strict
	}
	if nsCfg != nil && mode(nsCfg.Spec.Mtls) != unset {
		isStrict = mode(nsCfg.Spec.Mtls) == strict
	}
	portKey := ""
	if wlCfg != nil {
		wm := mode(wlCfg.Spec.Mtls)
		if wm == strict {
			isStrict = true
		}
		if wm == permissive || wm == disable {
			isStrict = false
		}
		if wlCfg.Spec.PortLevelMtls != nil {
			key := wlCfg.Namespace + "/" + convertedPeerAuthenticationPfx + wlCfg.Name
			anyPort := func(pred func(securityapi.PeerAuthentication_MutualTLS_Mode) bool) bool {
				for _, m := range wlCfg.Spec.PortLevelMtls {
					if pred(mode(m)) {
						return true
					}
				}
				return false
			}
			switch wm {
			case strict:
				if anyPort(func(m securityapi.PeerAuthentication_MutualTLS_Mode) bool { return m == permissive || m == disable }) {
					portKey, isStrict = key, false
				}
			case permissive, disable:
				if anyPort(func(m securityapi.PeerAuthentication_MutualTLS_Mode) bool { return m == strict }) {
					portKey = key
				}
			default:
				if isStrict {
					if anyPort(func(m securityapi.PeerAuthentication_MutualTLS_Mode) bool { return m == permissive }) {
						portKey, isStrict = key, false
					}
				} else if anyPort(func(m securityapi.PeerAuthentication_MutualTLS_Mode) bool { return m == strict }) {
					portKey = key
				}
			}
		}
	}
	var out []string
	if isStrict {
		out = append(out, root+"/"+StaticStrictPolicyName)
	}
	if portKey != "" {
		out = append(out, portKey)
	}
	slices.Sort(out)
	return out
}

// convertPeerAuthentication mirrors istiod: only a workload-selector PeerAuthentication outside the root
// namespace with port-level mTLS becomes a DENY policy of its own.
func convertPeerAuthentication(root string, cfg, nsCfg, rootCfg *securityv1.PeerAuthentication) *state.Authorization {
	pa := &cfg.Spec
	if cfg.Namespace == root || pa.Selector == nil || len(pa.PortLevelMtls) == 0 {
		return nil
	}
	const (
		unset      = securityapi.PeerAuthentication_MutualTLS_UNSET
		strict     = securityapi.PeerAuthentication_MutualTLS_STRICT
		permissive = securityapi.PeerAuthentication_MutualTLS_PERMISSIVE
		disable    = securityapi.PeerAuthentication_MutualTLS_DISABLE
	)
	m := mode(pa.Mtls)
	noPrincipal := state.Match{NotPrincipals: []state.StringMatch{{Kind: state.MatchPresence}}}
	var rules []state.Rules
	var groups []state.Group
	if m == strict {
		rules = append(rules, state.Rules{Matches: []state.Match{noPrincipal}})
	}
	ports := make([]uint32, 0, len(pa.PortLevelMtls))
	for p := range pa.PortLevelMtls {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	nsMode, rootMode := unset, unset
	if nsCfg != nil {
		nsMode = mode(nsCfg.Spec.Mtls)
	}
	if rootCfg != nil {
		rootMode = mode(rootCfg.Spec.Mtls)
	}
	foundNonStrict := false
	for _, port := range ports {
		switch pm := mode(pa.PortLevelMtls[port]); pm {
		case strict:
			if m == strict || (m == unset && nsCfg != nil && nsMode == strict) ||
				((nsCfg == nil || nsMode == unset) && rootCfg != nil && rootMode == strict) {
				continue
			}
			groups = append(groups, state.Group{Rules: []state.Rules{{Matches: []state.Match{{
				NotPrincipals:    []state.StringMatch{{Kind: state.MatchPresence}},
				DestinationPorts: []uint16{uint16(port)},
			}}}}})
		case permissive, disable:
			if m == permissive || m == disable {
				continue
			}
			if m == unset && ((nsCfg != nil && nsMode != strict) || (nsCfg == nil && rootCfg != nil && rootMode != strict) ||
				(nsCfg == nil && rootCfg == nil)) {
				continue
			}
			foundNonStrict = true
			rules = append(rules, state.Rules{Matches: []state.Match{{NotDestinationPorts: []uint16{uint16(port)}}}})
		}
	}
	if m == strict && !foundNonStrict {
		return nil
	}
	if len(rules) == 0 && len(groups) == 0 {
		return nil
	}
	mergeStrict := (rootCfg != nil && rootMode == strict && (nsCfg == nil || nsMode == unset || nsMode == strict)) ||
		(nsCfg != nil && nsMode == strict)
	if mergeStrict && foundNonStrict {
		rules = append(rules, state.Rules{Matches: []state.Match{noPrincipal}})
	}
	if len(rules) > 0 {
		groups = append(groups, state.Group{Rules: rules})
	}
	return &state.Authorization{
		Name: convertedPeerAuthenticationPfx + cfg.Name, Namespace: cfg.Namespace,
		Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny, Groups: groups,
	}
}

// convertAuthorizationPolicy mirrors istiod's conversion of an AuthorizationPolicy to the L4 form a node
// agent enforces. It returns nil for policies that are not for node agents (targetRefs: waypoint
// policies) or use an action node agents do not support, with a warning explaining why.
func convertAuthorizationPolicy(root string, ap *securityv1.AuthorizationPolicy) (*state.Authorization, string, error) {
	spec := &ap.Spec
	if err := validatePolicy(spec); err != nil {
		return nil, "", err
	}
	if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
		return nil, "", nil
	}
	dryRun := false
	if v := ap.Annotations[istio.AnnotationDryRun]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, "", fmt.Errorf("annotation %s: %q is not a boolean", istio.AnnotationDryRun, v)
		}
		dryRun = b
	}
	pol := &state.Authorization{Name: ap.Name, Namespace: ap.Namespace, Scope: state.ScopeWorkloadSelector, DryRun: dryRun}
	if spec.Selector == nil {
		pol.Scope = state.ScopeNamespace
		if ap.Namespace == root {
			pol.Scope = state.ScopeGlobal
		}
	}
	switch spec.Action {
	case securityapi.AuthorizationPolicy_ALLOW:
	case securityapi.AuthorizationPolicy_DENY:
		pol.Action = state.ActionDeny
	default:
		return nil, fmt.Sprintf("ztunnel does not support the %s action", spec.Action), nil
	}
	var l7 []string
	for _, rule := range spec.Rules {
		rules, found := handleRule(pol.Action, rule, ap.Namespace)
		l7 = append(l7, found...)
		if rules != nil {
			pol.Groups = append(pol.Groups, state.Group{Rules: rules})
		}
	}
	if len(l7) == 0 {
		return pol, "", nil
	}
	slices.Sort(l7)
	l7 = slices.Compact(l7)
	boiler := "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested."
	switch {
	case pol.Action == state.ActionDeny && !hasEffectiveRules(pol.Groups):
		boiler = "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel and will have no effect. " +
			"Deploy a waypoint proxy and use a targetRef to enforce this policy."
	case pol.Action == state.ActionDeny:
		boiler = "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested."
	}
	return pol, fmt.Sprintf("ztunnel does not support HTTP attributes (found: %s). In ambient mode you must use a waypoint proxy to enforce HTTP rules. %s",
		strings.Join(l7, ", "), boiler), nil
}

// hasEffectiveRules reports whether some group can match at a node agent: a group without rules matches
// everything; otherwise every rule needs a non-empty match (empty matches match nothing).
func hasEffectiveRules(groups []state.Group) bool {
	for _, g := range groups {
		effective := true
		for _, r := range g.Rules {
			nonEmpty := false
			for i := range r.Matches {
				if !r.Matches[i].IsEmpty() {
					nonEmpty = true
					break
				}
			}
			if !nonEmpty {
				effective = false
				break
			}
		}
		if effective {
			return true
		}
	}
	return false
}

func validatePolicy(spec *securityapi.AuthorizationPolicy) error {
	if spec.Selector != nil {
		if err := resource.ValidateLabels(spec.Selector.MatchLabels, "spec", "selector", "matchLabels"); err != nil {
			return err
		}
	}
	checkIPs := func(what string, vals []string) error {
		for _, v := range vals {
			if v == "" {
				continue
			}
			if strings.Contains(v, "/") {
				if _, err := netip.ParsePrefix(v); err != nil {
					return fmt.Errorf("%s: invalid CIDR %q", what, v)
				}
			} else if _, err := netip.ParseAddr(v); err != nil {
				return fmt.Errorf("%s: invalid IP %q", what, v)
			}
		}
		return nil
	}
	checkPorts := func(what string, vals []string) error {
		for _, v := range vals {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil || p == 0 {
				return fmt.Errorf("%s: invalid port %q", what, v)
			}
		}
		return nil
	}
	for i, r := range spec.Rules {
		for j, f := range r.From {
			if f.Source == nil {
				return fmt.Errorf("spec.rules[%d].from[%d]: source is required", i, j)
			}
			what := fmt.Sprintf("spec.rules[%d].from[%d].source", i, j)
			if err := checkIPs(what+".ipBlocks", f.Source.IpBlocks); err != nil {
				return err
			}
			if err := checkIPs(what+".notIpBlocks", f.Source.NotIpBlocks); err != nil {
				return err
			}
		}
		for j, t := range r.To {
			if t.Operation == nil {
				return fmt.Errorf("spec.rules[%d].to[%d]: operation is required", i, j)
			}
			what := fmt.Sprintf("spec.rules[%d].to[%d].operation", i, j)
			if err := checkPorts(what+".ports", t.Operation.Ports); err != nil {
				return err
			}
			if err := checkPorts(what+".notPorts", t.Operation.NotPorts); err != nil {
				return err
			}
		}
		for j, w := range r.When {
			what := fmt.Sprintf("spec.rules[%d].when[%d]", i, j)
			if w.Key == "" {
				return fmt.Errorf("%s: key is required", what)
			}
			switch w.Key {
			case "source.ip", "destination.ip":
				if err := checkIPs(what, append(slices.Clone(w.Values), w.NotValues...)); err != nil {
					return err
				}
			case "destination.port":
				if err := checkPorts(what, append(slices.Clone(w.Values), w.NotValues...)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// handleRule converts one rule into the Rules of one Group: one for all `to` entries, one for all `from`
// entries and one per `when`. In an ALLOW policy a rule with HTTP attributes is dropped entirely.
func handleRule(action state.PolicyAction, rule *securityapi.Rule, ns string) ([]state.Rules, []string) {
	var l7 []string
	var toMatches, fromMatches []state.Match
	for _, to := range rule.To {
		op := to.Operation
		for name, vals := range map[string]int{"hosts": len(op.Hosts), "notHosts": len(op.NotHosts), "methods": len(op.Methods),
			"notMethods": len(op.NotMethods), "paths": len(op.Paths), "notPaths": len(op.NotPaths)} {
			if vals > 0 {
				l7 = append(l7, name)
			}
		}
		toMatches = append(toMatches, state.Match{DestinationPorts: ports(op.Ports), NotDestinationPorts: ports(op.NotPorts)})
	}
	for _, from := range rule.From {
		s := from.Source
		for name, vals := range map[string]int{"remoteIpBlocks": len(s.RemoteIpBlocks), "notRemoteIpBlocks": len(s.NotRemoteIpBlocks),
			"requestPrincipals": len(s.RequestPrincipals), "notRequestPrincipals": len(s.NotRequestPrincipals),
			"trustDomains": len(s.TrustDomains), "notTrustDomains": len(s.NotTrustDomains)} {
			if vals > 0 {
				l7 = append(l7, name)
			}
		}
		fromMatches = append(fromMatches, state.Match{
			SourceIPs: prefixes(s.IpBlocks), NotSourceIPs: prefixes(s.NotIpBlocks),
			Namespaces: stringMatches(s.Namespaces), NotNamespaces: stringMatches(s.NotNamespaces),
			ServiceAccounts: serviceAccounts(s.ServiceAccounts, ns), NotServiceAccounts: serviceAccounts(s.NotServiceAccounts, ns),
			Principals: stringMatches(s.Principals), NotPrincipals: stringMatches(s.NotPrincipals),
		})
	}
	rules := []state.Rules{}
	if len(toMatches) > 0 {
		rules = append(rules, state.Rules{Matches: toMatches})
	}
	if len(fromMatches) > 0 {
		rules = append(rules, state.Rules{Matches: fromMatches})
	}
	for _, w := range rule.When {
		if !l4WhenKeys[w.Key] {
			l7 = append(l7, w.Key)
		}
		m := state.Match{}
		switch w.Key {
		case "source.namespace":
			m.Namespaces, m.NotNamespaces = stringMatches(w.Values), stringMatches(w.NotValues)
		case "source.principal":
			m.Principals, m.NotPrincipals = stringMatches(w.Values), stringMatches(w.NotValues)
		case "source.ip":
			m.SourceIPs, m.NotSourceIPs = prefixes(w.Values), prefixes(w.NotValues)
		case "destination.port":
			m.DestinationPorts, m.NotDestinationPorts = ports(w.Values), ports(w.NotValues)
		case "destination.ip":
			m.DestinationIPs, m.NotDestinationIPs = prefixes(w.Values), prefixes(w.NotValues)
		}
		rules = append(rules, state.Rules{Matches: []state.Match{m}})
	}
	if action == state.ActionAllow && len(l7) > 0 {
		return nil, l7
	}
	return rules, l7
}

// stringMatches turns Istio's wildcard strings into matches: "*" presence, "*x" suffix, "x*" prefix.
func stringMatches(vals []string) []state.StringMatch {
	var out []state.StringMatch
	for _, v := range vals {
		switch {
		case v == "*":
			out = append(out, state.StringMatch{Kind: state.MatchPresence})
		case strings.HasPrefix(v, "*"):
			out = append(out, state.StringMatch{Kind: state.MatchSuffix, Value: v[1:]})
		case strings.HasSuffix(v, "*"):
			out = append(out, state.StringMatch{Kind: state.MatchPrefix, Value: v[:len(v)-1]})
		default:
			out = append(out, state.StringMatch{Kind: state.MatchExact, Value: v})
		}
	}
	return out
}

func serviceAccounts(vals []string, ns string) []state.ServiceAccountMatch {
	var out []state.ServiceAccountMatch
	for _, v := range vals {
		if n, sa, ok := strings.Cut(v, "/"); ok {
			out = append(out, state.ServiceAccountMatch{Namespace: n, ServiceAccount: sa})
		} else {
			out = append(out, state.ServiceAccountMatch{Namespace: ns, ServiceAccount: v})
		}
	}
	return out
}

func ports(vals []string) []uint16 {
	var out []uint16
	for _, v := range vals {
		if p, err := strconv.ParseUint(v, 10, 16); err == nil {
			out = append(out, uint16(p))
		}
	}
	return out
}

func prefixes(vals []string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range vals {
		if v == "" {
			continue
		}
		if strings.Contains(v, "/") {
			if p, err := netip.ParsePrefix(v); err == nil {
				out = append(out, p.Masked())
			}
			continue
		}
		if a, err := netip.ParseAddr(v); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}
