package main

import (
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
//	hold -addr :9000            accept connections; on each, echo one byte, then hold it until the peer closes
//	open -to IP:PORT -n 10000   open n connections, exchange one byte on each, print "open <n>", hold them
//	                            until standard input closes, then close them all and print "closed"
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
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			if _, err := c.Write(b[:]); err != nil {
				return
			}
			io.Copy(io.Discard, c)
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
	io.Copy(io.Discard, os.Stdin)
	for i, c := range conns {
		c.Close()
		conns[i] = nil
	}
	fmt.Println("closed")
	return nil
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
