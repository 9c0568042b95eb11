package xdsclient_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/test/xdstest"
	"github.com/ambit-mesh/ambit/xdsclient"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi/security"
)

// recorder is a Handler that records updates and rejects the names in reject (with Keep for keep).
type recorder struct {
	mu      sync.Mutex
	updates []*xdsclient.Update
	reject  map[string]bool
	keep    map[string]bool
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{reject: map[string]bool{}, keep: map[string]bool{}, changed: make(chan struct{})}
}

func (r *recorder) HandleUpdate(_ context.Context, u *xdsclient.Update) []xdsclient.Rejection {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updates = append(r.updates, u)
	close(r.changed)
	r.changed = make(chan struct{})
	var rej []xdsclient.Rejection
	for _, res := range u.Resources {
		if r.reject[res.Name] {
			rej = append(rej, xdsclient.Rejection{Name: res.Name, Err: errors.New("bad " + res.Name), Keep: r.keep[res.Name]})
		}
	}
	return rej
}

// wait returns the first update at index ≥ from that satisfies match, and its index.
func (r *recorder) wait(t *testing.T, from int, match func(*xdsclient.Update) bool) (*xdsclient.Update, int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for i := from; i < len(r.updates); i++ {
			if match(r.updates[i]) {
				u := r.updates[i]
				r.mu.Unlock()
				return u, i
			}
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatal("no matching update within 10 s")
		}
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.updates)
}

