package kubelet

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"

	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// serverKubelet is a kubelet with one node (lab node 0) running one pod, ns/p, in the lab's pod namespace n0's
// first pod, and its API on an egress socket. It runs no informer: the pod is the worker's sandbox.
func serverKubelet(t *testing.T) (*Kubelet, *lab.Lab, string) {
	t.Helper()
	l := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 1})
	dir := t.TempDir()
	k := &Kubelet{opts: Options{Dir: dir}, log: slog.New(slog.DiscardHandler), workers: map[types.UID]*podWorker{}}
	n := &node{name: "node-0", lab: l.Nodes[0]}
	k.nodes = []*node{n}
	w := newPodWorker(k, n, "uid-p")
	w.sb = &sandbox{namespace: "ns", name: "p", ns: l.Nodes[0].Pods[0].NS, ip: l.Nodes[0].Pods[0].IP, own: true}
	k.workers["uid-p"] = w
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(dir, "egress.sock")
	if err := k.serveEgress(ctx, sock); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); k.wg.Wait() })
	return k, l, sock
}

// egressDial opens a tunnel to target through the egress socket, as kube-apiserver's HTTPConnect egress does.
func egressDial(t *testing.T, sock, target string) (net.Conn, *http.Response) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	if resp.StatusCode == http.StatusOK && br.Buffered() > 0 {
		t.Fatalf("CONNECT %s: %d bytes after the response", target, br.Buffered())
	}
	return c, resp
}

// kubeletConn is a TLS connection to the kubelet API through the egress socket (not verified, as kube-apiserver
// does not verify kubelets without --kubelet-certificate-authority).
func kubeletConn(t *testing.T, sock string) *tls.Conn {
	t.Helper()
	c, resp := egressDial(t, sock, "node-0:"+strconv.Itoa(KubeletPort))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT to the kubelet: %s", resp.Status)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // as kube-apiserver without a kubelet CA
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

// portForwardConn upgrades a kubelet connection to an SPDY port-forward session for ns/pod, as kube-apiserver
// (proxying kubectl port-forward) does.
func portForwardConn(t *testing.T, sock, path string) (httpstream.Connection, *http.Response) {
	t.Helper()
	tc := kubeletConn(t, sock)
	fmt.Fprintf(tc, "POST %s HTTP/1.1\r\nHost: node-0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"+
		"X-Stream-Protocol-Version: %s\r\nContent-Length: 0\r\n\r\n", path, portForwardProtocol)
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, resp
	}
	conn, err := spdy.NewClientConnection(tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, resp
}

// forwardOnce opens the error and data streams of one forwarded connection to port and returns them.
func forwardOnce(t *testing.T, conn httpstream.Connection, id, port string) (data, errs httpstream.Stream) {
	t.Helper()
	h := http.Header{}
	h.Set(corev1.StreamType, corev1.StreamTypeError)
	h.Set(corev1.PortHeader, port)
	h.Set(corev1.PortForwardRequestIDHeader, id)
	errs, err := conn.CreateStream(h)
	if err != nil {
		t.Fatal(err)
	}
	errs.Close() // the client never writes to the error stream
	h.Set(corev1.StreamType, corev1.StreamTypeData)
	if data, err = conn.CreateStream(h); err != nil {
		t.Fatal(err)
	}
	return data, errs
}

func TestPortForward(t *testing.T) {
	tu.RequireRoot(t)
	tu.CheckGoroutines(t)
	_, l, sock := serverKubelet(t)
	pod := l.Nodes[0].Pods[0]
	// A server on the pod's loopback only: reachable by port-forward, not from outside the pod.
	ln, err := pod.NS.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	})}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	defer srv.Close()

	conn, resp := portForwardConn(t, sock, "/portForward/ns/p")
	if conn == nil {
		t.Fatalf("upgrade: %s", resp.Status)
	}
	if got := resp.Header.Get(httpstream.HeaderProtocolVersion); got != portForwardProtocol {
		t.Errorf("protocol %q, want %q", got, portForwardProtocol)
	}
	// Two forwarded connections on one session, one after the other (istioctl makes one per request).
	for i, path := range []string{"/config_dump", "/second"} {
		data, errs := forwardOnce(t, conn, strconv.Itoa(i), port)
		fmt.Fprintf(data, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", path)
		data.Close() // half-close: the request is complete
		r, err := http.ReadResponse(bufio.NewReader(data), nil)
		if err != nil {
			t.Fatalf("response through the forward: %v", err)
		}
		body, _ := io.ReadAll(r.Body)
		if r.StatusCode != 200 || string(body) != "hello "+path {
			t.Errorf("GET %s: %s %q", path, r.Status, body)
		}
		if msg, _ := io.ReadAll(errs); len(msg) != 0 {
			t.Errorf("error stream: %q", msg)
		}
		conn.RemoveStreams(data, errs)
	}

	// A port nothing listens on: the error stream says so, as the kubelet's does.
	ln2, err := pod.NS.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := strconv.Itoa(ln2.Addr().(*net.TCPAddr).Port)
	ln2.Close()
	data, errs := forwardOnce(t, conn, "9", closed)
	msg, _ := io.ReadAll(errs)
	if !strings.Contains(string(msg), "error forwarding port "+closed+" to pod ns/p") || !strings.Contains(string(msg), "connection refused") {
		t.Errorf("error stream for a closed port: %q", msg)
	}
	if b, _ := io.ReadAll(data); len(b) != 0 {
		t.Errorf("data stream for a closed port: %q", b)
	}
}

