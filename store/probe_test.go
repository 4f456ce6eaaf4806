package store

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/internal/fakeserver"
)

// TestNotAStore: Dial to a server that is not a gocoll store fails at
// once (well within two seconds), saying what it found, and is not
// retried until the deadline.
func TestNotAStore(t *testing.T) {
	cases := []struct {
		name  string
		serve fakeserver.Serve
		want  string
	}{
		{"garbage", fakeserver.Sends("\xde\xad\xbe\xef\x00\x01\x02"), `sent "\xde\xad\xbe\xef\x00\x01\x02"`},
		{"banner", fakeserver.Sends("SSH-2.0-OpenSSH_9.2\r\n"), `sent "SSH-2.0-OpenSSH_9.2\r\n"`},
		{"http", fakeserver.SendsAndCloses("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"), `sent "HTTP/1.1 400`},
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
		{"silent", fakeserver.Silent, "sent nothing in"},
		{"partial", fakeserver.Sends(magic[:2]), `sent only "GC" in`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeserver.Start(t, tc.serve)
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
	addr := fakeserver.Start(t, func(nc net.Conn, hold <-chan struct{}) {
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
