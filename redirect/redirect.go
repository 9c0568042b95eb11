package redirect

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Mode selects how traffic is captured.
type Mode string

const (
	// ModeAuto uses ModeEBPF when Probe finds every feature it needs, else ModeTPROXY.
	ModeAuto Mode = "auto"
	// ModeEBPF captures with a TCX program that marks packets and an sk_lookup program that selects the
	// listeners (Linux 6.6+).
	ModeEBPF Mode = "ebpf"
	// ModeTPROXY captures with nftables tproxy rules.
	ModeTPROXY Mode = "tproxy"
)

// ParseMode parses a mode name as given on a command line ("", "auto", "ebpf", "tproxy").
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModeAuto:
		return ModeAuto, nil
	case ModeEBPF, ModeTPROXY:
		return Mode(s), nil
	}
	return "", fmt.Errorf("unknown capture mode %q (want auto, ebpf or tproxy)", s)
}

// MaxUIDLen is the longest Pod.UID that can be enrolled. UIDs may only hold letters, digits and -_.:/ (a
// Kubernetes UID does).
const MaxUIDLen = 63

// Pod is a pod to capture.
type Pod struct {
	// UID identifies the pod (a Kubernetes pod UID); at most MaxUIDLen bytes. Required.
	UID string
	// Name is "namespace/name", for logs only.
	Name string
	// IPs are the pod's addresses (IPv4 and/or IPv6). Each must be routed to a local interface of the node
	// namespace (the pod's host-side veth). Required.
	IPs []netip.Addr
}

func (p Pod) validate() error {
	if p.UID == "" || len(p.UID) > MaxUIDLen {
		return fmt.Errorf("%w: uid %q must have 1 to %d bytes", ErrInvalidPod, p.UID, MaxUIDLen)
	}
	for _, r := range p.UID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:/", r)) {
			return fmt.Errorf("%w: uid %q may only have letters, digits and -_.:/", ErrInvalidPod, p.UID)
		}
	}
	if len(p.IPs) == 0 {
		return fmt.Errorf("%w: pod %s has no addresses", ErrInvalidPod, p.UID)
	}
	for _, a := range p.IPs {
		if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
			return fmt.Errorf("%w: pod %s address %s", ErrInvalidPod, p.UID, a)
		}
	}
	return nil
}

// Redirector captures the traffic of enrolled pods. Its methods are safe for concurrent use.
type Redirector interface {
	// Enroll starts capturing new connections from and to pod. It is idempotent; enrolling a UID again replaces
	// its addresses. Connections that exist already are left on their direct path.
	Enroll(ctx context.Context, pod Pod) error
	// Unenroll stops capturing new connections of the pod with this UID. Connections the agent already holds
	// keep working (for Options.DrainTimeout in ModeEBPF). Unenrolling an unknown UID is not an error.
	Unenroll(ctx context.Context, uid string) error
	// Enrolled lists the enrolled pods, including those enrolled by a previous process (Name is empty for them).
	Enrolled(ctx context.Context) ([]Pod, error)
	// OriginalDst returns the original destination of a connection accepted on a capture listener.
	OriginalDst(conn net.Conn) (netip.AddrPort, error)
	// Mode reports the mode in use (never ModeAuto).
	Mode() Mode
	// Close releases the process's handles. Capture stays installed for the next New to re-adopt; use Cleanup
	// to remove it. Close does not close the listeners.
	Close() error
}

// Listeners are the agent's capture listeners, made with SocketFactory.Listen in the node namespace.
// A listener on an IPv6 wildcard address with dual-stack enabled serves both families.
type Listeners struct {
	Outbound *net.TCPListener // original port 15001
	Inbound  *net.TCPListener // original port 15006
	HBONE    *net.TCPListener // original port 15008
	// InboundDNAT receives new connections to enrolled pods that the node itself destination-NATed (kube-proxy's
	// ClusterIP, NodePort, LoadBalancer and external IPs: the client dialled a service address, capture saw that
	// address, and netfilter rewrote it to the pod's after capture looked). Make it with
	// SocketFactory.ListenTracked: its connections stay tracked by conntrack in both directions, so the node
	// translates the agent's replies back to the address the client dialled. Nil: such connections are dropped
	// (fail closed), never passed to the pod around the agent.
	InboundDNAT *net.TCPListener // original port 15007
	// DNSUDP and DNSTCP, both or neither, turn DNS capture on: the queries of enrolled pods to port
	// DNSPort (UDP, and TCP connections) go to them instead of their nameserver (port 15053).
	DNSUDP *DNSConn
	DNSTCP *net.TCPListener
}

// dns reports whether DNS capture is on.
func (l Listeners) dns() bool { return l.DNSUDP != nil && l.DNSTCP != nil }

// Marks are the packet marks Ambit uses. Pick bits that the CNI does not use.
type Marks struct {
	// Capture is set (under CaptureMask) on captured packets and routed by policy to the local table.
	Capture, CaptureMask uint32
	// Own is set on the agent's own sockets (SO_MARK); packets with it (under OwnMask) are never captured.
	Own, OwnMask uint32
}

// Defaults used when the corresponding Options field is zero.
const (
	DefaultPinDir       = "/sys/fs/bpf/ambit"
	DefaultNFTTable     = "ambit"
	DefaultRouteTable   = 100
	DefaultRulePriority = 100
	DefaultDrainTimeout = 60 * time.Second
	DefaultHBONEPort    = 15008
)

