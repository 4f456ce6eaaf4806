package dispatch

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/internal/fakeserver"
	"github.com/gocoll/gocoll/store/c10d"
)

// agentEnv is torchrun's worker variables, as torch 1.13's agent sets them.
func agentEnv(rank, size int, agent string, extra ...string) []string {
	env := []string{
		"RANK=" + strconv.Itoa(rank), "WORLD_SIZE=" + strconv.Itoa(size),
		"LOCAL_RANK=" + strconv.Itoa(rank), "LOCAL_WORLD_SIZE=" + strconv.Itoa(size), "GROUP_RANK=0",
		"MASTER_ADDR=127.0.0.1", "MASTER_PORT=29500",
		"TORCHELASTIC_USE_AGENT_STORE=" + agent, "TORCHELASTIC_RUN_ID=run-1", "TORCHELASTIC_RESTART_COUNT=0",
	}
	return append(env, extra...)
}

func TestResolveTorchrun(t *testing.T) {
	resolveEnv := func(env []string, opts ...Option) (*launch, error) {
		return resolve(buildOptions(opts), envOf(env...))
	}

	// Default rendezvous: the agent's store, no secret needed, a prefix
	// per run and attempt.
	l, err := resolveEnv(agentEnv(1, 4, "True", "TORCHELASTIC_RESTART_COUNT=2", "GOCOLL_LAUNCHER_STORE=1"))
	if err != nil {
		t.Fatal(err)
	}
	if !l.agentStore || l.launcherStore || l.secret != nil || l.master != "127.0.0.1:29500" ||
		l.agentPrefix != "gocoll-torchrun/run-1/attempt_2/" {
		t.Errorf("agent store: %+v", l)
	}
	if l, err = resolveEnv(agentEnv(1, 4, "True", "GOCOLL_SECRET=mine")); err != nil || string(l.secret) != "mine" || !l.agentStore {
		t.Errorf("agent store with GOCOLL_SECRET: %+v, %v", l, err)
	}

	// --standalone and c10d: rank 0 serves gocoll's store, with a secret
	// derived from the run id and the master address.
	l, err = resolveEnv(agentEnv(1, 4, "False"))
	if err != nil {
		t.Fatal(err)
	}
	if l.agentStore || l.secret == nil || !bytes.Contains(l.secret, []byte("run-1")) {
		t.Errorf("standalone: %+v", l)
	}
	l2, _ := resolveEnv(agentEnv(3, 4, "False"))
	l3, _ := resolveEnv(agentEnv(3, 4, "False", "TORCHELASTIC_RUN_ID=run-2"))
	l4, _ := resolveEnv(agentEnv(3, 4, "False", "MASTER_PORT=29501"))
	if !bytes.Equal(l.secret, l2.secret) || bytes.Equal(l.secret, l3.secret) || bytes.Equal(l.secret, l4.secret) {
		t.Errorf("derived secrets: ranks of a run must agree, other runs and rounds differ: %q %q %q %q",
			l.secret, l2.secret, l3.secret, l4.secret)
	}
	if l, err = resolveEnv(agentEnv(1, 4, "False", "GOCOLL_SECRET=mine")); err != nil || string(l.secret) != "mine" {
		t.Errorf("standalone with GOCOLL_SECRET: %+v, %v", l, err)
	}

	// Not torchrun (no run id; gocollrun and hand-set variables): the
	// secret is still required. Options naming the master or the store
	// win over torchrun's variables.
	for name, env := range map[string][]string{
		"no run id":   {"RANK=1", "WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=29500"},
		"with master": agentEnv(1, 2, "True"),
	} {
		var opts []Option
		if name == "with master" {
			opts = append(opts, WithMaster("127.0.0.1:29999"))
		}
		if _, err := resolveEnv(env, opts...); err == nil || !strings.Contains(err.Error(), "GOCOLL_SECRET is not set") {
			t.Errorf("%s: %v; want the secret asked for", name, err)
		}
	}
	if _, err := resolveEnv(agentEnv(1, 2, "yes")); err == nil || !strings.Contains(err.Error(), "TORCHELASTIC_USE_AGENT_STORE") {
		t.Errorf("TORCHELASTIC_USE_AGENT_STORE=yes: %v", err)
	}
}

// TestInitThroughAgentStore: ranks meet through a real torch TCPStore as
// torchrun's workers do, share the secret rank 0 made, keep their keys
// under the run's and attempt's prefix, and a restarted attempt starts
// from a clean namespace while the store keeps the old one.
func TestInitThroughAgentStore(t *testing.T) {
	port := fakeserver.TorchStore(t, t)
	const n = 3
	run := func(restart int) [][]byte {
		secrets := make([][]byte, n)
		errs := goRanks(n, func(r int) []Option {
			return []Option{WithEnviron(agentEnv(r, n, "True", "MASTER_PORT="+strconv.Itoa(port),
				"TORCHELASTIC_RESTART_COUNT="+strconv.Itoa(restart), "GOCOLL_BACKEND=kv", "GOCOLL_TIMEOUT=20s"))}
		}, func(ctx context.Context, c *Comm) error {
			secrets[c.Rank()] = c.secret
			return c.Barrier(ctx)
		})
		checkErrs(t, errs)
		return secrets
	}
	first := run(0)
	for r := range first {
		if len(first[r]) < 16 || !bytes.Equal(first[r], first[0]) {
			t.Fatalf("rank %d's secret %x; rank 0's %x: want one fresh secret shared by all", r, first[r], first[0])
		}
	}
	again := run(0) // a second communicator in the same attempt
	restarted := run(1)
	if bytes.Equal(again[0], first[0]) || bytes.Equal(restarted[0], first[0]) {
		t.Error("a later Init reused an earlier secret")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := c10d.Dial(ctx, "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for key, want := range map[string]string{
		"gocoll-torchrun/run-1/attempt_0/gocoll/arrivals": strconv.Itoa(2 * n),
		"gocoll-torchrun/run-1/attempt_1/gocoll/arrivals": strconv.Itoa(n),
	} {
		if v, ok, err := cl.TryGet(ctx, key); err != nil || !ok || string(v) != want {
			t.Errorf("%s = %q (found %v, %v); want %s", key, v, ok, err, want)
		}
	}
}
