package compile

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/config/resource"
	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/policy"
)

// Options are the mesh settings names are resolved with.
type Options struct {
	// DomainSuffix of service hostnames (<svc>.<ns>.svc.<suffix>); default cluster.local.
	DomainSuffix string
	// ClusterID of the pods whose labels DestinationRule subsets select; default Kubernetes.
	ClusterID string
}

func (o Options) withDefaults() Options {
	o.DomainSuffix = cmp.Or(o.DomainSuffix, "cluster.local")
	o.ClusterID = cmp.Or(o.ClusterID, state.DefaultClusterID)
	return o
}

// Inputs are the objects one configuration is compiled from. ServiceEntries and Pods are context
// only: the hostnames of the ServiceEntries that parentRefs and backendRefs name, and the pod labels
// DestinationRule subsets select.
type Inputs struct {
	HTTPRoutes             []*gwv1.HTTPRoute
	GRPCRoutes             []*gwv1.GRPCRoute
	VirtualServices        []*networkingv1.VirtualService
	DestinationRules       []*networkingv1.DestinationRule
	AuthorizationPolicies  []*securityv1.AuthorizationPolicy
	RequestAuthentications []*securityv1.RequestAuthentication
	RateLimitPolicies      []*resource.LocalRateLimitPolicy

	ServiceEntries []*networkingv1.ServiceEntry
	Pods           []*corev1.Pod
}

// Objects returns the compiled objects in compile order: by kind (HTTPRoute, GRPCRoute,
// VirtualService, DestinationRule, AuthorizationPolicy, RequestAuthentication, LocalRateLimitPolicy),
// then as given.
func (in *Inputs) Objects() []any {
	var out []any
	for _, o := range in.HTTPRoutes {
		out = append(out, o)
	}
	for _, o := range in.GRPCRoutes {
		out = append(out, o)
	}
	for _, o := range in.VirtualServices {
		out = append(out, o)
	}
	for _, o := range in.DestinationRules {
		out = append(out, o)
	}
	for _, o := range in.AuthorizationPolicies {
		out = append(out, o)
	}
	for _, o := range in.RequestAuthentications {
		out = append(out, o)
	}
	for _, o := range in.RateLimitPolicies {
		out = append(out, o)
	}
	return out
}

// Compile compiles every object of in (see Compiler.Add). The first invalid object fails the whole
// configuration with its *Error; nothing is partially compiled. This is how a file version is
// compiled: one bad document rejects the version.
func Compile(in *Inputs, opts Options) (*model.Config, error) {
	c := New(opts, in.ServiceEntries, in.Pods)
	for _, o := range in.Objects() {
		if err := c.Add(o); err != nil {
			return nil, err
		}
	}
	return c.Config(), nil
}

// Error is an invalid object: its kind, namespace and name, and what is wrong with it, prefixed with
// the path of the field ("spec.rules[0].matches[0].path.value: invalid regular expression ...").
type Error struct {
	// Object is the object as given to Add, so that a caller can say where it came from.
	Object    any
	Kind      string
	Namespace string
	Name      string
	Err       error
}

