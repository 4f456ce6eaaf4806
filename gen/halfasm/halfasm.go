// Package halfasm emits package half's bulk conversions between float32
// and the two 16-bit float types with avo: AVX2 (+F16C) and AVX-512
// loops, and an AVX512_BF16 loop built on VCVTNE2PS2BF16.
//
// Unlike package asm's reduction kernels these depend on no spec: they are
// generated once, for gocoll's own half package, by `go generate .` at the
// repository root (cmd/halfasm), and gentool never writes them.
//
// Every function converts n elements from src to dst, where n is a whole
// number of its vectors (the Go caller converts the rest element by
// element), and computes exactly what half's element conversions compute:
//
//   - float32 to bfloat16 with the integer formula (add 0x7fff plus the
//     kept part's lowest bit, keep the top half), NaN kept with its top
//     payload and the quiet bit set;
//   - bfloat16 to float32 by a shift;
//   - float16 both ways with F16C's VCVTPS2PH (rounding immediate 0: to
//     nearest even) and VCVTPH2PS, which half's element conversions
//     mirror, NaNs included.
//
// VCVTNE2PS2BF16 computes the integer formula too, but it reads float32
// subnormals as zero. The AVX512_BF16 loop therefore checks each block of
// 32 inputs for subnormals (VFPCLASSPS) and stops before a block that has
// any, returning how many elements it converted; its caller converts that
// block another way and calls it again.
package halfasm

import (
	"errors"
	"fmt"
	"go/format"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"strings"

	"github.com/mmcloughlin/avo/attr"
	"github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/gotypes"
	"github.com/mmcloughlin/avo/ir"
	"github.com/mmcloughlin/avo/operand"
	"github.com/mmcloughlin/avo/pass"
	"github.com/mmcloughlin/avo/printer"
	"github.com/mmcloughlin/avo/reg"
)

// Generator names the program in the "Code generated" headers.
const Generator = "halfasm (gen/halfasm)"

// Files Generate writes into package half's directory.
const (
	AsmFile  = "bulk_amd64.s"
	StubFile = "bulk_asm_amd64.go"
)

// isa is one instruction-set level's vector width.
type isa struct {
	name   string // identifier part, as kernel.ISA's constants spell it
	bytes  int    // vector register bytes
	avx512 bool
}

var (
	avx2   = isa{name: "AVX2", bytes: 32}
	avx512 = isa{name: "AVX512", bytes: 64, avx512: true}
)

// conv is one direction of conversion, at one level.
type conv struct {
	fn       string // assembly function name
	doc      string // what it does, for its doc comment
	isa      isa
	in, out  int  // bytes per element read and written
	per      int  // elements one step converts
	unroll   int  // steps per iteration of the main loop
	rounding bool // uses the bfloat16 rounding constants
	step     func(g *gen, src, dst operand.Mem)
}

// gen emits one function's body.
type gen struct {
	c   *build.Context
	isa isa
	// The bfloat16 rounding constants, made once per function.
	one, bias, quiet reg.VecVirtual
	labels           int
	// later are out-of-line blocks a step branches to, emitted after its
	// loop; each jumps back into the loop.
	later []func()
}

func (g *gen) vec() reg.VecVirtual {
	if g.isa.avx512 {
		return g.c.ZMM()
	}
	return g.c.YMM()
}

func (g *gen) broadcast32(v uint32) reg.VecVirtual {
	c := g.c
	r := g.vec()
	x := c.XMM()
	t := c.GP32()
	c.MOVL(operand.U32(v), t)
	c.VMOVD(t, x)
	c.VPBROADCASTD(x, r)
	return r
}

// roundBF16 rounds the float32 lanes of x to bfloat16, leaving each result
// in the low 16 bits of its lane: the integer formula, and for NaN the top
// half with the quiet bit.
func (g *gen) roundBF16(x reg.VecVirtual) reg.VecVirtual {
	c := g.c
	s, t := g.roundFormula(x)
	if g.isa.avx512 {
		m := c.K()
		c.VCMPPS(operand.Imm(3), x, x, m) // unordered with itself: NaN
		c.VPORD(g.quiet, s, m, t)         // NaN lanes: (b >> 16) | 0x40
		return t
	}
	l := g.vec()
	c.VCMPPS(operand.Imm(3), x, x, l) // NaN lanes, all ones
	c.VPOR(g.quiet, s, s)
	c.VPBLENDVB(l, s, t, t) // NaN ? (b >> 16) | 0x40 : rounded
	return t
}