func TestPortForwardRefusals(t *testing.T) {
	tu.RequireRoot(t)
	tu.CheckGoroutines(t)
	_, _, sock := serverKubelet(t)
	if conn, resp := portForwardConn(t, sock, "/portForward/ns/absent"); conn != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("port-forward to a pod the kubelet does not run: %s, want 404", resp.Status)
	}
	// A CONNECT that is not one is refused; an address that is not a node's kubelet is dialled from the node.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: node-0:10250\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET on the egress socket: %v %v", resp, err)
	}
}

func TestEgressToPods(t *testing.T) {
	tu.RequireRoot(t)
	tu.CheckGoroutines(t)
	_, l, sock := serverKubelet(t)
	pod := l.Nodes[0].Pods[0]
	ln, err := pod.NS.Listen(t.Context(), "tcp", net.JoinHostPort(pod.IP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c) //nolint:errcheck // echo until the client half-closes
	}()
	c, resp := egressDial(t, sock, ln.Addr().String())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT to a pod: %s", resp.Status)
	}
	fmt.Fprint(c, "ping")
	c.(*net.UnixConn).CloseWrite()
	if b, _ := io.ReadAll(c); string(b) != "ping" {
		t.Errorf("echo through the egress tunnel: %q", b)
	}
	c2, resp := egressDial(t, sock, "127.0.0.1:1")
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("CONNECT to a closed port: %s, want 502", resp.Status)
	}
	c2.Close()
}

func TestContainerLogs(t *testing.T) {
	tu.RequireRoot(t)
	tu.CheckGoroutines(t)
	k, _, sock := serverKubelet(t)
	if err := os.MkdirAll(filepath.Dir(k.LogPath("ns", "p", "c")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.LogPath("ns", "p", "c"), []byte("line 1\nline 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	get := func(path string) (*http.Response, string) {
		tc := kubeletConn(t, sock)
		fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: node-0\r\nConnection: close\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := get("/containerLogs/ns/p/c"); resp.StatusCode != 200 || body != "line 1\nline 2\n" {
		t.Errorf("logs: %s %q", resp.Status, body)
	}
	if resp, _ := get("/containerLogs/ns/p/other"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("logs of an unknown container: %s", resp.Status)
	}
}
