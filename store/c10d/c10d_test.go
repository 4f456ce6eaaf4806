package c10d

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/internal/fakeserver"
	"github.com/gocoll/gocoll/store"
)

// torchPython is the interpreter that has Debian's python3-torch; the
// first python3 on PATH may be another one.
const torchPython = "/usr/bin/python3"

// torchServer runs a real torch.distributed.TCPStore server and a torch
// client of it in one Python process, which obeys lines on stdin:
// "set KEY HEX", "get KEY" (prints the value in hex), "add KEY N"
// (prints the new value), "delete KEY" (prints whether it existed) and
// "wait KEY" (prints "ok" once KEY exists). Keys are hex too.
const torchServer = `
import sys, datetime
import torch.distributed as d
s = d.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=60), wait_for_workers=False)
print(s.port, flush=True)
for line in sys.stdin:
    f = line.split()
    k = bytes.fromhex(f[1]).decode()
    if f[0] == "set":
        s.set(k, bytes.fromhex(f[2]))
        print("ok", flush=True)
    elif f[0] == "get":
        print(s.get(k).hex(), flush=True)
    elif f[0] == "add":
        print(s.add(k, int(f[2])), flush=True)
    elif f[0] == "delete":
        print(s.delete_key(k), flush=True)
    elif f[0] == "wait":
        s.wait([k])
        print("ok", flush=True)
`

type torch struct {
	addr string
	in   io.WriteCloser
	out  *bufio.Scanner
	cmd  *exec.Cmd
	mu   sync.Mutex
}

// One server serves every test (torch takes seconds to import); each test
// uses keys of its own.
var (
	torchOnce sync.Once
	shared    *torch
	torchSkip string
	torchErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	os.Exit(code)
}

// startTorch returns the shared server, starting it on first use, or
// skips the test without torch.
func startTorch(t *testing.T) *torch {
	t.Helper()
	torchOnce.Do(func() { shared, torchSkip, torchErr = launchTorch() })
	if torchSkip != "" {
		t.Skip(torchSkip)
	}
	if torchErr != nil {
		t.Fatal(torchErr)
	}
	return shared
}

func launchTorch() (*torch, string, error) {
	if _, err := os.Stat(torchPython); err != nil {
		return nil, fmt.Sprintf("%s not found: the c10d tests need Debian's python3-torch (apt-get install python3-torch)", torchPython), nil
	}
	if err := exec.Command(torchPython, "-c", "import torch.distributed").Run(); err != nil {
		return nil, fmt.Sprintf("%s cannot import torch.distributed (%v): apt-get install python3-torch", torchPython, err), nil
	}
	cmd := exec.Command(torchPython, "-c", torchServer)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, "", err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	ts := &torch{in: in, out: bufio.NewScanner(outPipe), cmd: cmd}
	if !ts.out.Scan() {
		ts.stop()
		return nil, "", fmt.Errorf("the torch server ended before printing its port: %v", ts.out.Err())
	}
	port := ts.out.Text()
	if _, err := strconv.Atoi(port); err != nil {
		ts.stop()
		return nil, "", fmt.Errorf("the torch server printed %q, not its port", port)
	}
	ts.addr = "127.0.0.1:" + port
	return ts, "", nil
}

// stop closes the server's stdin, which ends it, and waits for it.
func (ts *torch) stop() {
	ts.in.Close()
	done := make(chan error, 1)
	go func() { done <- ts.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		ts.cmd.Process.Kill()
		<-done
	}
}

// ask sends one command to the Python side and returns its answer.
func (ts *torch) ask(cmd, key string, arg ...string) (string, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	fmt.Fprintf(ts.in, "%s %s %s\n", cmd, hex.EncodeToString([]byte(key)), strings.Join(arg, " "))
	if !ts.out.Scan() {
		return "", fmt.Errorf("the torch server ended: %v", ts.out.Err())
	}
	return ts.out.Text(), nil
}

