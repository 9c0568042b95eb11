package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

var (
	triesMu sync.Mutex
	tries   = map[string]int{} // guarded by triesMu; /flaky/<key> -> requests seen by any pod
)

// firstTry reports whether this is the first request for path across the demo's pods (it fails, so a
// retry by the waypoint is visible).
func firstTry(path string) bool {
	triesMu.Lock()
	defer triesMu.Unlock()
	tries[path]++
	return tries[path] == 1
}

const l7Split = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 2s}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - backendRefs: [{name: reviews-v1, port: 9080, weight: 80}, {name: reviews-v2, port: 9080, weight: 20}]
`

const l7Fault = `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: legacy-faults, namespace: demo}
spec:
  hosts: [reviews-v2]
  http:
  - fault: {delay: {percentage: {value: 100}, fixedDelay: 300ms}, abort: {percentage: {value: 50}, httpStatus: 503}}
    route: [{destination: {host: reviews-v2}}]
`

const l7Limit = `---
apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: reviews, namespace: demo}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 1m}
`

const l7Deny = `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-admin, namespace: demo}
spec:
  targetRefs: [{group: "", kind: Service, name: reviews}]
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}, {operation: {paths: ["/admin/{**}"]}}]}]
`

// l7Steps shows the L7 waypoint on the reviews service (bound to reviews-svc-waypoint since step 3):
// a weighted split, a retry, fault injection, a rate limit and an authorization deny, and the
// waypoint's Istio metrics.
func (d *demo) l7Steps(ctx context.Context) error {
	base := scene{namespaceWaypoint: true, serviceWaypoint: true, podWaypoint: true, egress: true, deny: true}
	apply := func(l7 string) error {
		s := base
		s.l7 = l7
		return d.apply(ctx, s)
	}
	wp := "reviews-svc-waypoint"

	step("6. L7 in `ambit waypoint`: an HTTPRoute splits reviews 80/20 between reviews-v1 and reviews-v2")
	if err := apply(l7Split); err != nil {
		return err
	}
	counts := map[string]int{}
	for range 20 {
		r := d.http(ctx, http.MethodGet, reviewsVIP+":9080", "/")
		counts[strings.Fields(r.body + " ?")[0]]++
	}
	fmt.Printf("  20 requests to reviews: %s\n", summary(counts))

	step("7. A retry: the first try of /flaky/1 fails with 503; the route retries (the backend sees two requests)")
	r := d.http(ctx, http.MethodGet, reviewsVIP+":9080", "/flaky/1")
	fmt.Printf("  GET /flaky/1 -> %d %s\n", r.code, r.body)
	fmt.Printf("      waypoint: %s\n", d.waypointLine(wp, "path=/flaky/1"))

	step("8. Fault injection (VirtualService on reviews-v2, whose service now also uses the waypoint): 300 ms delay, 50% aborts")
	if err := apply(l7Split + l7Fault); err != nil {
		return err
	}
	codes := map[string]int{}
	var total time.Duration
	for range 10 {
		start := time.Now()
		r := d.http(ctx, http.MethodGet, "10.96.0.22:9080", "/")
		total += time.Since(start)
		codes[fmt.Sprint(r.code)]++
	}
	fmt.Printf("  10 requests to reviews-v2: %s, mean latency %v\n", summary(codes), (total / 10).Round(time.Millisecond))
	fmt.Printf("      waypoint: %s\n", d.waypointLine(wp, "response_flags=DI,FI"))

	step("9. A local rate limit (LocalRateLimitPolicy, 5 requests a minute) on reviews")
	if err := apply(l7Split + l7Fault + l7Limit); err != nil {
		return err
	}
	for i := range 7 {
		r := d.http(ctx, http.MethodGet, reviewsVIP+":9080", "/")
		fmt.Printf("  request %d -> %d  x-ratelimit-remaining=%s %s\n", i+1, r.code, r.h.Get("X-Ratelimit-Remaining"), strings.TrimSpace(r.body))
	}

	step("10. An L7 AuthorizationPolicy (targetRefs: Service reviews) denies DELETE and /admin/{**}")
	if err := apply(l7Split + l7Fault + l7Deny); err != nil {
		return err
	}
	for _, c := range []struct{ method, path string }{{http.MethodGet, "/"}, {http.MethodDelete, "/"}, {http.MethodGet, "/admin/users/1"}} {
		r := d.http(ctx, c.method, reviewsVIP+":9080", c.path)
		fmt.Printf("  %-6s %-16s -> %d %s\n", c.method, c.path, r.code, strings.TrimSpace(r.body))
	}

	step("11. The waypoint's Istio metrics (istio_requests_total, reporter=waypoint) by code and response flags")
	d.waypointMetrics(ctx, wp)
	return nil
}

type answer struct {
	code int
	body string
	h    http.Header
}

// http sends one request from the client pod.
func (d *demo) http(ctx context.Context, method, addr, path string) answer {
	client := d.pods["client"]
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		return client.NS.Dial(ctx, network, a)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, nil)
	if err != nil {
		return answer{body: err.Error()}
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return answer{body: "error: " + shortErr(err)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, body: strings.TrimSpace(string(b)), h: resp.Header}
}

func summary(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s x%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// waypointLine returns the last access-log line of waypoint wp containing substr, shortened.
func (d *demo) waypointLine(wp, substr string) string {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		var last string
		sc := bufio.NewScanner(strings.NewReader(readFile(d.logs[wp])))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			if l := sc.Text(); strings.Contains(l, `msg="request complete"`) && strings.Contains(l, substr) {
				last = l
			}
		}
		if last != "" {
			f := fields(last)
			return fmt.Sprintf("%s %s status=%s flags=%s attempts=%s upstream=%s duration=%s", f["method"], f["path"], f["status"],
				f["response_flags"], f["attempts"], f["upstream"], f["duration"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "(no access log line)"
}

// waypointMetrics prints the waypoint's istio_requests_total series, reduced to code and flags.
func (d *demo) waypointMetrics(ctx context.Context, wp string) {
	p := d.pods[wp]
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return p.NS.Dial(ctx, network, a) }}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://127.0.0.1:15020/stats/prometheus")
	if err != nil {
		fmt.Println("  metrics:", err)
		return
	}
	defer resp.Body.Close()
	sums := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "istio_requests_total{") {
			continue
		}
		lbl := func(k string) string {
			_, v, _ := strings.Cut(l, k+`="`)
			v, _, _ = strings.Cut(v, `"`)
			return v
		}
		var n float64
		fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &n)
		sums[fmt.Sprintf("destination_service=%s response_code=%s response_flags=%s", lbl("destination_service"), lbl("response_code"), lbl("response_flags"))] += n
	}
	keys := make([]string, 0, len(sums))
	for k := range sums {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  istio_requests_total{reporter=waypoint %s} %v\n", k, sums[k])
	}
}