func names(u *xdsclient.Update) []string {
	var out []string
	for _, r := range u.Resources {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

var node = xdsclient.NodeInfo{IP: "10.0.0.1", PodName: "ztunnel-abc", PodNamespace: "istio-system", NodeName: "node1",
	Metadata: map[string]any{"ISTIO_VERSION": "1.31.0"}}

// start runs a client against srv with the given subscriptions until test cleanup.
func start(t *testing.T, opts xdsclient.Options) *xdsclient.Client {
	t.Helper()
	opts.Node = node
	opts.InitialBackoff = 5 * time.Millisecond
	opts.MaxBackoff = 50 * time.Millisecond
	c, err := xdsclient.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func isType(t string) func(*discovery.DeltaDiscoveryRequest) bool {
	return func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetTypeUrl() == t }
}

func ackOf(nonce string) func(*discovery.DeltaDiscoveryRequest) bool {
	return func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetResponseNonce() == nonce }
}

func TestWildcardSnapshotUpdatesRemovals(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType, xdstest.AuthorizationType}})
	srv.Set(xdstest.AddressType, map[string]proto.Message{
		xdstest.PodUID("demo", "a"):      xdstest.Pod("demo", "a", "10.244.0.5"),
		xdstest.ServiceName("demo", "s"): xdstest.Service("demo", "s", "10.96.0.10"),
	})
	srv.Set(xdstest.AuthorizationType, map[string]proto.Message{
		"demo/allow": xdstest.Policy("demo", "allow", security.Scope_NAMESPACE, security.Action_ALLOW, "cluster.local/ns/demo/sa/x"),
	})
	addrs, pols := newRecorder(), newRecorder()
	c := start(t, xdsclient.Options{Address: srv.Addr, Plaintext: true, ClusterID: "c1", Subscriptions: []xdsclient.Subscription{
		{TypeURL: xdstest.AddressType, Handler: addrs}, {TypeURL: xdstest.AuthorizationType, Handler: pols}}})

	first, _ := addrs.wait(t, 0, func(u *xdsclient.Update) bool { return true })
	if !first.First || !slices.Equal(names(first), []string{xdstest.PodUID("demo", "a"), xdstest.ServiceName("demo", "s")}) {
		t.Fatalf("first Address update: first=%v names=%v", first.First, names(first))
	}
	if p, _ := pols.wait(t, 0, func(*xdsclient.Update) bool { return true }); !slices.Equal(names(p), []string{"demo/allow"}) {
		t.Fatalf("first Authorization update = %v", names(p))
	}

	// The initial request of each type carries the node; wildcard means no names.
	init, _ := srv.WaitRequest(0, isType(xdstest.AddressType))
	if id := init.GetNode().GetId(); id != "ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local" {
		t.Errorf("node id = %q", id)
	}
	md := init.GetNode().GetMetadata().GetFields()
	for k, want := range map[string]string{"NAME": "ztunnel-abc", "NAMESPACE": "istio-system", "NODE_NAME": "node1",
		"INSTANCE_IPS": "10.0.0.1", "CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "1.31.0"} {
		if got := md[k].GetStringValue(); got != want {
			t.Errorf("metadata %s = %q, want %q", k, got, want)
		}
	}
	if len(init.GetResourceNamesSubscribe())+len(init.GetResourceNamesUnsubscribe())+len(init.GetInitialResourceVersions()) != 0 {
		t.Errorf("wildcard initial request has names: %v", init)
	}
	if polInit, _ := srv.WaitRequest(0, isType(xdstest.AuthorizationType)); polInit.GetNode().GetId() == "" {
		t.Error("Authorization initial request lacks the node")
	}
	if h := srv.Headers(); len(h) == 0 || h[0].Get("clusterid")[0] != "c1" {
		t.Errorf("stream headers = %v", h)
	}
	// ACK: the response's nonce, no error.
	if ack, _ := srv.WaitRequest(0, ackOf(first.Nonce)); ack.GetErrorDetail() != nil {
		t.Errorf("ACK carries an error: %v", ack.GetErrorDetail())
	}

	// An update carries only the changed resource; a deletion arrives as a removal.
	n := addrs.count()
	srv.Set(xdstest.AddressType, map[string]proto.Message{xdstest.PodUID("demo", "a"): xdstest.Pod("demo", "a", "10.244.0.6")})
	u, i := addrs.wait(t, n, func(*xdsclient.Update) bool { return true })
	if u.First || !slices.Equal(names(u), []string{xdstest.PodUID("demo", "a")}) || len(u.Removed) != 0 {
		t.Errorf("update = first %v names %v removed %v", u.First, names(u), u.Removed)
	}
	srv.Delete(xdstest.AddressType, xdstest.ServiceName("demo", "s"))
	u, _ = addrs.wait(t, i+1, func(*xdsclient.Update) bool { return true })
	if len(u.Resources) != 0 || !slices.Equal(u.Removed, []string{xdstest.ServiceName("demo", "s")}) {
		t.Errorf("removal update = names %v removed %v", names(u), u.Removed)
	}
	testutil.WaitFor(t, 5*time.Second, "versions to drop the removed service", func() bool {
		_, ok := c.Versions(xdstest.AddressType)[xdstest.ServiceName("demo", "s")]
		return !ok
	})
	if st := c.Stats(xdstest.AddressType); st.Responses < 3 || st.NACKs != 0 || st.Held != 1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestNACKListsRejectedResources(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}})
	good, bad, kept := xdstest.PodUID("demo", "good"), xdstest.PodUID("demo", "bad"), xdstest.PodUID("demo", "kept")
	srv.Set(xdstest.AddressType, map[string]proto.Message{
		good: xdstest.Pod("demo", "good", "10.0.0.1"), bad: xdstest.Pod("demo", "bad", "10.0.0.2"),
		kept: xdstest.Pod("demo", "kept", "10.0.0.3"),
	})
	rec := newRecorder()
	rec.reject[bad], rec.reject[kept], rec.keep[kept] = true, true, true
	c := start(t, xdsclient.Options{Address: srv.Addr, Plaintext: true,
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: rec}}})
	u, _ := rec.wait(t, 0, func(*xdsclient.Update) bool { return true })
	nack, _ := srv.WaitRequest(0, ackOf(u.Nonce))
	msg := nack.GetErrorDetail().GetMessage()
	// Order follows the response; both rejected names appear as "<name>: <reason>" joined by "; ".
	parts := strings.Split(msg, "; ")
	slices.Sort(parts)
	want := []string{bad + ": bad " + bad, kept + ": bad " + kept}
	slices.Sort(want)
	if !slices.Equal(parts, want) {
		t.Errorf("NACK detail = %q, want parts %q", msg, want)
	}
	v := c.Versions(xdstest.AddressType)
	if _, ok := v[bad]; ok {
		t.Error("a rejected resource's version is held")
	}
	if _, ok := v[good]; !ok {
		t.Error("the good resource of a partly bad response is not held")
	}
	if _, ok := v[kept]; !ok {
		t.Error("a rejected resource with Keep is not held")
	}
	if st := c.Stats(xdstest.AddressType); st.NACKs != 1 || st.Rejected != 2 || st.LastNACK != msg {
		t.Errorf("stats = %+v", st)
	}
}

