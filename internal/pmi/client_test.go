package pmi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeJob is a PMI server for one job of size processes, speaking both
// protocols the way hydra and Slurm do (tests/launchers runs the real
// ones): enough to drive every client call, and to misbehave on request.
type fakeJob struct {
	t    *testing.T
	size int

	mu      sync.Mutex
	kvs     map[string]string
	waiting int           // processes in the current fence
	release chan struct{} // closed when the current fence completes
	finals  int           // processes that finalized

	// reply, when set, replaces the server's answer to cmd.
	reply func(cmd string) (string, bool)
}

func newFakeJob(t *testing.T, size int) *fakeJob {
	return &fakeJob{t: t, size: size, kvs: map[string]string{}, release: make(chan struct{})}
}

// fence blocks until size processes have called it.
func (j *fakeJob) fence() {
	j.mu.Lock()
	ch := j.release
	j.waiting++
	if j.waiting == j.size {
		j.waiting = 0
		j.release = make(chan struct{})
		close(ch)
	}
	j.mu.Unlock()
	<-ch
}

// put stores a put command's key and value (both wire versions name
// them key and value).
func (j *fakeJob) put(m *message) {
	k, _ := m.get("key")
	v, _ := m.get("value")
	j.mu.Lock()
	j.kvs[k] = v
	j.mu.Unlock()
}

// lookup returns a get command's key and the value stored under it.
func (j *fakeJob) lookup(m *message) (k, v string, ok bool) {
	k, _ = m.get("key")
	j.mu.Lock()
	v, ok = j.kvs[k]
	j.mu.Unlock()
	return k, v, ok
}

// serve answers one process on conn; rank is its rank when the server
// knows it from the connection (an inherited socket), else -1.
func (j *fakeJob) serve(conn net.Conn, rank int) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	for {
		head, err := r.Peek(4)
		if err != nil {
			return
		}
		var m *message
		v2 := string(head) != "cmd="
		if v2 {
			m, err = readV2(r)
		} else {
			m, err = readV1(r)
		}
		if err != nil {
			j.t.Errorf("fake server: %v", err)
			return
		}
		if j.reply != nil {
			if s, ok := j.reply(m.cmd); ok {
				conn.Write([]byte(s))
				continue
			}
		}
		var out string
		switch m.cmd {
		case "init":
			if v, _ := m.get("pmi_version"); v == "2" {
				out = "cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\n"
			} else {
				out = "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n"
			}
		case "initack":
			id, _ := m.get("pmiid")
			rank, _ = strconv.Atoi(id)
			out = fmt.Sprintf("cmd=initack\ncmd=set size=%d\ncmd=set rank=%d\ncmd=set debug=0\n", j.size, rank)
		case "get_maxes":
			out = "cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024\n"
		case "get_appnum":
			out = "cmd=appnum appnum=0\n"
		case "get_my_kvsname":
			out = "cmd=my_kvsname kvsname=kvs_fake_0\n"
		case "put":
			j.put(m)
			out = "cmd=put_result rc=0 msg=success\n"
		case "barrier_in":
			j.fence()
			out = "cmd=barrier_out\n"
		case "get":
			k, v, ok := j.lookup(m)
			if ok {
				out = "cmd=get_result rc=0 msg=success value=" + v + "\n"
			} else {
				out = "cmd=get_result rc=-1 msg=key_" + k + "_not_found value=unknown\n"
			}
		case "fullinit":
			id, _ := m.get("pmirank")
			rank, _ = strconv.Atoi(id)
			out = fmt.Sprintf("cmd=fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;rank=%d;size=%d;appnum=-1;debugged=FALSE;pmiverbose=FALSE;", rank, j.size)
		case "job-getid":
			out = "cmd=job-getid-response;rc=0;jobid=7.0;"
		case "kvs-put":
			j.put(m)
			out = "cmd=kvs-put-response;rc=0;"
		case "kvs-fence":
			j.fence()
			out = "cmd=kvs-fence-response;rc=0;"
		case "kvs-get":
			_, v, ok := j.lookup(m)
			if ok {
				out = "cmd=kvs-get-response;rc=0;found=TRUE;value=" + v + ";"
			} else {
				out = "cmd=kvs-get-response;rc=0;found=FALSE;"
			}
		case "finalize":
			j.mu.Lock()
			j.finals++
			j.mu.Unlock()
			if v2 {
				out = "cmd=finalize-response;rc=0;"
			} else {
				out = "cmd=finalize_ack\n"
			}
		default:
			j.t.Errorf("fake server: unexpected %s", m)
			return
		}
		if v2 && m.cmd != "init" {
			out = fmt.Sprintf("%-6d", len(out)) + out // Slurm's padding
		}
		if _, err := conn.Write([]byte(out)); err != nil {
			return
		}
	}
}

// socketEnv starts serving a process over an inherited socket: it
// returns the environment hydra would give it.
func (j *fakeJob) socketEnv(t *testing.T, rank int) Env {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "server")
	conn, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	go j.serve(conn, rank)
	return envOf("PMI_FD="+strconv.Itoa(fds[1]), "PMI_RANK="+strconv.Itoa(rank), "PMI_SIZE="+strconv.Itoa(j.size))
}