// roundFormula applies the integer formula to every lane of x, right for
// all but NaN: it returns b >> 16 and the rounded top half.
func (g *gen) roundFormula(x reg.VecVirtual) (s, t reg.VecVirtual) {
	c := g.c
	s, l := g.vec(), g.vec()
	t = g.vec()
	c.VPSRLD(operand.Imm(16), x, s) // b >> 16
	if g.isa.avx512 {
		c.VPANDD(g.one, s, l)
	} else {
		c.VPAND(g.one, s, l)
	}
	c.VPADDD(g.bias, x, t)          // b + 0x7fff
	c.VPADDD(l, t, t)               // + lowest kept bit
	c.VPSRLD(operand.Imm(16), t, t) // top half
	return s, t
}

// label returns a label unique in the function, starting with prefix.
func (g *gen) label(prefix string) string {
	g.labels++
	return fmt.Sprintf("%s%d", prefix, g.labels)
}

// packBF16 stores the rounded lanes of lo and hi (16 elements, in the low
// 16 bits of each lane) to dst in order.
func (g *gen) packBF16(lo, hi reg.VecVirtual, dst operand.Mem) {
	c := g.c
	// The pack works within 128-bit lanes, giving the quadwords of
	// elements 0-3, 8-11, 4-7, 12-15; VPERMQ puts them in order. Rounded
	// lanes are below 1<<16: the pack is exact.
	c.VPACKUSDW(hi, lo, lo)
	c.VPERMQ(operand.Imm(0xd8), lo, lo)
	c.VMOVDQU(lo, dst)
}

// convs are the functions Generate emits, in the order they appear.
var convs = []conv{
	{
		fn: "bf16FromF32AVX2", doc: "rounds float32 to bfloat16 with AVX2", isa: avx2,
		in: 4, out: 2, per: 16, unroll: 2, rounding: true,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			lo, hi := g.vec(), g.vec()
			c.VMOVDQU(src, lo)
			c.VMOVDQU(src.Offset(32), hi)
			// NaNs are rare: one compare finds any among the 16 inputs,
			// and only then do the lanes take the blend that fixes them.
			m := g.vec()
			c.VCMPPS(operand.Imm(3), hi, lo, m) // unordered: a NaN in lo or hi
			c.VPTEST(m, m)
			nan, join := g.label("nan"), g.label("stored")
			c.JNZ(operand.LabelRef(nan))
			_, rl := g.roundFormula(lo)
			_, rh := g.roundFormula(hi)
			g.packBF16(rl, rh, dst)
			c.Label(join)
			g.later = append(g.later, func() {
				c.Label(nan)
				g.packBF16(g.roundBF16(lo), g.roundBF16(hi), dst)
				c.JMP(operand.LabelRef(join))
			})
		},
	},
	{
		fn: "f32FromBF16AVX2", doc: "widens bfloat16 to float32 with AVX2", isa: avx2,
		in: 2, out: 4, per: 8, unroll: 4,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			r := g.vec()
			c.VPMOVZXWD(src, r)
			c.VPSLLD(operand.Imm(16), r, r)
			c.VMOVDQU(r, dst)
		},
	},
	{
		fn: "f16FromF32AVX2", doc: "rounds float32 to float16 with F16C", isa: avx2,
		in: 4, out: 2, per: 8, unroll: 4,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			r := g.vec()
			c.VMOVUPS(src, r)
			c.VCVTPS2PH(operand.Imm(0), r, dst) // round to nearest even
		},
	},
	{
		fn: "f32FromF16AVX2", doc: "widens float16 to float32 with F16C", isa: avx2,
		in: 2, out: 4, per: 8, unroll: 4,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			r := g.vec()
			c.VCVTPH2PS(src, r)
			c.VMOVUPS(r, dst)
		},
	},
	{
		fn: "bf16FromF32AVX512", doc: "rounds float32 to bfloat16 with AVX-512", isa: avx512,
		in: 4, out: 2, per: 16, unroll: 4, rounding: true,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			x := g.vec()
			c.VMOVDQU32(src, x)
			r := g.roundBF16(x)
			c.VPMOVDW(r, dst) // lanes are below 1<<16: truncation is exact
		},
	},
	{
		fn: "f32FromBF16AVX512", doc: "widens bfloat16 to float32 with AVX-512", isa: avx512,
		in: 2, out: 4, per: 16, unroll: 4,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			r := g.vec()
			c.VPMOVZXWD(src, r)
			c.VPSLLD(operand.Imm(16), r, r)
			c.VMOVDQU32(r, dst)
		},
	},
	{
		fn: "f16FromF32AVX512", doc: "rounds float32 to float16 with AVX-512", isa: avx512,
		in: 4, out: 2, per: 16, unroll: 4,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			r := g.vec()
			c.VMOVUPS(src, r)
			c.VCVTPS2PH(operand.Imm(0), r, dst) // round to nearest even
		},
	},
	{
		fn: "f32FromF16AVX512", doc: "widens float16 to float32 with AVX-512", isa: avx512,
		in: 2, out: 4, per: 16, unroll: 4,
		step: func(g *gen, src, dst operand.Mem) {
			c := g.c
			r := g.vec()
			c.VCVTPH2PS(src, r)
			c.VMOVUPS(r, dst)
		},
	},
}

