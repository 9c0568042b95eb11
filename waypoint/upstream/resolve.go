package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// DefaultResolvConf is the resolver configuration a Resolver reads by default: the pod's own, as Envoy's
// DNS clusters use it.
const DefaultResolvConf = "/etc/resolv.conf"

// Resolver resolves the hostnames of DNS endpoints (ServiceEntry resolution DNS: the implicit endpoint per
// host, or endpoints given by hostname) when a request needs them, with the name servers and search list
// of a resolv.conf, and caches each answer for its TTL (Envoy's STRICT_DNS cluster with
// respect_dns_ttl, as istiod configures it). Lookups of one name share one query in flight. The zero
// value is not usable: set Dial.
type Resolver struct {
	// Conf is the resolv.conf path, read at every query (so a change applies at the next query); default
	// DefaultResolvConf.
	Conf string
	// Port is the name servers' port (default 53: resolv.conf cannot name another).
	Port string
	// Dial opens the connection to a name server ("udp" or "tcp"), in the process's network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock; nil uses time.Now.
	Now func() time.Time
	// Timeout bounds one query to one server (default 5 s).
	Timeout time.Duration
	// ErrorTTL is how long a failed lookup is remembered (default 1 s), so a failing name is not queried
	// by every request.
	ErrorTTL time.Duration

	mu    sync.Mutex
	cache map[string]*dnsEntry // guarded by mu; by lower-case hostname
}

type dnsEntry struct {
	done    chan struct{} // closed when the query ended; the fields below are then set
	addrs   []netip.Addr
	err     error
	expires time.Time
}

// maxCacheEntries bounds the cache; names come from configuration, so this only matters after many
// configuration changes (expired entries are dropped first).
const maxCacheEntries = 4096

func (r *Resolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Lookup returns the addresses of host: from the cache while its TTL lasts, else from the name servers.
func (r *Resolver) Lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	key := dns.CanonicalName(host)
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[string]*dnsEntry{}
	}
	e := r.cache[key]
	if e != nil {
		select {
		case <-e.done:
			if r.now().Before(e.expires) {
				r.mu.Unlock()
				return e.addrs, e.err
			}
			e = nil // expired: query again
		default:
		}
	}
	if e == nil {
		e = &dnsEntry{done: make(chan struct{})}
		if len(r.cache) >= maxCacheEntries {
			r.evictLocked()
		}
		r.cache[key] = e
		r.mu.Unlock()
		// The query belongs to no one request: it runs to its own timeout, for every waiter.
		addrs, ttl, err := r.query(context.WithoutCancel(ctx), host)
		if err != nil {
			ttl = r.ErrorTTL
			if ttl <= 0 {
				ttl = time.Second
			}
		}
		e.addrs, e.err, e.expires = addrs, err, r.now().Add(ttl)
		close(e.done)
		return addrs, err
	}
	r.mu.Unlock()
	select {
	case <-e.done:
		return e.addrs, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *Resolver) evictLocked() {
	now := r.now()
	for k, e := range r.cache {
		select {
		case <-e.done:
			if !now.Before(e.expires) {
				delete(r.cache, k)
			}
		default:
		}
	}
	for k := range r.cache {
		if len(r.cache) < maxCacheEntries {
			break
		}
		delete(r.cache, k)
	}
}

// query resolves host with each name server and name of the search list in turn: its A records, else its
// AAAA records. The TTL is the smallest of the records used.
func (r *Resolver) query(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	path := r.Conf
	if path == "" {
		path = DefaultResolvConf
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("read resolver configuration: %w", err)
	}
	conf, err := dns.ClientConfigFromReader(bytes.NewReader(data))
	if err != nil {
		return nil, 0, fmt.Errorf("read resolver configuration %s: %w", path, err)
	}
	networks := []string{"udp", "tcp"}
	if useVC(data) {
		networks = []string{"tcp"}
	}
	if len(conf.Servers) == 0 {
		return nil, 0, fmt.Errorf("resolve %s: no name server in %s", host, path)
	}
	var lastErr error
	for _, name := range conf.NameList(host) {
		for _, srv := range conf.Servers {
			port := conf.Port
			if r.Port != "" {
				port = r.Port
			}
			addr := net.JoinHostPort(srv, port)
			addrs, ttl, err := r.queryServer(ctx, networks, addr, name)
			if err == nil {
				return addrs, ttl, nil
			}
			lastErr = err
			if errors.Is(err, errNoName) {
				break // the server answered: try the next name, not the next server
			}
		}
	}
	return nil, 0, fmt.Errorf("resolve %s: %w", host, lastErr)
}

