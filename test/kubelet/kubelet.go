package kubelet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"github.com/ambit-mesh/ambit/test/lab"
)

// Node capacity reported to the scheduler (and to resourceFieldRef without limits).
const (
	nodeCPUs   = 4
	nodeMemory = 8 << 30
)

// Options configures Start.
type Options struct {
	// Client talks to the API server with rights to nodes, leases, pods, pod status, configmaps, secrets and
	// service-account tokens. Required.
	Client kubernetes.Interface
	// Lab provides the nodes (its pods, if any, are not used). Required.
	Lab *lab.Lab
	// Dir keeps pod roots, volumes and container logs. Required.
	Dir string
	// NodePrefix names the nodes: NodePrefix + index (default "node-").
	NodePrefix string
	// Images maps an image repository (the reference without tag or digest) to how it runs.
	Images map[string]Image
	// APIServer is where the kubernetes Service (ClusterIP 10.96.0.1:443, as KUBERNETES_SERVICE_HOST and
	// _PORT say) leads, on the host: the API server's host:port.
	APIServer string
	// APIServerVIP is the kubernetes Service's ClusterIP:port (default 10.96.0.1:443).
	APIServerVIP netip.AddrPort
	// Services are further control-plane Services reachable by ClusterIP from every namespace.
	Services []ServiceProxy
	// ClusterDNS, if valid, is the cluster DNS Service's ClusterIP (kube-dns's, 10.96.0.10 in kubeadm): the
	// kubelet serves the Services' names (<svc>.<ns>.svc.cluster.local, A and AAAA from the API server) over TCP
	// at port 53 of it in every pod and node namespace, and every container's /etc/resolv.conf names it with
	// the pod namespace's search path (dnsPolicy ClusterFirst). Without it, resolv.conf names no server.
	ClusterDNS netip.Addr
	// Hosts are extra /etc/hosts entries of every container: name -> address.
	Hosts map[string]string
	// EgressSocket, if set, is the Unix socket on which the kubelet answers the API server's HTTP CONNECT
	// egress (kube-apiserver --egress-selector-config-file, selection "cluster", as for a Konnectivity proxy):
	// how kube-apiserver reaches the kubelet API (pods/portforward, pods/log) of nodes whose addresses live in
	// lab namespaces. See e2e.Options.KubeletEgress.
	EgressSocket string
	// Logger; nil discards.
	Logger *slog.Logger
}

// Kubelet runs the pods of the lab's nodes. Create it with Start; Stop tears everything down.
type Kubelet struct {
	opts   Options
	log    *slog.Logger
	apiVIP netip.AddrPort
	dns    *clusterDNS // nil without Options.ClusterDNS
	nodes  []*node
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	workers map[types.UID]*podWorker // guarded by mu
}

// node is one lab node registered as a Kubernetes node.
type node struct {
	name    string
	lab     *lab.Node
	cidr    netip.Prefix
	ips     *ipPool
	proxies *proxies

	mu   sync.Mutex
	veth int // guarded by mu; last host veth number
}

