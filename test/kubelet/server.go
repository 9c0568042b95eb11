package kubelet

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"

	"github.com/ambit-mesh/ambit/test/lab"
)

// KubeletPort is the port every node reports as its kubelet endpoint (the real kubelet's default).
const KubeletPort = 10250

// portForwardProtocol is the only port-forward protocol the kubelet still serves (v4: one data and one error
// stream per forwarded connection, paired by the requestID header).
const portForwardProtocol = "portforward.k8s.io"

// server is the kubelet's API (the part kube-apiserver proxies: pods/portforward, pods/exec and pods/log). It runs on the
// connections the egress proxy hands it: the API server reaches every node through Options.EgressSocket, as it
// reaches nodes through a Konnectivity proxy, because the nodes' addresses live in lab namespaces the host
// cannot route to.
type server struct {
	k     *Kubelet
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	http  *http.Server
}

// serveEgress listens on the Unix socket path for the API server's HTTP CONNECT requests (its "cluster" egress
// selection): a CONNECT to a node's name or address at KubeletPort reaches the kubelet's API, any other address
// is dialled from the first node's namespace (pod and node addresses all route from there).
func (k *Kubelet) serveEgress(ctx context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("kubelet: remove stale egress socket: %w", err)
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("kubelet: listen on egress socket: %w", err)
	}
	cert, err := selfSigned(k.nodeNames())
	if err != nil {
		ln.Close()
		return err
	}
	s := &server{k: k, conns: make(chan net.Conn), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/portForward/{namespace}/{pod}", s.portForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", s.portForward)
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.containerLogs)
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", s.exec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", s.exec)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second,
		// Requests (and the port forwards they became) end when the kubelet stops.
		BaseContext: func(net.Listener) context.Context { return ctx },
		TLSConfig:   &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	k.wg.Go(func() {
		// The TLS listener of the kubelet API: the connections the egress proxy accepted for it.
		_ = s.http.Serve(tls.NewListener(s, s.http.TLSConfig))
	})
	k.wg.Go(func() {
		<-ctx.Done()
		ln.Close()
		s.once.Do(func() { close(s.done) })
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := s.http.Shutdown(shut); err != nil {
			s.http.Close()
		}
	})
	k.wg.Go(func() {
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.connect(ctx, c) })
		}
	})
	return nil
}

// Accept, Close and Addr make the server the net.Listener of its HTTP server.
func (s *server) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

func (s *server) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

func (s *server) Addr() net.Addr { return &net.UnixAddr{Name: "kubelet", Net: "unix"} }

// connect answers one HTTP CONNECT from the API server and splices or hands over the connection.
func (s *server) connect(ctx context.Context, c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		c.Close()
		return
	}
	target := req.Host
	if req.Method != http.MethodConnect || target == "" {
		refuse(c, http.StatusMethodNotAllowed, "only CONNECT")
		return
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil {
		refuse(c, http.StatusBadRequest, err.Error())
		return
	}
	conn := &bufferedConn{Conn: c, r: br}
	if port == strconv.Itoa(KubeletPort) && s.k.isNode(host) {
		fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		select {
		case s.conns <- conn:
		case <-s.done:
			c.Close()
		}
		return
	}
	up, err := s.k.nodes[0].lab.NS.Dial(ctx, "tcp", target)
	if err != nil {
		refuse(c, http.StatusBadGateway, err.Error())
		return
	}
	fmt.Fprintf(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	splice(ctx, conn, up)
}

// refuse answers a CONNECT with status and msg, and closes the connection.
func refuse(c net.Conn, status int, msg string) {
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(msg), msg)
	c.Close()
}