// Error implements error.
func (e *Error) Error() string {
	return e.Kind + " " + e.Namespace + "/" + e.Name + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Compiler builds one configuration object by object, so that each object is validated alone (the
// API server source skips an invalid object and keeps the rest). It does no I/O; it is not safe for
// concurrent use.
type Compiler struct {
	opts           Options
	serviceEntries []*networkingv1.ServiceEntry
	cfg            *model.Config
}

// New returns a Compiler with an empty configuration. serviceEntries and pods are the context every
// object is compiled against (see Inputs).
func New(opts Options, serviceEntries []*networkingv1.ServiceEntry, pods []*corev1.Pod) *Compiler {
	c := &Compiler{opts: opts.withDefaults(), serviceEntries: serviceEntries, cfg: &model.Config{
		Destinations: map[string]*model.Destination{}, WorkloadLabels: map[string]map[string]string{},
	}}
	for _, p := range pods {
		ns := cmp.Or(p.Namespace, "default")
		c.cfg.WorkloadLabels[c.opts.ClusterID+"//Pod/"+ns+"/"+p.Name] = p.Labels
	}
	return c
}

// Config returns the configuration compiled so far. Call Add no more once it has been handed out.
func (c *Compiler) Config() *model.Config { return c.cfg }

// Add validates and compiles one object into the configuration: a *gwv1.HTTPRoute, *gwv1.GRPCRoute,
// *networkingv1.VirtualService, *networkingv1.DestinationRule, *securityv1.AuthorizationPolicy or
// *securityv1.RequestAuthentication with targetRefs, or a *resource.LocalRateLimitPolicy. An invalid
// object is reported as an *Error and leaves the configuration as it was, except an invalid DENY
// AuthorizationPolicy with valid targets: it is reported and compiled as a deny-all for those targets
// (fail closed, as istiod does), so that one bad object never weakens the rest. AuthorizationPolicies and
// RequestAuthentications without targetRefs are L4 or node-level (config/local compiles the L4
// policies) and are skipped without error. The metadata is defaulted in place (an empty namespace
// becomes "default").
func (c *Compiler) Add(obj any) error {
	switch o := obj.(type) {
	case *gwv1.HTTPRoute:
		return c.add(o, model.KindHTTPRoute, &o.ObjectMeta, func() error {
			route, err := c.httpRoute(o)
			if err == nil {
				c.cfg.Routes = append(c.cfg.Routes, route)
			}
			return err
		})
	case *gwv1.GRPCRoute:
		return c.add(o, model.KindGRPCRoute, &o.ObjectMeta, func() error {
			route, err := c.grpcRoute(o)
			if err == nil {
				c.cfg.Routes = append(c.cfg.Routes, route)
			}
			return err
		})
	case *networkingv1.VirtualService:
		return c.add(o, model.KindVirtual, &o.ObjectMeta, func() error {
			route, err := c.virtualService(o.Namespace, o.Name, &o.Spec)
			if err == nil {
				c.cfg.Routes = append(c.cfg.Routes, route)
			}
			return err
		})
	case *networkingv1.DestinationRule:
		return c.add(o, "DestinationRule", &o.ObjectMeta, func() error {
			d, err := c.destinationRule(o.Namespace, o.Name, &o.Spec)
			var warnings []string
			if err == nil {
				warnings, err = destinationTLS(d, &o.Spec)
			}
			if err == nil {
				c.cfg.Warnings = append(c.cfg.Warnings, warnings...)
				if _, dup := c.cfg.Destinations[d.Host]; !dup {
					c.cfg.Destinations[d.Host] = d // the oldest rule for a host wins, as in Istio
				}
			}
			return err
		})
	case *securityv1.AuthorizationPolicy:
		if o.Spec.TargetRef == nil && len(o.Spec.TargetRefs) == 0 {
			return nil
		}
		return c.add(o, "AuthorizationPolicy", &o.ObjectMeta, func() error {
			p, err := c.authorizationPolicy(o.Namespace, o.Name, &o.Spec)
			if err != nil {
				p = denyAll(o.Namespace, o.Name, &o.Spec)
			}
			if p != nil {
				p.DryRun = o.Annotations[istio.AnnotationDryRun] == "true"
				c.cfg.Authz = append(c.cfg.Authz, p)
			}
			return err
		})
	case *securityv1.RequestAuthentication:
		if o.Spec.TargetRef == nil && len(o.Spec.TargetRefs) == 0 {
			return nil
		}
		return c.add(o, "RequestAuthentication", &o.ObjectMeta, func() error {
			p, err := c.requestAuthentication(o)
			if err == nil {
				c.cfg.JWT = append(c.cfg.JWT, p)
			}
			return err
		})
	case *resource.LocalRateLimitPolicy:
		return c.add(o, "LocalRateLimitPolicy", &o.ObjectMeta, func() error {
			p, err := rateLimit(o)
			if err == nil {
				c.cfg.RateLimits = append(c.cfg.RateLimits, p)
			}
			return err
		})
	}
	return fmt.Errorf("compile: unsupported object %T", obj)
}

// denyAll returns what an invalid AuthorizationPolicy leaves in force: for a DENY policy whose targets
// are valid, a policy denying everything on them (fail closed: an invalid DENY never denies less, as istiod
// turns an invalid DENY into a deny-all for its selection); nil for any other.
func denyAll(ns, name string, spec *securityapi.AuthorizationPolicy) *model.AuthzPolicy {
	if spec.Action != securityapi.AuthorizationPolicy_DENY {
		return nil
	}
	targets, err := targetRefs("spec.targetRefs", spec.TargetRef, spec.TargetRefs, ns)
	if err != nil {
		return nil
	}
	return &model.AuthzPolicy{Namespace: ns, Name: name, Action: model.ActionDeny, Targets: targets, Rules: []model.AuthzRule{{}}}
}

// add validates the metadata, runs compile and wraps its error as an *Error naming the object.
func (c *Compiler) add(obj any, kind string, m *metav1.ObjectMeta, compile func() error) error {
	err := resource.ValidateMeta(m, true)
	if err == nil {
		err = compile()
	}
	if err != nil {
		return &Error{Object: obj, Kind: kind, Namespace: m.Namespace, Name: m.Name, Err: err}
	}
	return nil
}

// fieldErr prefixes err with a field path.
func fieldErr(path string, err error) error { return fmt.Errorf("%s: %w", path, err) }

func (c *Compiler) svcHost(name, ns string) string {
	return name + "." + ns + ".svc." + c.opts.DomainSuffix
}

// istioHost resolves a VirtualService/DestinationRule host: a short name is a Service in ns.
func (c *Compiler) istioHost(h, ns string) string {
	switch strings.Count(h, ".") {
	case 0:
		return c.svcHost(h, ns)
	case 1:
		return h + ".svc." + c.opts.DomainSuffix
	}
	return h
}

func groupOf(g *gwv1.Group) string {
	if g == nil {
		return ""
	}
	return string(*g)
}

func kindOf(k *gwv1.Kind, def string) string {
	if k == nil || *k == "" {
		return def
	}
	return string(*k)
}

func nsOf(n *gwv1.Namespace, def string) string {
	if n == nil || *n == "" {
		return def
	}
	return string(*n)
}

func (c *Compiler) parents(refs []gwv1.ParentReference, ns string) ([]model.Parent, error) {
	var out []model.Parent
	for i, r := range refs {
		path := fmt.Sprintf("spec.parentRefs[%d]", i)
		kind := kindOf(r.Kind, model.KindGateway)
		p := model.Parent{Kind: kind, Namespace: nsOf(r.Namespace, ns), Name: string(r.Name)}
		if r.Port != nil {
			p.Port = uint16(*r.Port)
		}
		switch {
		case kind == model.KindService && (groupOf(r.Group) == "" || groupOf(r.Group) == "core"):
			p.Hostname = c.svcHost(p.Name, p.Namespace)
		case kind == model.KindServiceEntry && groupOf(r.Group) == "networking.istio.io":
			p.Hostname = c.serviceEntryHost(p.Name, p.Namespace)
			if p.Hostname == "" {
				return nil, fieldErr(path, fmt.Errorf("ServiceEntry %s/%s not found", p.Namespace, p.Name))
			}
		case kind == model.KindGateway && (r.Group == nil || groupOf(r.Group) == gwv1.GroupName):
		default:
			return nil, fieldErr(path+".kind", fmt.Errorf("unsupported parent %s/%s (Service, ServiceEntry or Gateway)", groupOf(r.Group), kind))
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("spec.parentRefs: at least one parent is required")
	}
	return out, nil
}

func (c *Compiler) serviceEntryHost(name, ns string) string {
	for _, se := range c.serviceEntries {
		if se.Name == name && cmp.Or(se.Namespace, "default") == ns && len(se.Spec.Hosts) > 0 {
			return se.Spec.Hosts[0]
		}
	}
	return ""
}

func duration(path string, d *gwv1.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil || v < 0 {
		return 0, fieldErr(path, fmt.Errorf("invalid duration %q", string(*d)))
	}
	return v, nil
}

func pbDuration(path string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
		return 0, fieldErr(path, fmt.Errorf("invalid duration %v", d))
	}
	return d.AsDuration(), nil
}

func compileRE(path, expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return nil, fieldErr(path, fmt.Errorf("invalid regular expression: %w", err))
	}
	return re, nil
}

func validHeaderName(path, name string) error {
	if name == "" || strings.ContainsAny(name, " :\r\n\t") || !isToken(name) {
		return fieldErr(path, fmt.Errorf("invalid header name %q", name))
	}
	return nil
}

func isToken(s string) bool {
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) {
			return false
		}
	}
	return true
}

func validHeaderValue(path, v string) error {
	if strings.ContainsAny(v, "\r\n\x00") {
		return fieldErr(path, fmt.Errorf("invalid header value %q", v))
	}
	return nil
}

func headerMod(path string, f *gwv1.HTTPHeaderFilter) (model.HeaderMod, error) {
	var m model.HeaderMod
	if f == nil {
		return m, nil
	}
	for i, h := range f.Set {
		if err := validHeaderName(fmt.Sprintf("%s.set[%d].name", path, i), string(h.Name)); err != nil {
			return m, err
		}
		if err := validHeaderValue(fmt.Sprintf("%s.set[%d].value", path, i), h.Value); err != nil {
			return m, err
		}
		m.Set = append(m.Set, model.Header{Name: string(h.Name), Value: h.Value})
	}
	for i, h := range f.Add {
		if err := validHeaderName(fmt.Sprintf("%s.add[%d].name", path, i), string(h.Name)); err != nil {
			return m, err
		}
		if err := validHeaderValue(fmt.Sprintf("%s.add[%d].value", path, i), h.Value); err != nil {
			return m, err
		}
		m.Add = append(m.Add, model.Header{Name: string(h.Name), Value: h.Value})
	}
	for i, h := range f.Remove {
		if err := validHeaderName(fmt.Sprintf("%s.remove[%d]", path, i), h); err != nil {
			return m, err
		}
		m.Remove = append(m.Remove, h)
	}
	return m, nil
}

