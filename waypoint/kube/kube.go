package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"

	"github.com/ambit-mesh/ambit/config/resource"
	"github.com/ambit-mesh/ambit/kubeapi"
	"github.com/ambit-mesh/ambit/waypoint/compile"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// Resources are the watched resources, in compile order. ServiceEntries come first: routes and
// policies refer to their hostnames.
var Resources = []schema.GroupVersionResource{
	{Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "grpcroutes"},
	{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"},
	{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"},
	{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
	{Group: "security.istio.io", Version: "v1", Resource: "requestauthentications"},
	{Group: resource.RateLimitGroup, Version: "v1alpha1", Resource: "localratelimitpolicies"},
}

// newObject returns the typed object each resource decodes into, by index in Resources.
var newObject = []func() any{
	func() any { return new(networkingv1.ServiceEntry) },
	func() any { return new(gwv1.HTTPRoute) },
	func() any { return new(gwv1.GRPCRoute) },
	func() any { return new(networkingv1.VirtualService) },
	func() any { return new(networkingv1.DestinationRule) },
	func() any { return new(securityv1.AuthorizationPolicy) },
	func() any { return new(securityv1.RequestAuthentication) },
	func() any { return new(resource.LocalRateLimitPolicy) },
}

// podsResource is watched for pod labels, the context DestinationRule subsets are resolved in: the workloads
// istiod sends the waypoint carry no labels. Only each pod's namespace, name and labels are kept.
var podsResource = schema.GroupVersionResource{Version: "v1", Resource: "pods"}

// ListKinds maps each watched resource to its list kind (for fake clients in tests).
var ListKinds = map[schema.GroupVersionResource]string{
	Resources[0]: "ServiceEntryList", Resources[1]: "HTTPRouteList", Resources[2]: "GRPCRouteList",
	Resources[3]: "VirtualServiceList", Resources[4]: "DestinationRuleList", Resources[5]: "AuthorizationPolicyList",
	Resources[6]: "RequestAuthenticationList", Resources[7]: "LocalRateLimitPolicyList", podsResource: "PodList",
}

// Source watches the cluster and calls OnUpdate with each compiled configuration.
type Source struct {
	Client dynamic.Interface
	// Namespace limits the watch ("" watches every namespace: routes and policies for the waypoint's
	// services may live in their own namespaces).
	Namespace string
	// Resync is the informers' resync period (0: none).
	Resync   time.Duration
	Options  compile.Options
	OnUpdate func(*model.Config)
	Logger   *slog.Logger
	// Debounce coalesces bursts of events (default 100 ms).
	Debounce time.Duration
	// Events, if set, receives a Warning Event (reason UnsupportedField) on each object that has fields Ambit
	// does not implement (the compile warnings), once per object generation, as istiod's analysers surface
	// them to kubectl describe (in a cluster: kubeapi.CoreV1's Events).
	Events kubeapi.EventSink

	recorder *kubeapi.EventWriter // set by Run when Events is
	recorded map[types.UID]int64  // only apply's goroutine; the generation each object's Event was for

	syncOnce sync.Once
	synced   chan struct{}
}

// Synced is closed once every informer has synced and the first configuration has gone to OnUpdate:
// from then on the waypoint enforces the cluster's L7 policies. While the API server cannot be listed it
// stays open.
func (s *Source) Synced() <-chan struct{} { return s.syncedChan() }

func (s *Source) syncedChan() chan struct{} {
	s.syncOnce.Do(func() { s.synced = make(chan struct{}) })
	return s.synced
}

// Run starts the informers, waits for their caches, applies the first configuration and then one per
// burst of changes, until ctx ends.
func (s *Source) Run(ctx context.Context) error {
	if s.Client == nil || s.OnUpdate == nil {
		return errors.New("kube source: Client and OnUpdate are required")
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	debounce := cmp.Or(s.Debounce, 100*time.Millisecond)
	// One informer per resource, as dynamicinformer's factory builds them (that package imports client-go's
	// clientset: see package kubeapi).
	informer := func(gvr schema.GroupVersionResource) cache.SharedIndexInformer {
		r := s.Client.Resource(gvr).Namespace(s.Namespace)
		return kubeapi.Informer(s.Client, &unstructured.Unstructured{}, gvr.String(), s.Resync,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return r.List(ctx, o) }, r.Watch)
	}
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	informers := make([]cache.SharedIndexInformer, len(Resources))
	for i, gvr := range Resources {
		informers[i] = informer(gvr)
		if _, err := informers[i].AddEventHandler(h); err != nil {
			return fmt.Errorf("watch %s: %w", gvr.Resource, err)
		}
	}
	pods := informer(podsResource)
	if err := pods.SetTransform(podMeta); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { notify() },
		UpdateFunc: func(old, new any) {
			if podChanged(old, new) {
				notify()
			}
		},
		DeleteFunc: func(any) { notify() },
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	if s.Events != nil {
		s.recorder = kubeapi.NewEventWriter(s.Events, "ambit-waypoint", log)
		defer kubeapi.RunEvents(ctx, s.recorder)()
	}
	infCtx, stopInformers := context.WithCancel(ctx)
	var running sync.WaitGroup
	defer func() {
		stopInformers()
		running.Wait()
	}()
	for _, inf := range append(slices.Clone(informers), pods) {
		running.Go(func() { inf.RunWithContext(infCtx) })
	}
	for i, inf := range append(slices.Clone(informers), pods) {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			if ctx.Err() != nil {
				return nil
			}
			if i == len(informers) {
				return errors.New("sync pods")
			}
			return fmt.Errorf("sync %s", Resources[i].Resource)
		}
	}
	s.apply(informers, pods, log)
	close(s.syncedChan())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		t := time.NewTimer(debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		s.apply(informers, pods, log)
	}
}

// podMeta is the pods informer's transform: it keeps a pod's namespace, name, labels and resource version,
// all that subsets need, so that a waypoint does not hold every pod spec of the cluster.
func podMeta(o any) (any, error) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return o, nil // a tombstone: kept as it is
	}
	out := &unstructured.Unstructured{}
	out.SetAPIVersion("v1")
	out.SetKind("Pod")
	out.SetNamespace(u.GetNamespace())
	out.SetName(u.GetName())
	out.SetUID(u.GetUID())
	out.SetResourceVersion(u.GetResourceVersion())
	out.SetLabels(u.GetLabels())
	return out, nil
}

