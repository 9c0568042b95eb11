package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
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
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Rrtype: q.Qtype, Ttl: dnsTTL}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
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
	return dns.RcodeSuccess, rrs
}

// clusterDNS serves the cluster's Service names over TCP from the API server, as CoreDNS's kubernetes plugin
// does for ClusterIP Services (every query reads the Service, so answers follow the API server at once).
type clusterDNS struct {
	srv  *dns.Server
	ln   net.Listener
	done chan struct{}
}

// startClusterDNS listens on the host's loopback; Options.ClusterDNS makes it reachable in every pod.
func startClusterDNS(client kubernetes.Interface, log *slog.Logger) (*clusterDNS, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen cluster dns: %w", err)
	}
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
	d := &clusterDNS{ln: ln, srv: &dns.Server{Listener: ln, Net: "tcp", Handler: h}, done: make(chan struct{})}
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
