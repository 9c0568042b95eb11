package kubelet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/proc"
)

// podWorker runs one pod from its first sight to its removal.
type podWorker struct {
	k    *Kubelet
	n    *node
	uid  types.UID
	kick chan struct{}

	mu     sync.Mutex
	latest *corev1.Pod // guarded by mu
	gone   bool        // guarded by mu; the object was deleted
	sb     *sandbox    // guarded by mu
	// execable are the containers, for exec (set once with containers).
	execable []*container // guarded by mu

	// Owned by run.
	setupDone  bool
	dir        string
	containers []*container
	stopCtrs   context.CancelFunc
	ctrWG      sync.WaitGroup
	statusKick chan struct{}
	statusDone chan struct{}
	started    metav1.Time
}

// sandbox is a pod's network.
type sandbox struct {
	namespace, name string
	ns              lab.NS
	ip              netip.Addr
	own             bool // ns was made for the pod (not the node's)
	proxies         *proxies
}

func newPodWorker(k *Kubelet, n *node, uid types.UID) *podWorker {
	return &podWorker{k: k, n: n, uid: uid, kick: make(chan struct{}, 1), statusKick: make(chan struct{}, 1)}
}

func (w *podWorker) update(pod *corev1.Pod, gone bool) {
	w.mu.Lock()
	w.latest, w.gone = pod, w.gone || gone
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *podWorker) snapshot() (*corev1.Pod, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest, w.gone
}

func (w *podWorker) info(namespace, name string) (Pod, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sb == nil || w.sb.namespace != namespace || w.sb.name != name {
		return Pod{}, false
	}
	return Pod{NS: w.sb.ns, IP: w.sb.ip, Node: w.n.name}, true
}

func (w *podWorker) logf(msg string, args ...any) {
	pod, _ := w.snapshot()
	w.k.log.Info(msg, append([]any{"pod", pod.Namespace + "/" + pod.Name, "node", w.n.name}, args...)...)
}

