// Package asm emits the AVX2 and AVX-512 reduction kernels with avo.
//
// For every dtype x op of a spec and each of the two instruction sets it
// writes one assembly function
//
//	func reduce<ISA><DType><Op>(dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int)
//
// (a kernel.Func). Signed and unsigned integers of one width share one
// function for sum, prod, band, bor and bxor (reduce<ISA>I<bits><Op>):
// those ops compute the same bits whatever the sign, and only min and max
// have a signed and an unsigned version.
//
// that computes dst[i] = srcs[0][i] op srcs[1][i] op ... op srcs[nsrc-1][i]
// for i < n in a single pass: for each block of vectors it walks the srcs
// pointer array, so every input is read once and dst is written once (dst may
// be one of the inputs). Tails are handled inside the function without
// touching memory past element n-1 (opmasks on AVX-512, VPMASKMOV or a stack
// bounce buffer on AVX2).
//
// The emitters are table driven: one per op class, parameterised by the
// element kind (see kernel.go). Numerics follow package kernel's contract
// bit for bit, as its pure-Go level (kernel/generic) computes it:
// left-to-right fold, no FMA, 16-bit floats widened to float32 and rounded
// once, float min/max with the -0/+0 and NaN rules spelled out there;
// complex64 is two float32 lanes per element.
package asm

import (
	"bytes"
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
	"github.com/mmcloughlin/avo/pass"
	"github.com/mmcloughlin/avo/printer"
	"github.com/mmcloughlin/avo/reg"

	"github.com/gocoll/gocoll/gen/spec"
)

// generator names the program in the "Code generated" headers.
const generator = "gentool (gen/asm)"

// corePath and kernelPath are the import paths of the runtime contracts
// and the spec-independent kernel runtime.
const (
	corePath   = "github.com/gocoll/gocoll/core"
	kernelPath = "github.com/gocoll/gocoll/kernel"
)

// Files written by Generate, and A's placeholder that real kernels replace.
const (
	asmFile     = "reduce_amd64.s"
	stubFile    = "reduce_amd64.go"
	otherFile   = "reduce_other.go"
	placeholder = "reduce_noasm.go"
)

// entry is one dtype x op of the spec with its assembly kernel.
type entry struct {
	isa    isaInfo
	dtype  spec.DType
	opName string // the spec op it serves
	opID   int
	fn     string // assembly function name
	desc   string // what fn reduces, for its doc comment
}

// Generate writes the amd64 kernels for s into dir (the generated kernels
// package): reduce_amd64.s, reduce_amd64.go and reduce_other.go, and removes
// the pure-Go placeholder reduce_noasm.go if present. Dtypes or ops this
// generator does not know get no kernel (archKernel returns nil for them, so
// the generic Go kernel runs).
func Generate(s *spec.Spec, dir string) error {
	pkg, err := packageName(dir)
	if err != nil {
		return err
	}
	asmSrc, entries, err := Assembly(s, pkg)
	if err != nil {
		return err
	}
	stubSrc, err := stubs(entries, pkg)
	if err != nil {
		return err
	}
	otherSrc, err := other(pkg)
	if err != nil {
		return err
	}
	for name, src := range map[string][]byte{asmFile: asmSrc, stubFile: stubSrc, otherFile: otherSrc} {
		if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
			return fmt.Errorf("asm: write kernels: %w", err)
		}
	}
	if err := os.Remove(filepath.Join(dir, placeholder)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("asm: remove placeholder: %w", err)
	}
	return nil
}

// packageName is the Go package name for dir: its base name when that is an
// identifier (generated/kernels gives "kernels").
func packageName(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("asm: output directory %q: %w", dir, err)
	}
	name := filepath.Base(abs)
	if !token.IsIdentifier(name) || token.IsKeyword(name) {
		return "", fmt.Errorf("asm: output directory %q: its name is not a Go package name; generate into a directory such as .../kernels", dir)
	}
	return name, nil
}

