package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
)

var secret = []byte("test-secret-0123456789")

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newServer(t *testing.T, opts ...ServerOption) (*Server, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	opts = append([]ServerOption{WithLogger(slog.New(slog.NewTextHandler(logs, nil)))}, opts...)
	s, err := Listen("127.0.0.1:0", secret, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, logs
}

func dial(t *testing.T, s *Server) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.Addr(), secret)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (s *Server) snapshot() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]string{}
	for k, v := range s.data {
		m[k] = string(v)
	}
	return m
}

func TestBasicOps(t *testing.T) {
	s, _ := newServer(t)
	c := dial(t, s)
	ctx := ctxT(t)

	if err := c.Set(ctx, "a", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "a"); err != nil || string(v) != "hello" {
		t.Fatalf("Get(a) = %q, %v; want hello", v, err)
	}
	if n, err := c.Add(ctx, "n", 5); err != nil || n != 5 {
		t.Fatalf("Add = %d, %v; want 5", n, err)
	}
	if n, err := c.Add(ctx, "n", -7); err != nil || n != -2 {
		t.Fatalf("Add = %d, %v; want -2", n, err)
	}
	if v, err := c.Get(ctx, "n"); err != nil || string(v) != "-2" {
		t.Fatalf("Get(counter) = %q, %v; want decimal ASCII -2", v, err)
	}
	if _, err := c.Add(ctx, "a", 1); err == nil || !strings.Contains(err.Error(), "not a decimal counter") {
		t.Fatalf("Add on a non-counter: err = %v, want 'not a decimal counter'", err)
	}
	if v, ok, err := c.TryGet(ctx, "missing"); err != nil || ok || v != nil {
		t.Fatalf("TryGet(missing) = %q, %v, %v", v, ok, err)
	}
	if err := c.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "a"); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	if _, ok, _ := c.TryGet(ctx, "a"); ok {
		t.Fatal("key a survived Delete")
	}
	if err := c.Set(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := c.TryGet(ctx, "empty"); err != nil || !ok || len(v) != 0 {
		t.Fatalf("TryGet(empty) = %q, %v, %v; want empty value, found", v, ok, err)
	}
	if err := c.MultiSet(ctx, []string{"x", "y"}, [][]byte{[]byte("1"), []byte("2")}); err != nil {
		t.Fatal(err)
	}
	vs, err := c.MultiGet(ctx, "y", "x")
	if err != nil || string(vs[0]) != "2" || string(vs[1]) != "1" {
		t.Fatalf("MultiGet = %q, %v", vs, err)
	}
	if err := c.Wait(ctx, "x", "y", "n"); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "", nil); err == nil {
		t.Fatal("empty key accepted")
	}
	if err := c.Set(ctx, strings.Repeat("k", MaxKeyLen+1), nil); err == nil {
		t.Fatal("oversized key accepted")
	}
}

func TestCompareAndSet(t *testing.T) {
	s, _ := newServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	ok, cur, err := c.CompareAndSet(ctx, "k", nil, []byte("v1"))
	if err != nil || !ok || cur != nil {
		t.Fatalf("CAS(absent->v1) = %v, %q, %v", ok, cur, err)
	}
	ok, cur, err = c.CompareAndSet(ctx, "k", nil, []byte("v2"))
	if err != nil || ok || string(cur) != "v1" {
		t.Fatalf("CAS(absent->v2) on existing = %v, %q, %v; want false, v1", ok, cur, err)
	}
	ok, cur, err = c.CompareAndSet(ctx, "k", []byte("wrong"), []byte("v2"))
	if err != nil || ok || string(cur) != "v1" {
		t.Fatalf("CAS(wrong->v2) = %v, %q, %v; want false, v1", ok, cur, err)
	}
	ok, _, err = c.CompareAndSet(ctx, "k", []byte("v1"), []byte("v2"))
	if err != nil || !ok {
		t.Fatalf("CAS(v1->v2) = %v, %v", ok, err)
	}
	ok, cur, err = c.CompareAndSet(ctx, "other", []byte{}, []byte("x"))
	if err != nil || ok || cur != nil {
		t.Fatalf("CAS(empty->x) on a missing key = %v, %q, %v; want false, nil", ok, cur, err)
	}
	if v, _ := c.Get(ctx, "k"); string(v) != "v2" {
		t.Fatalf("k = %q, want v2", v)
	}
}