func TestReconnectSendsInitialVersions(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}})
	a, b, c3, bad := xdstest.PodUID("demo", "a"), xdstest.PodUID("demo", "b"), xdstest.PodUID("demo", "c"), xdstest.PodUID("demo", "bad")
	srv.Set(xdstest.AddressType, map[string]proto.Message{
		a: xdstest.Pod("demo", "a", "10.0.0.1"), b: xdstest.Pod("demo", "b", "10.0.0.2"),
		c3: xdstest.Pod("demo", "c", "10.0.0.3"), bad: xdstest.Pod("demo", "bad", "10.0.0.4"),
	})
	rec := newRecorder()
	rec.reject[bad] = true
	c := start(t, xdsclient.Options{Address: srv.Addr, Plaintext: true,
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: rec}}})
	first, _ := rec.wait(t, 0, func(*xdsclient.Update) bool { return true })
	srv.WaitRequest(0, ackOf(first.Nonce))
	held := c.Versions(xdstest.AddressType)
	if len(held) != 3 {
		t.Fatalf("held versions = %v", held)
	}

	// While the client is disconnected: b changes, c goes away.
	srv.Stop()
	srv.Delete(xdstest.AddressType, c3)
	srv.Set(xdstest.AddressType, map[string]proto.Message{b: xdstest.Pod("demo", "b", "10.0.0.22")})
	before := len(srv.Requests())
	n := rec.count()
	srv.Restart()

	init, _ := srv.WaitRequest(before, func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetResponseNonce() == "" })
	ivs := init.GetInitialResourceVersions()
	if len(ivs) != 3 || ivs[a] != held[a] || ivs[b] != held[b] || ivs[c3] != held[c3] {
		t.Errorf("initial_resource_versions = %v, want %v", ivs, held)
	}
	if _, ok := ivs[bad]; ok {
		t.Error("a rejected resource was claimed as held")
	}
	// Only what changed is resent: b (new version), bad (never held), and c is removed.
	var got []string
	var removed []string
	for len(got) < 2 || len(removed) < 1 {
		u, i := rec.wait(t, n, func(*xdsclient.Update) bool { return true })
		n = i + 1
		got = append(got, names(u)...)
		removed = append(removed, u.Removed...)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{b, bad}) || !slices.Equal(removed, []string{c3}) {
		t.Errorf("after reconnect: resent %v removed %v", got, removed)
	}
}

