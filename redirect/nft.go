package redirect

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// nftConfig is what the nftables rulesets depend on.
type nftConfig struct {
	Table                    string
	Marks                    Marks
	Outbound, Inbound, HBONE uint16 // listener ports
	InboundDNAT              uint16 // listener port for node-DNATed connections to enrolled pods; 0: none (drop them)
	HBONEPort                uint16 // original destination port of inbound HBONE
	// DNSUDP and DNSTCP are the ports of the DNS socket and listener; 0 when DNS capture is off.
	DNSUDP, DNSTCP uint16
	NoTrack        bool
}

// dnsNoTrack renders the conntrack exemption of captured DNS (both modes): pods' UDP queries in raw
// prerouting (ModeEBPF exempts every packet it marked already) and the replies the agent sends from the
// nameservers' addresses in raw output. Tracked, a node's DNAT of the nameserver's Service address
// (kube-proxy) would rewrite the query's destination before the agent reads it.
func (c nftConfig) dnsNoTrack(b *strings.Builder, t string, prerouting bool) {
	if c.DNSUDP == 0 || !c.NoTrack {
		return
	}
	if prerouting {
		fmt.Fprintf(b, "add rule %s raw meta l4proto udp udp dport %d meta iif . ip saddr @podsrc4 notrack\n", t, DNSPort)
		fmt.Fprintf(b, "add rule %s raw meta l4proto udp udp dport %d meta iif . ip6 saddr @podsrc6 notrack\n", t, DNSPort)
	}
	fmt.Fprintf(b, "add rule %s rawout meta l4proto udp udp sport %d socket transparent 1 notrack\n", t, DNSPort)
}

// markSet is the nft statement that sets the capture mark under its mask, keeping the other bits.
func (c nftConfig) markSet() string {
	return fmt.Sprintf("meta mark set meta mark & %#08x | %#08x", ^c.Marks.CaptureMask, c.Marks.Capture)
}

const synOnly = "tcp flags & (fin | syn | rst | ack) == syn"

// ownSocket matches packets whose socket is one the agent dialled (SocketFactory marks them with the own mark;
// the listeners and the connections they accept carry no mark). A socket that is not a full one (a request or
// TIME_WAIT socket) does not match.
func (c nftConfig) ownSocket() string {
	return fmt.Sprintf("socket mark & %#08x == %#08x", c.Marks.OwnMask, c.Marks.Own)
}

// rawOutput renders the rule of the rawout chain, the output half of the conntrack exemption (both modes): the
// packets of the connections the agent's transparent listeners accepted skip conntrack as their peers' packets do in the raw prerouting
// chain. Tracked, the agent's first packet after the SYN-ACK (which conntrack finds invalid) would make
// conntrack pick the connection up mid-stream in the reverse direction: the entry's "original" destination
// is then the client, which SO_ORIGINAL_DST returns, and node NAT rules (a masquerade of pod sources) would
// rewrite the agent's replies. The connections the agent dials carry the own mark and stay tracked both
// ways (see ownSocket in the raw chains), so node NAT applies to them as to the pods' own connections.
func (c nftConfig) rawOutput(b *strings.Builder, t string) {
	fmt.Fprintf(b, "add rule %s rawout meta l4proto tcp meta mark & %#08x != %#08x socket transparent 1 notrack\n",
		t, c.Marks.OwnMask, c.Marks.Own)
}

