package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/bpf"
)

// linkPinPrefix names pinned TCX ingress links: <PinDir>/links/tcx_<ifindex>; egressPinPrefix the egress ones
// (the fail-closed backstop on pod interfaces): <PinDir>/links/tcxe_<ifindex>.
const (
	linkPinPrefix   = "tcx_"
	egressPinPrefix = "tcxe_"
)

// lookupPinName names the pinned sk_lookup link of the node namespace: <PinDir>/links/sk_lookup.
const lookupPinName = "sk_lookup"

// ebpfRedirector is ModeEBPF: the capture program attached with TCX at ingress of every interface of the node
// namespace (and the fail-closed backstop at egress of pod interfaces), its listener selection attached to the
// namespace (sk_lookup), enrollment in the pinned pods map.
type ebpfRedirector struct {
	o       Options
	ns      nsRunner
	log     *slog.Logger
	nl      *netlink.Handle
	objs    bpf.CaptureObjects
	linkDir string
	lookup  link.Link // the sk_lookup link of the node namespace
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu     sync.Mutex
	closed bool
	links  map[int]link.Link       // attached (or adopted) TCX ingress links by ifindex
	egress map[int]link.Link       // attached (or adopted) TCX egress links (capture_egress) by ifindex
	skip   map[int]bool            // interfaces capture cannot attach to (warned about once)
	pods   map[string][]netip.Addr // enrolled pods: UID -> addresses
	names  map[string]string       // UID -> Pod.Name, for pods enrolled by this process
	// nftSet holds the addresses in the nftables sets pods4/pods6 (the postdnat chain's copy of the enrolled
	// addresses); nil when nftables is not used.
	nftSet map[netip.Addr]bool
}

var _ Redirector = (*ebpfRedirector)(nil)

