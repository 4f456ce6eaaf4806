package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gocoll/gocoll/core"
)

// maxResponseFrame bounds what the client accepts from an authenticated
// server, which caps its own responses at its WithMaxFrame.
const maxResponseFrame = 1 << 30

// DefaultDialTimeout bounds Dial when its context has no deadline.
const DefaultDialTimeout = 60 * time.Second

// ErrClosed is returned by calls on a closed Client, or one whose
// connection to the server broke.
var ErrClosed = errors.New("store: client is closed")

// Client is a connection to a store server. It is safe for concurrent
// use: calls are multiplexed on one connection, and a blocked Get does not
// hold up other calls. A Client made by WithPrefix shares the connection
// of the one it was made from.
type Client struct {
	cc     *clientConn
	prefix string
}

var _ core.Store = (*Client)(nil)

type clientConn struct {
	nc   net.Conn
	addr string

	wmu sync.Mutex // one frame at a time on the wire

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan *response
	err     error         // why the connection ended; set once
	done    chan struct{} // closed when the reader goroutine has ended
}

// Dial connects to the store server at addr and proves it holds secret.
// Refused connections are retried until ctx ends (the server may not be
// up yet when ranks start); if ctx has no deadline, DefaultDialTimeout
// applies. A secret the server refuses is not retried: the error wraps
// ErrAuth. Nor is a server that is not a gocoll store: the error wraps
// ErrNotStore, within about a second, and says what the server sent.
func Dial(ctx context.Context, addr string, secret []byte) (*Client, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	var d net.Dialer
	backoff := 10 * time.Millisecond
	for {
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c, err := handshake(ctx, nc, addr, secret)
			if err == nil || errors.Is(err, ErrAuth) || errors.Is(err, ErrNotStore) {
				return c, err
			}
			// A server that is going away mid-handshake is as good as
			// one not up yet: retry.
			if ctx.Err() != nil {
				return nil, err
			}
		} else if !retryable(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("store: connecting to %s (is rank 0 or the launcher serving the store there?): %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("store: connecting to %s: no server answered (is MASTER_ADDR:MASTER_PORT right?): %w", addr, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func retryable(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.ETIMEDOUT)
}

func handshake(ctx context.Context, nc net.Conn, addr string, secret []byte) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	// Unblock the handshake if ctx is cancelled without a deadline.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	ch, err := readChallenge(ctx, nc, addr)
	if err == nil {
		dl, _ := ctx.Deadline()
		nc.SetReadDeadline(dl)
		err = clientProve(nc, ch, secret, addr)
	}
	if !stop() || err != nil {
		nc.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	cc := &clientConn{nc: nc, addr: addr, pending: map[uint64]chan *response{}, done: make(chan struct{})}
	go cc.read()
	return &Client{cc: cc}, nil
}

// read delivers responses to waiting calls until the connection ends.
func (cc *clientConn) read() {
	defer close(cc.done)
	var err error
	for {
		var body []byte
		body, err = readFrame(cc.nc, maxResponseFrame)
		if err != nil {
			break
		}
		var r *response
		r, err = decodeResponse(body)
		if err != nil {
			break
		}
		cc.mu.Lock()
		ch, ok := cc.pending[r.id]
		delete(cc.pending, r.id)
		cc.mu.Unlock()
		if ok {
			ch <- r // buffered: never blocks
		}
		// A response to a cancelled call has no taker; drop it.
	}
	cc.nc.Close()
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = fmt.Errorf("%w: connection to %s lost: %v", ErrClosed, cc.addr, err)
	}
	cc.pending = nil
	cc.mu.Unlock()
}

// Addr returns the server's address.
func (c *Client) Addr() string { return c.cc.addr }

// Close closes the connection; calls in flight on it, and on every Client
// sharing it through WithPrefix, return ErrClosed. It waits for the
// client's reader goroutine to end.
func (c *Client) Close() error {
	cc := c.cc
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = ErrClosed
	}
	cc.mu.Unlock()
	err := cc.nc.Close()
	<-cc.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// WithPrefix returns a Client that prefixes every key with prefix and
// shares c's connection: a namespace inside the store. Prefixes nest.
func (c *Client) WithPrefix(prefix string) *Client {
	return &Client{cc: c.cc, prefix: c.prefix + prefix}
}

func (c *Client) key(k string) (string, error) {
	k = c.prefix + k
	if len(k) == 0 || len(k) > MaxKeyLen {
		return "", fmt.Errorf("store: key %q must be 1..%d bytes", truncate([]byte(k)), MaxKeyLen)
	}
	return k, nil
}

func (c *Client) keys(ks []string) ([]string, error) {
	if len(ks) == 0 || len(ks) > MaxKeys {
		return nil, fmt.Errorf("store: %d keys in one call, want 1..%d", len(ks), MaxKeys)
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

// call sends req and waits for its response or for ctx to end. A blocked
// request whose ctx ends is cancelled on the server too, so it does not
// linger there.
func (c *Client) call(ctx context.Context, req *request, what string) (*response, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	cc := c.cc
	ch := make(chan *response, 1)
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		return nil, fmt.Errorf("store: %s: %w", what, err)
	}
	cc.nextID++
	req.id = cc.nextID
	cc.pending[req.id] = ch
	cc.mu.Unlock()

	frame := encodeRequest(req)
	if len(frame)-frameHeader > DefaultMaxFrame {
		cc.forget(req.id)
		return nil, fmt.Errorf("store: %s: request of %d bytes exceeds the %d-byte frame limit; split the value", what, len(frame)-frameHeader, DefaultMaxFrame)
	}
	if err := cc.write(frame); err != nil {
		cc.forget(req.id)
		return nil, fmt.Errorf("store: %s: writing to %s: %w", what, cc.addr, err)
	}
	select {
	case r := <-ch:
		if r.status == statusErr {
			return nil, fmt.Errorf("store: %s: server says: %s", what, r.values[0])
		}
		return r, nil
	case <-cc.done:
		// The response may have arrived just before the connection ended.
		select {
		case r := <-ch:
			if r.status == statusErr {
				return nil, fmt.Errorf("store: %s: server says: %s", what, r.values[0])
			}
			return r, nil
		default:
		}
		cc.mu.Lock()
		err := cc.err
		cc.mu.Unlock()
		return nil, fmt.Errorf("store: %s: %w", what, err)
	case <-ctx.Done():
		cc.forget(req.id)
		if req.op.blocking() {
			// Best effort: if the write fails the connection is gone and
			// the server drops the request anyway.
			cc.write(encodeRequest(&request{op: opCancel, id: req.id}))
		}
		return nil, fmt.Errorf("store: %s: %w", what, ctx.Err())
	}
}

func (cc *clientConn) forget(id uint64) {
	cc.mu.Lock()
	delete(cc.pending, id)
	cc.mu.Unlock()
}

func (cc *clientConn) write(frame []byte) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	// A server that stops reading must not wedge the client forever.
	cc.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := cc.nc.Write(frame)
	return err
}

// Set implements core.Store.
func (c *Client) Set(ctx context.Context, key string, value []byte) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	_, err = c.call(ctx, &request{op: opSet, keys: []string{k}, values: [][]byte{value}}, "set "+k)
	return err
}