// postDNAT renders the postdnat chain (both modes): connections to enrolled pods that the node destination-NATed
// itself. Capture (the tc program, the mangle chain) looks at a packet before netfilter's DNAT (priority dstnat)
// rewrites it, so it saw the address the client dialled: a ClusterIP, a NodePort or a LoadBalancer address that
// kube-proxy translates to a pod's. This chain runs after the DNAT (dstnat + 10): the first SYN of such a
// connection to an enrolled pod is tproxied to the InboundDNAT listener, whose sockets keep the connection
// tracked (conntrack must undo the DNAT on the agent's replies), and the later packets of the connection reach
// the agent's socket (a socket lookup with the rewritten address, which the mangle chain's lookup before the
// DNAT cannot find). "ct status dnat" restricts it to translated connections in the original direction (packets
// that skip conntrack, the other captured ones, have no status), so no other packet pays for a socket lookup.
// Without an InboundDNAT listener, or when the agent is down, the SYNs are dropped: never passed to the pod.
// Packets capture already marked (the mangle chain, the tc program) are left alone.
func (c nftConfig) postDNAT(b *strings.Builder, t string) {
	fmt.Fprintf(b, "add chain %s postdnat { type filter hook prerouting priority dstnat + 10; policy accept; }\n", t)
	fmt.Fprintf(b, "flush chain %s postdnat\n", t)
	// Not already captured (with DisableNoTrack, an enrolled pod's outbound SYN to a ClusterIP is tracked and
	// DNATed too, after the capture mark sent it to the outbound listener).
	dnat := fmt.Sprintf("meta l4proto tcp meta mark & %#08x != %#08x ct direction original ct status dnat",
		c.Marks.CaptureMask, c.Marks.Capture)
	if c.InboundDNAT != 0 {
		mark := c.markSet()
		fmt.Fprintf(b, "add rule %s postdnat %s %s ip daddr @pods4 tproxy ip to :%d %s accept\n", t, dnat, synOnly, c.InboundDNAT, mark)
		fmt.Fprintf(b, "add rule %s postdnat %s %s ip6 daddr @pods6 tproxy ip6 to :%d %s accept\n", t, dnat, synOnly, c.InboundDNAT, mark)
	}
	fmt.Fprintf(b, "add rule %s postdnat %s %s ip daddr @pods4 drop\n", t, dnat, synOnly)
	fmt.Fprintf(b, "add rule %s postdnat %s %s ip6 daddr @pods6 drop\n", t, dnat, synOnly)
	if c.InboundDNAT != 0 {
		fmt.Fprintf(b, "add rule %s postdnat %s socket transparent 1 %s accept\n", t, dnat, c.markSet())
	}
}

// ownConnmark renders the rules (both modes) that deliver every reply of a connection the agent dialled to the
// agent, whatever NAT the node applied to it: in output, the first packet of such a connection (own mark) stamps
// the own mark into the connection's conntrack mark (ct mark bits under OwnMask); in prerouting (after conntrack),
// packets in the reply direction of a connection so stamped get the capture mark and so reach the agent's
// socket through the local routing table. Without it, a connection the agent dials from a pod's address to an
// address the node destination-NATs in output (kube-proxy's ClusterIP or LoadBalancer address for a Service the
// agent does not route itself) gets its replies addressed to the pod's address from the translated backend,
// which neither the program's socket lookup nor netfilter's (both see the backend, not the address the socket
// is connected to) finds: the node forwards them to the pod instead. The socket lookup only finds the agent's
// socket once conntrack has undone the NAT on local delivery (LOCAL_IN).
func (c nftConfig) ownConnmark(b *strings.Builder, t string) {
	m := c.Marks
	fmt.Fprintf(b, "add chain %s ownout { type filter hook output priority mangle; policy accept; }\n", t)
	fmt.Fprintf(b, "flush chain %s ownout\n", t)
	fmt.Fprintf(b, "add rule %s ownout meta l4proto tcp meta mark & %#08x == %#08x ct state new ct mark set ct mark & %#08x | %#08x\n",
		t, m.OwnMask, m.Own, ^m.OwnMask, m.Own)
}

// ownReply is the prerouting rule of ownConnmark (in the mangle chain).
func (c nftConfig) ownReply(b *strings.Builder, t string) {
	m := c.Marks
	fmt.Fprintf(b, "add rule %s mangle meta l4proto tcp ct direction reply ct mark & %#08x == %#08x %s accept\n",
		t, m.OwnMask, m.Own, c.markSet())
}

