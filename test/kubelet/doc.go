// Package kubelet is a small kubelet for Ambit's end-to-end tier: it makes the nodes of a network-namespace lab
// (test/lab) into Kubernetes nodes of a real API server, and runs the pods the scheduler binds to them.
//
// For each lab node it registers a Node (spec.podCIDR 10.244.<i>.0/24, Ready, its fabric address as
// InternalIP) and renews its Lease. For each pod bound to such a node it:
//
//   - makes the pod's network: host-network pods share the node's namespace and IP; the others get their own
//     network namespace wired to the node with a veth, the way a point-to-point CNI does, and the next free
//     address of the node's pod CIDR;
//   - prepares the volumes: emptyDir, hostPath (mapped per node: /sys/fs/bpf is the node's own bpffs
//     directory), configMap, secret, downwardAPI and projected volumes, with service-account tokens from the
//     TokenRequest API bound to the pod, as the real kubelet does;
//   - runs each container's image as a local process: an image is a host executable (Options.Images) shown at
//     its path inside a private root. The process runs in the pod's network namespace and in its own mount
//     namespace with the volumes mounted at their mount paths and an /etc/hosts that names the control-plane
//     services; command, args and env (including fieldRef and resourceFieldRef) follow the pod spec;
//   - reaches the control plane the way kube-proxy would: the kubernetes Service (and any Options.Services)
//     answer on their ClusterIP inside every pod and node namespace and are forwarded to the API server and
//     istiod on the host's loopback;
//   - runs readiness and startup probes (httpGet, tcpSocket), restarts containers that exit
//     (restartPolicy), patches the pod status (IP, phase, conditions, container statuses);
//   - tears everything down when the pod is deleted, then removes the pod object.
//
// Nothing outlives the test process: pod namespaces are created as `ip netns add` does (package test/netns) and
// named after the lab (<lab>-n<i>-k<seq>), so the lab's Close, or the next lab.Sweep after a kill, removes them;
// container processes are started with package test/proc, so they die with the process that runs the kubelet.
//
// Deviations, by design: no images are pulled (unknown images fail the pod), no cgroups or resource limits,
// no user or capability changes (containers run as root), probes run at most every second, liveness probes
// are ignored, and only the kubernetes Service and Options.Services are reachable by ClusterIP without Ambit.
package kubelet