// SetEphemeral stores value under key until some client writes or deletes
// key, or until this client's connection closes: when the process exits
// or crashes, the server deletes the key. Peers guard their waits with
// such keys (MultiGetGuarded) to learn at once that a process is gone.
func (c *Client) SetEphemeral(ctx context.Context, key string, value []byte) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	_, err = c.call(ctx, &request{op: opSet, flags: flagEphemeral, keys: []string{k}, values: [][]byte{value}}, "set ephemeral "+k)
	return err
}

// Get implements core.Store: it waits until key exists or ctx ends.
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	k, err := c.key(key)
	if err != nil {
		return nil, err
	}
	r, err := c.call(ctx, &request{op: opGet, keys: []string{k}}, "waiting for key "+k)
	if err != nil {
		return nil, err
	}
	if len(r.values) != 1 {
		return nil, fmt.Errorf("store: get %s: server sent %d values", k, len(r.values))
	}
	return r.values[0], nil
}

// TryGet returns the value of key and true, or false at once if key does
// not exist.
func (c *Client) TryGet(ctx context.Context, key string) ([]byte, bool, error) {
	k, err := c.key(key)
	if err != nil {
		return nil, false, err
	}
	r, err := c.call(ctx, &request{op: opTryGet, keys: []string{k}}, "tryget "+k)
	if err != nil {
		return nil, false, err
	}
	if r.flags&flagFound == 0 {
		return nil, false, nil
	}
	if len(r.values) != 1 {
		return nil, false, fmt.Errorf("store: tryget %s: server sent %d values", k, len(r.values))
	}
	return r.values[0], true, nil
}

// Add implements core.Store. The counter is stored as decimal ASCII; Add
// on a key holding anything else is an error.
func (c *Client) Add(ctx context.Context, key string, delta int64) (int64, error) {
	k, err := c.key(key)
	if err != nil {
		return 0, err
	}
	r, err := c.call(ctx, &request{op: opAdd, keys: []string{k}, delta: delta}, "add to "+k)
	if err != nil {
		return 0, err
	}
	return r.num, nil
}