// tproxyRuleset renders the transaction that installs (or re-adopts) ModeTPROXY's table: sets of enrolled pods
// (kept across re-adoption), raw chains (prerouting and output) that exempt captured flows from conntrack but
// for the agent's own dials (ownSocket, rawOutput), and a mangle chain that
// tproxies the first SYN of new connections of enrolled pods to the listeners and keeps the other packets of
// the agent's transparent sockets local. Only SYNs are tproxied, so connections that existed before enrollment
// keep their direct path.
func tproxyRuleset(c nftConfig) string {
	var b strings.Builder
	t := "inet " + c.Table
	fmt.Fprintf(&b, "add table %s\n", t)
	fmt.Fprintf(&b, "add set %s pods4 { type ipv4_addr; }\n", t)
	fmt.Fprintf(&b, "add set %s pods6 { type ipv6_addr; }\n", t)
	fmt.Fprintf(&b, "add set %s podsrc4 { type iface_index . ipv4_addr; }\n", t)
	fmt.Fprintf(&b, "add set %s podsrc6 { type iface_index . ipv6_addr; }\n", t)
	fmt.Fprintf(&b, "add chain %s raw { type filter hook prerouting priority raw; policy accept; }\n", t)
	fmt.Fprintf(&b, "add chain %s rawtransparent\n", t)
	fmt.Fprintf(&b, "add chain %s rawout { type filter hook output priority raw; policy accept; }\n", t)
	fmt.Fprintf(&b, "add chain %s mangle { type filter hook prerouting priority mangle; policy accept; }\n", t)
	fmt.Fprintf(&b, "flush chain %s raw\n", t)
	fmt.Fprintf(&b, "flush chain %s rawtransparent\n", t)
	fmt.Fprintf(&b, "flush chain %s rawout\n", t)
	fmt.Fprintf(&b, "flush chain %s mangle\n", t)
	// Rule order matters (here and in raw): the first SYN of a new connection of an enrolled pod is captured
	// whatever sockets exist; other packets that hit a full wildcard socket (a listener, possibly the agent's
	// own 0.0.0.0:15008) are left alone; the rest that belong to a transparent socket (the agent's accepted or
	// spoofed connections, and their half-open request sockets, for which "socket wildcard" never matches)
	// stay local.
	if c.NoTrack {
		fmt.Fprintf(&b, "add rule %s raw meta l4proto tcp %s meta iif . ip saddr @podsrc4 notrack\n", t, synOnly)
		fmt.Fprintf(&b, "add rule %s raw meta l4proto tcp %s meta iif . ip6 saddr @podsrc6 notrack\n", t, synOnly)
		fmt.Fprintf(&b, "add rule %s raw meta l4proto tcp %s ip daddr @pods4 notrack\n", t, synOnly)
		fmt.Fprintf(&b, "add rule %s raw meta l4proto tcp %s ip6 daddr @pods6 notrack\n", t, synOnly)
		fmt.Fprintf(&b, "add rule %s raw meta l4proto tcp socket wildcard 1 return\n", t)
		// Packets of transparent sockets but those the agent dialled (a jump, so that the packets of other
		// sockets pay for no more socket lookups than before).
		fmt.Fprintf(&b, "add rule %s raw meta l4proto tcp socket transparent 1 jump rawtransparent\n", t)
		fmt.Fprintf(&b, "add rule %s rawtransparent %s return\n", t, c.ownSocket())
		fmt.Fprintf(&b, "add rule %s rawtransparent notrack\n", t)
		c.rawOutput(&b, t)
		c.dnsNoTrack(&b, t, true)
	}
	mark := c.markSet()
	m := c.Marks
	if c.DNSUDP != 0 {
		// A query with no DNS socket to take it (the agent is restarting) goes on to its nameserver.
		fmt.Fprintf(&b, "add rule %s mangle meta l4proto udp udp dport %d meta iif . ip saddr @podsrc4 tproxy ip to :%d %s accept\n", t, DNSPort, c.DNSUDP, mark)
		fmt.Fprintf(&b, "add rule %s mangle meta l4proto udp udp dport %d meta iif . ip6 saddr @podsrc6 tproxy ip6 to :%d %s accept\n", t, DNSPort, c.DNSUDP, mark)
	}
	fmt.Fprintf(&b, "add rule %s mangle meta l4proto != tcp return\n", t)
	c.ownReply(&b, t)
	fmt.Fprintf(&b, "add rule %s mangle meta mark & %#08x == %#08x return\n", t, m.OwnMask, m.Own)
	if c.DNSTCP != 0 {
		fmt.Fprintf(&b, "add rule %s mangle %s tcp dport %d meta iif . ip saddr @podsrc4 tproxy ip to :%d %s accept\n", t, synOnly, DNSPort, c.DNSTCP, mark)
		fmt.Fprintf(&b, "add rule %s mangle %s tcp dport %d meta iif . ip6 saddr @podsrc6 tproxy ip6 to :%d %s accept\n", t, synOnly, DNSPort, c.DNSTCP, mark)
	}
	fmt.Fprintf(&b, "add rule %s mangle %s meta iif . ip saddr @podsrc4 tproxy ip to :%d %s accept\n", t, synOnly, c.Outbound, mark)
	fmt.Fprintf(&b, "add rule %s mangle %s meta iif . ip6 saddr @podsrc6 tproxy ip6 to :%d %s accept\n", t, synOnly, c.Outbound, mark)
	fmt.Fprintf(&b, "add rule %s mangle %s ip daddr @pods4 tcp dport %d tproxy ip to :%d %s accept\n", t, synOnly, c.HBONEPort, c.HBONE, mark)
	fmt.Fprintf(&b, "add rule %s mangle %s ip6 daddr @pods6 tcp dport %d tproxy ip6 to :%d %s accept\n", t, synOnly, c.HBONEPort, c.HBONE, mark)
	fmt.Fprintf(&b, "add rule %s mangle %s ip daddr @pods4 tproxy ip to :%d %s accept\n", t, synOnly, c.Inbound, mark)
	fmt.Fprintf(&b, "add rule %s mangle %s ip6 daddr @pods6 tproxy ip6 to :%d %s accept\n", t, synOnly, c.Inbound, mark)
	// No listener (the agent is restarting): hold the SYN (the client retransmits) rather than let it pass.
	fmt.Fprintf(&b, "add rule %s mangle %s meta iif . ip saddr @podsrc4 drop\n", t, synOnly)
	fmt.Fprintf(&b, "add rule %s mangle %s meta iif . ip6 saddr @podsrc6 drop\n", t, synOnly)
	fmt.Fprintf(&b, "add rule %s mangle %s ip daddr @pods4 drop\n", t, synOnly)
	fmt.Fprintf(&b, "add rule %s mangle %s ip6 daddr @pods6 drop\n", t, synOnly)
	fmt.Fprintf(&b, "add rule %s mangle socket wildcard 1 return\n", t)
	fmt.Fprintf(&b, "add rule %s mangle socket transparent 1 %s accept\n", t, mark)
	c.ownConnmark(&b, t)
	c.postDNAT(&b, t)
	return b.String()
}