func TestOnDemand(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}})
	a, b := xdstest.PodUID("demo", "a"), xdstest.PodUID("demo", "b")
	srv.Set(xdstest.AddressType, map[string]proto.Message{a: xdstest.Pod("demo", "a", "10.0.0.1"), b: xdstest.Pod("demo", "b", "10.0.0.2")})
	rec := newRecorder()
	c := start(t, xdsclient.Options{Address: srv.Addr, Plaintext: true,
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: rec, OnDemand: true}}})

	init, _ := srv.WaitRequest(0, isType(xdstest.AddressType))
	if !slices.Equal(init.GetResourceNamesSubscribe(), []string{"*"}) || !slices.Equal(init.GetResourceNamesUnsubscribe(), []string{"*"}) {
		t.Errorf("on-demand initial request subscribe=%v unsubscribe=%v", init.GetResourceNamesSubscribe(), init.GetResourceNamesUnsubscribe())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	found, err := c.Fetch(ctx, xdstest.AddressType, a)
	if err != nil || !found {
		t.Fatalf("Fetch = %v, %v", found, err)
	}
	u, _ := rec.wait(t, 0, func(u *xdsclient.Update) bool { return len(u.Resources) > 0 })
	if !slices.Equal(names(u), []string{a}) {
		t.Errorf("on-demand update = %v", names(u))
	}
	// The ACK of that response travels after Fetch returned; count requests only once it arrived.
	srv.WaitRequest(0, ackOf(u.Nonce))
	// Held names answer at once, without a round trip.
	before := len(srv.Requests())
	if found, err := c.Fetch(ctx, xdstest.AddressType, a); err != nil || !found {
		t.Errorf("second Fetch = %v, %v", found, err)
	}
	for _, r := range srv.Requests()[before:] {
		if slices.Contains(r.GetResourceNamesSubscribe(), a) {
			t.Errorf("a held name was requested again: %v", r)
		}
	}
	if v := c.Versions(xdstest.AddressType); len(v) != 1 {
		t.Errorf("versions = %v; b must not be pushed", v)
	}
	// A subscribed resource keeps receiving updates; after a reconnect the subscription is renewed.
	n := rec.count()
	srv.Set(xdstest.AddressType, map[string]proto.Message{a: xdstest.Pod("demo", "a", "10.0.0.11")})
	rec.wait(t, n, func(u *xdsclient.Update) bool { return slices.Equal(names(u), []string{a}) })
	before = len(srv.Requests())
	srv.Restart()
	re, _ := srv.WaitRequest(before, func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetResponseNonce() == "" })
	if !slices.Equal(re.GetResourceNamesSubscribe(), []string{"*", a}) || re.GetInitialResourceVersions()[a] == "" {
		t.Errorf("on-demand reconnect: subscribe=%v versions=%v", re.GetResourceNamesSubscribe(), re.GetInitialResourceVersions())
	}
	// A cancelled Fetch returns the context's error.
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	if _, err := c.Fetch(short, xdstest.AddressType, "Kubernetes//Pod/demo/missing"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Fetch of a name the server never answers = %v", err)
	}
}

func TestTLSAndRotatedToken(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}, TLS: true, Token: "good-token"})
	srv.Set(xdstest.AddressType, map[string]proto.Message{xdstest.PodUID("demo", "a"): xdstest.Pod("demo", "a", "10.0.0.1")})
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenFile, []byte("stale-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	start(t, xdsclient.Options{Address: srv.Addr, RootCertFile: srv.RootFile, ServerName: "istiod.istio-system.svc",
		TokenFile: tokenFile, Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: rec}}})
	// The stale token is refused; the client keeps retrying and reads the file again for each stream.
	testutil.WaitFor(t, 10*time.Second, "a refused stream", func() bool { return len(srv.Headers()) >= 1 })
	if rec.count() != 0 {
		t.Fatal("update received with a stale token")
	}
	if err := os.WriteFile(tokenFile, []byte("good-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, 0, func(u *xdsclient.Update) bool { return len(u.Resources) == 1 })
}

func TestTLSRejectsWrongServerName(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}, TLS: true})
	srv.Set(xdstest.AddressType, map[string]proto.Message{xdstest.PodUID("demo", "a"): xdstest.Pod("demo", "a", "10.0.0.1")})
	rec := newRecorder()
	start(t, xdsclient.Options{Address: srv.Addr, RootCertFile: srv.RootFile, ServerName: "evil.example.com",
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: rec}}})
	// The operating system's roots do not trust the test CA either.
	recSys := newRecorder()
	start(t, xdsclient.Options{Address: srv.Addr, RootCertFile: xdsclient.SystemRoots, ServerName: "istiod.istio-system.svc",
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: recSys}}})
	time.Sleep(300 * time.Millisecond) // several reconnect attempts at the test backoff
	if rec.count() != 0 || recSys.count() != 0 || len(srv.Requests()) != 0 {
		t.Fatal("client talked to a server it must not trust")
	}
	// AltServerName (ALT_XDS_HOSTNAME) is accepted instead.
	rec2 := newRecorder()
	start(t, xdsclient.Options{Address: srv.Addr, RootCertFile: srv.RootFile, ServerName: "evil.example.com",
		AltServerName: "istiod.istio-system.svc", Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: rec2}}})
	rec2.wait(t, 0, func(u *xdsclient.Update) bool { return len(u.Resources) == 1 })
}

func TestRunAndFetchAfterClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}})
	c, err := xdsclient.New(xdsclient.Options{Address: srv.Addr, Plaintext: true, Node: node,
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: newRecorder(), OnDemand: true}}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	fetched := make(chan error, 1)
	go func() {
		_, err := c.Fetch(context.Background(), xdstest.AddressType, "never")
		fetched <- err
	}()
	srv.WaitRequest(0, func(r *discovery.DeltaDiscoveryRequest) bool {
		return slices.Contains(r.GetResourceNamesSubscribe(), "never")
	})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-fetched; !errors.Is(err, xdsclient.ErrClosed) {
		t.Errorf("pending Fetch after Close = %v", err)
	}
	if err := <-done; !errors.Is(err, xdsclient.ErrClosed) {
		t.Errorf("Run after Close = %v", err)
	}
	if err := c.Run(context.Background()); !errors.Is(err, xdsclient.ErrClosed) {
		t.Errorf("Run on a closed client = %v", err)
	}
}

// TestOnDemandForget: Forget drops names that name nothing (never answered, or answered with a removal)
// and unsubscribes them; names that resolved to a resource, or that a Fetch waits for, stay subscribed.
func TestOnDemandForget(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}})
	a, gone := xdstest.PodUID("demo", "a"), xdstest.PodUID("demo", "gone")
	srv.Set(xdstest.AddressType, map[string]proto.Message{a: xdstest.Pod("demo", "a", "10.0.0.1"), gone: xdstest.Pod("demo", "gone", "10.0.0.2")})
	rec := newRecorder()
	c := start(t, xdsclient.Options{Address: srv.Addr, Plaintext: true,
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: rec, OnDemand: true}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{a, gone} {
		if found, err := c.Fetch(ctx, xdstest.AddressType, name); err != nil || !found {
			t.Fatalf("Fetch %s = %v, %v", name, found, err)
		}
	}
	// gone is deleted: the server answers with a removal.
	n := rec.count()
	srv.Delete(xdstest.AddressType, gone)
	rec.wait(t, n, func(u *xdsclient.Update) bool { return slices.Contains(u.Removed, gone) })
	never := "Kubernetes//Pod/demo/never" // the server never answers
	if err := c.Subscribe(xdstest.AddressType, never); err != nil {
		t.Fatal(err)
	}
	waited := "Kubernetes//Pod/demo/waited"
	fetchDone := make(chan error, 1)
	fctx, fcancel := context.WithCancel(ctx)
	go func() { _, err := c.Fetch(fctx, xdstest.AddressType, waited); fetchDone <- err }()
	srv.WaitRequest(0, func(r *discovery.DeltaDiscoveryRequest) bool {
		return slices.Contains(r.GetResourceNamesSubscribe(), waited)
	})
	if got := c.Stats(xdstest.AddressType).OnDemandNames; got != 4 {
		t.Errorf("OnDemandNames = %d; want 4", got)
	}
	before := len(srv.Requests())
	dropped, err := c.Forget(xdstest.AddressType, a, gone, never, waited, "not-subscribed")
	if err != nil || dropped != 2 {
		t.Errorf("Forget = %d, %v; want 2 (gone and never)", dropped, err)
	}
	unsub, _ := srv.WaitRequest(before, func(r *discovery.DeltaDiscoveryRequest) bool { return len(r.GetResourceNamesUnsubscribe()) > 0 })
	if got := unsub.GetResourceNamesUnsubscribe(); !slices.Equal(got, []string{gone, never}) {
		t.Errorf("unsubscribed %v; want [%s %s]", got, gone, never)
	}
	if got := c.Stats(xdstest.AddressType).OnDemandNames; got != 2 {
		t.Errorf("OnDemandNames after Forget = %d; want 2 (a and the waited name)", got)
	}
	fcancel()
	if err := <-fetchDone; !errors.Is(err, context.Canceled) {
		t.Errorf("waiting Fetch = %v", err)
	}
	before = len(srv.Requests())
	if dropped, _ := c.Forget(xdstest.AddressType, waited); dropped != 1 {
		t.Errorf("Forget after the Fetch gave up = %d; want 1", dropped)
	}
	// The unsubscribe is sent asynchronously and also carries no nonce: wait for it, or it could be
	// taken for the reconnect's initial request below.
	srv.WaitRequest(before, func(r *discovery.DeltaDiscoveryRequest) bool {
		return slices.Contains(r.GetResourceNamesUnsubscribe(), waited)
	})
	// A reconnect subscribes only what is left.
	before = len(srv.Requests())
	srv.Restart()
	re, _ := srv.WaitRequest(before, func(r *discovery.DeltaDiscoveryRequest) bool { return r.GetResponseNonce() == "" })
	if got := re.GetResourceNamesSubscribe(); !slices.Equal(got, []string{"*", a}) {
		t.Errorf("reconnect subscribes %v; want [* %s]", got, a)
	}
	if _, err := c.Forget("type.googleapis.com/unknown", a); !errors.Is(err, xdsclient.ErrUnknownType) {
		t.Errorf("Forget of an unknown type = %v", err)
	}
}

