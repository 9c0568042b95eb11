package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// clusterDomain is the cluster's DNS domain, as kubelet --cluster-domain sets it by default.
const clusterDomain = "cluster.local"

// dnsTTL is the TTL of the cluster DNS answers (CoreDNS's kubernetes plugin default).
const dnsTTL = 5

// resolvConf is the /etc/resolv.conf of a container in namespace ns (dnsPolicy ClusterFirst, as the kubelet
// writes it): the cluster DNS server, the namespace's search path and ndots:5. use-vc (queries over TCP, which
// Go's and glibc's resolvers honour) because the lab's ClusterIPs forward TCP only. Without a cluster DNS
// server the file names a resolver that does not answer.
func resolvConf(ns string, server netip.Addr) string {
	if !server.IsValid() {
		return "nameserver 127.0.0.53\noptions ndots:1\n"
	}
	return fmt.Sprintf("nameserver %s\nsearch %s.svc.%s svc.%s %s\noptions ndots:5 use-vc\n",
		server, ns, clusterDomain, clusterDomain, clusterDomain)
}

// serviceOf parses a query name <service>.<namespace>.svc.cluster.local. (any case) into the Service it names.
func serviceOf(qname string) (ns, name string, ok bool) {
	labels := strings.Split(strings.TrimSuffix(strings.ToLower(qname), "."), ".")
	suffix := append([]string{"svc"}, strings.Split(clusterDomain, ".")...)
	if len(labels) != 2+len(suffix) {
		return "", "", false
	}
	for i, l := range suffix {
		if labels[2+i] != l {
			return "", "", false
		}
	}
	if labels[0] == "" || labels[1] == "" {
		return "", "", false
	}
	return labels[1], labels[0], true
}

// answer is the reply to a question about Service svc (nil: the name does not exist): its ClusterIPs of the
// question's family. A headless Service (no ClusterIP) has no records here: this cluster DNS serves only
// ClusterIP Services.
func answer(q dns.Question, svc *corev1.Service) (rcode int, rrs []dns.RR) {
	if svc == nil {
		return dns.RcodeNameError, nil
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	return dns.RcodeSuccess, records(q, ips)
}

// hostAnswer is the reply to a question about a name outside the cluster domain: its address in the static
// table hosts (by lower-case FQDN), else no such name.
func hostAnswer(q dns.Question, hosts map[string]netip.Addr) (rcode int, rrs []dns.RR) {
	a, ok := hosts[strings.ToLower(dns.Fqdn(q.Name))]
	if !ok {
		return dns.RcodeNameError, nil
	}
	return dns.RcodeSuccess, records(q, []string{a.String()})
}

// records are the A or AAAA records (the question's type) of the addresses ips that are of its family.
func records(q dns.Question, ips []string) (rrs []dns.RR) {
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Rrtype: q.Qtype, Ttl: dnsTTL}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		switch {
		case q.Qtype == dns.TypeA && ip.Is4():
			rrs = append(rrs, &dns.A{Hdr: hdr, A: net.IP(ip.AsSlice())})
		case q.Qtype == dns.TypeAAAA && ip.Is6():
			rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: net.IP(ip.AsSlice())})
		}
	}
	return rrs
}

// clusterDNS serves the cluster's Service names over TCP from the API server, as CoreDNS's kubernetes plugin
// does for ClusterIP Services (every query reads the Service, so answers follow the API server at once), and
// other names from a static table (SetDNSHost), as CoreDNS's hosts plugin does: the "external" hosts of a test,
// answered with in-lab addresses so that no traffic leaves the machine.
type clusterDNS struct {
	srv  *dns.Server
	ln   net.Listener
	done chan struct{}

	mu    sync.Mutex
	hosts map[string]netip.Addr // guarded by mu; lower-case FQDN -> address
}

// SetDNSHost makes the cluster DNS answer name (outside the cluster domain) with addr, or no longer answer it
// when addr is the zero Addr. It fails without Options.ClusterDNS.
func (k *Kubelet) SetDNSHost(name string, addr netip.Addr) error {
	if k.dns == nil {
		return fmt.Errorf("set dns host %s: the kubelet has no cluster DNS", name)
	}
	fqdn := strings.ToLower(dns.Fqdn(name))
	if _, _, ok := serviceOf(fqdn); ok || strings.HasSuffix(fqdn, "."+clusterDomain+".") {
		return fmt.Errorf("set dns host %s: a name of the cluster domain comes from the API server", name)
	}
	k.dns.mu.Lock()
	defer k.dns.mu.Unlock()
	if !addr.IsValid() {
		delete(k.dns.hosts, fqdn)
		return nil
	}
	k.dns.hosts[fqdn] = addr
	return nil
}

// startClusterDNS listens on the host's loopback; Options.ClusterDNS makes it reachable in every pod.
func startClusterDNS(client kubernetes.Interface, log *slog.Logger) (*clusterDNS, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen cluster dns: %w", err)
	}
	d := &clusterDNS{ln: ln, done: make(chan struct{}), hosts: map[string]netip.Addr{}}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			_ = w.WriteMsg(m)
			return
		}
		q := r.Question[0]
		ns, name, ok := serviceOf(q.Name)
		if !ok && !strings.HasSuffix(strings.ToLower(dns.Fqdn(q.Name)), "."+clusterDomain+".") {
			d.mu.Lock()
			m.Rcode, m.Answer = hostAnswer(q, d.hosts)
			d.mu.Unlock()
			_ = w.WriteMsg(m)
			return
		}
		var svc *corev1.Service
		if ok {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s, err := client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
			cancel()
			switch {
			case err == nil:
				svc = s
			case !apierrors.IsNotFound(err):
				log.Warn("cluster dns: get service", "name", q.Name, "err", err)
				m.Rcode = dns.RcodeServerFailure
				_ = w.WriteMsg(m)
				return
			}
		}
		m.Rcode, m.Answer = answer(q, svc)
		_ = w.WriteMsg(m)
	})
	d.srv = &dns.Server{Listener: ln, Net: "tcp", Handler: h}
	started := make(chan struct{})
	d.srv.NotifyStartedFunc = func() { close(started) }
	go func() {
		defer close(d.done)
		if err := d.srv.ActivateAndServe(); err != nil {
			log.Debug("cluster dns stopped", "err", err)
		}
	}()
	select {
	case <-started:
	case <-d.done:
		return nil, fmt.Errorf("serve cluster dns: stopped at start")
	}
	return d, nil
}

func (d *clusterDNS) addr() string { return d.ln.Addr().String() }

func (d *clusterDNS) close() {
	if d != nil {
		_ = d.srv.Shutdown()
		<-d.done
	}
}