// ebpfRuleset renders ModeEBPF's table (any ModeTPROXY content of it is deleted first):
//   - unless NoTrack is off, the raw chains that exempt captured connections from conntrack: in prerouting the
//     packets the program marked, but for replies to the agent's own dials (ownSocket), and in output the
//     agent's packets on accepted connections (rawOutput);
//   - one mangle rule for replies to the agent's own transparent connections that the node source-NATs (egress
//     that leaves with the pod's IP through a masquerade): the program sees them at tc ingress before conntrack
//     restores the pod's address, so it cannot find the agent's socket; netfilter's socket lookup can (it
//     uses the connection's original tuple when conntrack source-NATed it, IPv4 and IPv6), and the capture
//     mark routes them to the agent. Only TCP addressed to the node itself pays for the lookup;
//   - ownConnmark's rules, for replies to the agent's dials that the node destination-NATed;
//   - the postdnat chain and its sets of enrolled addresses. Its ct expressions (and ownConnmark's) turn conntrack
//     on in the node namespace, where kube-proxy has turned it on already on any node it DNATs on.
func ebpfRuleset(c nftConfig) string {
	var b strings.Builder
	t := "inet " + c.Table
	fmt.Fprintf(&b, "add table %s\n", t)
	fmt.Fprintf(&b, "delete table %s\n", t)
	fmt.Fprintf(&b, "add table %s\n", t)
	if c.NoTrack {
		captured := fmt.Sprintf("meta mark & %#08x == %#08x", c.Marks.CaptureMask, c.Marks.Capture)
		fmt.Fprintf(&b, "add chain %s raw { type filter hook prerouting priority raw; policy accept; }\n", t)
		fmt.Fprintf(&b, "add rule %s raw %s meta l4proto tcp tcp flags & (syn | ack) != syn %s return\n", t, captured, c.ownSocket())
		fmt.Fprintf(&b, "add rule %s raw %s notrack\n", t, captured)
		fmt.Fprintf(&b, "add chain %s rawout { type filter hook output priority raw; policy accept; }\n", t)
		c.rawOutput(&b, t)
		c.dnsNoTrack(&b, t, false)
	}
	fmt.Fprintf(&b, "add chain %s mangle { type filter hook prerouting priority mangle; policy accept; }\n", t)
	c.ownReply(&b, t)
	fmt.Fprintf(&b, "add rule %s mangle meta l4proto tcp fib daddr type local socket transparent 1 %s accept\n", t, c.markSet())
	c.ownConnmark(&b, t)
	// The enrolled pods' addresses, for postdnat (the program keeps its own copy in the pods map).
	fmt.Fprintf(&b, "add set %s pods4 { type ipv4_addr; }\n", t)
	fmt.Fprintf(&b, "add set %s pods6 { type ipv6_addr; }\n", t)
	c.postDNAT(&b, t)
	return b.String()
}