// BF16Func is the AVX512_BF16 loop's name, and BF16Block the elements it
// converts per step.
const (
	BF16Func  = "bf16FromF32AVX512BF16"
	BF16Block = 32
)

// Assembly returns the Go assembly of every conversion, for package pkg.
func Assembly(pkg string) ([]byte, error) {
	ctx := build.NewContext()
	ctx.ConstraintExpr("!purego")
	for _, cv := range convs {
		ctx.Function(cv.fn)
		ctx.Attributes(attr.NOSPLIT)
		ctx.Signature(signature(false))
		ctx.Doc(fmt.Sprintf("%s %s: n elements, a multiple of %d.", cv.fn, cv.doc, cv.per))
		emitLoop(ctx, cv)
	}
	ctx.Function(BF16Func)
	ctx.Attributes(attr.NOSPLIT)
	ctx.Signature(signature(true))
	ctx.Doc(fmt.Sprintf("%s rounds float32 to bfloat16 with AVX512_BF16's VCVTNE2PS2BF16: up to n", BF16Func),
		fmt.Sprintf("elements (a multiple of %d), stopping before the first block of %d that holds", BF16Block, BF16Block),
		"a subnormal. It returns how many it converted.")
	emitBF16(ctx)

	f, err := ctx.Result()
	if err != nil {
		return nil, fmt.Errorf("halfasm: build: %w", err)
	}
	if err := pass.Compile.Execute(f); err != nil {
		return nil, fmt.Errorf("halfasm: compile: %w", err)
	}
	if err := checkVEX(f); err != nil {
		return nil, err
	}
	src, err := printer.NewGoAsm(printer.Config{Name: Generator, Pkg: pkg}).Print(f)
	if err != nil {
		return nil, fmt.Errorf("halfasm: print: %w", err)
	}
	return src, nil
}

// signature is func(dst, src unsafe.Pointer, n int), with an int result
// when done.
func signature(done bool) *gotypes.Signature {
	up := types.Typ[types.UnsafePointer]
	params := types.NewTuple(
		types.NewVar(token.NoPos, nil, "dst", up),
		types.NewVar(token.NoPos, nil, "src", up),
		types.NewVar(token.NoPos, nil, "n", types.Typ[types.Int]),
	)
	var results *types.Tuple
	if done {
		results = types.NewTuple(types.NewVar(token.NoPos, nil, "done", types.Typ[types.Int]))
	}
	return gotypes.NewSignature(nil, types.NewSignatureType(nil, nil, nil, params, results, false))
}

// emitLoop emits cv's body: unrolled steps while they fit, then single
// steps until n is used up.
func emitLoop(ctx *build.Context, cv conv) {
	g := &gen{c: ctx, isa: cv.isa}
	dst, src, n := ctx.GP64(), ctx.GP64(), ctx.GP64()
	ctx.MOVQ(operand.NewParamAddr("dst", 0), dst)
	ctx.MOVQ(operand.NewParamAddr("src", 8), src)
	ctx.MOVQ(operand.NewParamAddr("n", 16), n)
	if cv.rounding {
		g.one = g.broadcast32(1)
		g.bias = g.broadcast32(0x7fff)
		g.quiet = g.broadcast32(0x40)
	}
	loop := func(label string, steps int, next string) {
		elems := steps * cv.per
		ctx.Label(label)
		ctx.CMPQ(n, operand.U32(elems))
		ctx.JB(operand.LabelRef(next))
		for i := range steps {
			cv.step(g, operand.Mem{Base: src, Disp: i * cv.per * cv.in}, operand.Mem{Base: dst, Disp: i * cv.per * cv.out})
		}
		ctx.ADDQ(operand.U32(elems*cv.in), src)
		ctx.ADDQ(operand.U32(elems*cv.out), dst)
		ctx.SUBQ(operand.U32(elems), n)
		ctx.JMP(operand.LabelRef(label))
		for _, f := range g.later {
			f()
		}
		g.later = nil
	}
	if cv.unroll > 1 {
		loop("block", cv.unroll, "single")
	}
	loop("single", 1, "done")
	ctx.Label("done")
	ctx.VZEROUPPER()
	ctx.RET()
}

