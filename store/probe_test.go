package store

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeServer accepts connections on a fresh port and runs serve on each
// until the test ends.
func fakeServer(t *testing.T, serve func(nc net.Conn, hold <-chan struct{})) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(hold); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				serve(nc, hold)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestNotAStore: Dial to a server that is not a gocoll store fails at
// once (well within two seconds), saying what it found, and is not
// retried until the deadline.
func TestNotAStore(t *testing.T) {
	cases := []struct {
		name  string
		serve func(net.Conn, <-chan struct{})
		want  string
	}{
		{"garbage", func(nc net.Conn, hold <-chan struct{}) {
			nc.Write([]byte{0xde, 0xad, 0xbe, 0xef, 0, 1, 2})
			<-hold
		}, `sent "\xde\xad\xbe\xef\x00\x01\x02"`},
		{"banner", func(nc net.Conn, hold <-chan struct{}) {
			io.WriteString(nc, "SSH-2.0-OpenSSH_9.2\r\n")
			<-hold
		}, `sent "SSH-2.0-OpenSSH_9.2\r\n"`},
		{"http", func(nc net.Conn, hold <-chan struct{}) {
			io.WriteString(nc, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
		}, `sent "HTTP/1.1 400`},
		{"c10d", func(nc net.Conn, hold <-chan struct{}) {
			// torch 1.13's TCPStore: silent until asked; GETNUMKEYS (6)
			// is answered with a count.
			var q [1]byte
			if _, err := io.ReadFull(nc, q[:]); err != nil || q[0] != 6 {
				<-hold
				return
			}
			nc.Write(binary.LittleEndian.AppendUint64(nil, 3))
			<-hold
		}, "torch's c10d TCPStore"},
		{"silent", func(nc net.Conn, hold <-chan struct{}) { <-hold }, "sent nothing in"},
		{"partial", func(nc net.Conn, hold <-chan struct{}) {
			io.WriteString(nc, magic[:2])
			<-hold
		}, `sent only "GC" in`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeServer(t, tc.serve)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			c, err := Dial(ctx, addr, secret)
			if err == nil {
				c.Close()
				t.Fatal("Dial accepted it")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Dial took %v to give up", d)
			}
			if !errors.Is(err, ErrNotStore) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Dial: %v\nwant ErrNotStore saying %s", err, tc.want)
			}
		})
	}
}

// TestSlowChallenge: a gocoll server that takes longer than the probe
// delay to send its challenge is still reached (the probe hears its
// challenge on its own connection, and the client keeps waiting).
func TestSlowChallenge(t *testing.T) {
	delay := 3 * probeAfter
	addr := fakeServer(t, func(nc net.Conn, hold <-chan struct{}) {
		time.Sleep(delay)
		if serverHandshake(nc, secret) == nil {
			<-hold
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	c, err := Dial(ctx, addr, secret)
	if err != nil {
		t.Fatalf("Dial to a slow gocoll server: %v", err)
	}
	c.Close()
	if d := time.Since(start); d < delay {
		t.Errorf("Dial returned after %v, before the server's challenge", d)
	}
}
