//go:build !purego

package half

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVCVTNE2PS2BF16Bytes disassembles this test binary's AVX512_BF16 loop
// with GNU objdump: the bytes bulk_amd64.s spells out must decode as the
// instruction, on the registers the loop loads and stores, on every
// machine, not only where the CPU can run them.
func TestVCVTNE2PS2BF16Bytes(t *testing.T) {
	if testing.Short() {
		t.Skip("links a test binary: not in -short")
	}
	objdump, err := exec.LookPath("objdump")
	if err != nil {
		t.Skip("no GNU objdump on PATH (Debian: binutils)")
	}
	gocmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to link a binary with symbols")
	}
	// go test links its binaries without a symbol table: link one with.
	bin := filepath.Join(t.TempDir(), "half.test")
	if out, err := exec.Command(gocmd, "test", "-c", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	sym := "github.com/gocoll/gocoll/half.bf16FromF32AVX512BF16.abi0"
	out, err := exec.Command(objdump, "-d", "--disassemble="+sym, bin).Output()
	if err != nil {
		t.Skipf("objdump -d --disassemble: %v", err)
	}
	text := string(out)
	if !strings.Contains(text, "<"+sym+">:") {
		t.Fatalf("objdump did not find %s in the test binary:\n%s", sym, text)
	}
	if strings.Contains(text, "(bad)") {
		t.Fatalf("objdump cannot decode part of %s:\n%s", sym, text)
	}
	const want = "vcvtne2ps2bf16 %zmm0,%zmm1,%zmm2" // zmm2 = bf16(zmm0) below bf16(zmm1)
	if !strings.Contains(text, want) {
		t.Fatalf("%s has no %q:\n%s", sym, want, text)
	}
	// The loads into zmm0/zmm1 and the store from zmm2 bracket it.
	for _, w := range []string{"(%rsi),%zmm0", "0x40(%rsi),%zmm1", "%zmm2,(%rdi)"} {
		if !strings.Contains(text, w) {
			t.Errorf("%s has no operand %q:\n%s", sym, w, text)
		}
	}
}