// run handles the pod until it is gone (or the kubelet stops).
func (w *podWorker) run(ctx context.Context) {
	defer w.k.forget(w.uid)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			w.teardown(0)
			return
		case <-w.kick:
		case <-retry.C:
		}
		pod, gone := w.snapshot()
		switch {
		case gone:
			w.teardown(0)
			return
		case pod.DeletionTimestamp != nil:
			grace := time.Duration(ptrOr(pod.DeletionGracePeriodSeconds, 30)) * time.Second
			w.teardown(grace)
			// The kubelet finishes a graceful deletion once the pod's containers are gone.
			uid := pod.UID
			err := w.k.opts.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
				GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &uid}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
				w.logf("finish pod deletion", "err", err)
			}
			return
		case !w.setupDone:
			if err := w.setup(ctx, pod); err != nil {
				if ctx.Err() == nil {
					w.logf("pod setup; retrying", "err", err)
				}
				retry.Reset(time.Second)
			}
		}
	}
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// setup makes the sandbox and the volumes and starts the containers. It is retried until it succeeds; the
// sandbox survives a failed attempt.
func (w *podWorker) setup(ctx context.Context, pod *corev1.Pod) error {
	k, n := w.k, w.n
	w.mu.Lock()
	sb := w.sb
	w.mu.Unlock()
	if sb == nil {
		sb = &sandbox{namespace: pod.Namespace, name: pod.Name}
		if pod.Spec.HostNetwork {
			sb.ns, sb.ip = n.lab.NS, n.lab.IP
		} else {
			ip, err := n.ips.get()
			if err != nil {
				return err
			}
			n.mu.Lock()
			n.veth++
			seq := n.veth
			n.mu.Unlock()
			sb.ip, sb.own = ip, true
			ns, err := addNS(fmt.Sprintf("%s-n%d-k%d", k.opts.Lab.Name, n.lab.Index, seq))
			if err == nil {
				sb.ns = ns
				err = wirePod(n.lab.NS, ns, fmt.Sprintf("vk%d", seq), ip)
			}
			if err == nil {
				sb.proxies, err = startProxies(context.Background(), ns, k.serviceProxies(), k.log)
			}
			if err != nil {
				if sb.ns.Name != "" {
					_ = delNS(sb.ns.Name)
				}
				n.ips.put(ip)
				return fmt.Errorf("pod network: %w", err)
			}
		}
		w.mu.Lock()
		w.sb = sb
		w.mu.Unlock()
		w.started = metav1.Now()
		w.logf("pod network ready", "ip", sb.ip, "netns", sb.ns.Name)
	}
	ad := addrs{podIP: sb.ip.String(), hostIP: n.lab.IP.String()}
	w.dir = filepath.Join(k.opts.Dir, "pods", string(pod.UID))
	vols, err := k.prepareVolumes(ctx, pod, n, filepath.Join(w.dir, "volumes"), ad)
	if err != nil {
		return err
	}
	etc := filepath.Join(w.dir, "etc")
	if err := writeEtc(etc, k.hostsFile(pod.Name, sb.ip.String()), resolvConf(pod.Namespace, k.opts.ClusterDNS)); err != nil {
		return err
	}
	var ctrs []*container
	for i := range pod.Spec.Containers {
		spec := &pod.Spec.Containers[i]
		img, ok := k.opts.Images[imageRepository(spec.Image)]
		if !ok {
			return fmt.Errorf("container %s: image %s is not known to this kubelet", spec.Name, spec.Image)
		}
		env, envMap, err := k.containerEnv(pod, spec, ad, n)
		if err != nil {
			return fmt.Errorf("container %s: %w", spec.Name, err)
		}
		var mounts []mount
		for _, vm := range spec.VolumeMounts {
			host, ok := vols[vm.Name]
			if !ok {
				return fmt.Errorf("container %s: volume %s not found", spec.Name, vm.Name)
			}
			if vm.SubPath != "" {
				host = filepath.Join(host, vm.SubPath)
			}
			mounts = append(mounts, mount{host: host, path: vm.MountPath, readOnly: vm.ReadOnly})
		}
		logPath := k.LogPath(pod.Namespace, pod.Name, spec.Name)
		if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
			return err
		}
		ctr := &container{spec: *spec, logPath: logPath, imageID: "netns://" + img.Binary}
		sec, err := containerSecurity(pod, spec, img)
		if err != nil {
			// As the kubelet: the container waits with CreateContainerConfigError and the error as its message.
			ctr.waiting, ctr.message, ctr.configErr = "CreateContainerConfigError", err.Error(), err
			ctrs = append(ctrs, ctr)
			continue
		}
		root := filepath.Join(w.dir, "containers", spec.Name, "root")
		if err := os.MkdirAll(root, 0o755); err != nil {
			return err
		}
		hostname := pod.Name
		if pod.Spec.HostNetwork {
			hostname = n.name
		}
		script, err := launchScript(root, etc, hostname, img, mounts, sec)
		if err != nil {
			return fmt.Errorf("container %s: %w", spec.Name, err)
		}
		ctr.argv, ctr.env, ctr.script = command(spec, img, envMap), env, script
		es := sec.Security
		es.Root = root
		if ctr.execInit, err = es.InitArgv(); err != nil {
			return fmt.Errorf("container %s: %w", spec.Name, err)
		}
		ctrs = append(ctrs, ctr)
	}
	ctrCtx, cancel := context.WithCancel(context.Background())
	w.stopCtrs = cancel
	w.containers = ctrs
	w.mu.Lock()
	w.execable = ctrs
	w.mu.Unlock()
	w.statusDone = make(chan struct{})
	go w.statusLoop(ctrCtx)
	for _, c := range ctrs {
		w.ctrWG.Go(func() { w.supervise(ctrCtx, pod.Spec.RestartPolicy, c) })
	}
	w.setupDone = true
	return nil
}