// Start registers the lab's nodes, makes the control-plane services reachable in their namespaces, and runs
// the pods bound to them until Stop.
func Start(ctx context.Context, opts Options) (*Kubelet, error) {
	if opts.Client == nil || opts.Lab == nil || opts.Dir == "" {
		return nil, errors.New("kubelet: Client, Lab and Dir are required")
	}
	opts.NodePrefix = cmp.Or(opts.NodePrefix, "node-")
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := &Kubelet{opts: opts, log: log, workers: map[types.UID]*podWorker{}, apiVIP: opts.APIServerVIP}
	if !k.apiVIP.IsValid() && opts.APIServer != "" {
		k.apiVIP = netip.MustParseAddrPort("10.96.0.1:443")
	}
	runCtx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	if opts.ClusterDNS.IsValid() {
		d, err := startClusterDNS(opts.Client, log)
		if err != nil {
			k.Stop()
			return nil, fmt.Errorf("kubelet: %w", err)
		}
		k.dns = d
	}
	for i, ln := range opts.Lab.Nodes {
		n := &node{name: fmt.Sprintf("%s%d", opts.NodePrefix, i), lab: ln,
			cidr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)}
		n.ips = &ipPool{prefix: n.cidr, used: map[netip.Addr]bool{}}
		k.nodes = append(k.nodes, n)
		if err := addDefaultRoute(ln); err != nil {
			k.Stop()
			return nil, fmt.Errorf("kubelet: node %s: %w", n.name, err)
		}
		p, err := startProxies(runCtx, ln.NS, k.serviceProxies(), log)
		if err != nil {
			k.Stop()
			return nil, fmt.Errorf("kubelet: node %s: %w", n.name, err)
		}
		n.proxies = p
		if err := k.register(ctx, n); err != nil {
			k.Stop()
			return nil, err
		}
		k.wg.Go(func() { k.heartbeat(runCtx, n) })
	}
	if opts.EgressSocket != "" {
		if err := k.serveEgress(runCtx, opts.EgressSocket); err != nil {
			k.Stop()
			return nil, err
		}
	}
	if err := k.watchPods(runCtx); err != nil {
		k.Stop()
		return nil, err
	}
	return k, nil
}

func (k *Kubelet) serviceProxies() []ServiceProxy {
	sps := append([]ServiceProxy{}, k.opts.Services...)
	if k.apiVIP.IsValid() && k.opts.APIServer != "" {
		sps = append(sps, ServiceProxy{VIP: k.apiVIP, Target: k.opts.APIServer})
	}
	if k.dns != nil {
		sps = append(sps, ServiceProxy{VIP: netip.AddrPortFrom(k.opts.ClusterDNS, 53), Target: k.dns.addr()})
	}
	return sps
}

// NodeName returns the Kubernetes name of lab node i.
func (k *Kubelet) NodeName(i int) string { return k.nodes[i].name }

// register creates (or refreshes) the Node object of n.
func (k *Kubelet) register(ctx context.Context, n *node) error {
	qty := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(nodeCPUs, resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(nodeMemory, resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(110, resource.DecimalSI),
	}
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: map[string]string{
			"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
		Spec: corev1.NodeSpec{PodCIDR: n.cidr.String(), PodCIDRs: []string{n.cidr.String()}},
	}
	nodes := k.opts.Client.CoreV1().Nodes()
	cur, err := nodes.Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, err = nodes.Get(ctx, n.name, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("kubelet: register node %s: %w", n.name, err)
	}
	now := metav1.Now()
	cur.Status = corev1.NodeStatus{
		Capacity: qty, Allocatable: qty,
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.lab.IP.String()}, {Type: corev1.NodeHostName, Address: n.name}},
		Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "netns kubelet is posting ready status",
				LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: now, LastTransitionTime: now},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: KubeletPort}},
		NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "v1.36.3-netns",
			ContainerRuntimeVersion: "netns://1"},
	}
	status := cur.Status
	// The node controllers write the Node too (taints, annotations): retry on conflict with a fresh copy.
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status = status
		_, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("kubelet: node %s status: %w", n.name, err)
	}
	return nil
}

// heartbeat renews the node's Lease every 10 s and its Ready heartbeat every 40 s, as the kubelet does.
func (k *Kubelet) heartbeat(ctx context.Context, n *node) {
	leases := k.opts.Client.CoordinationV1().Leases("kube-node-lease")
	renew := func() {
		now := metav1.NewMicroTime(time.Now())
		dur := int32(40)
		l, err := leases.Get(ctx, n.name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			l = &coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: n.name, Namespace: "kube-node-lease"},
				Spec: coordv1.LeaseSpec{HolderIdentity: &n.name, LeaseDurationSeconds: &dur, RenewTime: &now}}
			_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		} else if err == nil {
			l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &n.name, &dur, &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			k.log.Debug("renew node lease", "node", n.name, "err", err)
		}
	}
	renew()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		renew()
		if i%4 == 0 {
			if err := k.touchReady(ctx, n); err != nil && ctx.Err() == nil {
				k.log.Debug("node status heartbeat", "node", n.name, "err", err)
			}
		}
	}
}

