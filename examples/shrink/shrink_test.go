package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestShrinkUnderGocollrun builds shrink and gocollrun and runs the
// package documentation's command: rank 0 kills itself, and the three
// survivors Shrink and run the remaining 1000 steps, every result checked.
func TestShrinkUnderGocollrun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	dir := t.TempDir()
	shrink, run := build(t, dir, ".", "shrink"), build(t, dir, "../../cmd/gocollrun", "gocollrun")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, run, "-np", "4", "-on-failure=continue", "-timeout", "30s",
		shrink, "-steps", "1100", "-kill-rank", "0", "-kill-at", "100").CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 137 {
		t.Fatalf("gocollrun: %v, want exit status 137 (rank 0 killed by SIGKILL)\n%s", err, out)
	}
	for _, want := range []string{
		"[rank 0] rank 0: killing myself with SIGKILL before step 100",
		"gocollrun: 1 of 4 rank(s) failed: rank 0 (killed by signal killed); exiting 137",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for r := 1; r < 4; r++ {
		// A survivor may see the death one step early (the victim's last
		// sends cut off in flight): then every survivor runs that step
		// again after the Shrink.
		prefix := fmt.Sprintf("[rank %d] rank %d: done: 1100 steps; allreduces checked: ", r, r)
		i := strings.Index(string(out), prefix)
		if i < 0 {
			t.Errorf("rank %d printed no summary:\n%s", r, out)
			continue
		}
		line, _, _ := strings.Cut(string(out[i+len(prefix):]), "\n")
		var before, after, redone int
		_, err := fmt.Sscanf(line, "%d on 4 ranks, then %d on 3 ranks; %d step(s) run again; 1 shrink(s)", &before, &after, &redone)
		if err != nil || before < 99 || before > 100 || after < 1000 || before+after-redone != 1100 ||
			!strings.HasSuffix(line, "3 of 4 ranks left: world ranks [1 2 3]") {
			t.Errorf("rank %d: summary %q (%v): want 99 or 100 allreduces on 4 ranks, then the rest of the 1100 steps "+
				"(at least 1000) on 3, ranks [1 2 3] left", r, line, err)
		}
	}
}

func build(t *testing.T, dir, pkg, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}