func newEBPF(ctx context.Context, o Options, ns nsRunner) (_ *ebpfRedirector, err error) {
	if err := probeEBPF(o); err != nil {
		return nil, err
	}
	if err := checkPinDir(o); err != nil {
		return nil, err
	}
	r := &ebpfRedirector{
		o:       o,
		ns:      ns,
		log:     o.Logger.With("component", "redirect", "mode", ModeEBPF),
		linkDir: filepath.Join(o.PinDir, "links"),
		links:   map[int]link.Link{},
		egress:  map[int]link.Link{},
		skip:    map[int]bool{},
		pods:    map[string][]netip.Addr{},
		names:   map[string]string{},
	}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	if r.nl, err = ns.handle(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.linkDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", r.linkDir, err)
	}
	// A TPROXY table left by an earlier run in the other mode would capture twice.
	if haveNFT() == nil {
		if err := applyNFT(ctx, ns, deleteTableRuleset(o.NFTTable)); err != nil {
			return nil, fmt.Errorf("remove tproxy table: %w", err)
		}
	}
	if err := r.load(); err != nil {
		return nil, err
	}
	if err := r.setListeners(o.Listeners); err != nil {
		return nil, err
	}
	if err := installRouting(r.nl, o); err != nil {
		return nil, err
	}
	if err := haveNFT(); err != nil {
		r.log.Warn("no nftables: captured flows stay in conntrack (node NAT may break them), replies to egress "+
			"the node masquerades cannot reach the agent, and connections the node destination-NATs to enrolled pods "+
			"(ClusterIP, NodePort through kube-proxy) reach them around the agent", "reason", err)
	} else if err := r.installNFT(ctx); err != nil {
		return nil, fmt.Errorf("install nftables rules: %w", err)
	}
	// Listener selection first: the tc program adopted links get from here on only marks SYNs.
	if err := r.attachLookup(); err != nil {
		return nil, err
	}
	if err := r.adoptLinks(); err != nil {
		return nil, err
	}
	if err := r.attachAll(); err != nil {
		return nil, err
	}
	if err := r.syncHooked(); err != nil {
		return nil, err
	}
	if err := r.readPods(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	err = r.syncNFTSetLocked(ctx)
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	if err := r.watchLinks(wctx); err != nil {
		return nil, err
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.sweepDraining(wctx)
	}()
	r.log.Info("capture ready", "links", len(r.links), "pods", len(r.pods), "pin_dir", o.PinDir)
	return r, nil
}

func (r *ebpfRedirector) nftConfig() nftConfig {
	c := nftConfig{Table: r.o.NFTTable, Marks: r.o.Marks, NoTrack: !r.o.DisableNoTrack}
	if l := r.o.Listeners.InboundDNAT; l != nil {
		c.InboundDNAT = listenerPort(l)
	}
	if l := r.o.Listeners; l.dns() {
		c.DNSUDP, c.DNSTCP = l.DNSUDP.local.Port(), listenerPort(l.DNSTCP)
	}
	return c
}

// installNFT installs ebpfRuleset. Without the tproxy expression (nft_tproxy missing), node-DNATed connections to
// enrolled pods cannot be steered to the agent: the table is installed with postdnat dropping them.
func (r *ebpfRedirector) installNFT(ctx context.Context) error {
	c := r.nftConfig()
	err := applyNFT(ctx, r.ns, ebpfRuleset(c))
	if err != nil && c.InboundDNAT != 0 {
		c.InboundDNAT = 0
		if err2 := applyNFT(ctx, r.ns, ebpfRuleset(c)); err2 == nil {
			r.log.Warn("nftables tproxy unavailable: connections to enrolled pods that the node destination-NATs "+
				"(ClusterIP, NodePort, LoadBalancer through kube-proxy) are dropped", "reason", err)
			err = nil
		}
	}
	if err != nil {
		return err
	}
	r.nftSet = map[netip.Addr]bool{}
	return nil
}

// syncNFTSetLocked makes the nftables sets pods4/pods6 hold exactly the enrolled (not draining) addresses. It
// requires r.mu.
func (r *ebpfRedirector) syncNFTSetLocked(ctx context.Context) error {
	if r.nftSet == nil {
		return nil
	}
	want := map[netip.Addr]bool{}
	for _, addrs := range r.pods {
		for _, a := range addrs {
			want[a] = true
		}
	}
	var b strings.Builder
	t := "inet " + r.o.NFTTable
	for _, a := range sortedSet(r.nftSet) {
		if !want[a] {
			fmt.Fprintf(&b, "delete element %s pods%s { %s }\n", t, setSuffix(a), a)
		}
	}
	for _, a := range sortedSet(want) {
		if !r.nftSet[a] {
			fmt.Fprintf(&b, "add element %s pods%s { %s }\n", t, setSuffix(a), a)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if err := applyNFT(ctx, r.ns, b.String()); err != nil {
		return fmt.Errorf("update nftables pod sets: %w", err)
	}
	r.nftSet = want
	return nil
}

func sortedSet(m map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// load loads the program with the runtime constants and the pinned maps (created on first use). Pinned maps
// whose layout changed (an upgrade) are replaced, which drops their entries.
func (r *ebpfRedirector) load() error {
	spec, err := bpf.LoadCapture()
	if err != nil {
		return fmt.Errorf("load capture spec: %w", err)
	}
	m := r.o.Marks
	vars := []struct {
		name string
		v    any
	}{
		{bpf.CaptureVarCaptureMark, m.Capture},
		{bpf.CaptureVarCaptureMarkMask, m.CaptureMask},
		{bpf.CaptureVarOwnMark, m.Own},
		{bpf.CaptureVarOwnMarkMask, m.OwnMask},
		{bpf.CaptureVarHbonePort, r.o.HBONEPort},
		{bpf.CaptureVarDnsCapture, boolByte(r.o.Listeners.dns())},
	}
	for _, v := range vars {
		if err := spec.Variables[v.name].Set(v.v); err != nil {
			return fmt.Errorf("set %s: %w", v.name, err)
		}
	}
	r.dropIncompatiblePins(spec)
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: r.o.PinDir}}
	err = spec.LoadAndAssign(&r.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		r.log.Warn("pinned maps have an old layout; replacing them (enrollment is lost)", "error", err)
		for name := range spec.Maps {
			os.Remove(filepath.Join(r.o.PinDir, name))
		}
		err = spec.LoadAndAssign(&r.objs, opts)
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load capture objects: %+v", ve)
		}
		return fmt.Errorf("load capture objects: %w", err)
	}
	return nil
}

// dropIncompatiblePins removes the pinned maps whose layout differs from the spec's (an upgrade that changed
// them, such as a stats map with more verdicts), so that only those are recreated: enrollment survives an
// upgrade that does not change the pods map.
func (r *ebpfRedirector) dropIncompatiblePins(spec *ebpf.CollectionSpec) {
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(r.o.PinDir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			continue // absent (created on load) or unreadable (the load reports it)
		}
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			r.log.Warn("replacing pinned map with an old layout", "map", name, "error", err)
			os.Remove(path)
		}
	}
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// setListeners puts the listeners in the SOCKMAP (replacing those of an earlier process). Without DNS
// capture the DNS entries an earlier process left are removed.
func (r *ebpfRedirector) setListeners(l Listeners) error {
	type entry struct {
		key bpf.CaptureListener
		ln  interface {
			SyscallConn() (syscall.RawConn, error)
			LocalAddr() net.Addr
		}
	}
	entries := []entry{
		{bpf.CaptureListenerLISTENER_OUTBOUND, tcpSock{l.Outbound}},
		{bpf.CaptureListenerLISTENER_INBOUND, tcpSock{l.Inbound}},
		{bpf.CaptureListenerLISTENER_HBONE, tcpSock{l.HBONE}},
	}
	if l.dns() {
		entries = append(entries, entry{bpf.CaptureListenerLISTENER_DNS_UDP, l.DNSUDP.UDPConn},
			entry{bpf.CaptureListenerLISTENER_DNS_TCP, tcpSock{l.DNSTCP}})
	} else {
		for _, k := range []bpf.CaptureListener{bpf.CaptureListenerLISTENER_DNS_UDP, bpf.CaptureListenerLISTENER_DNS_TCP} {
			// A SOCKMAP reports a missing entry as EINVAL.
			if err := r.objs.Listeners.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("remove dns listener from sockmap: %w", err)
			}
		}
	}
	for _, e := range entries {
		raw, err := e.ln.SyscallConn()
		if err != nil {
			return fmt.Errorf("listener %s: %w", e.ln.LocalAddr(), err)
		}
		err = control(raw, func(fd int) error {
			return r.objs.Listeners.Update(e.key, uint64(fd), ebpf.UpdateAny)
		})
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("put listener %s in sockmap: %w (an MPTCP listener? make it with SocketFactory.Listen)", e.ln.LocalAddr(), err)
		}
		if err != nil {
			return fmt.Errorf("put listener %s in sockmap: %w", e.ln.LocalAddr(), err)
		}
	}
	return nil
}

