package proctest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	Register("meet", meet)
	Register("env", checkEnv)
	Register("fail-odd", func(ctx context.Context, r *Rank) error {
		fmt.Printf("hello from %d\n", r.Rank)
		if r.Rank%2 == 1 {
			return fmt.Errorf("boom from rank %d", r.Rank)
		}
		return nil
	})
	Register("panic", func(ctx context.Context, r *Rank) error { panic("deliberate") })
	Register("exit0", func(ctx context.Context, r *Rank) error { os.Exit(0); return nil })
	Register("hang", hang)
	Register("mark-then-wait", func(ctx context.Context, r *Rank) error {
		r.Mark("ready")
		if r.Rank == 1 {
			<-ctx.Done() // killed long before
			return ctx.Err()
		}
		return nil
	})
	Register("sleep-forever", func(ctx context.Context, r *Rank) error {
		// Written to a file the outer test reads: the helper parent that
		// runs this body gets killed, so nothing else carries the pid out.
		f := filepath.Join(os.Getenv("PROCTEST_PIDDIR"), strconv.Itoa(r.Rank))
		if err := os.WriteFile(f+".tmp", []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			return err
		}
		if err := os.Rename(f+".tmp", f); err != nil {
			return err
		}
		select {}
	})
	Main(m)
}

// meet checks that the ranks share one store: each publishes its rank and
// reads everyone else's, then all count in.
func meet(ctx context.Context, r *Rank) error {
	if err := r.Store.Set(ctx, "rank/"+strconv.Itoa(r.Rank), []byte(r.JobID)); err != nil {
		return err
	}
	for i := range r.Size {
		v, err := r.Store.Get(ctx, "rank/"+strconv.Itoa(i))
		if err != nil {
			return fmt.Errorf("rank %d reading rank %d's key: %w", r.Rank, i, err)
		}
		if string(v) != r.JobID {
			return fmt.Errorf("rank %d sees job %q under rank %d's key, want %q", r.Rank, v, i, r.JobID)
		}
	}
	n, err := r.Store.Add(ctx, "count", 1)
	if err != nil {
		return err
	}
	if n < 1 || n > int64(r.Size) {
		return fmt.Errorf("counter at %d with %d ranks", n, r.Size)
	}
	if len(r.Secret) == 0 || r.StoreAddr == "" {
		return errors.New("rank has no secret or store address")
	}
	return nil
}

func checkEnv(ctx context.Context, r *Rank) error {
	want := map[string]string{
		"PROCTEST_ALL":  "yes",
		"PROCTEST_RANK": strconv.Itoa(r.Rank),
		"PROCTEST_WRAP": "wrapped" + strconv.Itoa(r.Rank),
	}
	for k, v := range want {
		if got := os.Getenv(k); got != v {
			return fmt.Errorf("rank %d: %s=%q, want %q", r.Rank, k, got, v)
		}
	}
	// Env lists what the options added (the wrapper's variable is not
	// one of them).
	wantEnv := []string{"PROCTEST_ALL=yes", "PROCTEST_RANK=" + strconv.Itoa(r.Rank)}
	if strings.Join(r.Env, " ") != strings.Join(wantEnv, " ") {
		return fmt.Errorf("rank %d: Env = %q, want %q", r.Rank, r.Env, wantEnv)
	}
	return nil
}

// hang makes rank 1 ignore its context and start a grandchild that would
// also live forever; everyone else finishes.
func hang(ctx context.Context, r *Rank) error {
	if r.Rank != 1 {
		return nil
	}
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		return err
	}
	r.Mark("grandchild " + strconv.Itoa(cmd.Process.Pid))
	select {}
}

// recorder is a testing.TB that records failures instead of failing, so
// that tests can check what Run reports. Only the methods Run uses are
// implemented; the embedded nil TB panics on anything else.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
	logs   []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	panic("unexpected Fatalf: " + fmt.Sprintf(format, args...))
}