// emitBF16 emits the AVX512_BF16 loop. It names physical registers: the
// VCVTNE2PS2BF16 it emits as bytes (Go's assembler has no mnemonic for
// it) encodes them, and avo cannot see which registers raw bytes use.
func emitBF16(ctx *build.Context) {
	dst, src, n, done := reg.RDI, reg.RSI, reg.RCX, reg.RAX
	lo, hi, out := reg.Z0, reg.Z1, reg.Z2
	ctx.MOVQ(operand.NewParamAddr("dst", 0), dst)
	ctx.MOVQ(operand.NewParamAddr("src", 8), src)
	ctx.MOVQ(operand.NewParamAddr("n", 16), n)
	ctx.XORQ(done, done)
	ctx.Label("loop")
	ctx.CMPQ(n, operand.U32(BF16Block))
	ctx.JB(operand.LabelRef("done"))
	ctx.VMOVUPS(operand.Mem{Base: src}, lo)
	ctx.VMOVUPS(operand.Mem{Base: src, Disp: 64}, hi)
	ctx.Comment("VCVTNE2PS2BF16 reads subnormals as zero, unlike the integer formula:",
		"leave a block that has any to the caller.")
	ctx.VFPCLASSPSZ(operand.Imm(fpclassSubnormal), lo, reg.K1)
	ctx.VFPCLASSPSZ(operand.Imm(fpclassSubnormal), hi, reg.K2)
	ctx.KORTESTW(reg.K1, reg.K2)
	ctx.JNZ(operand.LabelRef("done"))
	enc, err := VCVTNE2PS2BF16(int(out.PhysicalIndex()), int(hi.PhysicalIndex()), int(lo.PhysicalIndex()))
	if err != nil {
		panic(err) // fixed registers below 32: cannot fail
	}
	ctx.Comment(fmt.Sprintf("VCVTNE2PS2BF16 %s, %s, %s in Go's operand order (Intel's: vcvtne2ps2bf16 zmm%d, zmm%d, zmm%d):",
		lo.Asm(), hi.Asm(), out.Asm(), out.PhysicalIndex(), hi.PhysicalIndex(), lo.PhysicalIndex()),
		fmt.Sprintf("%s = the bfloat16 of %s's 16 floats, then of %s's.", out.Asm(), lo.Asm(), hi.Asm()))
	for _, b := range enc {
		ctx.Instruction(&ir.Instruction{Opcode: "BYTE", Operands: []operand.Op{operand.U8(b)}})
	}
	ctx.VMOVDQU16(out, operand.Mem{Base: dst})
	ctx.ADDQ(operand.U32(BF16Block*4), src)
	ctx.ADDQ(operand.U32(BF16Block*2), dst)
	ctx.ADDQ(operand.U32(BF16Block), done)
	ctx.SUBQ(operand.U32(BF16Block), n)
	ctx.JMP(operand.LabelRef("loop"))
	ctx.Label("done")
	ctx.MOVQ(done, operand.NewParamAddr("done", 24))
	ctx.VZEROUPPER()
	ctx.RET()
}

// fpclassSubnormal is VFPCLASSPS's category bit for denormal inputs.
const fpclassSubnormal = 0x20