// do is ask that fails the test on error.
func (ts *torch) do(t *testing.T, cmd, key string, arg ...string) string {
	t.Helper()
	s, err := ts.ask(cmd, key, arg...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func dial(t *testing.T, addr string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestAgainstTorch(t *testing.T) {
	ts := startTorch(t)
	c := dial(t, ts.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// What this client sets, torch's client reads, and back.
	if err := c.Set(ctx, "go/k", []byte("from go\x00\xff")); err != nil {
		t.Fatal(err)
	}
	if got := ts.do(t, "get", "go/k"); got != hex.EncodeToString([]byte("from go\x00\xff")) {
		t.Errorf("torch read %s, want the bytes Go set", got)
	}
	ts.do(t, "set", "py/k", hex.EncodeToString([]byte("from python")))
	if v, err := c.Get(ctx, "py/k"); err != nil || string(v) != "from python" {
		t.Errorf("Get(py/k) = %q, %v; want what torch set", v, err)
	}
	if err := c.Set(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "empty"); err != nil || len(v) != 0 {
		t.Errorf("Get(empty) = %q, %v; want an empty value", v, err)
	}

	// Counters are shared with torch's add.
	if n, err := c.Add(ctx, "ctr", 5); err != nil || n != 5 {
		t.Errorf("Add = %d, %v; want 5", n, err)
	}
	if got := ts.do(t, "add", "ctr", "-2"); got != "3" {
		t.Errorf("torch's add gave %s, want 3", got)
	}
	if n, err := c.Add(ctx, "ctr", 10); err != nil || n != 13 {
		t.Errorf("Add = %d, %v; want 13", n, err)
	}

	// Check and TryGet do not wait.
	if ok, err := c.Check(ctx, "go/k", "py/k"); err != nil || !ok {
		t.Errorf("Check(two set keys) = %v, %v", ok, err)
	}
	if ok, err := c.Check(ctx, "go/k", "absent"); err != nil || ok {
		t.Errorf("Check(with an absent key) = %v, %v; want false", ok, err)
	}
	if _, found, err := c.TryGet(ctx, "absent"); err != nil || found {
		t.Errorf("TryGet(absent) found=%v, %v", found, err)
	}
	if v, found, err := c.TryGet(ctx, "py/k"); err != nil || !found || string(v) != "from python" {
		t.Errorf("TryGet(py/k) = %q, %v, %v", v, found, err)
	}

	// compare_set, with torch's semantics.
	if v, err := c.CompareSet(ctx, "go/k", []byte("wrong"), []byte("x")); err != nil || string(v) != "from go\x00\xff" {
		t.Errorf("CompareSet(mismatch) = %q, %v; want the current value", v, err)
	}
	if v, err := c.CompareSet(ctx, "go/k", []byte("from go\x00\xff"), []byte("swapped")); err != nil || string(v) != "swapped" {
		t.Errorf("CompareSet(match) = %q, %v; want the new value", v, err)
	}
	if v, err := c.CompareSet(ctx, "cas/new", nil, []byte("created")); err != nil || string(v) != "created" {
		t.Errorf("CompareSet(absent, empty expected) = %q, %v; want it created", v, err)
	}

	// Delete and the key count.
	before, err := c.NumKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if existed, err := c.DeleteKey(ctx, "cas/new"); err != nil || !existed {
		t.Errorf("DeleteKey(cas/new) = %v, %v", existed, err)
	}
	if err := c.Delete(ctx, "cas/new"); err != nil {
		t.Errorf("deleting a missing key: %v", err)
	}
	if after, err := c.NumKeys(ctx); err != nil || after != before-1 {
		t.Errorf("NumKeys after a delete = %d, %v; want %d", after, err, before-1)
	}
	if got := ts.do(t, "delete", "cas/new"); got != "False" {
		t.Errorf("torch still sees the deleted key: delete_key = %s", got)
	}

	// Prefixes: the key torch sees is the full one.
	p := c.WithPrefix("job/").WithPrefix("7/")
	if err := p.Set(ctx, "x", []byte("prefixed")); err != nil {
		t.Fatal(err)
	}
	if got := ts.do(t, "get", "job/7/x"); got != hex.EncodeToString([]byte("prefixed")) {
		t.Errorf("torch read job/7/x = %s", got)
	}
	vs, err := p.MultiGet(ctx, "x", "x")
	if err != nil || len(vs) != 2 || string(vs[0]) != "prefixed" || string(vs[1]) != "prefixed" {
		t.Errorf("MultiGet = %q, %v", vs, err)
	}
}

func TestWaitsForTorch(t *testing.T) {
	ts := startTorch(t)
	c := dial(t, ts.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A Get and a MultiGet block until torch's client sets the keys;
	// meanwhile other calls on the same Client go through.
	type result struct {
		v   [][]byte
		err error
	}
	got := make(chan result, 2)
	go func() {
		v, err := c.Get(ctx, "late/a")
		got <- result{[][]byte{v}, err}
	}()
	go func() {
		v, err := c.MultiGet(ctx, "late/a", "late/b")
		got <- result{v, err}
	}()
	if n, err := c.Add(ctx, "meanwhile", 1); err != nil || n != 1 {
		t.Fatalf("Add while two calls wait: %d, %v", n, err)
	}
	select {
	case r := <-got:
		t.Fatalf("a wait returned before the keys were set: %q, %v", r.v, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	ts.do(t, "set", "late/a", hex.EncodeToString([]byte("A")))
	ts.do(t, "set", "late/b", hex.EncodeToString([]byte("B")))
	for range 2 {
		r := <-got
		if r.err != nil {
			t.Fatal(r.err)
		}
		for _, v := range r.v {
			if string(v) != "A" && string(v) != "B" {
				t.Errorf("waited for %q", v)
			}
		}
	}

	// torch's wait sees a key this client sets.
	done := make(chan string, 1)
	go func() {
		s, err := ts.ask("wait", "from/go")
		if err != nil {
			s = err.Error()
		}
		done <- s
	}()
	time.Sleep(100 * time.Millisecond)
	if err := c.Set(ctx, "from/go", []byte("1")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-done:
		if s != "ok" {
			t.Errorf("torch's wait answered %q", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("torch's wait did not see the key Go set")
	}
}

func TestCancelAndFailure(t *testing.T) {
	ts := startTorch(t)
	c := dial(t, ts.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A wait whose context ends returns at once with ctx's error, and
	// the server forgets it: the key can be set and read afterwards.
	wctx, wcancel := context.WithTimeout(ctx, 150*time.Millisecond)
	start := time.Now()
	_, err := c.Get(wctx, "never")
	wcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get past its deadline: %v; want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a cancelled Get took %v", d)
	}
	cctx, ccancel := context.WithCancel(ctx)
	go func() { time.Sleep(100 * time.Millisecond); ccancel() }()
	if err := c.Wait(cctx, "never"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait cancelled: %v; want Canceled", err)
	}
	if err := c.Set(ctx, "never", []byte("now")); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "never"); err != nil || string(v) != "now" {
		t.Fatalf("Get after cancelled waits: %q, %v", v, err)
	}

	// A query the server cannot serve costs one connection, not the
	// client.
	if err := c.Set(ctx, "text", []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Add(ctx, "text", 1); err == nil || !strings.Contains(err.Error(), "closed the connection") {
		t.Errorf("Add to a non-integer: %v; want the server closing the connection", err)
	}
	if n, err := c.Add(ctx, "ok", 2); err != nil || n != 2 {
		t.Errorf("Add after a failed call: %d, %v", n, err)
	}

	// Many calls at once, each on its own connection.
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Add(ctx, "par", 1); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := ts.do(t, "add", "par", "0"); got != "16" {
		t.Errorf("16 concurrent adds left %s", got)
	}

	// After Close every call fails with ErrClosed.
	c.Close()
	if _, err := c.Add(ctx, "ok", 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close: %v; want ErrClosed", err)
	}
}

// TestNotC10d: a server that is not a torch 1.13 TCPStore is named as
// such within two seconds, saying what it sent.
func TestNotC10d(t *testing.T) {
	gocoll, err := store.Listen("127.0.0.1:0", []byte("secret"), store.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer gocoll.Close()
	cases := []struct {
		name, addr, want string
	}{
		{"gocoll store", gocoll.Addr(), "gocoll store's challenge"},
		{"http", fakeserver.Start(t, fakeserver.Sends("HTTP/1.1 400 Bad Request\r\n\r\n")), `"HTTP/1.1"`},
		{"silent", fakeserver.Start(t, fakeserver.Silent), "sent nothing"},
		{"closes", fakeserver.Start(t, fakeserver.SendsAndCloses("no")), `closed the connection after sending "no"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			c, err := Dial(ctx, tc.addr)
			if err == nil {
				c.Close()
				t.Fatal("Dial accepted it")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Dial took %v to refuse it", d)
			}
			if !errors.Is(err, ErrNotC10d) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Dial: %v; want ErrNotC10d saying %s", err, tc.want)
			}
		})
	}
}
