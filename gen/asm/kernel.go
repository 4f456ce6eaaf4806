package asm

import (
	"fmt"
	"math/bits"

	"github.com/mmcloughlin/avo/attr"
	"github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/operand"
	"github.com/mmcloughlin/avo/reg"
)

// isaInfo describes one target instruction set.
type isaInfo struct {
	name   string // identifier part and the kernel.ISA constant: "AVX2", "AVX512"
	width  int    // vector register bytes
	avx512 bool
	accs   int // accumulator registers per unrolled block (memory bandwidth needs a few in flight)
}

// isas are the targets, in the order their kernels appear in the output.
var isas = []isaInfo{
	{name: "AVX2", width: 32, accs: 4},
	{name: "AVX512", width: 64, avx512: true, accs: 4},
}

// class is how a dtype's elements are combined.
type class int

const (
	clsFloat class = iota // float32 or float64 lanes as stored
	clsBF16               // bfloat16: widened to float32 by a shift, rounded back with integer ops
	clsF16                // float16: widened and rounded by F16C's VCVTPH2PS/VCVTPS2PH
	clsInt                // two's complement, signed order
	clsUint               // two's complement, unsigned order
)

// kindInfo describes one element type the generator knows.
type kindInfo struct {
	name string
	size int // bytes per element in memory
	cls  class
	lane int // bytes per float lane: complex64's elements are two float32 lanes
}

// kinds are the element types with assembly kernels, by their Go type as
// a spec's go: names it.
var kinds = map[string]kindInfo{
	"float32":   {"float32", 4, clsFloat, 4},
	"float64":   {"float64", 8, clsFloat, 8},
	"BFloat16":  {"bfloat16", 2, clsBF16, 4},
	"Float16":   {"float16", 2, clsF16, 4},
	"int8":      {"int8", 1, clsInt, 0},
	"uint8":     {"uint8", 1, clsUint, 0},
	"int32":     {"int32", 4, clsInt, 0},
	"uint32":    {"uint32", 4, clsUint, 0},
	"int64":     {"int64", 8, clsInt, 0},
	"uint64":    {"uint64", 8, clsUint, 0},
	"complex64": {"complex64", 8, clsFloat, 4},
}

// signAgnostic reports whether op computes the same bits on signed and
// unsigned two's-complement integers of one width: all but min and max.
func signAgnostic(op string) bool { return op != "min" && op != "max" }

// kernelKind is the kind a kernel for k and op is emitted for, and the
// name part of its symbol. Signed and unsigned integers of one width share
// one kernel for the sign-agnostic ops: emitted for that width's integers,
// their code is byte for byte the same.
func kernelKind(k kindInfo, op string) (kindInfo, string) {
	if (k.cls == clsInt || k.cls == clsUint) && signAgnostic(op) {
		bits := 8 * k.size
		return kindInfo{name: fmt.Sprintf("%d-bit integer", bits), size: k.size, cls: clsInt}, fmt.Sprintf("I%d", bits)
	}
	return k, exported(k.name)
}

// kernel emits one reduce function. A "group" is the memory one raw vector
// covers; it widens into nacc accumulator registers (2 for bfloat16, whose
// 16 elements per YMM become two YMMs of float32).
type kernel struct {
	c    *build.Context
	isa  isaInfo
	kind kindInfo
	op   string

	memBytes int          // bytes of memory per group
	nacc     int          // accumulators per group
	groups   int          // groups per unrolled block
	labels   int          // counter for unique labels
	buf      *operand.Mem // the AVX2 bounce buffer, once allocated

	// Constants made in the prologue, only where the op needs them.
	zero, one, bias, quiet, lowBytes, sign reg.VecVirtual
}

func newKernel(c *build.Context, isa isaInfo, kind kindInfo, op string) *kernel {
	k := &kernel{c: c, isa: isa, kind: kind, op: op, memBytes: isa.width, nacc: 1}
	switch kind.cls {
	case clsBF16:
		k.nacc = 2
	case clsF16:
		k.memBytes = isa.width / 2
	}
	k.groups = max(1, isa.accs/k.nacc)
	return k
}

// vec is a new accumulator-width vector register.
func (k *kernel) vec() reg.VecVirtual {
	if k.isa.avx512 {
		return k.c.ZMM()
	}
	return k.c.YMM()
}

