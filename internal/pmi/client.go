// Package pmi is a client of the Process Management Interface that
// MPICH's hydra (mpiexec) and Slurm's srun --mpi=pmi2 offer every process
// they start: a connection to the launcher over which the processes of a
// job learn their rank and size and share a small key-value space, private
// to the job, with a barrier (a fence) that makes everyone's puts visible.
//
// It speaks both wire protocols, PMI-1 and PMI-2, over the connection the
// launcher offers: an inherited socket (PMI_FD) or a TCP address to dial
// (PMI_PORT, with PMI_ID naming the process). It is pure Go and reads no
// library of the launcher's. Tested against MPICH 4.0's hydra and Slurm
// 22.05's pmi2 plugin.
//
// PMI has no standard document; the protocols follow MPICH's sources
// (src/pmi) and Slurm's (src/plugins/mpi/pmi2). A Client is single use:
// Connect, then Put, Fence and Get, then Finalize. A process should
// finalize before it exits: hydra takes a PMI connection that closes
// without finalize for a crashed process and kills the whole job.
package pmi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrNoPMI says the environment offers no PMI connection.
var ErrNoPMI = errors.New("pmi: no PMI connection offered (neither PMI_FD nor PMI_PORT is set)")

// Env looks up an environment variable: os.LookupEnv or a test's stand-in.
type Env func(string) (string, bool)

// Offered reports whether env offers a PMI connection.
func Offered(env Env) bool {
	_, fd := env("PMI_FD")
	_, port := env("PMI_PORT")
	return fd || port
}

// Client is one process's PMI connection. Its methods are not safe for
// concurrent use: PMI is a strict request-reply protocol.
type Client struct {
	conn    net.Conn
	r       *bufio.Reader
	version int
	rank    int
	size    int
	appnum  int
	kvs     string // PMI-1's kvsname; PMI-2's job id
	keyMax  int
	valMax  int
	done    bool // finalized or closed
}

// Connect opens the PMI connection env offers (PMI_FD, else PMI_PORT)
// and initializes it with the given protocol version: 1 or 2. Neither
// launcher lets a client retry with another version (hydra drops the
// whole job on a version it does not speak), so the caller picks; both
// hydra and Slurm's pmi2 plugin speak version 2.
//
// The connection honours ctx's deadline and cancellation in every call.
func Connect(ctx context.Context, env Env, version int) (*Client, error) {
	if version != 1 && version != 2 {
		return nil, fmt.Errorf("pmi: protocol version %d: want 1 or 2", version)
	}
	conn, viaPort, err := open(ctx, env)
	if err != nil {
		return nil, err
	}
	c := &Client{conn: conn, r: bufio.NewReader(conn), version: version, rank: -1, size: -1, appnum: -1}
	if err := c.init(ctx, env, viaPort); err != nil {
		conn.Close()
		c.done = true
		return nil, err
	}
	return c, nil
}

// open returns the connection env names; viaPort says it was dialled.
func open(ctx context.Context, env Env) (net.Conn, bool, error) {
	if s, ok := env("PMI_FD"); ok {
		fd, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || fd < 0 {
			return nil, false, fmt.Errorf("pmi: PMI_FD=%q is not a file descriptor", s)
		}
		f := os.NewFile(uintptr(fd), "PMI_FD")
		if f == nil {
			return nil, false, fmt.Errorf("pmi: PMI_FD=%d is not a file descriptor", fd)
		}
		// FileConn works on a duplicate; the inherited descriptor is
		// closed either way, so that it leaks into no child process.
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("pmi: PMI_FD=%d is not the launcher's socket (was it closed or inherited from another launch?): %w", fd, err)
		}
		return conn, false, nil
	}
	if addr, ok := env("PMI_PORT"); ok {
		if _, ok := env("PMI_ID"); !ok {
			return nil, false, fmt.Errorf("pmi: PMI_PORT=%s is set but PMI_ID is not: the launcher must say which process this is", addr)
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, false, fmt.Errorf("pmi: dialling the launcher at PMI_PORT=%s: %w", addr, err)
		}
		return conn, true, nil
	}
	return nil, false, ErrNoPMI
}

