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
// Every name a lab creates (network namespaces, bpffs directories) starts with its Name, which starts with
// "ambitlab-". A lab never touches the host's own interfaces, routes or sysctls: every link, address, route and
// sysctl it sets lives in a namespace it created. Close removes everything; labs left behind by a killed test
// process are removed by Sweep, which Start runs first.
//
// Use Start in tests (it skips or fails via testutil.RequireRoot and registers cleanup) and New elsewhere.
package lab
