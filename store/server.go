// Package store is gocoll's rendezvous key-value store: a TCP server (run
// by rank 0 or by the launcher) and a client that implements core.Store,
// in the role of torch's TCPStore and oneCCL's KVS.
//
// Every connection first proves, by HMAC-SHA256 challenge-response in both
// directions, that it holds the job's secret; a client that cannot is
// refused before it can read or write a key, and the server logs the
// refusal. After the handshake the connection carries length-prefixed
// binary frames with bounded sizes; a malformed or oversized frame closes
// that connection only.
//
// Counters made by Add are stored as decimal ASCII, so Get of a counter
// returns e.g. "17", and Add on a key holding anything else is an error.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// ServerOption configures Listen.
type ServerOption func(*serverConfig)

type serverConfig struct {
	log              *slog.Logger
	maxFrame         int
	handshakeTimeout time.Duration
	ioTimeout        time.Duration
	maxPending       int
}

// WithLogger sends the server's log (refused clients, broken frames) to l
// instead of slog.Default().
func WithLogger(l *slog.Logger) ServerOption { return func(c *serverConfig) { c.log = l } }

// WithMaxFrame bounds a frame body to n bytes (default DefaultMaxFrame);
// a larger frame closes the connection that sent it.
func WithMaxFrame(n int) ServerOption { return func(c *serverConfig) { c.maxFrame = n } }

// WithHandshakeTimeout bounds how long a new connection may take to prove
// it holds the secret (default 10s), so silent connections cannot pile up.
func WithHandshakeTimeout(d time.Duration) ServerOption {
	return func(c *serverConfig) { c.handshakeTimeout = d }
}

// WithIOTimeout bounds how long the server waits for the next byte of a
// frame it has begun to read, and for a client to take a response
// (default 30s). A connection that stalls longer is closed, and what it
// had sent of a frame is freed with it. Waiting for a frame to begin has
// no bound: idle clients are normal.
func WithIOTimeout(d time.Duration) ServerOption { return func(c *serverConfig) { c.ioTimeout = d } }

// Server is a running store server. Its zero value is not usable; call
// Listen.
type Server struct {
	ln     net.Listener
	secret []byte
	cfg    serverConfig

	mu      sync.Mutex
	data    map[string][]byte
	owner   map[string]*serverConn // ephemeral keys: deleted when their connection closes
	changed chan struct{}          // closed and replaced on every write: wakes waiters

	connMu  sync.Mutex
	conns   map[*serverConn]struct{}
	closed  bool
	clients int            // connections past the handshake and not yet closed
	idle    chan struct{}  // made by Idle while clients > 0; closed when clients drops to 0
	wg      sync.WaitGroup // accept loop, connection loops, blocked handlers
}