// raw is a new vector register as wide as one group of memory.
func (k *kernel) raw() reg.VecVirtual {
	switch k.memBytes {
	case 16:
		return k.c.XMM()
	case 32:
		return k.c.YMM()
	}
	return k.c.ZMM()
}

func (k *kernel) label(prefix string) string {
	k.labels++
	return fmt.Sprintf("%s%d", prefix, k.labels)
}

// emit writes the whole function body.
func (k *kernel) emit() {
	c := k.c
	dst, srcs, nsrc, nb, off := c.GP64(), c.GP64(), c.GP64(), c.GP64(), c.GP64()
	c.MOVQ(operand.NewParamAddr("dst", 0), dst)
	c.MOVQ(operand.NewParamAddr("srcs", 8), srcs)
	c.MOVQ(operand.NewParamAddr("nsrc", 16), nsrc)
	c.MOVQ(operand.NewParamAddr("n", 24), nb)
	if sh := bits.TrailingZeros(uint(k.kind.size)); sh > 0 {
		c.SHLQ(operand.Imm(uint64(sh)), nb) // elements -> bytes
	}
	c.XORQ(off, off)
	k.constants()

	accs := make([][]reg.VecVirtual, k.groups)
	for j := range accs {
		for range k.nacc {
			accs[j] = append(accs[j], k.vec())
		}
	}
	loop := func(name string, groups int, next string, nt bool) {
		size := groups * k.memBytes
		c.Label(name)
		c.CMPQ(nb, operand.U32(size))
		c.JB(operand.LabelRef(next))
		k.body(accs[:groups], dst, srcs, nsrc, off, name, nt)
		c.ADDQ(operand.U32(size), off)
		c.SUBQ(operand.U32(size), nb)
		c.JMP(operand.LabelRef(name))
	}
	first := "vector"
	if k.groups > 1 {
		first = "block"
	}

	c.Comment(fmt.Sprintf("Inputs of %d bytes or more: align dst, then store blocks with", ntMin),
		"non-temporal stores, which save the read-for-ownership of dst and keep",
		"the inputs in cache; what remains goes through the loops below.")
	c.CMPQ(nb, operand.U32(ntMin))
	c.JB(operand.LabelRef(first))
	if k.kind.size > 1 {
		c.TESTQ(operand.U32(k.kind.size-1), dst)
		c.JNZ(operand.LabelRef(first)) // not even element-aligned: no alignment is reachable
	}
	head := c.GP64()
	c.MOVQ(dst, head)
	c.NEGQ(head)
	c.ANDQ(operand.U32(k.memBytes-1), head)
	c.JZ(operand.LabelRef("stream"))
	k.partial(accs[0], dst, srcs, nsrc, head, off, "head")
	c.ADDQ(head, off)
	c.SUBQ(head, nb)
	loop("stream", k.groups, "streamDone", true)
	c.Label("streamDone")
	c.SFENCE()

	c.Comment(fmt.Sprintf("Blocks of %d bytes per input, then single vectors, then the tail.", k.groups*k.memBytes))
	if k.groups > 1 {
		loop("block", k.groups, "vector", false)
	}
	loop("vector", 1, "tail", false)
	c.Label("tail")
	c.TESTQ(nb, nb)
	c.JZ(operand.LabelRef("done"))
	k.partial(accs[0], dst, srcs, nsrc, nb, off, "tail")
	c.Label("done")
	c.VZEROUPPER()
	c.RET()
}

// partial reduces cnt < memBytes bytes (a whole number of elements) at
// byte offset off without touching memory outside them.
func (k *kernel) partial(accs []reg.VecVirtual, dst, srcs, nsrc, cnt, off reg.GPVirtual, name string) {
	switch {
	case k.isa.avx512:
		k.tailMasked512(accs, dst, srcs, nsrc, cnt, off, name)
	case k.kind.size >= 4:
		k.tailMaskedAVX2(accs, dst, srcs, nsrc, cnt, off, name)
	default:
		k.tailBounce(accs, dst, srcs, nsrc, cnt, off, name)
	}
}

// ntMin is the input size in bytes from which kernels stream dst with
// non-temporal stores (Go's memmove switches at about the same size).
const ntMin = 1 << 20