// Many goroutines on few connections: Add is atomic, every result is
// distinct, and the sum is exact.
func TestConcurrentAdd(t *testing.T) {
	s, _ := newServer(t)
	const goroutines, clients, each = 64, 8, 50
	cs := make([]*Client, clients)
	for i := range cs {
		cs[i] = dial(t, s)
	}
	ctx := ctxT(t)
	var mu sync.Mutex
	seen := map[int64]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cs[g%clients]
			for i := 0; i < each; i++ {
				n, err := c.Add(ctx, "ctr", 1)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if seen[n] {
					errs <- fmt.Errorf("Add returned %d twice", n)
				}
				seen[n] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	v, err := cs[0].Get(ctx, "ctr")
	if err != nil || string(v) != strconv.Itoa(goroutines*each) {
		t.Fatalf("counter = %q, %v; want %d", v, err, goroutines*each)
	}
	for i := int64(1); i <= goroutines*each; i++ {
		if !seen[i] {
			t.Fatalf("no Add returned %d", i)
		}
	}
}

func TestGetAndWaitBlock(t *testing.T) {
	s, _ := newServer(t)
	c1, c2 := dial(t, s), dial(t, s)
	ctx := ctxT(t)

	got := make(chan string, 1)
	go func() {
		v, err := c1.Get(ctx, "late")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(v)
	}()
	waited := make(chan error, 1)
	go func() { waited <- c1.Wait(ctx, "late", "later") }()

	// Get must still be blocked: the key does not exist. (No timing
	// assertion: a non-blocking Get would return before the Set below and
	// fail the value check.)
	select {
	case v := <-got:
		t.Fatalf("Get returned %q before the key was set", v)
	case <-time.After(50 * time.Millisecond):
	}
	if err := c2.Set(ctx, "late", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v := <-got; v != "v" {
		t.Fatalf("Get = %q, want v", v)
	}
	select {
	case err := <-waited:
		t.Fatalf("Wait returned (%v) with key 'later' missing", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := c2.Set(ctx, "later", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
}

func TestGetAndWaitTimeOut(t *testing.T) {
	s, _ := newServer(t)
	c := dial(t, s)
	for _, f := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Get", func(ctx context.Context) error { _, err := c.Get(ctx, "never"); return err }},
		{"Wait", func(ctx context.Context) error { return c.Wait(ctx, "never", "nor-this") }},
		{"MultiGet", func(ctx context.Context) error { _, err := c.MultiGet(ctx, "never"); return err }},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err := f.call(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "never") {
			t.Errorf("%s on a missing key: err = %v; want DeadlineExceeded naming the key", f.name, err)
		}
	}
	// The server forgets the cancelled requests: nothing stays parked.
	waitFor(t, "server drops cancelled requests", func() bool {
		s.connMu.Lock()
		defer s.connMu.Unlock()
		for sc := range s.conns {
			sc.pmu.Lock()
			n := len(sc.pending)
			sc.pmu.Unlock()
			if n != 0 {
				return false
			}
		}
		return true
	})
	// And the connection still works.
	if err := c.Set(ctxT(t), "after", []byte("1")); err != nil {
		t.Fatal(err)
	}
}

func TestPrefix(t *testing.T) {
	s, _ := newServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	a := c.WithPrefix("job1/")
	b := a.WithPrefix("grp/")
	if err := b.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	var cs core.Store = core.WithPrefix(c, "job2/")
	if _, err := cs.Add(ctx, "k", 3); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"job1/grp/k": "v", "job2/k": "3"}
	if got := s.snapshot(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("store holds %v, want %v", got, want)
	}
	if v, err := a.Get(ctx, "grp/k"); err != nil || string(v) != "v" {
		t.Fatalf("Get through prefix = %q, %v", v, err)
	}
}

// A client with a wrong or missing secret is refused, cannot touch a key,
// and the server logs it.
func TestWrongSecretRefused(t *testing.T) {
	s, logs := newServer(t)
	good := dial(t, s)
	ctx := ctxT(t)
	if err := good.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	before := s.snapshot()
	for _, sec := range [][]byte{[]byte("wrong-secret"), nil, secret[:len(secret)-1]} {
		c, err := Dial(ctx, s.Addr(), sec)
		if err == nil {
			c.Close()
			t.Fatalf("Dial with secret %q succeeded", sec)
		}
		if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "GOCOLL_SECRET") {
			t.Fatalf("Dial with secret %q: err = %v; want ErrAuth telling what to set", sec, err)
		}
	}
	// A raw client that skips the handshake and sends a Set frame.
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	frame := encodeRequest(&request{op: opSet, id: 1, keys: []string{"k"}, values: [][]byte{[]byte("evil")}})
	for len(frame) < len(magic)+nonceLen+macLen+1 {
		frame = append(frame, frame...)
	}
	nc.Write(frame)
	io.Copy(io.Discard, nc) // the server closes it
	nc.Close()

	waitFor(t, "refusals logged", func() bool { return strings.Count(logs.String(), "refused connection") >= 4 })
	if after := s.snapshot(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("store changed by refused clients: %v -> %v", before, after)
	}
	if v, err := good.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("good client after refusals: %q, %v", v, err)
	}
}

// The client checks the server's proof too.
func TestClientRefusesImpostorServer(t *testing.T) {
	s, err := Listen("127.0.0.1:0", []byte("other-job"), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// An impostor that accepts any proof: run the server side with the
	// client's MAC ignored, by answering 0x01 and a bogus MAC.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		nc.Write(append([]byte(magic), make([]byte, nonceLen)...))
		io.ReadFull(nc, make([]byte, nonceLen+macLen))
		nc.Write(append([]byte{1}, make([]byte, macLen)...))
		io.Copy(io.Discard, nc)
	}()
	_, err = Dial(ctxT(t), ln.Addr().String(), secret)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "could not prove") {
		t.Fatalf("Dial to an impostor: err = %v; want ErrAuth", err)
	}
	ln.Close()
	<-done
}

