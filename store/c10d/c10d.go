// Package c10d is a client for the key-value store of PyTorch's
// torch.distributed (c10d) TCPStore, the store torchrun's elastic agent
// serves at MASTER_ADDR:MASTER_PORT when it sets
// TORCHELASTIC_USE_AGENT_STORE=True. gocoll's ranks meet through it under
// torchrun instead of serving a store of their own there.
//
// # Protocol versions
//
// The client speaks the wire protocol of torch 1.13's TCPStore (tested
// against Debian's python3-torch 1.13.1). There every query is a one-byte
// type followed by its arguments, with no framing and no handshake: a key
// or value is a 64-bit length and its bytes, integers are 64-bit, all in
// the host's byte order (little-endian on the x86-64 and arm64 machines
// torch runs on, which this client assumes). The types are SET 0 (no
// reply), COMPARE_SET 1, GET 2, ADD 3, CHECK 4, WAIT 5, GETNUMKEYS 6,
// WATCH_KEY 7 and DELETE_KEY 8. torch's client puts "/" before every key
// (a key k is "/k" on the wire, "init/" aside), and so does this one, so
// that both see the same keys. The server closes a connection on any
// query it cannot serve (GET of a missing key, ADD to a value that is not
// an integer, an unknown type), so Get waits for its key first, as torch's
// own client does.
//
// Newer torch releases (2.x) changed the protocol: a client must first
// send a VALIDATE query (type 0, with the magic number 0x3C85F7CE), every
// other type moved up by one, and queries were added (APPEND, MULTI_GET,
// MULTI_SET and CANCEL_WAIT; by 2.8 also PING, QUEUE_PUSH, QUEUE_POP and
// QUEUE_LEN), some releases prefixing every query with a magic number
// too; their libuv server is the default since 2.4. This client does not
// speak that protocol. Against such a server Dial should fail within
// AnswerTimeout, saying that the server did not answer a torch 1.13 query
// (by reading its sources; no torch 2.x server was at hand to test).
//
// # Validation and errors
//
// The 1.13 protocol has no handshake of its own, so Dial validates the
// server with a harmless query (GETNUMKEYS) and checks the answer: a
// server that sends gocoll's store challenge, garbage, nothing within
// AnswerTimeout, or closes the connection is not a c10d store, and Dial
// says which at once (the error wraps ErrNotC10d) instead of hanging
// until the job's timeout.
//
// # Connections
//
// A 1.13 connection carries one query at a time, and a WAIT holds it until
// its keys exist (there is no way to cancel one but closing the
// connection). The client therefore keeps a small pool: each call takes
// an idle connection or dials a new one, and returns it when the call
// succeeds. A call whose context ends, or that fails, closes its
// connection, so no connection is ever left in an unknown state; the
// server forgets a closed connection's waits.
//
// The store has no authentication: whoever can reach its port can read
// and write every key. That is torch's design, not this client's.
package c10d

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gocoll/gocoll/core"
)

// Query types of torch 1.13's TCPStore (see the package documentation).
const (
	opSet        byte = 0
	opCompareSet byte = 1
	opGet        byte = 2
	opAdd        byte = 3
	opCheck      byte = 4
	opWait       byte = 5
	opNumKeys    byte = 6
	opDelete     byte = 8
)

// Answers to CHECK and WAIT.
const (
	checkReady    byte = 0
	checkNotReady byte = 1
	waitStop      byte = 0
)

const (
	// maxValue bounds the length of a value the client accepts from the
	// server, so that a stray length cannot make it allocate the heap away.
	maxValue = 1 << 30
	// maxIdle is how many idle connections the pool keeps.
	maxIdle = 4
	// gocollMagic opens a gocoll store's challenge (see package store).
	gocollMagic = "GCS1"
)

// AnswerTimeout bounds how long Dial waits for the server's answer to its
// validating query. torch's server answers at once; a server that says
// nothing for this long is not one.
const AnswerTimeout = time.Second

// DefaultDialTimeout bounds Dial when its context has no deadline.
const DefaultDialTimeout = 60 * time.Second

// ErrNotC10d is wrapped by the error Dial returns when the server at the
// address does not speak torch 1.13's TCPStore protocol.
var ErrNotC10d = errors.New("c10d: the server is not a torch 1.13 TCPStore")

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("c10d: client is closed")