// body reduces len(accs) groups at byte offset off: the first input loads,
// every further input folds in, left to right, then the result is stored
// (non-temporally if nt, to a dst aligned to memBytes).
func (k *kernel) body(accs [][]reg.VecVirtual, dst, srcs, nsrc, off reg.GPVirtual, name string, nt bool) {
	c := k.c
	ptr, it, cnt := c.GP64(), c.GP64(), c.GP64()
	at := func(base reg.Register, j int) operand.Mem {
		return operand.Mem{Base: base, Index: off, Scale: 1, Disp: j * k.memBytes}
	}
	c.MOVQ(operand.Mem{Base: srcs}, ptr)
	for j, a := range accs {
		k.first(at(ptr, j), a)
	}
	c.MOVQ(nsrc, cnt)
	c.DECQ(cnt)
	c.JZ(operand.LabelRef(name + "Store"))
	c.LEAQ(operand.Mem{Base: srcs, Disp: 8}, it)
	c.Label(name + "Src")
	c.MOVQ(operand.Mem{Base: it}, ptr)
	for j, a := range accs {
		k.fold(at(ptr, j), a)
	}
	c.ADDQ(operand.Imm(8), it)
	c.DECQ(cnt)
	c.JNZ(operand.LabelRef(name + "Src"))
	c.Label(name + "Store")
	for j, a := range accs {
		if nt {
			c.VMOVNTPS(k.narrow(a), at(dst, j))
		} else {
			k.movu(k.narrow(a), at(dst, j))
		}
	}
}

// movu is an unaligned full-width move.
func (k *kernel) movu(src, dst operand.Op) {
	k.c.VMOVUPS(src, dst)
}

// constants makes the vector constants the op needs.
func (k *kernel) constants() {
	if k.kind.cls == clsBF16 {
		k.zero = k.vec()
		k.xor(k.zero, k.zero, k.zero)
		k.one = k.broadcast32(1)
		k.bias = k.broadcast32(0x7fff)
		k.quiet = k.broadcast32(0x40)
	}
	if k.op == "prod" && k.kind.size == 1 {
		k.lowBytes = k.broadcast32(0x00ff00ff)
	}
	if !k.isa.avx512 && k.kind.cls == clsUint && k.kind.size == 8 && (k.op == "min" || k.op == "max") {
		k.sign = k.broadcast64(1 << 63)
	}
}

func (k *kernel) broadcast32(v uint32) reg.VecVirtual {
	c := k.c
	g := c.GP32()
	c.MOVL(operand.U32(v), g)
	r := k.vec()
	if k.isa.avx512 {
		c.VPBROADCASTD(g, r)
		return r
	}
	x := c.XMM()
	c.VMOVD(g, x)
	c.VPBROADCASTD(x, r)
	return r
}

func (k *kernel) broadcast64(v uint64) reg.VecVirtual {
	c := k.c
	g := c.GP64()
	c.MOVQ(operand.U64(v), g)
	r := k.vec()
	if k.isa.avx512 {
		c.VPBROADCASTQ(g, r)
		return r
	}
	x := c.XMM()
	c.VMOVQ(g, x)
	c.VPBROADCASTQ(x, r)
	return r
}

// Bitwise helpers in Go operand order (src2, src1, dst).
func (k *kernel) and(a, b, d operand.Op) {
	if k.isa.avx512 {
		k.c.VPANDQ(a, b, d)
	} else {
		k.c.VPAND(a, b, d)
	}
}

func (k *kernel) or(a, b, d operand.Op) {
	if k.isa.avx512 {
		k.c.VPORQ(a, b, d)
	} else {
		k.c.VPOR(a, b, d)
	}
}

func (k *kernel) xor(a, b, d operand.Op) {
	if k.isa.avx512 {
		k.c.VPXORQ(a, b, d)
	} else {
		k.c.VPXOR(a, b, d)
	}
}

// andn is d = ^b & a (VPANDN's Go operand order: src2, src1, dst).
func (k *kernel) andn(a, b, d operand.Op) {
	if k.isa.avx512 {
		k.c.VPANDNQ(a, b, d)
	} else {
		k.c.VPANDN(a, b, d)
	}
}