// podChanged reports whether a pod update changes what the configuration is compiled against (its labels):
// status and spec updates, most of a cluster's pod events, do not.
func podChanged(old, new any) bool {
	o, ok1 := old.(*unstructured.Unstructured)
	n, ok2 := new.(*unstructured.Unstructured)
	if !ok1 || !ok2 {
		return true
	}
	ol, nl := o.GetLabels(), n.GetLabels()
	if len(ol) != len(nl) {
		return true
	}
	for k, v := range ol {
		if w, ok := nl[k]; !ok || w != v {
			return true
		}
	}
	return false
}

type doc struct {
	u   *unstructured.Unstructured
	gvr schema.GroupVersionResource
	key string
	obj any // decoded, or nil when err is set
	err error
	ts  time.Time
}

// apply decodes and compiles every object, each once and alone: an invalid object is skipped with a log
// line naming it and the field, and the configuration of the others goes to OnUpdate.
func (s *Source) apply(informers []cache.SharedIndexInformer, podInformer cache.SharedIndexInformer, log *slog.Logger) {
	var lists [][]doc
	for i, inf := range informers {
		var list []doc
		for _, o := range inf.GetStore().List() {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			d := doc{u: u, gvr: Resources[i], key: u.GetNamespace() + "/" + u.GetName(), ts: u.GetCreationTimestamp().Time}
			js, err := u.MarshalJSON()
			if err == nil {
				d.obj = newObject[i]()
				if err = resource.Decode(js, d.obj); err != nil {
					d.obj = nil
				}
			}
			d.err = err
			list = append(list, d)
		}
		// Oldest first, as istiod orders conflicting resources.
		slices.SortFunc(list, func(a, b doc) int {
			if c := a.ts.Compare(b.ts); c != 0 {
				return c
			}
			return strings.Compare(a.key, b.key)
		})
		lists = append(lists, list)
	}
	skipped := 0
	reject := func(d doc, err error) {
		skipped++
		log.Error("L7 resource rejected", "resource", d.gvr.Resource, "object", d.key, "err", err)
	}
	// ServiceEntries (Resources[0]) are context: the hostnames routes and policies refer to.
	var entries []*networkingv1.ServiceEntry
	var warned []objectWarnings
	for _, d := range lists[0] {
		if d.err != nil {
			reject(d, d.err)
			continue
		}
		se := d.obj.(*networkingv1.ServiceEntry)
		entries = append(entries, se)
		if w := resource.ServiceEntryWarnings(se); len(w) > 0 {
			warned = append(warned, objectWarnings{obj: d.u, uid: d.u.GetUID(), generation: d.u.GetGeneration(), warnings: w})
		}
	}
	var pods []*corev1.Pod
	for _, o := range podInformer.GetStore().List() {
		if u, ok := o.(*unstructured.Unstructured); ok {
			pods = append(pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: u.GetNamespace(), Name: u.GetName(), Labels: u.GetLabels()}})
		}
	}
	c := compile.New(s.Options, entries, pods)
	good := 0
	for _, list := range lists[1:] {
		for _, d := range list {
			err := d.err
			before := len(c.Config().Warnings)
			if err == nil {
				err = c.Add(d.obj)
			}
			if err != nil {
				reject(d, err)
				continue
			}
			good++
			if w := c.Config().Warnings[before:]; len(w) > 0 {
				warned = append(warned, objectWarnings{obj: d.u, uid: d.u.GetUID(), generation: d.u.GetGeneration(), warnings: slices.Clone(w)})
			}
		}
	}
	s.OnUpdate(c.Config())
	if s.recorder != nil {
		var emit []objectWarnings
		emit, s.recorded = unsupportedEvents(s.recorded, warned)
		for _, o := range emit {
			s.recorder.Emit(o.obj, corev1.EventTypeWarning, ReasonUnsupportedField, strings.Join(o.warnings, "; "))
		}
	}
	log.Info("L7 configuration applied", "source", "kubernetes", "objects", good, "rejected", skipped)
}

// ReasonUnsupportedField is the reason of the Warning Event on an object with fields Ambit does not implement.
const ReasonUnsupportedField = "UnsupportedField"

// objectWarnings are the compile warnings of one object.
type objectWarnings struct {
	obj        kubeapi.Object
	uid        types.UID
	generation int64
	warnings   []string
}

// unsupportedEvents decides which objects with warnings get an Event: those not given one for their current
// generation before (recorded: object -> generation of its last Event). It returns them and the record of the
// objects that still have warnings (an object whose warnings went away is forgotten, so that they get an Event
// again should they come back).
func unsupportedEvents(recorded map[types.UID]int64, warned []objectWarnings) (emit []objectWarnings, next map[types.UID]int64) {
	next = make(map[types.UID]int64, len(warned))
	for _, o := range warned {
		if g, ok := recorded[o.uid]; !ok || g != o.generation {
			emit = append(emit, o)
		}
		next[o.uid] = o.generation
	}
	return emit, next
}
