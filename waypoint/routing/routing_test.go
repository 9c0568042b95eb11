package routing

import (
	"net/http"
	"net/url"
	"regexp"
	"testing"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

func TestPrefixMatches(t *testing.T) {
	tests := []struct {
		prefix, path string
		want         bool
	}{
		{"/", "/anything", true},
		{"/foo", "/foo", true},
		{"/foo", "/foo/", true},
		{"/foo", "/foo/bar", true},
		{"/foo", "/foobar", false},
		{"/foo/", "/foo", true},
		{"/foo/", "/foo/bar", true},
	}
	for _, tc := range tests {
		t.Run(tc.prefix+" "+tc.path, func(t *testing.T) {
			if got := PrefixMatches(tc.prefix, tc.path); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func route(name string, kind string, rules ...*model.Rule) *model.Route {
	return &model.Route{Kind: kind, Namespace: "app", Name: name, Rules: rules,
		Parents: []model.Parent{{Kind: model.KindService, Hostname: "web.app.svc.cluster.local"}}}
}

func TestSelectPrecedence(t *testing.T) {
	exact := &model.Rule{Name: "exact", Matches: []model.Match{{PathKind: model.PathExact, Path: "/a/b"}}}
	long := &model.Rule{Name: "long", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/a/b"}}}
	short := &model.Rule{Name: "short", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/a"}}}
	method := &model.Rule{Name: "method", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/a", Method: "POST"}}}
	header := &model.Rule{Name: "header", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/a",
		Headers: []model.ValueMatch{{Name: "x-v", Value: "2"}}}}}
	query := &model.Rule{Name: "query", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/a",
		Query: []model.ValueMatch{{Name: "q", Kind: model.StringRegex, RE: regexp.MustCompile("^[0-9]+$")}}}}}
	regex := &model.Rule{Name: "regex", Matches: []model.Match{{PathKind: model.PathRegex, PathRE: regexp.MustCompile("^/r/[0-9]+$")}}}
	catchAll := &model.Rule{Name: "all"}
	cfg := &model.Config{Routes: []*model.Route{
		route("r1", model.KindHTTPRoute, catchAll, short, regex, query),
		route("r2", model.KindHTTPRoute, header, method, long, exact),
		route("vs", model.KindVirtual, &model.Rule{Name: "vs"}),
		{Kind: model.KindHTTPRoute, Namespace: "app", Name: "other", Rules: []*model.Rule{{Name: "other"}},
			Parents: []model.Parent{{Kind: model.KindService, Hostname: "other.app.svc.cluster.local"}}},
	}}
	tb := Build(cfg, Target{Host: "web.app.svc.cluster.local", Port: 80})
	tests := []struct {
		name   string
		method string
		path   string
		query  string
		header http.Header
		want   string
	}{
		{"exact beats prefix", "GET", "/a/b", "", nil, "exact"},
		{"longest prefix", "GET", "/a/b/c", "", nil, "long"},
		{"method beats headers", "POST", "/a/x", "", http.Header{"X-V": {"2"}}, "method"},
		{"headers beat query", "GET", "/a/x", "q=1", http.Header{"X-V": {"2"}}, "header"},
		{"query beats plain prefix", "GET", "/a/x", "q=1", nil, "query"},
		{"query regex miss", "GET", "/a/x", "q=x", nil, "short"},
		{"regex after prefixes", "GET", "/r/12", "", nil, "regex"},
		{"rule without matches last", "GET", "/zzz", "", nil, "all"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			h := tc.header
			if h == nil {
				h = http.Header{}
			}
			sel, ok := tb.Select(&Request{Method: tc.method, Path: tc.path, Query: q, Header: h})
			if !ok || sel.Rule.Name != tc.want {
				name := ""
				if ok {
					name = sel.Rule.Name
				}
				t.Errorf("selected %q, want %q", name, tc.want)
			}
		})
	}
	if vs := Build(&model.Config{Routes: cfg.Routes[2:3]}, Target{Host: "web.app.svc.cluster.local"}); vs.Empty() {
		t.Error("VirtualService alone not used")
	}
	if tb := Build(cfg, Target{Host: "none"}); !tb.Empty() {
		t.Error("routes attached to another host")
	}
	gw := Build(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Rules: []*model.Rule{{}},
		Parents: []model.Parent{{Kind: model.KindGateway, Namespace: "app", Name: "wp"}}}}}, Target{Host: "x", WaypointNamespace: "app", WaypointName: "wp"})
	if gw.Empty() {
		t.Error("route attached to the waypoint Gateway not used")
	}
}