// Assembly returns the Go assembly for every kernel of s (package pkg) and
// the list of kernels in it.
func Assembly(s *spec.Spec, pkg string) ([]byte, []entry, error) {
	ctx := build.NewContext()
	ctx.ConstraintExpr("!purego")
	addMaskTable(ctx)
	var entries []entry
	emitted := map[string]bool{}
	for _, isa := range isas {
		for _, d := range s.DTypes {
			kind, ok := kinds[d.Go]
			if !ok || kind.size != d.Size {
				continue // unknown to this generator: the generic kernel serves it
			}
			for _, opName := range d.Ops {
				op, ok := s.Op(opName)
				if !ok {
					continue
				}
				kop := op.Name
				if op.Finish == "divide" {
					kop = "sum" // avg reduces as a sum; Finish divides
				}
				if !Supported(d, kop) {
					continue
				}
				kk, part := kernelKind(kind, kop)
				fn := "reduce" + isa.name + part + exported(kop)
				desc := fmt.Sprintf("%s elements with %s using %s", kk.name, kop, isa.name)
				entries = append(entries, entry{isa: isa, dtype: d, opName: op.Name, opID: op.ID, fn: fn, desc: desc})
				if !emitted[fn] {
					emitted[fn] = true
					emitKernel(ctx, fn, isa, kk, kop)
				}
			}
		}
	}
	src, err := render(ctx, pkg)
	if err != nil {
		return nil, nil, err
	}
	return src, entries, nil
}

// render compiles the functions of ctx and prints them as Go assembly of
// package pkg.
func render(ctx *build.Context, pkg string) ([]byte, error) {
	f, err := ctx.Result()
	if err != nil {
		var list build.ErrorList
		if errors.As(err, &list) && len(list) > 5 {
			err = fmt.Errorf("%w (first: %v; %v; %v)", err, list[0], list[1], list[2])
		}
		return nil, fmt.Errorf("asm: build kernels: %w", err)
	}
	if err := pass.Compile.Execute(f); err != nil {
		return nil, fmt.Errorf("asm: compile kernels: %w", err)
	}
	if err := checkVEX(f); err != nil {
		return nil, err
	}
	cfg := printer.Config{Name: generator, Pkg: pkg}
	src, err := printer.NewGoAsm(cfg).Print(f)
	if err != nil {
		return nil, fmt.Errorf("asm: print kernels: %w", err)
	}
	return src, nil
}

// Supported reports whether the generator emits an assembly kernel for
// dtype d computing op (avg computes sum).
func Supported(d spec.DType, op string) bool {
	kind, ok := kinds[d.Go]
	if !ok || kind.size != d.Size {
		return false
	}
	switch op {
	case "sum":
		return true
	case "prod", "min", "max":
		return kind.cls != clsFloat || kind.lane == kind.size // not complex: its prod and order are not lane-wise
	case "band", "bor", "bxor":
		return kind.cls == clsInt || kind.cls == clsUint
	}
	return false
}

// checkVEX makes sure no AVX2 kernel got a vector register above 15 from the
// allocator: those need EVEX encodings, which AVX2-only CPUs lack.
func checkVEX(f *ir.File) error {
	for _, fn := range f.Functions() {
		if !strings.Contains(fn.Name, "AVX2") {
			continue
		}
		for _, i := range fn.Instructions() {
			for _, r := range i.Registers() {
				p := reg.ToPhysical(r)
				if p != nil && p.Kind() == reg.KindVector && p.PhysicalIndex() >= 16 {
					return fmt.Errorf("asm: %s: needs more than 16 vector registers (%s in %s); lower its unroll", fn.Name, p.Asm(), i.Opcode)
				}
			}
		}
	}
	return nil
}

// signature is the Go type of every kernel: kernel.Func.
func signature() *gotypes.Signature {
	up := types.Typ[types.UnsafePointer]
	params := types.NewTuple(
		types.NewVar(token.NoPos, nil, "dst", up),
		types.NewVar(token.NoPos, nil, "srcs", types.NewPointer(up)),
		types.NewVar(token.NoPos, nil, "nsrc", types.Typ[types.Int]),
		types.NewVar(token.NoPos, nil, "n", types.Typ[types.Int]),
	)
	return gotypes.NewSignature(nil, types.NewSignatureType(nil, nil, nil, params, nil, false))
}

// emitKernel starts function fn in ctx and emits its body.
func emitKernel(ctx *build.Context, fn string, isa isaInfo, kind kindInfo, op string) {
	ctx.Function(fn)
	ctx.Attributes(attr.NOSPLIT)
	ctx.Signature(signature())
	ctx.Doc(fmt.Sprintf("%s reduces %d-byte %s elements with %s using %s.", fn, kind.size, kind.name, op, isa.name))
	newKernel(ctx, isa, kind, op).emit()
}

