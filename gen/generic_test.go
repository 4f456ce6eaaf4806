package gen

import (
	"bytes"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gocoll/gocoll/gen/spec"
)

// funcDecls parses src and returns its top-level functions by name.
func funcDecls(t *testing.T, name string, src []byte) (*token.FileSet, map[string]*ast.FuncDecl) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, src, 0)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	fns := map[string]*ast.FuncDecl{}
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok {
			fns[fn.Name.Name] = fn
		}
	}
	return fset, fns
}

func nodeString(t *testing.T, fset *token.FileSet, n any) string {
	t.Helper()
	var b bytes.Buffer
	if err := printer.Fprint(&b, fset, n); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestGenericMatchesTyped checks every generic function against the typed
// function of every Elem dtype: the same parameters with T for the element
// type, and the same body with dtypeOf[T]() for the dtype constant. The
// generic front builds its requests itself (collFunc serves one dtype), so
// a shape the typed functions learn must reach genericFunc too, or this
// fails.
func TestGenericMatchesTyped(t *testing.T) {
	specs := map[string][]byte{}
	own, err := os.ReadFile("../spec/collectives.yaml")
	if err != nil {
		t.Fatal(err)
	}
	specs["gocoll"] = own
	for name, src := range subsetSpecs {
		specs[name] = []byte(src)
	}
	specs["shared"] = []byte(sharedGoTypeSpec)
	for name, src := range specs {
		t.Run(name, func(t *testing.T) {
			s, err := spec.Parse("spec.yaml", src)
			if err != nil {
				t.Fatal(err)
			}
			apiSrc, err := render(collAPI(s))
			if err != nil {
				t.Fatal(err)
			}
			genSrc, err := render(collGeneric(s))
			if err != nil {
				t.Fatal(err)
			}
			fa, typed := funcDecls(t, "api.go", apiSrc)
			fg, generic := funcDecls(t, "generic.go", genSrc)
			in, _ := elemTypes(s)
			n := 0
			for _, c := range s.Collectives {
				g, ok := generic[genericName(c)]
				if len(c.Buffers) == 0 || len(in) == 0 {
					if ok {
						t.Errorf("%s: a generic function, but the collective moves no data or no type is generic", genericName(c))
					}
					continue
				}
				if !ok {
					t.Errorf("no generic %s", genericName(c))
					continue
				}
				n++
				gParams := nodeString(t, fg, &ast.FuncType{Params: g.Type.Params})
				gBody := nodeString(t, fg, g.Body)
				for _, d := range in {
					tf, ok := typed[funcName(c, &d)]
					if !ok {
						t.Fatalf("no typed %s", funcName(c, &d))
					}
					wantParams := strings.ReplaceAll(nodeString(t, fa, &ast.FuncType{Params: tf.Type.Params}), "[]"+d.Go, "[]T")
					wantBody := strings.ReplaceAll(nodeString(t, fa, tf.Body), dtConst(d)+",", dtypeOfFunc+"[T](),")
					if gParams != wantParams {
						t.Errorf("%s: parameters %s, %s has %s", genericName(c), gParams, funcName(c, &d), wantParams)
					}
					if gBody != wantBody {
						t.Errorf("%s: body\n%s\n%s (T for %s) has\n%s", genericName(c), gBody, funcName(c, &d), d.Go, wantBody)
					}
				}
				if tp := g.Type.TypeParams; tp == nil || len(tp.List) != 1 || len(tp.List[0].Names) != 1 ||
					tp.List[0].Names[0].Name != "T" || nodeString(t, fg, tp.List[0].Type) != "Elem" {
					t.Errorf("%s: type parameters are not [T Elem]", genericName(c))
				}
			}
			if len(in) > 0 && n == 0 {
				t.Error("no generic function checked")
			}
		})
	}
}

// sharedGoTypeSpec has two dtypes of one Go type: the generic front cannot
// tell them apart, so Elem leaves both out and keeps the rest.
const sharedGoTypeSpec = `package: shared
dtypes:
  - {name: float32, id: 1, size: 4, go: float32, accum: float32, class: float, ops: [sum]}
  - {name: tf32, id: 70, size: 4, go: float32, accum: float32, class: float, ops: [sum]}
  - {name: int64, id: 9, size: 8, go: int64, accum: int64, class: int, ops: [sum]}
ops:
  - {name: sum, id: 1, doc: "sum"}
collectives:
  - name: allreduce
    id: 1
    doc: Allreduce reduces.
    buffers:
      - {name: send, role: send, count: count, on: all}
      - {name: recv, role: recv, count: count, on: all}
    op: true
    result: {kind: reduce, on: all}
  - name: barrier
    id: 9
    doc: Barrier waits.
    buffers: []
    result: {kind: none, on: all}
`

// TestGenericSharedGoType generates the shared spec in a module that uses
// this checkout and runs go vet and its tests (the generic ones among
// them) there.
func TestGenericSharedGoType(t *testing.T) {
	s, err := spec.Parse("spec.yaml", []byte(sharedGoTypeSpec))
	if err != nil {
		t.Fatal(err)
	}
	in, out := elemTypes(s)
	if len(in) != 1 || in[0].Go != "int64" || len(out) != 2 {
		t.Fatalf("Elem serves %v and leaves out %v, want int64 and both float32 dtypes", in, out)
	}
	src, err := render(collGeneric(s))
	if err != nil {
		t.Fatal(err)
	}
	unwrapped := bytes.ReplaceAll(src, []byte("\n// "), []byte(" "))
	for _, want := range []string{"\tint64\n", "Left out, because dtypes share their Go type: float32 (float32), tf32 (float32)", "func Allreduce[T Elem]("} {
		if !bytes.Contains(unwrapped, []byte(want)) {
			t.Errorf("generic.go lacks %q:\n%s", want, src)
		}
	}
	if bytes.Contains(src, []byte("func Barrier")) {
		t.Error("a generic Barrier, which moves no data")
	}
	if testing.Short() {
		t.Skip("builds and tests a generated module")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// Only the allreduce and barrier kinds: the kernels are the spec's own
	// (tf32 is no gocoll dtype).
	root := generateInModule(t, []byte(sharedGoTypeSpec), true, "example.com/m")
	mod := "module example.com/m\n\ngo 1.26.0\n\nrequire github.com/gocoll/gocoll v0.0.0\n\nreplace github.com/gocoll/gocoll => " + repo + "\n"
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"mod", "tidy"}, {"vet", "./..."}, {"test", "-short", "-run", "Generic", "./..."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