// authedRaw returns a raw connection that has passed the handshake.
func authedRaw(t *testing.T, s *Server) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := clientHandshake(nc, secret, s.Addr()); err != nil {
		t.Fatal(err)
	}
	return nc
}

// Garbage after the handshake closes that connection only: other clients,
// including one blocked in Get, carry on.
func TestGarbageFrameClosesOnlyItsConnection(t *testing.T) {
	s, logs := newServer(t, WithMaxFrame(1<<16))
	good := dial(t, s)
	ctx := ctxT(t)
	got := make(chan string, 1)
	go func() {
		v, err := good.Get(ctx, "later")
		if err != nil {
			got <- err.Error()
		}
		got <- string(v)
	}()

	oversized := binary.BigEndian.AppendUint32(nil, 1<<30)
	badCount := encodeRequest(&request{op: opSet, id: 1, keys: []string{"k"}, values: [][]byte{[]byte("v")}})
	binary.BigEndian.PutUint32(badCount[frameHeader+reqFixed-4:], 1<<31) // nkeys
	wrongShape := encodeRequest(&request{op: opSet, id: 1, keys: []string{"k"}})
	badOp := encodeRequest(&request{op: 200, id: 1})
	for name, junk := range map[string][]byte{
		"oversized":   oversized,
		"bad count":   badCount,
		"wrong shape": wrongShape,
		"bad op":      badOp,
		"random":      []byte("\x00\x00\x00\x05hello-and-more-bytes"),
	} {
		nc := authedRaw(t, s)
		nc.Write(junk)
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, nc)
		nc.Close()
		// A close with unread bytes in the server's buffer arrives as a
		// reset; either way the connection ended without a reply.
		if (err != nil && !errors.Is(err, syscall.ECONNRESET)) || n != 0 {
			t.Errorf("%s: server did not just close the connection: read %d bytes, err %v", name, n, err)
		}
	}
	if err := good.Set(ctx, "later", []byte("fine")); err != nil {
		t.Fatal(err)
	}
	if v := <-got; v != "fine" {
		t.Fatalf("blocked Get on another connection got %q", v)
	}
	if strings.Count(logs.String(), "closing connection") < 5 {
		t.Errorf("server log lacks the closed connections:\n%s", logs)
	}
	if got := s.snapshot(); len(got) != 1 {
		t.Errorf("store holds %v; garbage frames must not write", got)
	}
}