// tcpSock gives a listener the LocalAddr of a connection, for setListeners.
type tcpSock struct{ *net.TCPListener }

func (s tcpSock) LocalAddr() net.Addr { return s.Addr() }

// attachLookup attaches capture_lookup to the node namespace and pins the link, or takes over the link an
// earlier process pinned there, replacing its program (atomically, so listener selection never stops).
func (r *ebpfRedirector) attachLookup() error {
	path := filepath.Join(r.linkDir, lookupPinName)
	var ns *os.File
	err := r.ns.do(func() error {
		var err error
		ns, err = os.Open("/proc/thread-self/ns/net")
		return err
	})
	if err != nil {
		return fmt.Errorf("open node netns: %w", err)
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil {
		return fmt.Errorf("stat node netns: %w", err)
	}
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		info, ierr := l.Info()
		if ierr == nil && info.NetNs() != nil && info.NetNs().NetnsInode == uint32(st.Ino) {
			if err := l.Update(r.objs.CaptureLookup); err != nil {
				l.Close()
				return fmt.Errorf("replace program of pinned link %s: %w", path, err)
			}
			r.lookup = l
			return nil
		}
		r.log.Warn("dropping pinned sk_lookup link of another namespace", "path", path)
		l.Unpin()
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		r.log.Warn("dropping unreadable pinned link", "path", path, "error", err)
		os.Remove(path)
	}
	l, err := link.AttachNetNs(int(ns.Fd()), r.objs.CaptureLookup)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return missing("sk_lookup programs (Linux 5.9)", err)
	}
	if err != nil {
		return fmt.Errorf("attach sk_lookup to the node namespace: %w", err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return fmt.Errorf("pin sk_lookup link: %w", err)
	}
	r.lookup = l
	return nil
}