// exported turns a spec name into an identifier part: "bfloat16" -> "Bfloat16".
func exported(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// stubs is reduce_amd64.go: the Go declarations of the kernels, and
// archKernel and haveAsm for the generated tables.
func stubs(entries []entry, pkg string) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "// Code generated by %s. DO NOT EDIT.\n\n", generator)
	b.WriteString("//go:build amd64 && !purego\n\n")
	fmt.Fprintf(&b, "package %s\n\n", pkg)
	if len(entries) > 0 {
		fmt.Fprintf(&b, "import (\n\t\"unsafe\"\n\n\t%q\n\t%q\n)\n\n", corePath, kernelPath)
	} else {
		fmt.Fprintf(&b, "import (\n\t%q\n\t%q\n)\n\n", corePath, kernelPath) // no kernels: a spec without known dtypes
	}
	b.WriteString("// haveAsm says this build has the assembly kernels.\n")
	b.WriteString("const haveAsm = true\n\n")
	b.WriteString("// asmKey packs a dtype and an op into one switch key.\n")
	b.WriteString("func asmKey(dt core.DType, op core.Op) uint16 { return uint16(dt)<<8 | uint16(op) }\n\n")
	b.WriteString("// archKernel returns the assembly kernel for dt and op at isa, or nil when\n")
	b.WriteString("// there is none and the level below runs. avg kernels sum: the division\n")
	b.WriteString("// is the finish step's job.\n")
	b.WriteString("func archKernel(isa kernel.ISA, dt core.DType, op core.Op) kernel.Func {\n")
	b.WriteString("\tswitch isa {\n")
	for _, isa := range isas {
		fmt.Fprintf(&b, "\tcase kernel.%s:\n\t\tswitch asmKey(dt, op) {\n", isa.name)
		for _, e := range entries {
			if e.isa.name != isa.name {
				continue
			}
			fmt.Fprintf(&b, "\t\tcase 0x%02x%02x: // %s %s\n\t\t\treturn %s\n", e.dtype.ID, e.opID, e.dtype.Name, e.opName, e.fn)
		}
		b.WriteString("\t\t}\n")
	}
	b.WriteString("\t}\n\treturn nil\n}\n")
	seen := map[string]bool{}
	for _, e := range entries {
		if seen[e.fn] {
			continue
		}
		seen[e.fn] = true
		fmt.Fprintf(&b, "\n// %s reduces %s; see kernel.Func.\n", e.fn, e.desc)
		fmt.Fprintf(&b, "//\n//go:noescape\nfunc %s(dst unsafe.Pointer, srcs *unsafe.Pointer, nsrc, n int)\n", e.fn)
	}
	src, err := format.Source(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("asm: format %s: %w", stubFile, err)
	}
	return src, nil
}

// other is reduce_other.go: no assembly kernels off amd64 or with purego.
func other(pkg string) ([]byte, error) {
	src, err := format.Source([]byte(NoAsm(generator, "!amd64 || purego", pkg)))
	if err != nil {
		return nil, fmt.Errorf("asm: format %s: %w", otherFile, err)
	}
	return src, nil
}

// NoAsm is the source of a file of package pkg, built under constraint
// (none if ""), that declares archKernel and haveAsm without assembly
// kernels: every level runs the pure-Go kernels. generator names the
// program in its header.
func NoAsm(generator, constraint, pkg string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "// Code generated by %s. DO NOT EDIT.\n\n", generator)
	if constraint != "" {
		fmt.Fprintf(&b, "//go:build %s\n\n", constraint)
	}
	fmt.Fprintf(&b, "package %s\n\n", pkg)
	fmt.Fprintf(&b, "import (\n\t%q\n\t%q\n)\n\n", corePath, kernelPath)
	b.WriteString("// haveAsm says this build has no assembly kernels.\n")
	b.WriteString("const haveAsm = false\n\n")
	b.WriteString("// archKernel has no assembly kernels to offer: every level runs the pure-Go\n")
	b.WriteString("// kernels.\n")
	b.WriteString("func archKernel(isa kernel.ISA, dt core.DType, op core.Op) kernel.Func { return nil }\n")
	return b.String()
}