// Listen starts a store server on addr ("host:port"; ":0" picks a free
// port) that serves only clients holding secret. secret must not be empty.
func Listen(addr string, secret []byte, opts ...ServerOption) (*Server, error) {
	if len(secret) == 0 {
		return nil, errors.New("store: Listen needs a non-empty job secret (GOCOLL_SECRET)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("store: listening on %s: %w", addr, err)
	}
	return serve(ln, secret, newConfig(opts)), nil
}

// newConfig applies opts to the defaults.
func newConfig(opts []ServerOption) serverConfig {
	cfg := serverConfig{
		log:              slog.Default(),
		maxFrame:         DefaultMaxFrame,
		handshakeTimeout: 10 * time.Second,
		ioTimeout:        30 * time.Second,
		maxPending:       4096,
	}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// serve runs a server on ln.
func serve(ln net.Listener, secret []byte, cfg serverConfig) *Server {
	s := &Server{
		ln:      ln,
		secret:  append([]byte(nil), secret...),
		cfg:     cfg,
		data:    map[string][]byte{},
		owner:   map[string]*serverConn{},
		changed: make(chan struct{}),
		conns:   map[*serverConn]struct{}{},
	}
	s.wg.Add(1)
	go s.accept()
	return s
}

// Addr returns the address the server listens on, as "host:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// closedChan is what Idle returns when no client is connected.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Idle returns a channel that is closed once no client is connected: at
// once if none is connected now, else when the last connected one closes.
// A client counts from the moment it has proved it holds the secret until
// its connection closes and the ephemeral keys it set are gone, so
// connections that never authenticate neither keep a server busy nor mark
// it idle. A launcher that serves the store for processes it did not
// start (the ranks of other nodes) waits on Idle to know when none of
// them needs the store any more: each rank holds its one connection for
// as long as it uses the store, and the kernel closes that connection
// when the rank's process ends, however it ends. A client that connects
// after Idle's channel was closed needs a new call to Idle.
func (s *Server) Idle() <-chan struct{} {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.clients == 0 {
		return closedChan
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
	}
	return s.idle
}

// Close stops the server, closes every connection and waits for all of
// the server's goroutines to end. Clients see their calls fail.
func (s *Server) Close() error {
	s.connMu.Lock()
	if s.closed {
		s.connMu.Unlock()
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.close()
	}
	s.connMu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			s.connMu.Lock()
			closed := s.closed
			s.connMu.Unlock()
			if closed {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Out of file descriptors and the like: back off rather
			// than spin, and keep serving the connections we have.
			s.cfg.log.Error("store: accept failed", "addr", s.Addr(), "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		c := &serverConn{s: s, nc: nc, ctx: ctx, cancel: cancel, pending: map[uint64]context.CancelFunc{}}
		s.connMu.Lock()
		if s.closed {
			s.connMu.Unlock()
			c.close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.connMu.Unlock()
		go c.serve()
	}
}

// serverConn is one client connection.
type serverConn struct {
	s      *Server
	nc     net.Conn
	ctx    context.Context // ends when the connection closes
	cancel context.CancelFunc

	wmu sync.Mutex // one frame at a time on the wire

	pmu     sync.Mutex
	pending map[uint64]context.CancelFunc // blocked requests by id

	owned map[string]struct{} // ephemeral keys this connection set; guarded by s.mu
}

func (c *serverConn) close() {
	c.cancel()
	c.nc.Close()
}

func (c *serverConn) serve() {
	defer c.s.wg.Done()
	authed := false
	defer func() {
		c.close()
		c.s.dropEphemeral(c)
		c.s.connMu.Lock()
		delete(c.s.conns, c)
		if authed {
			c.s.clients--
			if c.s.clients == 0 && c.s.idle != nil {
				close(c.s.idle)
				c.s.idle = nil
			}
		}
		c.s.connMu.Unlock()
	}()
	log := c.s.cfg.log.With("remote", c.nc.RemoteAddr().String())
	c.nc.SetDeadline(time.Now().Add(c.s.cfg.handshakeTimeout))
	if err := serverHandshake(c.nc, c.s.secret); err != nil {
		if c.ctx.Err() == nil {
			log.Warn("store: refused connection", "err", err)
		}
		return
	}
	c.nc.SetDeadline(time.Time{})
	c.s.connMu.Lock()
	c.s.clients++
	authed = true
	c.s.connMu.Unlock()
	for {
		body, err := c.readFrame()
		if err != nil {
			if c.ctx.Err() == nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				log.Warn("store: closing connection", "err", err)
			}
			return
		}
		req, err := decodeRequest(body)
		if err != nil {
			log.Warn("store: closing connection after a malformed request", "err", err)
			return
		}
		if err := c.handle(req); err != nil {
			log.Warn("store: closing connection", "err", err)
			return
		}
	}
}

// readFrame waits as long as needed for a frame to start (idle clients
// are normal), then for at most ioTimeout between the frame's bytes, so a
// client that stops halfway loses its connection and the part it sent.
func (c *serverConn) readFrame() ([]byte, error) {
	c.nc.SetReadDeadline(time.Time{})
	var h [1]byte
	if _, err := io.ReadFull(c.nc, h[:]); err != nil {
		return nil, err
	}
	return readFrame(io.MultiReader(bytes.NewReader(h[:]), idleReader{c.nc, c.s.cfg.ioTimeout}), c.s.cfg.maxFrame)
}

// idleReader reads from nc with a deadline that each read moves on by d.
type idleReader struct {
	nc net.Conn
	d  time.Duration
}

func (r idleReader) Read(p []byte) (int, error) {
	r.nc.SetReadDeadline(time.Now().Add(r.d))
	return r.nc.Read(p)
}

// handle acts on one request. Requests that may block run in their own
// goroutine; the rest are answered inline, in order. An error closes the
// connection.
func (c *serverConn) handle(req *request) error {
	s := c.s
	switch req.op {
	case opCancel:
		c.pmu.Lock()
		if cancel, ok := c.pending[req.id]; ok {
			cancel()
		}
		c.pmu.Unlock()
		return nil
	case opGet, opWait, opMultiGet:
		c.pmu.Lock()
		if _, dup := c.pending[req.id]; dup {
			c.pmu.Unlock()
			return fmt.Errorf("request id %d reused while still pending", req.id)
		}
		if len(c.pending) >= s.cfg.maxPending {
			c.pmu.Unlock()
			return c.reply(errResponse(req.id, fmt.Sprintf("more than %d blocked requests on one connection", s.cfg.maxPending)))
		}
		ctx, cancel := context.WithCancel(c.ctx)
		c.pending[req.id] = cancel
		c.pmu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			g := len(req.keys) - int(req.delta)
			vals, lost, err := s.waitKeys(ctx, req.keys[:g], req.keys[g:])
			c.pmu.Lock()
			delete(c.pending, req.id)
			c.pmu.Unlock()
			cancel()
			var resp *response
			switch {
			case err != nil:
				resp = errResponse(req.id, "cancelled")
			case lost != nil:
				// A guard key vanished: say which, with flagFound clear.
				resp = &response{id: req.id}
				for _, k := range lost {
					resp.values = append(resp.values, []byte(k))
				}
			default:
				resp = &response{id: req.id, flags: flagFound}
				if req.op != opWait {
					resp.values = vals
				}
			}
			if err := c.reply(resp); err != nil {
				c.close()
			}
		}()
		return nil
	}

	resp := &response{id: req.id}
	s.mu.Lock()
	switch req.op {
	case opSet:
		s.disownLocked(req.keys[0])
		s.data[req.keys[0]] = req.values[0]
		if req.flags&flagEphemeral != 0 {
			s.owner[req.keys[0]] = c
			if c.owned == nil {
				c.owned = map[string]struct{}{}
			}
			c.owned[req.keys[0]] = struct{}{}
		}
		s.notifyLocked()
	case opTryGet:
		if v, ok := s.data[req.keys[0]]; ok {
			resp.flags = flagFound
			resp.values = [][]byte{v}
		}
	case opAdd:
		n, err := counter(s.data[req.keys[0]])
		if err != nil {
			resp = errResponse(req.id, fmt.Sprintf("add to key %q: %v", req.keys[0], err))
			break
		}
		n += req.delta
		s.disownLocked(req.keys[0])
		s.data[req.keys[0]] = strconv.AppendInt(nil, n, 10)
		resp.num = n
		s.notifyLocked()
	case opCAS:
		cur, ok := s.data[req.keys[0]]
		wantAbsent := req.flags&flagCASAbsent != 0
		if (wantAbsent && !ok) || (!wantAbsent && ok && bytes.Equal(cur, req.values[0])) {
			s.disownLocked(req.keys[0])
			s.data[req.keys[0]] = req.values[1]
			resp.flags = flagFound
			s.notifyLocked()
		} else if ok {
			resp.values = [][]byte{cur}
		}
	case opDelete:
		if _, ok := s.data[req.keys[0]]; ok {
			s.disownLocked(req.keys[0])
			delete(s.data, req.keys[0])
			s.notifyLocked()
		}
	case opMultiSet:
		for i, k := range req.keys {
			s.disownLocked(k)
			s.data[k] = req.values[i]
		}
		s.notifyLocked()
	}
	s.mu.Unlock()
	return c.reply(resp)
}

// counter parses a counter value; an absent key counts as 0.
func counter(v []byte) (int64, error) {
	if v == nil {
		return 0, nil
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("value %q is not a decimal counter", truncate(v))
	}
	return n, nil
}

func truncate(v []byte) []byte {
	if len(v) > 32 {
		return append(v[:32:32], "..."...)
	}
	return v
}

func errResponse(id uint64, msg string) *response {
	return &response{status: statusErr, id: id, values: [][]byte{[]byte(msg)}}
}

// reply writes one response frame. A client that stops reading for
// ioTimeout loses its connection instead of blocking the server.
func (c *serverConn) reply(r *response) error {
	b := encodeResponse(r)
	if len(b)-frameHeader > c.s.cfg.maxFrame {
		b = encodeResponse(errResponse(r.id, fmt.Sprintf("response of %d bytes exceeds the %d-byte frame limit; fetch fewer keys at once", len(b)-frameHeader, c.s.cfg.maxFrame)))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.ioTimeout))
	_, err := c.nc.Write(b)
	return err
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitKeys returns the values of keys once all of them exist; or the
// guards[i] that do not exist for keys[i] that do not either (non-nil
// lost: those keys will never come); or ctx's error. guards is empty or
// pairs with keys. Stored values are never mutated in place, so sharing them
// with the encoder is safe.
func (s *Server) waitKeys(ctx context.Context, keys, guards []string) (vals [][]byte, lost []string, err error) {
	vals = make([][]byte, len(keys))
	for {
		s.mu.Lock()
		all := true
		for i, k := range keys {
			v, ok := s.data[k]
			if !ok {
				all = false
				break
			}
			vals[i] = v
		}
		if !all && len(guards) > 0 {
			for i, k := range keys {
				if _, ok := s.data[k]; ok {
					continue
				}
				if _, ok := s.data[guards[i]]; !ok {
					lost = append(lost, guards[i])
				}
			}
		}
		ch := s.changed
		s.mu.Unlock()
		if all {
			return vals, nil, nil
		}
		if lost != nil {
			return nil, lost, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// disownLocked makes key an ordinary key again: any write replaces an
// ephemeral value.
func (s *Server) disownLocked(key string) {
	if c, ok := s.owner[key]; ok {
		delete(c.owned, key)
		delete(s.owner, key)
	}
}

// dropEphemeral deletes the ephemeral keys c set and still owns: its
// process is gone (or closed the connection), and waiters guarded by
// those keys learn it.
func (s *Server) dropEphemeral(c *serverConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(c.owned) == 0 {
		return
	}
	for k := range c.owned {
		delete(s.data, k)
		delete(s.owner, k)
	}
	c.owned = nil
	s.notifyLocked()
}