// adoptLinks takes over the TCX links pinned by an earlier process: it replaces their program with the one just
// loaded (atomically, so capture never stops) and drops the links whose interface is gone.
func (r *ebpfRedirector) adoptLinks() error {
	ents, err := os.ReadDir(r.linkDir)
	if err != nil {
		return fmt.Errorf("read %s: %w", r.linkDir, err)
	}
	for _, e := range ents {
		if e.Name() == lookupPinName {
			continue
		}
		path := filepath.Join(r.linkDir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			r.log.Warn("dropping unreadable pinned link", "path", path, "error", err)
			os.Remove(path)
			continue
		}
		ifindex, egress := 0, false
		if info, err := l.Info(); err == nil && info.TCX() != nil {
			ifindex = int(info.TCX().Ifindex)
			egress = ebpf.AttachType(info.TCX().AttachType) == ebpf.AttachTCXEgress
		}
		var nl netlink.Link
		if ifindex != 0 {
			nl, _ = r.nl.LinkByIndex(ifindex)
		}
		var prog *ebpf.Program
		if nl != nil {
			prog = r.ingressProgram(nl)
			if egress {
				prog = r.objs.CaptureEgress
			}
		}
		if prog == nil {
			r.log.Debug("dropping pinned link of a removed or unsupported interface", "path", path)
			l.Unpin()
			l.Close()
			continue
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return fmt.Errorf("replace program of pinned link %s: %w", path, err)
		}
		prefix, into := linkPinPrefix, r.links
		if egress {
			prefix, into = egressPinPrefix, r.egress
		}
		if want := filepath.Join(r.linkDir, prefix+strconv.Itoa(ifindex)); want != path {
			if err := l.Pin(want); err != nil {
				l.Close()
				return fmt.Errorf("re-pin link %s: %w", path, err)
			}
		}
		if old, ok := into[ifindex]; ok {
			old.Close() // a duplicate pin of the same attachment
		}
		into[ifindex] = l
	}
	return nil
}

// ingressProgram returns the capture program for l's link layer, or nil if capture cannot attach to it:
// capture for Ethernet devices, capture_l3 for those whose packets start with the IP header.
func (r *ebpfRedirector) ingressProgram(l netlink.Link) *ebpf.Program {
	switch l.Attrs().EncapType {
	case "ether":
		return r.objs.Capture
	case "none", "ipip", "tunnel6", "sit":
		return r.objs.CaptureL3
	}
	return nil
}

// attachAll attaches capture to every interface of the node namespace (the uplinks must exist) and the egress
// backstop to every veth.
func (r *ebpfRedirector) attachAll() error {
	for _, n := range r.o.Uplinks {
		if _, err := r.nl.LinkByName(n); err != nil {
			return fmt.Errorf("find uplink %s: %w", n, err)
		}
	}
	links, err := r.nl.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range links {
		if err := r.hookLocked(l); err != nil {
			return err
		}
	}
	return nil
}

// hookLocked attaches capture at ingress of l, and the egress backstop if l is a veth (the host side of a pod,
// in the common CNI layouts; Enroll adds it to any other interface a pod is routed through). Loopback is left
// alone, and so are interfaces capture cannot parse (warned about once: the backstop drops new connections from
// them to enrolled pods). It requires r.mu.
func (r *ebpfRedirector) hookLocked(l netlink.Link) error {
	if l.Attrs().Flags&net.FlagLoopback != 0 || l.Attrs().EncapType == "loopback" {
		return nil
	}
	if err := r.attachLocked(l); err != nil {
		if !errors.Is(err, ErrNotSupported) || errors.Is(err, errNoTCX) {
			return err
		}
		if idx := l.Attrs().Index; !r.skip[idx] {
			r.skip[idx] = true
			r.log.Warn("interface not captured; new connections from it to enrolled pods are dropped", "interface", l.Attrs().Name, "error", err)
		}
		return nil
	}
	if l.Type() == "veth" {
		return r.attachEgressLocked(l)
	}
	return nil
}

// errNoTCX marks the failure to attach for want of TCX, which no interface can work around.
var errNoTCX = errors.New("no TCX")

