package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/internal/checked"
	"github.com/gocoll/gocoll/store"
)

// The test binary plays both parts: started by gocollrun (which sets
// GOCOLL_LAUNCHER_STORE) it is a rank running GOCOLLRUN_TEST_RANK's mode;
// with GOCOLLRUN_TEST_LAUNCHER set it is gocollrun itself. Ranks inherit
// the launcher's environment, so the rank check comes first.
func TestMain(m *testing.M) {
	if mode := os.Getenv("GOCOLLRUN_TEST_RANK"); mode != "" && os.Getenv(dispatch.EnvLauncherStore) == "1" {
		os.Exit(rankMain(mode))
	}
	if os.Getenv("GOCOLLRUN_TEST_LAUNCHER") != "" {
		os.Exit(gocollrun(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func rankMain(mode string) int {
	dir := os.Getenv("GOCOLLRUN_TEST_DIR")
	rank := os.Getenv("RANK")
	write := func(name, content string) {
		tmp := filepath.Join(dir, name+".tmp")
		os.WriteFile(tmp, []byte(content), 0o644)
		os.Rename(tmp, filepath.Join(dir, name))
	}
	switch mode {
	case "exit3":
		// A grandchild, to check that the whole process group goes.
		sleep := exec.Command("sleep", "300")
		if err := sleep.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		write("gpid-"+rank, strconv.Itoa(sleep.Process.Pid))
		write("pid-"+rank, strconv.Itoa(os.Getpid()))
		switch rank {
		case "1":
			size, _ := strconv.Atoi(os.Getenv("WORLD_SIZE"))
			for i := 0; i < size; i++ { // wait until every rank is up
				for !exists(filepath.Join(dir, "pid-"+strconv.Itoa(i))) {
					time.Sleep(10 * time.Millisecond)
				}
			}
			write("exit-time", strconv.FormatInt(time.Now().UnixNano(), 10))
			os.Exit(3)
		case "2":
			// A rank that ignores SIGTERM: only SIGKILL stops it.
			signal.Ignore(syscall.SIGTERM)
		}
		select {}
	case "ignore":
		signal.Ignore(syscall.SIGINT)
		write("pid-"+rank, strconv.Itoa(os.Getpid()))
		select {}
	case "sleep":
		write("pid-"+rank, strconv.Itoa(os.Getpid()))
		select {}
	case "print":
		fmt.Printf("hello from rank %s\nsecond line %s\n", rank, rank)
		fmt.Fprintf(os.Stderr, "err line %s\n", rank)
		fmt.Printf("tail %s", rank) // no newline
		return 0
	case "term":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		write("ready-"+rank, "")
		s := <-ch
		write("term-"+rank, s.String())
		return 0
	case "procs":
		fmt.Printf("GOMAXPROCS=%d\n", runtime.GOMAXPROCS(0))
		return 0
	case "init":
		ctx := context.Background()
		c, err := dispatch.Init(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		for i := 0; i < 10; i++ {
			if err := c.Barrier(ctx); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		fmt.Printf("rank=%d size=%d local=%d/%d node=%d/%d store=%s job=%s\n", c.Rank(), c.Size(), c.LocalRank(), c.LocalSize(),
			c.NodeRank(), c.NumNodes(), c.KVSAddr(), c.JobID())
		return 0
	case "codes":
		// Rank 1 fails at once; rank 2 fails, and rank 3 succeeds, when
		// the test says so.
		switch rank {
		case "1":
			return 3
		case "2", "3":
			for !exists(filepath.Join(dir, "go")) {
				time.Sleep(10 * time.Millisecond)
			}
			if rank == "2" {
				return 5
			}
		}
		return 0
	case "gate":
		// Exits with GOCOLLRUN_TEST_CODE when the test says so.
		for !exists(filepath.Join(dir, "go")) {
			time.Sleep(10 * time.Millisecond)
		}
		code, _ := strconv.Atoi(os.Getenv("GOCOLLRUN_TEST_CODE"))
		return code
	case "shrink":
		write("pid-"+rank, strconv.Itoa(os.Getpid()))
		if err := shrinkRank(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// After both communicators closed: the store is no longer needed.
		write("done-"+rank, strconv.FormatInt(time.Now().UnixNano(), 10))
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown mode", mode)
	return 2
}

// shrinkRank runs allreduces until the ranks GOCOLLRUN_TEST_VICTIM names
// (comma-separated) kill themselves with SIGKILL; the others catch the
// *core.PeerError naming one of them, Shrink, and run 1000 checked
// allreduces on what they get.
func shrinkRank() error {
	ctx := context.Background()
	var victims []int
	for _, v := range strings.Split(os.Getenv("GOCOLLRUN_TEST_VICTIM"), ",") {
		r, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("GOCOLLRUN_TEST_VICTIM: %w", err)
		}
		victims = append(victims, r)
	}
	c, err := dispatch.Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	for i := 0; ; i++ {
		if slices.Contains(victims, c.Rank()) && i == 20 {
			unix.Kill(os.Getpid(), unix.SIGKILL)
			select {} // the signal is on its way
		}
		err := checked.Allreduce(ctx, c, i, 257)
		if err == nil {
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) || !slices.ContainsFunc(pe.Ranks, func(r int) bool { return slices.Contains(victims, r) }) {
			return fmt.Errorf("rank %d: allreduce #%d: want a *core.PeerError naming one of ranks %v: %w", c.Rank(), i, victims, err)
		}
		break
	}
	s, err := c.Shrink(ctx)
	if err != nil {
		return fmt.Errorf("rank %d: shrink: %w", c.Rank(), err)
	}
	defer s.Close()
	var want []int
	for r := range c.Size() {
		if !slices.Contains(victims, r) {
			want = append(want, r)
		}
	}
	if !slices.Equal(s.Ranks(), want) || s.WorldRank() != c.Rank() {
		return fmt.Errorf("rank %d: shrunk to world ranks %v (this one %d), want %v", c.Rank(), s.Ranks(), s.WorldRank(), want)
	}
	c.Close() // failed for good; s keeps the store connection
	for i := range 1000 {
		if err := checked.Allreduce(ctx, s, i, 257); err != nil {
			return fmt.Errorf("rank %d: allreduce #%d after shrinking: %w", c.Rank(), i, err)
		}
	}
	fmt.Printf("rank %d: rank %d of %v on %s after the shrink, 1000 allreduces checked\n", c.Rank(), s.Rank(), s.Ranks(), s.Backend())
	return nil
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// launcher returns a command running gocollrun with args, whose ranks run
// mode; dir collects the ranks' files.
func launcher(t *testing.T, mode string, args ...string) (*exec.Cmd, string, *lockedBuffer, *lockedBuffer) {
	t.Helper()
	dir := t.TempDir()
	// A launcher that hangs fails the test instead of stalling the run.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, os.Args[0], append(args, os.Args[0])...)
	cmd.Env = append(withoutJobVars(os.Environ()), "GOCOLLRUN_TEST_LAUNCHER=1", "GOCOLLRUN_TEST_RANK="+mode, "GOCOLLRUN_TEST_DIR="+dir)
	out, errb := &lockedBuffer{}, &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, errb
	return cmd, dir, out, errb
}

// lockedBuffer is a bytes.Buffer a test may read while exec writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatal(err)
	return -1
}

// waitGone reports whether pid is gone within 5 s. A SIGKILL takes effect
// when its target next runs, and an orphan is reaped by whoever inherits
// it, neither at once on a loaded machine; how long is not asserted.
func waitGone(pid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return gone(pid)
}

// gone reports whether pid no longer runs (a zombie waiting for a reaper
// counts as gone: it runs nothing and holds nothing but its pid).
func gone(pid int) bool {
	if err := unix.Kill(pid, 0); err == unix.ESRCH {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}

func readPids(t *testing.T, dir, prefix string) []int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, prefix+"*"))
	var pids []int
	for _, f := range files {
		if strings.HasSuffix(f, ".tmp") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// A rank that exits 3 makes gocollrun stop the others (one of which
// ignores SIGTERM) and exit 3 within 2 s, naming the rank, with no
// process of the job left.
func TestFailingRankStopsJob(t *testing.T) {
	cmd, dir, _, errb := launcher(t, "exit3", "-np", "4", "-grace", "500ms")
	err := cmd.Run()
	end := time.Now()
	if code := exitCode(t, err); code != 3 {
		t.Fatalf("gocollrun exited %d, want 3; stderr:\n%s", code, errb)
	}
	if !strings.Contains(errb.String(), "rank 1 (pid") || !strings.Contains(errb.String(), "exit code 3") {
		t.Errorf("stderr does not say rank 1 failed with exit code 3:\n%s", errb)
	}
	b, err := os.ReadFile(filepath.Join(dir, "exit-time"))
	if err != nil {
		t.Fatal(err)
	}
	ns, _ := strconv.ParseInt(string(b), 10, 64)
	if d := end.Sub(time.Unix(0, ns)); d > 2*time.Second {
		t.Errorf("gocollrun exited %v after rank 1 did; the bound is 2s", d)
	}
	pids := readPids(t, dir, "pid-")
	gpids := readPids(t, dir, "gpid-")
	if len(pids) != 4 || len(gpids) != 4 {
		t.Fatalf("found %d rank pids and %d grandchild pids, want 4 each", len(pids), len(gpids))
	}
	for _, pid := range append(pids, gpids...) {
		if !waitGone(pid) {
			t.Errorf("pid %d outlived gocollrun", pid)
		}
	}
}

func TestOutputPrefixes(t *testing.T) {
	cmd, _, out, errb := launcher(t, "print", "-np", "3")
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v; stderr:\n%s", err, errb)
	}
	var want []string
	for r := 0; r < 3; r++ {
		want = append(want, fmt.Sprintf("[rank %d] hello from rank %d", r, r), fmt.Sprintf("[rank %d] second line %d", r, r),
			fmt.Sprintf("[rank %d] tail %d", r, r))
	}
	if got := sortedLines(out.String()); strings.Join(got, "\n") != strings.Join(sorted(want), "\n") {
		t.Errorf("stdout lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(sorted(want), "\n"))
	}
	for r := 0; r < 3; r++ {
		if !strings.Contains(errb.String(), fmt.Sprintf("[rank %d] err line %d\n", r, r)) {
			t.Errorf("stderr lacks rank %d's prefixed line:\n%s", r, errb)
		}
	}

	cmd, _, out, errb = launcher(t, "print", "-np", "2", "-prefix=false")
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v; stderr:\n%s", err, errb)
	}
	if strings.Contains(out.String(), "[rank") || !strings.Contains(out.String(), "hello from rank 1\n") {
		t.Errorf("-prefix=false output:\n%s", out)
	}
}

// TestGOMAXPROCS: each rank gets its share of the CPUs, unless the user
// set GOMAXPROCS.
func TestGOMAXPROCS(t *testing.T) {
	cpus := runtime.NumCPU()
	for _, c := range []struct {
		np   int
		env  string
		want int
	}{{1, "", cpus}, {2 * cpus, "", 1}, {2 * cpus, "GOMAXPROCS=3", 3}} {
		cmd, _, out, errb := launcher(t, "procs", "-np", strconv.Itoa(c.np), "-prefix=false", "-bind", "none")
		cmd.Env = withoutVar(cmd.Env, "GOMAXPROCS")
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v; stderr:\n%s", err, errb)
		}
		want := strings.Repeat(fmt.Sprintf("GOMAXPROCS=%d\n", c.want), c.np)
		if out.String() != want {
			t.Errorf("-np %d on %d CPUs, %q set: ranks printed\n%swant\n%s", c.np, cpus, c.env, out, want)
		}
		if told := strings.Contains(errb.String(), "set GOMAXPROCS to choose"); told != (c.env == "" && c.np > 1) {
			t.Errorf("-np %d, %q set: stderr %q; want the GOMAXPROCS notice only when gocollrun chose it for several ranks", c.np, c.env, errb)
		}
	}
}

func withoutVar(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func sortedLines(s string) []string {
	return sorted(strings.Split(strings.TrimSuffix(s, "\n"), "\n"))
}

func sorted(s []string) []string {
	s = append([]string(nil), s...)
	sort.Strings(s)
	return s
}

func TestSIGTERMReachesEveryRank(t *testing.T) {
	const np = 4
	cmd, dir, _, errb := launcher(t, "term", "-np", strconv.Itoa(np))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for r := 0; r < np; r++ {
		for !exists(filepath.Join(dir, "ready-"+strconv.Itoa(r))) {
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("rank %d never got ready; stderr:\n%s", r, errb)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("gocollrun after SIGTERM: %v; stderr:\n%s", err, errb)
	}
	for r := 0; r < np; r++ {
		b, err := os.ReadFile(filepath.Join(dir, "term-"+strconv.Itoa(r)))
		if err != nil || string(b) != "terminated" {
			t.Errorf("rank %d: did not get SIGTERM (%q, %v)", r, b, err)
		}
	}
}

// The ranks find each other through the store gocollrun serves.
func TestInitUnderGocollrun(t *testing.T) {
	const np = 3
	cmd, _, out, errb := launcher(t, "init", "-np", strconv.Itoa(np), "-timeout", "60s")
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v; stderr:\n%s", err, errb)
	}
	lines := sortedLines(out.String())
	if len(lines) != np {
		t.Fatalf("output:\n%s", out)
	}
	var store, job string
	for r, l := range lines {
		prefix := fmt.Sprintf("[rank %d] rank=%d size=%d local=%d/%d node=0/1 store=127.0.0.1:", r, r, np, r, np)
		if !strings.HasPrefix(l, prefix) {
			t.Errorf("line %q, want prefix %q", l, prefix)
		}
		f := strings.Fields(l)
		if r == 0 {
			store, job = f[len(f)-2], f[len(f)-1]
		} else if f[len(f)-2] != store || f[len(f)-1] != job {
			t.Errorf("rank %d: %s %s; rank 0: %s %s", r, f[len(f)-2], f[len(f)-1], store, job)
		}
	}
	if !strings.HasPrefix(job, "job=gocollrun-") {
		t.Errorf("job id %q is not gocollrun's", job)
	}
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"-np", "2"}, nil, "no program"},
		{[]string{"-np", "0", "x"}, nil, "-np 0"},
		{[]string{"-nnodes", "2", "-node-rank", "2", "x"}, nil, "-node-rank 2"},
		{[]string{"-nnodes", "2", "x"}, nil, "-master-port"},
		{[]string{"-nnodes", "2", "-master-port", "1234", "x"}, nil, "GOCOLL_SECRET"},
		{[]string{"/nonexistent/program"}, nil, "starting rank 0"},
		{[]string{"-on-failure", "restart", "x"}, nil, "-on-failure"},
		{[]string{"-store-linger", "-1s", "x"}, nil, "-store-linger -1s is negative"},
		{[]string{"-nnodes", "2", "-master-port", "1234", "x"}, []string{"GOCOLL_SECRET=s", "GOCOLL_TIMEOUT=soon"}, `GOCOLL_TIMEOUT "soon" is not a duration`},
		{[]string{"-nnodes", "2", "-master-port", "1234", "-timeout", "0", "x"}, []string{"GOCOLL_SECRET=s"}, `-timeout "0": the timeout must be positive`},
	} {
		var out, errb bytes.Buffer
		code := gocollrun(tc.args, tc.env, &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("gocollrun %q: exit %d, stderr %q; want an error containing %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// Two gocollrun instances as two nodes of one job: node 0's serves the
// store, and the ranks of both meet through it.
func TestTwoNodes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	type node struct {
		cmd      *exec.Cmd
		out, err *lockedBuffer
	}
	var nodes []node
	for n := 0; n < 2; n++ {
		cmd, _, out, errb := launcher(t, "init", "-np", "2", "-nnodes", "2", "-node-rank", strconv.Itoa(n),
			"-master-addr", "127.0.0.1", "-master-port", port, "-timeout", "60s")
		cmd.Env = append(cmd.Env, "GOCOLL_SECRET=two-nodes", "GOCOLL_NODE_ID=node"+strconv.Itoa(n))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, node{cmd, out, errb})
	}
	var lines []string
	for n, nd := range nodes {
		if err := nd.cmd.Wait(); err != nil {
			t.Fatalf("node %d: %v\n%s", n, err, nd.err)
		}
		lines = append(lines, sortedLines(nd.out.String())...)
	}
	lines = sorted(lines)
	if len(lines) != 4 {
		t.Fatalf("output:\n%s", strings.Join(lines, "\n"))
	}
	for r, l := range lines {
		want := fmt.Sprintf("[rank %d] rank=%d size=4 local=%d/2 node=%d/2 store=127.0.0.1:%s job=", r, r, r%2, r/2, port)
		if !strings.HasPrefix(l, want) {
			t.Errorf("got %q, want prefix %q", l, want)
		}
	}
}

// Even a gocollrun killed with SIGKILL (no chance to clean up) leaves no
// rank behind: the parent-death signal takes them.
func TestKilledLauncherTakesRanks(t *testing.T) {
	const np = 3
	cmd, dir, _, errb := launcher(t, "sleep", "-np", strconv.Itoa(np))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(readPids(t, dir, "pid-")) < np {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("ranks did not start; stderr:\n%s", errb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	for _, pid := range readPids(t, dir, "pid-") {
		if !waitGone(pid) {
			unix.Kill(pid, unix.SIGKILL)
			t.Errorf("rank pid %d outlived a killed gocollrun", pid)
		}
	}
}

// A second SIGINT kills ranks that ignore the first.
func TestSecondSignalKills(t *testing.T) {
	const np = 2
	cmd, dir, _, errb := launcher(t, "ignore", "-np", strconv.Itoa(np))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(readPids(t, dir, "pid-")) < np {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("ranks did not start; stderr:\n%s", errb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	// The ranks ignore SIGINT: wait until gocollrun says it forwarded it.
	for !strings.Contains(errb.String(), "forwarding") {
		if time.Now().After(deadline) {
			t.Fatalf("no forwarding message; stderr:\n%s", errb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if code := exitCode(t, err); code != 128+int(syscall.SIGINT) {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, 128+int(syscall.SIGINT), errb)
	}
	for _, pid := range readPids(t, dir, "pid-") {
		if !waitGone(pid) {
			t.Errorf("rank pid %d survived", pid)
		}
	}
}

// With -on-failure=continue, a rank killed by SIGKILL (rank 0, whose
// death takes the store with it when rank 0 serves it, and another) leaves
// the others running: they Shrink and finish 1000 checked allreduces,
// through the store gocollrun serves. gocollrun waits for them, names the
// dead rank, exits 128+SIGKILL, and leaves no process and nothing in
// /dev/shm.
func TestContinueAfterKill(t *testing.T) {
	const np = 4
	for _, tc := range []struct {
		victim  int
		backend string
	}{{0, "shm"}, {2, "shm"}, {0, "tcp"}} {
		t.Run(fmt.Sprintf("rank%d/%s", tc.victim, tc.backend), func(t *testing.T) {
			before := shmEntries()
			cmd, dir, out, errb := launcher(t, "shrink", "-np", strconv.Itoa(np), "-on-failure", "continue",
				"-backend", tc.backend, "-timeout", "30s")
			cmd.Env = append(cmd.Env, "GOCOLLRUN_TEST_VICTIM="+strconv.Itoa(tc.victim))
			start := time.Now()
			err := cmd.Run()
			t.Logf("gocollrun ran %v; stdout:\n%sstderr:\n%s", time.Since(start).Round(time.Millisecond), out, errb)
			if code := exitCode(t, err); code != 128+int(unix.SIGKILL) {
				t.Errorf("gocollrun exited %d, want %d; stderr:\n%s", code, 128+int(unix.SIGKILL), errb)
			}
			dead := fmt.Sprintf("rank %d (pid", tc.victim)
			summary := fmt.Sprintf("1 of %d rank(s) failed: rank %d (killed by signal killed)", np, tc.victim)
			if !strings.Contains(errb.String(), dead) || !strings.Contains(errb.String(), summary) {
				t.Errorf("stderr does not name rank %d as killed (%q, then %q):\n%s", tc.victim, dead, summary, errb)
			}
			var survivors []int
			for r := range np {
				if r != tc.victim {
					survivors = append(survivors, r)
				}
			}
			for i, r := range survivors {
				line := fmt.Sprintf("[rank %d] rank %d: rank %d of %v on %s after the shrink, 1000 allreduces checked\n",
					r, r, i, survivors, tc.backend)
				if !strings.Contains(out.String(), line) {
					t.Errorf("stdout lacks %q:\n%s\nstderr:\n%s", line, out, errb)
				}
			}
			pids := readPids(t, dir, "pid-")
			if len(pids) != np {
				t.Errorf("found %d rank pids, want %d", len(pids), np)
			}
			for _, pid := range pids {
				if !waitGone(pid) {
					unix.Kill(pid, unix.SIGKILL)
					t.Errorf("rank pid %d outlived gocollrun", pid)
				}
			}
			for name := range shmEntries() {
				if !before[name] && strings.Contains(name, "gocoll") {
					t.Errorf("/dev/shm/%s appeared during the run", name)
				}
			}
		})
	}
}

// Two gocollrun instances as two nodes (distinct GOCOLL_NODE_IDs) of one
// job under -on-failure=continue: every rank of node 0 kills itself with
// SIGKILL midway, and node 0's gocollrun goes on serving the store, so
// node 1's ranks Shrink onto shared memory and finish 1000 checked
// allreduces; node 0's gocollrun exits (137, its ranks' code) only after
// they are done and gone, and soon after. -store-linger is not given: no
// time limit under continue, so a launcher that missed the last client
// leaving would run into the test's deadline.
func TestTwoNodesNode0Dies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	type node struct {
		cmd      *exec.Cmd
		dir      string
		out, err *lockedBuffer
		exited   time.Time
		waitErr  error
	}
	nodes := make([]*node, 2)
	for n := range nodes {
		cmd, dir, out, errb := launcher(t, "shrink", "-np", "2", "-nnodes", "2", "-node-rank", strconv.Itoa(n),
			"-master-addr", "127.0.0.1", "-master-port", port, "-timeout", "30s", "-on-failure", "continue")
		cmd.Env = append(cmd.Env, "GOCOLL_SECRET=two-nodes", "GOCOLL_NODE_ID=node"+strconv.Itoa(n), "GOCOLLRUN_TEST_VICTIM=0,1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		nodes[n] = &node{cmd: cmd, dir: dir, out: out, err: errb}
	}
	var wg sync.WaitGroup
	for _, nd := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd.waitErr = nd.cmd.Wait()
			nd.exited = time.Now()
		}()
	}
	wg.Wait()
	for n, nd := range nodes {
		t.Logf("node %d: stdout:\n%sstderr:\n%s", n, nd.out, nd.err)
	}
	if code := exitCode(t, nodes[0].waitErr); code != 128+int(unix.SIGKILL) {
		t.Errorf("node 0's gocollrun exited %d, want %d (its ranks were killed)", code, 128+int(unix.SIGKILL))
	}
	// The two die in either order.
	for _, want := range []string{"2 of 2 rank(s) failed: ", "rank 0 (killed by signal killed)", "rank 1 (killed by signal killed)"} {
		if !strings.Contains(nodes[0].err.String(), want) {
			t.Errorf("node 0's stderr lacks %q", want)
		}
	}
	if code := exitCode(t, nodes[1].waitErr); code != 0 {
		t.Fatalf("node 1's gocollrun exited %d, want 0: its ranks did not survive node 0", code)
	}
	for i, r := range []int{2, 3} {
		line := fmt.Sprintf("[rank %d] rank %d: rank %d of [2 3] on shm after the shrink, 1000 allreduces checked\n", r, r, i)
		if !strings.Contains(nodes[1].out.String(), line) {
			t.Errorf("node 1's stdout lacks %q", line)
		}
		b, err := os.ReadFile(filepath.Join(nodes[1].dir, "done-"+strconv.Itoa(r)))
		if err != nil {
			t.Fatalf("rank %d did not say it was done: %v", r, err)
		}
		ns, err := strconv.ParseInt(string(b), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		done := time.Unix(0, ns)
		if !nodes[0].exited.After(done) {
			t.Errorf("node 0's gocollrun exited %v before rank %d was done", done.Sub(nodes[0].exited), r)
		}
		// Its ranks' connections close when they exit; the machine may
		// be loaded, hence the slack.
		if d := nodes[0].exited.Sub(done); d > 30*time.Second {
			t.Errorf("node 0's gocollrun exited %v after rank %d was done", d, r)
		}
	}
	for _, pid := range append(readPids(t, nodes[0].dir, "pid-"), readPids(t, nodes[1].dir, "pid-")...) {
		if !waitGone(pid) {
			unix.Kill(pid, unix.SIGKILL)
			t.Errorf("rank pid %d outlived gocollrun", pid)
		}
	}
}

// Node 0's gocollrun of a two-node job, whose one rank exits with code
// when the test says so, while the test holds a store connection as a
// rank of node 1 would: gocollrun holds the store until that connection
// closes (then exits at once), -store-linger passes, or a SIGTERM comes;
// under -on-failure=stop a failed rank ends it at once.
func TestNode0HoldsStore(t *testing.T) {
	const hold = "serving the store while ranks of other nodes are connected to it"
	for _, tc := range []struct {
		name   string
		args   []string
		code   int    // the rank's
		end    string // close, term, linger, or "" (gocollrun ends by itself)
		want   int    // gocollrun's exit code
		held   bool   // whether gocollrun holds the store
		within time.Duration
	}{
		{"continue/close", []string{"-on-failure", "continue"}, 0, "close", 0, true, 0},
		{"continue/failed/close", []string{"-on-failure", "continue"}, 3, "close", 3, true, 0},
		{"stop/close", []string{"-on-failure", "stop", "-timeout", "90s"}, 0, "close", 0, true, 0},
		{"continue/term", []string{"-on-failure", "continue"}, 0, "term", 128 + int(unix.SIGTERM), true, 0},
		{"continue/linger", []string{"-on-failure", "continue", "-store-linger", "3s"}, 0, "", 0, true, 3 * time.Second},
		{"stop/failed", []string{"-on-failure", "stop"}, 3, "", 3, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
			ln.Close()
			args := append([]string{"-np", "1", "-nnodes", "2", "-node-rank", "0", "-master-addr", "127.0.0.1", "-master-port", port}, tc.args...)
			cmd, dir, _, errb := launcher(t, "gate", args...)
			cmd.Env = append(cmd.Env, "GOCOLL_SECRET=hold", "GOCOLLRUN_TEST_CODE="+strconv.Itoa(tc.code))
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cl, err := store.Dial(ctx, "127.0.0.1:"+port, []byte("hold"))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if err := cl.Set(ctx, "here", nil); err != nil { // counted by now
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			ranksDone := time.Now()
			if !tc.held {
				select {
				case err := <-exited:
					if code := exitCode(t, err); code != tc.want {
						t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.want, errb)
					}
				case <-ctx.Done():
					cmd.Process.Kill()
					t.Fatalf("gocollrun held the store after a rank failed under -on-failure=stop; stderr:\n%s", errb)
				}
				if strings.Contains(errb.String(), hold) {
					t.Errorf("stderr says it held the store:\n%s", errb)
				}
				if err := cl.Set(ctx, "after", nil); err == nil {
					t.Error("the store still answers after gocollrun exited")
				}
				return
			}
			// The notice comes when the hold has lasted a second.
			for !strings.Contains(errb.String(), hold) {
				select {
				case err := <-exited:
					t.Fatalf("gocollrun exited (%v) while a client was connected; stderr:\n%s", err, errb)
				case <-ctx.Done():
					cmd.Process.Kill()
					t.Fatalf("no notice of the hold; stderr:\n%s", errb)
				case <-time.After(10 * time.Millisecond):
				}
			}
			if err := cl.Set(ctx, "during", nil); err != nil {
				t.Fatalf("the store does not answer during the hold: %v", err)
			}
			var ended time.Time
			switch tc.end {
			case "close":
				cl.Close()
				ended = time.Now()
			case "term":
				cmd.Process.Signal(unix.SIGTERM)
				ended = time.Now()
			}
			select {
			case err := <-exited:
				if code := exitCode(t, err); code != tc.want {
					t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.want, errb)
				}
			case <-ctx.Done():
				cmd.Process.Kill()
				t.Fatalf("gocollrun did not exit; stderr:\n%s", errb)
			}
			if !ended.IsZero() {
				t.Logf("gocollrun exited %v after the test ended the hold (%s)", time.Since(ended).Round(time.Millisecond), tc.end)
			}
			t.Logf("gocollrun exited %v after its rank was let go; stderr:\n%s", time.Since(ranksDone).Round(time.Millisecond), errb)
			if tc.within > 0 {
				if d := time.Since(ranksDone); d < tc.within {
					t.Errorf("gocollrun exited %v after its rank was let go, before -store-linger %v", d, tc.within)
				}
				if !strings.Contains(errb.String(), "still use the store after -store-linger 3s") {
					t.Errorf("stderr does not say -store-linger ran out:\n%s", errb)
				}
			}
			if tc.end == "term" && !strings.Contains(errb.String(), "got terminated; closing the store") {
				t.Errorf("stderr does not say the signal ended the hold:\n%s", errb)
			}
		})
	}
}

// With -on-failure=continue, ranks that exit non-zero leave the others
// running; gocollrun names every one of them at the end and exits with
// the first one's code.
func TestContinueReportsEveryFailure(t *testing.T) {
	cmd, dir, _, errb := launcher(t, "codes", "-np", "4", "-on-failure", "continue")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(errb.String(), "rank 1 (pid") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("gocollrun did not report rank 1; stderr:\n%s", errb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if code := exitCode(t, err); code != 3 {
		t.Errorf("gocollrun exited %d, want 3 (rank 1's code); stderr:\n%s", code, errb)
	}
	for _, want := range []string{
		"rank 1 (pid", "exit code 3; the other ranks go on (-on-failure=continue",
		"rank 2 (pid", "exit code 5",
		"2 of 4 rank(s) failed: rank 1 (exit code 3), rank 2 (exit code 5); exiting 3, rank 1's code",
	} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb)
		}
	}
}

func shmEntries() map[string]bool {
	m := map[string]bool{}
	ents, _ := os.ReadDir("/dev/shm")
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

// The default -store-linger under -on-failure=stop is the ranks' timeout:
// -timeout over GOCOLL_TIMEOUT over core.DefaultTimeout, in either form
// dispatch takes.
func TestJobTimeout(t *testing.T) {
	for _, tc := range []struct {
		flag string
		env  map[string]string
		want time.Duration
	}{
		{"", nil, core.DefaultTimeout},
		{"", map[string]string{dispatch.EnvTimeout: "90"}, 90 * time.Second},
		{"2m", map[string]string{dispatch.EnvTimeout: "90"}, 2 * time.Minute},
		{"1.5", nil, 1500 * time.Millisecond},
	} {
		if got, err := jobTimeout(tc.flag, tc.env); err != nil || got != tc.want {
			t.Errorf("jobTimeout(%q, %v) = %v, %v; want %v", tc.flag, tc.env, got, err, tc.want)
		}
	}
}
