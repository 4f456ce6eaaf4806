// Package proctest runs a test's rank bodies as real processes.
//
// Collective communication has to be tested across real process boundaries:
// shared memory, sockets, futexes and crashes behave differently between
// goroutines of one process. proctest re-executes the test binary itself np
// times; each child runs one registered body as one rank, meeting its peers
// through a store server (package store) that the parent (the test) runs.
//
// Use it in three steps:
//
//	func TestMain(m *testing.M) {
//		proctest.Register("allreduce", allreduceBody)
//		proctest.Main(m) // in a child: runs the body and exits
//	}
//
//	func allreduceBody(ctx context.Context, r *proctest.Rank) error { ... }
//
//	func TestAllreduce(t *testing.T) {
//		proctest.Run(t, "allreduce", 4, proctest.Timeout(time.Minute))
//	}
//
// Run starts the ranks, waits for them, kills every one of them (and their
// process groups) when the timeout passes, and fails the test naming the
// ranks that failed or hung, with each rank's output prefixed by its rank.
// No child outlives the parent: each is started with a parent-death signal.
package proctest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/store"
)

// Environment variables that tell a child which body to run as which rank.
// They are internal to proctest; tests never set them.
const (
	envBody     = "GOCOLL_PROCTEST_BODY"
	envRank     = "GOCOLL_PROCTEST_RANK"
	envSize     = "GOCOLL_PROCTEST_SIZE"
	envJob      = "GOCOLL_PROCTEST_JOB"
	envSecret   = "GOCOLL_PROCTEST_SECRET" // hex
	envStore    = "GOCOLL_PROCTEST_STORE"
	envDeadline = "GOCOLL_PROCTEST_DEADLINE" // Unix nanoseconds
	envKeys     = "GOCOLL_PROCTEST_ENVKEYS"  // names of the extra variables, comma-separated
)

// reportFD is the file descriptor a child reports marks and its result on:
// the first entry of exec.Cmd.ExtraFiles.
const reportFD = 3

// DefaultTimeout bounds a Run that sets no Timeout (or less, when the test's
// own deadline comes sooner).
const DefaultTimeout = 2 * time.Minute

// killGrace is how long after the timeout the parent waits before it kills
// the ranks: the bodies' contexts end at the timeout, and a body that
// returns its own error says more than a kill does.
const killGrace = 3 * time.Second

var (
	regMu  sync.Mutex
	bodies = map[string]func(context.Context, *Rank) error{}
)

// Register makes body runnable under name. Call it from TestMain (before
// Main) or from an init function, in the test binary that calls Run:
// the children look bodies up by name. Registering a name twice panics.
func Register(name string, body func(ctx context.Context, r *Rank) error) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, ok := bodies[name]; ok {
		panic(fmt.Sprintf("proctest: body %q registered twice", name))
	}
	bodies[name] = body
}

func lookup(name string) (func(context.Context, *Rank) error, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	b, ok := bodies[name]
	return b, ok
}

// Rank is what a body learns about its process.
type Rank struct {
	Rank, Size int
	// Store is a store client connected to the server the parent
	// runs for this Run; it is fresh for every Run, so keys need no job
	// prefix. proctest closes it after the body returns.
	Store core.Store
	// JobID is unique to this Run.
	JobID string
	// Secret is the store's secret, random for every Run.
	Secret []byte
	// StoreAddr is the address Store is connected to ("host:port").
	StoreAddr string
	// Env holds the "KEY=value" variables the Run's options added for this
	// rank (they are in the process environment as well).
	Env []string

	report *os.File // reportFD; nil when not a child
	mu     sync.Mutex
}

// Mark tells the parent that this rank reached a named point. The parent
// kills the ranks that a KillOnMark option attaches to name. Marks also
// appear in the rank's Result.
func (r *Rank) Mark(name string) {
	if strings.ContainsAny(name, "\n\r") {
		panic("proctest: a mark name is one line")
	}
	r.send("mark " + name)
}

func (r *Rank) send(line string) {
	if r.report == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// A failed write means the parent is gone; the parent-death signal
	// ends this process shortly.
	_, _ = r.report.WriteString(line + "\n")
}

// Result is one rank's outcome.
type Result struct {
	Rank     int
	Pid      int           // the process id the rank ran as (its process group too)
	ExitCode int           // -1 when the process was killed by a signal
	Err      string        // the body's error text; empty on success
	Duration time.Duration // from start to exit
	Output   string        // stdout and stderr, each line prefixed "[rank N] "
	Marks    []string      // marks the rank wrote, in order
	Killed   bool          // killed by a KillAfter or KillOnMark option
	Hung     bool          // still running at the timeout, then killed
}