// first loads one group from src (memory or a raw register) into accs,
// widened.
func (k *kernel) first(src operand.Op, accs []reg.VecVirtual) {
	c := k.c
	switch k.kind.cls {
	case clsBF16:
		// Interleaving zero words below each bfloat16 gives its float32
		// bits. The unpacks work within 128-bit lanes, so the element order
		// is permuted; every input is permuted alike and narrow's in-lane
		// pack undoes it.
		c.VPUNPCKLWD(src, k.zero, accs[0])
		c.VPUNPCKHWD(src, k.zero, accs[1])
	case clsF16:
		c.VCVTPH2PS(src, accs[0])
	default:
		if src != operand.Op(accs[0]) {
			k.movu(src, accs[0])
		}
	}
}

// fold combines one group from src into accs: acc = acc op src.
func (k *kernel) fold(src operand.Op, accs []reg.VecVirtual) {
	switch k.kind.cls {
	case clsBF16, clsF16:
		ws := make([]reg.VecVirtual, len(accs))
		for i := range ws {
			ws[i] = k.vec()
		}
		k.first(src, ws)
		for i, a := range accs {
			k.apply(a, ws[i])
		}
	default:
		k.apply(accs[0], src)
	}
}

// narrow returns a raw-width register holding accs in memory format.
func (k *kernel) narrow(accs []reg.VecVirtual) reg.VecVirtual {
	c := k.c
	switch k.kind.cls {
	case clsBF16:
		lo, hi := k.roundBF16(accs[0]), k.roundBF16(accs[1])
		// Rounded values are below 1<<16, so the saturating pack is exact.
		c.VPACKUSDW(hi, lo, lo)
		return lo
	case clsF16:
		r := k.raw()
		c.VCVTPS2PH(operand.Imm(0), accs[0], r) // round to nearest even
		return r
	}
	return accs[0]
}

// roundBF16 rounds float32 lanes to bfloat16 (in the low 16 bits of each
// lane) with the contract's integer formula: NaN keeps its top bits and gets
// the quiet bit; anything else rounds to nearest even.
func (k *kernel) roundBF16(x reg.VecVirtual) reg.VecVirtual {
	c := k.c
	s, l, t := k.vec(), k.vec(), k.vec()
	c.VPSRLD(operand.Imm(16), x, s) // b >> 16
	k.and(k.one, s, l)              // (b >> 16) & 1
	c.VPADDD(k.bias, x, t)          // b + 0x7fff
	c.VPADDD(l, t, t)               // + lsb
	c.VPSRLD(operand.Imm(16), t, t) // >> 16
	if k.isa.avx512 {
		m := c.K()
		c.VCMPPS(operand.Imm(3), x, x, m) // NaN lanes
		c.VPORD(k.quiet, s, m, t)         // NaN: (b >> 16) | 0x40
		return t
	}
	c.VCMPPS(operand.Imm(3), x, x, l) // NaN lanes
	k.or(k.quiet, s, s)
	c.VPBLENDVB(l, s, t, t) // NaN ? (b >> 16) | 0x40 : rounded
	return t
}

// toReg returns b in a register the caller may overwrite.
func (k *kernel) toReg(b operand.Op) reg.VecVirtual {
	if r, ok := b.(reg.VecVirtual); ok {
		return r
	}
	r := k.vec()
	k.movu(b, r)
	return r
}

// float reports whether lanes are floating point and whether they are
// float64.
func (k *kernel) float() (isFloat, double bool) {
	switch k.kind.cls {
	case clsFloat:
		return true, k.kind.lane == 8
	case clsBF16, clsF16:
		return true, false
	}
	return false, false
}

// apply emits a = a op b for one accumulator; b is memory or a register the
// kernel may overwrite.
func (k *kernel) apply(a reg.VecVirtual, b operand.Op) {
	c := k.c
	isFloat, double := k.float()
	size := k.kind.size
	switch k.op {
	case "sum":
		switch {
		case isFloat && double:
			c.VADDPD(b, a, a)
		case isFloat:
			c.VADDPS(b, a, a)
		case size == 1:
			c.VPADDB(b, a, a)
		case size == 4:
			c.VPADDD(b, a, a)
		default:
			c.VPADDQ(b, a, a)
		}
	case "prod":
		switch {
		case isFloat && double:
			c.VMULPD(b, a, a)
		case isFloat:
			c.VMULPS(b, a, a)
		case size == 1:
			k.mul8(a, b)
		case size == 4:
			c.VPMULLD(b, a, a)
		case k.isa.avx512:
			c.VPMULLQ(b, a, a)
		default:
			k.mul64(a, b)
		}
	case "min", "max":
		if isFloat {
			k.fminmax(a, b, double)
		} else {
			k.iminmax(a, b)
		}
	case "band":
		k.and(b, a, a)
	case "bor":
		k.or(b, a, a)
	case "bxor":
		k.xor(b, a, a)
	default:
		panic("asm: no emitter for op " + k.op)
	}
}