// init runs the handshake: PMI-1's init (after initack when dialled),
// maxes and kvsname; or PMI-2's init then fullinit and job-getid.
func (c *Client) init(ctx context.Context, env Env, viaPort bool) error {
	defer c.watch(ctx)()
	id := -1
	if viaPort {
		s, _ := env("PMI_ID")
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			return fmt.Errorf("pmi: PMI_ID=%q is not a process id", s)
		}
		id = n
	}
	if c.version == 1 {
		return c.initV1(ctx, env, id)
	}
	return c.initV2(ctx, env, id)
}

func (c *Client) initV1(ctx context.Context, env Env, id int) error {
	if id >= 0 {
		// Dialled: the server learns who this is, and answers with the
		// rank and size as a run of "cmd=set" lines ending with debug.
		if err := c.write(ctx, encodeV1("initack", pair{"pmiid", strconv.Itoa(id)})); err != nil {
			return err
		}
		if _, err := c.readV1(ctx, "initack"); err != nil {
			return err
		}
		for seen := 0; ; seen++ {
			if seen > 16 {
				return fmt.Errorf("pmi: the initack reply never ends with cmd=set debug=...")
			}
			m, err := c.readV1(ctx, "set")
			if err != nil {
				return err
			}
			if v, ok := m.get("size"); ok {
				if c.size, err = nonNegative("size", v); err != nil {
					return err
				}
			}
			if v, ok := m.get("rank"); ok {
				if c.rank, err = nonNegative("rank", v); err != nil {
					return err
				}
			}
			if _, ok := m.get("debug"); ok {
				break
			}
		}
	} else {
		var err error
		if c.rank, err = envInt(env, "PMI_RANK"); err != nil {
			return err
		}
		if c.size, err = envInt(env, "PMI_SIZE"); err != nil {
			return err
		}
	}
	if c.rank < 0 || c.size <= 0 || c.rank >= c.size {
		return fmt.Errorf("pmi: the launcher gave rank %d of %d", c.rank, c.size)
	}
	m, err := c.callV1(ctx, "response_to_init", "init", pair{"pmi_version", "1"}, pair{"pmi_subversion", "1"})
	if err != nil {
		return err
	}
	if v, _ := m.get("pmi_version"); v != "1" {
		return fmt.Errorf("pmi: asked for PMI-1, the server answered %s", m)
	}
	if m, err = c.callV1(ctx, "maxes", "get_maxes"); err != nil {
		return err
	}
	if c.keyMax, err = m.integer("keylen_max"); err != nil {
		return err
	}
	if c.valMax, err = m.integer("vallen_max"); err != nil {
		return err
	}
	if m, err = c.callV1(ctx, "appnum", "get_appnum"); err != nil {
		return err
	}
	if c.appnum, err = m.integer("appnum"); err != nil {
		return err
	}
	if m, err = c.callV1(ctx, "my_kvsname", "get_my_kvsname"); err != nil {
		return err
	}
	c.kvs, _ = m.get("kvsname")
	if c.kvs == "" {
		return fmt.Errorf("pmi: the server named no kvs: %s", m)
	}
	return nil
}

func (c *Client) initV2(ctx context.Context, env Env, id int) error {
	// Every PMI-2 client opens with PMI-1's init, asking for version 2.
	m, err := c.callV1(ctx, "response_to_init", "init", pair{"pmi_version", "2"}, pair{"pmi_subversion", "0"})
	if err != nil {
		return err
	}
	if v, _ := m.get("pmi_version"); v != "2" {
		return fmt.Errorf("pmi: asked for PMI-2, the server answered %s", m)
	}
	// The server knows an inherited socket's process; a dialled one
	// says who it is. Slurm's clients also send their job id.
	if id < 0 {
		if id, err = envInt(env, "PMI_RANK"); err != nil {
			return err
		}
	}
	tokens := []pair{}
	if job, ok := env("PMI_JOBID"); ok {
		tokens = append(tokens, pair{"pmijobid", job})
	}
	tokens = append(tokens, pair{"pmirank", strconv.Itoa(id)}, pair{"threaded", "FALSE"})
	if m, err = c.callV2(ctx, "fullinit-response", "fullinit", tokens...); err != nil {
		return err
	}
	if c.rank, err = m.integer("rank"); err != nil {
		return err
	}
	if c.size, err = m.integer("size"); err != nil {
		return err
	}
	if c.appnum, err = m.integer("appnum"); err != nil {
		c.appnum = -1 // optional in some servers
	}
	if c.rank < 0 || c.size <= 0 || c.rank >= c.size {
		return fmt.Errorf("pmi: the launcher gave rank %d of %d", c.rank, c.size)
	}
	if m, err = c.callV2(ctx, "job-getid-response", "job-getid"); err != nil {
		return err
	}
	c.kvs, _ = m.get("jobid")
	if c.kvs == "" {
		return fmt.Errorf("pmi: the server named no job id: %s", m)
	}
	// PMI-2 has no maxes query; these are the limits of pmi2.h, which
	// hydra and Slurm both build with.
	c.keyMax, c.valMax = 64, 1024
	return nil
}