// Failed reports whether the rank did not finish its body successfully.
func (r Result) Failed() bool { return r.ExitCode != 0 || r.Err != "" || r.Hung }

// Option adjusts a Run.
type Option func(*config)

type expectation struct {
	substr string
	ranks  []int // nil: every rank
}

type config struct {
	timeout   time.Duration
	env       []string
	rankEnv   func(rank int) []string
	wrapper   func(rank int) []string
	expect    []expectation
	killAfter map[int]time.Duration
	killOn    map[string][]int
	listen    string
	advertise string
	verbose   bool
}

// Timeout bounds the whole Run. The bodies' contexts end at the timeout;
// ranks still running a few seconds later are reported as hung and killed
// with their process groups.
func Timeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// Env adds "KEY=value" variables to every rank's environment.
func Env(kv ...string) Option { return func(c *config) { c.env = append(c.env, kv...) } }

// RankEnv adds the variables f returns for each rank (e.g. GOCOLL_NODE_ID to
// simulate several nodes, or GOCOLL_ISA).
func RankEnv(f func(rank int) []string) Option { return func(c *config) { c.rankEnv = f } }

// Wrapper runs each rank under the command prefix f returns for it, e.g.
// []string{"ip", "netns", "exec", "node1"}. The prefix must exec the test
// binary in the same process or pass file descriptor 3 and the environment
// through (ip netns exec, nice, taskset, env do).
func Wrapper(f func(rank int) []string) Option { return func(c *config) { c.wrapper = f } }

// ExpectError declares that ranks (every rank when none are listed) must fail
// with an error whose text contains substr ("" accepts any error). Run then
// fails the test if one of them succeeds or fails otherwise; ranks not named
// by any ExpectError must still succeed.
func ExpectError(substr string, ranks ...int) Option {
	return func(c *config) { c.expect = append(c.expect, expectation{substr, ranks}) }
}

// KillAfter sends SIGKILL to rank's process group d after it starts. Its
// outcome is not checked (it may finish first); see Result.Killed.
func KillAfter(rank int, d time.Duration) Option {
	return func(c *config) {
		if c.killAfter == nil {
			c.killAfter = map[int]time.Duration{}
		}
		c.killAfter[rank] = d
	}
}

// KillOnMark sends SIGKILL to rank's process group as soon as any rank
// calls Mark(mark). Its outcome is not checked; see Result.Killed.
func KillOnMark(rank int, mark string) Option {
	return func(c *config) {
		if c.killOn == nil {
			c.killOn = map[string][]int{}
		}
		c.killOn[mark] = append(c.killOn[mark], rank)
	}
}

// StoreAddr makes the parent's store listen on listen (default
// "127.0.0.1:0") and the children dial advertiseHost at its port (default:
// the listening host). Ranks in other network namespaces need it.
func StoreAddr(listen, advertiseHost string) Option {
	return func(c *config) { c.listen, c.advertise = listen, advertiseHost }
}

// Verbose logs every rank's output even when the Run succeeds.
func Verbose() Option { return func(c *config) { c.verbose = true } }

// proc is one running rank, seen from the parent.
type proc struct {
	rank  int
	cmd   *exec.Cmd
	out   *rankOutput
	start time.Time
	// onMark is called for every mark the rank writes; it is set before
	// started is closed, and the report reader waits for started.
	onMark  func(mark string)
	started chan struct{}

	mu     sync.Mutex
	marks  []string
	errTxt string
	ok     bool // the child reported success
	killed bool
	done   chan struct{} // closed when the process is reaped and its report read
	state  *os.ProcessState
	end    time.Time
}

func (p *proc) kill() {
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	p.killGroup()
}

