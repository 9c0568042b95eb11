// Package dnsname decides how the node agent's DNS proxy answers one query: from the mesh state (a
// Service's VIPs, a headless Service's endpoint addresses, a ServiceEntry host's addresses) or by
// forwarding it to the upstream resolver. It follows ztunnel's DNS proxy (src/dns/server.rs): names are
// matched exactly (the pod's resolver has already appended its search domains, resolv.conf ndots:5
// search "<ns>.svc.<domain> svc.<domain> <domain>"), and a name that is a known host with one of the
// client's search domains appended is answered with a CNAME to that host, which saves the client the
// rest of its search list.
//
// Resolve is a pure function of the query and a read-only Lookup of the state: no I/O, no goroutines. It
// imports only mesh/state; the DNS wire format lives in agent/dns.
package dnsname