// CompareAndSet sets key to new if its value equals old, atomically. A
// nil old means "key does not exist"; an empty non-nil old means "key
// holds the empty value". It reports whether it swapped, and otherwise
// the current value (nil if key does not exist).
func (c *Client) CompareAndSet(ctx context.Context, key string, old, new []byte) (swapped bool, current []byte, err error) {
	k, err := c.key(key)
	if err != nil {
		return false, nil, err
	}
	req := &request{op: opCAS, keys: []string{k}, values: [][]byte{old, new}}
	if old == nil {
		req.flags = flagCASAbsent
	}
	r, err := c.call(ctx, req, "compare-and-set "+k)
	if err != nil {
		return false, nil, err
	}
	if r.flags&flagFound != 0 {
		return true, nil, nil
	}
	if len(r.values) == 1 {
		return false, r.values[0], nil
	}
	return false, nil, nil
}

// Delete implements core.Store.
func (c *Client) Delete(ctx context.Context, key string) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	_, err = c.call(ctx, &request{op: opDelete, keys: []string{k}}, "delete "+k)
	return err
}

// Wait returns once every key exists, or with an error when ctx ends.
func (c *Client) Wait(ctx context.Context, keys ...string) error {
	ks, err := c.keys(keys)
	if err != nil {
		return err
	}
	_, err = c.call(ctx, &request{op: opWait, keys: ks}, describe("waiting for", ks))
	return err
}

// MultiGet waits until every key exists and returns their values in the
// order of keys.
func (c *Client) MultiGet(ctx context.Context, keys ...string) ([][]byte, error) {
	ks, err := c.keys(keys)
	if err != nil {
		return nil, err
	}
	r, err := c.call(ctx, &request{op: opMultiGet, keys: ks}, describe("waiting for", ks))
	if err != nil {
		return nil, err
	}
	if len(r.values) != len(ks) {
		return nil, fmt.Errorf("store: multiget: server sent %d values for %d keys", len(r.values), len(ks))
	}
	return r.values, nil
}

// MultiGetGuarded is MultiGet in which guards[i] vouches for keys[i]: as
// soon as some keys[i] and its guards[i] both do not exist, the wait ends
// and returns those guards (with nil values and a nil error). Guards are
// typically the ephemeral keys (SetEphemeral) of the processes that will
// set the keys: a wait for a dead process's key ends when its connection
// does, not at the timeout.
func (c *Client) MultiGetGuarded(ctx context.Context, keys, guards []string) (values [][]byte, lost []string, err error) {
	if len(guards) != len(keys) {
		return nil, nil, fmt.Errorf("store: multiget: %d guards for %d keys; want one per key", len(guards), len(keys))
	}
	all := append(append([]string{}, keys...), guards...)
	ks, err := c.keys(all)
	if err != nil {
		return nil, nil, err
	}
	if len(keys) == 0 {
		return nil, nil, errors.New("store: multiget: no keys to wait for")
	}
	r, err := c.call(ctx, &request{op: opMultiGet, keys: ks, delta: int64(len(guards))}, describe("waiting for", ks[:len(keys)]))
	if err != nil {
		return nil, nil, err
	}
	if r.flags&flagFound == 0 {
		for _, v := range r.values {
			lost = append(lost, strings.TrimPrefix(string(v), c.prefix))
		}
		if len(lost) == 0 {
			return nil, nil, errors.New("store: multiget: the server reported lost guards without naming them")
		}
		return nil, lost, nil
	}
	if len(r.values) != len(keys) {
		return nil, nil, fmt.Errorf("store: multiget: server sent %d values for %d keys", len(r.values), len(keys))
	}
	return r.values, nil, nil
}

// MultiSet sets keys[i] to values[i] for every i, atomically: a waiter
// sees all of them or none.
func (c *Client) MultiSet(ctx context.Context, keys []string, values [][]byte) error {
	if len(keys) != len(values) {
		return fmt.Errorf("store: multiset: %d keys but %d values", len(keys), len(values))
	}
	ks, err := c.keys(keys)
	if err != nil {
		return err
	}
	_, err = c.call(ctx, &request{op: opMultiSet, keys: ks, values: values}, describe("multiset", ks))
	return err
}

func describe(verb string, ks []string) string {
	if len(ks) <= 4 {
		return fmt.Sprintf("%s keys %q", verb, ks)
	}
	return fmt.Sprintf("%s %d keys %q...", verb, len(ks), ks[:4])
}