// VCVTNE2PS2BF16 returns the EVEX encoding of
//
//	VCVTNE2PS2BF16 zmm<dst>, zmm<src1>, zmm<src2>   (Intel operand order)
//
// EVEX.512.F2.0F38.W0 72 /r, without masking: zmm<dst> gets the bfloat16
// of src2's 16 floats in its low half and src1's in its high half. src1 is
// EVEX.vvvv (with V'), dst is ModRM.reg (with R and R'), src2 is ModRM.rm
// (with B for bit 3 and, for a register there, X for bit 4). EVEX stores
// R, X, B, R', vvvv and V' inverted.
func VCVTNE2PS2BF16(dst, src1, src2 int) ([]byte, error) {
	for _, r := range []int{dst, src1, src2} {
		if r < 0 || r > 31 {
			return nil, fmt.Errorf("halfasm: no register zmm%d", r)
		}
	}
	inv := func(v, bit int) byte { return byte((^v >> bit) & 1) }
	// P0: R X B R' 0 m m m, with map 0F38 = 010.
	p0 := inv(dst, 3)<<7 | inv(src2, 4)<<6 | inv(src2, 3)<<5 | inv(dst, 4)<<4 | 0b010
	// P1: W vvvv 1 pp, with W0 and pp F2 = 11.
	p1 := byte(0)<<7 | byte(^src1&0xf)<<3 | 1<<2 | 0b11
	// P2: z L'L b V' aaa, with 512-bit vectors (L'L = 10), no mask.
	p2 := byte(0b10)<<5 | inv(src1, 4)<<3
	modrm := byte(0b11)<<6 | byte(dst&7)<<3 | byte(src2&7)
	return []byte{0x62, p0, p1, p2, 0x72, modrm}, nil
}

// checkVEX makes sure no AVX2 function got a vector register above 15:
// those need EVEX encodings, which AVX2-only CPUs lack.
func checkVEX(f *ir.File) error {
	for _, fn := range f.Functions() {
		if !strings.Contains(fn.Name, "AVX2") {
			continue
		}
		for _, i := range fn.Instructions() {
			for _, r := range i.Registers() {
				p := reg.ToPhysical(r)
				if p != nil && p.Kind() == reg.KindVector && p.PhysicalIndex() >= 16 {
					return fmt.Errorf("halfasm: %s: needs more than 16 vector registers (%s in %s); lower its unroll", fn.Name, p.Asm(), i.Opcode)
				}
			}
		}
	}
	return nil
}

// Stubs is the Go file declaring the assembly functions, for package pkg.
func Stubs(pkg string) ([]byte, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "// Code generated by %s. DO NOT EDIT.\n\n", Generator)
	b.WriteString("//go:build amd64 && !purego\n\n")
	fmt.Fprintf(&b, "package %s\n\nimport \"unsafe\"\n\n", pkg)
	for _, cv := range convs {
		fmt.Fprintf(&b, "// %s %s: n elements, a multiple of %d.\n", cv.fn, cv.doc, cv.per)
		fmt.Fprintf(&b, "//\n//go:noescape\nfunc %s(dst, src unsafe.Pointer, n int)\n\n", cv.fn)
	}
	fmt.Fprintf(&b, "// %s rounds float32 to bfloat16 with AVX512_BF16's VCVTNE2PS2BF16: up\n", BF16Func)
	fmt.Fprintf(&b, "// to n elements (a multiple of %d), stopping before the first block of %d\n", BF16Block, BF16Block)
	b.WriteString("// that holds a subnormal. It returns how many it converted.\n")
	fmt.Fprintf(&b, "//\n//go:noescape\nfunc %s(dst, src unsafe.Pointer, n int) (done int)\n", BF16Func)
	src, err := format.Source([]byte(b.String()))
	if err != nil {
		return nil, fmt.Errorf("halfasm: format %s: %w", StubFile, err)
	}
	return src, nil
}

// Generate writes AsmFile and StubFile into dir, package half's
// directory, rewriting them only when their contents change.
func Generate(dir string) error {
	pkg := filepath.Base(dir)
	if abs, err := filepath.Abs(dir); err == nil {
		pkg = filepath.Base(abs)
	}
	if !token.IsIdentifier(pkg) {
		return fmt.Errorf("halfasm: %s: not a Go package directory name", dir)
	}
	asmSrc, err := Assembly(pkg)
	if err != nil {
		return err
	}
	stubSrc, err := Stubs(pkg)
	if err != nil {
		return err
	}
	for name, src := range map[string][]byte{AsmFile: asmSrc, StubFile: stubSrc} {
		path := filepath.Join(dir, name)
		if old, err := os.ReadFile(path); err == nil && string(old) == string(src) {
			continue
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("halfasm: %w", err)
		}
		if err := os.WriteFile(path, src, 0o644); err != nil {
			return fmt.Errorf("halfasm: %w", err)
		}
	}
	return nil
}