// A connection that never finishes the handshake is dropped after the
// handshake timeout.
func TestSilentConnectionDropped(t *testing.T) {
	s, _ := newServer(t, WithHandshakeTimeout(100*time.Millisecond))
	nc, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(nc)
	if err != nil || len(b) != len(magic)+nonceLen {
		t.Fatalf("silent client: read %d bytes, err %v; want the challenge and then EOF", len(b), err)
	}
}

func TestClosedClientAndServer(t *testing.T) {
	s, _ := newServer(t)
	c := dial(t, s)
	ctx := ctxT(t)
	blocked := make(chan error, 1)
	go func() { _, err := c.Get(ctx, "never"); blocked <- err }()
	time.Sleep(20 * time.Millisecond) // let the Get reach the server (either order passes)
	s.Close()
	if err := <-blocked; !errors.Is(err, ErrClosed) {
		t.Fatalf("Get when the server closes: err = %v; want ErrClosed", err)
	}
	if err := c.Set(ctx, "k", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Set after server close: %v; want ErrClosed", err)
	}
	c.Close()
	if err := c.Set(ctx, "k", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Set on a closed client: %v; want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestDialRetriesUntilServerIsUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // free port, nobody listening: Dial must retry
	type res struct {
		c   *Client
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := Dial(ctxT(t), addr, secret)
		ch <- res{c, err}
	}()
	time.Sleep(100 * time.Millisecond)
	s, err := Listen(addr, secret, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	defer s.Close()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.c.Close()
	if err := r.c.Set(ctxT(t), "k", nil); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, addr+"0", secret); err == nil {
		t.Fatal("Dial to a bad address succeeded")
	}
}

// Closing servers and clients leaves no goroutine behind, even with
// blocked requests on both sides.
func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		s, err := Listen("127.0.0.1:0", secret, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			c, err := Dial(context.Background(), s.Addr(), secret)
			if err != nil {
				t.Fatal(err)
			}
			for j := 0; j < 4; j++ {
				wg.Add(1)
				go func() { defer wg.Done(); c.Get(context.Background(), "never") }()
			}
			if i%2 == 0 {
				defer c.Close()
			}
		}
		time.Sleep(20 * time.Millisecond)
		s.Close()
		wg.Wait()
	}()
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= base })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			n := runtime.Stack(buf, true)
			t.Fatalf("timed out waiting for %s\n%s", what, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkAdd measures one store round trip over loopback TCP.
func BenchmarkAdd(b *testing.B) {
	s, err := Listen("127.0.0.1:0", secret, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c, err := Dial(context.Background(), s.Addr(), secret)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.Add(ctx, "n", 1); err != nil {
			b.Fatal(err)
		}
	}
}

// An ephemeral key lives as long as the connection that set it, unless
// someone overwrites it; a guarded wait ends when its guard goes.
func TestEphemeralAndGuardedWait(t *testing.T) {
	s, _ := newServer(t)
	a, b := dial(t, s).WithPrefix("job/"), dial(t, s).WithPrefix("job/")
	ctx := ctxT(t)
	if err := b.SetEphemeral(ctx, "alive/b", nil); err != nil {
		t.Fatal(err)
	}
	if err := b.SetEphemeral(ctx, "taken-over", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, "taken-over", []byte("a")); err != nil { // now an ordinary key
		t.Fatal(err)
	}
	// Keys present: the guard does not matter.
	if err := b.Set(ctx, "data/1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	vals, lost, err := a.MultiGetGuarded(ctx, []string{"data/1"}, []string{"alive/nobody"})
	if err != nil || lost != nil || string(vals[0]) != "x" {
		t.Fatalf("guarded get of a present key = %q, %v, %v", vals, lost, err)
	}
	// A guard missing from the start ends the wait at once, and only a
	// missing key's guard counts.
	if err := a.Set(ctx, "data/3", nil); err != nil {
		t.Fatal(err)
	}
	if _, lost, err := a.MultiGetGuarded(ctx, []string{"data/2", "data/3"}, []string{"alive/nobody", "alive/gone-too"}); err != nil || fmt.Sprint(lost) != "[alive/nobody]" {
		t.Fatalf("guard missing from the start: lost %v, %v", lost, err)
	}
	if _, _, err := a.MultiGetGuarded(ctx, []string{"data/2"}, nil); err == nil {
		t.Fatal("guards not paired with keys were accepted")
	}
	// A guard that goes while waiting ends the wait.
	type res struct {
		lost []string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		_, lost, err := a.MultiGetGuarded(ctx, []string{"data/2"}, []string{"alive/b"})
		ch <- res{lost, err}
	}()
	time.Sleep(20 * time.Millisecond) // either order passes
	b.Close()
	r := <-ch
	if r.err != nil || fmt.Sprint(r.lost) != "[alive/b]" {
		t.Fatalf("guard gone while waiting: lost %v, %v", r.lost, r.err)
	}
	if _, ok, _ := a.TryGet(ctx, "alive/b"); ok {
		t.Fatal("ephemeral key survived its connection")
	}
	if v, ok, _ := a.TryGet(ctx, "taken-over"); !ok || string(v) != "a" {
		t.Fatalf("an overwritten ephemeral key was deleted with its old connection: %q, %v", v, ok)
	}
}

// countingListener hands the server connections that count the bytes it
// reads from them, so a test can tell when the server has taken in what a
// client sent.
type countingListener struct {
	net.Listener
	read atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: nc, read: &l.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// liveHeap is the heap in use after a collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// Clients that announce a 16 MiB frame and send half of it cost the server
// about the half they sent, not what they announced; and each such
// connection, once it stalls past the I/O timeout, is closed and its part
// of a frame freed.
func TestPartialFramesCostWhatWasSent(t *testing.T) {
	const (
		conns     = 40
		announced = DefaultMaxFrame
		sent      = announced / 2
		// What the server reads of a client's handshake.
		handshake = nonceLen + macLen
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	s := serve(cl, secret, newConfig([]ServerOption{
		WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		// Long enough that no connection stalls out while the others
		// are still sending; the test waits it out once.
		WithIOTimeout(10 * time.Second),
	}))
	defer s.Close()

	frame := binary.BigEndian.AppendUint32(nil, announced)
	frame = append(frame, make([]byte, sent)...)
	before := liveHeap()
	ncs := make([]net.Conn, conns)
	for i := range ncs {
		ncs[i] = authedRaw(t, s)
		defer ncs[i].Close()
		if _, err := ncs[i].Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	want := int64(conns * (handshake + len(frame)))
	for deadline := time.Now().Add(time.Minute); cl.read.Load() < want; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server read %d of the %d bytes sent in a minute", cl.read.Load(), want)
		}
	}
	grew := liveHeap() - before
	// The bytes sent, plus at most one read piece per connection and a
	// little for the connections themselves; announcing cost nothing.
	limit := int64(conns*(sent+2*readChunk)) + 8<<20
	t.Logf("%d connections, %d MiB announced and %d MiB sent each: heap grew by %.1f MiB (limit %.1f MiB)",
		conns, announced>>20, sent>>20, float64(grew)/(1<<20), float64(limit)/(1<<20))
	if grew > limit {
		t.Errorf("the server holds %d bytes for %d bytes sent; memory must follow the bytes received", grew, conns*sent)
	}
	if grew < int64(conns*sent)*3/4 {
		t.Errorf("heap grew by only %d bytes for %d bytes held: the measurement missed the partial frames", grew, conns*sent)
	}

	// Stalled: each connection is closed at its I/O timeout.
	for _, nc := range ncs {
		nc.SetReadDeadline(time.Now().Add(time.Minute))
		if n, err := io.Copy(io.Discard, nc); n != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
			t.Fatalf("a stalled connection: read %d bytes, err %v; want it closed", n, err)
		}
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		s.connMu.Lock()
		left := len(s.conns)
		s.connMu.Unlock()
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still served after their clients stalled", left)
		}
	}
	if after := liveHeap() - before; after > 8<<20 {
		t.Errorf("heap still %d bytes above the start after the stalled connections closed", after)
	}
}

// A body longer than one read piece comes back whole, in order; one cut
// short in any piece is an unexpected EOF, not a short body.
func TestReadFrameInPieces(t *testing.T) {
	for _, n := range []int{0, 1, readChunk - 1, readChunk, readChunk + 1, 3*readChunk + 17} {
		body := make([]byte, n)
		for i := range body {
			body[i] = byte(i*7 + i>>16)
		}
		frame := append(binary.BigEndian.AppendUint32(nil, uint32(n)), body...)
		got, err := readFrame(bytes.NewReader(frame), DefaultMaxFrame)
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("%d-byte body: err %v, equal %v", n, err, bytes.Equal(got, body))
		}
		for _, cut := range []int{frameHeader + n/2, frameHeader + n - 1} {
			if cut < frameHeader || cut >= len(frame) {
				continue
			}
			if _, err := readFrame(bytes.NewReader(frame[:cut]), DefaultMaxFrame); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%d-byte body cut after %d bytes: err %v, want io.ErrUnexpectedEOF", n, cut, err)
			}
		}
	}
}

