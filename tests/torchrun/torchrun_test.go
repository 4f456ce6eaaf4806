// Package torchrun tests gocoll under Debian's torch 1.13 torchrun (and
// its c10d TCPStore), with real processes and nothing exported by the
// user: no GOCOLL_SECRET, MASTER_ADDR or MASTER_PORT.
//
// torchrun here always gets --redirects 1 --tee 1: Debian's torchrun
// crashes on Python 3.11 with its default redirects.
package torchrun

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	torchrunPath = "/usr/bin/torchrun"
	torchPython  = "/usr/bin/python3" // the interpreter that has python3-torch
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds examples/hello and testdata/job once per test binary.
func binaries(t *testing.T) (hello, job string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "gocoll-torchrun-test-")
		if buildErr != nil {
			return
		}
		for _, b := range [][2]string{{"hello", "../../examples/hello"}, {"job", "./testdata/job"}} {
			if out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, b[0]), b[1]).CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "hello"), filepath.Join(binDir, "job")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func needTorchrun(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts torchrun, which imports torch: seconds per run")
	}
	if _, err := os.Stat(torchrunPath); err != nil {
		t.Skipf("%s not found: apt-get install python3-torch", torchrunPath)
	}
}

// cleanEnv is the environment of a shell where nothing is exported: only
// PATH, HOME and TMPDIR pass, so no launcher, store or secret variable of
// the test's own environment reaches the ranks.
func cleanEnv(extra ...string) []string {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	for _, k := range []string{"HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, extra...)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// modes are torchrun's three ways to rendezvous a single node; each
// returns the flags before --nproc_per_node.
var modes = []struct {
	name  string
	flags func(t *testing.T) []string
}{
	// The default static rendezvous: the agent serves a c10d store on
	// --master_port (29500 unless given; a free one here, so that a
	// stray server on 29500 cannot fail the test).
	{"default", func(t *testing.T) []string { return []string{"--master_port", strconv.Itoa(freePort(t))} }},
	{"standalone", func(t *testing.T) []string { return []string{"--standalone"} }},
	{"c10d", func(t *testing.T) []string {
		return []string{"--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:" + strconv.Itoa(freePort(t)), "--nnodes=1"}
	}},
}

// torchrun runs prog under torchrun with np workers from a clean
// environment and returns its output.
func torchrun(t *testing.T, mode []string, np int, prog string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// --monitor_interval: the agent looks at its workers every 5 s by
	// default, so every run would last at least that long.
	argv := append(slices.Clone(mode), "--nproc_per_node="+strconv.Itoa(np), "--redirects", "1", "--tee", "1",
		"--monitor_interval", "0.1", "--no_python", prog)
	cmd := exec.CommandContext(ctx, torchrunPath, append(argv, args...)...)
	cmd.Env = cleanEnv()
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("torchrun %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func TestHelloAndAllreduce(t *testing.T) {
	needTorchrun(t)
	hello, job := binaries(t)
	// The modes run side by side (each picks its own ports; only
	// --standalone uses the fixed 29400), most of a run being torchrun's
	// Python starting up.
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			helloAndAllreduce(t, m.flags, hello, job)
		})
	}
}

// helloAndAllreduce runs hello and the job program under torchrun with
// flags, at np 2 and 4, and checks every rank's output.
func helloAndAllreduce(t *testing.T, flags func(t *testing.T) []string, hello, job string) {
	for _, np := range []int{2, 4} {
		t.Run(fmt.Sprintf("np%d", np), func(t *testing.T) {
			out := torchrun(t, flags(t), np, hello, "-barriers", "20")
			for r := range np {
				hi := fmt.Sprintf("hello from rank %d of %d (local rank %d of %d, node 0 of 1", r, np, r, np)
				done := fmt.Sprintf("rank %d passed 20 barriers; sum of ranks = %d", r, np*(np-1)/2)
				if !strings.Contains(out, hi) || !strings.Contains(out, done) {
					t.Fatalf("rank %d's hello lines are missing:\n%s", r, out)
				}
			}
			checkJob(t, torchrun(t, flags(t), np, job), np)
		})
	}
}

var jobLine = regexp.MustCompile(`rank (\d+) of (\d+): init (\S+), backend (\S+), store (\S+), allreduce checked`)

// checkJob checks every rank of the job program reported its checked
// allreduces, and returns each rank's Init time.
func checkJob(t *testing.T, out string, np int) []time.Duration {
	t.Helper()
	took := make([]time.Duration, np)
	seen := make([]bool, np)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := jobLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		r, _ := strconv.Atoi(m[1])
		if n, _ := strconv.Atoi(m[2]); n != np || r >= np {
			t.Fatalf("a rank says it is %s of %s in a job of %d:\n%s", m[1], m[2], np, out)
		}
		d, err := time.ParseDuration(m[3])
		if err != nil {
			t.Fatalf("rank %d's init time %q: %v", r, m[3], err)
		}
		took[r], seen[r] = d, true
	}
	for r, ok := range seen {
		if !ok {
			t.Fatalf("rank %d did not report its checked allreduce:\n%s", r, out)
		}
	}
	return took
}

// TestInitTimeNp8 measures dispatch.Init at np 8 under torchrun's
// default rendezvous and --standalone. Init's time on a rank includes
// waiting for the ranks torchrun started after it, so the bar (under a
// second) applies to the slowest rank.
func TestInitTimeNp8(t *testing.T) {
	needTorchrun(t)
	_, job := binaries(t)
	for _, m := range modes[:2] {
		t.Run(m.name, func(t *testing.T) {
			took := checkJob(t, torchrun(t, m.flags(t), 8, job), 8)
			lo, hi := slices.Min(took), slices.Max(took)
			t.Logf("dispatch.Init at np 8 under torchrun (%s): fastest rank %v, slowest %v", m.name, lo, hi)
			if hi > time.Second {
				t.Errorf("dispatch.Init took %v on the slowest rank at np 8; the bar is 1s (per rank: %v)", hi, took)
			}
		})
	}
}