func pathModifier(path string, p *gwv1.HTTPPathModifier) (model.PathModifier, error) {
	if p == nil {
		return model.PathModifier{}, nil
	}
	switch p.Type {
	case gwv1.FullPathHTTPPathModifier:
		if p.ReplaceFullPath == nil || !strings.HasPrefix(*p.ReplaceFullPath, "/") {
			return model.PathModifier{}, fieldErr(path+".replaceFullPath", errors.New("must be an absolute path"))
		}
		return model.PathModifier{FullPath: *p.ReplaceFullPath}, nil
	case gwv1.PrefixMatchHTTPPathModifier:
		if p.ReplacePrefixMatch == nil {
			return model.PathModifier{}, fieldErr(path+".replacePrefixMatch", errors.New("required"))
		}
		return model.PathModifier{Prefix: *p.ReplacePrefixMatch, PrefixSet: true}, nil
	}
	return model.PathModifier{}, fieldErr(path+".type", fmt.Errorf("unsupported %q", p.Type))
}

func (c *Compiler) backendRef(path string, ref gwv1.BackendObjectReference, weight *int32, ns string) (model.Backend, error) {
	kind := kindOf(ref.Kind, model.KindService)
	b := model.Backend{Namespace: nsOf(ref.Namespace, ns), Weight: 1}
	if weight != nil {
		if *weight < 0 {
			return b, fieldErr(path+".weight", errors.New("must not be negative"))
		}
		b.Weight = *weight
	}
	if ref.Port != nil {
		b.Port = uint16(*ref.Port)
	}
	switch {
	case kind == model.KindService && (groupOf(ref.Group) == "" || groupOf(ref.Group) == "core"):
		b.Host = c.svcHost(string(ref.Name), b.Namespace)
		if b.Port == 0 {
			return b, fieldErr(path+".port", errors.New("required for a Service backend"))
		}
	case kind == "Hostname" && groupOf(ref.Group) == "networking.istio.io":
		b.Host = string(ref.Name)
	case kind == model.KindServiceEntry && groupOf(ref.Group) == "networking.istio.io":
		b.Host = c.serviceEntryHost(string(ref.Name), b.Namespace)
		if b.Host == "" {
			return b, fieldErr(path+".name", fmt.Errorf("ServiceEntry %s/%s not found", b.Namespace, ref.Name))
		}
	default:
		return b, fieldErr(path+".kind", fmt.Errorf("unsupported backend %s/%s", groupOf(ref.Group), kind))
	}
	return b, nil
}

func fraction(path string, percent *int32, f *gwv1.Fraction) (float64, error) {
	switch {
	case percent != nil:
		if *percent < 0 || *percent > 100 {
			return 0, fieldErr(path+".percent", errors.New("must be 0-100"))
		}
		return float64(*percent), nil
	case f != nil:
		den := int32(100)
		if f.Denominator != nil {
			den = *f.Denominator
		}
		if den <= 0 || f.Numerator < 0 || f.Numerator > den {
			return 0, fieldErr(path+".fraction", errors.New("numerator must be 0..denominator, denominator > 0"))
		}
		return 100 * float64(f.Numerator) / float64(den), nil
	}
	return 100, nil
}

