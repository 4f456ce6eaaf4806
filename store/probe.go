package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// ErrNotStore is wrapped by the error Dial returns when the server at the
// address answers, but not as a gocoll store: another program holds the
// port (often torchrun's own store on MASTER_PORT). Dial does not retry it.
var ErrNotStore = errors.New("store: the server is not a gocoll store")

// A gocoll server sends its challenge as soon as it accepts a connection,
// so a client need not wait long to know it reached something else.
const (
	// challengeTimeout bounds the wait for the challenge from a server
	// that sends nothing at all, or only part of one.
	challengeTimeout = time.Second
	// probeAfter is how long the client waits in silence before it asks,
	// on a second connection, whether the server is torch's c10d store.
	probeAfter = 200 * time.Millisecond
)

// readChallenge reads the server's challenge from nc. It fails at once,
// with ErrNotStore and what the server sent, when the first bytes are not
// gocoll's magic, and after challengeTimeout when the server sends
// nothing (a torch TCPStore waits silently for its client to speak;
// probeC10d recognises one sooner). ctx bounds the whole read.
func readChallenge(ctx context.Context, nc net.Conn, addr string) ([]byte, error) {
	deadline, _ := ctx.Deadline()
	ch := make([]byte, len(magic)+nonceLen)
	n := 0
	start := time.Now()
	limit := start.Add(challengeTimeout) // for the whole challenge; zero once the server proved to be a (slow) gocoll store
	probed := false
	for n < len(ch) {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("store: waiting for the challenge from %s: %w", addr, err)
		}
		dl := deadline
		if !limit.IsZero() {
			step := limit
			if !probed && n == 0 {
				step = start.Add(probeAfter)
			}
			if dl.IsZero() || step.Before(dl) {
				dl = step
			}
		}
		nc.SetReadDeadline(dl)
		m, err := nc.Read(ch[n:])
		n += m
		if k := min(n, len(magic)); string(ch[:k]) != magic[:k] {
			return nil, fmt.Errorf("%w: %s sent %s, not a gocoll store's challenge: another program listens on that port "+
				"(is MASTER_PORT free, or did a launcher give it to its own store?)", ErrNotStore, addr, quote(ch[:n]))
		}
		if err == nil {
			continue
		}
		var ne net.Error
		silent := errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil &&
			(deadline.IsZero() || time.Now().Before(deadline))
		switch {
		case silent && !probed && n == 0:
			probed = true
			switch what := probeC10d(addr, limit); what {
			case "":
			case magic:
				limit = time.Time{} // a gocoll store after all, only slow: wait as long as the caller does
			default:
				return nil, fmt.Errorf("%w: %s is %s, which sends no challenge; under torchrun's default "+
					"rendezvous (TORCHELASTIC_USE_AGENT_STORE=True) gocoll meets through that store itself, "+
					"elsewhere point MASTER_ADDR:MASTER_PORT at rank 0's gocoll store", ErrNotStore, addr, what)
			}
		case silent && !limit.IsZero() && !time.Now().Before(limit) && n == 0:
			return nil, fmt.Errorf("%w: %s accepted the connection but sent nothing in %v; a gocoll store sends its challenge "+
				"at once: another program listens on that port (is MASTER_PORT right?)", ErrNotStore, addr, challengeTimeout)
		case silent && !limit.IsZero() && !time.Now().Before(limit):
			return nil, fmt.Errorf("%w: %s sent only %s in %v, not a whole gocoll challenge: another program listens on that port "+
				"(is MASTER_PORT right?)", ErrNotStore, addr, quote(ch[:n]), challengeTimeout)
		case silent:
		case errors.Is(err, io.EOF):
			// A server going away mid-handshake may be a store
			// restarting: the caller retries.
			return nil, fmt.Errorf("store: %s closed the connection after sending %s of its challenge: %w", addr, quote(ch[:n]), err)
		default:
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("store: reading the challenge from %s (got %s): %w", addr, quote(ch[:n]), err)
		}
	}
	return ch, nil
}

// probeC10d asks, on a second connection, whether addr is torch's c10d
// TCPStore, with the one query of torch 1.13's protocol that changes
// nothing (GETNUMKEYS: type 6, answered with a 64-bit count). It returns a
// description of what answered, magic when a gocoll challenge came
// instead, or "" when it cannot tell.
func probeC10d(addr string, deadline time.Time) string {
	d := net.Dialer{Deadline: deadline}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return ""
	}
	defer nc.Close()
	nc.SetDeadline(deadline)
	if _, err := nc.Write([]byte{6}); err != nil {
		return ""
	}
	var b [8]byte
	n, err := io.ReadFull(nc, b[:])
	if n >= len(magic) && string(b[:len(magic)]) == magic {
		return magic
	}
	if err != nil {
		return ""
	}
	if keys := binary.LittleEndian.Uint64(b[:]); keys < 1<<40 {
		return fmt.Sprintf("torch's c10d TCPStore (it answered a TCPStore query: %d keys)", keys)
	}
	return ""
}

// quote shows bytes a server sent, for an error message: printable ASCII
// as it is, anything else as \xNN, in double quotes.
func quote(b []byte) string {
	if len(b) == 0 {
		return "nothing"
	}
	more := ""
	if len(b) > 64 {
		b, more = b[:64], "..."
	}
	var sb strings.Builder
	sb.WriteByte('"')
	for _, c := range b {
		switch {
		case c == '"' || c == '\\':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c == '\r':
			sb.WriteString(`\r`)
		case c == '\n':
			sb.WriteString(`\n`)
		case c >= 0x20 && c < 0x7f:
			sb.WriteByte(c)
		default:
			fmt.Fprintf(&sb, `\x%02x`, c)
		}
	}
	sb.WriteByte('"')
	return sb.String() + more
}
