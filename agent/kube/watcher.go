package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/ambit-mesh/ambit/kubeapi"
	"github.com/ambit-mesh/ambit/mesh/istio"
)

// Options configures New.
type Options struct {
	// Client talks to the API server (kubeapi.NewCoreV1). Required.
	Client kubeapi.Client
	// NodeName is the node whose pods are watched. Required.
	NodeName string
	// ClusterID prefixes workload UIDs (default Kubernetes); TrustDomain is that of pod identities (default
	// cluster.local).
	ClusterID, TrustDomain string
	// Resync is the informers' resync period (0: none).
	Resync time.Duration
	// RequestTimeout bounds one annotation patch (default 5 s); RetryInterval is how soon failed patches are
	// retried (default 1 s).
	RequestTimeout, RetryInterval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Watcher keeps the set of pods the agent captures on its node, from the API server, and the redirection
// annotation of the pods the agent reports captured. Create it with New and run it with Run.
type Watcher struct {
	opts   Options
	log    *slog.Logger
	synced chan struct{}
	kick   chan struct{} // wakes the loop: an informer event or a new captured set

	pods       listersv1.PodLister
	namespaces listersv1.NamespaceLister

	mu       sync.Mutex
	wanted   map[string]Pod  // guarded by mu; by UID
	changed  chan struct{}   // guarded by mu; closed at the next change of wanted
	captured map[string]bool // guarded by mu; UIDs the agent captured; nil until the first SetCaptured
}

// New validates opts and prepares a Watcher; nothing is contacted until Run.
func New(opts Options) (*Watcher, error) {
	if opts.Client == nil || opts.NodeName == "" {
		return nil, fmt.Errorf("%w: Client and NodeName are required", ErrInvalidOptions)
	}
	opts.ClusterID = cmp.Or(opts.ClusterID, "Kubernetes")
	opts.TrustDomain = cmp.Or(opts.TrustDomain, "cluster.local")
	opts.RequestTimeout = cmp.Or(opts.RequestTimeout, 5*time.Second)
	opts.RetryInterval = cmp.Or(opts.RetryInterval, time.Second)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{opts: opts, log: log, synced: make(chan struct{}), kick: make(chan struct{}, 1),
		wanted: map[string]Pod{}, changed: make(chan struct{})}, nil
}

// Synced is closed once the informers hold a complete listing of the node's pods and of the namespaces, and
// Wanted reflects it.
func (w *Watcher) Synced() <-chan struct{} { return w.synced }

// Changed returns a channel that is closed at the next change of the wanted set.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Wanted returns the pods to capture, sorted by UID.
func (w *Watcher) Wanted() []Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.SortedFunc(maps.Values(w.wanted), func(a, b Pod) int { return cmp.Compare(a.UID, b.UID) })
}

// SetCaptured reports the UIDs (Pod.UID) whose capture is in place. From the first call on, the Watcher keeps
// the redirection annotation on exactly these pods of the node; before it, annotations are left alone (a
// restarted agent has not re-adopted its capture yet).
func (w *Watcher) SetCaptured(uids []string) {
	set := make(map[string]bool, len(uids))
	for _, u := range uids {
		set[u] = true
	}
	w.mu.Lock()
	w.captured = set
	w.mu.Unlock()
	w.wake()
}

func (w *Watcher) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Run starts the informers, waits for their first listing, then keeps Wanted and the annotations up to date
// until ctx ends. It returns nil when ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	nodePods := func(o metav1.ListOptions) metav1.ListOptions {
		o.FieldSelector = "spec.nodeName=" + w.opts.NodeName
		return o
	}
	pods, nss := w.opts.Client.Pods(""), w.opts.Client.Namespaces()
	podInf := kubeapi.Informer(w.opts.Client, &corev1.Pod{}, "pods", w.opts.Resync,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return pods.List(ctx, nodePods(o))
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, nodePods(o))
		})
	nsInf := kubeapi.Informer(w.opts.Client, &corev1.Namespace{}, "namespaces", w.opts.Resync,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return nss.List(ctx, o) },
		nss.Watch)
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.wake() },
		UpdateFunc: func(any, any) { w.wake() },
		DeleteFunc: func(any) { w.wake() },
	}
	if _, err := podInf.AddEventHandler(handler); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	if _, err := nsInf.AddEventHandler(handler); err != nil {
		return fmt.Errorf("watch namespaces: %w", err)
	}
	w.pods, w.namespaces = listersv1.NewPodLister(podInf.GetIndexer()), listersv1.NewNamespaceLister(nsInf.GetIndexer())
	infCtx, stopInformers := context.WithCancel(ctx)
	var running sync.WaitGroup
	defer func() {
		stopInformers()
		running.Wait()
	}()
	running.Go(func() { podInf.RunWithContext(infCtx) })
	running.Go(func() { nsInf.RunWithContext(infCtx) })
	if !cache.WaitForCacheSync(ctx.Done(), podInf.HasSynced, nsInf.HasSynced) {
		return nil
	}
	w.recompute()
	close(w.synced)
	w.log.Info("pod watch synced", "node", w.opts.NodeName, "wanted", len(w.Wanted()))

	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.kick:
		case <-retry.C:
		}
		w.recompute()
		if pending := w.syncAnnotations(ctx); pending {
			retry.Reset(w.opts.RetryInterval)
		}
	}
}