// filters compiles HTTPRoute filters into a rule (or a backend's filters when rule is nil).
func (c *Compiler) filters(path string, fs []gwv1.HTTPRouteFilter, ns string, rule *model.Rule, out *model.Filters) error {
	for i, f := range fs {
		p := fmt.Sprintf("%s[%d]", path, i)
		var err error
		switch f.Type {
		case gwv1.HTTPRouteFilterRequestHeaderModifier:
			out.Request, err = headerMod(p+".requestHeaderModifier", f.RequestHeaderModifier)
		case gwv1.HTTPRouteFilterResponseHeaderModifier:
			out.Response, err = headerMod(p+".responseHeaderModifier", f.ResponseHeaderModifier)
		case gwv1.HTTPRouteFilterURLRewrite:
			if f.URLRewrite == nil {
				return fieldErr(p+".urlRewrite", errors.New("required"))
			}
			rw := &model.Rewrite{}
			if f.URLRewrite.Hostname != nil {
				rw.Hostname = string(*f.URLRewrite.Hostname)
			}
			rw.PathModifier, err = pathModifier(p+".urlRewrite.path", f.URLRewrite.Path)
			out.Rewrite = rw
		case gwv1.HTTPRouteFilterRequestRedirect:
			if rule == nil {
				return fieldErr(p+".type", errors.New("RequestRedirect is not allowed on a backendRef"))
			}
			rr := f.RequestRedirect
			if rr == nil {
				return fieldErr(p+".requestRedirect", errors.New("required"))
			}
			red := &model.Redirect{StatusCode: 302}
			if rr.StatusCode != nil {
				if *rr.StatusCode != 301 && *rr.StatusCode != 302 && *rr.StatusCode != 303 && *rr.StatusCode != 307 && *rr.StatusCode != 308 {
					return fieldErr(p+".requestRedirect.statusCode", fmt.Errorf("unsupported %d", *rr.StatusCode))
				}
				red.StatusCode = *rr.StatusCode
			}
			if rr.Scheme != nil {
				red.Scheme = *rr.Scheme
			}
			if rr.Hostname != nil {
				red.Hostname = string(*rr.Hostname)
			}
			if rr.Port != nil {
				red.Port = uint16(*rr.Port)
			}
			red.PathModifier, err = pathModifier(p+".requestRedirect.path", rr.Path)
			rule.Redirect = red
		case gwv1.HTTPRouteFilterRequestMirror:
			if rule == nil {
				return fieldErr(p+".type", errors.New("RequestMirror is not allowed on a backendRef"))
			}
			if f.RequestMirror == nil {
				return fieldErr(p+".requestMirror", errors.New("required"))
			}
			var m model.Mirror
			if m.Backend, err = c.backendRef(p+".requestMirror.backendRef", f.RequestMirror.BackendRef, nil, ns); err != nil {
				return err
			}
			if m.Percent, err = fraction(p+".requestMirror", f.RequestMirror.Percent, f.RequestMirror.Fraction); err != nil {
				return err
			}
			rule.Mirrors = append(rule.Mirrors, m)
		default:
			return fieldErr(p+".type", fmt.Errorf("unsupported filter %q", f.Type))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Compiler) httpRoute(r *gwv1.HTTPRoute) (*model.Route, error) {
	ps, err := c.parents(r.Spec.ParentRefs, r.Namespace)
	if err != nil {
		return nil, err
	}
	route := &model.Route{Kind: model.KindHTTPRoute, Namespace: r.Namespace, Name: r.Name, Parents: ps}
	for i, rr := range r.Spec.Rules {
		path := fmt.Sprintf("spec.rules[%d]", i)
		rule := &model.Rule{Name: strconv.Itoa(i)}
		if rr.Name != nil {
			rule.Name = string(*rr.Name)
		}
		for j, m := range rr.Matches {
			mm, err := httpMatch(fmt.Sprintf("%s.matches[%d]", path, j), &m)
			if err != nil {
				return nil, err
			}
			rule.Matches = append(rule.Matches, mm)
		}
		if err := c.filters(path+".filters", rr.Filters, r.Namespace, rule, &rule.Filters); err != nil {
			return nil, err
		}
		for j, br := range rr.BackendRefs {
			bp := fmt.Sprintf("%s.backendRefs[%d]", path, j)
			b, err := c.backendRef(bp, br.BackendObjectReference, br.Weight, r.Namespace)
			if err != nil {
				return nil, err
			}
			if err := c.filters(bp+".filters", br.Filters, r.Namespace, nil, &b.Filters); err != nil {
				return nil, err
			}
			rule.Backends = append(rule.Backends, b)
		}
		if rr.Timeouts != nil {
			if rule.Timeout, err = duration(path+".timeouts.request", rr.Timeouts.Request); err != nil {
				return nil, err
			}
			if rule.PerTryTimeout, err = duration(path+".timeouts.backendRequest", rr.Timeouts.BackendRequest); err != nil {
				return nil, err
			}
		}
		if rr.Retry != nil {
			rt := &model.Retry{Attempts: 1, Backoff: 25 * time.Millisecond}
			if rr.Retry.Attempts != nil {
				if *rr.Retry.Attempts < 0 {
					return nil, fieldErr(path+".retry.attempts", errors.New("must not be negative"))
				}
				rt.Attempts = *rr.Retry.Attempts
			}
			for k, code := range rr.Retry.Codes {
				if code < 400 || code > 599 {
					return nil, fieldErr(fmt.Sprintf("%s.retry.codes[%d]", path, k), fmt.Errorf("%d is not 400-599", code))
				}
				rt.Codes = append(rt.Codes, int(code))
			}
			if rr.Retry.Backoff != nil {
				if rt.Backoff, err = duration(path+".retry.backoff", rr.Retry.Backoff); err != nil {
					return nil, err
				}
			}
			rt.On = []string{model.RetryOnConnectFailure, model.RetryOnRefusedStream, model.RetryOnReset}
			if len(rt.Codes) > 0 {
				rt.On = append(rt.On, model.RetryOnRetriableCodes)
			}
			rule.Retry = rt
		}
		route.Rules = append(route.Rules, rule)
	}
	return route, nil
}

func httpMatch(path string, m *gwv1.HTTPRouteMatch) (model.Match, error) {
	out := model.Match{Path: "/"}
	if m.Path != nil {
		v := "/"
		if m.Path.Value != nil {
			v = *m.Path.Value
		}
		t := gwv1.PathMatchPathPrefix
		if m.Path.Type != nil {
			t = *m.Path.Type
		}
		out.Path = v
		switch t {
		case gwv1.PathMatchExact:
			out.PathKind = model.PathExact
		case gwv1.PathMatchPathPrefix:
			out.PathKind = model.PathPrefix
		case gwv1.PathMatchRegularExpression:
			out.PathKind = model.PathRegex
			re, err := compileRE(path+".path.value", v)
			if err != nil {
				return out, err
			}
			out.PathRE = re
		default:
			return out, fieldErr(path+".path.type", fmt.Errorf("unsupported %q", t))
		}
		if t != gwv1.PathMatchRegularExpression && !strings.HasPrefix(v, "/") {
			return out, fieldErr(path+".path.value", fmt.Errorf("%q must start with /", v))
		}
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
	}
	for i, h := range m.Headers {
		p := fmt.Sprintf("%s.headers[%d]", path, i)
		if err := validHeaderName(p+".name", string(h.Name)); err != nil {
			return out, err
		}
		vm := model.ValueMatch{Name: string(h.Name), Value: h.Value}
		if h.Type != nil && *h.Type == gwv1.HeaderMatchRegularExpression {
			re, err := compileRE(p+".value", h.Value)
			if err != nil {
				return out, err
			}
			vm.Kind, vm.RE = model.StringRegex, re
		}
		out.Headers = append(out.Headers, vm)
	}
	for i, q := range m.QueryParams {
		p := fmt.Sprintf("%s.queryParams[%d]", path, i)
		vm := model.ValueMatch{Name: string(q.Name), Value: q.Value}
		if q.Type != nil && *q.Type == gwv1.QueryParamMatchRegularExpression {
			re, err := compileRE(p+".value", q.Value)
			if err != nil {
				return out, err
			}
			vm.Kind, vm.RE = model.StringRegex, re
		}
		out.Query = append(out.Query, vm)
	}
	return out, nil
}

func (c *Compiler) grpcRoute(r *gwv1.GRPCRoute) (*model.Route, error) {
	ps, err := c.parents(r.Spec.ParentRefs, r.Namespace)
	if err != nil {
		return nil, err
	}
	route := &model.Route{Kind: model.KindGRPCRoute, Namespace: r.Namespace, Name: r.Name, Parents: ps}
	for i, rr := range r.Spec.Rules {
		path := fmt.Sprintf("spec.rules[%d]", i)
		rule := &model.Rule{Name: strconv.Itoa(i)}
		if rr.Name != nil {
			rule.Name = string(*rr.Name)
		}
		for j, m := range rr.Matches {
			mp := fmt.Sprintf("%s.matches[%d]", path, j)
			mm := model.Match{Path: "/", Method: http.MethodPost}
			if m.Method != nil {
				svc, meth := "", ""
				if m.Method.Service != nil {
					svc = *m.Method.Service
				}
				if m.Method.Method != nil {
					meth = *m.Method.Method
				}
				if svc == "" && meth == "" {
					return nil, fieldErr(mp+".method", errors.New("one of service and method is required"))
				}
				if m.Method.Type != nil && *m.Method.Type == gwv1.GRPCMethodMatchRegularExpression {
					re, err := compileRE(mp+".method", "/"+cmp.Or(svc, "[^/]+")+"/"+cmp.Or(meth, "[^/]+"))
					if err != nil {
						return nil, err
					}
					mm.PathKind, mm.PathRE = model.PathRegex, re
				} else if meth == "" {
					mm.PathKind, mm.Path = model.PathPrefix, "/"+svc+"/"
				} else if svc == "" {
					re, err := compileRE(mp+".method", "/[^/]+/"+regexp.QuoteMeta(meth))
					if err != nil {
						return nil, err
					}
					mm.PathKind, mm.PathRE = model.PathRegex, re
				} else {
					mm.PathKind, mm.Path = model.PathExact, "/"+svc+"/"+meth
				}
			}
			for k, h := range m.Headers {
				p := fmt.Sprintf("%s.headers[%d]", mp, k)
				if err := validHeaderName(p+".name", string(h.Name)); err != nil {
					return nil, err
				}
				vm := model.ValueMatch{Name: string(h.Name), Value: h.Value}
				if h.Type != nil && *h.Type == gwv1.GRPCHeaderMatchRegularExpression {
					re, err := compileRE(p+".value", h.Value)
					if err != nil {
						return nil, err
					}
					vm.Kind, vm.RE = model.StringRegex, re
				}
				mm.Headers = append(mm.Headers, vm)
			}
			rule.Matches = append(rule.Matches, mm)
		}
		var hf []gwv1.HTTPRouteFilter
		for _, f := range rr.Filters {
			hf = append(hf, gwv1.HTTPRouteFilter{Type: gwv1.HTTPRouteFilterType(f.Type), RequestHeaderModifier: f.RequestHeaderModifier,
				ResponseHeaderModifier: f.ResponseHeaderModifier, RequestMirror: f.RequestMirror})
		}
		if err := c.filters(path+".filters", hf, r.Namespace, rule, &rule.Filters); err != nil {
			return nil, err
		}
		for j, br := range rr.BackendRefs {
			b, err := c.backendRef(fmt.Sprintf("%s.backendRefs[%d]", path, j), br.BackendObjectReference, br.Weight, r.Namespace)
			if err != nil {
				return nil, err
			}
			rule.Backends = append(rule.Backends, b)
		}
		route.Rules = append(route.Rules, rule)
	}
	return route, nil
}

func istioString(path string, m *networkingapi.StringMatch) (model.StringKind, string, *regexp.Regexp, error) {
	switch {
	case m.GetExact() != "":
		return model.StringExact, m.GetExact(), nil, nil
	case m.GetPrefix() != "":
		return model.StringPrefix, m.GetPrefix(), nil, nil
	case m.GetRegex() != "":
		re, err := compileRE(path+".regex", m.GetRegex())
		return model.StringRegex, m.GetRegex(), re, err
	}
	return model.StringPresent, "", nil, nil
}

func istioHeaders(path string, ops *networkingapi.Headers_HeaderOperations) (model.HeaderMod, error) {
	f := &gwv1.HTTPHeaderFilter{Remove: ops.GetRemove()}
	for k, v := range ops.GetSet() {
		f.Set = append(f.Set, gwv1.HTTPHeader{Name: gwv1.HTTPHeaderName(k), Value: v})
	}
	for k, v := range ops.GetAdd() {
		f.Add = append(f.Add, gwv1.HTTPHeader{Name: gwv1.HTTPHeaderName(k), Value: v})
	}
	return headerMod(path, f)
}

func (c *Compiler) virtualService(ns, name string, spec *networkingapi.VirtualService) (*model.Route, error) {
	route := &model.Route{Kind: model.KindVirtual, Namespace: ns, Name: name}
	if len(spec.Hosts) == 0 {
		return nil, errors.New("spec.hosts: at least one host is required")
	}
	for _, h := range spec.Hosts {
		route.Parents = append(route.Parents, model.Parent{Kind: model.KindService, Hostname: c.istioHost(h, ns)})
	}
	for i, hr := range spec.Http {
		path := fmt.Sprintf("spec.http[%d]", i)
		rule := &model.Rule{Name: cmp.Or(hr.Name, strconv.Itoa(i))}
		for j, m := range hr.Match {
			mp := fmt.Sprintf("%s.match[%d]", path, j)
			mm := model.Match{Path: "/"}
			if m.Uri != nil {
				k, v, re, err := istioString(mp+".uri", m.Uri)
				if err != nil {
					return nil, err
				}
				switch k {
				case model.StringExact:
					mm.PathKind, mm.Path = model.PathExact, v
				case model.StringRegex:
					mm.PathKind, mm.PathRE = model.PathRegex, re
				case model.StringPrefix:
					// Istio's uri prefix is a plain string prefix, not Gateway API's element-wise prefix;
					// rewrite.uri replaces it.
					mm.PathKind, mm.Path = model.PathStringPrefix, v
				}
			}
			if m.Method != nil {
				k, v, _, err := istioString(mp+".method", m.Method)
				if err != nil {
					return nil, err
				}
				if k != model.StringExact {
					return nil, fieldErr(mp+".method", errors.New("only exact is supported"))
				}
				mm.Method = v
			}
			for _, hk := range sortedKeys(m.Headers) {
				k, v, re, err := istioString(mp+".headers."+hk, m.Headers[hk])
				if err != nil {
					return nil, err
				}
				mm.Headers = append(mm.Headers, model.ValueMatch{Name: hk, Kind: k, Value: v, RE: re})
			}
			for _, hk := range sortedKeys(m.WithoutHeaders) {
				k, v, re, err := istioString(mp+".withoutHeaders."+hk, m.WithoutHeaders[hk])
				if err != nil {
					return nil, err
				}
				mm.Headers = append(mm.Headers, model.ValueMatch{Name: hk, Kind: k, Value: v, RE: re, Invert: true})
			}
			for _, qk := range sortedKeys(m.QueryParams) {
				k, v, re, err := istioString(mp+".queryParams."+qk, m.QueryParams[qk])
				if err != nil {
					return nil, err
				}
				mm.Query = append(mm.Query, model.ValueMatch{Name: qk, Kind: k, Value: v, RE: re})
			}
			rule.Matches = append(rule.Matches, mm)
		}
		for j, d := range hr.Route {
			dp := fmt.Sprintf("%s.route[%d]", path, j)
			b, err := c.istioDestination(dp+".destination", d.Destination, ns)
			if err != nil {
				return nil, err
			}
			b.Weight = d.Weight
			if len(hr.Route) == 1 && b.Weight == 0 {
				b.Weight = 100
			}
			if d.Headers != nil {
				if b.Filters.Request, err = istioHeaders(dp+".headers.request", d.Headers.Request); err != nil {
					return nil, err
				}
				if b.Filters.Response, err = istioHeaders(dp+".headers.response", d.Headers.Response); err != nil {
					return nil, err
				}
			}
			rule.Backends = append(rule.Backends, b)
		}
		var err error
		if hr.Headers != nil {
			if rule.Filters.Request, err = istioHeaders(path+".headers.request", hr.Headers.Request); err != nil {
				return nil, err
			}
			if rule.Filters.Response, err = istioHeaders(path+".headers.response", hr.Headers.Response); err != nil {
				return nil, err
			}
		}
		if hr.Rewrite != nil {
			rule.Filters.Rewrite = &model.Rewrite{Hostname: hr.Rewrite.Authority}
			if hr.Rewrite.Uri != "" {
				// Istio replaces the matched prefix (or the whole path for exact matches).
				rule.Filters.Rewrite.Prefix, rule.Filters.Rewrite.PrefixSet = hr.Rewrite.Uri, true
			}
		}
		if hr.Redirect != nil {
			rule.Redirect = &model.Redirect{PathModifier: model.PathModifier{FullPath: hr.Redirect.Uri}, Hostname: hr.Redirect.Authority,
				Scheme: hr.Redirect.Scheme, StatusCode: int(cmp.Or(hr.Redirect.RedirectCode, 301)), Port: uint16(hr.Redirect.GetPort())}
		}
		if rule.Timeout, err = pbDuration(path+".timeout", hr.Timeout); err != nil {
			return nil, err
		}
		if hr.Retries != nil {
			rt := &model.Retry{Attempts: int(hr.Retries.Attempts), Backoff: 25 * time.Millisecond}
			if rule.PerTryTimeout, err = pbDuration(path+".retries.perTryTimeout", hr.Retries.PerTryTimeout); err != nil {
				return nil, err
			}
			if hr.Retries.Backoff != nil {
				if rt.Backoff, err = pbDuration(path+".retries.backoff", hr.Retries.Backoff); err != nil {
					return nil, err
				}
			}
			on := hr.Retries.RetryOn
			if on == "" {
				on = "connect-failure,refused-stream,unavailable,cancelled"
			}
			for _, cond := range strings.Split(on, ",") {
				cond = strings.TrimSpace(cond)
				if code, err := strconv.Atoi(cond); err == nil {
					rt.Codes = append(rt.Codes, code)
					continue
				}
				switch cond {
				case model.RetryOn5xx, model.RetryOnGatewayError, model.RetryOnConnectFailure, model.RetryOnReset,
					model.RetryOnRetriableCodes, model.RetryOnRefusedStream, model.RetryOnRetriable4xx, model.RetryOnGRPCUnavailable,
					model.RetryOnGRPCCancelled, model.RetryOnGRPCDeadline, model.RetryOnGRPCResource, model.RetryOnGRPCInternalError:
					rt.On = append(rt.On, cond)
				default:
					return nil, fieldErr(path+".retries.retryOn", fmt.Errorf("unsupported condition %q", cond))
				}
			}
			if len(rt.Codes) > 0 {
				rt.On = append(rt.On, model.RetryOnRetriableCodes)
			}
			rule.Retry = rt
		}
		if hr.Fault != nil {
			f := &model.Fault{}
			if d := hr.Fault.Delay; d != nil {
				if f.Delay, err = pbDuration(path+".fault.delay.fixedDelay", d.GetFixedDelay()); err != nil {
					return nil, err
				}
				f.DelayPercent = percent(d.GetPercentage())
			}
			if a := hr.Fault.Abort; a != nil {
				f.AbortPercent = percent(a.GetPercentage())
				f.AbortStatus = int(a.GetHttpStatus())
				if g := a.GetGrpcStatus(); g != "" {
					code, ok := grpcCodes[g]
					if !ok {
						return nil, fieldErr(path+".fault.abort.grpcStatus", fmt.Errorf("unknown %q", g))
					}
					f.AbortGRPC = code
				} else if f.AbortStatus < 200 || f.AbortStatus > 599 {
					return nil, fieldErr(path+".fault.abort.httpStatus", fmt.Errorf("%d is not 200-599", f.AbortStatus))
				}
			}
			if f.DelayPercent < 0 || f.DelayPercent > 100 || f.AbortPercent < 0 || f.AbortPercent > 100 {
				return nil, fieldErr(path+".fault", errors.New("percentage must be 0-100"))
			}
			rule.Fault = f
		}
		mirrors := hr.Mirrors
		if hr.Mirror != nil {
			mirrors = append(mirrors, &networkingapi.HTTPMirrorPolicy{Destination: hr.Mirror, Percentage: hr.MirrorPercentage})
		}
		for j, m := range mirrors {
			b, err := c.istioDestination(fmt.Sprintf("%s.mirrors[%d].destination", path, j), m.Destination, ns)
			if err != nil {
				return nil, err
			}
			pct := 100.0
			if m.Percentage != nil {
				pct = m.Percentage.Value
			}
			rule.Mirrors = append(rule.Mirrors, model.Mirror{Backend: b, Percent: pct})
		}
		if len(rule.Backends) == 0 && rule.Redirect == nil {
			return nil, fieldErr(path+".route", errors.New("a route or a redirect is required"))
		}
		route.Rules = append(route.Rules, rule)
	}
	return route, nil
}

func percent(p *networkingapi.Percent) float64 {
	if p != nil {
		return p.Value
	}
	return 100
}

var grpcCodes = map[string]int{"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
	"NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
	"ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
	"UNAUTHENTICATED": 16}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (c *Compiler) istioDestination(path string, d *networkingapi.Destination, ns string) (model.Backend, error) {
	if d == nil || d.Host == "" {
		return model.Backend{}, fieldErr(path+".host", errors.New("required"))
	}
	b := model.Backend{Host: c.istioHost(d.Host, ns), Namespace: ns, Subset: d.Subset, Weight: 1}
	if d.Port != nil {
		if d.Port.Number == 0 || d.Port.Number > 65535 {
			return b, fieldErr(path+".port.number", fmt.Errorf("%d out of range", d.Port.Number))
		}
		b.Port = uint16(d.Port.Number)
	}
	return b, nil
}

func (c *Compiler) destinationRule(ns, name string, spec *networkingapi.DestinationRule) (*model.Destination, error) {
	if spec.Host == "" {
		return nil, errors.New("spec.host: required")
	}
	d := &model.Destination{Namespace: ns, Name: name, Host: c.istioHost(spec.Host, ns), Subsets: map[string]model.Subset{}}
	var err error
	if spec.TrafficPolicy != nil {
		if d.Policy, err = trafficPolicy("spec.trafficPolicy", spec.TrafficPolicy); err != nil {
			return nil, err
		}
	}
	for i, s := range spec.Subsets {
		p := fmt.Sprintf("spec.subsets[%d]", i)
		if s.Name == "" {
			return nil, fieldErr(p+".name", errors.New("required"))
		}
		if err := resource.ValidateLabels(s.Labels, "spec", "subsets", strconv.Itoa(i), "labels"); err != nil {
			return nil, err
		}
		sub := model.Subset{Labels: s.Labels}
		if s.TrafficPolicy != nil {
			tp, err := trafficPolicy(p+".trafficPolicy", s.TrafficPolicy)
			if err != nil {
				return nil, err
			}
			sub.Policy = &tp
		}
		d.Subsets[s.Name] = sub
	}
	return d, nil
}

func trafficPolicy(path string, tp *networkingapi.TrafficPolicy) (model.TrafficPolicy, error) {
	var out model.TrafficPolicy
	var err error
	if lb := tp.LoadBalancer; lb != nil {
		if ch := lb.GetConsistentHash(); ch != nil {
			out.LB.Kind = model.LBConsistentHash
			switch {
			case ch.GetHttpHeaderName() != "":
				out.LB.HashHeader = ch.GetHttpHeaderName()
			case ch.GetHttpCookie() != nil:
				out.LB.HashCookie = ch.GetHttpCookie().GetName()
				if out.LB.HashCookie == "" {
					return out, fieldErr(path+".loadBalancer.consistentHash.httpCookie.name", errors.New("required"))
				}
				if out.LB.HashCookieTTL, err = pbDuration(path+".loadBalancer.consistentHash.httpCookie.ttl", ch.GetHttpCookie().GetTtl()); err != nil {
					return out, err
				}
			case ch.GetUseSourceIp():
				out.LB.HashSourceIP = true
			case ch.GetHttpQueryParameterName() != "":
				out.LB.HashQuery = ch.GetHttpQueryParameterName()
			default:
				return out, fieldErr(path+".loadBalancer.consistentHash", errors.New("a hash key is required"))
			}
		} else {
			switch lb.GetSimple() {
			case networkingapi.LoadBalancerSettings_UNSPECIFIED, networkingapi.LoadBalancerSettings_LEAST_REQUEST:
				out.LB.Kind = model.LBLeastRequest
			case networkingapi.LoadBalancerSettings_ROUND_ROBIN:
				out.LB.Kind = model.LBRoundRobin
			case networkingapi.LoadBalancerSettings_RANDOM:
				out.LB.Kind = model.LBRandom
			default:
				return out, fieldErr(path+".loadBalancer.simple", fmt.Errorf("unsupported %s", lb.GetSimple()))
			}
		}
	} else {
		out.LB.Kind = model.LBLeastRequest // Istio's default
	}
	if cp := tp.ConnectionPool; cp != nil {
		if t := cp.Tcp; t != nil {
			out.Pool.MaxConnections = int(t.MaxConnections)
			if out.Pool.ConnectTimeout, err = pbDuration(path+".connectionPool.tcp.connectTimeout", t.ConnectTimeout); err != nil {
				return out, err
			}
		}
		if h := cp.Http; h != nil {
			out.Pool.MaxPending = int(h.Http1MaxPendingRequests)
			out.Pool.MaxRequests = int(h.Http2MaxRequests)
			out.Pool.MaxRequestsPerConn = int(h.MaxRequestsPerConnection)
			out.Pool.MaxRetries = int(h.MaxRetries)
			if out.Pool.IdleTimeout, err = pbDuration(path+".connectionPool.http.idleTimeout", h.IdleTimeout); err != nil {
				return out, err
			}
		}
		if out.Pool.MaxConnections < 0 || out.Pool.MaxPending < 0 || out.Pool.MaxRequests < 0 || out.Pool.MaxRequestsPerConn < 0 {
			return out, fieldErr(path+".connectionPool", errors.New("limits must not be negative"))
		}
	}
	if od := tp.OutlierDetection; od != nil {
		o := &model.Outlier{Consecutive5xx: 5, Interval: 10 * time.Second, BaseEjection: 30 * time.Second, MaxEjectionPercent: 10}
		if v := od.GetConsecutive_5XxErrors(); v != nil {
			o.Consecutive5xx = int(v.Value)
		}
		if v := od.GetConsecutiveGatewayErrors(); v != nil {
			o.ConsecutiveGateway = int(v.Value)
		}
		if od.Interval != nil {
			if o.Interval, err = pbDuration(path+".outlierDetection.interval", od.Interval); err != nil {
				return out, err
			}
		}
		if od.BaseEjectionTime != nil {
			if o.BaseEjection, err = pbDuration(path+".outlierDetection.baseEjectionTime", od.BaseEjectionTime); err != nil {
				return out, err
			}
		}
		if od.MaxEjectionPercent != 0 {
			o.MaxEjectionPercent = int(od.MaxEjectionPercent)
		}
		if o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100 {
			return out, fieldErr(path+".outlierDetection.maxEjectionPercent", errors.New("must be 0-100"))
		}
		out.Outlier = o
	}
	return out, nil
}

// targetRefs converts Istio policy targetRefs (or the single targetRef).
func targetRefs(path string, one *typeapi.PolicyTargetReference, many []*typeapi.PolicyTargetReference, ns string) ([]model.TargetRef, error) {
	if one != nil {
		many = append([]*typeapi.PolicyTargetReference{one}, many...)
	}
	var out []model.TargetRef
	for i, r := range many {
		p := fmt.Sprintf("%s[%d]", path, i)
		t := model.TargetRef{Group: r.Group, Kind: r.Kind, Name: r.Name, Namespace: cmp.Or(r.Namespace, ns)}
		if t.Namespace != ns {
			return nil, fieldErr(p+".namespace", errors.New("cross-namespace targets are not allowed"))
		}
		switch {
		case t.Kind == model.KindGateway && t.Group == gwv1.GroupName:
		case t.Kind == model.KindGatewayClass && t.Group == gwv1.GroupName:
		case t.Kind == model.KindService && (t.Group == "" || t.Group == "core"):
			t.Group = ""
		case t.Kind == model.KindServiceEntry && t.Group == "networking.istio.io":
		default:
			return nil, fieldErr(p+".kind", fmt.Errorf("unsupported target %s/%s (Gateway, GatewayClass, Service or ServiceEntry)", t.Group, t.Kind))
		}
		if t.Name == "" {
			return nil, fieldErr(p+".name", errors.New("required"))
		}
		out = append(out, t)
	}
	return out, nil
}

func (c *Compiler) authorizationPolicy(ns, name string, spec *securityapi.AuthorizationPolicy) (*model.AuthzPolicy, error) {
	p := &model.AuthzPolicy{Namespace: ns, Name: name}
	var err error
	if p.Targets, err = targetRefs("spec.targetRefs", spec.TargetRef, spec.TargetRefs, ns); err != nil {
		return nil, err
	}
	switch spec.Action {
	case securityapi.AuthorizationPolicy_ALLOW:
		p.Action = model.ActionAllow
	case securityapi.AuthorizationPolicy_DENY:
		p.Action = model.ActionDeny
	case securityapi.AuthorizationPolicy_AUDIT:
		p.Action = model.ActionAudit
	default:
		return nil, fieldErr("spec.action", fmt.Errorf("%s is not supported by the Ambit waypoint", spec.Action))
	}
	for i, r := range spec.Rules {
		path := fmt.Sprintf("spec.rules[%d]", i)
		var rule model.AuthzRule
		for j, f := range r.From {
			s := f.GetSource()
			if s == nil {
				return nil, fieldErr(fmt.Sprintf("%s.from[%d].source", path, j), errors.New("required"))
			}
			src := model.Source{Principals: s.Principals, NotPrincipals: s.NotPrincipals, RequestPrincipals: s.RequestPrincipals,
				NotRequestPrincipals: s.NotRequestPrincipals, Namespaces: s.Namespaces, NotNamespaces: s.NotNamespaces}
			for _, pair := range []struct {
				name string
				in   []string
				out  *[]netip.Prefix
			}{{"ipBlocks", s.IpBlocks, &src.IPBlocks}, {"notIpBlocks", s.NotIpBlocks, &src.NotIPBlocks},
				{"remoteIpBlocks", s.RemoteIpBlocks, &src.RemoteIPBlocks}, {"notRemoteIpBlocks", s.NotRemoteIpBlocks, &src.NotRemoteIPBlocks}} {
				for k, v := range pair.in {
					pf, err := parseBlock(v)
					if err != nil {
						return nil, fieldErr(fmt.Sprintf("%s.from[%d].source.%s[%d]", path, j, pair.name, k), err)
					}
					*pair.out = append(*pair.out, pf)
				}
			}
			rule.From = append(rule.From, src)
		}
		for j, t := range r.To {
			o := t.GetOperation()
			if o == nil {
				return nil, fieldErr(fmt.Sprintf("%s.to[%d].operation", path, j), errors.New("required"))
			}
			op := model.Operation{Hosts: o.Hosts, NotHosts: o.NotHosts, Methods: o.Methods, NotMethods: o.NotMethods,
				Paths: o.Paths, NotPaths: o.NotPaths}
			for k, pth := range append(append([]string{}, o.Paths...), o.NotPaths...) {
				if err := policy.ValidatePath(pth); err != nil {
					return nil, fieldErr(fmt.Sprintf("%s.to[%d].operation.paths[%d]", path, j, k), err)
				}
			}
			for _, pair := range []struct {
				name string
				in   []string
				out  *[]uint16
			}{{"ports", o.Ports, &op.Ports}, {"notPorts", o.NotPorts, &op.NotPorts}} {
				for k, v := range pair.in {
					n, err := strconv.ParseUint(v, 10, 16)
					if err != nil || n == 0 {
						return nil, fieldErr(fmt.Sprintf("%s.to[%d].operation.%s[%d]", path, j, pair.name, k), fmt.Errorf("invalid port %q", v))
					}
					*pair.out = append(*pair.out, uint16(n))
				}
			}
			rule.To = append(rule.To, op)
		}
		for j, w := range r.When {
			if err := policy.ValidateCondition(w.Key); err != nil {
				return nil, fieldErr(fmt.Sprintf("%s.when[%d].key", path, j), err)
			}
			if len(w.Values) == 0 && len(w.NotValues) == 0 {
				return nil, fieldErr(fmt.Sprintf("%s.when[%d]", path, j), errors.New("values or notValues is required"))
			}
			rule.When = append(rule.When, model.Condition{Key: w.Key, Values: w.Values, NotValues: w.NotValues})
		}
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

func parseBlock(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", v)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid IP %q", v)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// requestAuthentication compiles a RequestAuthentication with targetRefs.
func (c *Compiler) requestAuthentication(ra *securityv1.RequestAuthentication) (*model.JWTPolicy, error) {
	p := &model.JWTPolicy{Namespace: ra.Namespace, Name: ra.Name}
	var err error
	if p.Targets, err = targetRefs("spec.targetRefs", ra.Spec.TargetRef, ra.Spec.TargetRefs, ra.Namespace); err != nil {
		return nil, err
	}
	for i, r := range ra.Spec.JwtRules {
		path := fmt.Sprintf("spec.jwtRules[%d]", i)
		rule := model.JWTRule{Issuer: r.Issuer, Audiences: r.Audiences, JWKS: r.Jwks, JWKSURI: r.JwksUri,
			FromParams: r.FromParams, ForwardOriginalToken: r.ForwardOriginalToken}
		if rule.Issuer == "" {
			return nil, fieldErr(path+".issuer", errors.New("required"))
		}
		switch {
		case rule.JWKS != "" && rule.JWKSURI != "":
			return nil, fieldErr(path+".jwks", errors.New("only one of jwks and jwksUri may be set"))
		case rule.JWKS == "" && rule.JWKSURI == "":
			return nil, fieldErr(path+".jwksUri", errors.New("one of jwks and jwksUri is required"))
		case rule.JWKSURI != "" && !strings.HasPrefix(rule.JWKSURI, "http://") && !strings.HasPrefix(rule.JWKSURI, "https://") &&
			!strings.HasPrefix(rule.JWKSURI, "file://"):
			return nil, fieldErr(path+".jwksUri", fmt.Errorf("%q: scheme must be http, https or file", rule.JWKSURI))
		}
		for j, h := range r.FromHeaders {
			if err := validHeaderName(fmt.Sprintf("%s.fromHeaders[%d].name", path, j), h.Name); err != nil {
				return nil, err
			}
			rule.FromHeaders = append(rule.FromHeaders, model.JWTHeader{Name: h.Name, Prefix: h.Prefix})
		}
		for j, h := range r.OutputClaimToHeaders {
			if err := validHeaderName(fmt.Sprintf("%s.outputClaimToHeaders[%d].header", path, j), h.Header); err != nil {
				return nil, err
			}
			rule.ClaimHeaders = append(rule.ClaimHeaders, model.Header{Name: h.Header, Value: h.Claim})
		}
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

func rateLimit(rl *resource.LocalRateLimitPolicy) (*model.RateLimit, error) {
	p := &model.RateLimit{Namespace: rl.Namespace, Name: rl.Name}
	if len(rl.Spec.TargetRefs) == 0 {
		return nil, errors.New("spec.targetRefs: at least one target is required")
	}
	for i, t := range rl.Spec.TargetRefs {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		tr := model.TargetRef{Group: string(t.Group), Kind: string(t.Kind), Name: string(t.Name), Namespace: rl.Namespace}
		switch {
		case tr.Kind == model.KindService && (tr.Group == "" || tr.Group == "core"):
			tr.Group = ""
		case tr.Kind == model.KindServiceEntry && tr.Group == "networking.istio.io":
		case (tr.Kind == model.KindGateway || tr.Kind == model.KindHTTPRoute || tr.Kind == model.KindGRPCRoute) && tr.Group == gwv1.GroupName:
		default:
			return nil, fieldErr(path+".kind", fmt.Errorf("unsupported target %s/%s", tr.Group, tr.Kind))
		}
		if tr.Name == "" {
			return nil, fieldErr(path+".name", errors.New("required"))
		}
		p.Targets = append(p.Targets, tr)
	}
	tb := rl.Spec.TokenBucket
	if tb.MaxTokens <= 0 {
		return nil, errors.New("spec.tokenBucket.maxTokens: must be positive")
	}
	p.MaxTokens, p.TokensPerFill = tb.MaxTokens, tb.MaxTokens
	if tb.TokensPerFill != nil {
		if *tb.TokensPerFill <= 0 {
			return nil, errors.New("spec.tokenBucket.tokensPerFill: must be positive")
		}
		p.TokensPerFill = *tb.TokensPerFill
	}
	d, err := time.ParseDuration(tb.FillInterval)
	if err != nil || d < 10*time.Millisecond {
		return nil, fmt.Errorf("spec.tokenBucket.fillInterval: %q must be a duration of at least 10ms", tb.FillInterval)
	}
	p.FillInterval = d
	if p.MaxTokens > math.MaxInt32 {
		return nil, errors.New("spec.tokenBucket.maxTokens: too large")
	}
	return p, nil
}