// fminmax is the contract's float min/max:
//
//	min(a, b) = a<b ? a : b<a ? b : a==b ? bits(a)|bits(b) : a+b
//	max(a, b) = a>b ? a : b>a ? b : a==b ? bits(a)&bits(b) : a+b
//
// VMINPS(a, b) gives a<b ? a : b and VMINPS(b, a) gives b<a ? b : a; where
// neither is NaN, OR-ing (AND-ing for max) the two is exactly the rule (they
// agree unless a==b, where the OR makes -0 win). Unordered lanes take a+b,
// whose NaN is a's if a is NaN, as x86 (and Go on x86) adds.
func (k *kernel) fminmax(a reg.VecVirtual, b operand.Op, double bool) {
	c := k.c
	bv := k.toReg(b)
	isMin := k.op == "min"
	m1 := func(x, y, d operand.Op) { // d = y<x ? y : x (min) in Intel's src1=y, src2=x
		switch {
		case isMin && double:
			c.VMINPD(x, y, d)
		case isMin:
			c.VMINPS(x, y, d)
		case double:
			c.VMAXPD(x, y, d)
		default:
			c.VMAXPS(x, y, d)
		}
	}
	cmpUnord := func(d operand.Op) {
		if double {
			c.VCMPPD(operand.Imm(3), bv, a, d)
		} else {
			c.VCMPPS(operand.Imm(3), bv, a, d)
		}
	}
	add := func(ops ...operand.Op) {
		if double {
			c.VADDPD(ops...)
		} else {
			c.VADDPS(ops...)
		}
	}
	combine := func(x, y, d operand.Op) {
		if isMin {
			k.or(x, y, d)
		} else {
			k.and(x, y, d)
		}
	}
	t := k.vec()
	if k.isa.avx512 {
		u := c.K()
		t2 := k.vec()
		cmpUnord(u)
		m1(bv, a, t)  // a<b ? a : b
		m1(a, bv, t2) // b<a ? b : a
		combine(t2, t, t)
		add(bv, a, u, t) // unordered lanes: a+b
		k.movu(t, a)
		return
	}
	u, s := k.vec(), k.vec()
	cmpUnord(u)
	add(bv, a, s)
	m1(bv, a, t)
	m1(a, bv, bv)
	combine(t, bv, bv)
	if double {
		c.VBLENDVPD(u, s, bv, a)
	} else {
		c.VBLENDVPS(u, s, bv, a)
	}
}

// iminmax is integer min/max in the dtype's order.
func (k *kernel) iminmax(a reg.VecVirtual, b operand.Op) {
	c := k.c
	signed := k.kind.cls == clsInt
	isMin := k.op == "min"
	type four struct{ smin, smax, umin, umax func(...operand.Op) }
	var f four
	switch k.kind.size {
	case 1:
		f = four{c.VPMINSB, c.VPMAXSB, c.VPMINUB, c.VPMAXUB}
	case 4:
		f = four{c.VPMINSD, c.VPMAXSD, c.VPMINUD, c.VPMAXUD}
	default:
		if !k.isa.avx512 {
			k.minmax64(a, b, signed, isMin)
			return
		}
		f = four{c.VPMINSQ, c.VPMAXSQ, c.VPMINUQ, c.VPMAXUQ}
	}
	switch {
	case signed && isMin:
		f.smin(b, a, a)
	case signed:
		f.smax(b, a, a)
	case isMin:
		f.umin(b, a, a)
	default:
		f.umax(b, a, a)
	}
}

// minmax64 is AVX2's 64-bit min/max: VPCMPGTQ (on sign-flipped values for
// unsigned order) and a blend.
func (k *kernel) minmax64(a reg.VecVirtual, b operand.Op, signed, isMin bool) {
	c := k.c
	bv := k.toReg(b)
	x, y := operand.Op(a), operand.Op(bv)
	if !signed {
		xf, yf := k.vec(), k.vec()
		c.VPXOR(k.sign, a, xf)
		c.VPXOR(k.sign, bv, yf)
		x, y = xf, yf
	}
	m := k.vec()
	if isMin {
		c.VPCMPGTQ(y, x, m) // a > b: take b
	} else {
		c.VPCMPGTQ(x, y, m) // b > a: take b
	}
	c.VBLENDVPD(m, bv, a, a)
}