func writeEtc(dir, hosts, resolv string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := map[string]string{
		"hosts":         hosts,
		"resolv.conf":   resolv,
		"nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
		"passwd":        "root:x:0:0:root:/root:/bin/sh\nambit:x:1337:1337::/nonexistent:/usr/sbin/nologin\n",
		"group":         "root:x:0:\nambit:x:1337:\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// teardown stops the containers (SIGTERM, then SIGKILL after grace), the status writer and the service
// proxies, and removes the pod's network namespace.
func (w *podWorker) teardown(grace time.Duration) {
	if w.stopCtrs != nil {
		w.stopCtrs()
		for _, c := range w.containers {
			c.signal(syscall.SIGTERM)
		}
		done := make(chan struct{})
		go func() {
			w.ctrWG.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(grace):
			for _, c := range w.containers {
				c.signal(syscall.SIGKILL)
			}
			<-done
		}
		<-w.statusDone
	}
	w.mu.Lock()
	sb := w.sb
	w.sb = nil
	w.mu.Unlock()
	if sb != nil && sb.own {
		sb.proxies.close()
		if err := delNS(sb.ns.Name); err != nil {
			w.k.log.Warn("remove pod network", "err", err)
		}
		w.n.ips.put(sb.ip)
	}
	if w.dir != "" {
		// Volumes may hold mount points of exited containers' private namespaces only: plain files remain.
		_ = os.RemoveAll(filepath.Join(w.dir, "volumes"))
	}
}

// container is one container's process and state.
type container struct {
	spec   corev1.Container
	argv   []string
	env    []string
	script string
	// execInit is the container init's argv prefix for a process that joins the container (exec): the
	// container's credentials and capabilities, chrooted to its root.
	execInit []string
	logPath  string
	imageID  string

	mu        sync.Mutex
	proc      *proc.Proc                       // guarded by mu; the running process
	running   bool                             // guarded by mu
	started   bool                             // guarded by mu; startup probe passed (or none)
	ready     bool                             // guarded by mu
	restarts  int32                            // guarded by mu
	startedAt metav1.Time                      // guarded by mu
	last      *corev1.ContainerStateTerminated // guarded by mu
	waiting   string                           // guarded by mu; reason while not running
	message   string                           // guarded by mu; the waiting reason's message
	configErr error                            // the container cannot be created (it never starts)
}

func (c *container) signal(sig syscall.Signal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		_ = c.proc.Signal(sig)
	}
}

// supervise runs the container and restarts it after it exits, as the restart policy says, until ctx ends.
func (w *podWorker) supervise(ctx context.Context, policy corev1.RestartPolicy, c *container) {
	if c.configErr != nil {
		w.logf("container config", "container", c.spec.Name, "err", c.configErr)
		w.kickStatus()
		<-ctx.Done()
		return
	}
	backoff := time.Second
	for ctx.Err() == nil {
		p, logf, err := startProcess(w.sbNS().Path(), c.script, c.argv, c.env, c.logPath)
		if err != nil {
			c.mu.Lock()
			c.waiting = "CreateContainerError"
			c.mu.Unlock()
			w.kickStatus()
			w.logf("start container", "container", c.spec.Name, "err", err)
		} else {
			c.mu.Lock()
			c.proc, c.running, c.startedAt, c.waiting = p, true, metav1.Now(), ""
			c.started = c.spec.StartupProbe == nil
			c.ready = c.spec.ReadinessProbe == nil && c.started
			c.mu.Unlock()
			w.kickStatus()
			pctx, stopProbes := context.WithCancel(ctx)
			probesDone := make(chan struct{})
			go func() {
				defer close(probesDone)
				w.probe(pctx, c)
			}()
			werr := p.Wait()
			stopProbes()
			<-probesDone
			logf.Close()
			code := 0
			var ee *exec.ExitError
			if errors.As(werr, &ee) {
				code = ee.ExitCode()
				if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
					code = 128 + int(st.Signal())
				}
			}
			c.mu.Lock()
			c.running, c.ready, c.started = false, false, false
			c.last = &corev1.ContainerStateTerminated{ExitCode: int32(code), StartedAt: c.startedAt, FinishedAt: metav1.Now(),
				Reason: map[bool]string{true: "Completed", false: "Error"}[code == 0]}
			c.mu.Unlock()
			w.kickStatus()
			if ctx.Err() != nil {
				return
			}
			w.logf("container exited", "container", c.spec.Name, "code", code)
			if policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && code == 0) {
				return
			}
			c.mu.Lock()
			c.restarts++
			c.waiting = "CrashLoopBackOff"
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (w *podWorker) sbNS() lab.NS {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sb.ns
}

func (w *podWorker) kickStatus() {
	select {
	case w.statusKick <- struct{}{}:
	default:
	}
}

// probe runs the startup probe until it passes, then the readiness probe, every second at most.
func (w *podWorker) probe(ctx context.Context, c *container) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		started := c.started
		c.mu.Unlock()
		p := c.spec.ReadinessProbe
		if !started {
			p = c.spec.StartupProbe
		}
		if p == nil {
			if !started {
				continue
			}
			c.mu.Lock()
			changed := !c.ready
			c.ready = true
			c.mu.Unlock()
			if changed {
				w.kickStatus()
			}
			continue
		}
		ok := w.check(ctx, c, p)
		c.mu.Lock()
		before := c.ready
		switch {
		case !started && ok:
			c.started = true
			c.ready = c.spec.ReadinessProbe == nil
		case started && ok:
			fails = 0
			c.ready = true
		case started && !ok:
			fails++
			if fails >= int(cmp.Or(p.FailureThreshold, 3)) {
				c.ready = false
			}
		}
		after := c.ready || (!started && c.started)
		c.mu.Unlock()
		if before != after || (!started && ok) {
			w.kickStatus()
		}
	}
}