// TestOnDemandNamesBound: names come from the addresses pods dial, so a subscription holds at most
// MaxOnDemandNames; past it Subscribe and Fetch fail (nothing is sent) until Forget makes room.
func TestOnDemandNamesBound(t *testing.T) {
	testutil.CheckGoroutines(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xdstest.AddressType}})
	c := start(t, xdsclient.Options{Address: srv.Addr, Plaintext: true, MaxOnDemandNames: 3,
		Subscriptions: []xdsclient.Subscription{{TypeURL: xdstest.AddressType, Handler: newRecorder(), OnDemand: true}}})
	if err := c.Subscribe(xdstest.AddressType, "n1", "n2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(xdstest.AddressType, "n3", "n4"); !errors.Is(err, xdsclient.ErrTooManyNames) {
		t.Errorf("Subscribe past the bound = %v; want ErrTooManyNames", err)
	}
	if got := c.Stats(xdstest.AddressType).OnDemandNames; got != 2 {
		t.Errorf("OnDemandNames = %d; want 2 (a refused Subscribe adds none of its names)", got)
	}
	if err := c.Subscribe(xdstest.AddressType, "n3"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Fetch(ctx, xdstest.AddressType, "n4"); !errors.Is(err, xdsclient.ErrTooManyNames) {
		t.Errorf("Fetch past the bound = %v; want ErrTooManyNames", err)
	}
	for _, r := range srv.Requests() {
		if slices.Contains(r.GetResourceNamesSubscribe(), "n4") {
			t.Errorf("a refused name was sent: %v", r)
		}
	}
	if dropped, err := c.Forget(xdstest.AddressType, "n1"); err != nil || dropped != 1 {
		t.Fatalf("Forget = %d, %v", dropped, err)
	}
	if err := c.Subscribe(xdstest.AddressType, "n4"); err != nil {
		t.Errorf("Subscribe after Forget made room = %v", err)
	}
}
