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
//     namespace with the volumes mounted at their mount paths, the image's other files (Image.Files) and an
//     /etc/hosts that names the control-plane services, and in its own UTS namespace whose hostname is the pod's
//     name (the node's for host-network pods); command, args and env (including fieldRef and resourceFieldRef)
//     follow the pod spec;
//   - serves cluster DNS when Options.ClusterDNS is set: <service>.<namespace>.svc.cluster.local answers A and
//     AAAA with the Service's ClusterIPs, read from the API server at each query (as CoreDNS's kubernetes plugin
//     does for ClusterIP Services), at port 53 of that address in every pod and node namespace, and every
//     container's /etc/resolv.conf names it with the namespace's search path and ndots:5 (dnsPolicy
//     ClusterFirst); names outside the cluster domain come from a static table (Kubelet.SetDNSHost, as
//     CoreDNS's hosts plugin), so a test's "external" hosts resolve to in-lab addresses;
//   - enforces each container's securityContext (pod level, the container's fields winning) as the kubelet and
//     containerd/runc do, through the container init of package test/proc: runAsUser, runAsGroup (else the
//     image's USER, else root), supplementalGroups and fsGroup as supplementary groups, runAsNonRoot (the
//     container waits in CreateContainerConfigError with the kubelet's message), capabilities (containerd's
//     default set, drop, add, ALL; privileged gets all), allowPrivilegeEscalation: false as no_new_privs, and
//     readOnlyRootFilesystem (the private root read-only; volumes writable unless mounted readOnly). Volumes are
//     owned as the kubelet owns them: emptyDir 0777, fsGroup group ownership with the setgid bit, defaultMode,
//     and projected tokens 0600 owned by the pods' common runAsUser (or the fsGroup);
//   - reaches the control plane the way kube-proxy would: the kubernetes Service (and any Options.Services)
//     answer on their ClusterIP inside every pod and node namespace and are forwarded to the API server and
//     istiod on the host's loopback;
//   - runs readiness and startup probes (httpGet, tcpSocket), restarts containers that exit
//     (restartPolicy), patches the pod status (IP, phase, conditions, container statuses);
//   - tears everything down when the pod is deleted, then removes the pod object;
//   - serves the kubelet API that kube-apiserver proxies (Options.EgressSocket): pods/portforward over SPDY
//     (portforward.k8s.io: an error and a data stream per forwarded connection, the data stream spliced to
//     localhost:<port> in the pod's network namespace, a failure written to the error stream, as the kubelet
//     and containerd do; kubectl's WebSocket port-forward works because kube-apiserver tunnels it to SPDY),
//     pods/exec (remote-command v4 over SPDY, which kube-apiserver translates kubectl's WebSocket v5 into: the
//     command joins the container's mount and network namespaces through nsenter and runs under the container
//     init with the container's credentials, capabilities, root and environment; its stdin, stdout and stderr
//     are the streams asked for, its exit code goes back as a NonZeroExitCode status) and pods/log (the
//     container's output; follow=true keeps streaming until the pod is gone). The nodes' addresses
//     live in lab namespaces the host cannot route to, so kube-apiserver reaches them as through a Konnectivity
//     proxy: its "cluster" egress selection is HTTP CONNECT over that Unix socket, where a CONNECT to a node's
//     name or address at port 10250 (the port the nodes report) reaches this API and any other address (pods,
//     Services) is dialled from the first node's namespace.
//
// Nothing outlives the test process: pod namespaces are created as `ip netns add` does (package test/netns) and
// named after the lab (<lab>-n<i>-k<seq>), so the lab's Close, or the next lab.Sweep after a kill, removes them;
// container processes are started with package test/proc, so they die with the process that runs the kubelet.
//
// Deviations, by design: the kubelet API does not authenticate or authorize its caller (only kube-apiserver
// reaches it), exec allocates no TTY (tty=true is refused), attach and the read-only port are not served, and
// the log options other than follow are ignored;
// no images are pulled (unknown images fail the pod; an image's USER must be numeric),
// no cgroups or resource limits, no user namespaces, seccomp, AppArmor or SELinux, no sysctls, mount propagation
// is always private (mountPropagation is not emulated), /proc and /sys
// are the host's (writable for root) rather than masked, the image's files (the host's /usr and the executable)
// are read-only even without readOnlyRootFilesystem, a privileged container gets the capabilities the test
// process holds, probes run at most every second, liveness probes are ignored, and only the kubernetes Service
// and Options.Services are reachable by ClusterIP without Ambit; cluster DNS is served over TCP only (resolv.conf
// says use-vc), answers ClusterIP Services only (no headless, pod or SRV records), and every container (not every
// pod) has its own UTS namespace, with the same hostname.
package kubelet