// killGroup kills the rank and everything it started: each rank leads its
// own process group.
func (p *proc) killGroup() {
	if p.cmd.Process != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// Run starts np processes running the body registered under name, waits for
// all of them, and returns their results indexed by rank. It fails t (without
// stopping it) naming every rank that failed, hung or did not meet an
// ExpectError, and logs those ranks' output.
func Run(t testing.TB, name string, np int, opts ...Option) []Result {
	t.Helper()
	if _, ok := lookup(name); !ok {
		t.Fatalf("proctest: no body registered as %q; call proctest.Register in TestMain or init", name)
	}
	if np < 1 {
		t.Fatalf("proctest: np = %d; need at least 1 rank", np)
	}
	if IsChild() {
		t.Fatalf("proctest: Run called inside a rank; bodies cannot start ranks")
	}
	cfg := config{timeout: DefaultTimeout, listen: "127.0.0.1:0"}
	for _, o := range opts {
		o(&cfg)
	}
	if dl, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := dl.Deadline(); ok {
			// Leave room to kill, reap and report before go test's own
			// timeout panics the whole binary.
			if left := time.Until(d) - 2*killGrace; left < cfg.timeout {
				cfg.timeout = max(left, time.Second)
			}
		}
	}

	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	jobID := "pt" + hex.EncodeToString(secret[:6])
	srv, err := store.Listen(cfg.listen, secret)
	if err != nil {
		t.Fatalf("proctest: starting the store on %s: %v", cfg.listen, err)
	}
	defer srv.Close()
	addr := srv.Addr()
	if cfg.advertise != "" {
		_, port, found := strings.Cut(addr[strings.LastIndex(addr, ":"):], ":")
		if !found {
			t.Fatalf("proctest: store address %q has no port", addr)
		}
		addr = cfg.advertise + ":" + port
	}

	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	start := time.Now()
	deadline := start.Add(cfg.timeout)
	procs := make([]*proc, np)
	onMark := func(mark string) {
		for _, v := range cfg.killOn[mark] {
			if v >= 0 && v < np {
				procs[v].kill()
			}
		}
	}
	for r := range np {
		p, err := startRank(&cfg, exe, name, r, np, jobID, secret, addr, deadline)
		if err != nil {
			for _, q := range procs[:r] {
				q.killGroup()
				close(q.started)
				<-q.done
			}
			t.Fatalf("proctest: starting rank %d: %v", r, err)
		}
		p.onMark = onMark
		procs[r] = p
	}
	// Marks are acted on only once every rank exists (procs is complete);
	// until then they wait in the report pipes.
	for _, p := range procs {
		close(p.started)
	}
	for r, d := range cfg.killAfter {
		if r < 0 || r >= np {
			continue
		}
		p := procs[r]
		tm := time.AfterFunc(d, p.kill)
		defer tm.Stop()
	}

	// Wait for every rank, or the timeout plus grace.
	all := make(chan struct{})
	go func() {
		for _, p := range procs {
			<-p.done
		}
		close(all)
	}()
	timer := time.NewTimer(cfg.timeout + killGrace)
	var hung []int
	select {
	case <-all:
		timer.Stop()
	case <-timer.C:
		for _, p := range procs {
			select {
			case <-p.done:
			default:
				hung = append(hung, p.rank)
			}
		}
		for _, p := range procs {
			p.killGroup()
		}
		<-all
	}

	results := make([]Result, np)
	for i, p := range procs {
		// A rank may have started children of its own; none may survive.
		p.killGroup()
		p.mu.Lock()
		res := Result{
			Rank:     p.rank,
			Pid:      p.cmd.Process.Pid,
			ExitCode: p.state.ExitCode(),
			Duration: p.end.Sub(p.start),
			Output:   p.out.String(),
			Marks:    slices.Clone(p.marks),
			Killed:   p.killed,
			Hung:     slices.Contains(hung, p.rank),
		}
		switch {
		case p.errTxt != "":
			res.Err = p.errTxt
		case !p.ok && res.ExitCode == 0:
			res.Err = "the rank exited 0 without running its body: does TestMain call proctest.Main?"
			res.ExitCode = 1
		case !p.ok && !res.Killed && !res.Hung:
			res.Err = fmt.Sprintf("the rank died (%v) without reporting a result", p.state)
		}
		p.mu.Unlock()
		results[i] = res
	}
	check(t, name, &cfg, results, hung)
	return results
}