// attachLocked attaches the capture program at the head of l's TCX ingress chain, pins the link and records l
// in the hooked map, unless that is done. It requires r.mu.
func (r *ebpfRedirector) attachLocked(l netlink.Link) error {
	idx := l.Attrs().Index
	if _, ok := r.links[idx]; ok {
		return nil
	}
	prog := r.ingressProgram(l)
	if prog == nil {
		return fmt.Errorf("%w: capture on %s (link type %s): only Ethernet devices and devices without a link-layer header are supported", ErrNotSupported, l.Attrs().Name, l.Attrs().EncapType)
	}
	tl, err := r.attachTCX(l, prog, ebpf.AttachTCXIngress, linkPinPrefix)
	if err != nil {
		return err
	}
	if err := r.objs.Hooked.Update(uint32(idx), uint8(1), ebpf.UpdateAny); err != nil {
		tl.Unpin()
		tl.Close()
		return fmt.Errorf("record %s as hooked: %w", l.Attrs().Name, err)
	}
	r.links[idx] = tl
	delete(r.skip, idx)
	r.log.Debug("attached", "interface", l.Attrs().Name, "ifindex", idx)
	return nil
}

// attachEgressLocked attaches the egress backstop (capture_egress) to l, a pod's host-side interface, unless
// that is done. It requires r.mu.
func (r *ebpfRedirector) attachEgressLocked(l netlink.Link) error {
	idx := l.Attrs().Index
	if _, ok := r.egress[idx]; ok {
		return nil
	}
	if l.Attrs().EncapType != "ether" {
		return fmt.Errorf("%w: egress backstop on %s (link type %s): only Ethernet devices are supported", ErrNotSupported, l.Attrs().Name, l.Attrs().EncapType)
	}
	tl, err := r.attachTCX(l, r.objs.CaptureEgress, ebpf.AttachTCXEgress, egressPinPrefix)
	if err != nil {
		return err
	}
	r.egress[idx] = tl
	return nil
}

// attachTCX attaches prog at the head of l's TCX chain of the given direction and pins the link as
// <linkDir>/<prefix><ifindex>.
func (r *ebpfRedirector) attachTCX(l netlink.Link, prog *ebpf.Program, dir ebpf.AttachType, prefix string) (link.Link, error) {
	idx := l.Attrs().Index
	var tl link.Link
	err := r.ns.do(func() error {
		var err error
		tl, err = link.AttachTCX(link.TCXOptions{Interface: idx, Program: prog, Attach: dir, Anchor: link.Head()})
		return err
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		return nil, fmt.Errorf("%w: %w", errNoTCX, missing("TCX links (Linux 6.6)", err))
	}
	if err != nil {
		return nil, fmt.Errorf("attach tcx (%s) to %s: %w", dir, l.Attrs().Name, err)
	}
	path := filepath.Join(r.linkDir, prefix+strconv.Itoa(idx))
	os.Remove(path)
	if err := tl.Pin(path); err != nil {
		tl.Close()
		return nil, fmt.Errorf("pin tcx link of %s: %w", l.Attrs().Name, err)
	}
	return tl, nil
}

// syncHooked makes the hooked map list exactly the interfaces with an ingress link: entries of a previous
// process for interfaces that have gone are removed (an ifindex must not vouch for a new interface).
func (r *ebpfRedirector) syncHooked() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var k uint32
	var v uint8
	var stale []uint32
	it := r.objs.Hooked.Iterate()
	for it.Next(&k, &v) {
		if _, ok := r.links[int(k)]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read hooked map: %w", err)
	}
	for _, k := range stale {
		if err := r.objs.Hooked.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove stale hooked interface %d: %w", k, err)
		}
	}
	for idx := range r.links {
		if err := r.objs.Hooked.Update(uint32(idx), uint8(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("record interface %d as hooked: %w", idx, err)
		}
	}
	return nil
}

// detachLocked forgets the links of a removed interface. It requires r.mu.
func (r *ebpfRedirector) detachLocked(idx int) {
	delete(r.skip, idx)
	if l, ok := r.links[idx]; ok {
		delete(r.links, idx)
		if err := r.objs.Hooked.Delete(uint32(idx)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			r.log.Warn("forget hooked interface", "ifindex", idx, "error", err)
		}
		l.Unpin()
		l.Close()
	}
	if l, ok := r.egress[idx]; ok {
		delete(r.egress, idx)
		l.Unpin()
		l.Close()
	}
}

