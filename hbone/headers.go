package hbone

// headers.go: the :authority and the request headers HBONE peers exchange (ztunnel-protocols.md 2.3),
// with parsers for peer-controlled input (all fuzzed) and formatters whose output the parsers accept.
//
// Invariants: parsers never panic and accept every string their formatter produces; nothing here does I/O.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Header names HBONE uses, in canonical form.
const (
	HeaderBaggage           = "Baggage"
	HeaderForwarded         = "Forwarded"
	HeaderTraceparent       = "Traceparent"
	HeaderForwardedNetwork  = "X-Forwarded-Network"
	maxHostnameLen          = 253
	maxAuthorityLen         = maxHostnameLen + len(":65535")
	defaultBaggageWorkloadT = "pod"
)

// Authority is a parsed CONNECT :authority: an IP literal or DNS name, and a port.
type Authority struct {
	Host string         // IP literal (IPv6 without brackets) or DNS name
	Port uint16         // 1-65535
	Addr netip.AddrPort // valid iff Host is an IP literal; IPv4-mapped IPv6 is unmapped
}

// String formats a as "ip:port", "[v6]:port" or "host:port".
func (a Authority) String() string {
	if a.Addr.IsValid() {
		return a.Addr.String()
	}
	return a.Host + ":" + strconv.Itoa(int(a.Port))
}

// ParseAuthority parses "ip:port", "[v6]:port" or "host:port". IPv6 zones, port 0, empty hosts and
// hosts that are neither IP literals nor DNS names are rejected with ErrBadAuthority.
func ParseAuthority(s string) (Authority, error) {
	bad := func(why string) (Authority, error) {
		return Authority{}, fmt.Errorf("%w %q: %s", ErrBadAuthority, truncate(s, 64), why)
	}
	if len(s) == 0 || len(s) > maxAuthorityLen {
		return bad("empty or too long")
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return bad("no port")
	}
	host, portStr := s[:i], s[i+1:]
	if len(portStr) == 0 || len(portStr) > 5 || strings.TrimLeft(portStr, "0123456789") != "" {
		return bad("bad port")
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return bad("bad port")
	}
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return bad("unterminated [")
		}
		ip, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return bad("bad IPv6 literal")
		}
		ip = ip.Unmap()
		return Authority{Host: ip.String(), Port: uint16(port), Addr: netip.AddrPortFrom(ip, uint16(port))}, nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if !ip.Is4() {
			return bad("IPv6 literal without brackets")
		}
		// ParseAddr accepts only canonical dotted decimal for IPv4 (no leading zeros), so host is
		// already ip.String().
		return Authority{Host: host, Port: uint16(port), Addr: netip.AddrPortFrom(ip, uint16(port))}, nil
	}
	if !validHostname(host) {
		return bad("bad host name")
	}
	return Authority{Host: host, Port: uint16(port)}, nil
}

// validHostname reports whether h is a DNS name: dot-separated labels of letters, digits, '-' and '_',
// 1-63 bytes each, at most 253 bytes in all, not all-numeric (a malformed IPv4 literal).
func validHostname(h string) bool {
	if len(h) == 0 || len(h) > maxHostnameLen {
		return false
	}
	allNumeric := true
	for label := range strings.SplitSeq(h, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-', c == '_':
				allNumeric = false
			default:
				return false
			}
		}
	}
	return !allNumeric
}

// Baggage is the source- or destination-workload telemetry that ztunnel sends in the W3C "baggage"
// header of a CONNECT (and of its 200 response). Empty fields are omitted when formatting.
type Baggage struct {
	ClusterID    string // k8s.cluster.name
	Namespace    string // k8s.namespace.name
	WorkloadType string // the <type> of k8s.<type>.name; "pod" when empty
	WorkloadName string // k8s.<type>.name
	ServiceName  string // service.name (canonical name)
	Revision     string // service.version (canonical revision)
	Region       string // cloud.region
	Zone         string // cloud.availability_zone
}

// String formats b in ztunnel's key order: k8s.cluster.name, k8s.namespace.name, k8s.<type>.name,
// service.name, service.version, cloud.region, cloud.availability_zone. Values are percent-encoded where
// they hold bytes the W3C baggage grammar forbids (and '%' and '=').
func (b Baggage) String() string {
	wt := b.WorkloadType
	if wt == "" {
		wt = defaultBaggageWorkloadT
	}
	var sb strings.Builder
	add := func(k, v string) {
		if v == "" {
			return
		}
		if sb.Len() > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(k)
		sb.WriteByte('=')
		baggageEscape(&sb, v)
	}
	add("k8s.cluster.name", b.ClusterID)
	add("k8s.namespace.name", b.Namespace)
	add("k8s."+wt+".name", b.WorkloadName)
	add("service.name", b.ServiceName)
	add("service.version", b.Revision)
	add("cloud.region", b.Region)
	add("cloud.availability_zone", b.Zone)
	return sb.String()
}

