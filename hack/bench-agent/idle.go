package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// helper runs one of the idle-connection helpers, started by the benchmark inside a pod namespace (each
// its own process, so that 10,000 connections on each side fit the file-descriptor limit):
//
//	hold -addr :9000            accept connections; echo what each sends until the peer closes
//	open -to IP:PORT -n 10000   open n connections, exchange one byte on each, print "open <n>", hold them
//	                            until standard input closes, then close them all and print "closed"; a line
//	                            "check" on standard input exchanges a byte on each and prints "alive <a> dead <d>"
//	churn -to IP:PORT -rate R   new connections at R per second, one byte each (soak.go)
func helper(name string, args []string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	addr := fs.String("addr", ":9000", "hold: listen address")
	to := fs.String("to", "", "open: server address")
	n := fs.Int("n", 10000, "open: connections")
	par := fs.Int("c", 32, "open: connections being opened at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if name == "hold" {
		return hold(*addr)
	}
	return open(*to, *n, *par)
}

func hold(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		go func() { // ends when the peer closes
			defer c.Close()
			// Through plain interfaces: io.Copy between two TCP sockets splices, which costs a pipe (two
			// more fds) per connection; 10,000 connections would then not fit in the fd limit.
			io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
		}()
	}
}

func open(to string, n, par int) error {
	if to == "" {
		return errors.New("-to is required")
	}
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	next := make(chan int)
	for range par {
		wg.Go(func() {
			for i := range next {
				c, err := openOne(to)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("connection %d: %w", i, err)
				}
				conns[i] = c
				mu.Unlock()
			}
		})
	}
	for i := range n {
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Printf("open %d\n", n)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "check" {
			alive, dead := checkAll(conns, par)
			fmt.Printf("alive %d dead %d\n", alive, dead)
		}
	}
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	fmt.Println("closed")
	return nil
}

// checkAll exchanges one byte on every connection, par at a time.
func checkAll(conns []net.Conn, par int) (alive, dead int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan net.Conn)
	for range par {
		wg.Go(func() {
			for c := range next {
				err := exchange(c)
				c.SetDeadline(time.Time{})
				mu.Lock()
				if err == nil {
					alive++
				} else {
					dead++
				}
				mu.Unlock()
			}
		})
	}
	for _, c := range conns {
		next <- c
	}
	close(next)
	wg.Wait()
	return alive, dead
}

// openOne dials and exchanges one byte, so the connection is established end to end.
func openOne(to string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", to)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := []byte{1}
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := io.ReadFull(c, b); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