var errNoName = errors.New("no such host")

// useVC reports whether a resolv.conf sets "options use-vc" (glibc's and c-ares's option: queries over TCP
// only), as the test kubelet's resolv.conf does because its cluster DNS answers over TCP only.
func useVC(conf []byte) bool {
	for _, line := range strings.Split(string(conf), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "options" {
			continue
		}
		if slices.Contains(f[1:], "use-vc") {
			return true
		}
	}
	return false
}

func (r *Resolver) queryServer(ctx context.Context, networks []string, server, name string) ([]netip.Addr, time.Duration, error) {
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		msg, err := r.exchange(ctx, networks, server, name, qtype)
		if err != nil {
			return nil, 0, err
		}
		switch msg.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			return nil, 0, fmt.Errorf("%s from %s: %w", name, server, errNoName)
		default:
			return nil, 0, fmt.Errorf("%s from %s: %s", name, server, dns.RcodeToString[msg.Rcode])
		}
		addrs, ttl := answers(msg, qtype)
		if len(addrs) > 0 {
			return addrs, ttl, nil
		}
	}
	return nil, 0, fmt.Errorf("%s from %s: no A or AAAA record: %w", name, server, errNoName)
}

// answers returns the addresses of the records of type qtype in msg and their smallest TTL.
func answers(msg *dns.Msg, qtype uint16) ([]netip.Addr, time.Duration) {
	var out []netip.Addr
	ttl := uint32(0)
	for _, rr := range msg.Answer {
		var ip net.IP
		switch v := rr.(type) {
		case *dns.A:
			if qtype == dns.TypeA {
				ip = v.A
			}
		case *dns.AAAA:
			if qtype == dns.TypeAAAA {
				ip = v.AAAA
			}
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		if len(out) == 0 || rr.Header().Ttl < ttl {
			ttl = rr.Header().Ttl
		}
		out = append(out, a.Unmap())
	}
	return out, time.Duration(ttl) * time.Second
}

// exchange sends one query over UDP, again over TCP when the answer is truncated (networks: udp, tcp), or
// over TCP only (networks: tcp).
func (r *Resolver) exchange(ctx context.Context, networks []string, server, name string, qtype uint16) (*dns.Msg, error) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	for _, network := range networks {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		msg, err := r.exchangeOver(ctx, network, server, m, timeout)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("query %s over %s: %w", server, network, err)
		}
		if !msg.Truncated {
			return msg, nil
		}
	}
	return nil, fmt.Errorf("query %s: truncated answer over tcp", server)
}

func (r *Resolver) exchangeOver(ctx context.Context, network, server string, m *dns.Msg, timeout time.Duration) (*dns.Msg, error) {
	if r.Dial == nil {
		return nil, errors.New("resolver has no Dial")
	}
	c, err := r.Dial(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	cl := &dns.Client{Net: network, Timeout: timeout}
	msg, _, err := cl.ExchangeWithConnContext(ctx, m, &dns.Conn{Conn: c})
	return msg, err
}

// HostEndpoints returns the endpoints of the workloads of svc that are addressed by hostname (DNS
// endpoints, which Endpoints skips): each healthy one whose service entry maps port, once per address
// lookup returns for its hostname, at the target port. A failed lookup leaves that workload out and is
// returned (joined) with the endpoints found.
func HostEndpoints(ctx context.Context, workloads []*state.Workload, svc *state.Service, port uint16,
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)) ([]Endpoint, error) {
	var out []Endpoint
	var errs []error
	for _, w := range workloads {
		if w.Status != state.Healthy || len(w.Addresses) != 0 || w.Hostname == "" {
			continue
		}
		t, ok := targetPort(w, svc, port)
		if !ok {
			continue
		}
		addrs, err := lookup(ctx, w.Hostname)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, a := range addrs {
			out = append(out, Endpoint{Workload: w, Addr: netip.AddrPortFrom(a, t)})
		}
	}
	return out, errors.Join(errs...)
}