// ParseBaggage reads the members ztunnel understands from one or more baggage header values (later
// members win). Unknown keys, members without '=', and member properties after ';' are ignored; an
// empty value clears the field. The workload name is read from k8s.{deployment,cronjob,pod,job}.name.
func ParseBaggage(values ...string) Baggage {
	var b Baggage
	for _, v := range values {
		for member := range strings.SplitSeq(v, ",") {
			if i := strings.IndexByte(member, ';'); i >= 0 {
				member = member[:i]
			}
			k, val, ok := strings.Cut(member, "=")
			if !ok {
				continue
			}
			k = strings.TrimSpace(k)
			val = baggageUnescape(strings.TrimSpace(val))
			switch k {
			case "k8s.cluster.name":
				b.ClusterID = val
			case "k8s.namespace.name":
				b.Namespace = val
			case "k8s.deployment.name", "k8s.cronjob.name", "k8s.pod.name", "k8s.job.name":
				b.WorkloadName = val
				b.WorkloadType = strings.TrimSuffix(strings.TrimPrefix(k, "k8s."), ".name")
				if val == "" {
					b.WorkloadType = ""
				}
			case "service.name":
				b.ServiceName = val
			case "service.version":
				b.Revision = val
			case "cloud.region":
				b.Region = val
			case "cloud.availability_zone":
				b.Zone = val
			}
		}
	}
	return b
}

// baggageOctet reports whether c may appear unescaped in a baggage value (W3C baggage-octet, minus '%'
// and '=' which this package always escapes).
func baggageOctet(c byte) bool {
	return c == 0x21 || (c >= 0x23 && c <= 0x2B && c != '%') || (c >= 0x2D && c <= 0x3A) ||
		(c >= 0x3C && c <= 0x5B && c != '=') || (c >= 0x5D && c <= 0x7E)
}

func baggageEscape(sb *strings.Builder, v string) {
	const hexDigits = "0123456789ABCDEF"
	for i := 0; i < len(v); i++ {
		c := v[i]
		if baggageOctet(c) {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(hexDigits[c>>4])
		sb.WriteByte(hexDigits[c&15])
	}
}

// baggageUnescape decodes %XX escapes; a malformed escape is kept as is.
func baggageUnescape(v string) string {
	if !strings.Contains(v, "%") {
		return v
	}
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '%' && i+2 < len(v) {
			if x, err := hex.DecodeString(v[i+1 : i+3]); err == nil {
				sb.WriteByte(x[0])
				i += 2
				continue
			}
		}
		sb.WriteByte(v[i])
	}
	return sb.String()
}

// Forwarded is the part of an RFC 7239 Forwarded header HBONE uses: for= (the original client address,
// "ip:port") and host= (the destination service host name).
type Forwarded struct {
	For  string
	Host string
}

// String formats f as ztunnel does: for="<for>" and, when Host is set, ;host=<host> (quoted if it is
// not an RFC 7230 token). Empty fields are omitted.
func (f Forwarded) String() string {
	var sb strings.Builder
	if f.For != "" {
		sb.WriteString("for=")
		quote(&sb, f.For)
	}
	if f.Host != "" {
		if sb.Len() > 0 {
			sb.WriteByte(';')
		}
		sb.WriteString("host=")
		if isToken(f.Host) {
			sb.WriteString(f.Host)
		} else {
			quote(&sb, f.Host)
		}
	}
	return sb.String()
}

