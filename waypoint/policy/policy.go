package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

// Claims are the verified JWT of a request (RequestAuthentication).
type Claims struct {
	// Principal is "<iss>/<sub>".
	Principal string
	Audiences []string
	Presenter string
	Raw       map[string]any
}

// Request is what an L7 policy is evaluated against.
type Request struct {
	// Principal is the peer identity without "spiffe://", Namespace its namespace; empty for plaintext.
	Principal string
	Namespace string
	// SourceIP is the peer's address; RemoteIP the original client (X-Forwarded-For), else SourceIP.
	SourceIP netip.Addr
	RemoteIP netip.Addr
	Host     string
	Port     uint16
	Method   string
	// Path is the URL path without the query.
	Path   string
	Header http.Header
	Auth   *Claims

	tcp bool // set by EvaluateTCP
}

// Decision is the outcome of Evaluate.
type Decision struct {
	Allow bool
	// Policy decided: the matching DENY or ALLOW; nil when none did.
	Policy *model.AuthzPolicy
}

// Reason explains d for logs.
func (d Decision) Reason() string {
	switch {
	case !d.Allow && d.Policy != nil:
		return "denied by " + d.Policy.Key()
	case !d.Allow:
		return "allow policies exist, but none allowed"
	case d.Policy != nil:
		return "allowed by " + d.Policy.Key()
	}
	return "no allow policies"
}

// Evaluate applies policies (those that target the request's destination) in Istio's order: a matching
// DENY denies; else, with no ALLOW policy the request is allowed; else a matching ALLOW allows and
// anything else is denied. AUDIT and dry-run policies never decide.
func Evaluate(policies []*model.AuthzPolicy, r *Request) Decision {
	for _, p := range policies {
		if p.Action == model.ActionDeny && !p.DryRun && matchesPolicy(p, r) {
			return Decision{Allow: false, Policy: p}
		}
	}
	anyAllow := false
	for _, p := range policies {
		if p.Action != model.ActionAllow || p.DryRun {
			continue
		}
		anyAllow = true
		if matchesPolicy(p, r) {
			return Decision{Allow: true, Policy: p}
		}
	}
	return Decision{Allow: !anyAllow}
}

// EvaluateTCP is Evaluate for a TCP stream (no HTTP request): as Istio builds TCP filters, a rule with
// HTTP-only fields (hosts, methods, paths, request principals, request header or claim conditions)
// never matches in an ALLOW policy, and those fields are ignored in a DENY policy (which then matches
// more, the safe direction).
func EvaluateTCP(policies []*model.AuthzPolicy, r *Request) Decision {
	rr := *r
	rr.tcp = true
	return Evaluate(policies, &rr)
}

func httpOnlyOperation(o *model.Operation) bool {
	return len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0
}

func httpOnlyKey(k string) bool { return strings.HasPrefix(k, "request.") }

func httpOnlySource(s *model.Source) bool {
	return len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0
}

func matchesPolicy(p *model.AuthzPolicy, r *Request) bool {
	for i := range p.Rules {
		if r.tcp && p.Action == model.ActionAllow && ruleHasHTTP(&p.Rules[i]) {
			continue
		}
		if matchesRule(&p.Rules[i], r) {
			return true
		}
	}
	return false
}

func ruleHasHTTP(rule *model.AuthzRule) bool {
	for i := range rule.To {
		if httpOnlyOperation(&rule.To[i]) {
			return true
		}
	}
	for i := range rule.From {
		if httpOnlySource(&rule.From[i]) {
			return true
		}
	}
	for i := range rule.When {
		if httpOnlyKey(rule.When[i].Key) {
			return true
		}
	}
	return false
}