func TestRanksMeetThroughStore(t *testing.T) {
	for _, np := range []int{1, 3, 8} {
		res := Run(t, "meet", np, Timeout(time.Minute))
		if len(res) != np {
			t.Fatalf("np=%d: %d results", np, len(res))
		}
		for r, x := range res {
			if x.Rank != r || x.ExitCode != 0 || x.Err != "" || x.Failed() || x.Pid <= 0 {
				t.Errorf("np=%d: result %d = %+v", np, r, x)
			}
		}
	}
}

func TestStoreAddr(t *testing.T) {
	res := Run(t, "meet", 2, StoreAddr("0.0.0.0:0", "localhost"))
	for _, x := range res {
		if x.Failed() {
			t.Errorf("rank %d: %s", x.Rank, x.Err)
		}
	}
}

func TestEnvAndWrapper(t *testing.T) {
	Run(t, "env", 3,
		Env("PROCTEST_ALL=yes"),
		RankEnv(func(r int) []string { return []string{"PROCTEST_RANK=" + strconv.Itoa(r)} }),
		Wrapper(func(r int) []string { return []string{"env", "PROCTEST_WRAP=wrapped" + strconv.Itoa(r)} }),
	)
}

func TestFailureNamesRanksAndShowsOutput(t *testing.T) {
	rec := &recorder{}
	res := Run(rec, "fail-odd", 4)
	if len(rec.errors) != 1 {
		t.Fatalf("got %d errors, want 1: %q", len(rec.errors), rec.errors)
	}
	e := rec.errors[0]
	for _, want := range []string{"rank 1 failed: boom from rank 1", "rank 3 failed: boom from rank 3"} {
		if !strings.Contains(e, want) {
			t.Errorf("error %q does not contain %q", e, want)
		}
	}
	if strings.Contains(e, "rank 0") || strings.Contains(e, "rank 2") {
		t.Errorf("error %q names a rank that succeeded", e)
	}
	logs := strings.Join(rec.logs, "\n")
	if !strings.Contains(logs, "[rank 3] hello from 3") || strings.Contains(logs, "[rank 2]") {
		t.Errorf("logs show the wrong ranks' output:\n%s", logs)
	}
	if res[1].ExitCode != exitBody || res[0].ExitCode != 0 || res[3].Err != "boom from rank 3" {
		t.Errorf("results: %+v", res)
	}
	if !strings.Contains(res[0].Output, "[rank 0] hello from 0\n") {
		t.Errorf("rank 0 output %q", res[0].Output)
	}
}

func TestExpectError(t *testing.T) {
	// Passes: ranks 1 and 3 fail as expected, 0 and 2 succeed.
	Run(t, "fail-odd", 4, ExpectError("boom", 1, 3))

	// Fails: rank 0 was expected to fail, rank 1 with other text.
	rec := &recorder{}
	Run(rec, "fail-odd", 2, ExpectError("", 0), ExpectError("bang", 1))
	e := strings.Join(rec.errors, "\n")
	for _, want := range []string{"rank 0 succeeded, but an error was expected",
		`rank 1 failed with "boom from rank 1", but an error containing "bang" was expected`} {
		if !strings.Contains(e, want) {
			t.Errorf("errors %q lack %q", e, want)
		}
	}
}

func TestPanicAndSilentExit(t *testing.T) {
	res := Run(t, "panic", 2, ExpectError("panicked: deliberate"))
	if res[0].ExitCode != exitPanic || !strings.Contains(res[0].Err, "proctest_test.go") {
		t.Errorf("panic result %+v lacks exit code %d or a stack", res[0], exitPanic)
	}
	Run(t, "exit0", 1, ExpectError("does TestMain call proctest.Main?"))
}