// check runs one probe (httpGet or tcpSocket; exec probes pass) from inside the pod's network namespace.
func (w *podWorker) check(ctx context.Context, c *container, p *corev1.Probe) bool {
	w.mu.Lock()
	sb := w.sb
	w.mu.Unlock()
	if sb == nil {
		return false
	}
	timeout := time.Duration(cmp.Or(p.TimeoutSeconds, 1)) * time.Second
	port := func(ps intstr.IntOrString) string {
		if ps.Type == intstr.Int {
			return strconv.Itoa(ps.IntValue())
		}
		for _, cp := range c.spec.Ports {
			if cp.Name == ps.StrVal {
				return strconv.Itoa(int(cp.ContainerPort))
			}
		}
		return ps.StrVal
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return sb.ns.Dial(ctx, network, addr)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		host := cmp.Or(p.HTTPGet.Host, sb.ip.String())
		url := fmt.Sprintf("http://%s%s", net.JoinHostPort(host, port(p.HTTPGet.Port)), cmp.Or(p.HTTPGet.Path, "/"))
		req, err := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
		if err != nil {
			return false
		}
		hc := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case p.TCPSocket != nil:
		conn, err := dial(cctx, "tcp", net.JoinHostPort(cmp.Or(p.TCPSocket.Host, sb.ip.String()), port(p.TCPSocket.Port)))
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	return true
}

// statusLoop writes the pod status whenever the containers' state changes, until ctx ends.
func (w *podWorker) statusLoop(ctx context.Context) {
	defer close(w.statusDone)
	var written *corev1.PodStatus
	for {
		st := w.status()
		if written == nil || !reflect.DeepEqual(*written, st) {
			if err := w.writeStatus(ctx, st); err == nil {
				written = &st
			} else if ctx.Err() == nil {
				w.logf("write pod status", "err", err)
				w.kickStatus()
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-w.statusKick:
		}
	}
}

// status computes the pod status the kubelet reports (conditions without timestamps; writeStatus keeps them).
func (w *podWorker) status() corev1.PodStatus {
	w.mu.Lock()
	sb := w.sb
	w.mu.Unlock()
	st := corev1.PodStatus{Phase: corev1.PodPending, HostIP: w.n.lab.IP.String(),
		HostIPs: []corev1.HostIP{{IP: w.n.lab.IP.String()}}, StartTime: &w.started}
	if sb != nil {
		st.PodIP, st.PodIPs = sb.ip.String(), []corev1.PodIP{{IP: sb.ip.String()}}
	}
	allReady, anyRunning := true, false
	for _, c := range w.containers {
		c.mu.Lock()
		cs := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: c.imageID, Ready: c.ready,
			RestartCount: c.restarts, Started: new(bool)}
		*cs.Started = c.running && c.started
		switch {
		case c.running:
			anyRunning = true
			cs.ContainerID = "netns://" + strconv.Itoa(c.proc.Pid())
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.startedAt}
		case c.waiting != "":
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waiting, Message: c.message}
		case c.last != nil:
			cs.State.Terminated = c.last.DeepCopy()
		default:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		}
		if c.last != nil && (c.running || c.waiting != "") {
			cs.LastTerminationState.Terminated = c.last.DeepCopy()
		}
		allReady = allReady && c.ready
		c.mu.Unlock()
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	if anyRunning || len(w.containers) > 0 && st.ContainerStatuses[0].RestartCount > 0 {
		st.Phase = corev1.PodRunning
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s}
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, sb != nil), cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, allReady), cond(corev1.PodReady, allReady),
	}
	return st
}

// writeStatus stores st as the pod's status, keeping the scheduler's conditions and unchanged transition times.
func (w *podWorker) writeStatus(ctx context.Context, st corev1.PodStatus) error {
	pods := w.k.opts.Client.CoreV1().Pods(w.sbNamespace())
	for range 5 {
		pod, _ := w.snapshot()
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.UID != w.uid {
			return nil
		}
		next := st.DeepCopy()
		now := metav1.Now()
		old := map[corev1.PodConditionType]corev1.PodCondition{}
		for _, c := range cur.Status.Conditions {
			old[c.Type] = c
		}
		for i := range next.Conditions {
			c := &next.Conditions[i]
			c.LastTransitionTime = now
			if o, ok := old[c.Type]; ok && o.Status == c.Status {
				c.LastTransitionTime = o.LastTransitionTime
			}
			delete(old, c.Type)
		}
		for _, c := range cur.Status.Conditions {
			if _, keep := old[c.Type]; keep {
				next.Conditions = append(next.Conditions, c)
			}
		}
		next.QOSClass = cur.Status.QOSClass // set by the API server at creation, immutable
		cur.Status = *next
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		return err
	}
	return errors.New("pod status: too many conflicts")
}

func (w *podWorker) sbNamespace() string {
	pod, _ := w.snapshot()
	return pod.Namespace
}