func (k *Kubelet) touchReady(ctx context.Context, n *node) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := k.opts.Client.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for i := range cur.Status.Conditions {
			cur.Status.Conditions[i].LastHeartbeatTime = metav1.Now()
		}
		_, err = k.opts.Client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

func (k *Kubelet) nodeByName(name string) *node {
	for _, n := range k.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// watchPods dispatches every pod bound to one of the nodes to its worker.
func (k *Kubelet) watchPods(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(k.opts.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName!=" }))
	inf := f.Core().V1().Pods().Informer()
	dispatch := func(obj any, gone bool) {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				pod, _ = d.Obj.(*corev1.Pod)
			}
		}
		if pod == nil {
			return
		}
		n := k.nodeByName(pod.Spec.NodeName)
		if n == nil {
			return
		}
		k.mu.Lock()
		w := k.workers[pod.UID]
		if w == nil {
			if gone {
				k.mu.Unlock()
				return
			}
			w = newPodWorker(k, n, pod.UID)
			k.workers[pod.UID] = w
			k.wg.Go(func() { w.run(ctx) })
		}
		k.mu.Unlock()
		w.update(pod, gone)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { dispatch(obj, false) },
		UpdateFunc: func(_, obj any) { dispatch(obj, false) },
		DeleteFunc: func(obj any) { dispatch(obj, true) },
	}); err != nil {
		return fmt.Errorf("kubelet: watch pods: %w", err)
	}
	f.Start(ctx.Done())
	k.wg.Go(func() {
		<-ctx.Done()
		f.Shutdown()
	})
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return errors.New("kubelet: pod watch did not sync")
	}
	return nil
}

func (k *Kubelet) forget(uid types.UID) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.workers, uid)
}

// Stop kills every container, removes the pod namespaces and stops the heartbeats. Node objects stay.
func (k *Kubelet) Stop() {
	if k.cancel != nil {
		k.cancel()
	}
	k.wg.Wait()
	for _, n := range k.nodes {
		n.proxies.close()
	}
	k.dns.close()
}

// Pod describes a running pod for tests.
type Pod struct {
	// NS is the pod's network namespace (the node's, for host-network pods).
	NS lab.NS
	// IP is the pod's address.
	IP netip.Addr
	// Node is the node's name.
	Node string
}

// Pod returns the running pod namespace/name, or false.
func (k *Kubelet) Pod(namespace, name string) (Pod, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, w := range k.workers {
		if p, ok := w.info(namespace, name); ok {
			return p, true
		}
	}
	return Pod{}, false
}

// LogPath is where the kubelet writes the output of a pod's container (kept after the pod is gone).
func (k *Kubelet) LogPath(namespace, pod, container string) string {
	return filepath.Join(k.opts.Dir, "logs", namespace+"_"+pod, container+".log")
}

// ReadLog returns a container's output so far ("" when there is none).
func (k *Kubelet) ReadLog(namespace, pod, container string) string {
	b, _ := os.ReadFile(k.LogPath(namespace, pod, container))
	return string(b)
}

// hostsFile is the /etc/hosts of a container.
func (k *Kubelet) hostsFile(podName, ip string) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\t%s\n", ip, podName)
	if k.apiVIP.IsValid() {
		fmt.Fprintf(&b, "%s\tkubernetes kubernetes.default kubernetes.default.svc kubernetes.default.svc.cluster.local\n", k.apiVIP.Addr())
	}
	names := make([]string, 0, len(k.opts.Hosts))
	for name := range k.opts.Hosts {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Fprintf(&b, "%s\t%s\n", k.opts.Hosts[name], name)
	}
	return b.String()
}
