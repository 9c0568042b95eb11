// Package kubeapi is the small Kubernetes API client Ambit's processes use: the core/v1 calls they make (pods
// and namespaces listed, watched and patched; events written, in the background by EventWriter) and informers
// over any client, built on client-go's rest and tools/cache packages. Not on its generated clientset
// (k8s.io/client-go/kubernetes, and every typed client, informer factory and dynamicinformer, which import it):
// that registers all ~50 API groups of k8s.io/api in its scheme at process start, in every process, agent and
// waypoint alike, whether or not it talks to an API server. Nor on its event recorder (tools/record), whose
// strategic-merge-patch support brings in the OpenAPI models. Together they were 36 MB of the 74 MB binary and
// 16 MB of an idle agent's 51 MB resident (make bench-agent). This package's scheme holds core/v1 only.
//
// It imports no other Ambit package.
package kubeapi

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// PodClient is what the agent does with pods: list, watch, patch (the subset of client-go's typed
// PodInterface, so a fake clientset's pods satisfy it).
type PodClient interface {
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions,
		subresources ...string) (*corev1.Pod, error)
}

// NamespaceClient lists and watches namespaces (a subset of client-go's typed NamespaceInterface).
type NamespaceClient interface {
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.NamespaceList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Client is the core/v1 API as the node agent uses it. CoreV1 implements it against an API server.
type Client interface {
	Pods(namespace string) PodClient
	Namespaces() NamespaceClient
}

// CoreV1 is a client of the API server's core/v1 group. Create it with NewCoreV1.
type CoreV1 struct {
	rc     *rest.RESTClient
	params runtime.ParameterCodec
}

var _ Client = (*CoreV1)(nil)

// NewCoreV1 builds a core/v1 client from cfg (as client-go's typed CoreV1Client does, with a scheme that holds
// core/v1 alone).
func NewCoreV1(cfg *rest.Config) (*CoreV1, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("register core/v1: %w", err)
	}
	c := *cfg
	gv := corev1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/api"
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(&c)
	if err != nil {
		return nil, fmt.Errorf("create core/v1 client: %w", err)
	}
	return &CoreV1{rc: rc, params: runtime.NewParameterCodec(scheme)}, nil
}

// CloseIdleConnections closes the client's idle connections to the API server (client-go caches transports
// process-wide: their connections outlive the client otherwise).
func (c *CoreV1) CloseIdleConnections() { utilnet.CloseIdleConnectionsFor(c.rc.Client.Transport) }

// Pods returns the pods of namespace ("" for all namespaces).
func (c *CoreV1) Pods(namespace string) PodClient { return pods{c, namespace} }

// Namespaces returns the namespaces.
func (c *CoreV1) Namespaces() NamespaceClient { return namespaces{c} }

// Events returns a sink for the events of every namespace (an EventSink; also client-go's record.EventSink).
func (c *CoreV1) Events() *Events { return &Events{c} }

func (c *CoreV1) list(ctx context.Context, namespace, resource string, opts metav1.ListOptions, into runtime.Object) error {
	var timeout time.Duration
	if opts.TimeoutSeconds != nil {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	return c.rc.Get().NamespaceIfScoped(namespace, namespace != "").Resource(resource).
		VersionedParams(&opts, c.params).Timeout(timeout).Do(ctx).Into(into)
}

func (c *CoreV1) watch(ctx context.Context, namespace, resource string, opts metav1.ListOptions) (watch.Interface, error) {
	var timeout time.Duration
	if opts.TimeoutSeconds != nil {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	opts.Watch = true
	return c.rc.Get().NamespaceIfScoped(namespace, namespace != "").Resource(resource).
		VersionedParams(&opts, c.params).Timeout(timeout).Watch(ctx)
}

type pods struct {
	c  *CoreV1
	ns string
}

func (p pods) List(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error) {
	out := &corev1.PodList{}
	return out, p.c.list(ctx, p.ns, "pods", opts, out)
}

func (p pods) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return p.c.watch(ctx, p.ns, "pods", opts)
}

func (p pods) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions,
	subresources ...string) (*corev1.Pod, error) {
	out := &corev1.Pod{}
	err := p.c.rc.Patch(pt).NamespaceIfScoped(p.ns, p.ns != "").Resource("pods").Name(name).
		SubResource(subresources...).VersionedParams(&opts, p.c.params).Body(data).Do(ctx).Into(out)
	return out, err
}

type namespaces struct{ c *CoreV1 }

func (n namespaces) List(ctx context.Context, opts metav1.ListOptions) (*corev1.NamespaceList, error) {
	out := &corev1.NamespaceList{}
	return out, n.c.list(ctx, "", "namespaces", opts, out)
}

func (n namespaces) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return n.c.watch(ctx, "", "namespaces", opts)
}

// Events writes events to the namespace each names, as client-go's typed EventSinkImpl does.
type Events struct{ c *CoreV1 }

// eventTimeout bounds one event write (the recorder's sink calls carry no context).
const eventTimeout = 10 * time.Second

// Create creates event in its namespace.
func (e *Events) Create(event *corev1.Event) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	out := &corev1.Event{}
	err := e.c.rc.Post().NamespaceIfScoped(event.Namespace, event.Namespace != "").Resource("events").
		Body(event).Do(ctx).Into(out)
	return out, err
}

// Update replaces event (its ResourceVersion set).
func (e *Events) Update(event *corev1.Event) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	out := &corev1.Event{}
	err := e.c.rc.Put().NamespaceIfScoped(event.Namespace, event.Namespace != "").Resource("events").
		Name(event.Name).Body(event).Do(ctx).Into(out)
	return out, err
}

// Patch applies the strategic merge patch data to the event named by old.
func (e *Events) Patch(old *corev1.Event, data []byte) (*corev1.Event, error) {
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	out := &corev1.Event{}
	err := e.c.rc.Patch(types.StrategicMergePatchType).NamespaceIfScoped(old.Namespace, old.Namespace != "").
		Resource("events").Name(old.Name).Body(data).Do(ctx).Into(out)
	return out, err
}

// Informer returns a shared index informer of obj's kind (a pointer to an empty object) listed and watched
// through list and watch, with a namespace index, as client-go's generated informers build them. client is
// the client behind list and watch: a client that does not support watch-list semantics (client-go's fakes
// say so) keeps the informer on list-then-watch.
func Informer(client any, obj runtime.Object, description string, resync time.Duration,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformerWithOptions(
		cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{ListWithContextFunc: list, WatchFuncWithContext: watch}, client),
		obj,
		cache.SharedIndexInformerOptions{
			ResyncPeriod:      resync,
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: description,
		})
}