// ForAddrPort returns For as an address and port when it is "ip:port" or "[v6]:port".
func (f Forwarded) ForAddrPort() (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(f.For)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// errForwarded reports a Forwarded header that does not follow RFC 7239's grammar.
var errForwarded = errors.New("hbone: malformed forwarded header")

// ParseForwarded parses RFC 7239 Forwarded header values and returns the for= and host= parameters of
// the first element (the hop closest to the original client). Parameter names are case-insensitive;
// unknown parameters are ignored; values are tokens or quoted strings.
func ParseForwarded(values ...string) (Forwarded, error) {
	var f Forwarded
	first := true
	for _, v := range values {
		p := forwardedParser{s: v}
		for {
			p.skipOWS()
			if p.done() {
				break
			}
			var sawFor, sawHost bool
			for {
				name, val, err := p.pair()
				if err != nil {
					return Forwarded{}, err
				}
				switch strings.ToLower(name) {
				case "for":
					if sawFor {
						return Forwarded{}, fmt.Errorf("%w: duplicate for", errForwarded)
					}
					sawFor = true
					if first {
						f.For = val
					}
				case "host":
					if sawHost {
						return Forwarded{}, fmt.Errorf("%w: duplicate host", errForwarded)
					}
					sawHost = true
					if first {
						f.Host = val
					}
				}
				p.skipOWS()
				if p.done() || p.peek() == ',' {
					break
				}
				if p.peek() != ';' {
					return Forwarded{}, fmt.Errorf("%w: expected ';' at %d", errForwarded, p.i)
				}
				p.i++
				p.skipOWS()
			}
			first = false
			if p.done() {
				break
			}
			p.i++ // ','
		}
	}
	return f, nil
}

type forwardedParser struct {
	s string
	i int
}

func (p *forwardedParser) done() bool { return p.i >= len(p.s) }
func (p *forwardedParser) peek() byte { return p.s[p.i] }
func (p *forwardedParser) skipOWS() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

func (p *forwardedParser) token() string {
	start := p.i
	for p.i < len(p.s) && isTokenChar(p.s[p.i]) {
		p.i++
	}
	return p.s[start:p.i]
}

func (p *forwardedParser) pair() (string, string, error) {
	name := p.token()
	if name == "" || p.done() || p.peek() != '=' {
		return "", "", fmt.Errorf("%w: expected name= at %d", errForwarded, p.i)
	}
	p.i++
	if !p.done() && p.peek() == '"' {
		p.i++
		var sb strings.Builder
		for {
			if p.done() {
				return "", "", fmt.Errorf("%w: unterminated quoted string", errForwarded)
			}
			c := p.s[p.i]
			p.i++
			switch {
			case c == '"':
				return name, sb.String(), nil
			case c == '\\':
				if p.done() {
					return "", "", fmt.Errorf("%w: dangling escape", errForwarded)
				}
				if e := p.s[p.i]; e < 0x20 && e != '\t' || e == 0x7f {
					return "", "", fmt.Errorf("%w: escaped control character", errForwarded)
				}
				sb.WriteByte(p.s[p.i])
				p.i++
			case c < 0x20 && c != '\t', c == 0x7f:
				return "", "", fmt.Errorf("%w: control character in quoted string", errForwarded)
			default:
				sb.WriteByte(c)
			}
		}
	}
	val := p.token()
	if val == "" {
		return "", "", fmt.Errorf("%w: empty value at %d", errForwarded, p.i)
	}
	return name, val, nil
}

func isTokenChar(c byte) bool {
	if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// quote writes s as an RFC 7230 quoted-string. Bytes that cannot appear even escaped (controls other than
// tab, DEL) are dropped.
func quote(sb *strings.Builder, s string) {
	sb.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c < 0x20 && c != '\t', c == 0x7f:
		default:
			sb.WriteByte(c)
		}
	}
	sb.WriteByte('"')
}

// Traceparent is a W3C trace context "traceparent" header: version 00, a 16-byte trace id, an 8-byte
// parent (span) id and trace flags.
type Traceparent struct {
	TraceID [16]byte
	SpanID  [8]byte
	Flags   byte
}

// NewTraceparent returns a random trace and span id with flags 00, as ztunnel sends per outbound
// connection.
func NewTraceparent() Traceparent {
	var t Traceparent
	for t.TraceID == ([16]byte{}) || t.SpanID == ([8]byte{}) {
		_, _ = rand.Read(t.TraceID[:])
		_, _ = rand.Read(t.SpanID[:])
	}
	return t
}

// String formats t as "00-<32 hex>-<16 hex>-<2 hex>".
func (t Traceparent) String() string {
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], t.TraceID[:])
	b[35] = '-'
	hex.Encode(b[36:52], t.SpanID[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{t.Flags})
	return string(b[:])
}

// errTraceparent reports a traceparent header that is not version 00 in lower-case hex with non-zero ids.
var errTraceparent = errors.New("hbone: malformed traceparent")

// ParseTraceparent parses a version-00 traceparent: exactly 55 bytes, lower-case hex, non-zero ids.
func ParseTraceparent(s string) (Traceparent, error) {
	var t Traceparent
	if len(s) != 55 || s[0:3] != "00-" || s[35] != '-' || s[52] != '-' {
		return t, errTraceparent
	}
	if !lowerHex(s[3:35]) || !lowerHex(s[36:52]) || !lowerHex(s[53:55]) {
		return t, errTraceparent
	}
	_, _ = hex.Decode(t.TraceID[:], []byte(s[3:35]))
	_, _ = hex.Decode(t.SpanID[:], []byte(s[36:52]))
	var f [1]byte
	_, _ = hex.Decode(f[:], []byte(s[53:55]))
	t.Flags = f[0]
	if t.TraceID == ([16]byte{}) || t.SpanID == ([8]byte{}) {
		return Traceparent{}, errTraceparent
	}
	return t, nil
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