// Version is the protocol in use: 1 or 2.
func (c *Client) Version() int { return c.version }

// Rank is this process's rank in the job, as the launcher sees it.
func (c *Client) Rank() int { return c.rank }

// Size is the number of processes in the job.
func (c *Client) Size() int { return c.size }

// AppNum is the index of this process's executable in an MPMD launch
// (mpiexec -n 2 ./a : -n 2 ./b); -1 where the server gives none.
func (c *Client) AppNum() int { return c.appnum }

// KVSName is the name of the job's key-value space (PMI-2's job id).
func (c *Client) KVSName() string { return c.kvs }

// Put stores key=value in the job's key-value space. Others see it after
// a Fence that everyone joins. Keys hold only letters, digits, '-' and
// '_'; values no whitespace, '=' or ';', because neither launcher
// escapes them on every path (encode anything else, e.g. in hex).
func (c *Client) Put(ctx context.Context, key, value string) error {
	if err := c.check(key, value); err != nil {
		return err
	}
	defer c.watch(ctx)()
	if c.version == 1 {
		m, err := c.callV1(ctx, "put_result", "put", pair{"kvsname", c.kvs}, pair{"key", key}, pair{"value", value})
		if err != nil {
			return err
		}
		return rcError(m, "put "+key)
	}
	_, err := c.callV2(ctx, "kvs-put-response", "kvs-put", pair{"key", key}, pair{"value", value})
	return err
}

// Fence waits until every process of the job has called it, and makes
// the puts that each made before it visible to all: PMI-1's barrier,
// PMI-2's kvs-fence.
func (c *Client) Fence(ctx context.Context) error {
	if c.done {
		return errDone
	}
	defer c.watch(ctx)()
	if c.version == 1 {
		_, err := c.callV1(ctx, "barrier_out", "barrier_in")
		return err
	}
	_, err := c.callV2(ctx, "kvs-fence-response", "kvs-fence")
	return err
}

// Get reads key from the job's key-value space; found is false when no
// process put it (before the last fence).
func (c *Client) Get(ctx context.Context, key string) (value string, found bool, err error) {
	if err := c.check(key, ""); err != nil {
		return "", false, err
	}
	defer c.watch(ctx)()
	if c.version == 1 {
		m, err := c.callV1(ctx, "get_result", "get", pair{"kvsname", c.kvs}, pair{"key", key})
		if err != nil {
			return "", false, err
		}
		// Hydra answers a missing key with rc=-1 and a message, not an
		// error of the connection.
		if rc, _ := m.get("rc"); rc != "" && rc != "0" {
			return "", false, nil
		}
		v, ok := m.get("value")
		return v, ok, nil
	}
	m, err := c.callV2(ctx, "kvs-get-response", "kvs-get", pair{"jobid", c.kvs}, pair{"srcid", "-1"}, pair{"key", key})
	if err != nil {
		return "", false, err
	}
	if f, _ := m.get("found"); !strings.EqualFold(f, "TRUE") {
		return "", false, nil
	}
	v, _ := m.get("value")
	return v, true, nil
}

// Finalize tells the launcher this process is done with PMI, and closes
// the connection. The process may run on; the launcher then takes its
// exit for a normal one (hydra takes a connection closed without it for
// a crash, and kills the job).
func (c *Client) Finalize(ctx context.Context) error {
	if c.done {
		return errDone
	}
	stop := c.watch(ctx)
	var err error
	if c.version == 1 {
		_, err = c.callV1(ctx, "finalize_ack", "finalize")
	} else {
		_, err = c.callV2(ctx, "finalize-response", "finalize")
	}
	stop()
	c.done = true
	if cerr := c.conn.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("pmi: closing the connection: %w", cerr)
	}
	return err
}