// Client is a connection pool to one c10d TCPStore. It is safe for
// concurrent use. A Client made by WithPrefix shares the pool of the one
// it was made from; closing any of them closes the pool.
type Client struct {
	p      *pool
	prefix string
}

var _ core.Store = (*Client)(nil)

type pool struct {
	addr string

	mu     sync.Mutex
	idle   []net.Conn
	busy   map[net.Conn]struct{}
	closed bool
}

// Dial connects to the TCPStore at addr ("host:port") and validates it
// (see the package documentation). Refused connections are retried until
// ctx ends, as the server may still be starting; if ctx has no deadline,
// DefaultDialTimeout applies. A server that answers but is not a c10d
// store is not retried: the error wraps ErrNotC10d.
func Dial(ctx context.Context, addr string) (*Client, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	p := &pool{addr: addr, busy: map[net.Conn]struct{}{}}
	nc, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	if err := validate(ctx, nc, addr); err != nil {
		nc.Close()
		return nil, err
	}
	p.idle = append(p.idle, nc)
	return &Client{p: p}, nil
}

// dial opens one TCP connection, retrying refusals until ctx ends.
func (p *pool) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	backoff := 10 * time.Millisecond
	for {
		nc, err := d.DialContext(ctx, "tcp", p.addr)
		if err == nil {
			if tc, ok := nc.(*net.TCPConn); ok {
				tc.SetNoDelay(true)
			}
			return nc, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("c10d: connecting to %s: no server accepted the connection (is MASTER_ADDR:MASTER_PORT torchrun's store?): %w", p.addr, err)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) &&
			!errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.ENETUNREACH) && !errors.Is(err, syscall.ETIMEDOUT) {
			return nil, fmt.Errorf("c10d: connecting to %s: %w", p.addr, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("c10d: connecting to %s: no server accepted the connection (is MASTER_ADDR:MASTER_PORT torchrun's store?): %w", p.addr, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// validate sends GETNUMKEYS and checks that the answer is one.
func validate(ctx context.Context, nc net.Conn, addr string) error {
	dl := time.Now().Add(AnswerTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	nc.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := nc.Write([]byte{opNumKeys}); err != nil {
		return fmt.Errorf("c10d: validating the store at %s: %w", addr, err)
	}
	var b [8]byte
	n, err := io.ReadFull(nc, b[:])
	if n >= len(gocollMagic) && string(b[:len(gocollMagic)]) == gocollMagic {
		return fmt.Errorf("%w: %s sent a gocoll store's challenge: it is gocoll's own store, not torch's (under torchrun with "+
			"TORCHELASTIC_USE_AGENT_STORE=True, MASTER_PORT should be the agent's store)", ErrNotC10d, addr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("c10d: validating the store at %s: %w", addr, ctx.Err())
		}
		got := "nothing"
		if n > 0 {
			got = strconv.Quote(string(b[:n]))
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && n > 0 {
			return fmt.Errorf("%w: %s answered a GETNUMKEYS query with only %s in %v, not an 8-byte key count",
				ErrNotC10d, addr, got, AnswerTimeout)
		}
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("%w: %s accepted the connection but sent nothing in answer to a GETNUMKEYS query within %v "+
				"(torch 1.13 answers at once; torch 2.x's store waits for a validation handshake this client does not speak)",
				ErrNotC10d, addr, AnswerTimeout)
		}
		return fmt.Errorf("%w: %s closed the connection after sending %s in answer to a GETNUMKEYS query (%v); "+
			"torch 2.x's store drops clients that do not validate in its newer protocol, which this client does not speak",
			ErrNotC10d, addr, got, err)
	}
	if keys := binary.LittleEndian.Uint64(b[:]); keys >= 1<<40 {
		return fmt.Errorf("%w: %s answered a GETNUMKEYS query with %q, not a key count", ErrNotC10d, addr, b[:])
	}
	nc.SetDeadline(time.Time{})
	return nil
}

// Addr returns the server's address.
func (c *Client) Addr() string { return c.p.addr }

// WithPrefix returns a Client that prefixes every key with prefix and
// shares c's connections, as torch's PrefixStore does. Prefixes nest.
func (c *Client) WithPrefix(prefix string) *Client {
	return &Client{p: c.p, prefix: c.prefix + prefix}
}

// Close closes every connection, including those of calls in flight,
// which then fail. Close is idempotent.
func (c *Client) Close() error {
	p := c.p
	p.mu.Lock()
	p.closed = true
	conns := append(p.idle, mapKeys(p.busy)...)
	p.idle, p.busy = nil, map[net.Conn]struct{}{}
	p.mu.Unlock()
	var errs []error
	for _, nc := range conns {
		if err := nc.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func mapKeys(m map[net.Conn]struct{}) []net.Conn {
	out := make([]net.Conn, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// take returns an idle connection or a new one.
func (p *pool) take(ctx context.Context) (net.Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if n := len(p.idle); n > 0 {
		nc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.busy[nc] = struct{}{}
		p.mu.Unlock()
		return nc, nil
	}
	p.mu.Unlock()
	nc, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		nc.Close()
		return nil, ErrClosed
	}
	p.busy[nc] = struct{}{}
	return nc, nil
}

// give returns nc to the pool, or closes it when broken is set, the pool
// is closed, or enough connections are idle.
func (p *pool) give(nc net.Conn, broken bool) {
	p.mu.Lock()
	_, mine := p.busy[nc]
	delete(p.busy, nc)
	keep := mine && !broken && !p.closed && len(p.idle) < maxIdle
	if keep {
		p.idle = append(p.idle, nc)
	}
	p.mu.Unlock()
	if !keep {
		nc.Close()
	}
}

// conn is one call's view of a connection: writes and reads that fail
// with a description of what went wrong.
type conn struct {
	nc   net.Conn
	addr string
}

// do runs fn on a connection, bounded by ctx. A call that fails closes
// its connection: a 1.13 connection has no way back to a known state.
func (c *Client) do(ctx context.Context, what string, fn func(*conn) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("c10d: %s: %w", what, err)
	}
	nc, err := c.p.take(ctx)
	if err != nil {
		return fmt.Errorf("c10d: %s: %w", what, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	} else {
		nc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	err = fn(&conn{nc: nc, addr: c.p.addr})
	if !stop() && err == nil {
		// ctx ended as fn returned: its deadline may be set in the
		// past, so the connection cannot be trusted to the next call.
		c.p.give(nc, true)
		return nil
	}
	c.p.give(nc, err != nil)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("c10d: %s: %w", what, ctx.Err())
		}
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
			// The connection's deadline, which is ctx's, fired a moment
			// before ctx noticed.
			return fmt.Errorf("c10d: %s: %w", what, context.DeadlineExceeded)
		}
		c.p.mu.Lock()
		closed := c.p.closed
		c.p.mu.Unlock()
		if closed {
			return fmt.Errorf("c10d: %s: %w", what, ErrClosed)
		}
		return fmt.Errorf("c10d: %s: %w", what, err)
	}
	return nil
}

func (cn *conn) send(b []byte) error {
	if _, err := cn.nc.Write(b); err != nil {
		return fmt.Errorf("writing to %s: %w", cn.addr, err)
	}
	return nil
}

func (cn *conn) read(b []byte) error {
	if _, err := io.ReadFull(cn.nc, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("the store at %s closed the connection (it does so on a query it cannot serve, such as ADD to a "+
				"value that is not an integer, or when it shuts down): %w", cn.addr, err)
		}
		return fmt.Errorf("reading from %s: %w", cn.addr, err)
	}
	return nil
}

func (cn *conn) readByte() (byte, error) {
	var b [1]byte
	err := cn.read(b[:])
	return b[0], err
}

func (cn *conn) readInt() (int64, error) {
	var b [8]byte
	if err := cn.read(b[:]); err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(b[:])), nil
}

func (cn *conn) readBytes() ([]byte, error) {
	n, err := cn.readInt()
	if err != nil {
		return nil, err
	}
	if n < 0 || n > maxValue {
		return nil, fmt.Errorf("the store at %s sent a value of %d bytes (limit %d): the stream is out of step", cn.addr, n, maxValue)
	}
	b := make([]byte, n)
	if err := cn.read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// query builds one query.
type query struct{ b []byte }

func newQuery(op byte) *query { return &query{b: []byte{op}} }

func (q *query) bytes(v []byte) *query {
	q.b = binary.LittleEndian.AppendUint64(q.b, uint64(len(v)))
	q.b = append(q.b, v...)
	return q
}

func (q *query) str(s string) *query {
	q.b = binary.LittleEndian.AppendUint64(q.b, uint64(len(s)))
	q.b = append(q.b, s...)
	return q
}

func (q *query) int(v int64) *query {
	q.b = binary.LittleEndian.AppendUint64(q.b, uint64(v))
	return q
}

// keyPrefix is what torch's TCPStore client puts before every key on the
// wire (its keyPrefix_); with it, torch's clients and this one see the
// same keys.
const keyPrefix = "/"

func (c *Client) key(k string) (string, error) {
	if c.prefix+k == "" {
		return "", errors.New("c10d: the key is empty")
	}
	return keyPrefix + c.prefix + k, nil
}

func (c *Client) keys(ks []string) ([]string, error) {
	if len(ks) == 0 {
		return nil, errors.New("c10d: no keys given")
	}
	out := make([]string, len(ks))
	for i, k := range ks {
		var err error
		if out[i], err = c.key(k); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Set implements core.Store. A 1.13 SET has no reply, so Set follows it
// with a GETNUMKEYS on the same connection: when Set returns, the server
// has applied it, and a broken connection is an error here rather than a
// lost write.
func (c *Client) Set(ctx context.Context, key string, value []byte) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	q := newQuery(opSet).str(k).bytes(value)
	q.b = append(q.b, opNumKeys)
	return c.do(ctx, "set "+k, func(cn *conn) error {
		if err := cn.send(q.b); err != nil {
			return err
		}
		_, err := cn.readInt()
		return err
	})
}

// Get implements core.Store: it waits until key exists or ctx ends.
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	k, err := c.key(key)
	if err != nil {
		return nil, err
	}
	var v []byte
	err = c.do(ctx, "waiting for key "+k, func(cn *conn) error {
		if err := waitOn(cn, []string{k}); err != nil {
			return err
		}
		if err := cn.send(newQuery(opGet).str(k).b); err != nil {
			return err
		}
		v, err = cn.readBytes()
		return err
	})
	return v, err
}

// waitOn sends WAIT for keys and reads its answer.
func waitOn(cn *conn, keys []string) error {
	q := newQuery(opWait).int(int64(len(keys)))
	for _, k := range keys {
		q.str(k)
	}
	if err := cn.send(q.b); err != nil {
		return err
	}
	st, err := cn.readByte()
	if err != nil {
		return err
	}
	if st != waitStop {
		return fmt.Errorf("the store at %s answered WAIT with %d, not STOP_WAITING (0): the stream is out of step", cn.addr, st)
	}
	return nil
}

// Wait returns once every key exists, or with an error when ctx ends.
func (c *Client) Wait(ctx context.Context, keys ...string) error {
	ks, err := c.keys(keys)
	if err != nil {
		return err
	}
	return c.do(ctx, describe("waiting for", ks), func(cn *conn) error { return waitOn(cn, ks) })
}

// MultiGet waits until every key exists and returns their values in the
// order of keys: one WAIT, then the GETs in one write.
func (c *Client) MultiGet(ctx context.Context, keys ...string) ([][]byte, error) {
	ks, err := c.keys(keys)
	if err != nil {
		return nil, err
	}
	vs := make([][]byte, len(ks))
	err = c.do(ctx, describe("waiting for", ks), func(cn *conn) error {
		if err := waitOn(cn, ks); err != nil {
			return err
		}
		var q []byte
		for _, k := range ks {
			q = append(q, newQuery(opGet).str(k).b...)
		}
		if err := cn.send(q); err != nil {
			return err
		}
		for i := range vs {
			var err error
			if vs[i], err = cn.readBytes(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return vs, nil
}

// Check reports whether every key exists, without waiting.
func (c *Client) Check(ctx context.Context, keys ...string) (bool, error) {
	ks, err := c.keys(keys)
	if err != nil {
		return false, err
	}
	var ready bool
	err = c.do(ctx, describe("checking", ks), func(cn *conn) error {
		q := newQuery(opCheck).int(int64(len(ks)))
		for _, k := range ks {
			q.str(k)
		}
		if err := cn.send(q.b); err != nil {
			return err
		}
		st, err := cn.readByte()
		if err != nil {
			return err
		}
		switch st {
		case checkReady:
			ready = true
		case checkNotReady:
		default:
			return fmt.Errorf("the store at %s answered CHECK with %d, not READY (0) or NOT_READY (1)", cn.addr, st)
		}
		return nil
	})
	return ready, err
}

// TryGet returns the value of key and true, or false at once if key does
// not exist. A key deleted between the check and the read costs the
// connection (torch's server closes it) and is an error.
func (c *Client) TryGet(ctx context.Context, key string) ([]byte, bool, error) {
	k, err := c.key(key)
	if err != nil {
		return nil, false, err
	}
	var v []byte
	var found bool
	err = c.do(ctx, "tryget "+k, func(cn *conn) error {
		if err := cn.send(newQuery(opCheck).int(1).str(k).b); err != nil {
			return err
		}
		st, err := cn.readByte()
		if err != nil {
			return err
		}
		switch st {
		case checkNotReady:
			return nil
		case checkReady:
		default:
			return fmt.Errorf("the store at %s answered CHECK with %d, not READY (0) or NOT_READY (1)", cn.addr, st)
		}
		if err := cn.send(newQuery(opGet).str(k).b); err != nil {
			return err
		}
		v, err = cn.readBytes()
		found = err == nil
		return err
	})
	return v, found, err
}

// Add implements core.Store. The server keeps counters as decimal ASCII,
// as core.Store's Add does.
func (c *Client) Add(ctx context.Context, key string, delta int64) (int64, error) {
	k, err := c.key(key)
	if err != nil {
		return 0, err
	}
	var n int64
	err = c.do(ctx, "add to "+k, func(cn *conn) error {
		if err := cn.send(newQuery(opAdd).str(k).int(delta).b); err != nil {
			return err
		}
		n, err = cn.readInt()
		return err
	})
	return n, err
}

// CompareSet is torch's compare_set: if key holds expected, or key does
// not exist and expected is empty, it sets key to desired. It returns the
// value key holds afterwards; when key does not exist and expected is not
// empty, torch's server returns expected itself and sets nothing.
func (c *Client) CompareSet(ctx context.Context, key string, expected, desired []byte) ([]byte, error) {
	k, err := c.key(key)
	if err != nil {
		return nil, err
	}
	var v []byte
	err = c.do(ctx, "compare-set "+k, func(cn *conn) error {
		if err := cn.send(newQuery(opCompareSet).str(k).bytes(expected).bytes(desired).b); err != nil {
			return err
		}
		v, err = cn.readBytes()
		return err
	})
	return v, err
}

// Delete implements core.Store.
func (c *Client) Delete(ctx context.Context, key string) error {
	_, err := c.DeleteKey(ctx, key)
	return err
}

// DeleteKey removes key and reports whether it existed.
func (c *Client) DeleteKey(ctx context.Context, key string) (bool, error) {
	k, err := c.key(key)
	if err != nil {
		return false, err
	}
	var n int64
	err = c.do(ctx, "delete "+k, func(cn *conn) error {
		if err := cn.send(newQuery(opDelete).str(k).b); err != nil {
			return err
		}
		n, err = cn.readInt()
		return err
	})
	return n == 1, err
}

// NumKeys returns the number of keys in the whole store, whatever their
// prefix (torch's getNumKeys).
func (c *Client) NumKeys(ctx context.Context) (int64, error) {
	var n int64
	err := c.do(ctx, "counting keys", func(cn *conn) error {
		if err := cn.send([]byte{opNumKeys}); err != nil {
			return err
		}
		var err error
		n, err = cn.readInt()
		return err
	})
	return n, err
}

func describe(verb string, ks []string) string {
	if len(ks) <= 4 {
		return fmt.Sprintf("%s keys %q", verb, ks)
	}
	return fmt.Sprintf("%s %d keys %q...", verb, len(ks), ks[:4])
}
