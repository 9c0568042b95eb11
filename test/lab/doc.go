// Package lab builds a small cluster of network namespaces on one machine for Ambit's root-only tests and for
// people (see hack/lab): N "node" namespaces joined by a fabric (a bridge in its own namespace), each with M "pod"
// namespaces wired as a point-to-point CNI would (the pod IP on the pod's eth0, a host route to it on the node's
// side of the veth, a default route via 169.254.1.1 / fe80::1 inside the pod).
//
// Addresses (i = node index, j = pod index, both from 0):
//
//	node i fabric:  172.30.0.(i+1)/24      fd00:30::(i+1)/64       on "eth0" in the node namespace
//	pod j on node i: 10.244.i.(j+2)/32     fd00:244:i::(j+2)/128   on "eth0" in the pod namespace
//	pod j host veth: "vp<j>" in node i's namespace (169.254.1.1/32 and fe80::1/64 as the pods' gateway)
//
// Conntrack is on in every node namespace, as on a real node: New installs KubeProxyTable there (a masquerade of
// pod traffic to the fabric's non-pod addresses and kube-proxy's drop of invalid forwarded packets), unless
// Options.NoConntrack is set.
//
// Every name a lab creates (network namespaces, bpffs directories) starts with its Name, which starts with
// "ambitlab-". A lab never touches the host's own interfaces, routes or sysctls: every link, address, route and
// sysctl it sets lives in a namespace it created. Namespaces are made as iproute2 makes them (package test/netns),
// so `ip netns exec` works on them and `ip netns add` elsewhere cannot hide them.
//
// Ownership. A lab belongs to the process that made it for as long as that process holds the flock on
// /run/ambit-labs/<name>.lock (package test/owner); the kernel releases it when the process dies, however it dies.
// Close removes everything. Sweep (which Start runs first) removes exactly the labs whose lock it can take, so a
// SIGKILLed test run's lab goes at the next run while a concurrent run's lab is never touched, and a fixed name
// (the demo's, the benchmarks') is used by one process at a time: New fails with ErrInUse for a second one and
// removes a dead owner's leftovers for the next one. Options.Keep marks a lab made by hand (hack/lab) to outlive
// its maker until Remove.
//
// Use Start in tests (it skips or fails via testutil.RequireRoot and registers cleanup) and New elsewhere.
package lab
