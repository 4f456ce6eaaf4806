package torchrun

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/internal/fakeserver"
	"github.com/gocoll/gocoll/store"
)

// A rank that reaches something other than the store it expects on
// MASTER_PORT must fail within two seconds, saying what it found, not
// wait out the five-minute timeout.
const failFast = 2 * time.Second

func gocollStore(t *testing.T) int {
	t.Helper()
	s, err := store.Listen("127.0.0.1:0", []byte("another job's secret"), store.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	_, port, _ := net.SplitHostPort(s.Addr())
	p, _ := strconv.Atoi(port)
	return p
}

var (
	garbage = fakeserver.Sends("\x17\x03\x03\x00\x20\xff\xfe")
	banner  = fakeserver.SendsAndCloses("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
	silent  = fakeserver.Silent
)

// TestWrongServerFailsFast starts np ranks by hand (no torchrun: the
// server on MASTER_PORT is the test's) and checks every one fails
// within failFast, naming what it found.
func TestWrongServerFailsFast(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the job program")
	}
	_, job := binaries(t)
	const np = 4
	gocollEnv := func(port int) []string {
		return []string{"MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + strconv.Itoa(port), "GOCOLL_SECRET=test-secret"}
	}
	launcherEnv := func(port int) []string { return append(gocollEnv(port), "GOCOLL_LAUNCHER_STORE=1") }
	agentEnv := func(port int) []string {
		return []string{"MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + strconv.Itoa(port),
			"TORCHELASTIC_USE_AGENT_STORE=True", "TORCHELASTIC_RUN_ID=test", "TORCHELASTIC_RESTART_COUNT=0"}
	}
	// One torch store serves both cases that need one: torch takes
	// seconds to import. The ranks only probe it.
	var torchPort int
	sharedTorch := func(st *testing.T) int {
		if torchPort == 0 {
			torchPort = fakeserver.TorchStore(t, st)
		}
		return torchPort
	}
	cases := []struct {
		name   string
		server func(t *testing.T) int
		env    func(port int) []string
		// want is what a rank's error must say; rank 0 serving
		// gocoll's store finds the port taken instead.
		want, want0 string
	}{
		{"gocoll/garbage", func(t *testing.T) int { return fakeserver.Port(t, garbage) }, gocollEnv,
			`sent "\x17\x03\x03\x00 \xff\xfe", not a gocoll store's challenge`, "MASTER_PORT in use"},
		{"gocoll/http", func(t *testing.T) int { return fakeserver.Port(t, banner) }, gocollEnv,
			`sent "HTTP/1.1 400 Bad Request`, "MASTER_PORT in use"},
		{"gocoll/silent", func(t *testing.T) int { return fakeserver.Port(t, silent) }, gocollEnv,
			"sent nothing in", "MASTER_PORT in use"},
		{"gocoll/torch", sharedTorch, gocollEnv, "torch's c10d TCPStore", "MASTER_PORT in use"},
		{"launcher/torch", sharedTorch, launcherEnv, "torch's c10d TCPStore", "torch's c10d TCPStore"},
		{"launcher/silent", func(t *testing.T) int { return fakeserver.Port(t, silent) }, launcherEnv,
			"sent nothing in", "sent nothing in"},
		{"agent/gocoll", gocollStore, agentEnv, "gocoll store's challenge", "gocoll store's challenge"},
		{"agent/garbage", func(t *testing.T) int { return fakeserver.Port(t, garbage) }, agentEnv,
			`with only "\x17\x03\x03\x00 \xff\xfe" in 1s, not an 8-byte key count`, `with only "\x17\x03\x03\x00 \xff\xfe" in 1s, not an 8-byte key count`},
		{"agent/http", func(t *testing.T) int { return fakeserver.Port(t, banner) }, agentEnv,
			`answered a GETNUMKEYS query with "HTTP/1.1", not a key count`, `answered a GETNUMKEYS query with "HTTP/1.1", not a key count`},
		{"agent/silent", func(t *testing.T) int { return fakeserver.Port(t, silent) }, agentEnv,
			"sent nothing in answer", "sent nothing in answer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			port := tc.server(t)
			type result struct {
				took time.Duration
				err  error
				out  string
			}
			res := make([]result, np)
			var wg sync.WaitGroup
			for r := range np {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					cmd := exec.CommandContext(ctx, job)
					cmd.Env = cleanEnv(append(tc.env(port), "RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(np),
						"LOCAL_RANK="+strconv.Itoa(r), "LOCAL_WORLD_SIZE="+strconv.Itoa(np))...)
					var out bytes.Buffer
					cmd.Stdout, cmd.Stderr = &out, &out
					start := time.Now()
					err := cmd.Run()
					res[r] = result{time.Since(start), err, out.String()}
				}()
			}
			wg.Wait()
			for r, x := range res {
				want := tc.want
				if r == 0 {
					want = tc.want0
				}
				switch {
				case x.err == nil:
					t.Errorf("rank %d succeeded against the wrong server:\n%s", r, x.out)
				case x.took > failFast:
					t.Errorf("rank %d took %v to fail (bar %v): %s", r, x.took, failFast, x.out)
				case !strings.Contains(x.out, want):
					t.Errorf("rank %d's error does not say %q:\n%s", r, want, x.out)
				}
			}
			if !t.Failed() {
				t.Logf("rank 1 in %v: %s", res[1].took.Round(time.Millisecond), strings.TrimSpace(res[1].out))
			}
		})
	}
}
