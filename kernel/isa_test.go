package kernel

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestSetISA(t *testing.T) {
	old := Active()
	defer SetISA(old)
	for l := Generic; l <= Best(); l++ {
		if err := SetISA(l); err != nil || Active() != l {
			t.Errorf("SetISA(%s) = %v, Active() = %s", l, err, Active())
		}
	}
	if Best() < AVX512 {
		SetISA(Best())
		if err := SetISA(Best() + 1); err == nil || Active() != Best() {
			t.Errorf("SetISA(%s) on a CPU that lacks it: %v, Active() = %s", Best()+1, err, Active())
		}
	}
	if err := SetISA(NumISA); err == nil {
		t.Errorf("SetISA(%d): no error", NumISA)
	}
	for _, s := range []string{"generic", "avx2", "AVX512"} {
		if _, err := ParseISA(s); err != nil {
			t.Errorf("ParseISA(%q): %v", s, err)
		}
	}
	if _, err := ParseISA("sse9"); err == nil {
		t.Error(`ParseISA("sse9"): no error`)
	}
	if Best() != Detect() {
		t.Errorf("Best() = %s, Detect() = %s", Best(), Detect())
	}
}

// TestEnvISA runs this test binary again with GOCOLL_ISA set and checks
// what the child reports.
func TestEnvISA(t *testing.T) {
	if os.Getenv("KERNEL_TEST_ENV_CHILD") != "" {
		fmt.Printf("active=%s err=%v\n", Active(), CheckEnv())
		return
	}
	bad := "avx512"
	if Detect() == AVX512 {
		bad = "bogus"
	}
	cases := []struct{ env, want string }{
		{"generic", "active=generic err=<nil>"},
		{bad, "active=" + Detect().String() + " err=GOCOLL_ISA="},
		{"bogus", "active=" + Detect().String() + " err=GOCOLL_ISA=\"bogus\""},
	}
	// os.Executable, not os.Args[0]: the AVX-512 emulator starts the binary
	// by a path that is not valid inside its guest.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		cmd := exec.Command(self, "-test.run=^TestEnvISA$", "-test.count=1")
		cmd.Env = append(os.Environ(), "KERNEL_TEST_ENV_CHILD=1", EnvISA+"="+c.env)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child with %s=%s: %v\n%s", EnvISA, c.env, err, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("child with %s=%s printed %q, want it to contain %q", EnvISA, c.env, out, c.want)
		}
	}
}