// watchLinks attaches to interfaces as they appear and drops the links of interfaces that go away.
func (r *ebpfRedirector) watchLinks(ctx context.Context) error {
	ch := make(chan netlink.LinkUpdate, 64)
	opts := netlink.LinkSubscribeOptions{ErrorCallback: func(err error) {
		r.log.Warn("link watch", "error", err)
	}}
	h, ok, err := r.ns.nsHandle()
	if err != nil {
		return err
	}
	if ok {
		defer h.Close()
		opts.Namespace = &h
	}
	if err := netlink.LinkSubscribeWithOptions(ch, ctx.Done(), opts); err != nil {
		return fmt.Errorf("subscribe to link updates: %w", err)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			select {
			case <-ctx.Done():
				// Drain so that the subscription goroutine, which closes ch, never blocks.
				for range ch {
				}
				return
			case u, ok := <-ch:
				if !ok {
					return
				}
				r.onLinkUpdate(u)
			}
		}
	}()
	return nil
}

func (r *ebpfRedirector) onLinkUpdate(u netlink.LinkUpdate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	idx := int(u.Index)
	switch u.Header.Type {
	case unix.RTM_DELLINK:
		r.detachLocked(idx)
	case unix.RTM_NEWLINK:
		if u.Link == nil {
			return
		}
		if err := r.hookLocked(u.Link); err != nil {
			r.log.Warn("attach to new interface", "interface", u.Link.Attrs().Name, "error", err)
		}
	}
}

// readPods rebuilds the UID index from the pinned pods map.
func (r *ebpfRedirector) readPods() error {
	var k bpf.CapturePodKey
	var v bpf.CapturePodInfo
	it := r.objs.Pods.Iterate()
	r.mu.Lock()
	defer r.mu.Unlock()
	for it.Next(&k, &v) {
		if v.Flags&bpf.CapturePodFlagsPOD_ENROLLED == 0 {
			continue
		}
		uid := string(bytes.TrimRight(v.Uid[:], "\x00"))
		r.pods[uid] = append(r.pods[uid], netip.AddrFrom16(k.Addr).Unmap())
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pods map: %w", err)
	}
	return nil
}

func podKey(a netip.Addr) bpf.CapturePodKey {
	return bpf.CapturePodKey{Addr: a.Unmap().As16()}
}

func podInfo(uid string, ifindex int, enrolled bool, drainSince uint64) bpf.CapturePodInfo {
	v := bpf.CapturePodInfo{Ifindex: uint32(ifindex), DrainSince: drainSince}
	if enrolled {
		v.Flags = bpf.CapturePodFlagsPOD_ENROLLED
	}
	copy(v.Uid[:], uid)
	return v
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}

func (r *ebpfRedirector) Enroll(ctx context.Context, pod Pod) error {
	if err := pod.validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	ifindex := make([]int, len(pod.IPs))
	for i, a := range pod.IPs {
		l, err := podLink(r.nl, a.AsSlice())
		if err != nil {
			return fmt.Errorf("enroll %s: %w", pod.UID, err)
		}
		if err := r.attachLocked(l); err != nil {
			return fmt.Errorf("enroll %s: %w", pod.UID, err)
		}
		if err := r.attachEgressLocked(l); err != nil {
			return fmt.Errorf("enroll %s: %w", pod.UID, err)
		}
		ifindex[i] = l.Attrs().Index
	}
	keep := map[netip.Addr]bool{}
	for i, a := range pod.IPs {
		a = a.Unmap()
		keep[a] = true
		if err := r.objs.Pods.Update(podKey(a), podInfo(pod.UID, ifindex[i], true, 0), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("enroll %s address %s: %w", pod.UID, a, err)
		}
		// An address that moved from another pod (IP reuse) leaves that pod's list.
		for uid, addrs := range r.pods {
			if uid != pod.UID {
				r.pods[uid] = removeAddr(addrs, a)
			}
		}
	}
	for _, a := range r.pods[pod.UID] {
		if !keep[a] {
			r.drainLocked(pod.UID, a)
		}
	}
	addrs := make([]netip.Addr, 0, len(keep))
	for _, a := range pod.IPs {
		addrs = append(addrs, a.Unmap())
	}
	r.pods[pod.UID] = addrs
	r.names[pod.UID] = pod.Name
	if err := r.syncNFTSetLocked(ctx); err != nil {
		return fmt.Errorf("enroll %s: %w", pod.UID, err)
	}
	r.log.Info("enrolled", "pod", pod.Name, "uid", pod.UID, "ips", addrs)
	return nil
}