// Close closes the connection without finalizing: under hydra the job
// then fails. For errors after which the process cannot go on.
func (c *Client) Close() error {
	if c.done {
		return nil
	}
	c.done = true
	return c.conn.Close()
}

var errDone = errors.New("pmi: the connection is finalized or closed")

func (c *Client) check(key, value string) error {
	if c.done {
		return errDone
	}
	if key == "" || len(key) > c.keyMax {
		return fmt.Errorf("pmi: key %q: want 1..%d characters", key, c.keyMax)
	}
	for _, r := range key {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("pmi: key %q: only letters, digits, '-' and '_'", key)
		}
	}
	if len(value) > c.valMax {
		return fmt.Errorf("pmi: value for %s is %d bytes; the launcher takes at most %d", key, len(value), c.valMax)
	}
	if i := strings.IndexFunc(value, func(r rune) bool { return r <= ' ' || r == '=' || r == ';' || r >= 0x7f }); i >= 0 {
		return fmt.Errorf("pmi: value for %s holds %q, which PMI cannot carry; encode it", key, value[i])
	}
	return nil
}

// watch applies ctx's deadline to the connection and interrupts it when
// ctx is cancelled; the returned func undoes both.
func (c *Client) watch(ctx context.Context) func() {
	if d, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		c.conn.SetDeadline(time.Time{})
	}
}

func (c *Client) write(ctx context.Context, b []byte) error {
	if _, err := c.conn.Write(b); err != nil {
		return c.ioError(ctx, "writing to", err)
	}
	return nil
}

func (c *Client) ioError(ctx context.Context, what string, err error) error {
	if d, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(d) {
		// The connection's deadline is ctx's: ctx is done, or about to be.
		<-ctx.Done()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return fmt.Errorf("pmi: %s the launcher: %w", what, err)
}

// readV1 reads a PMI-1 reply and checks its command.
func (c *Client) readV1(ctx context.Context, want string) (*message, error) {
	m, err := readV1(c.r)
	if err != nil {
		return nil, c.ioError(ctx, "reading from", err)
	}
	if m.cmd != want {
		return nil, fmt.Errorf("pmi: expected cmd=%s from the launcher, got %s", want, clip(m.String()))
	}
	return m, nil
}

// callV1 sends a PMI-1 request and reads its reply; a reply with a
// non-zero rc is an error unless the request is a get or a put, whose
// callers read rc themselves.
func (c *Client) callV1(ctx context.Context, want, cmd string, tokens ...pair) (*message, error) {
	if err := c.write(ctx, encodeV1(cmd, tokens...)); err != nil {
		return nil, err
	}
	m, err := c.readV1(ctx, want)
	if err != nil {
		return nil, err
	}
	if cmd != "get" && cmd != "put" {
		if err := rcError(m, cmd); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// callV2 sends a PMI-2 request and reads its reply; a non-zero rc is an
// error.
func (c *Client) callV2(ctx context.Context, want, cmd string, tokens ...pair) (*message, error) {
	if err := c.write(ctx, encodeV2(cmd, tokens...)); err != nil {
		return nil, err
	}
	m, err := readV2(c.r)
	if err != nil {
		return nil, c.ioError(ctx, "reading from", err)
	}
	if m.cmd != want {
		return nil, fmt.Errorf("pmi: expected cmd=%s from the launcher, got %s", want, clip(m.String()))
	}
	if err := rcError(m, cmd); err != nil {
		return nil, err
	}
	return m, nil
}

// rcError turns a reply's non-zero rc into an error with its message.
func rcError(m *message, what string) error {
	rc, ok := m.get("rc")
	if !ok || rc == "0" {
		return nil
	}
	msg, _ := m.get("msg")
	if msg == "" {
		msg, _ = m.get("errmsg")
	}
	return fmt.Errorf("pmi: %s failed: rc=%s %s", what, rc, msg)
}

func envInt(env Env, name string) (int, error) {
	s, ok := env(name)
	if !ok {
		return 0, fmt.Errorf("pmi: %s is not set; the launcher sets it with PMI_FD", name)
	}
	return nonNegative(name, s)
}

func nonNegative(name, s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("pmi: %s=%q is not a non-negative integer", name, s)
	}
	return n, nil
}