// listen serves processes that dial; it returns the address.
func (j *fakeJob) listen(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go j.serve(c, -1)
		}
	}()
	return ln.Addr().String()
}

func envOf(kv ...string) Env {
	m := map[string]string{}
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A job of three processes over each protocol and transport: everyone
// puts, fences and reads everyone's keys; a missing key is not found.
func TestJob(t *testing.T) {
	for _, version := range []int{1, 2} {
		for _, transport := range []string{"PMI_FD", "PMI_PORT"} {
			t.Run(fmt.Sprintf("v%d/%s", version, transport), func(t *testing.T) {
				const size = 3
				j := newFakeJob(t, size)
				addr := ""
				if transport == "PMI_PORT" {
					addr = j.listen(t)
				}
				ctx := testCtx(t)
				errs := make(chan error, size)
				for r := 0; r < size; r++ {
					var env Env
					if transport == "PMI_FD" {
						env = j.socketEnv(t, r)
					} else {
						env = envOf("PMI_PORT="+addr, "PMI_ID="+strconv.Itoa(r))
					}
					go func() { errs <- runProcess(ctx, env, version, r, size) }()
				}
				for range size {
					if err := <-errs; err != nil {
						t.Error(err)
					}
				}
				j.mu.Lock()
				defer j.mu.Unlock()
				if j.finals != size {
					t.Errorf("%d processes finalized; want %d", j.finals, size)
				}
			})
		}
	}
}

func runProcess(ctx context.Context, env Env, version, rank, size int) error {
	c, err := Connect(ctx, env, version)
	if err != nil {
		return err
	}
	if c.Rank() != rank || c.Size() != size || c.Version() != version || c.KVSName() == "" {
		return fmt.Errorf("rank %d: Connect gave rank %d size %d version %d kvs %q", rank, c.Rank(), c.Size(), c.Version(), c.KVSName())
	}
	if err := c.Put(ctx, "k-"+strconv.Itoa(rank), "host:"+strconv.Itoa(100+rank)); err != nil {
		return err
	}
	if err := c.Fence(ctx); err != nil {
		return err
	}
	for r := 0; r < size; r++ {
		v, ok, err := c.Get(ctx, "k-"+strconv.Itoa(r))
		if err != nil {
			return err
		}
		if want := "host:" + strconv.Itoa(100+r); !ok || v != want {
			return fmt.Errorf("rank %d: Get(k-%d) = %q, %v; want %q", rank, r, v, ok, want)
		}
	}
	if v, ok, err := c.Get(ctx, "missing"); err != nil || ok {
		return fmt.Errorf("rank %d: Get(missing) = %q, %v, %v; want not found", rank, v, ok, err)
	}
	if err := c.Finalize(ctx); err != nil {
		return err
	}
	if err := c.Fence(ctx); !errors.Is(err, errDone) {
		return fmt.Errorf("rank %d: Fence after Finalize: %v; want %v", rank, err, errDone)
	}
	return nil
}

// Connect takes over the inherited descriptor: it is closed afterwards,
// so that no child process inherits the launcher's socket.
func TestInheritedSocketIsClosed(t *testing.T) {
	j := newFakeJob(t, 1)
	env := j.socketEnv(t, 0)
	s, _ := env("PMI_FD")
	fd, _ := strconv.Atoi(s)
	c, err := Connect(testCtx(t), env, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("PMI_FD %d is still open after Connect (fcntl: %v)", fd, err)
	}
	if err := c.Finalize(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// Replies as hydra (MPICH 4.0.2) and Slurm (22.05.8) sent them.
func TestParseLaunchers(t *testing.T) {
	for _, tc := range []struct {
		name, wire string
		v2         bool
		cmd        string
		tokens     map[string]string
	}{
		{"hydra v1 init", "cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0\n", false,
			"response_to_init", map[string]string{"pmi_version": "1", "pmi_subversion": "1", "rc": "0"}},
		{"hydra v1 missing key", "cmd=get_result rc=-1 msg=key_nokey_not_found value=unknown\n", false,
			"get_result", map[string]string{"rc": "-1", "msg": "key_nokey_not_found", "value": "unknown"}},
		{"hydra v2 fullinit", "   113cmd=fullinit-response;pmi-version=2;pmi-subversion=0;rank=0;size=2;appnum=0;debugged=FALSE;pmiverbose=FALSE;rc=0;", true,
			"fullinit-response", map[string]string{"rank": "0", "size": "2", "appnum": "0", "rc": "0"}},
		{"slurm v2 get", "45    cmd=kvs-get-response;rc=0;found=TRUE;value=a;", true,
			"kvs-get-response", map[string]string{"rc": "0", "found": "TRUE", "value": "a"}},
		{"slurm v2 mapping", "68    cmd=info-getjobattr-response;rc=0;found=TRUE;value=(vector,(0,1,2));", true,
			"info-getjobattr-response", map[string]string{"value": "(vector,(0,1,2))"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bufio.NewReader(strings.NewReader(tc.wire))
			var m *message
			var err error
			if tc.v2 {
				m, err = readV2(r)
			} else {
				m, err = readV1(r)
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.cmd != tc.cmd {
				t.Errorf("cmd = %q; want %q", m.cmd, tc.cmd)
			}
			for k, want := range tc.tokens {
				if v, ok := m.get(k); !ok || v != want {
					t.Errorf("%s = %q (present %v); want %q", k, v, ok, want)
				}
			}
			if _, err := r.ReadByte(); err != io.EOF {
				t.Errorf("the reader stopped before the message's end")
			}
		})
	}
}

// Requests as hydra and Slurm accept them.
func TestEncode(t *testing.T) {
	if got, want := string(encodeV1("put", pair{"kvsname", "kvs_1"}, pair{"key", "k"}, pair{"value", "v"})),
		"cmd=put kvsname=kvs_1 key=k value=v\n"; got != want {
		t.Errorf("encodeV1 = %q; want %q", got, want)
	}
	if got, want := string(encodeV2("fullinit", pair{"pmirank", "0"}, pair{"threaded", "FALSE"})),
		"    38cmd=fullinit;pmirank=0;threaded=FALSE;"; got != want {
		t.Errorf("encodeV2 = %q; want %q", got, want)
	}
}

func TestErrors(t *testing.T) {
	ctx := testCtx(t)
	t.Run("no PMI", func(t *testing.T) {
		if _, err := Connect(ctx, envOf(), 2); !errors.Is(err, ErrNoPMI) {
			t.Errorf("err = %v; want ErrNoPMI", err)
		}
	})
	t.Run("bad version", func(t *testing.T) {
		if _, err := Connect(ctx, envOf("PMI_FD=3"), 3); err == nil || !strings.Contains(err.Error(), "want 1 or 2") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("port without id", func(t *testing.T) {
		_, err := Connect(ctx, envOf("PMI_PORT=127.0.0.1:1"), 2)
		if err == nil || !strings.Contains(err.Error(), "PMI_ID is not") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("fd not a socket", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		_, err = Connect(ctx, envOf("PMI_FD="+strconv.Itoa(int(r.Fd())), "PMI_RANK=0", "PMI_SIZE=1"), 2)
		if err == nil || !strings.Contains(err.Error(), "is not the launcher's socket") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("init refused", func(t *testing.T) {
		j := newFakeJob(t, 1)
		j.reply = func(cmd string) (string, bool) {
			body := "cmd=fullinit-response;rc=3;rank=0;size=1;"
			return fmt.Sprintf("%6d%s", len(body), body), cmd == "fullinit"
		}
		_, err := Connect(ctx, j.socketEnv(t, 0), 2)
		if err == nil || !strings.Contains(err.Error(), "fullinit failed: rc=3") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("not a PMI server", func(t *testing.T) {
		j := newFakeJob(t, 1)
		j.reply = func(string) (string, bool) { return "HTTP/1.1 400 Bad Request\r\n\r\n", true }
		_, err := Connect(ctx, j.socketEnv(t, 0), 1)
		if err == nil || !strings.Contains(err.Error(), "is this a PMI-1 server?") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("oversized reply", func(t *testing.T) {
		j := newFakeJob(t, 1)
		j.reply = func(cmd string) (string, bool) { return "999999cmd=", cmd == "fullinit" }
		_, err := Connect(ctx, j.socketEnv(t, 0), 2)
		if err == nil || !strings.Contains(err.Error(), "is not a PMI-2 length") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("bad keys and values", func(t *testing.T) {
		j := newFakeJob(t, 1)
		c, err := Connect(ctx, j.socketEnv(t, 0), 1)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Finalize(ctx)
		for _, kv := range [][2]string{{"", "v"}, {"a b", "v"}, {"a=b", "v"}, {strings.Repeat("k", 65), "v"},
			{"k", "a b"}, {"k", "a;b"}, {"k", "a=b"}, {"k", "a\nb"}, {"k", strings.Repeat("v", 1025)}} {
			if err := c.Put(ctx, kv[0], kv[1]); err == nil {
				t.Errorf("Put(%q, %q) succeeded", kv[0], kv[1])
			}
		}
	})
}

// A fence that never completes ends with the context: its deadline, or
// its cancellation.
func TestFenceHonoursContext(t *testing.T) {
	for _, how := range []string{"deadline", "cancel"} {
		t.Run(how, func(t *testing.T) {
			j := newFakeJob(t, 2) // the second process never comes
			c, err := Connect(testCtx(t), j.socketEnv(t, 0), 2)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var ctx context.Context
			var cancel context.CancelFunc
			if how == "deadline" {
				ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
			} else {
				ctx, cancel = context.WithCancel(context.Background())
				time.AfterFunc(200*time.Millisecond, cancel)
			}
			defer cancel()
			start := time.Now()
			err = c.Fence(ctx)
			if err == nil || !errors.Is(err, ctx.Err()) {
				t.Errorf("err = %v; want one wrapping %v", err, ctx.Err())
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Fence returned after %v", d)
			}
		})
	}
}