// bufferedConn is a connection whose first bytes were read into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// splice copies both ways until both directions end (or ctx does), then closes both.
func splice(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	var wg sync.WaitGroup
	half := func(dst, src net.Conn) {
		if _, err := io.Copy(dst, src); err != nil {
			dst.Close()
			src.Close()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	wg.Go(func() { half(a, b) })
	half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

func (k *Kubelet) nodeNames() []string {
	names := make([]string, 0, len(k.nodes))
	for _, n := range k.nodes {
		names = append(names, n.name)
	}
	return names
}

// isNode reports whether host names a node (its name or its address).
func (k *Kubelet) isNode(host string) bool {
	for _, n := range k.nodes {
		if host == n.name || host == n.lab.IP.String() {
			return true
		}
	}
	return false
}

// portForward serves pods/portforward as the kubelet does over SPDY: each forwarded connection is a pair of
// streams (error, then data) with the same requestID; the data stream is spliced to localhost:<port> in the
// pod's network namespace, and a failure is written to the error stream.
func (s *server) portForward(w http.ResponseWriter, req *http.Request) {
	ns, name := req.PathValue("namespace"), req.PathValue("pod")
	pod, ok := s.k.Pod(ns, name)
	if !ok {
		http.Error(w, fmt.Sprintf("pod %s/%s is not running on this kubelet", ns, name), http.StatusNotFound)
		return
	}
	if _, err := httpstream.Handshake(req, w, []string{portForwardProtocol}); err != nil {
		return // Handshake wrote the error
	}
	streams := make(chan httpstream.Stream)
	conn := spdy.NewResponseUpgrader().UpgradeResponse(w, req, func(st httpstream.Stream, _ <-chan struct{}) error {
		switch st.Headers().Get(corev1.StreamType) {
		case corev1.StreamTypeError, corev1.StreamTypeData:
		default:
			return fmt.Errorf("invalid stream type %q", st.Headers().Get(corev1.StreamType))
		}
		if st.Headers().Get(corev1.PortForwardRequestIDHeader) == "" {
			return errors.New("missing requestID")
		}
		go func() {
			select {
			case streams <- st:
			case <-req.Context().Done():
				st.Reset()
			}
		}()
		return nil
	})
	if conn == nil {
		return // UpgradeResponse wrote the error
	}
	defer conn.Close()
	conn.SetIdleTimeout(4 * time.Hour)
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	type pair struct{ data, errs httpstream.Stream }
	pairs := map[string]*pair{}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		var st httpstream.Stream
		select {
		case st = <-streams:
		case <-conn.CloseChan():
			cancel()
			return
		case <-ctx.Done():
			return
		}
		id := st.Headers().Get(corev1.PortForwardRequestIDHeader)
		p := pairs[id]
		if p == nil {
			p = &pair{}
			pairs[id] = p
		}
		if st.Headers().Get(corev1.StreamType) == corev1.StreamTypeData {
			p.data = st
		} else {
			p.errs = st
		}
		if p.data == nil || p.errs == nil {
			continue
		}
		delete(pairs, id)
		wg.Go(func() {
			defer conn.RemoveStreams(p.data, p.errs)
			defer p.errs.Close()
			port, err := strconv.ParseUint(p.data.Headers().Get(corev1.PortHeader), 10, 16)
			if err == nil && port == 0 {
				err = errors.New("port 0")
			}
			if err == nil {
				err = forward(ctx, pod.NS, int(port), p.data)
			}
			if err != nil {
				s.k.log.Debug("port forward", "pod", ns+"/"+name, "port", p.data.Headers().Get(corev1.PortHeader), "err", err)
				fmt.Fprintf(p.errs, "error forwarding port %s to pod %s/%s: %v", p.data.Headers().Get(corev1.PortHeader), ns, name, err)
			}
		})
	}
}

// forward connects to localhost:port inside ns (IPv4 first, as the container runtimes do) and copies stream to
// and from it until both sides are done.
func forward(ctx context.Context, ns lab.NS, port int, stream httpstream.Stream) error {
	var up net.Conn
	var err error
	for _, a := range []string{"127.0.0.1", "::1"} {
		if up, err = ns.Dial(ctx, "tcp", net.JoinHostPort(a, strconv.Itoa(port))); err == nil {
			break
		}
	}
	if err != nil {
		stream.Close()
		return fmt.Errorf("dial localhost:%d: %w", port, err)
	}
	stop := context.AfterFunc(ctx, func() { up.Close(); stream.Reset() })
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.Copy(up, stream); err != nil {
			up.Close()
			return
		}
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}()
	_, err = io.Copy(stream, up)
	stream.Close() // our half
	<-done
	up.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("copy from localhost:%d: %w", port, err)
	}
	return nil
}

// containerLogs serves pods/log: the container's output so far, then (follow=true) what it writes until the
// client goes or the pod does.
func (s *server) containerLogs(w http.ResponseWriter, req *http.Request) {
	ns, name, ctr := req.PathValue("namespace"), req.PathValue("pod"), req.PathValue("container")
	f, err := os.Open(s.k.LogPath(ns, name, ctr))
	if err != nil {
		http.Error(w, fmt.Sprintf("container %q in pod %s/%s has no log", ctr, ns, name), http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	if _, err := io.Copy(w, f); err != nil || req.URL.Query().Get("follow") != "true" {
		return
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		select {
		case <-req.Context().Done():
			return
		case <-t.C:
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
		if _, running := s.k.Pod(ns, name); !running {
			return
		}
	}
}

// selfSigned makes the kubelet's serving certificate (the API server is not given a CA for kubelets, so it
// does not verify it, as with a kubelet's default self-signed certificate).
func selfSigned(names []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("kubelet: generate serving key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "netns-kubelet"},
		DNSNames: names, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("kubelet: make serving certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