// Idle is closed while no authenticated client is connected, and a call
// made while clients are connected gets a channel that closes when the
// last of them goes, however it goes: a Client's Close, a bare TCP close,
// the server's Close. Connections that never authenticate do not count.
func TestIdle(t *testing.T) {
	s, _ := newServer(t)
	ctx := ctxT(t)
	isClosed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	clients := func() int {
		s.connMu.Lock()
		defer s.connMu.Unlock()
		return s.clients
	}
	if !isClosed(s.Idle()) {
		t.Fatal("a server no client ever reached is not idle")
	}

	// A connection stuck before proving the secret is no client.
	stranger, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if !isClosed(s.Idle()) {
		t.Fatal("an unauthenticated connection made the server busy")
	}

	a, b := dial(t, s), dial(t, s)
	raw := authedRaw(t, s)
	// A round trip on each Client: the server has counted it by then.
	for _, c := range []*Client{a, b} {
		if err := c.SetEphemeral(ctx, fmt.Sprintf("alive/%p", c), nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "3 clients counted", func() bool { return clients() == 3 })
	idle := s.Idle()
	if isClosed(idle) {
		t.Fatal("idle with 3 clients connected")
	}
	if s.Idle() != idle {
		t.Fatal("two calls while busy got different channels")
	}

	a.Close()
	raw.Close()
	waitFor(t, "2 clients gone", func() bool { return clients() == 1 })
	if isClosed(idle) {
		t.Fatal("idle while a client is still connected")
	}
	if _, ok, err := b.TryGet(ctx, fmt.Sprintf("alive/%p", a)); err != nil || ok {
		t.Fatalf("the closed client's ephemeral key: present %v, %v", ok, err)
	}

	b.Close()
	select {
	case <-idle:
	case <-ctx.Done():
		t.Fatal("Idle's channel stayed open after the last client closed")
	}
	if !isClosed(s.Idle()) {
		t.Fatal("Idle after the last client closed is not closed")
	}

	// Busy again, then the server closes under its client.
	c := dial(t, s)
	if err := c.Set(ctx, "k", nil); err != nil {
		t.Fatal(err)
	}
	idle = s.Idle()
	if isClosed(idle) {
		t.Fatal("idle with a new client connected")
	}
	s.Close()
	if !isClosed(idle) {
		t.Fatal("Idle's channel still open after Close returned")
	}
}

// Clients that come and go at once while others wait on Idle leave the
// count at zero and every channel Idle gave closed (run with -race).
func TestIdleUnderChurn(t *testing.T) {
	s, _ := newServer(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	chans := make(chan (<-chan struct{}), 1024)
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				c, err := Dial(ctx, s.Addr(), secret)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := c.Add(ctx, "n", 1); err != nil {
					t.Error(err)
				}
				c.Close()
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				chans <- s.Idle()
			}
		}()
	}
	wg.Wait()
	close(chans)
	// The server may not have seen the last closes yet: a fresh channel
	// closes when it has.
	all := []<-chan struct{}{s.Idle()}
	for ch := range chans {
		all = append(all, ch)
	}
	for _, ch := range all {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatal("a channel Idle gave stayed open after every client closed")
		}
	}
	s.connMu.Lock()
	n := s.clients
	s.connMu.Unlock()
	if n != 0 {
		t.Fatalf("%d clients counted after all closed", n)
	}
}