func TestPickBackend(t *testing.T) {
	bs := []model.Backend{{Host: "a", Weight: 1}, {Host: "zero", Weight: 0}, {Host: "b", Weight: 3}}
	tests := []struct {
		n    uint64
		want string
	}{{0, "a"}, {1, "b"}, {3, "b"}}
	for _, tc := range tests {
		b, ok := PickBackend(bs, func(total uint64) uint64 {
			if total != 4 {
				t.Fatalf("total %d", total)
			}
			return tc.n
		})
		if !ok || b.Host != tc.want {
			t.Errorf("n=%d: %v", tc.n, b)
		}
	}
	if _, ok := PickBackend([]model.Backend{{Weight: 0}}, nil); ok {
		t.Error("all-zero weights picked a backend")
	}
}

func TestRewritePath(t *testing.T) {
	pm := &model.Match{PathKind: model.PathPrefix, Path: "/api"}
	tests := []struct {
		name, path, full, prefix string
		set                      bool
		want                     string
	}{
		{"full", "/api/x", "/new", "", false, "/new"},
		{"prefix", "/api/x", "", "/v2", true, "/v2/x"},
		{"prefix to root", "/api/x", "", "/", true, "/x"},
		{"exact prefix to root", "/api", "", "/", true, "/"},
		{"exact prefix", "/api", "", "/v2", true, "/v2"},
		{"untouched", "/api/x", "", "", false, "/api/x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := RewritePath(tc.path, model.PathModifier{FullPath: tc.full, Prefix: tc.prefix, PrefixSet: tc.set}, pm); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzMatches feeds peer-controlled request parts (path, header and query values) to the matcher: it
// never panics, an inverted header match is the negation of the plain one, and a value match is
// consistent with the presence of the header.
func FuzzMatches(f *testing.F) {
	f.Add("/a/b", "x-v", "2", "q=1&q=2")
	f.Add("/", "X-V", "", "%zz")
	f.Add("//..//", "x-v", "a,b", "q")
	f.Fuzz(func(t *testing.T, path, name, value, rawQuery string) {
		h := http.Header{}
		if name != "" {
			h[http.CanonicalHeaderKey(name)] = []string{value}
		}
		q, _ := url.ParseQuery(rawQuery)
		req := &Request{Method: "GET", Path: path, Query: q, Header: h}
		hm := model.ValueMatch{Name: name, Value: value}
		inv := hm
		inv.Invert = true
		m := &model.Match{PathKind: model.PathPrefix, Path: "/", Headers: []model.ValueMatch{hm}}
		mi := &model.Match{PathKind: model.PathPrefix, Path: "/", Headers: []model.ValueMatch{inv}}
		a, b := Matches(m, req), Matches(mi, req)
		if PrefixMatches("/", path) && a == b {
			t.Errorf("header match %v and inverted %v agree", a, b)
		}
		pres := &model.Match{PathKind: model.PathPrefix, Path: "/", Headers: []model.ValueMatch{{Name: name, Kind: model.StringPresent}}}
		if a && !Matches(pres, req) {
			t.Error("value matched but the header is absent")
		}
		_ = Matches(&model.Match{PathKind: model.PathExact, Path: path, Query: []model.ValueMatch{{Name: rawQuery, Kind: model.StringPrefix, Value: value}}}, req)
	})
}