// mul8 multiplies bytes with 16-bit multiplies: the low byte of a 16-bit
// product depends only on the low bytes, so even bytes come from a*b and odd
// bytes from (a>>8)*(b&0xff00).
func (k *kernel) mul8(a reg.VecVirtual, b operand.Op) {
	c := k.c
	bv := k.toReg(b)
	ev, ah, bh := k.vec(), k.vec(), k.vec()
	c.VPMULLW(bv, a, ev)
	k.and(k.lowBytes, ev, ev)
	c.VPSRLW(operand.Imm(8), a, ah)
	k.andn(bv, k.lowBytes, bh)
	c.VPMULLW(bh, ah, ah)
	k.or(ev, ah, a)
}

// mul64 is AVX2's wrapping 64-bit multiply from 32x32->64 pieces:
// lo(a)*lo(b) + (hi(a)*lo(b) + lo(a)*hi(b)) << 32.
func (k *kernel) mul64(a reg.VecVirtual, b operand.Op) {
	c := k.c
	bv := k.toReg(b)
	ah, bh := k.vec(), k.vec()
	c.VPSRLQ(operand.Imm(32), a, ah)
	c.VPMULUDQ(bv, ah, ah)
	c.VPSRLQ(operand.Imm(32), bv, bh)
	c.VPMULUDQ(a, bh, bh)
	c.VPADDQ(bh, ah, ah)
	c.VPSLLQ(operand.Imm(32), ah, ah)
	c.VPMULUDQ(bv, a, a)
	c.VPADDQ(ah, a, a)
}

// tailLoop runs the load/fold/store sequence of one group through get (which
// yields the group of input ptr as an operand) and put (which stores the
// narrowed result).
func (k *kernel) tailLoop(accs []reg.VecVirtual, srcs, nsrc reg.GPVirtual, name string, get func(ptr reg.GPVirtual, into reg.VecVirtual) operand.Op, put func(r reg.VecVirtual)) {
	c := k.c
	ptr, it, cnt := c.GP64(), c.GP64(), c.GP64()
	c.MOVQ(operand.Mem{Base: srcs}, ptr)
	var into reg.VecVirtual // plain lanes load straight into the accumulator
	if k.nacc == 1 && k.memBytes == k.isa.width {
		into = accs[0]
	}
	k.first(get(ptr, into), accs)
	c.MOVQ(nsrc, cnt)
	c.DECQ(cnt)
	c.JZ(operand.LabelRef(name + "Store"))
	c.LEAQ(operand.Mem{Base: srcs, Disp: 8}, it)
	c.Label(name + "Src")
	c.MOVQ(operand.Mem{Base: it}, ptr)
	k.fold(get(ptr, nil), accs)
	c.ADDQ(operand.Imm(8), it)
	c.DECQ(cnt)
	c.JNZ(operand.LabelRef(name + "Src"))
	c.Label(name + "Store")
	put(k.narrow(accs))
}

// tailMasked512 handles the last nb < memBytes bytes with an opmask: masked
// loads and stores never touch the lanes past n (and never fault there).
func (k *kernel) tailMasked512(accs []reg.VecVirtual, dst, srcs, nsrc, nb, off reg.GPVirtual, name string) {
	c := k.c
	c.Comment("Partial vector: an opmask of the elements to do.")
	c.MOVQ(nb, reg.RCX)
	esize := k.kind.size
	if sh := bits.TrailingZeros(uint(esize)); sh > 0 {
		c.SHRQ(operand.Imm(uint64(sh)), reg.RCX)
	}
	m := c.GP64()
	c.MOVQ(operand.U32(1), m)
	c.SHLQ(reg.CL, m)
	c.DECQ(m)
	mask := c.K()
	c.KMOVQ(m, mask)
	load := map[int]func(operand.Op, operand.Op, operand.Op){1: c.VMOVDQU8_Z, 2: c.VMOVDQU16_Z, 4: c.VMOVDQU32_Z, 8: c.VMOVDQU64_Z}[esize]
	store := map[int]func(...operand.Op){1: c.VMOVDQU8, 2: c.VMOVDQU16, 4: c.VMOVDQU32, 8: c.VMOVDQU64}[esize]
	k.tailLoop(accs, srcs, nsrc, name, func(ptr reg.GPVirtual, r reg.VecVirtual) operand.Op {
		if r == nil {
			r = k.raw()
		}
		load(operand.Mem{Base: ptr, Index: off, Scale: 1}, mask, r)
		return r
	}, func(r reg.VecVirtual) {
		store(r, mask, operand.Mem{Base: dst, Index: off, Scale: 1})
	})
}