// startRank starts rank r. Its started channel must be closed by the caller
// once onMark is set.
func startRank(cfg *config, exe, name string, r, np int, jobID string, secret []byte, addr string, deadline time.Time) (*proc, error) {
	var extra []string
	extra = append(extra, cfg.env...)
	if cfg.rankEnv != nil {
		extra = append(extra, cfg.rankEnv(r)...)
	}
	keys := make([]string, 0, len(extra))
	for _, kv := range extra {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.Contains(k, ",") {
			return nil, fmt.Errorf("environment entry %q is not KEY=value", kv)
		}
		keys = append(keys, k)
	}
	argv := []string{exe, "-test.run=^$"}
	if cfg.wrapper != nil {
		argv = append(slices.Clone(cfg.wrapper(r)), argv...)
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		lp, err := exec.LookPath(path)
		if err != nil {
			return nil, fmt.Errorf("wrapper command: %w", err)
		}
		path = lp
	}
	cmd := &exec.Cmd{Path: path, Args: argv}
	cmd.Env = append(os.Environ(),
		envBody+"="+name,
		envRank+"="+strconv.Itoa(r),
		envSize+"="+strconv.Itoa(np),
		envJob+"="+jobID,
		envSecret+"="+hex.EncodeToString(secret),
		envStore+"="+addr,
		envDeadline+"="+strconv.FormatInt(deadline.UnixNano(), 10),
		envKeys+"="+strings.Join(keys, ","),
	)
	cmd.Env = append(cmd.Env, extra...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // so a kill reaches whatever the rank started
		Pdeathsig: syscall.SIGKILL, // so no rank outlives a parent that dies
	}
	out := newRankOutput(r)
	cmd.Stdout = out
	cmd.Stderr = out
	// Output copying must not keep Wait blocked forever when a grandchild
	// holds the pipes open.
	cmd.WaitDelay = 2 * time.Second
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("report pipe: %w", err)
	}
	cmd.ExtraFiles = []*os.File{wr}
	p := &proc{rank: r, cmd: cmd, out: out, done: make(chan struct{}), started: make(chan struct{})}
	// The parent-death signal fires when the thread that forked the child
	// exits, not the process; Go may end a thread that a locked goroutine
	// leaves (a test that entered a network namespace, say). So start and
	// wait on a thread of our own, kept locked and alive until the rank ends.
	startErr := make(chan error, 1)
	reported := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		p.start = time.Now()
		err := cmd.Start()
		wr.Close()
		startErr <- err
		if err != nil {
			rd.Close()
			return
		}
		go func() {
			defer close(reported)
			defer rd.Close()
			<-p.started
			p.readReport(rd)
		}()
		// Wait returns once the process exits (and output is drained or
		// WaitDelay passes); the report pipe hits EOF when every holder of
		// its write end is gone.
		_ = cmd.Wait()
		end := time.Now()
		p.killGroup() // a grandchild might still hold the report pipe
		<-reported
		p.mu.Lock()
		p.state, p.end = cmd.ProcessState, end
		p.mu.Unlock()
		close(p.done)
	}()
	if err := <-startErr; err != nil {
		return nil, err
	}
	return p, nil
}

func (p *proc) readReport(rd io.Reader) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		verb, arg, _ := strings.Cut(sc.Text(), " ")
		switch verb {
		case "mark":
			p.mu.Lock()
			p.marks = append(p.marks, arg)
			p.mu.Unlock()
			p.onMark(arg)
		case "error":
			txt, err := strconv.Unquote(arg)
			if err != nil {
				txt = arg
			}
			p.mu.Lock()
			p.errTxt = txt
			p.mu.Unlock()
		case "ok":
			p.mu.Lock()
			p.ok = true
			p.mu.Unlock()
		}
	}
}

// check fails t for every rank whose outcome differs from what cfg expects.
func check(t testing.TB, name string, cfg *config, results []Result, hung []int) {
	t.Helper()
	np := len(results)
	want := make([]*expectation, np) // nil: must succeed
	for i := range cfg.expect {
		e := &cfg.expect[i]
		if e.ranks == nil {
			for r := range want {
				want[r] = e
			}
			continue
		}
		for _, r := range e.ranks {
			if r >= 0 && r < np {
				want[r] = e
			}
		}
	}
	var bad []string
	var show []int
	for r, res := range results {
		_, victim := cfg.killAfter[r]
		for _, vs := range cfg.killOn {
			victim = victim || slices.Contains(vs, r)
		}
		var why string
		switch {
		case res.Hung:
			why = "hung"
		case victim:
			// A victim's outcome is the test's business.
		case want[r] == nil && res.Failed():
			why = "failed: " + firstLine(res.Err)
		case want[r] != nil && !res.Failed():
			why = "succeeded, but an error was expected"
			if want[r].substr != "" {
				why = fmt.Sprintf("succeeded, but an error containing %q was expected", want[r].substr)
			}
		case want[r] != nil && !strings.Contains(res.Err, want[r].substr):
			why = fmt.Sprintf("failed with %q, but an error containing %q was expected", res.Err, want[r].substr)
		}
		if why != "" {
			bad = append(bad, fmt.Sprintf("rank %d %s", r, why))
			show = append(show, r)
		}
	}
	if len(hung) > 0 {
		t.Errorf("proctest: %s: rank(s) %s still running %v after the %v timeout; killed every rank",
			name, joinInts(hung), killGrace, cfg.timeout)
	}
	if len(bad) > 0 {
		t.Errorf("proctest: %s with %d ranks:\n\t%s", name, np, strings.Join(bad, "\n\t"))
	}
	if cfg.verbose || len(bad) > 0 {
		for _, res := range results {
			if !cfg.verbose && !slices.Contains(show, res.Rank) {
				continue
			}
			t.Logf("rank %d: exit %d after %v, error %q, output:\n%s", res.Rank, res.ExitCode,
				res.Duration.Round(time.Millisecond), res.Err, res.Output)
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
