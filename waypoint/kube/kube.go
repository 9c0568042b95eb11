package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/ambit-mesh/ambit/config/local"
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
	{Group: local.RateLimitGroup, Version: "v1alpha1", Resource: "localratelimitpolicies"},
}

// ListKinds maps each resource to its list kind (for fake clients in tests).
var ListKinds = map[schema.GroupVersionResource]string{
	Resources[0]: "ServiceEntryList", Resources[1]: "HTTPRouteList", Resources[2]: "GRPCRouteList",
	Resources[3]: "VirtualServiceList", Resources[4]: "DestinationRuleList", Resources[5]: "AuthorizationPolicyList",
	Resources[6]: "RequestAuthenticationList", Resources[7]: "LocalRateLimitPolicyList",
}

// Source watches the cluster and calls OnUpdate with each compiled configuration.
type Source struct {
	Client dynamic.Interface
	// Namespace limits the watch ("" watches every namespace: routes and policies for the waypoint's
	// services may live in their own namespaces).
	Namespace string
	// Resync is the informers' resync period (0: none).
	Resync   time.Duration
	Options  local.Options
	OnUpdate func(*model.Config)
	Logger   *slog.Logger
	// Debounce coalesces bursts of events (default 100 ms).
	Debounce time.Duration
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
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(s.Client, s.Resync, s.Namespace, nil)
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
		informers[i] = f.ForResource(gvr).Informer()
		if _, err := informers[i].AddEventHandler(h); err != nil {
			return fmt.Errorf("watch %s: %w", gvr.Resource, err)
		}
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	for i, inf := range informers {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("sync %s", Resources[i].Resource)
		}
	}
	s.apply(informers, log)
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
		s.apply(informers, log)
	}
}

type doc struct {
	gvr  schema.GroupVersionResource
	key  string
	json []byte
	ts   time.Time
}

// apply compiles every valid object and hands the result to OnUpdate.
func (s *Source) apply(informers []cache.SharedIndexInformer, log *slog.Logger) {
	var context, docs []doc
	for i, inf := range informers {
		var list []doc
		for _, o := range inf.GetStore().List() {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			js, err := u.MarshalJSON()
			if err != nil {
				continue
			}
			list = append(list, doc{gvr: Resources[i], key: u.GetNamespace() + "/" + u.GetName(), json: js, ts: u.GetCreationTimestamp().Time})
		}
		// Oldest first, as istiod orders conflicting resources.
		slices.SortFunc(list, func(a, b doc) int {
			if c := a.ts.Compare(b.ts); c != 0 {
				return c
			}
			return strings.Compare(a.key, b.key)
		})
		if i == 0 {
			context = list
		}
		docs = append(docs, list...)
	}
	objsFor := func(extra ...doc) (*local.Objects, error) {
		objs := &local.Objects{}
		for _, d := range append(slices.Clone(context), extra...) {
			if err := objs.Decode("kube:"+d.gvr.Resource+"/"+d.key, d.json); err != nil {
				return nil, err
			}
		}
		return objs, nil
	}
	var good []doc
	skipped := 0
	for _, d := range docs[len(context):] {
		objs, err := objsFor(d)
		if err == nil {
			_, err = local.CompileL7(objs, s.Options)
		}
		if err != nil {
			skipped++
			log.Error("L7 resource rejected", "resource", d.gvr.Resource, "object", d.key, "err", err)
			continue
		}
		good = append(good, d)
	}
	objs, err := objsFor(good...)
	var cfg *model.Config
	if err == nil {
		cfg, err = local.CompileL7(objs, s.Options)
	}
	if err != nil {
		log.Error("L7 configuration rejected; keeping the previous configuration", "err", err)
		return
	}
	s.OnUpdate(cfg)
	log.Info("L7 configuration applied", "source", "kubernetes", "objects", len(good), "rejected", skipped)
}
