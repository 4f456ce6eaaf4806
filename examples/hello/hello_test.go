package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests build hello and gocollrun and run hello the two ways the
// package documentation shows. The mpirun test needs Open MPI's mpirun
// (apt-get install -y openmpi-bin) and is skipped without it.

func build(t *testing.T, dir, pkg, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
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

// checkOutput checks every rank greeted and passed its barriers.
func checkOutput(t *testing.T, out string, np int, prefixed bool) {
	t.Helper()
	for r := 0; r < np; r++ {
		p := ""
		if prefixed {
			p = fmt.Sprintf("[rank %d] ", r)
		}
		hello := fmt.Sprintf("%shello from rank %d of %d (local rank %d of %d, node 0 of 1", p, r, np, r, np)
		done := fmt.Sprintf("%srank %d passed 100 barriers; sum of ranks = %d", p, r, np*(np-1)/2)
		if !strings.Contains(out, hello) || !strings.Contains(out, done) {
			t.Errorf("rank %d's lines are missing from the output:\n%s", r, out)
		}
	}
}

func TestHelloUnderGocollrun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	dir := t.TempDir()
	hello, run := build(t, dir, ".", "hello"), build(t, dir, "../../cmd/gocollrun", "gocollrun")
	for _, backend := range []string{"auto", "tcp", "kv"} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, run, "-np", "4", "-backend", backend, hello, "-barriers", "100").CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("gocollrun -backend %s: %v\n%s", backend, err, out)
		}
		checkOutput(t, string(out), 4, true)
	}
}

func TestHelloUnderMpirun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary and runs mpirun")
	}
	mpirun, err := exec.LookPath("mpirun")
	if err != nil {
		t.Skip("mpirun not found (apt-get install -y openmpi-bin)")
	}
	if v, _ := exec.Command(mpirun, "--version").CombinedOutput(); !strings.Contains(string(v), "Open MPI") {
		t.Skipf("mpirun is not Open MPI's: %s", v)
	}
	hello := build(t, t.TempDir(), ".", "hello")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "4",
		"-x", "MASTER_ADDR=127.0.0.1", "-x", "MASTER_PORT="+strconv.Itoa(freePort(t)), "-x", "GOCOLL_SECRET=hello-test-secret",
		hello, "-barriers", "100")
	cmd.Env = append(os.Environ(), "OMPI_MCA_plm_rsh_agent=false") // one node: never ssh
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mpirun: %v\n%s", err, out)
	}
	checkOutput(t, string(out), 4, false)
}