func TestTimeoutKillsHungRankAndItsChildren(t *testing.T) {
	rec := &recorder{}
	res := Run(rec, "hang", 3, Timeout(time.Second))
	if len(rec.errors) == 0 || !strings.Contains(rec.errors[0], "rank(s) 1 still running") {
		t.Fatalf("errors %q do not name hung rank 1", rec.errors)
	}
	if !res[1].Hung || res[0].Hung || res[2].Hung || res[0].Failed() {
		t.Errorf("results %+v", res)
	}
	if len(res[1].Marks) != 1 {
		t.Fatalf("rank 1 marks %q", res[1].Marks)
	}
	gc, err := strconv.Atoi(strings.TrimPrefix(res[1].Marks[0], "grandchild "))
	if err != nil {
		t.Fatal(err)
	}
	// SIGKILL is delivered when the target next runs, which on a loaded
	// machine is not at once: give the grandchild time to die.
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range []int{res[1].Pid, gc} {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("pid %d survived the run by 10 s", pid)
		}
	}
}

func TestKill(t *testing.T) {
	res := Run(t, "mark-then-wait", 3, KillOnMark(1, "ready"))
	if !res[1].Killed || res[1].ExitCode != -1 || res[0].Failed() || res[2].Failed() {
		t.Errorf("KillOnMark: results %+v", res)
	}
	res = Run(t, "mark-then-wait", 2, KillAfter(1, 200*time.Millisecond))
	if !res[1].Killed || res[1].ExitCode != -1 || res[0].Failed() {
		t.Errorf("KillAfter: results %+v", res)
	}
}

// TestNoOrphans kills a parent that is in the middle of a Run (a copy of
// this test binary running TestHelperParent) and checks that its ranks die
// with it.
func TestNoOrphans(t *testing.T) {
	if os.Getenv("PROCTEST_HELPER") != "" {
		t.Skip("inside the helper")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperParent$", "-test.v")
	cmd.Env = append(os.Environ(), "PROCTEST_HELPER=1", "PROCTEST_PIDDIR="+dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pids []int
	deadline := time.Now().Add(time.Minute)
	for len(pids) < 2 {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatal("the helper's ranks never wrote their pids")
		}
		time.Sleep(20 * time.Millisecond)
		pids = pids[:0]
		for r := range 2 {
			b, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(r)))
			if err == nil {
				pid, _ := strconv.Atoi(string(b))
				pids = append(pids, pid)
			}
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	// The kernel delivers the parent-death signal as the parent exits;
	// allow the scheduler a generous moment to run the dying ranks.
	for _, pid := range pids {
		for i := 0; alive(pid); i++ {
			if i == 500 {
				t.Fatalf("rank pid %d outlived its parent", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestHelperParent is the parent TestNoOrphans kills; it runs only there.
func TestHelperParent(t *testing.T) {
	if os.Getenv("PROCTEST_HELPER") == "" {
		t.Skip("runs only as TestNoOrphans's helper")
	}
	Run(t, "sleep-forever", 2, Env("PROCTEST_PIDDIR="+os.Getenv("PROCTEST_PIDDIR")))
}

// alive reports whether pid names a process that has not exited; a zombie
// (exited, not yet reaped by whoever inherited it) counts as gone.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func TestOutputPrefixAndBound(t *testing.T) {
	o := newRankOutput(7)
	for _, chunk := range []string{"ab", "c\nde", "f\n\ng"} {
		if n, err := o.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", chunk, n, err)
		}
	}
	if got, want := o.String(), "[rank 7] abc\n[rank 7] def\n[rank 7] \n[rank 7] g"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	big := newRankOutput(0)
	line := []byte(strings.Repeat("x", 1023) + "\n")
	for range 3 * maxOutput / len(line) {
		big.Write(line)
	}
	s := big.String()
	if len(s) > maxOutput+200 || !strings.Contains(s, "bytes of output dropped") {
		t.Errorf("bounded output is %d bytes, note present: %v", len(s), strings.Contains(s, "dropped"))
	}
}