// recompute derives the wanted set from the informers and signals a change.
func (w *Watcher) recompute() {
	pods, err := w.pods.List(labels.Everything())
	if err != nil {
		w.log.Warn("list pods from cache", "err", err)
		return
	}
	want := map[string]Pod{}
	for _, p := range pods {
		var nsLabels map[string]string
		if ns, err := w.namespaces.Get(p.Namespace); err == nil {
			nsLabels = ns.Labels
		}
		if p.Spec.NodeName == w.opts.NodeName && Wanted(p, nsLabels) {
			pod := podFor(p, w.opts.ClusterID, w.opts.TrustDomain)
			want[pod.UID] = pod
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if maps.EqualFunc(w.wanted, want, samePod) {
		return
	}
	w.wanted = want
	close(w.changed)
	w.changed = make(chan struct{})
}

func samePod(a, b Pod) bool {
	return a.UID == b.UID && a.Identity == b.Identity && slices.Equal(a.IPs, b.IPs)
}

// annotationPatch is a JSON merge patch that sets (enabled) or removes the redirection annotation.
func annotationPatch(enabled bool) []byte {
	var v any
	if enabled {
		v = istio.RedirectionEnabled
	}
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{istio.AnnotationRedirection: v}}})
	return b
}

// AnnotationPlan lists the pods whose redirection annotation must be set (Add) or removed (Remove) so that
// exactly the captured pods carry it. Pods being deleted are left alone: they are about to go.
type AnnotationPlan struct {
	Add, Remove []*corev1.Pod
}

// PlanAnnotations compares the node's pods with the captured UIDs.
func PlanAnnotations(pods []*corev1.Pod, captured map[string]bool, clusterID string) AnnotationPlan {
	var p AnnotationPlan
	for _, pod := range pods {
		if pod.DeletionTimestamp != nil {
			continue
		}
		want, has := captured[WorkloadUID(clusterID, pod.Namespace, pod.Name)], annotated(pod)
		switch {
		case want && !has:
			p.Add = append(p.Add, pod)
		case !want && has:
			p.Remove = append(p.Remove, pod)
		}
	}
	byName := func(a, b *corev1.Pod) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	}
	slices.SortFunc(p.Add, byName)
	slices.SortFunc(p.Remove, byName)
	return p
}

// syncAnnotations patches the pods whose annotation disagrees with the captured set; it reports whether some
// patch failed (to be retried).
func (w *Watcher) syncAnnotations(ctx context.Context) bool {
	w.mu.Lock()
	captured := w.captured
	w.mu.Unlock()
	if captured == nil {
		return false
	}
	pods, err := w.pods.List(labels.Everything())
	if err != nil {
		return true
	}
	plan := PlanAnnotations(pods, captured, w.opts.ClusterID)
	failed := false
	patch := func(pod *corev1.Pod, enabled bool) {
		if failed {
			return // the API server is likely unreachable: retry everything later
		}
		pctx, cancel := context.WithTimeout(ctx, w.opts.RequestTimeout)
		defer cancel()
		_, err := w.opts.Client.Pods(pod.Namespace).Patch(pctx, pod.Name, types.MergePatchType, annotationPatch(enabled),
			metav1.PatchOptions{FieldManager: "ambit"})
		switch {
		case err == nil:
			w.log.Info("pod redirection annotation", "pod", pod.Namespace+"/"+pod.Name, "enabled", enabled)
		case apierrors.IsNotFound(err):
		default:
			failed = true
			if ctx.Err() == nil {
				w.log.Warn("patch pod redirection annotation; will retry", "pod", pod.Namespace+"/"+pod.Name, "enabled", enabled, "err", err)
			}
		}
	}
	for _, p := range plan.Add {
		patch(p, true)
	}
	for _, p := range plan.Remove {
		patch(p, false)
	}
	return failed
}