func matchesRule(rule *model.AuthzRule, r *Request) bool {
	if len(rule.From) > 0 {
		ok := false
		for i := range rule.From {
			if matchesSource(&rule.From[i], r) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(rule.To) > 0 {
		ok := false
		for i := range rule.To {
			if matchesOperation(&rule.To[i], r) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range rule.When {
		if r.tcp && httpOnlyKey(rule.When[i].Key) {
			continue // only reached for DENY: ignored
		}
		if !matchesCondition(&rule.When[i], r) {
			return false
		}
	}
	return true
}

// field checks one positive/negative pair: positives (when present) must match, negatives must not.
func field(pos, neg []string, match func(string) bool) bool {
	if len(pos) > 0 && !anyOf(pos, match) {
		return false
	}
	return len(neg) == 0 || !anyOf(neg, match)
}

func anyOf(vals []string, match func(string) bool) bool {
	for _, v := range vals {
		if match(v) {
			return true
		}
	}
	return false
}

func prefixes(pos, neg []netip.Prefix, ip netip.Addr) bool {
	in := func(ps []netip.Prefix) bool {
		for _, p := range ps {
			if ip.IsValid() && p.Contains(ip.Unmap()) {
				return true
			}
		}
		return false
	}
	if len(pos) > 0 && !in(pos) {
		return false
	}
	return len(neg) == 0 || !in(neg)
}

func matchesSource(s *model.Source, r *Request) bool {
	str := func(v string) func(string) bool { return func(p string) bool { return MatchString(p, v) } }
	reqPrincipal := ""
	if r.Auth != nil {
		reqPrincipal = r.Auth.Principal
	}
	remote := r.RemoteIP
	if !remote.IsValid() {
		remote = r.SourceIP
	}
	return field(s.Principals, s.NotPrincipals, str(r.Principal)) &&
		field(s.Namespaces, s.NotNamespaces, str(r.Namespace)) &&
		(r.tcp || field(s.RequestPrincipals, s.NotRequestPrincipals, str(reqPrincipal))) &&
		prefixes(s.IPBlocks, s.NotIPBlocks, r.SourceIP) &&
		prefixes(s.RemoteIPBlocks, s.NotRemoteIPBlocks, remote)
}

func matchesOperation(o *model.Operation, r *Request) bool {
	host := func(p string) bool { return matchHost(p, r.Host) }
	port := func(ps []uint16) bool {
		for _, p := range ps {
			if p == r.Port {
				return true
			}
		}
		return false
	}
	if len(o.Ports) > 0 && !port(o.Ports) || len(o.NotPorts) > 0 && port(o.NotPorts) {
		return false
	}
	if r.tcp {
		return true // HTTP fields ignored (only reached for DENY)
	}
	return field(o.Hosts, o.NotHosts, host) &&
		field(o.Methods, o.NotMethods, func(p string) bool { return MatchString(p, r.Method) }) &&
		field(o.Paths, o.NotPaths, func(p string) bool { return MatchPath(p, r.Path) })
}

// matchHost compares hosts case-insensitively, with Istio's wildcards, ignoring a port on the request
// host when the pattern has none.
func matchHost(pattern, host string) bool {
	pattern, host = strings.ToLower(pattern), strings.ToLower(host)
	if MatchString(pattern, host) {
		return true
	}
	if h, _, ok := strings.Cut(host, ":"); ok && !strings.Contains(pattern, ":") {
		return MatchString(pattern, h)
	}
	return false
}

// ConditionKeys are the `when` keys Ambit evaluates; others are rejected at compile time.
var ConditionKeys = []string{"request.headers[", "source.ip", "remote.ip", "source.namespace", "source.principal",
	"request.auth.principal", "request.auth.audiences", "request.auth.presenter", "request.auth.claims[",
	"destination.port", "destination.ip"}

// ValidateCondition reports whether key is a supported `when` key.
func ValidateCondition(key string) error {
	for _, k := range ConditionKeys {
		if key == k || strings.HasSuffix(k, "[") && strings.HasPrefix(key, k) && strings.HasSuffix(key, "]") && len(key) > len(k)+1 {
			return nil
		}
	}
	return fmt.Errorf("unsupported condition key %q", key)
}

func matchesCondition(c *model.Condition, r *Request) bool {
	vals := conditionValues(c.Key, r)
	match := func(p string) bool {
		for _, v := range vals {
			if matchConditionValue(c.Key, p, v) {
				return true
			}
		}
		return false
	}
	return field(c.Values, c.NotValues, match)
}

func matchConditionValue(key, pattern, v string) bool {
	if key == "source.ip" || key == "remote.ip" || key == "destination.ip" {
		ip, err := netip.ParseAddr(v)
		if err != nil {
			return false
		}
		if p, err := netip.ParsePrefix(pattern); err == nil {
			return p.Contains(ip)
		}
		if a, err := netip.ParseAddr(pattern); err == nil {
			return a == ip
		}
		return false
	}
	return MatchString(pattern, v)
}

// conditionValues returns the request values a `when` key refers to (several for list claims).
func conditionValues(key string, r *Request) []string {
	one := func(s string) []string {
		if s == "" {
			return nil
		}
		return []string{s}
	}
	switch key {
	case "source.ip":
		if r.SourceIP.IsValid() {
			return []string{r.SourceIP.String()}
		}
		return nil
	case "remote.ip":
		if r.RemoteIP.IsValid() {
			return []string{r.RemoteIP.String()}
		}
		if r.SourceIP.IsValid() {
			return []string{r.SourceIP.String()}
		}
		return nil
	case "source.namespace":
		return one(r.Namespace)
	case "source.principal":
		return one(r.Principal)
	case "destination.port":
		return []string{strconv.Itoa(int(r.Port))}
	}
	if r.Auth != nil {
		switch key {
		case "request.auth.principal":
			return one(r.Auth.Principal)
		case "request.auth.audiences":
			return r.Auth.Audiences
		case "request.auth.presenter":
			return one(r.Auth.Presenter)
		}
	}
	if name, ok := bracket(key, "request.headers"); ok {
		return r.Header.Values(name)
	}
	if path, ok := claimPath(key); ok {
		if r.Auth == nil {
			return nil
		}
		return ClaimValues(r.Auth.Raw, path)
	}
	return nil
}

func bracket(key, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(key, prefix+"[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return "", false
	}
	return rest[:len(rest)-1], true
}

// claimPath splits "request.auth.claims[a][b]" into ["a","b"].
func claimPath(key string) ([]string, bool) {
	rest, ok := strings.CutPrefix(key, "request.auth.claims")
	if !ok || rest == "" {
		return nil, false
	}
	var out []string
	for rest != "" {
		if rest[0] != '[' {
			return nil, false
		}
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return nil, false
		}
		out = append(out, rest[1:end])
		rest = rest[end+1:]
	}
	return out, true
}

// ClaimValues returns the string values of the claim at path: a string, the elements of a string
// list, a space-delimited string's words for list-like claims (scope), or formatted numbers and booleans.
func ClaimValues(claims map[string]any, path []string) []string {
	var cur any = claims
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	switch v := cur.(type) {
	case string:
		if len(path) == 1 && (path[0] == "scope" || path[0] == "permission") {
			return strings.Fields(v)
		}
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case bool:
		return []string{strconv.FormatBool(v)}
	case float64:
		return []string{strconv.FormatFloat(v, 'f', -1, 64)}
	}
	return nil
}