// DefaultMarks are Istio's values: capture 0x400/0xf00 (as its old eBPF redirection), own 0x539/0xfff (1337).
var DefaultMarks = Marks{Capture: 0x400, CaptureMask: 0xf00, Own: 0x539, OwnMask: 0xfff}

// Options configures New and Cleanup. Cleanup reads only NetNS, PinDir, NFTTable, RouteTable, RulePriority,
// Marks and Logger.
type Options struct {
	// Mode selects the capture mode; "" means ModeAuto.
	Mode Mode
	// Listeners are the capture listeners (required by New).
	Listeners Listeners
	// HBONEPort is the destination port that inbound HBONE uses (default 15008).
	HBONEPort uint16
	// NetNS is the path of the node network namespace (for example /var/run/netns/node1). Empty means the
	// namespace of the calling thread at New (the host namespace in production).
	NetNS string
	// Uplinks are the node's interfaces towards other nodes; New fails if one is missing. ModeEBPF hooks every
	// interface of the node namespace anyway, existing or new (overlay devices, extra NICs), so this only
	// checks the node's expected layout; ModeTPROXY captures on every interface by construction.
	Uplinks []string
	// PinDir is the bpffs directory for pinned maps and links (default DefaultPinDir). bpffs is mounted on
	// /sys/fs/bpf if nothing is. In ModeEBPF, New refuses (ErrEphemeralPins) a PinDir whose bpffs will not
	// outlive the process (mounted only in a mount namespace private to it, as under `ip netns exec`).
	PinDir string
	// AllowEphemeralPins lets ModeEBPF start on such a PinDir, logging at error level that capture ends
	// with the process (tests and experiments only).
	AllowEphemeralPins bool
	// NFTTable is the name of the nftables table (family inet) Ambit owns (default DefaultNFTTable).
	NFTTable string
	// RouteTable and RulePriority place the policy rule "fwmark Capture/CaptureMask lookup RouteTable"
	// (defaults DefaultRouteTable, DefaultRulePriority).
	RouteTable, RulePriority int
	// Marks are the packet marks (default DefaultMarks).
	Marks Marks
	// DrainTimeout is how long, in ModeEBPF, packets of connections the agent holds for an unenrolled pod still
	// reach the agent (default DefaultDrainTimeout; negative means not at all).
	DrainTimeout time.Duration
	// DisableNoTrack keeps conntrack on captured flows. By default they skip conntrack (raw notrack) so that node
	// NAT (kube-proxy) cannot break them and the agent sees Service IPs as original destinations.
	DisableNoTrack bool
	// Logger receives events; nil discards.
	Logger *slog.Logger
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	if o.HBONEPort == 0 {
		o.HBONEPort = DefaultHBONEPort
	}
	if o.PinDir == "" {
		o.PinDir = DefaultPinDir
	}
	if o.NFTTable == "" {
		o.NFTTable = DefaultNFTTable
	}
	if o.RouteTable == 0 {
		o.RouteTable = DefaultRouteTable
	}
	if o.RulePriority == 0 {
		o.RulePriority = DefaultRulePriority
	}
	if o.Marks == (Marks{}) {
		o.Marks = DefaultMarks
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = DefaultDrainTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// validate checks options that New needs; cleanupOnly skips the listeners.
func (o Options) validate(cleanupOnly bool) error {
	switch o.Mode {
	case ModeAuto, ModeEBPF, ModeTPROXY:
	default:
		return fmt.Errorf("unknown capture mode %q", o.Mode)
	}
	m := o.Marks
	if m.Capture == 0 || m.Capture&^m.CaptureMask != 0 {
		return fmt.Errorf("capture mark %#x must be non-zero and inside mask %#x", m.Capture, m.CaptureMask)
	}
	if m.Own == 0 || m.Own&^m.OwnMask != 0 {
		return fmt.Errorf("own mark %#x must be non-zero and inside mask %#x", m.Own, m.OwnMask)
	}
	if m.Own&m.CaptureMask == m.Capture {
		return fmt.Errorf("own mark %#x also matches capture mark %#x/%#x", m.Own, m.Capture, m.CaptureMask)
	}
	if o.RouteTable < 1 || o.RouteTable > 0xfffffff0 || o.RouteTable == 253 || o.RouteTable == 254 || o.RouteTable == 255 {
		return fmt.Errorf("route table %d is reserved or out of range", o.RouteTable)
	}
	if o.RulePriority < 1 || o.RulePriority >= 32766 {
		return fmt.Errorf("rule priority %d must be in [1, 32765] to precede the main table", o.RulePriority)
	}
	if !validNFTName(o.NFTTable) {
		return fmt.Errorf("nftables table name %q must be letters, digits and _ (at most 32)", o.NFTTable)
	}
	if cleanupOnly {
		return nil
	}
	l := o.Listeners
	if l.Outbound == nil || l.Inbound == nil || l.HBONE == nil {
		return fmt.Errorf("all three capture listeners are required")
	}
	if (l.DNSUDP == nil) != (l.DNSTCP == nil) {
		return fmt.Errorf("DNS capture needs both the DNS socket and the DNS listener")
	}
	return nil
}

func validNFTName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}
