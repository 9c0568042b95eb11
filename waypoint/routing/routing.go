package routing

import (
	"cmp"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

// Target is the destination a request was sent to through the waypoint.
type Target struct {
	// Host and Namespace identify the Service or ServiceEntry (FQDN); empty for workload-addressed
	// traffic with no service.
	Host, Namespace, Name string
	Port                  uint16
	// Waypoint is the waypoint Gateway ("namespace/name") routes may also attach to.
	WaypointNamespace, WaypointName string
}

// Request is the part of an HTTP request routing looks at.
type Request struct {
	Method string
	Path   string // without the query
	Query  url.Values
	Header http.Header
}

// Selected is a routing decision.
type Selected struct {
	Route *model.Route
	Rule  *model.Rule
	Match *model.Match // nil when the rule has no matches
}

type entry struct {
	route *model.Route
	rule  *model.Rule
	match *model.Match
	order int
}

// Table is the ordered rule list of one Target. Build it once per configuration and target.
type Table struct {
	entries []entry
}

// Build returns the table of routes in cfg attached to t. Gateway API routes take precedence over
// VirtualServices (mixing both is undefined in Istio; Ambit uses the Gateway API routes).
func Build(cfg *model.Config, t Target) *Table {
	var gw, vs []entry
	n := 0
	for _, r := range cfg.Routes {
		if !attached(r, t) {
			continue
		}
		for _, rule := range r.Rules {
			if len(rule.Matches) == 0 {
				e := entry{route: r, rule: rule, order: n}
				n++
				if r.Kind == model.KindVirtual {
					vs = append(vs, e)
				} else {
					gw = append(gw, e)
				}
				continue
			}
			for i := range rule.Matches {
				e := entry{route: r, rule: rule, match: &rule.Matches[i], order: n}
				n++
				if r.Kind == model.KindVirtual {
					vs = append(vs, e)
				} else {
					gw = append(gw, e)
				}
			}
		}
	}
	if len(gw) > 0 {
		slices.SortStableFunc(gw, precedence)
		return &Table{entries: gw}
	}
	return &Table{entries: vs} // VirtualService: first match in order
}

// Empty reports whether no route attaches to the target.
func (t *Table) Empty() bool { return len(t.entries) == 0 }

func attached(r *model.Route, t Target) bool {
	for _, p := range r.Parents {
		if p.Port != 0 && p.Port != t.Port {
			continue
		}
		switch p.Kind {
		case model.KindService, model.KindServiceEntry:
			if t.Host != "" && p.Hostname == t.Host {
				return true
			}
		case model.KindGateway:
			if p.Namespace == t.WaypointNamespace && p.Name == t.WaypointName {
				return true
			}
		}
	}
	return false
}

// precedence orders Gateway API matches as Istio does: exact path, then prefix (longest first), then
// regular expression, then rules without matches; ties by method, more headers, more query
// parameters, then input order.
func precedence(a, b entry) int {
	ka, kb := key(a.match), key(b.match)
	if c := cmp.Compare(ka.pathRank, kb.pathRank); c != 0 {
		return -c
	}
	if c := cmp.Compare(ka.pathLen, kb.pathLen); c != 0 {
		return -c
	}
	if c := cmp.Compare(ka.method, kb.method); c != 0 {
		return -c
	}
	if c := cmp.Compare(ka.headers, kb.headers); c != 0 {
		return -c
	}
	if c := cmp.Compare(ka.query, kb.query); c != 0 {
		return -c
	}
	return cmp.Compare(a.order, b.order)
}

type rank struct{ pathRank, pathLen, method, headers, query int }

func key(m *model.Match) rank {
	if m == nil {
		return rank{} // a rule without matches comes last, as in Istio
	}
	r := rank{headers: len(m.Headers), query: len(m.Query)}
	switch m.PathKind {
	case model.PathExact:
		r.pathRank = 3
	case model.PathPrefix, model.PathStringPrefix:
		r.pathRank = 2
	case model.PathRegex:
		r.pathRank = 1
	}
	r.pathLen = len(m.Path)
	if m.Method != "" {
		r.method = 1
	}
	return r
}

// Select returns the first rule whose match matches req.
func (t *Table) Select(req *Request) (Selected, bool) {
	for _, e := range t.entries {
		if e.match == nil || Matches(e.match, req) {
			return Selected{Route: e.route, Rule: e.rule, Match: e.match}, true
		}
	}
	return Selected{}, false
}

// Matches reports whether m matches req.
func Matches(m *model.Match, req *Request) bool {
	if !MatchPath(m, req.Path) {
		return false
	}
	if m.Method != "" && m.Method != req.Method {
		return false
	}
	for i := range m.Headers {
		h := &m.Headers[i]
		vals := req.Header.Values(h.Name)
		if matchValues(h, vals) == h.Invert {
			return false
		}
	}
	for i := range m.Query {
		q := &m.Query[i]
		vals := req.Query[q.Name]
		if len(vals) > 1 {
			vals = vals[:1] // Gateway API: the first value
		}
		if matchValues(q, vals) == q.Invert {
			return false
		}
	}
	return true
}

func matchValues(m *model.ValueMatch, vals []string) bool {
	if m.Kind == model.StringPresent {
		return len(vals) > 0
	}
	if len(vals) == 0 {
		return false
	}
	v := strings.Join(vals, ",")
	switch m.Kind {
	case model.StringExact:
		return v == m.Value
	case model.StringPrefix:
		return strings.HasPrefix(v, m.Value)
	case model.StringRegex:
		return m.RE != nil && m.RE.MatchString(v)
	}
	return false
}

// MatchPath matches the path part of m.
func MatchPath(m *model.Match, path string) bool {
	switch m.PathKind {
	case model.PathExact:
		return path == m.Path
	case model.PathRegex:
		return m.PathRE != nil && m.PathRE.MatchString(path)
	case model.PathStringPrefix:
		return strings.HasPrefix(path, m.Path)
	}
	return PrefixMatches(m.Path, path)
}

// PrefixMatches implements Gateway API PathPrefix: element-wise, a trailing "/" in the prefix ignored,
// so "/foo" matches "/foo", "/foo/" and "/foo/bar" but not "/foobar".
func PrefixMatches(prefix, path string) bool {
	p := strings.TrimSuffix(prefix, "/")
	if p == "" {
		return true
	}
	if !strings.HasPrefix(path, p) {
		return false
	}
	return len(path) == len(p) || path[len(p)] == '/'
}

// PickBackend chooses a backend by weight with n uniform in [0, total weight); ok is false when every
// weight is zero (Gateway API answers 500 then).
func PickBackend(bs []model.Backend, n func(total uint64) uint64) (*model.Backend, bool) {
	var total uint64
	for i := range bs {
		if bs[i].Weight > 0 {
			total += uint64(bs[i].Weight)
		}
	}
	if total == 0 {
		return nil, false
	}
	x := n(total)
	for i := range bs {
		if bs[i].Weight <= 0 {
			continue
		}
		if x < uint64(bs[i].Weight) {
			return &bs[i], true
		}
		x -= uint64(bs[i].Weight)
	}
	return nil, false
}

// RewritePath applies a rewrite or redirect path modifier: the full path, or the matched prefix
// replaced (Gateway API ReplacePrefixMatch semantics; for an Istio string prefix, Envoy's prefix_rewrite:
// the matched characters replaced).
func RewritePath(path string, mod model.PathModifier, m *model.Match) string {
	if mod.FullPath != "" {
		return mod.FullPath
	}
	if mod.PrefixSet && m != nil && m.PathKind == model.PathStringPrefix && strings.HasPrefix(path, m.Path) {
		return mod.Prefix + path[len(m.Path):]
	}
	if !mod.PrefixSet || m == nil || m.PathKind != model.PathPrefix {
		return path
	}
	prefix := mod.Prefix
	matched := strings.TrimSuffix(m.Path, "/")
	rest := strings.TrimPrefix(path, matched)
	np := strings.TrimSuffix(prefix, "/")
	if rest == "" || rest == "/" {
		if np == "" {
			return "/"
		}
		return np + rest
	}
	return np + rest
}