func removeAddr(addrs []netip.Addr, a netip.Addr) []netip.Addr {
	out := addrs[:0]
	for _, x := range addrs {
		if x != a {
			out = append(out, x)
		}
	}
	return out
}

// drainLocked stops new captures for a, keeping packets of held connections flowing until the sweeper removes
// the entry (or removes it now when draining is off). It requires r.mu.
func (r *ebpfRedirector) drainLocked(uid string, a netip.Addr) {
	k := podKey(a)
	if r.o.DrainTimeout < 0 {
		if err := r.objs.Pods.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			r.log.Warn("remove pod address", "uid", uid, "ip", a, "error", err)
		}
		return
	}
	var v bpf.CapturePodInfo
	if err := r.objs.Pods.Lookup(k, &v); err != nil {
		return
	}
	v.Flags &^= bpf.CapturePodFlagsPOD_ENROLLED
	v.DrainSince = monotonicNow()
	if err := r.objs.Pods.Update(k, v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		r.log.Warn("drain pod address", "uid", uid, "ip", a, "error", err)
	}
}

func (r *ebpfRedirector) Unenroll(ctx context.Context, uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	addrs, ok := r.pods[uid]
	if !ok {
		return nil
	}
	for _, a := range addrs {
		r.drainLocked(uid, a)
	}
	delete(r.pods, uid)
	name := r.names[uid]
	delete(r.names, uid)
	if err := r.syncNFTSetLocked(ctx); err != nil {
		return fmt.Errorf("unenroll %s: %w", uid, err)
	}
	r.log.Info("unenrolled", "pod", name, "uid", uid)
	return nil
}

// sweepDraining deletes draining pod entries older than DrainTimeout.
func (r *ebpfRedirector) sweepDraining(ctx context.Context) {
	if r.o.DrainTimeout < 0 {
		return
	}
	every := min(max(r.o.DrainTimeout/4, 50*time.Millisecond), 10*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.sweepOnce()
	}
}

func (r *ebpfRedirector) sweepOnce() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := monotonicNow()
	var k bpf.CapturePodKey
	var v bpf.CapturePodInfo
	var expired []bpf.CapturePodKey
	it := r.objs.Pods.Iterate()
	for it.Next(&k, &v) {
		if v.Flags&bpf.CapturePodFlagsPOD_ENROLLED == 0 && now-v.DrainSince >= uint64(r.o.DrainTimeout) {
			expired = append(expired, k)
		}
	}
	for _, k := range expired {
		if err := r.objs.Pods.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			r.log.Warn("remove drained pod address", "error", err)
		}
	}
}

func (r *ebpfRedirector) Enrolled(ctx context.Context) ([]Pod, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	return enrolledList(r.pods, r.names), nil
}

func (r *ebpfRedirector) OriginalDst(conn net.Conn) (netip.AddrPort, error) { return OriginalDst(conn) }

func (r *ebpfRedirector) Mode() Mode { return ModeEBPF }

func (r *ebpfRedirector) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.release()
	return nil
}

// release stops the goroutines and closes every handle; pinned objects stay.
func (r *ebpfRedirector) release() {
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
	r.mu.Lock()
	for idx, l := range r.links {
		l.Close()
		delete(r.links, idx)
	}
	for idx, l := range r.egress {
		l.Close()
		delete(r.egress, idx)
	}
	r.mu.Unlock()
	if r.lookup != nil {
		r.lookup.Close()
	}
	r.objs.Close()
	if r.nl != nil {
		r.nl.Close()
	}
}

// cleanupEBPF removes the pinned links (detaching the programs) and maps, and the pin directory.
func cleanupEBPF(o Options) error {
	var errs []error
	linkDir := filepath.Join(o.PinDir, "links")
	if ents, err := os.ReadDir(linkDir); err == nil {
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), linkPinPrefix) && !strings.HasPrefix(e.Name(), egressPinPrefix) && e.Name() != lookupPinName {
				continue
			}
			path := filepath.Join(linkDir, e.Name())
			if l, err := link.LoadPinnedLink(path, nil); err == nil {
				// Detach now rather than when the last reference goes.
				if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
					errs = append(errs, fmt.Errorf("detach %s: %w", path, err))
				}
				l.Close()
			}
		}
	}
	if err := os.RemoveAll(o.PinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", o.PinDir, err))
	}
	return errors.Join(errs...)
}
