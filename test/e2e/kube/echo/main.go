// Command echo is the test server image of the Kubernetes end-to-end tier: an HTTP server that answers every
// request with the name of its pod and the client address it saw, on each --port.
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
	"strings"
	"syscall"
)

func main() {
	var ports []string
	flag.Func("port", "port to serve HTTP on (repeatable)", func(s string) error { ports = append(ports, s); return nil })
	name := flag.String("name", os.Getenv("POD_NAME"), "name to answer with")
	flag.Parse()
	if len(ports) == 0 {
		ports = []string{"9080"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "%s saw %s\n", *name, host)
	})
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
	log.Printf("%s serving on %v", *name, ports)
	<-ctx.Done()
	for _, s := range srvs {
		_ = s.Close()
	}
}
