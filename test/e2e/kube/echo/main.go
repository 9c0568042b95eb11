// Command echo is the test server image of the Kubernetes end-to-end tier: an HTTP server that answers every
// request with the name of its pod and the client address it saw, on each --port.
//
// A few query parameters make it a backend for the L7 tests (the default answer is unchanged without them):
//   - dump: after the first line, the request as the server got it: "uri <request URI>", "host <Host>" and one
//     "header <Name>: <value>" line per request header value, sorted.
//   - delay=<Go duration>: answer after that long (a slow backend).
//   - status=<code>: answer with that status.
//   - fail-first=<key>: the first request of this pod with that key answers 500, the next ones 200 (a backend
//     failing the first attempt).
//   - fail-on=<prefix>: answer 500 when the pod's name starts with prefix (one bad endpoint of several).
//
// GET /_seen answers the request URIs this pod has served, one a line (what a mirror backend received). Every
// answer carries the header X-Echo-Pod with the pod's name. With --grpc-port it also serves gRPC there: the
// standard health service (grpc.health.v1.Health, SERVING), every answer with the header x-echo-pod.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// server is the echo handler and what it remembers.
type server struct {
	name string
	mu   sync.Mutex
	seen []string        // request URIs served, in order
	keys map[string]bool // fail-first keys already failed once
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Echo-Pod", s.name)
	if r.URL.Path == "/_seen" {
		s.mu.Lock()
		list := slices.Clone(s.seen)
		s.mu.Unlock()
		for _, u := range list {
			fmt.Fprintln(w, u)
		}
		return
	}
	q := r.URL.Query()
	s.mu.Lock()
	s.seen = append(s.seen, r.URL.RequestURI())
	failNow := false
	if k := q.Get("fail-first"); k != "" && !s.keys[k] {
		s.keys[k], failNow = true, true
	}
	s.mu.Unlock()
	if d, err := time.ParseDuration(q.Get("delay")); err == nil && d > 0 {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(d):
		}
	}
	status := http.StatusOK
	if code, err := strconv.Atoi(q.Get("status")); err == nil && code >= 200 && code <= 599 {
		status = code
	}
	if p := q.Get("fail-on"); p != "" && strings.HasPrefix(s.name, p) {
		failNow = true
	}
	if failNow {
		status = http.StatusInternalServerError
	}
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	var b strings.Builder
	fmt.Fprintf(&b, "%s saw %s\n", s.name, host)
	if q.Has("dump") {
		fmt.Fprintf(&b, "uri %s\nhost %s\n", r.URL.RequestURI(), r.Host)
		var lines []string
		for k, vs := range r.Header {
			for _, v := range vs {
				lines = append(lines, "header "+k+": "+v)
			}
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

func main() {
	var ports []string
	flag.Func("port", "port to serve HTTP on (repeatable)", func(s string) error { ports = append(ports, s); return nil })
	name := flag.String("name", os.Getenv("POD_NAME"), "name to answer with")
	grpcPort := flag.String("grpc-port", "", "port to serve gRPC on (none when empty)")
	flag.Parse()
	if len(ports) == 0 {
		ports = []string{"9080"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	h := &server{name: *name, keys: map[string]bool{}}
	var srvs []*http.Server
	for _, p := range ports {
		ln, err := net.Listen("tcp", ":"+strings.TrimPrefix(p, ":"))
		if err != nil {
			log.Fatal(err)
		}
		srv := &http.Server{Handler: h}
		srvs = append(srvs, srv)
		go func() { _ = srv.Serve(ln) }()
	}
	if *grpcPort != "" {
		ln, err := net.Listen("tcp", ":"+*grpcPort)
		if err != nil {
			log.Fatal(err)
		}
		gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
			_ = grpc.SetHeader(ctx, metadata.Pairs("x-echo-pod", *name))
			return next(ctx, req)
		}))
		healthpb.RegisterHealthServer(gs, health.NewServer())
		go func() { _ = gs.Serve(ln) }()
		defer gs.Stop()
	}
	log.Printf("%s serving on %v (gRPC %q)", *name, ports, *grpcPort)
	<-ctx.Done()
	for _, s := range srvs {
		_ = s.Close()
	}
}