// deleteTableRuleset removes the table whether or not it exists.
func deleteTableRuleset(table string) string {
	return fmt.Sprintf("add table inet %s\ndelete table inet %s\n", table, table)
}

// nftPod is one enrolled pod as ModeTPROXY stores it: its addresses with their host interface names.
type nftPod struct {
	UID   string
	Addrs map[netip.Addr]string // address -> host-side interface name
}

func setSuffix(a netip.Addr) string {
	if a.Is4() {
		return "4"
	}
	return "6"
}

// nftQuote quotes s for nft. UIDs are validated to printable characters without quotes.
func nftQuote(s string) string { return `"` + s + `"` }

// enrollRuleset renders the transaction that moves a pod's set elements from old (nil if not enrolled) to new.
func enrollRuleset(table string, old *nftPod, pod nftPod) string {
	var b strings.Builder
	t := "inet " + table
	if old != nil {
		for _, a := range sortedAddrs(old.Addrs) {
			if pod.Addrs[a] == old.Addrs[a] && old.UID == pod.UID {
				continue
			}
			s := setSuffix(a)
			fmt.Fprintf(&b, "delete element %s pods%s { %s }\n", t, s, a)
			fmt.Fprintf(&b, "delete element %s podsrc%s { %s . %s }\n", t, s, nftQuote(old.Addrs[a]), a)
		}
	}
	for _, a := range sortedAddrs(pod.Addrs) {
		if old != nil && old.Addrs[a] == pod.Addrs[a] && old.UID == pod.UID {
			continue
		}
		s := setSuffix(a)
		fmt.Fprintf(&b, "add element %s pods%s { %s comment %s }\n", t, s, a, nftQuote(pod.UID))
		fmt.Fprintf(&b, "add element %s podsrc%s { %s . %s }\n", t, s, nftQuote(pod.Addrs[a]), a)
	}
	return b.String()
}

// unenrollRuleset renders the transaction that removes a pod's set elements.
func unenrollRuleset(table string, old nftPod) string {
	var b strings.Builder
	t := "inet " + table
	for _, a := range sortedAddrs(old.Addrs) {
		s := setSuffix(a)
		fmt.Fprintf(&b, "delete element %s pods%s { %s }\n", t, s, a)
		fmt.Fprintf(&b, "delete element %s podsrc%s { %s . %s }\n", t, s, nftQuote(old.Addrs[a]), a)
	}
	return b.String()
}

func sortedAddrs(m map[netip.Addr]string) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// parseNFTPods reads the enrolled pods from `nft -j list table inet <table>` output: UIDs from the comments of
// the pods4/pods6 elements and interface names from the podsrc4/podsrc6 elements.
func parseNFTPods(data []byte) (map[string]*nftPod, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Name string            `json:"name"`
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse nft json: %w", err)
	}
	uids := map[netip.Addr]string{}
	ifaces := map[netip.Addr]string{}
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, raw := range o.Set.Elem {
			switch o.Set.Name {
			case "pods4", "pods6":
				var e struct {
					Elem struct {
						Val     string `json:"val"`
						Comment string `json:"comment"`
					} `json:"elem"`
				}
				if err := json.Unmarshal(raw, &e); err != nil {
					return nil, fmt.Errorf("parse element of %s: %w", o.Set.Name, err)
				}
				a, err := netip.ParseAddr(e.Elem.Val)
				if err != nil {
					return nil, fmt.Errorf("parse element of %s: %w", o.Set.Name, err)
				}
				uids[a] = e.Elem.Comment
			case "podsrc4", "podsrc6":
				var e struct {
					Concat []string `json:"concat"`
				}
				if err := json.Unmarshal(raw, &e); err != nil || len(e.Concat) != 2 {
					return nil, fmt.Errorf("parse element of %s: %s", o.Set.Name, raw)
				}
				a, err := netip.ParseAddr(e.Concat[1])
				if err != nil {
					return nil, fmt.Errorf("parse element of %s: %w", o.Set.Name, err)
				}
				ifaces[a] = e.Concat[0]
			}
		}
	}
	pods := map[string]*nftPod{}
	for a, uid := range uids {
		p := pods[uid]
		if p == nil {
			p = &nftPod{UID: uid, Addrs: map[netip.Addr]string{}}
			pods[uid] = p
		}
		p.Addrs[a] = ifaces[a]
	}
	return pods, nil
}