// tailMaskedAVX2 handles the last nb < 32 bytes of 4- or 8-byte elements
// with VPMASKMOVD, whose masked-off lanes are neither read nor written.
func (k *kernel) tailMaskedAVX2(accs []reg.VecVirtual, dst, srcs, nsrc, nb, off reg.GPVirtual, name string) {
	c := k.c
	c.Comment("Partial vector: VPMASKMOVD with a mask of the bytes to do.")
	tbl, idx := c.GP64(), c.GP64()
	c.LEAQ(maskTable(), tbl)
	c.MOVQ(operand.U32(32), idx)
	c.SUBQ(nb, idx)
	mask := c.YMM()
	c.VMOVDQU(operand.Mem{Base: tbl, Index: idx, Scale: 1}, mask)
	k.tailLoop(accs, srcs, nsrc, name, func(ptr reg.GPVirtual, r reg.VecVirtual) operand.Op {
		if r == nil {
			r = c.YMM()
		}
		c.VPMASKMOVD(operand.Mem{Base: ptr, Index: off, Scale: 1}, mask, r)
		return r
	}, func(r reg.VecVirtual) {
		c.VPMASKMOVD(r, mask, operand.Mem{Base: dst, Index: off, Scale: 1})
	})
}

// maskTableSym holds 32 bytes of 0xff then 32 of 0: the 32 bytes at offset
// 32-nb have exactly their first nb bytes set.
var maskTableSym = operand.NewStaticSymbol("tailmask")

func maskTable() operand.Mem { return operand.Mem{Symbol: maskTableSym, Base: reg.StaticBase} }

// addMaskTable emits maskTableSym's data.
func addMaskTable(c *build.Context) {
	c.StaticGlobal(maskTableSym.Name)
	c.DataAttributes(attr.RODATA | attr.NOPTR)
	for range 4 {
		c.AppendDatum(operand.U64(^uint64(0)))
	}
	for range 4 {
		c.AppendDatum(operand.U64(0))
	}
}

// tailBounce handles the last nb bytes of 1- and 2-byte elements, for which
// AVX2 has no masked moves: each input's tail is copied byte by byte into a
// stack buffer, reduced there as a full vector and the result's first nb
// bytes copied out. Only bytes below n are ever read or written.
func (k *kernel) tailBounce(accs []reg.VecVirtual, dst, srcs, nsrc, nb, off reg.GPVirtual, name string) {
	c := k.c
	c.Comment("Partial vector: copy through a stack buffer, as AVX2 has no byte or word masked moves.")
	if k.buf == nil {
		b := c.AllocLocal(k.memBytes)
		k.buf = &b
	}
	buf := *k.buf
	k.tailLoop(accs, srcs, nsrc, name, func(ptr reg.GPVirtual, _ reg.VecVirtual) operand.Op {
		c.ADDQ(off, ptr)
		k.copyBytes(buf, operand.Mem{Base: ptr}, nb)
		return buf
	}, func(r reg.VecVirtual) {
		k.movu(r, buf)
		p := c.GP64()
		c.LEAQ(operand.Mem{Base: dst, Index: off, Scale: 1}, p)
		k.copyBytes(operand.Mem{Base: p}, buf, nb)
	})
}

// copyBytes copies nb > 0 bytes from src to dst (base+disp operands).
func (k *kernel) copyBytes(dst, src operand.Mem, nb reg.GPVirtual) {
	c := k.c
	i, t := c.GP64(), c.GP8()
	l := k.label("copy")
	c.XORQ(i, i)
	c.Label(l)
	c.MOVB(src.Idx(i, 1), t)
	c.MOVB(t, dst.Idx(i, 1))
	c.INCQ(i)
	c.CMPQ(i, nb)
	c.JB(operand.LabelRef(l))
}
